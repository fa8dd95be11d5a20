// `cm train`: train a recipe on this process (or as one rank of an mpirun/srun job).
#include <fmt/format.h>
#include "launch/command.h"
#include "launch/model_args.h"         // run_world_job: a plain process, or one rank of the world
#include "recipes/recipe.h"
#include "recipes/observers.h"  // add_standard_observers
#include "recipes/trainer.h"
#include "distributed/communicator.h"  // Communicator::create: NCCL for a GPU, MPI for the CPU
#include "distributed/guard.h"         // run_guarded: a rank that throws aborts the whole job
#include "distributed/world.h"         // World::init under mpirun/srun
#include "distributed/preemption.h"       // kExitPreempted

namespace cm::cli {
namespace {

const char* kHelp = R"(Usage: cm train RECIPE [OVERRIDES...] [--quiet]

Train RECIPE (a name from `cm config --list` or a .toml path) with the given overrides, e.g.
  cm train toy_ct train.steps=2000 run.dir=runs/my_ct
Under mpirun/srun each process is one rank: train.batch is the global batch, split evenly over the ranks;
gradients are averaged in buckets during backward (NCCL on GPUs, MPI on CPUs, see the [dist] keys); only
rank 0 prints and writes the run directory. A rank that fails aborts the whole job; a collective that waits
longer than train.watchdog_s aborts it too.
Progress lines show step, loss, schedule (N, mu), images/s and ETA. The run directory (run.dir, default
runs/RECIPE) receives config.toml, overrides.txt, meta.json, metrics.jsonl, samples/*.png, samples.png,
model.safetensors, ema_<rate>.safetensors and final.json.

Checkpoints: RUN_DIR/checkpoints/step_NNNNNNNN/ every checkpoint.every steps, at the end, and when the
job is asked to stop; the newest checkpoint.keep_last are kept, plus multiples of checkpoint.keep_every.
Restarting the same command continues from the newest committed checkpoint (resume=auto, the default),
exactly as if the run had not stopped; resume=PATH picks a checkpoint (or run directory), resume=never
refuses to start over a run directory that has checkpoints. On resume the config must equal the saved
one except checkpoint.*, run.*, sample.*, train.steps, logging and device keys; a mismatch names them.
On SIGTERM, SIGUSR1 or SIGINT (Ctrl-C; SLURM: --signal=USR1@180; under mpirun signal mpirun with SIGUSR1)
every rank stops after the same step, the checkpoint of that step is committed, and cm exits with code 75
(EX_TEMPFAIL: requeue the job and run the same command); a repeated signal changes nothing, one during
start-up stops before the first step, one after the last step lets the finished run end with 0. `cm export CKPT --ema RATE` extracts weights.

Options:  --quiet   no progress lines)";

int run(const std::vector<std::string>& argv) {
  if (wants_help(argv, kHelp)) return 0;
  Args args(argv, {"quiet"});
  args.check_known({"quiet"});
  auto plain = args.plain();
  if (plain.size() != 1) throw std::invalid_argument("expected exactly one RECIPE (see `cm train --help`)");
  TrainerOptions opt;
  opt.quiet = args.flag("quiet");
  Recipe r = Recipe::load(plain[0], args.overrides());
  // Without a launcher this stays a plain process (no MPI); under mpirun/srun every rank joins the world.
  const std::string device = r.train.device;
  const double watchdog_s = r.train.watchdog_s;
  return run_world_job(device, watchdog_s, [&](const dist::World* w, std::shared_ptr<dist::Communicator> comm) {
    if (w) opt.rank = w->rank, opt.world = w->size, opt.local_rank = w->local_rank, opt.local_size = w->local_size;
    opt.comm = std::move(comm);
    Trainer trainer(std::move(r), std::move(opt));
    add_standard_observers(trainer);
    return trainer.run().preempted_by != 0 ? kExitPreempted : 0;
  });
}

CommandRegistration reg({"train", "train a recipe (single process, or one rank under mpirun/srun)", kHelp, run});

}  // namespace
}  // namespace cm::cli
