// `cm plan`: what a recipe will do on a given world, before any GPU hour is spent.
#include <fmt/format.h>

#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <utility>
#include <vector>
#include <unistd.h>
#include <torch/torch.h>
#include "core/config.h"
#include "core/io/json.h"
#include "core/lpips.h"
#include "core/nets/layers.h"  // ShapeOnlyParams
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
       cm plan RECIPE [OVERRIDES...] --scaling (--step-s S | --bench-json FILE) [--batch-per-gpu B]
                      [--overlap H] [--gpus-per-node 8] [--nodes 8] [--nvlink-gbs 450] [--ib-gbs 50]
                      [--nvlink-hop-us 2] [--ib-hop-us 5] [--json FILE]

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
(on a GPU node: cuda:L).

--scaling: project a step time measured on one GPU to 1 node of G GPUs and to 2, 4, ... N nodes (default
8 x 8 = 64 GPUs), at the same per-GPU batch (weak scaling). The step's compute time S comes from --step-s or
from the JSON of `cm bench step --json FILE` (step_s, batch_per_rank). The gradient buckets are the ones the
trainer's reducer makes (the network's float32 parameters in reverse order, dist.bucket_mb MiB each); each
is all-reduced by a ring of W GPUs in
    t = 2 (W-1)/W x bytes / busbw + 2 (W-1) x hop latency
with busbw = --nvlink-gbs within a node (default 450 GB/s: NVLink 4 of H100/H200 SXM, 900 GB/s both
directions together, NVIDIA datasheet) and --ib-gbs across nodes (default 50 GB/s: one 400 Gb/s NDR
InfiniBand adapter per GPU, as in DGX H100), hop latencies --nvlink-hop-us 2 and --ib-hop-us 5 (assumed).
A flat ring; NCCL's tree and NVLS algorithms do better on latency. --overlap H is the share of the bucketed
communication hidden behind backward (what `cm bench allreduce` measured: "hides X %"; default 0 = none);
the hidden part is at most the backward time (2 of the step's forward-equivalents) and never includes the
last bucket. Step(W) = S + exposed communication; efficiency = S / Step(W).)";

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
int scaling(const Args& args, const Recipe& r);

int run(const std::vector<std::string>& argv) {
  if (wants_help(argv, kHelp)) return 0;
  Args args(argv, {"quiet", "layout", "scaling"});
  args.check_known({"quiet", "nodes", "gpus-per-node", "cpu-ranks", "gpu-memory", "images-per-second", "layout", "scaling",
                    "step-s", "bench-json", "batch-per-gpu", "overlap", "nvlink-gbs", "ib-gbs", "nvlink-hop-us", "ib-hop-us",
                    "json"});
  auto plain = args.plain();
  if (plain.size() != 1) throw std::invalid_argument("expected exactly one RECIPE (see `cm plan --help`)");
  const Recipe r = Recipe::load(plain[0], args.overrides());
  if (args.flag("scaling")) return scaling(args, r);
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

// The world a plan is for: the live one (--layout under a launcher), or the options, SLURM's environment and
// the GPUs this LibTorch sees.
struct WorldPlan {
  int64_t nodes = 1, per_node = 1, world = 1;
  bool on_gpu = false;
  double gpu_mem = 80e9;
};

WorldPlan plan_world(const Args& args, const Recipe& r, const dist::World* live) {
  WorldPlan w;
  const bool cpu = args.opt_or("cpu-ranks", "").size() > 0 || r.train.device == "cpu" || (live && !live->device.is_cuda());
  const int64_t visible_gpus = torch::cuda::is_available() ? static_cast<int64_t>(torch::cuda::device_count()) : 0;
  w.nodes = live ? live->nodes : args.int_or("nodes", env_int("SLURM_JOB_NUM_NODES", 1));
  w.per_node = live ? live->local_size
               : cpu ? args.int_or("cpu-ranks", 1)
                     : args.int_or("gpus-per-node", env_int("SLURM_NTASKS_PER_NODE", visible_gpus > 0 ? visible_gpus : 1));
  if (w.nodes < 1 || w.per_node < 1) throw std::invalid_argument("--nodes and the ranks per node must be >= 1");
  w.world = live ? live->size : w.nodes * w.per_node;
  w.on_gpu = live ? live->device.is_cuda()
                  : !cpu && (visible_gpus > 0 || args.opt_or("gpus-per-node", "").size() > 0 ||
                             std::getenv("SLURM_JOB_GPUS") || r.train.device == "cuda");
  w.gpu_mem = args.double_or("gpu-memory", 80.0) * 1e9;
  return w;
}

// The network's size, work and memory for the per-rank micro-batch.
struct WorkPlan {
  int64_t per_rank = 0, micro_size = 1, copies = 0;
  ModelStats stats;
  MemoryEstimate mem;
  TrainingFlops work;
  bool lpips = false;
  double lpips_bytes = 0, mem_total = 0, images_total = 0;
};

WorkPlan plan_work(const Recipe& r, const WorldPlan& w, std::vector<std::string>& problems) {
  WorkPlan p;
  p.per_rank = r.train.batch / w.world;
  for (auto& problem : batch_split_problems(r.train, w.world)) problems.push_back(problem);
  const int64_t micro = r.train.micro_batches;
  p.micro_size = std::max<int64_t>(1, p.per_rank / micro);
  p.stats = measure_model(r.config, is_mixed(r.train.precision));  // activations at the widths autocast gives them in bf16 / fp16
  const bool has_target = r.method.has_target_network();
  p.lpips = r.method.is_consistency() && r.method.metric == Metric::Lpips;
  p.copies = (has_target ? 1 : 0) + static_cast<int64_t>(r.train.ema_rates.size()) + (r.method.learned_teacher() ? 1 : 0);
  p.mem = estimate_memory(p.stats, p.micro_size, p.copies);
  p.lpips_bytes = p.lpips ? 4.0 * kLpipsParameters : 0.0;
  p.mem_total = p.mem.total + p.lpips_bytes;
  p.work = training_flops(r, p.stats);  // forward-equivalents per image (launch/model_stats.h)
  p.images_total = static_cast<double>(r.train.steps) * static_cast<double>(r.train.batch);
  if (w.on_gpu && p.mem_total > w.gpu_mem)
    problems.push_back(fmt::format("estimated memory per GPU {} exceeds --gpu-memory {}: raise train.micro_batches "
                                   "(activations scale with the micro-batch) or use more GPUs",
                                   gb(p.mem_total), gb(w.gpu_mem)));
  return p;
}

// The files the run reads before step 1: dataset manifest, CD teacher, LPIPS weights.
void check_files(const Recipe& r, std::vector<std::string>& problems) {
  if (r.dataset_kind == "hdf5" && !fs::exists(fs::path(r.data_path) / "manifest.json"))
    problems.push_back(fmt::format("dataset '{}' not found (no {}/manifest.json): convert it first with `cm data convert` "
                                   "(see the comment in the recipe's dataset config) or set dataset.path",
                                   r.data_path, r.data_path));
  if (r.method.learned_teacher() && !fs::exists(r.method.teacher))
    problems.push_back(fmt::format("CD teacher '{}' not found: train one with the matching *_edm recipe or download the "
                                   "released EDM checkpoint, then set method.teacher",
                                   r.method.teacher));
  if (r.method.is_consistency() && r.method.metric == Metric::Lpips) {
    const std::string p = r.method.lpips_weights.empty() ? default_lpips_weights_path() : r.method.lpips_weights;
    if (!fs::exists(p))
      problems.push_back(fmt::format("LPIPS weights '{}' not found: make them with tools/convert_lpips_weights.py (see "
                                     "core/lpips.h) and set method.lpips_weights or $CM_LPIPS_WEIGHTS",
                                     p));
  }
}

void print_plan(const Args& args, const Recipe& r, const WorldPlan& w, const WorkPlan& p, const dist::World* live) {
  const ModelStats& s = p.stats;
  const MemoryEstimate& mem = p.mem;
  if (!args.flag("quiet")) fmt::print("# resolved config\n{}\n", r.config.to_toml());
  fmt::print("plan for {} ({} {}):\n", r.name, r.method.name, r.method.is_consistency() ? "consistency model" : "model");
  if (live && w.world != w.nodes * w.per_node)
    fmt::print("  world         {} ranks on {} node(s) (rank 0's node has {}; see the layout above)\n", w.world, w.nodes, w.per_node);
  else
    fmt::print("  world         {} node(s) x {} {} rank(s) = {} ranks{}\n", w.nodes, w.per_node, w.on_gpu ? "GPU" : "CPU", w.world,
               live ? " (this job's, started by --layout)" : "");
  fmt::print("  batch         global {}, per rank {}{}, in {} micro-batch(es) of {}\n", r.train.batch, p.per_rank,
             r.train.batch % w.world ? " (not whole!)" : "", r.train.micro_batches, p.micro_size);
  fmt::print("  steps         {} ({:.1f} M images in total)\n", with_commas(r.train.steps), p.images_total / 1e6);
  fmt::print("  network       {} on {}{}: {} parameters, {:.2f} GFLOPs per forward per image\n", s.arch,
             s.shape.resolution > 0 ? fmt::format("{}x{}x{}", s.shape.channels, s.shape.resolution, s.shape.resolution)
                                    : fmt::format("{}-d vectors", s.shape.channels),
             s.shape.num_classes ? fmt::format(", {} classes", s.shape.num_classes) : std::string(),
             with_commas(s.parameters), 2 * s.ops.macs() / 1e9);
  fmt::print("  compute       {:.0f} forward-equivalents per image -> {:.1f} GFLOPs per image, {:.1f} TFLOPs per step "
             "(network only{})\n",
             p.work.forwards, p.work.per_image / 1e9, p.work.per_image * r.train.batch / 1e12, p.lpips ? ", LPIPS not counted" : "");
  fmt::print("  memory/rank   {} = weights {} + grads {} + RAdam {} + {} copies {} + activations {} x {:.2f} MB ({}){}\n",
             gb(p.mem_total), gb(mem.weights), gb(mem.gradients), gb(mem.optimizer), p.copies, gb(mem.copies), p.micro_size,
             mem.activations_per_image / 1e6, to_string(r.train.precision),
             p.lpips ? fmt::format(" + LPIPS {}", gb(p.lpips_bytes)) : std::string());
  const double ips = args.double_or("images-per-second", 0.0);
  if (ips > 0)
    fmt::print("  wall time     {} at {:.0f} images/s ({:.2f} s per step)\n", duration(p.images_total / ips), ips,
               r.train.batch / ips);
  else
    fmt::print("  wall time     give --images-per-second (measure with a short run: cm train ... train.steps=50) for an "
               "estimate\n");
}

// The plan itself; with `live` (cm plan --layout under a launcher, rank 0) for the world that was started.
int plan(const Args& args, const Recipe& r, const dist::World* live) {
  std::vector<std::string> problems;
  const WorldPlan w = plan_world(args, r, live);
  const WorkPlan p = plan_work(r, w, problems);
  check_files(r, problems);
  print_plan(args, r, w, p, live);
  if (!problems.empty()) {
    fmt::print(stderr, "cm plan: {} problem(s):\n", problems.size());
    for (auto& q : problems) fmt::print(stderr, "  - {}\n", q);
    return 1;
  }
  fmt::print("  ok            nothing stops this run from starting\n");
  return 0;
}

// ---- cm plan --scaling ----

// Bytes of each gradient bucket, as GradReducer packs the student's parameters (distributed/reducer.cpp):
// reverse registration order, a new bucket when the dtype changes or the capacity would be exceeded.
std::vector<double> gradient_buckets(const Recipe& r) {
  ShapeOnlyParams shape_only;  // names and shapes only: no memory, no initialisation
  const auto net = build_model(r.config, model_shape(r.config));
  const auto params = net->parameters();
  const double cap = r.dist.bucket_mb * 1024.0 * 1024.0;
  std::vector<double> buckets;
  torch::ScalarType last = torch::kFloat;
  for (size_t k = params.size(); k-- > 0;) {
    const auto& p = params[k];
    if (!p.requires_grad()) continue;
    const double bytes = static_cast<double>(p.numel()) * static_cast<double>(p.element_size());
    if (buckets.empty() || p.scalar_type() != last || buckets.back() + bytes > cap) buckets.push_back(0.0);
    buckets.back() += bytes;
    last = p.scalar_type();
  }
  return buckets;
}

struct Fabric {
  double busbw_gbs = 0, hop_us = 0;
  const char* name = "";
};

// One projected world: W GPUs on `nodes` nodes.
struct ScalingRow {
  int64_t nodes = 1, gpus = 1;
  double comm_s = 0, exposed_s = 0, step_s = 0, efficiency = 1, images_per_s = 0;
  const char* fabric = "-";
};

ScalingRow project(int64_t nodes, int64_t per_node, const std::vector<double>& buckets, double step_s, double backward_s,
                   double overlap, int64_t batch_per_gpu, const Fabric& nvlink, const Fabric& ib) {
  ScalingRow row;
  row.nodes = nodes, row.gpus = nodes * per_node;
  const double w = static_cast<double>(row.gpus);
  if (row.gpus > 1) {
    const Fabric& f = nodes > 1 ? ib : nvlink;
    row.fabric = f.name;
    double last = 0;
    for (double bytes : buckets) {
      last = 2.0 * (w - 1) / w * bytes / (f.busbw_gbs * 1e9) + 2.0 * (w - 1) * f.hop_us * 1e-6;
      row.comm_s += last;
    }
    const double hidden = std::min(overlap * row.comm_s, backward_s);
    row.exposed_s = std::max(row.comm_s - hidden, last);  // the last bucket starts after backward ends
  }
  row.step_s = step_s + row.exposed_s;
  row.efficiency = step_s / row.step_s;
  row.images_per_s = w * static_cast<double>(batch_per_gpu) / row.step_s;
  return row;
}

void write_scaling_json(const std::string& path, const Recipe& r, double step_s, double backward_s, int64_t batch, double overlap,
                        const Fabric& nvlink, const Fabric& ib, const std::vector<double>& buckets,
                        const std::vector<ScalingRow>& rows) {
  double total = 0;
  for (double b : buckets) total += b;
  std::ofstream f(path);
  f << fmt::format("{{\"recipe\": \"{}\", \"step_s\": {:.9g}, \"backward_s\": {:.9g}, \"batch_per_gpu\": {}, \"overlap\": {:.6g}, "
                   "\"buckets\": {}, \"bucket_bytes\": {:.0f}, \"last_bucket_bytes\": {:.0f}, \"nvlink_gbs\": {}, \"ib_gbs\": {}, "
                   "\"nvlink_hop_us\": {}, \"ib_hop_us\": {}, \"rows\": [",
                   r.name, step_s, backward_s, batch, overlap, buckets.size(), total, buckets.empty() ? 0.0 : buckets.back(),
                   nvlink.busbw_gbs, ib.busbw_gbs, nvlink.hop_us, ib.hop_us);
  for (size_t i = 0; i < rows.size(); ++i)
    f << fmt::format("{}{{\"nodes\": {}, \"gpus\": {}, \"comm_s\": {:.9g}, \"exposed_s\": {:.9g}, \"step_s\": {:.9g}, "
                     "\"efficiency\": {:.6g}, \"images_per_s\": {:.6g}}}",
                     i ? ", " : "", rows[i].nodes, rows[i].gpus, rows[i].comm_s, rows[i].exposed_s, rows[i].step_s,
                     rows[i].efficiency, rows[i].images_per_s);
  f << "]}\n";
  if (!f) throw std::runtime_error("cannot write " + path);
}

// The measured step: --step-s, or cm bench step's JSON (step_s and batch_per_rank).
std::pair<double, int64_t> measured_step(const Args& args, const Recipe& r, int64_t max_gpus) {
  double step_s = args.double_or("step-s", 0.0);
  int64_t batch = args.int_or("batch-per-gpu", 0);
  if (auto file = args.opt("bench-json")) {
    std::ifstream f(*file);
    if (!f) throw std::invalid_argument("cannot read --bench-json " + *file);
    const Json j = parse_json(std::string(std::istreambuf_iterator<char>(f), {}), *file);
    if (const Json* s = j.get("step_s"); s && step_s <= 0) step_s = s->num;
    if (const Json* b = j.get("batch_per_rank"); b && batch <= 0) batch = b->integer;
  }
  if (!(step_s > 0)) throw std::invalid_argument("--scaling needs the measured step time: --step-s S or --bench-json FILE");
  if (batch <= 0) batch = std::max<int64_t>(1, r.train.batch / max_gpus);  // the recipe's batch on the largest world
  return {step_s, batch};
}

int scaling(const Args& args, const Recipe& r) {
  const double overlap = args.double_or("overlap", 0.0);
  const int64_t per_node = args.int_or("gpus-per-node", 8), max_nodes = args.int_or("nodes", 8);
  if (overlap < 0 || overlap > 1) throw std::invalid_argument("--overlap is a fraction in [0, 1]");
  if (per_node < 1 || max_nodes < 1) throw std::invalid_argument("--gpus-per-node and --nodes must be >= 1");
  const auto [step_s, batch] = measured_step(args, r, per_node * max_nodes);
  const Fabric nvlink{args.double_or("nvlink-gbs", 450.0), args.double_or("nvlink-hop-us", 2.0), "NVLink"};
  const Fabric ib{args.double_or("ib-gbs", 50.0), args.double_or("ib-hop-us", 5.0), "InfiniBand"};
  if (!(nvlink.busbw_gbs > 0) || !(ib.busbw_gbs > 0)) throw std::invalid_argument("bus bandwidths must be > 0");
  const std::vector<double> buckets = gradient_buckets(r);
  const ModelStats s = measure_model(r.config);
  const TrainingFlops work = training_flops(r, s);
  const double backward_s = work.forwards > 0 ? step_s * 2.0 / work.forwards : 0.0;
  double total = 0;
  for (double b : buckets) total += b;
  fmt::print("scaling of {} ({} parameters, {} gradient buckets of <= {} MiB, {:.1f} MB in all)\n", r.name,
             with_commas(s.parameters), buckets.size(), r.dist.bucket_mb, total / 1e6);
  fmt::print("  measured      {:.4f} s per step on 1 GPU at {} images per GPU ({:.0f} forward-equivalents; backward ~{:.4f} s)\n",
             step_s, batch, work.forwards, backward_s);
  fmt::print("  fabrics       NVLink {:.0f} GB/s bus bandwidth, {:.1f} us/hop within a node; InfiniBand {:.0f} GB/s, {:.1f} us/hop "
             "across nodes; ring all-reduce; overlap {:.0f} % of the communication (measured share)\n",
             nvlink.busbw_gbs, nvlink.hop_us, ib.busbw_gbs, ib.hop_us, 100 * overlap);
  fmt::print("  {:>5} {:>5} {:>11} {:>10} {:>11} {:>10} {:>11} {:>13}\n", "nodes", "GPUs", "fabric", "comm ms", "exposed ms",
             "step ms", "efficiency", "images/s");
  std::vector<ScalingRow> rows = {project(1, 1, buckets, step_s, backward_s, overlap, batch, nvlink, ib)};
  for (int64_t n = 1; n <= max_nodes; n *= 2) rows.push_back(project(n, per_node, buckets, step_s, backward_s, overlap, batch, nvlink, ib));
  if (rows.back().nodes != max_nodes) rows.push_back(project(max_nodes, per_node, buckets, step_s, backward_s, overlap, batch, nvlink, ib));
  for (const auto& x : rows)
    fmt::print("  {:>5} {:>5} {:>11} {:>10.2f} {:>11.2f} {:>10.2f} {:>10.1f}% {:>13.0f}\n", x.nodes, x.gpus, x.fabric, 1e3 * x.comm_s,
               1e3 * x.exposed_s, 1e3 * x.step_s, 100 * x.efficiency, x.images_per_s);
  if (auto j = args.opt("json")) write_scaling_json(*j, r, step_s, backward_s, batch, overlap, nvlink, ib, buckets, rows);
  return 0;
}

CommandRegistration reg({"plan", "what a recipe will run on a world of ranks: batch split, FLOPs, memory, time, checks",
                         kHelp, run});

}  // namespace
}  // namespace cm::cli
