// `cm bench checkpoint` (dispatched by cmd_bench.cpp): how long a training step waits for
// a checkpoint written in the background, against a blocking write of the same state, and its size.
#include <fmt/format.h>
#include <unistd.h>

#include <chrono>
#include <cmath>
#include <filesystem>
#include <thread>
#include <torch/torch.h>
#include "core/ema.h"
#include "core/network.h"
#include "core/optim.h"
#include "core/precision.h"
#include "core/train_state.h"
#include "launch/bench.h"
#include "launch/command.h"
#include "recipes/checkpoint.h"
#include "recipes/objectives.h"
#include "recipes/recipe.h"

namespace fs = std::filesystem;

namespace cm::cli {

const char* const kBenchCheckpointHelp = R"(Usage: cm bench checkpoint [--params 56e6] [--repeats 3] [--train-steps 3] [--dir DIR]

Checkpoints the full training state of a CT run (student, target, one sampling EMA, RAdam moments) of a
network with about --params parameters (the toy MLP widened to that size, standing in for the 56M NCSN++
of CIFAR-10; only the tensor sizes matter to a checkpoint), into DIR (default: a temporary directory
under $TMPDIR, removed afterwards). Prints, per mode, how long the training step waits:
  blocking   the step waits for the whole write (serialise, CRC32, write, fsync, commit);
  async      the step waits only for the CPU copy; a background thread does the rest;
then the size on disk per checkpoint, and how much slower real training steps (batch 8) run while a
background write is in progress than without one (the writer shares the CPU and memory bandwidth).)";

namespace {

using Clock = std::chrono::steady_clock;
double since(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }

struct Stats {
  double mean = 0, min = 0, max = 0;
};
Stats stats(const std::vector<double>& v) {
  Stats s{0, v.empty() ? 0 : v[0], v.empty() ? 0 : v[0]};
  for (double x : v) s.mean += x / v.size(), s.min = std::min(s.min, x), s.max = std::max(s.max, x);
  return s;
}

struct Bench {
  Recipe r;
  std::unique_ptr<DataSource> data;
  std::unique_ptr<Objective> obj;
  std::unique_ptr<Optimizer> optim;
  std::unique_ptr<EmaSet> emas;
  LossScaler scaler;
  TrainState state;

  double train_step(int64_t step) {
    const auto t0 = Clock::now();
    Batch b = data->next();
    optim->zero_grad();
    StepInfo info{step, 0, r.train.seed, torch::kCPU, Slice{0, b.x.size(0), r.train.batch}};
    obj->loss(b, info).backward();
    optim->step();
    emas->update(step);
    return since(t0);
  }
};

}  // namespace

namespace {

// A toy_ct recipe whose MLP (depth 4) has about `want` parameters: (3 depth + 1) width^2 weights to first order.
void build(Bench& b, double want, const std::string& dir) {
  const int64_t depth = 4;
  const int64_t width = static_cast<int64_t>(std::lround(std::sqrt(want / (3 * depth + 1))));
  b.r = Recipe::load("toy_ct", {fmt::format("model.width={}", width), fmt::format("model.depth={}", depth), "model.dropout=0.1",
                                "train.batch=8", "train.ema_rates=[0.9999]", "train.threads=0", "run.dir=" + dir,
                                "checkpoint.keep_last=1"});
  torch::set_num_threads(static_cast<int>(std::max(1u, std::thread::hardware_concurrency())));
  b.data = build_data(b.r, 0, 1);
  ObjectiveDeps deps;
  deps.shape = b.data->shape();
  torch::manual_seed(0);
  b.obj = make_objective(b.r, deps);
  b.optim = std::make_unique<Optimizer>(b.obj->student()->parameters(), b.r.train.optimizer);
  Objective* obj = b.obj.get();
  b.emas = std::make_unique<EmaSet>(b.obj->student(), b.obj->target(), [obj](int64_t k) { return obj->target_ema(k); }, b.r.train.ema_rates);
  b.state.add("model", network_part(b.obj->student()));
  b.state.add("emas", std::shared_ptr<StatePart>(b.emas.get(), [](StatePart*) {}));
  b.state.add("optimizer", optimizer_part(*b.optim));
  b.state.add("data", cursor_part(*b.data));
  b.state.add("loss_scaler", loss_scaler_part(b.scaler));
  fmt::print("cm bench checkpoint: {:.1f}M parameters (MLP width {} depth {}, standing in for NCSN++), CT: student + target + "
             "1 sampling EMA + RAdam moments; {} threads; directory {}\n",
             count_parameters(*b.obj->student()) / 1e6, width, depth, torch::get_num_threads(), dir);
  std::fflush(stdout);
}

// Seconds: training steps without a write in progress and during one, blocking writes, and the step's wait
// and the background time of async writes.
struct Timings {
  std::vector<double> plain, during, blocking, async_wait, background;
  int64_t bytes = 0;  // of the last checkpoint
};

Timings measure(Bench& b, int64_t repeats, int64_t train_steps) {
  Timings t;
  int64_t step = 0;
  t.plain.push_back(b.train_step(step++));  // warm-up, and a non-trivial optimizer state
  for (int64_t i = 0; i < train_steps; ++i) t.plain.push_back(b.train_step(step++));
  t.plain.erase(t.plain.begin());

  CheckpointCoordinator ckpt(b.r, b.state,
                             CheckpointCoordinator::Options{0, 1, nullptr, /*quiet=*/true});
  for (int64_t i = 0; i < repeats; ++i) {
    const auto t0 = Clock::now();
    ckpt.save(++step, /*wait=*/true);
    t.blocking.push_back(since(t0));
  }
  for (int64_t i = 0; i < repeats; ++i) {
    ckpt.save(++step, /*wait=*/false);
    // Training goes on while the writer works (it writes a copy, independent of the live tensors).
    for (int64_t k = 0; k < 50 && ckpt.busy(); ++k) t.during.push_back(b.train_step(step));
    ckpt.wait();
    auto h = ckpt.history().back();
    t.async_wait.push_back(h.step_blocked_s());
    t.background.push_back(h.write_s);
  }
  t.bytes = ckpt.history().back().bytes;
  return t;
}

void print_results(const Timings& t, int64_t repeats, int64_t nparams) {
  auto bl = stats(t.blocking), aw = stats(t.async_wait), bg = stats(t.background), pl = stats(t.plain), du = stats(t.during);
  fmt::print("size on disk per checkpoint: {:.1f} MB ({} bytes, {:.2f} bytes per parameter)\n", t.bytes / 1e6, t.bytes,
             static_cast<double>(t.bytes) / nparams);
  fmt::print("blocking write: the step waits {:.3f} s (mean of {}; min {:.3f}, max {:.3f}) = {:.0f} MB/s\n", bl.mean, repeats, bl.min,
             bl.max, t.bytes / 1e6 / bl.mean);
  fmt::print("async write:    the step waits {:.3f} s (mean of {}; min {:.3f}, max {:.3f}; the CPU copy) = {:.1f} % of the blocking "
             "write; the background write took {:.3f} s\n",
             aw.mean, repeats, aw.min, aw.max, 100.0 * aw.mean / bl.mean, bg.mean);
  fmt::print("training steps (batch 8): {:.3f} s without a write in progress (mean of {}), {:.3f} s during a background write "
             "(mean of {}, {:+.0f} %)\n", pl.mean, t.plain.size(), du.mean, t.during.size(), 100.0 * (du.mean / pl.mean - 1.0));
}

}  // namespace

int bench_checkpoint(const std::vector<std::string>& argv) {
  Args args(argv, {});
  args.check_known({"params", "repeats", "train-steps", "dir"});
  const double want = args.double_or("params", 56e6);
  const int64_t repeats = std::max<int64_t>(1, args.int_or("repeats", 3));
  const int64_t train_steps = std::max<int64_t>(1, args.int_or("train-steps", 3));
  std::string dir = args.opt_or("dir", "");
  const bool temp = dir.empty();
  if (temp) {
    const char* base = std::getenv("TMPDIR");
    dir = fmt::format("{}/cm-bench-checkpoint-{}", base && *base ? base : "/tmp", ::getpid());
  }
  Bench b;
  build(b, want, dir);
  const Timings t = measure(b, repeats, train_steps);
  print_results(t, repeats, count_parameters(*b.obj->student()));
  if (temp) {
    std::error_code ec;
    fs::remove_all(dir, ec);
  }
  return 0;
}

}  // namespace cm::cli
