// Hydra-like configuration: recipe files with a defaults list of config groups, command-line overrides,
// and a checked reader that binds TOML into typed structs (every key read is known; leftovers are errors).
#pragma once
#include <cstdint>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

namespace cm {

// Any configuration problem. The message names the full key path and, where possible, what to do.
struct ConfigError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

// A composed configuration tree (TOML underneath; toml++ stays inside config.cpp).
class Config {
 public:
  Config();
  ~Config();
  Config(const Config&);
  Config& operator=(const Config&);
  Config(Config&&) noexcept;
  Config& operator=(Config&&) noexcept;

  static Config parse(const std::string& toml_text, const std::string& origin = "<string>");
  static Config load_file(const std::string& path);

  // Compose a recipe: `recipe` is a file path or a bare name looked up in the recipe search path
  // (CM_RECIPE_PATH entries, then the source tree's recipes/configs). Order: _base.toml of the search
  // path (keys every recipe has), then the `defaults` groups, then the recipe's own keys, then overrides:
  //   a.b=v      set an existing key (value parsed as TOML; bare words are strings)
  //   group=opt  choose another option of a config group listed in `defaults`
  //   +a.b=v     add a key that is not in the composed config
  //   ~a.b       delete a key
  static Config compose(const std::string& recipe, const std::vector<std::string>& overrides = {});

  std::string to_toml() const;
  std::string to_json() const;
  // Stable hash of the resolved config (FNV-1a of to_toml()), hex.
  std::string hash() const;
  bool has(const std::string& dotted_key) const;
  // Keys (dotted) whose values differ between two configs, ignoring those whose dotted path starts with
  // any of `ignore_prefixes`.
  std::vector<std::string> diff_keys(const Config& other, const std::vector<std::string>& ignore_prefixes) const;

  // Set a dotted key from a TOML value text, creating tables as needed (used by overrides and tests).
  void set(const std::string& dotted_key, const std::string& toml_value);

  const std::vector<std::string>& overrides() const { return overrides_; }
  const std::string& recipe_path() const { return recipe_path_; }

  struct Impl;
  Impl* impl() const { return impl_.get(); }

 private:
  std::unique_ptr<Impl> impl_;
  std::vector<std::string> overrides_;
  std::string recipe_path_;
};

// The recipe search path, for `cm` listings and error messages.
std::vector<std::string> recipe_search_path();
std::vector<std::string> list_recipes();

// Reads one table of a Config with typed getters (the Config must outlive the reader). Each key read is recorded as known; finish() throws
// for any key in the table that nobody read, naming its full path and the nearest known key. Getters
// throw ConfigError naming the full path on a wrong type; require_* throw when the key is missing.
class ConfigReader {
 public:
  ConfigReader(const Config& cfg, const std::string& table_path);  // "" = root
  ~ConfigReader();
  ConfigReader(ConfigReader&&) noexcept;
  ConfigReader& operator=(ConfigReader&&) noexcept;

  const std::string& path() const { return path_; }
  std::string key_path(const std::string& key) const;  // "train.lr"
  bool has(const std::string& key) const;

  int64_t get_int(const std::string& key, int64_t def);
  double get_double(const std::string& key, double def);  // integers are accepted as doubles
  double get_fraction(const std::string& key, double def);  // a number in [0, 1) (dropout rates)
  bool get_bool(const std::string& key, bool def);
  std::string get_string(const std::string& key, const std::string& def);
  std::vector<int64_t> get_int_list(const std::string& key, const std::vector<int64_t>& def);
  std::vector<double> get_double_list(const std::string& key, const std::vector<double>& def);
  std::vector<std::string> get_string_list(const std::string& key, const std::vector<std::string>& def);

  int64_t require_int(const std::string& key);
  double require_double(const std::string& key);
  std::string require_string(const std::string& key);

  // A string that must be one of `choices`; the error lists them.
  std::string get_choice(const std::string& key, const std::string& def, const std::vector<std::string>& choices);

  // Reader for a sub-table (empty if absent). The key itself counts as known.
  ConfigReader sub(const std::string& key);
  // Mark keys as known without reading them (for keys consumed by another reader of the same table).
  void allow(const std::vector<std::string>& keys);
  // Throws for unread keys in this table (and, recursively, in sub-tables not opened with sub()).
  void finish();

 private:
  ConfigReader();
  struct Impl;
  std::unique_ptr<Impl> impl_;
  std::string path_;
};

// Levenshtein distance, for "did you mean" suggestions.
size_t edit_distance(const std::string& a, const std::string& b);
std::string nearest(const std::string& word, const std::vector<std::string>& candidates);

}  // namespace cm
