// Hydra-like config composition and the checked reader (see config.h). toml++ is used only here.
#include "core/config.h"

#include <fmt/format.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <set>
#include <sstream>
#include <toml++/toml.h>

namespace fs = std::filesystem;

namespace cm {

struct Config::Impl {
  toml::table root;
};

Config::Config() : impl_(std::make_unique<Impl>()) {}
Config::~Config() = default;
Config::Config(const Config& o) : impl_(std::make_unique<Impl>(*o.impl_)), overrides_(o.overrides_), recipe_path_(o.recipe_path_) {}
Config& Config::operator=(const Config& o) {
  if (this != &o) {
    impl_ = std::make_unique<Impl>(*o.impl_);
    overrides_ = o.overrides_;
    recipe_path_ = o.recipe_path_;
  }
  return *this;
}
Config::Config(Config&&) noexcept = default;
Config& Config::operator=(Config&&) noexcept = default;

// ---------------------------------------------------------------------------------------------------
// small helpers

size_t edit_distance(const std::string& a, const std::string& b) {
  std::vector<size_t> prev(b.size() + 1), cur(b.size() + 1);
  for (size_t j = 0; j <= b.size(); ++j) prev[j] = j;
  for (size_t i = 1; i <= a.size(); ++i) {
    cur[0] = i;
    for (size_t j = 1; j <= b.size(); ++j)
      cur[j] = std::min({prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (a[i - 1] == b[j - 1] ? 0 : 1)});
    std::swap(prev, cur);
  }
  return prev[b.size()];
}

std::string nearest(const std::string& word, const std::vector<std::string>& candidates) {
  std::string best;
  size_t best_d = std::string::npos;
  for (auto& c : candidates) {
    size_t d = edit_distance(word, c);
    // A candidate that contains the word (or vice versa) is a good suggestion even when long.
    if (c.find(word) != std::string::npos || word.find(c) != std::string::npos) d = std::min(d, size_t{2});
    if (d < best_d) best_d = d, best = c;
  }
  const size_t limit = std::max<size_t>(2, word.size() / 2);
  return best_d <= limit ? best : std::string();
}

static std::vector<std::string> split(const std::string& s, char sep) {
  std::vector<std::string> parts;
  std::string cur;
  for (char c : s) {
    if (c == sep) parts.push_back(cur), cur.clear();
    else cur += c;
  }
  parts.push_back(cur);
  return parts;
}

static std::string type_name(const toml::node& n) {
  switch (n.type()) {
    case toml::node_type::table: return "table";
    case toml::node_type::array: return "array";
    case toml::node_type::string: return "string";
    case toml::node_type::integer: return "integer";
    case toml::node_type::floating_point: return "float";
    case toml::node_type::boolean: return "boolean";
    default: return "date/time";
  }
}

static std::string render(const toml::node& n) {
  std::ostringstream os;
  n.visit([&](auto&& v) { os << v; });
  return os.str();
}

static toml::table parse_text(const std::string& text, const std::string& origin) {
  try {
    return toml::parse(text, origin);
  } catch (const toml::parse_error& e) {
    const auto& src = e.source();
    throw ConfigError(fmt::format("{}:{}:{}: TOML syntax error: {}", origin, src.begin.line, src.begin.column,
                                  e.description()));
  }
}

// Leaf keys of a table as dotted paths (arrays count as leaves).
static void flatten(const toml::table& t, const std::string& prefix, std::map<std::string, std::string>& out) {
  for (auto& [k, v] : t) {
    std::string path = prefix.empty() ? std::string(k.str()) : prefix + "." + std::string(k.str());
    if (auto* sub = v.as_table()) flatten(*sub, path, out);
    else out[path] = render(v);
  }
}

// Deep merge: values of `over` replace those of `base`; tables merge recursively.
static void merge_into(toml::table& base, const toml::table& over) {
  for (auto& [k, v] : over) {
    auto* sub_over = v.as_table();
    auto* existing = base.get(k);
    if (sub_over && existing && existing->is_table()) {
      merge_into(*existing->as_table(), *sub_over);
    } else {
      base.insert_or_assign(k, v);
    }
  }
}

// Parses an override value as TOML; a bare word that is not valid TOML is taken as a string.
static toml::table parse_value(const std::string& text) {
  try {
    return toml::parse("v = " + text);
  } catch (const toml::parse_error&) {
    toml::table t;
    t.insert("v", text);
    return t;
  }
}

// ---------------------------------------------------------------------------------------------------
// recipe search path

static std::string exe_dir() {
  std::error_code ec;
  auto p = fs::read_symlink("/proc/self/exe", ec);
  return ec ? std::string() : p.parent_path().string();
}

std::vector<std::string> recipe_search_path() {
  std::vector<std::string> dirs;
  if (const char* env = std::getenv("CM_RECIPE_PATH"))
    for (auto& d : split(env, ':'))
      if (!d.empty()) dirs.push_back(d);
#ifdef CM_RECIPE_DIR
  dirs.push_back(CM_RECIPE_DIR);
#endif
  // A build directory inside the source tree finds the recipes even after the tree moved.
  if (auto e = exe_dir(); !e.empty()) {
    dirs.push_back(e + "/../recipes/configs");
    dirs.push_back(e + "/../../recipes/configs");
  }
  std::vector<std::string> existing;
  for (auto& d : dirs) {
    std::error_code ec;
    if (fs::is_directory(d, ec)) {
      auto c = fs::weakly_canonical(d, ec).string();
      if (std::find(existing.begin(), existing.end(), c) == existing.end()) existing.push_back(c);
    }
  }
  return existing;
}

std::vector<std::string> list_recipes() {
  std::set<std::string> names;
  for (auto& d : recipe_search_path())
    for (auto& e : fs::directory_iterator(d))
      if (e.is_regular_file() && e.path().extension() == ".toml" && e.path().stem().string()[0] != '_')
        names.insert(e.path().stem().string());
  return {names.begin(), names.end()};
}

static std::string find_recipe(const std::string& recipe) {
  std::error_code ec;
  if (fs::is_regular_file(recipe, ec)) return recipe;
  auto dirs = recipe_search_path();
  for (auto& d : dirs) {
    fs::path p = fs::path(d) / (recipe + ".toml");
    if (fs::is_regular_file(p, ec)) return p.string();
  }
  std::string near = nearest(recipe, list_recipes());
  throw ConfigError(fmt::format("recipe '{}' not found (not a file, and not in the recipe path: {}){}. "
                                "Run `cm config --list` to see the recipes.",
                                recipe, fmt::join(dirs, ":"),
                                near.empty() ? "" : fmt::format("; did you mean '{}'?", near)));
}

static std::vector<std::string> group_options(const std::vector<std::string>& dirs, const std::string& group) {
  std::set<std::string> opts;
  for (auto& d : dirs) {
    std::error_code ec;
    fs::path g = fs::path(d) / group;
    if (!fs::is_directory(g, ec)) continue;
    for (auto& e : fs::directory_iterator(g))
      if (e.path().extension() == ".toml") opts.insert(e.path().stem().string());
  }
  return {opts.begin(), opts.end()};
}

static std::string find_group_file(const std::vector<std::string>& dirs, const std::string& group,
                                   const std::string& option, const std::string& why) {
  std::error_code ec;
  for (auto& d : dirs) {
    fs::path p = fs::path(d) / group / (option + ".toml");
    if (fs::is_regular_file(p, ec)) return p.string();
  }
  auto opts = group_options(dirs, group);
  if (opts.empty())
    throw ConfigError(fmt::format("{}: config group '{}' does not exist (looked in {})", why, group, fmt::join(dirs, ":")));
  std::string near = nearest(option, opts);
  throw ConfigError(fmt::format("{}: '{}' is not an option of config group '{}'{}; the options are: {}", why, option,
                                group, near.empty() ? "" : fmt::format(" (did you mean '{}'?)", near),
                                fmt::join(opts, ", ")));
}

// ---------------------------------------------------------------------------------------------------
// Config

Config Config::parse(const std::string& text, const std::string& origin) {
  Config c;
  c.impl_->root = parse_text(text, origin);
  return c;
}

Config Config::load_file(const std::string& path) {
  std::ifstream in(path);
  if (!in) throw ConfigError(fmt::format("cannot open config file '{}'", path));
  std::stringstream ss;
  ss << in.rdbuf();
  return parse(ss.str(), path);
}

static toml::node* find_node(toml::table& root, const std::vector<std::string>& parts, toml::table** parent) {
  toml::table* t = &root;
  for (size_t i = 0; i + 1 < parts.size(); ++i) {
    auto* n = t->get(parts[i]);
    if (!n || !n->is_table()) return nullptr;
    t = n->as_table();
  }
  if (parent) *parent = t;
  return t->get(parts.back());
}

bool Config::has(const std::string& dotted) const {
  return find_node(impl_->root, split(dotted, '.'), nullptr) != nullptr;
}

void Config::set(const std::string& dotted, const std::string& toml_value) {
  auto parts = split(dotted, '.');
  toml::table* t = &impl_->root;
  for (size_t i = 0; i + 1 < parts.size(); ++i) {
    auto* n = t->get(parts[i]);
    if (!n) {
      t->insert(parts[i], toml::table{});
      n = t->get(parts[i]);
    }
    if (!n->is_table())
      throw ConfigError(fmt::format("cannot set '{}': '{}' is a {}, not a table", dotted,
                                    fmt::join(parts.begin(), parts.begin() + i + 1, "."), type_name(*n)));
    t = n->as_table();
  }
  auto v = parse_value(toml_value);
  t->insert_or_assign(parts.back(), *v.get("v"));
}

static std::vector<std::string> leaf_paths(const toml::table& t) {
  std::map<std::string, std::string> flat;
  flatten(t, "", flat);
  std::vector<std::string> r;
  for (auto& [k, v] : flat) r.push_back(k);
  return r;
}

using GroupChoices = std::vector<std::pair<std::string, std::string>>;  // (group, option) in `defaults` order

// defaults = ["group/option", ...] of a recipe, removed from its table.
static GroupChoices take_defaults(toml::table& own, const std::string& path) {
  GroupChoices defaults;
  if (auto* d = own.get("defaults")) {
    auto* arr = d->as_array();
    if (!arr) throw ConfigError(fmt::format("{}: 'defaults' must be an array of \"group/option\" strings", path));
    for (auto& e : *arr) {
      auto s = e.value<std::string>();
      auto slash = s ? s->find('/') : std::string::npos;
      if (!s || slash == std::string::npos)
        throw ConfigError(fmt::format("{}: defaults entry {} must be a \"group/option\" string", path, render(e)));
      defaults.emplace_back(s->substr(0, slash), s->substr(slash + 1));
    }
    own.erase("defaults");
  }
  return defaults;
}

// Applies the group choices (group=option) among `overrides` to `defaults`; returns the key edits.
static std::vector<std::string> choose_groups(const std::vector<std::string>& overrides, GroupChoices& defaults) {
  std::vector<std::string> key_edits;
  for (auto& o : overrides) {
    auto eq = o.find('=');
    bool is_edit = o.rfind('+', 0) == 0 || o.rfind('~', 0) == 0;
    if (!is_edit && eq != std::string::npos) {
      std::string key = o.substr(0, eq);
      auto it = std::find_if(defaults.begin(), defaults.end(), [&](auto& g) { return g.first == key; });
      if (it != defaults.end()) {
        it->second = o.substr(eq + 1);
        continue;
      }
    }
    if (!is_edit && eq == std::string::npos)
      throw ConfigError(fmt::format("override '{}' is not of the form key=value, group=option, +key=value or ~key", o));
    key_edits.push_back(o);
  }
  return key_edits;
}

// _base.toml, then the chosen group files, then the recipe's own keys, into `root`; records the choices in
// [groups] so the resolved config says what it was made of.
static void merge_layers(toml::table& root, const std::vector<std::string>& dirs, const GroupChoices& defaults,
                         const toml::table& own, const std::string& path) {
  // _base.toml (first found on the group search path) holds the keys every recipe has, with their
  // defaults, so that `run.dir=...` or `train.seed=3` work as plain overrides.
  for (auto& d : dirs) {
    std::error_code ec;
    fs::path base = fs::path(d) / "_base.toml";
    if (fs::is_regular_file(base, ec)) {
      merge_into(root, Config::load_file(base.string()).impl()->root);
      break;
    }
  }
  for (auto& [group, option] : defaults) {
    std::string file = find_group_file(dirs, group, option, fmt::format("{} (defaults)", path));
    Config g = Config::load_file(file);
    if (!root.get(group)) root.insert(group, toml::table{});
    if (!root.get(group)->is_table())
      throw ConfigError(fmt::format("{}: key '{}' clashes with config group '{}'", path, group, group));
    merge_into(*root.get(group)->as_table(), g.impl()->root);
  }
  merge_into(root, own);
  toml::table groups;
  for (auto& [group, option] : defaults) groups.insert(group, option);
  root.insert_or_assign("groups", groups);
}

// One key edit of the overrides: ~a.b deletes, +a.b=v adds, a.b=v sets an existing key.
static void apply_key_edit(Config& out, const std::string& o) {
  toml::table& root = out.impl()->root;
  if (o.rfind('~', 0) == 0) {
    auto parts = split(o.substr(1), '.');
    toml::table* parent = nullptr;
    if (!find_node(root, parts, &parent))
      throw ConfigError(fmt::format("override '{}': key '{}' is not in the config", o, o.substr(1)));
    parent->erase(parts.back());
    return;
  }
  bool add = o.rfind('+', 0) == 0;
  std::string body = add ? o.substr(1) : o;
  auto eq = body.find('=');
  if (eq == std::string::npos) throw ConfigError(fmt::format("override '{}' has no '=value'", o));
  std::string key = body.substr(0, eq), value = body.substr(eq + 1);
  bool exists = out.has(key);
  if (!add && !exists) {
    std::string near = nearest(key, leaf_paths(root));
    throw ConfigError(fmt::format("override '{}': key '{}' is not in the config{}; use '+{}' to add a new key", o,
                                  key, near.empty() ? "" : fmt::format(" (did you mean '{}'?)", near), body));
  }
  if (add && exists)
    throw ConfigError(fmt::format("override '{}': key '{}' already exists; set it with '{}'", o, key, body));
  if (exists) {
    auto* n = find_node(root, split(key, '.'), nullptr);
    if (n->is_table())
      throw ConfigError(fmt::format("override '{}': '{}' is a table; set one of its keys instead", o, key));
  }
  out.set(key, value);
}

Config Config::compose(const std::string& recipe, const std::vector<std::string>& overrides) {
  const std::string path = find_recipe(recipe);
  Config recipe_cfg = load_file(path);
  toml::table& own = recipe_cfg.impl_->root;

  // Group search: the recipe's own directory first, then the search path.
  std::vector<std::string> dirs = {fs::path(path).parent_path().string()};
  for (auto& d : recipe_search_path()) dirs.push_back(d);

  GroupChoices defaults = take_defaults(own, path);
  const std::vector<std::string> key_edits = choose_groups(overrides, defaults);

  Config out;
  out.recipe_path_ = path;
  out.overrides_ = overrides;
  merge_layers(out.impl_->root, dirs, defaults, own, path);
  for (auto& o : key_edits) apply_key_edit(out, o);
  return out;
}

std::string Config::to_toml() const {
  std::ostringstream os;
  os << impl_->root;
  return os.str();
}

std::string Config::to_json() const {
  std::ostringstream os;
  os << toml::json_formatter{impl_->root};
  return os.str();
}

std::string Config::hash() const {
  uint64_t h = 1469598103934665603ull;
  for (unsigned char c : to_toml()) h = (h ^ c) * 1099511628211ull;
  return fmt::format("{:016x}", h);
}

std::vector<std::string> Config::diff_keys(const Config& other, const std::vector<std::string>& ignore) const {
  std::map<std::string, std::string> a, b;
  flatten(impl_->root, "", a);
  flatten(other.impl_->root, "", b);
  std::set<std::string> keys;
  for (auto& [k, v] : a) keys.insert(k);
  for (auto& [k, v] : b) keys.insert(k);
  std::vector<std::string> diff;
  for (auto& k : keys) {
    bool skip = false;
    for (auto& p : ignore) skip |= (k == p || k.rfind(p + ".", 0) == 0);
    if (skip) continue;
    auto ia = a.find(k), ib = b.find(k);
    if (ia == a.end() || ib == b.end() || ia->second != ib->second) diff.push_back(k);
  }
  return diff;
}

// ---------------------------------------------------------------------------------------------------
// ConfigReader

struct ConfigReader::Impl {
  const toml::table* table = nullptr;  // null when the table is absent (all getters return defaults)
  std::set<std::string> known;
};

ConfigReader::ConfigReader(const Config& cfg, const std::string& table_path) : impl_(std::make_unique<Impl>()), path_(table_path) {
  const toml::table* t = &cfg.impl()->root;
  if (!table_path.empty()) {
    for (auto& part : split(table_path, '.')) {
      auto* n = t ? t->get(part) : nullptr;
      if (n && !n->is_table())
        throw ConfigError(fmt::format("'{}' must be a table, found {}", table_path, type_name(*n)));
      t = n ? n->as_table() : nullptr;
    }
  }
  impl_->table = t;
}
ConfigReader::ConfigReader() : impl_(std::make_unique<Impl>()) {}
ConfigReader::~ConfigReader() = default;
ConfigReader::ConfigReader(ConfigReader&&) noexcept = default;
ConfigReader& ConfigReader::operator=(ConfigReader&&) noexcept = default;

std::string ConfigReader::key_path(const std::string& key) const { return path_.empty() ? key : path_ + "." + key; }

bool ConfigReader::has(const std::string& key) const { return impl_->table && impl_->table->get(key); }

namespace {
const toml::node* lookup(const toml::table* t, const std::string& key) { return t ? t->get(key) : nullptr; }
[[noreturn]] void wrong_type(const std::string& path, const char* expected, const toml::node& n) {
  throw ConfigError(fmt::format("'{}' must be {}, found {} {}", path, expected, type_name(n), render(n)));
}
}  // namespace

int64_t ConfigReader::get_int(const std::string& key, int64_t def) {
  impl_->known.insert(key);
  auto* n = lookup(impl_->table, key);
  if (!n) return def;
  if (auto v = n->as_integer()) return v->get();
  wrong_type(key_path(key), "an integer", *n);
}

double ConfigReader::get_double(const std::string& key, double def) {
  impl_->known.insert(key);
  auto* n = lookup(impl_->table, key);
  if (!n) return def;
  if (auto v = n->as_floating_point()) {
    // TOML has nan and inf literals; no setting of ours means them, and one would only surface steps later.
    if (!std::isfinite(v->get())) throw ConfigError(fmt::format("'{}' = {} must be a finite number", key_path(key), render(*n)));
    return v->get();
  }
  if (auto v = n->as_integer()) return static_cast<double>(v->get());
  wrong_type(key_path(key), "a number", *n);
}

double ConfigReader::get_fraction(const std::string& key, double def) {
  const double v = get_double(key, def);
  if (!(v >= 0 && v < 1)) throw ConfigError(fmt::format("'{}' = {} must be in [0, 1)", key_path(key), v));
  return v;
}

bool ConfigReader::get_bool(const std::string& key, bool def) {
  impl_->known.insert(key);
  auto* n = lookup(impl_->table, key);
  if (!n) return def;
  if (auto v = n->as_boolean()) return v->get();
  wrong_type(key_path(key), "a boolean (true/false)", *n);
}

std::string ConfigReader::get_string(const std::string& key, const std::string& def) {
  impl_->known.insert(key);
  auto* n = lookup(impl_->table, key);
  if (!n) return def;
  if (auto v = n->as_string()) return v->get();
  wrong_type(key_path(key), "a string", *n);
}

template <typename T, typename Conv>
static std::vector<T> get_list_impl(const toml::node* n, const std::string& path, const char* what, Conv conv) {
  auto* arr = n->as_array();
  if (!arr) throw ConfigError(fmt::format("'{}' must be an array of {}, found {} {}", path, what, type_name(*n), render(*n)));
  std::vector<T> out;
  size_t i = 0;
  for (auto& e : *arr) {
    auto v = conv(e);
    if (!v) throw ConfigError(fmt::format("'{}[{}]' must be {}, found {} {}", path, i, what, type_name(e), render(e)));
    out.push_back(*v);
    ++i;
  }
  return out;
}

std::vector<int64_t> ConfigReader::get_int_list(const std::string& key, const std::vector<int64_t>& def) {
  impl_->known.insert(key);
  auto* n = lookup(impl_->table, key);
  if (!n) return def;
  return get_list_impl<int64_t>(n, key_path(key), "integers", [](const toml::node& e) { return e.value<int64_t>(); });
}

std::vector<double> ConfigReader::get_double_list(const std::string& key, const std::vector<double>& def) {
  impl_->known.insert(key);
  auto* n = lookup(impl_->table, key);
  if (!n) return def;
  return get_list_impl<double>(n, key_path(key), "numbers", [](const toml::node& e) -> std::optional<double> {
    if (e.is_integer()) return e.value<double>();
    if (e.is_floating_point() && std::isfinite(*e.value<double>())) return e.value<double>();
    return std::nullopt;  // not a number, or nan / inf: "must be numbers" names the entry
  });
}

std::vector<std::string> ConfigReader::get_string_list(const std::string& key, const std::vector<std::string>& def) {
  impl_->known.insert(key);
  auto* n = lookup(impl_->table, key);
  if (!n) return def;
  return get_list_impl<std::string>(n, key_path(key), "strings", [](const toml::node& e) { return e.value<std::string>(); });
}

int64_t ConfigReader::require_int(const std::string& key) {
  if (!has(key)) {
    impl_->known.insert(key);
    throw ConfigError(fmt::format("missing required key '{}' (an integer)", key_path(key)));
  }
  return get_int(key, 0);
}
double ConfigReader::require_double(const std::string& key) {
  if (!has(key)) {
    impl_->known.insert(key);
    throw ConfigError(fmt::format("missing required key '{}' (a number)", key_path(key)));
  }
  return get_double(key, 0);
}
std::string ConfigReader::require_string(const std::string& key) {
  if (!has(key)) {
    impl_->known.insert(key);
    throw ConfigError(fmt::format("missing required key '{}' (a string)", key_path(key)));
  }
  return get_string(key, "");
}

std::string ConfigReader::get_choice(const std::string& key, const std::string& def, const std::vector<std::string>& choices) {
  std::string v = get_string(key, def);
  if (std::find(choices.begin(), choices.end(), v) == choices.end()) {
    std::string near = nearest(v, choices);
    throw ConfigError(fmt::format("'{}' = \"{}\" is not one of: {}{}", key_path(key), v, fmt::join(choices, ", "),
                                  near.empty() ? "" : fmt::format(" (did you mean \"{}\"?)", near)));
  }
  return v;
}

ConfigReader ConfigReader::sub(const std::string& key) {
  impl_->known.insert(key);
  ConfigReader child;
  child.path_ = key_path(key);
  auto* n = lookup(impl_->table, key);
  if (n && !n->is_table()) wrong_type(key_path(key), "a table", *n);
  child.impl_->table = n ? n->as_table() : nullptr;
  return child;
}

void ConfigReader::allow(const std::vector<std::string>& keys) {
  for (auto& k : keys) impl_->known.insert(k);
}

void ConfigReader::finish() {
  if (!impl_->table) return;
  std::vector<std::string> known(impl_->known.begin(), impl_->known.end());
  for (auto& [k, v] : *impl_->table) {
    std::string key(k.str());
    if (impl_->known.count(key)) continue;
    std::string near = nearest(key, known);
    throw ConfigError(fmt::format("unknown key '{}'{}", key_path(key),
                                  near.empty() ? fmt::format(" (known keys here: {})", fmt::join(known, ", "))
                                               : fmt::format(" (did you mean '{}'?)", key_path(near))));
  }
}

}  // namespace cm
