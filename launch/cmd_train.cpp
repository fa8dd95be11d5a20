// `cm train`: train a recipe on this process (or as one rank of an mpirun/srun job).
#include <fmt/format.h>
#include "launch/command.h"
#include "recipes/recipe.h"
#include "recipes/trainer.h"

namespace cm::cli {
namespace {

const char* kHelp = R"(Usage: cm train RECIPE [OVERRIDES...] [--quiet]

Train RECIPE (a name from `cm config --list` or a .toml path) with the given overrides, e.g.
  cm train toy_ct train.steps=2000 run.dir=runs/my_ct
Progress lines show step, loss, schedule (N, mu), images/s and ETA. The run directory (run.dir, default
runs/RECIPE) receives config.toml, overrides.txt, meta.json, metrics.jsonl, samples/*.png, samples.png,
model.safetensors, ema_<rate>.safetensors and final.json.

Options:  --quiet   no progress lines)";

int run(const std::vector<std::string>& argv) {
  if (wants_help(argv, kHelp)) return 0;
  Args args(argv, {"quiet"});
  args.check_known({"quiet"});
  auto plain = args.plain();
  if (plain.size() != 1) throw std::invalid_argument("expected exactly one RECIPE (see `cm train --help`)");
  Recipe r = Recipe::load(plain[0], args.overrides());
  TrainerOptions opt;
  opt.quiet = args.flag("quiet");
  Trainer trainer(std::move(r), opt);
  trainer.run();
  return 0;
}

CommandRegistration reg({"train", "train a recipe (single process, or one rank under mpirun/srun)", kHelp, run});

}  // namespace
}  // namespace cm::cli
