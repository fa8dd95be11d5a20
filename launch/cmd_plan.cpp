// `cm plan`: what a recipe will do on a given world, before any GPU hour is spent.
#include <fmt/format.h>

#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <unistd.h>
#include <torch/torch.h>
#include "core/config.h"
#include "core/lpips.h"
#include "distributed/guard.h"
#include "distributed/world.h"
#include "launch/command.h"
#include "launch/model_stats.h"
#include "recipes/recipe.h"

namespace cm::cli {
namespace {

namespace fs = std::filesystem;

const char* kHelp = R"(Usage: cm plan RECIPE [OVERRIDES...] [--nodes N] [--gpus-per-node G] [--cpu-ranks R]
                              [--gpu-memory GB] [--images-per-second X] [--quiet] [--layout]

Print what `cm train RECIPE [OVERRIDES...]` will do on a world of ranks, and fail early (exit code 1, every
problem listed) on settings that cannot work:
  - the resolved config (unless --quiet);
  - the world: nodes x ranks per node (one rank per GPU; --cpu-ranks R for CPU ranks), per-rank batch and
    micro-batch, images per step and in total;
  - the network: parameters, forward GFLOPs per image, training FLOPs per image (student forward+backward,
    target and teacher evaluations) and per step;
  - estimated memory per GPU (weights, gradients, RAdam moments, target/EMA/teacher copies, activations of
    one micro-batch, the LPIPS network) against --gpu-memory (default 80 GB; not checked for CPU ranks);
  - with --images-per-second X (measured, or from a benchmark), the wall time of the whole run;
  - that the dataset (its manifest.json), the CD teacher and the LPIPS weights exist.
Defaults for the world come from SLURM's environment inside a job (SLURM_JOB_NUM_NODES, SLURM_NTASKS_PER_NODE),
else one node with the GPUs this LibTorch sees, else one CPU rank.

--layout: start the world for real and print where every rank runs, then the plan for that world, and stop
(no training). Run it with the job's own launcher to check a multi-node job in seconds before it spends GPU
hours, e.g. `sbatch --nodes=4 launch/slurm/cm_nodes.sbatch plan RECIPE --layout` or
`mpirun --hostfile H -npernode 8 build/cm plan RECIPE --layout`. Every rank reports one line, in rank order:
  rank R/W host H local L/LS device D
(L = node-local rank from MPI_Comm_split_type; D = cuda:L on a GPU node whose ranks all see the same GPUs,
cuda:0 when the launcher gives each rank its own CUDA_VISIBLE_DEVICES). A node with more ranks than GPUs
stops with a message saying so. On a node without GPUs the line ends with what a GPU node would give:
(on a GPU node: cuda:L).)";

std::string gb(double bytes) { return fmt::format("{:.1f} GB", bytes / 1e9); }
std::string duration(double s) {
  if (s < 120) return fmt::format("{:.0f} s", s);
  if (s < 7200) return fmt::format("{:.0f} min", s / 60);
  if (s < 3 * 86400) return fmt::format("{:.1f} h", s / 3600);
  return fmt::format("{:.1f} days", s / 86400);
}
int64_t env_int(const char* name, int64_t def) {
  const char* v = std::getenv(name);
  if (!v || !*v) return def;
  try {
    return std::stoll(v);  // SLURM_NTASKS_PER_NODE may read "8(x2)": the leading number is the one wanted
  } catch (...) {
    return def;
  }
}

constexpr int64_t kLpipsParameters = 14'716'160;  // VGG16 features (14,714,688) + the five linear layers (1,472)

int plan(const Args& args, const Recipe& r, const dist::World* live);

int run(const std::vector<std::string>& argv) {
  if (wants_help(argv, kHelp)) return 0;
  Args args(argv, {"quiet", "layout"});
  args.check_known({"quiet", "nodes", "gpus-per-node", "cpu-ranks", "gpu-memory", "images-per-second", "layout"});
  auto plain = args.plain();
  if (plain.size() != 1) throw std::invalid_argument("expected exactly one RECIPE (see `cm plan --help`)");
  const Recipe r = Recipe::load(plain[0], args.overrides());
  if (!args.flag("layout")) return plan(args, r, nullptr);
  if (!dist::launched_by_mpi()) {
    // One process: its own line, with the rule a launcher's ranks will follow.
    const int gpus = static_cast<int>(torch::cuda::device_count());
    char host[256] = {0};
    gethostname(host, sizeof(host) - 1);
    const torch::Device d = dist::pick_device(r.train.device, gpus > 0, 0, 1, gpus, true, host);
    fmt::print("world: 1 rank on 1 node(s) (no launcher: run `cm plan --layout` under srun or mpirun to see every rank):\n"
               "  rank 0/1 host {} local 0/1 device {}{}\n", host, d.str(), gpus == 0 ? " (on a GPU node: cuda:0)" : "");
    return plan(args, r, nullptr);
  }
  return dist::run_guarded([&] {
    setenv("CM_SHOW_LAYOUT", "1", 1);  // World::init prints the layout (rank 0, one line per rank)
    dist::WorldOptions wo;
    wo.device = r.train.device;
    wo.timeout_s = r.train.watchdog_s;
    const dist::World& w = dist::World::init(wo);
    if (w.size == 1) fmt::print("world: 1 rank on 1 node(s):\n  rank 0/1 host {} local 0/1 device {}\n", w.host, w.device.str());
    const int rc = w.rank == 0 ? plan(args, r, &w) : 0;
    dist::World::finalize();
    return rc;
  });
}

// The plan itself; with `live` (cm plan --layout under a launcher, rank 0) for the world that was started.
int plan(const Args& args, const Recipe& r, const dist::World* live) {
  // World
  const bool cpu = args.opt_or("cpu-ranks", "").size() > 0 || r.train.device == "cpu" || (live && !live->device.is_cuda());
  const int64_t visible_gpus = torch::cuda::is_available() ? static_cast<int64_t>(torch::cuda::device_count()) : 0;
  const int64_t nodes = live ? live->nodes : args.int_or("nodes", env_int("SLURM_JOB_NUM_NODES", 1));
  int64_t per_node = live ? live->local_size
                     : cpu ? args.int_or("cpu-ranks", 1)
                           : args.int_or("gpus-per-node", env_int("SLURM_NTASKS_PER_NODE", visible_gpus > 0 ? visible_gpus : 1));
  if (nodes < 1 || per_node < 1) throw std::invalid_argument("--nodes and the ranks per node must be >= 1");
  const int64_t world = live ? live->size : nodes * per_node;
  const bool on_gpu = live ? live->device.is_cuda()
                           : !cpu && (visible_gpus > 0 || args.opt_or("gpus-per-node", "").size() > 0 ||
                                      std::getenv("SLURM_JOB_GPUS") || r.train.device == "cuda");
  const double gpu_mem = args.double_or("gpu-memory", 80.0) * 1e9;

  std::vector<std::string> problems;
  const int64_t per_rank = r.train.batch / world;
  if (r.train.batch % world != 0)
    problems.push_back(fmt::format("train.batch = {} does not divide by the {} ranks (per-rank batch would be {:.2f}); "
                                   "pick a batch that is a multiple of {} or another world size",
                                   r.train.batch, world, static_cast<double>(r.train.batch) / world, world));
  const int64_t micro = r.train.micro_batches;
  if (per_rank > 0 && per_rank % micro != 0)
    problems.push_back(fmt::format("the per-rank batch {} does not divide into train.micro_batches = {}", per_rank, micro));
  const int64_t micro_size = std::max<int64_t>(1, per_rank / micro);

  // Network and compute
  const ModelStats s = measure_model(r.config);
  const bool cd = r.method.name == "cd";
  const bool exact_teacher = cd && r.method.teacher == "exact";
  const bool has_target = r.method.is_consistency() && r.method.name != "ict";
  const bool lpips = r.method.is_consistency() && r.method.metric == Metric::Lpips;
  const int64_t copies = (has_target ? 1 : 0) + static_cast<int64_t>(r.train.ema_rates.size()) + (cd && !exact_teacher ? 1 : 0);
  MemoryEstimate mem = estimate_memory(s, micro_size, copies, false);
  const double lpips_bytes = lpips ? 4.0 * kLpipsParameters : 0.0;
  const TrainingFlops work = training_flops(r, s);  // forward-equivalents per image (launch/model_stats.h)
  const double forwards = work.forwards, flops_image = work.per_image;
  const double images_total = static_cast<double>(r.train.steps) * static_cast<double>(r.train.batch);

  // Files the run needs
  if (r.dataset_kind == "hdf5" && !fs::exists(fs::path(r.data_path) / "manifest.json"))
    problems.push_back(fmt::format("dataset '{}' not found (no {}/manifest.json): convert it first with `cm data convert` "
                                   "(see the comment in the recipe's dataset config) or set dataset.path",
                                   r.data_path, r.data_path));
  if (cd && !exact_teacher && !fs::exists(r.method.teacher))
    problems.push_back(fmt::format("CD teacher '{}' not found: train one with the matching *_edm recipe or download the "
                                   "released EDM checkpoint, then set method.teacher",
                                   r.method.teacher));
  if (lpips) {
    const std::string p = r.method.lpips_weights.empty() ? default_lpips_weights_path() : r.method.lpips_weights;
    if (!fs::exists(p))
      problems.push_back(fmt::format("LPIPS weights '{}' not found: make them with tools/convert_lpips_weights.py (see "
                                     "core/lpips.h) and set method.lpips_weights or $CM_LPIPS_WEIGHTS",
                                     p));
  }
  const double mem_total = mem.total + lpips_bytes;
  if (on_gpu && mem_total > gpu_mem)
    problems.push_back(fmt::format("estimated memory per GPU {} exceeds --gpu-memory {}: raise train.micro_batches "
                                   "(activations scale with the micro-batch) or use more GPUs",
                                   gb(mem_total), gb(gpu_mem)));

  if (!args.flag("quiet")) fmt::print("# resolved config\n{}\n", r.config.to_toml());
  fmt::print("plan for {} ({} {}):\n", r.name, r.method.name, r.method.is_consistency() ? "consistency model" : "model");
  if (live && world != nodes * per_node)
    fmt::print("  world         {} ranks on {} node(s) (rank 0's node has {}; see the layout above)\n", world, nodes, per_node);
  else
    fmt::print("  world         {} node(s) x {} {} rank(s) = {} ranks{}\n", nodes, per_node, on_gpu ? "GPU" : "CPU", world,
               live ? " (this job's, started by --layout)" : "");
  fmt::print("  batch         global {}, per rank {}{}, in {} micro-batch(es) of {}\n", r.train.batch, per_rank,
             r.train.batch % world ? " (not whole!)" : "", micro, micro_size);
  fmt::print("  steps         {} ({:.1f} M images in total)\n", with_commas(r.train.steps), images_total / 1e6);
  fmt::print("  network       {} on {}{}: {} parameters, {:.2f} GFLOPs per forward per image\n", s.arch,
             s.shape.resolution > 0 ? fmt::format("{}x{}x{}", s.shape.channels, s.shape.resolution, s.shape.resolution)
                                    : fmt::format("{}-d vectors", s.shape.channels),
             s.shape.num_classes ? fmt::format(", {} classes", s.shape.num_classes) : std::string(),
             with_commas(s.parameters), 2 * s.ops.macs() / 1e9);
  fmt::print("  compute       {:.0f} forward-equivalents per image -> {:.1f} GFLOPs per image, {:.1f} TFLOPs per step "
             "(network only{})\n",
             forwards, flops_image / 1e9, flops_image * r.train.batch / 1e12, lpips ? ", LPIPS not counted" : "");
  fmt::print("  memory/rank   {} = weights {} + grads {} + RAdam {} + {} copies {} + activations {} x {:.2f} MB{}\n",
             gb(mem_total), gb(mem.weights), gb(mem.gradients), gb(mem.optimizer), copies, gb(mem.copies), micro_size,
             mem.activations_per_image / 1e6, lpips ? fmt::format(" + LPIPS {}", gb(lpips_bytes)) : std::string());
  const double ips = args.double_or("images-per-second", 0.0);
  if (ips > 0)
    fmt::print("  wall time     {} at {:.0f} images/s ({:.2f} s per step)\n", duration(images_total / ips), ips,
               r.train.batch / ips);
  else
    fmt::print("  wall time     give --images-per-second (measure with a short run: cm train ... train.steps=50) for an "
               "estimate\n");
  if (!problems.empty()) {
    fmt::print(stderr, "cm plan: {} problem(s):\n", problems.size());
    for (auto& p : problems) fmt::print(stderr, "  - {}\n", p);
    return 1;
  }
  fmt::print("  ok            nothing stops this run from starting\n");
  return 0;
}

CommandRegistration reg({"plan", "what a recipe will run on a world of ranks: batch split, FLOPs, memory, time, checks",
                         kHelp, run});

}  // namespace
}  // namespace cm::cli
