// `cm bench allreduce` (dispatched by cmd_bench.cpp): measures the gradient communication of data-parallel training under mpirun: one flat
// all-reduce against the GradReducer's buckets, and a step with and without overlap of communication and
// backward (distributed/reducer.h, distributed/synthetic.h).
#include <algorithm>
#include <chrono>
#include <fmt/format.h>
#include <torch/cuda.h>
#include "distributed/communicator.h"
#include "distributed/guard.h"
#include "distributed/log.h"
#include "distributed/reducer.h"
#include "distributed/synthetic.h"
#include "distributed/timeline.h"
#include "distributed/world.h"
#include "launch/bench.h"
#include "launch/command.h"

namespace cm::cli {

const char* const kBenchAllreduceHelp = R"(Usage: mpirun -np W cm bench allreduce [--params 56e6] [--bucket-mb 25] [--iters 5]
                                    [--layers 64] [--backward-ms MS] [--device auto|cpu|cuda] [--trace DIR]

Measures gradient communication on the W ranks of the job (float32):
  flat      one all-reduce (MPI_Allreduce on CPU, ncclAllReduce on GPUs) over a single buffer of PARAMS values
  bucketed  the GradReducer's reduction of the same PARAMS values, held in LAYERS tensors of uneven size and
            packed into BUCKET-MB (MiB) buckets, all launched back to back
  step      a synthetic backward that takes MS milliseconds (default: 2 x the bucketed time; slept, so it takes
            no CPU from the communication), then the reduction: without overlap (buckets after backward) and
            with overlap (each bucket as soon as its gradients are ready)
Times are medians over ITERS runs after one warm-up, taken on rank 0 after a barrier. Reports the bus
bandwidth, bucketed / flat (target: within 10 %) and the share of the communication hidden behind backward
(target: at least half when communication is shorter than backward). Also checks the reduced values.
--trace DIR writes DIR/trace-rank<R>.json (Chrome trace: backward, reduction, each bucket's all-reduce).

Note on the flat baseline with MPI: Open MPI allocates a scratch buffer of the message's size in every
MPI_Allreduce. Above glibc's mmap threshold (at most 32 MB; and always for more than 64 MB on a thread other
than main, like the communication thread) that buffer is mapped and unmapped per call, and its page faults
can dominate one huge all-reduce on a node. Buckets of ~25 MB avoid this, so "bucketed" can be well below
"flat"; compare against a plain MPI program when judging the network itself.)";

namespace {

using Clock = std::chrono::steady_clock;

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

struct Bench {
  const dist::World& world;
  std::shared_ptr<dist::Communicator> comm;
  int64_t iters;

  // Completes the device's queued work (NCCL's wait() does not block the host).
  void sync() const {
    if (world.device.is_cuda()) torch::cuda::synchronize(world.device.index());
  }
  // Median milliseconds of `timed` over iters runs after one warm-up; `setup` runs untimed before each.
  template <typename Setup, typename Timed>
  double measure(Setup&& setup, Timed&& timed) const {
    std::vector<double> ms;
    for (int64_t i = 0; i <= iters; ++i) {
      setup();
      sync();
      comm->barrier();
      const auto t0 = Clock::now();
      timed();
      sync();
      const double t = std::chrono::duration<double, std::milli>(Clock::now() - t0).count();
      if (i > 0) ms.push_back(t);
    }
    return median(ms);
  }
};

struct Settings {
  int64_t params = 0, iters = 0, layers = 0;
  double bucket_mb = 0, backward_ms = -1;  // backward_ms < 0: 2 x the bucketed time (at least 20 ms)
};

Settings read_settings(const Args& args) {
  args.check_known({"params", "bucket-mb", "iters", "layers", "backward-ms", "device", "trace"});
  Settings s;
  s.params = static_cast<int64_t>(args.double_or("params", 56e6));
  s.bucket_mb = args.double_or("bucket-mb", 25.0);
  s.iters = args.int_or("iters", 5), s.layers = args.int_or("layers", 64);
  s.backward_ms = args.double_or("backward-ms", -1.0);
  if (s.params < s.layers || s.iters < 1 || s.layers < 1 || s.bucket_mb <= 0)
    throw std::invalid_argument("need --params >= --layers >= 1, --iters >= 1 and --bucket-mb > 0");
  return s;
}

// Median milliseconds of each measurement, and whether every reduced value was right on this rank.
struct Timings {
  double flat = 0, bucketed = 0, backward = 0, plain = 0, overlap = 0;
  size_t buckets = 0, overlapped = 0;
  bool ok = true;
};

// 2. The values in the reducer's buckets (prepare() and filling are not timed).
void time_buckets(const Bench& b, dist::GradReducer& red, Timings& t) {
  const dist::World& w = b.world;
  t.buckets = red.buckets().size();
  auto fill = [&] {
    red.prepare();
    for (size_t k = 0; k < t.buckets; ++k) red.bucket_tensor(k).fill_(static_cast<double>(w.rank + 1));
  };
  t.bucketed = b.measure(fill, [&] { red.finish(); });
  for (size_t k = 0; k < t.buckets; ++k)
    t.ok = t.ok && torch::equal(red.bucket_tensor(k), torch::full_like(red.bucket_tensor(k), (w.size + 1) / 2.0));
}

// 3. A step: synthetic backward + reduction, without and with overlap.
void time_steps(const Bench& b, dist::SyntheticModel& model, dist::GradReducer& red, dist::Timeline& tl, Timings& t) {
  t.backward = b.measure([&] { red.prepare(); }, [&] {
    auto ns = red.no_sync();
    auto s = tl.scope("backward (alone)");
    model.loss().backward();
  });
  auto step = [&](const char* what) {
    {
      auto s = tl.scope(fmt::format("backward ({})", what));
      model.loss().backward();
    }
    auto s = tl.scope(fmt::format("reducer.finish ({})", what));
    red.finish();
  };
  red.set_overlap(false);
  t.plain = b.measure([&] { red.prepare(); }, [&] { step("no overlap"); });
  red.set_overlap(true);
  t.overlap = b.measure([&] { red.prepare(); }, [&] { step("overlap"); });
  t.overlapped = red.launched_during_backward();
  for (size_t i = 0; i < model.params.size(); ++i)
    t.ok = t.ok && torch::equal(model.params[i].grad(), torch::full_like(model.params[i], dist::SyntheticModel::grad_value(i)));
}

void report(const Bench& b, const Settings& s, const Timings& t) {
  const dist::World& w = b.world;
  const double bytes = static_cast<double>(s.params) * 4.0;
  const double busbw = 2.0 * (w.size - 1) / w.size * bytes / 1e9;  // GB moved per rank, ring algorithm
  const bool mpi = b.comm->backend() == "mpi";
  const double hidden = (t.plain - t.overlap) / t.bucketed;
  dist::log0("cm bench allreduce: {} ranks on {} node(s), backend {}, {:.1f}M float32 values ({:.1f} MB) in {} "
             "tensors, {} MiB buckets -> {} buckets",
             w.size, w.nodes, b.comm->backend(), s.params / 1e6, bytes / 1e6, s.layers, s.bucket_mb, t.buckets);
  dist::log0("  flat {} (1 x {:.1f} MB)  {:9.2f} ms   busbw {:6.2f} GB/s", mpi ? "MPI_Allreduce" : "ncclAllReduce",
             bytes / 1e6, t.flat, busbw / (t.flat / 1e3));
  dist::log0("  bucketed ({} buckets)            {:9.2f} ms   busbw {:6.2f} GB/s   {:.3f} x flat  [target <= 1.10]",
             t.buckets, t.bucketed, busbw / (t.bucketed / 1e3), t.bucketed / t.flat);
  dist::log0("  backward alone (synthetic)      {:9.2f} ms", t.backward);
  dist::log0("  step, no overlap                {:9.2f} ms", t.plain);
  dist::log0("  step, overlap                   {:9.2f} ms   hides {:.0f} % of the bucketed communication "
             "({} of {} buckets launched during backward)  [target >= 50 %]",
             t.overlap, 100.0 * hidden, t.overlapped, t.buckets);
}

// The three measurements on this world; throws when a reduced value is wrong on some rank.
void measure_all(const dist::World& w, const Settings& s, const std::string& trace_dir) {
  Bench b{w, dist::Communicator::create(w, w.device), s.iters};
  dist::Timeline tl(trace_dir.empty() ? "" : fmt::format("{}/trace-rank{}.json", trace_dir, w.rank), w.rank);
  b.comm->set_timeline(&tl);
  Timings t;
  // 1. One flat buffer.
  torch::Tensor flat = torch::ones({s.params}, torch::TensorOptions().dtype(torch::kFloat).device(w.device));
  t.flat = b.measure([] {}, [&] { b.comm->all_reduce(flat, dist::ReduceOp::Sum, "flat"); });
  flat = torch::Tensor();

  dist::SyntheticModel model(dist::SyntheticModel::layer_sizes(s.params, s.layers), 0.0, torch::kFloat, w.device);
  dist::ReducerOptions ro;
  ro.bucket_mb = s.bucket_mb;
  ro.label = "bench";
  dist::GradReducer red(b.comm, model.params, ro);
  time_buckets(b, red, t);
  model.backward_ms = s.backward_ms < 0 ? std::max(2.0 * t.bucketed, 20.0) : s.backward_ms;
  time_steps(b, model, red, tl, t);
  t.ok = dist::all_gather_u64(t.ok ? 1 : 0) == std::vector<uint64_t>(static_cast<size_t>(w.size), 1);

  report(b, s, t);
  b.comm->set_timeline(nullptr);
  if (!t.ok) throw std::runtime_error("bench allreduce: reduced values are wrong on some rank");
  dist::log0("  verified: buckets and gradients hold the averages over all ranks");
}

int run_allreduce(const Args& args) {
  const Settings s = read_settings(args);
  dist::WorldOptions wo;
  wo.device = args.opt_or("device", "auto");
  const dist::World& w = dist::World::init(wo);
  measure_all(w, s, args.opt_or("trace", ""));
  dist::World::finalize();
  return 0;
}

}  // namespace

int bench_allreduce(const std::vector<std::string>& argv) {
  Args args(argv, {});
  return dist::run_guarded([&] { return run_allreduce(args); });
}

}  // namespace cm::cli
