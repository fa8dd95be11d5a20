// Subcommand registry and argument parsing for `cm` (see command.h).
#include "launch/command.h"

#include <fmt/format.h>
#include <stdexcept>
#include "core/config.h"

namespace cm::cli {

Args::Args(const std::vector<std::string>& argv, const std::vector<std::string>& switches) {
  auto is_switch = [&](const std::string& n) {
    return std::find(switches.begin(), switches.end(), n) != switches.end();
  };
  for (size_t i = 0; i < argv.size(); ++i) {
    const std::string& a = argv[i];
    if (a.rfind("--", 0) == 0 && a.size() > 2) {
      std::string name = a.substr(2);
      auto eq = name.find('=');
      if (eq != std::string::npos) {
        opts_[name.substr(0, eq)] = name.substr(eq + 1);
      } else if (is_switch(name)) {
        switches_given_.push_back(name);
      } else {
        if (i + 1 >= argv.size()) throw std::invalid_argument(fmt::format("option --{} needs a value", name));
        opts_[name] = argv[++i];
      }
    } else {
      positional_.push_back(a);
    }
  }
}

bool Args::flag(const std::string& name) const {
  return std::find(switches_given_.begin(), switches_given_.end(), name) != switches_given_.end();
}
std::optional<std::string> Args::opt(const std::string& name) const {
  auto it = opts_.find(name);
  if (it == opts_.end()) return std::nullopt;
  return it->second;
}
std::string Args::opt_or(const std::string& name, const std::string& def) const { return opt(name).value_or(def); }
int64_t Args::int_or(const std::string& name, int64_t def) const {
  auto v = opt(name);
  if (!v) return def;
  try {
    size_t pos = 0;
    int64_t r = std::stoll(*v, &pos);
    if (pos != v->size()) throw std::invalid_argument("");
    return r;
  } catch (...) {
    throw std::invalid_argument(fmt::format("option --{} expects an integer, got '{}'", name, *v));
  }
}
double Args::double_or(const std::string& name, double def) const {
  auto v = opt(name);
  if (!v) return def;
  try {
    size_t pos = 0;
    double r = std::stod(*v, &pos);
    if (pos != v->size()) throw std::invalid_argument("");
    return r;
  } catch (...) {
    throw std::invalid_argument(fmt::format("option --{} expects a number, got '{}'", name, *v));
  }
}
std::vector<int64_t> Args::int_list_or(const std::string& name, const std::vector<int64_t>& def) const {
  auto v = opt(name);
  if (!v) return def;
  std::vector<int64_t> out;
  size_t start = 0;
  while (start <= v->size()) {
    size_t end = v->find(',', start);
    if (end == std::string::npos) end = v->size();
    const std::string item = v->substr(start, end - start);
    if (!item.empty()) {
      try {
        size_t pos = 0;
        out.push_back(std::stoll(item, &pos));
        if (pos != item.size()) throw std::invalid_argument("");
      } catch (...) {
        throw std::invalid_argument(fmt::format("option --{} expects comma-separated integers, got '{}'", name, *v));
      }
    }
    start = end + 1;
  }
  return out;
}

std::vector<std::string> Args::overrides() const {
  std::vector<std::string> r;
  for (auto& p : positional_)
    if (p.find('=') != std::string::npos || p.rfind('+', 0) == 0 || p.rfind('~', 0) == 0) r.push_back(p);
  return r;
}
std::vector<std::string> Args::plain() const {
  std::vector<std::string> r;
  for (auto& p : positional_)
    if (!(p.find('=') != std::string::npos || p.rfind('+', 0) == 0 || p.rfind('~', 0) == 0)) r.push_back(p);
  return r;
}
void Args::check_known(const std::vector<std::string>& known) const {
  auto check = [&](const std::string& n) {
    if (std::find(known.begin(), known.end(), n) == known.end()) {
      std::string near = cm::nearest(n, known);
      throw std::invalid_argument(fmt::format("unknown option --{}{}", n,
                                              near.empty() ? "" : fmt::format(" (did you mean --{}?)", near)));
    }
  };
  for (auto& [k, v] : opts_) check(k);
  for (auto& s : switches_given_) check(s);
}

static std::map<std::string, Command>& registry() {
  static std::map<std::string, Command> r;
  return r;
}
void register_command(Command c) { registry()[c.name] = std::move(c); }
const std::map<std::string, Command>& commands() { return registry(); }

bool wants_help(const std::vector<std::string>& argv, const std::string& help) {
  for (auto& a : argv)
    if (a == "-h" || a == "--help") {
      fmt::print("{}\n", help);
      return true;
    }
  return false;
}

}  // namespace cm::cli
