// `cm bench step` (dispatched by cmd_bench.cpp): the whole optimizer step of a recipe as `cm train` takes
// it (data, forward, backward, all-reduce, optimizer, EMAs), timed after warm-up, with the training FLOPs
// per image, the achieved TFLOP/s and, on a GPU, the fraction of its dense peak for the precision in use.
#include <fmt/format.h>
#include <stdio.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <array>
#include <atomic>
#include <chrono>
#include <fstream>
#include <string_view>
#include <thread>
#include <ATen/record_function.h>
#include <torch/torch.h>
#include "core/lpips.h"
#include "core/rng.h"
#include "core/util/lanes.h"
#include "core/weights.h"
#include "distributed/communicator.h"
#include "distributed/guard.h"
#include "distributed/world.h"
#include "launch/bench.h"
#include "launch/command.h"
#include "launch/model_stats.h"
#include "recipes/recipe.h"
#include "recipes/sampling.h"  // recipe_model_shape: the image shape without the dataset
#include "recipes/trainer.h"

#if CM_WITH_CUDA
#include <c10/cuda/CUDACachingAllocator.h>
#endif

namespace cm::cli {

const char* const kBenchStepHelp = R"(Usage: cm bench step RECIPE [OVERRIDES...] [--steps 10] [--warmup 3] [--synthetic] [--breakdown]
                     [--json FILE]

Times the recipe's whole optimizer step as `cm train` takes it (next batch, forward passes of student,
target, teacher and LPIPS under train.precision, backward, gradient all-reduce, optimizer, target and
sampling EMAs), --warmup steps first, then --steps timed ones, each to the end of its device work; no
checkpoints, logs or pictures. Prints the step time, images/s, the training FLOPs per image (student
forward + backward, target, teacher ODE evaluations: forward-equivalents of the FLOP count `cm model
summary` gives; LPIPS not counted), the achieved TFLOP/s and, on a GPU, the fraction of that GPU's dense
peak for the precision (A100, H100, H200: table below) and the peak memory. Under mpirun/srun: per rank and
for the whole job. --synthetic: random images of the recipe's shape instead of its dataset (no data needed),
and for LPIPS recipes, when method.lpips_weights is not given, LPIPS with random weights of the right shapes
(the timing is the same; the loss values mean nothing).
--breakdown (CPU): after the timed steps, as many again with every operator timed (RecordFunction
observers, which cost a little): where the step's machine time goes (threads x step time) by convolutions,
norms and activations, attention, linear layers, other operators, optimizer, EMAs, data, the finite check and
what no operator accounts for (autograd, allocation, threads waiting), with the rate the convolutions reached
beside a lone 3x3 convolution of the network's size timed in the same run on the same threads.
Example: cm bench step cifar10_ct train.precision=bf16 --synthetic

Dense peaks used (NVIDIA datasheets, without sparsity; TFLOP/s): A100 SXM fp32 19.5, tf32 156, bf16/fp16 312;
H100 SXM and H200 fp32 67, tf32 495, bf16/fp16 989.)";

namespace {

// Random images in [-1, 1] and labels of the recipe's shape: the loader's cost is left out.
class SyntheticSource : public DataSource {
 public:
  SyntheticSource(ModelShape shape, int64_t local, torch::Device device) : shape_(shape), local_(local), device_(device) {}
  Batch next() override {
    auto gen = cpu_generator(derive_seed(1234, step_++));
    const bool pin = device_.is_cuda();
    std::vector<int64_t> dims = {local_, shape_.channels};
    if (shape_.resolution > 0) dims.insert(dims.end(), {shape_.resolution, shape_.resolution});
    Batch b;
    b.x = (torch::rand(dims, gen, torch::kFloat) * 2 - 1);
    if (pin) b.x = b.x.pin_memory();
    if (shape_.num_classes > 0) b.labels = torch::randint(shape_.num_classes, {local_}, gen, torch::kLong);
    return b;
  }
  DataCursor cursor() const override { return DataCursor{}; }
  void restore(const DataCursor&) override {}
  ModelShape shape() const override { return shape_; }
  std::string describe() const override { return fmt::format("synthetic {}x{}x{}", shape_.channels, shape_.resolution, shape_.resolution); }

 private:
  ModelShape shape_;
  int64_t local_;
  torch::Device device_;
  int64_t step_ = 0;
};

struct Peak {
  std::string gpu;
  double tflops = 0;  // dense, for the precision in use; 0 = unknown
};

// The GPU's name from nvidia-smi (works with any LibTorch build) and its dense peak for `p`.
Peak gpu_peak(Precision p, int device_index) {
  Peak k;
  std::string cmd = fmt::format("nvidia-smi --query-gpu=name --format=csv,noheader --id={} 2>/dev/null", device_index);
  if (FILE* f = ::popen(cmd.c_str(), "r")) {
    char buf[256] = {0};
    if (std::fgets(buf, sizeof buf, f)) k.gpu = buf;
    ::pclose(f);
  }
  while (!k.gpu.empty() && (k.gpu.back() == '\n' || k.gpu.back() == ' ')) k.gpu.pop_back();
  struct Row {
    const char* match;
    double fp32, tf32, half;
  };
  const Row rows[] = {{"A100", 19.5, 156, 312}, {"H100", 67, 495, 989}, {"H200", 67, 495, 989}};
  for (const auto& r : rows)
    if (k.gpu.find(r.match) != std::string::npos)
      k.tflops = p == Precision::Fp32 ? r.fp32 : p == Precision::Tf32 ? r.tf32 : r.half;
  return k;
}

// --breakdown: a global RecordFunction observer that adds the wall time of every outermost operator of a
// thread to its category. An operator on the main thread outside train.lanes runs on the whole intra-op
// pool (or leaves it idle): its time counts once per thread. Inside a lane (cm::lane, one thread each) it
// counts once. Operators that kernels start on pool threads outside lanes are inside one already counted.
enum Cat { kConv, kNormAct, kAttention, kLinear, kOther, kOptimizer, kEma, kData, kCheck, kLaneSum, kCats };
const char* const kCatNames[kCats] = {"convolutions (forward, backward)", "norms and activations", "attention (bmm, softmax)",
                                      "linear layers (embeddings)", "other operators (elementwise, copies)",
                                      "optimizer (and zeroing gradients)", "EMAs (target, sampling)", "data (next batch)",
                                      "finite check of loss and gradients", "sum of the lanes' gradients"};

struct Breakdown {
  std::array<std::atomic<int64_t>, kCats> ns{};
  std::thread::id main;
  int threads = 1;
};
Breakdown* g_breakdown = nullptr;
thread_local int t_depth = 0;     // enclosing recorded operators on this thread (cm::lane not counted)
thread_local bool t_in_lane = false;
thread_local int t_cat = -1;      // a cm:: scope's category, for the operators inside it

int category_of(std::string_view n) {
  auto has = [&](const char* s) { return n.find(s) != std::string_view::npos; };
  if (has("onvolution") || has("conv1d") || has("conv2d") || has("conv3d")) return kConv;  // ConvolutionBackward0, mkldnn_...
  if (has("norm") || has("Norm") || has("silu") || has("Silu") || has("gelu") || has("Gelu") || has("relu") || has("Relu") ||
      has("sigmoid") || has("Sigmoid"))
    return kNormAct;
  if (has("bmm") || has("Bmm") || has("softmax") || has("Softmax") || has("einsum") || has("ttention") ||
      has("matmul"))  // the networks' only matmul outside linear layers is attention's (class labels aside)
    return kAttention;
  if (has("linear") || has("addmm") || has("Addmm") || has("aten::mm") || has("MmBackward")) return kLinear;
  return kOther;
}

struct OpTiming : at::ObserverContext {
  std::chrono::steady_clock::time_point t0;
  bool counted = false, lane = false;
  int restore_cat = -1;
};

std::unique_ptr<at::ObserverContext> breakdown_start(const at::RecordFunction& fn) {
  auto c = std::make_unique<OpTiming>();
  const std::string_view name(fn.name());
  if (name == "cm::lane") {
    c->lane = true;
    t_in_lane = true;
    return c;
  }
  c->restore_cat = t_cat;
  const bool outermost = t_depth++ == 0;
  if (outermost && (t_in_lane || std::this_thread::get_id() == g_breakdown->main)) {
    c->counted = true;
    c->t0 = std::chrono::steady_clock::now();
  }
  if (name.substr(0, 4) == "cm::") {
    if (name == "cm::optimizer") t_cat = kOptimizer;
    else if (name == "cm::ema") t_cat = kEma;
    else if (name == "cm::data") t_cat = kData;
    else if (name == "cm::check") t_cat = kCheck;
    else if (name == "cm::lane_sum") t_cat = kLaneSum;
  }
  return c;
}

void breakdown_end(const at::RecordFunction& fn, at::ObserverContext* ctx) {
  auto* c = static_cast<OpTiming*>(ctx);
  if (c->lane) {
    t_in_lane = false;
    return;
  }
  --t_depth;
  const int cat = t_cat >= 0 ? t_cat : category_of(fn.name());
  t_cat = c->restore_cat;
  if (!c->counted) return;
  const auto ns = std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now() - c->t0).count();
  g_breakdown->ns[static_cast<size_t>(cat)] += t_in_lane ? ns : ns * g_breakdown->threads;
}

// Forward + backward (input and weight gradients) of one 3x3 convolution of `rows` images, ch -> ch channels,
// side x side, run as the step runs its network: on all threads, or cut into `lanes` parts one per thread.
// GFLOP/s (3 passes of 2 x MACs), best of 5 after one warm-up.
double lone_conv_gflops(int64_t rows, int64_t lanes, int64_t ch, int64_t side) {
  const int64_t part = rows / lanes;
  std::vector<torch::Tensor> xs, ws, bs;
  for (int64_t l = 0; l < lanes; ++l) {
    xs.push_back(torch::randn({part, ch, side, side}).requires_grad_(true));
    ws.push_back(torch::randn({ch, ch, 3, 3}).mul_(0.05).requires_grad_(true));
    bs.push_back(torch::zeros({ch}).requires_grad_(true));
  }
  double best = 1e30;
  for (int i = 0; i < 6; ++i) {
    const auto t0 = std::chrono::steady_clock::now();
    run_lanes(lanes, torch::get_num_threads(), [&](int64_t l) {
      torch::AutoGradMode on(true);
      auto y = torch::conv2d(xs[l], ws[l], bs[l], 1, 1);
      y.backward(torch::ones_like(y));
    });
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    if (i > 0) best = std::min(best, s);
  }
  const double macs = double(part * lanes) * double(ch) * double(ch) * 9.0 * double(side) * double(side);
  return 3 * 2 * macs / best / 1e9;
}

struct Figures {
  double mean = 0, min = 0, max = 0;
};
Figures figures(std::vector<double> v) {
  Figures f;
  if (v.empty()) return f;
  std::sort(v.begin(), v.end());
  f.min = v.front(), f.max = v.back();
  for (double x : v) f.mean += x / double(v.size());
  return f;
}

int bench(const Args& args, Recipe r, const dist::World* world) {
  const int64_t steps = args.int_or("steps", 10), warmup = args.int_or("warmup", 3);
  if (steps < 1 || warmup < 0) throw std::invalid_argument("--steps must be >= 1 and --warmup >= 0");
  TrainerOptions o;
  o.quiet = true;
  if (world) {
    o.rank = world->rank, o.world = world->size, o.local_rank = world->local_rank, o.local_size = world->local_size;
    o.comm = dist::Communicator::create(*world, world->device);
  }
  if (args.flag("synthetic")) {
    const ModelShape shape = recipe_model_shape(r);
    o.make_data = [shape](const Recipe& rec, int64_t, int64_t w, torch::Device dev) {
      return std::make_unique<SyntheticSource>(shape, rec.train.batch / w, dev);
    };
  }
  const ModelStats stats = measure_model(r.config);
  const TrainingFlops flops = training_flops(r, stats);
  const Precision precision = r.train.precision;
  const int64_t per_rank = r.train.batch / std::max<int64_t>(1, o.world);
  Trainer trainer(r, o);
  const torch::Device dev = trainer.device();
#if CM_WITH_CUDA
  if (dev.is_cuda()) c10::cuda::CUDACachingAllocator::resetPeakStats(dev.index());
#endif
  const Figures t = figures(trainer.benchmark(warmup, steps));
  const bool breakdown = args.flag("breakdown");
  if (breakdown && !dev.is_cpu())
    throw std::invalid_argument("--breakdown times host operators (CPU runs); on a GPU use dist.trace_dir or Nsight Systems");
  Breakdown bd;
  Figures tb;
  if (breakdown) {
    bd.main = std::this_thread::get_id();
    bd.threads = torch::get_num_threads();
    g_breakdown = &bd;
    const auto handle = at::addGlobalCallback(at::RecordFunctionCallback(&breakdown_start, &breakdown_end).needsInputs(false));
    try {
      tb = figures(trainer.benchmark(0, steps));
    } catch (...) {
      at::removeCallback(handle);
      throw;
    }
    at::removeCallback(handle);
    g_breakdown = nullptr;
  }
  double peak_gb = -1;
#if CM_WITH_CUDA
  if (dev.is_cuda())
    peak_gb = double(c10::cuda::CUDACachingAllocator::getDeviceStats(dev.index()).allocated_bytes[0].peak) / 1e9;
#endif
  const double img_s = double(per_rank) / t.mean, tflops = img_s * flops.per_image / 1e12;
  const Peak peak = dev.is_cuda() ? gpu_peak(precision, dev.index()) : Peak{};
  if (o.rank != 0) return 0;
  const int64_t ranks = o.world;
  fmt::print("recipe        {} ({}, {} parameters), precision {}, device {}{}\n", r.name, stats.arch, with_commas(stats.parameters),
             to_string(precision), dev.str(), peak.gpu.empty() ? "" : " (" + peak.gpu + ")");
  fmt::print("batch         {} per rank x {} rank{} (micro-batches {}, lanes {} on {} thread{}{}), {} warm-up + {} timed steps\n", per_rank,
             ranks, ranks == 1 ? "" : "s", r.train.micro_batches, trainer.lanes(), torch::get_num_threads(),
             torch::get_num_threads() == 1 ? "" : "s", trainer.channels_last() ? ", channels-last" : "", warmup, steps);
  fmt::print("step          {:.4f} s mean (min {:.4f}, max {:.4f})\n", t.mean, t.min, t.max);
  fmt::print("images/s      {:.1f} per rank, {:.1f} for the job\n", img_s, img_s * double(ranks));
  fmt::print("work          {:.0f} forward-equivalents x {:.4g} GFLOP = {:.4g} GFLOP per image{}\n", flops.forwards,
             2.0 * stats.ops.macs() / 1e9, flops.per_image / 1e9, flops.lpips_uncounted ? " (LPIPS not counted)" : "");
  fmt::print("achieved      {:.3f} TFLOP/s per rank{}\n", tflops,
             peak.tflops > 0 ? fmt::format(" = {:.1f} % of the {}'s dense {} peak ({:.0f} TFLOP/s)", 100 * tflops / peak.tflops, peak.gpu,
                                           to_string(precision), peak.tflops)
                             : "");
  if (peak_gb >= 0) fmt::print("peak memory   {:.2f} GB allocated on {}\n", peak_gb, dev.str());
  if (breakdown) {
    const double machine = tb.mean * double(steps) * double(bd.threads);  // thread-seconds of the profiled steps
    fmt::print("breakdown     {} more steps with every operator timed: {:.4f} s mean per step, {} thread{} -> {:.3f} "
               "thread-s per step\n", steps, tb.mean, bd.threads, bd.threads == 1 ? "" : "s", machine / double(steps));
    double attributed = 0;
    for (int c = 0; c < kCats; ++c) {
      const double s = double(bd.ns[static_cast<size_t>(c)].load()) / 1e9;
      attributed += s;
      std::string extra;
      if (c == kConv && s > 0 && stats.ops.conv_macs > 0) {
        // Forward-equivalents of the method, as for the work line: per image, for this rank's images.
        const double conv_gflop = 2.0 * stats.ops.conv_macs * flops.forwards * double(per_rank) / 1e9;
        extra = fmt::format("  {:.1f} GFLOP/s ({:.3g} GFLOP per step in {:.3f} s on {} threads)", conv_gflop / (s / double(steps) / bd.threads),
                            conv_gflop, s / double(steps) / bd.threads, bd.threads);
      }
      fmt::print("  {:<40} {:7.3f} thread-s {:5.1f} %{}\n", kCatNames[c], s / double(steps), 100 * s / machine, extra);
    }
    const double rest = std::max(0.0, machine - attributed);
    fmt::print("  {:<40} {:7.3f} thread-s {:5.1f} %\n", "no operator (autograd, allocation, waits)", rest / double(steps), 100 * rest / machine);
    if (stats.shape.resolution > 0) {
      const int64_t micro = per_rank / r.train.micro_batches, side = std::max<int64_t>(8, stats.shape.resolution / 2);
      fmt::print("  a lone 3x3 convolution, 128 -> 128 channels at {}x{}, {} images{}, forward + backward: {:.1f} GFLOP/s\n", side, side,
                 micro, trainer.lanes() > 1 ? fmt::format(" in {} lanes", trainer.lanes()) : fmt::format(" on {} threads", bd.threads),
                 lone_conv_gflops(micro, trainer.lanes(), 128, side));
    }
  }
  if (auto j = args.opt("json")) {
    std::ofstream f(*j);
    f << fmt::format("{{\"recipe\": \"{}\", \"parameters\": {}, \"precision\": \"{}\", \"device\": \"{}\", \"gpu\": \"{}\", \"ranks\": {}, \"batch_per_rank\": {}, \"lanes\": {}, \"threads\": {}, \"channels_last\": {}, "
                     "\"step_s\": {:.6f}, \"step_s_min\": {:.6f}, \"images_per_s_rank\": {:.3f}, \"images_per_s_job\": {:.3f}, "
                     "\"gflop_per_image\": {:.8g}, \"tflops_rank\": {:.4f}, \"peak_fraction\": {:.4f}, \"peak_memory_gb\": {:.3f}}}\n",
                     r.name, stats.parameters, to_string(precision), dev.str(), peak.gpu, ranks, per_rank, trainer.lanes(), torch::get_num_threads(), trainer.channels_last(), t.mean, t.min, img_s, img_s * double(ranks),
                     flops.per_image / 1e9, tflops, peak.tflops > 0 ? tflops / peak.tflops : -1.0, peak_gb);
    if (!f) throw std::runtime_error("cannot write " + *j);
  }
  return 0;
}

}  // namespace

int bench_step(const std::vector<std::string>& argv) {
  Args args(argv, {"synthetic", "breakdown"});
  args.check_known({"steps", "warmup", "synthetic", "breakdown", "json"});
  auto plain = args.plain();
  if (plain.size() != 1) throw std::invalid_argument("expected exactly one RECIPE (see `cm bench step --help`)");
  auto overrides = args.overrides();
  std::string random_lpips;
  Recipe r = Recipe::load(plain[0], overrides);
  if (args.flag("synthetic") && r.method.metric == Metric::Lpips && r.method.lpips_weights.empty()) {
    const std::string path = fmt::format("/tmp/cm-bench-random-lpips-{}.safetensors", ::getpid());
    save_weights_file(*Lpips(), path);  // fresh (random) VGG16 + linear layers: the shapes are what timing needs
    overrides.push_back("+method.lpips_weights=" + path);
    r = Recipe::load(plain[0], overrides);
    random_lpips = path;
  }
  struct Cleanup {
    std::string path;
    ~Cleanup() {
      if (!path.empty()) std::remove(path.c_str());
    }
  } cleanup{random_lpips};
  if (!dist::launched_by_mpi()) return bench(args, std::move(r), nullptr);
  return dist::run_guarded([&] {
    dist::WorldOptions wo;
    wo.device = r.train.device;
    wo.timeout_s = r.train.watchdog_s;
    const dist::World& w = dist::World::init(wo);
    const int rc = bench(args, r, &w);
    dist::World::finalize();
    return rc;
  });
}

}  // namespace cm::cli
