// Subcommand registry of the `cm` program and a small argument parser shared by the subcommands.
#pragma once
#include <functional>
#include <map>
#include <optional>
#include <string>
#include <vector>

namespace cm::cli {

// Parsed arguments of one subcommand: --flag value / --flag=value options, bare --switches, and
// positionals (recipe names, `key=value` overrides, paths) in order.
class Args {
 public:
  // `switches` are the options that take no value (e.g. "json", "help").
  Args(const std::vector<std::string>& argv, const std::vector<std::string>& switches);
  bool flag(const std::string& name) const;  // a switch was given
  std::optional<std::string> opt(const std::string& name) const;
  std::string opt_or(const std::string& name, const std::string& def) const;
  int64_t int_or(const std::string& name, int64_t def) const;
  double double_or(const std::string& name, double def) const;
  // A comma-separated list of integers ("0,22,39"); `def` when the option is absent.
  std::vector<int64_t> int_list_or(const std::string& name, const std::vector<int64_t>& def) const;
  const std::vector<std::string>& positional() const { return positional_; }
  // Positionals that look like overrides (contain '=' or start with '+'/'~') and those that do not.
  std::vector<std::string> overrides() const;
  std::vector<std::string> plain() const;
  // Throws if an option not in `known` was given (names the nearest known option).
  void check_known(const std::vector<std::string>& known) const;

 private:
  std::map<std::string, std::string> opts_;
  std::vector<std::string> switches_given_;
  std::vector<std::string> positional_;
};

struct Command {
  std::string name;     // "train", "data", ...
  std::string summary;  // one line for `cm --help`
  std::string help;     // full text for `cm NAME --help`
  std::function<int(const std::vector<std::string>& argv)> run;  // argv excludes the command name
};

void register_command(Command c);
const std::map<std::string, Command>& commands();

struct CommandRegistration {
  explicit CommandRegistration(Command c) { register_command(std::move(c)); }
};

// True when argv asks for help (-h / --help anywhere); then prints `help` and the caller returns 0.
bool wants_help(const std::vector<std::string>& argv, const std::string& help);

}  // namespace cm::cli
