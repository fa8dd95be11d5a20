// `cm config`: print the resolved config of a recipe plus overrides, without running anything.
#include <fmt/format.h>
#include "core/config.h"
#include "launch/command.h"

namespace cm::cli {
namespace {

const char* kHelp = R"(Usage: cm config RECIPE [OVERRIDES...] [--json]
       cm config --list

Print the resolved config of RECIPE (a recipe name or a .toml path) after composing its defaults list and
applying the overrides, without running anything.

Overrides:  a.b=v  set a key;  group=opt  choose a config group option;  +a.b=v  add a key;  ~a.b  delete a key.
Options:    --json   print JSON instead of TOML
            --list   list the recipes found in the recipe path)";

int run(const std::vector<std::string>& argv) {
  if (wants_help(argv, kHelp)) return 0;
  Args args(argv, {"json", "list"});
  args.check_known({"json", "list"});
  if (args.flag("list")) {
    fmt::print("recipe path: {}\n", fmt::join(recipe_search_path(), ":"));
    for (auto& r : list_recipes()) fmt::print("  {}\n", r);
    return 0;
  }
  auto plain = args.plain();
  if (plain.size() != 1) throw std::invalid_argument("expected exactly one RECIPE (see `cm config --help`)");
  Config cfg = Config::compose(plain[0], args.overrides());
  fmt::print("{}\n", args.flag("json") ? cfg.to_json() : cfg.to_toml());
  return 0;
}

CommandRegistration reg({"config", "print the resolved config of a recipe (no run)", kHelp, run});

}  // namespace
}  // namespace cm::cli
