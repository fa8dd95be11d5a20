// `cm schedule`: print the Karras grid and the curriculum N(k), mu(k) of a recipe at chosen steps.
#include <fmt/format.h>
#include "core/karras.h"
#include "launch/command.h"
#include "recipes/recipe.h"

namespace cm::cli {
namespace {

const char* kHelp = R"(Usage: cm schedule RECIPE [OVERRIDES...] [--steps k1,k2,...] [--points P] [--json] [--grid]

Print N(k) and mu(k) of RECIPE's consistency method at the training steps k (default: 0, K/4, K/2, 3K/4, K
with K = train.steps), and with --grid the Karras grid t_1..t_N of each N.
The CT curriculum follows the reference code (mu divides by N(k) - 1; see core/karras.h).

Options:  --steps LIST   comma-separated steps
          --points P     P evenly spaced steps from 0 to K instead of the default five
          --grid         also print the grid of noise levels for each step
          --json         JSON instead of a table)";

struct Row {
  int64_t k, n;
  double mu;
  std::vector<double> grid;
};

int run(const std::vector<std::string>& argv) {
  if (wants_help(argv, kHelp)) return 0;
  Args args(argv, {"json", "grid"});
  args.check_known({"json", "grid", "steps", "points"});
  auto plain = args.plain();
  if (plain.size() != 1) throw std::invalid_argument("expected exactly one RECIPE (see `cm schedule --help`)");
  Recipe r = Recipe::load(plain[0], args.overrides());
  const auto& m = r.method;
  if (!m.is_consistency())
    throw std::invalid_argument(fmt::format("recipe '{}' trains an EDM model (method.name = \"edm\"): it has no N(k), mu(k)", r.name));
  const int64_t K = r.train.steps;
  std::vector<int64_t> steps = args.int_list_or("steps", {});
  if (steps.empty()) {
    const int64_t p = args.int_or("points", 5);
    for (int64_t i = 0; i < p; ++i) steps.push_back(p == 1 ? 0 : K * i / (p - 1));
  }
  std::vector<Row> rows;
  for (auto k : steps) {
    if (k < 0) throw std::invalid_argument(fmt::format("step {} is negative", k));
    Row row{k, 0, 0, {}};
    row.n = m.curriculum.num_scales(k), row.mu = m.curriculum.target_ema(k);
    if (args.flag("grid")) row.grid = karras_grid(row.n, m.range);
    rows.push_back(row);
  }
  if (args.flag("json")) {
    fmt::print("{{\"recipe\": \"{}\", \"method\": \"{}\", \"schedule\": \"{}\", \"total_steps\": {}, \"rows\": [", r.name, m.name, m.curriculum.name(), K);
    for (size_t i = 0; i < rows.size(); ++i) {
      fmt::print("{}{{\"step\": {}, \"N\": {}, \"mu\": {:.17g}", i ? ", " : "", rows[i].k, rows[i].n, rows[i].mu);
      if (!rows[i].grid.empty()) fmt::print(", \"grid\": [{:.17g}]", fmt::join(rows[i].grid, ", "));
      fmt::print("}}");
    }
    fmt::print("]}}\n");
    return 0;
  }
  fmt::print("recipe {} | method {} | schedule {} | K = {} | sigma in [{}, {}], rho {}\n", r.name, m.name, m.curriculum.name(), K,
             m.range.sigma_min, m.range.sigma_max, m.range.rho);
  fmt::print("{:>10} {:>6} {:>20}\n", "step k", "N(k)", "mu(k)");
  for (auto& row : rows) {
    fmt::print("{:>10} {:>6} {:>20.17g}\n", row.k, row.n, row.mu);
    if (!row.grid.empty()) fmt::print("    grid: {:.6g}\n", fmt::join(row.grid, " "));
  }
  return 0;
}

CommandRegistration reg({"schedule", "print the Karras grid, N(k) and mu(k) of a recipe", kHelp, run});

}  // namespace
}  // namespace cm::cli
