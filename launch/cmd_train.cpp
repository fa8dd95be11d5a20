// `cm train`: train a recipe on this process (or as one rank of an mpirun/srun job).
#include <fmt/format.h>
#include "launch/command.h"
#include "recipes/recipe.h"
#include "recipes/trainer.h"
#include "distributed/communicator.h"
#include "distributed/world.h"

namespace cm::cli {
namespace {

const char* kHelp = R"(Usage: cm train RECIPE [OVERRIDES...] [--quiet]

Train RECIPE (a name from `cm config --list` or a .toml path) with the given overrides, e.g.
  cm train toy_ct train.steps=2000 run.dir=runs/my_ct
Under mpirun/srun each process is one rank: train.batch is the global batch, split evenly over the ranks;
gradients are averaged with MPI; only rank 0 prints and writes the run directory.
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
  const World& w = init_world();
  try {
    Recipe r = Recipe::load(plain[0], args.overrides());
    auto comm = make_communicator();
    TrainerOptions opt;
    opt.rank = w.rank, opt.world = w.size, opt.local_rank = w.local_rank, opt.local_size = w.local_size;
    opt.quiet = args.flag("quiet");
    opt.comm = comm.get();
    Trainer trainer(std::move(r), opt);
    trainer.run();
  } catch (const std::exception& e) {
    // One failing rank must not leave the others waiting in a collective: abort the whole job.
    if (w.size > 1) abort_world(fmt::format("cm train failed: {}", e.what()));
    throw;
  }
  finalize_world();
  return 0;
}

CommandRegistration reg({"train", "train a recipe (single process, or one rank under mpirun/srun)", kHelp, run});

}  // namespace
}  // namespace cm::cli
