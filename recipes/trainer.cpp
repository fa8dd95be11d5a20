// A training run: assembly, loop, end (see trainer.h).
#include "recipes/trainer.h"

#include <fmt/chrono.h>
#include <fmt/format.h>
#include <unistd.h>

#include <filesystem>
#include <thread>
#include <torch/torch.h>
#include "core/compat.h"        // cuda_available
#include "core/rng.h"
#include "core/rng_streams.h"
#include "core/util/lanes.h"       // lanes_run_concurrently: train.lanes = 0 picks lanes only where they run at once
#include "distributed/communicator.h"  // the rank's device
#include "distributed/rank_checksums.h"   // check_same_on_all_ranks
#include "distributed/guard.h"         // set_step: the step named by watchdog and abort messages
#include "distributed/preemption.h"    // a stop request that came after the last step
#include "distributed/reducer.h"       // bucketed, overlapped gradient averaging
#include "distributed/timeline.h"      // optional Chrome trace of the phases of a step
#include "distributed/world.h"         // pick_device: the one rule for choosing a device
#include "recipes/checkpoint.h"       // checkpoints, resume, preemption
#include "recipes/observers.h"        // toy_quality
#include "recipes/sampling.h"         // per-sample noise and labels of the sample pictures

namespace fs = std::filesystem;

namespace cm {

std::vector<double> recipe_sample_sigmas(const Recipe& r) {
  if (!r.sample.sigmas.empty()) return r.sample.sigmas;
  return ts_to_sigmas(r.sample.ts, r.sample.grid, r.method.range);
}

torch::Tensor sample_model(const Recipe& r, NetworkImpl& net, const Preconditioning& p, int64_t count,
                           const std::vector<double>& sigmas, uint64_t noise_seed, torch::Device device,
                           const ModelShape& shape) {
  // Per-sample noise and labels as `cm sample` draws them (recipes/sampling.h): sample i's noise depends on
  // (noise_seed, i, step) only, not on `count`.
  SamplingOptions so;
  so.sigmas = sigmas;
  so.edm_steps = r.sample.edm_steps;
  so.count = count;
  so.seed = noise_seed;
  so.clip_denoised = r.sample.clip;
  const bool was_training = net.is_training();
  net.eval();
  torch::Tensor out;
  try {
    out = sample_floats(net, p, shape, so, 0, count, device).x;
  } catch (...) {
    net.train(was_training);
    throw;
  }
  net.train(was_training);
  return out;
}

// The network used for pictures and figures: the first sampling EMA when there is one, else the student.
void with_sampling_weights(Objective& obj, SamplingEmas& emas, int64_t ema_index, const std::function<void(NetworkImpl&)>& fn) {
  auto net = obj.student();
  if (emas.rates().empty()) return fn(*net);
  auto params = net->parameters();
  auto saved = clone_params(params);
  copy_params(params, emas.weights(static_cast<size_t>(ema_index)));
  try {
    fn(*net);
  } catch (...) {
    copy_params(params, saved);
    throw;
  }
  copy_params(params, saved);
}

dist::Communicator* RunContext::comm() const { return options.world > 1 ? options.comm.get() : nullptr; }

namespace {

// The distributed timeline as the engine's tracer of step phases.
class TimelineTracer : public PhaseTracer {
 public:
  explicit TimelineTracer(dist::Timeline& t) : t_(t) {}
  void begin(const char* phase) override { open_.push_back(t_.scope(phase)); }
  void end() override { open_.pop_back(); }

 private:
  dist::Timeline& t_;
  std::vector<dist::Timeline::Scope> open_;
};

// This rank's debug.* faults, as the engine takes them.
StepFaults faults_of(const DebugConfig& d, int64_t rank) {
  StepFaults f;
  if (d.hang_rank == rank) f.hang_step = d.hang_step;
  if (d.fail_rank == rank) f.fail_step = d.fail_step;
  if (d.nonfinite_rank == rank || d.nonfinite_rank == -2) f.nonfinite_begin = d.nonfinite_step, f.nonfinite_end = d.nonfinite_step + d.nonfinite_steps;
  return f;
}

// The device of a process of its own (no communicator): dist::pick_device's rule, the only one.
torch::Device single_process_device(const std::string& want, int64_t local_rank, int64_t local_size) {
  char host[256] = {0};
  gethostname(host, sizeof host - 1);
  const int gpus = compat::cuda_available() ? static_cast<int>(torch::cuda::device_count()) : 0;
  return dist::pick_device(want, compat::cuda_available(), static_cast<int>(local_rank), static_cast<int>(local_size), gpus, true, host);
}

// train.lanes for this run: explicit values are checked (a clear error rather than a silent fallback),
// 0 picks the number of intra-op threads, or the largest count up to it that divides the micro-batch, on a
// CPU whose network draws no random numbers, where this build runs lanes at once; 1 otherwise. (An explicit
// count without that concurrency still trains alike, one lane after another.)
int64_t resolve_lanes(const TrainConfig& tc, torch::Device device, int64_t threads, int64_t world, const NetworkImpl& net) {
  const int64_t micro = tc.batch / std::max<int64_t>(1, world) / tc.micro_batches;
  if (tc.lanes == 1) return 1;
  if (tc.lanes > 1) {
    if (!device.is_cpu())
      throw ConfigError(fmt::format("train.lanes = {} is for CPU training (this run is on {}); leave it 0 or 1", tc.lanes, device.str()));
    if (net.draws_random_numbers())
      throw ConfigError(fmt::format("train.lanes = {} needs a network without dropout (its masks come from one shared "
                                    "generator, so its passes cannot run at once): set model.dropout = 0 or train.lanes = 1",
                                    tc.lanes));
    if (micro % tc.lanes != 0)
      throw ConfigError(fmt::format("train.lanes = {} does not divide the micro-batch of {} rows per rank (train.batch {} / {} "
                                    "rank(s) / train.micro_batches {})", tc.lanes, micro, tc.batch, world, tc.micro_batches));
    return tc.lanes;
  }
  if (!device.is_cpu() || net.draws_random_numbers() || !lanes_run_concurrently()) return 1;
  for (int64_t l = std::min(threads, micro); l > 1; --l)
    if (micro % l == 0) return l;
  return 1;
}

// train.channels_last for this run: auto = on for a CUDA run of a network with convolutions (NHWC is the
// layout cuDNN's tensor-core convolutions use; NCHW costs transposes around each), off on the CPU (measured
// on this project's CPU: a few percent either way, README "The training step against the reference").
bool resolve_channels_last(const TrainConfig& tc, torch::Device device, NetworkImpl& net) {
  if (tc.channels_last == "off") return false;
  if (tc.channels_last == "on") return has_4d_parameters(net);
  return device.is_cuda() && has_4d_parameters(net);
}

}  // namespace

int64_t Trainer::lanes() const { return engine_->options().lanes; }
bool Trainer::channels_last() const { return engine_->options().channels_last; }

Trainer::~Trainer() {
  if (opt_.comm) opt_.comm->set_timeline(nullptr);  // the communicator outlives the trainer and its timeline
}

Trainer::Trainer(Recipe recipe, TrainerOptions opt) : recipe_(std::move(recipe)), opt_(opt) {
  const auto& tc = recipe_.train;
  // Under mpirun the world picked the device (dist::World::init) and the communicator works on it.
  device_ = opt_.comm ? opt_.comm->device() : single_process_device(tc.device, opt_.local_rank, opt_.local_size);
  int64_t threads = tc.threads;
  if (threads <= 0) threads = std::max<int64_t>(1, static_cast<int64_t>(std::thread::hardware_concurrency()) / std::max<int64_t>(1, opt_.local_size));
  torch::set_num_threads(static_cast<int>(threads));
  check_batch_split(tc, opt_.world);
  if (tc.precision == Precision::Fp16 && !device_.is_cuda())
    throw ConfigError(fmt::format("train.precision = \"fp16\" needs a CUDA device (this run is on {}): LibTorch's CPU autocast has "
                                  "no float16; use bf16 on the CPU", device_.str()));
  build_parts();
  configure_math(tc.precision, device_);
}

// Data, objective (student, target, teacher), gradient synchronisation, optimizer, EMA set and loss
// scaler; the engine over them; the training state of their parts.
void Trainer::build_parts() {
  const auto& tc = recipe_.train;
  data_ = opt_.make_data ? opt_.make_data(recipe_, opt_.rank, opt_.world, device_)
                         : build_data(recipe_, opt_.rank, opt_.world, device_);  // pinned batches on a GPU
  ObjectiveDeps deps;
  deps.shape = data_->shape();
  deps.exact_denoiser = data_->exact_denoiser();
  // Identical initial weights on every rank (also broadcast from rank 0 when distributed).
  torch::manual_seed(derive_seed(tc.seed, rng_stream::kInit));
  objective_ = make_objective(recipe_, deps);
  objective_->to(device_);
  const bool channels_last = resolve_channels_last(tc, device_, *objective_->student());
  if (channels_last) objective_->to_channels_last();  // before the buckets, the EMAs and the optimizer state copy them
  objective_->student()->train();
  if (opt_.world > 1) {
    if (!opt_.comm) throw std::logic_error("Trainer: world > 1 needs a communicator");
    // Checks the parameter shapes on all ranks (naming any that differs), broadcasts rank 0's parameters
    // and buffers, and hooks the buckets' all-reduces into backward.
    reducer_ = dist::GradReducer::for_module(opt_.comm, *objective_->student(), recipe_.dist.reducer());
  }
  // The sampling EMAs (and theta-, below) start from the parameters every rank now has.
  Objective* obj = objective_.get();
  emas_ = std::make_unique<EmaSet>(objective_->student(), objective_->target(), [obj](int64_t k) { return obj->target_ema(k); },
                                   tc.ema_rates);
  if (opt_.world > 1) emas_->reset_target();
  optimizer_ = std::make_unique<Optimizer>(objective_->student()->parameters(), tc.optimizer);
  if (!recipe_.dist.trace_dir.empty()) fs::create_directories(recipe_.dist.trace_dir);
  timeline_ = std::make_unique<dist::Timeline>(recipe_.dist.trace_path(static_cast<int>(opt_.rank)), static_cast<int>(opt_.rank));
  if (opt_.comm && timeline_->enabled()) opt_.comm->set_timeline(timeline_.get());
  if (timeline_->enabled()) tracer_ = std::make_unique<TimelineTracer>(*timeline_);
  scaler_ = LossScaler(tc.loss_scale);

  EngineParts parts{data_.get(), objective_.get(), optimizer_.get(), emas_.get(), &scaler_, reducer_.get(), tracer_.get()};
  EngineOptions eo;
  eo.rank = opt_.rank, eo.world = opt_.world, eo.global_batch = tc.batch, eo.micro_batches = tc.micro_batches;
  eo.threads = torch::get_num_threads();
  eo.lanes = resolve_lanes(tc, device_, eo.threads, opt_.world, *objective_->student());
  eo.channels_last = channels_last;
  eo.seed = tc.seed, eo.device = device_, eo.precision = tc.precision, eo.faults = faults_of(recipe_.debug, opt_.rank);
  engine_ = std::make_unique<TrainEngine>(parts, eo);

  state_.add("model", network_part(objective_->student()));
  state_.add("emas", std::shared_ptr<StatePart>(emas_.get(), [](StatePart*) {}));
  state_.add("optimizer", optimizer_part(*optimizer_));
  state_.add("data", cursor_part(*data_));
  state_.add("loss_scaler", loss_scaler_part(scaler_));
}

// After a skipped step: a warning (every one, unless loss scaling expects some), and the end of the run
// when train.max_nonfinite_steps were skipped in a row. The run then stops with the error below and
// writes nothing more: the committed checkpoints stay as they are.
void Trainer::check_nonfinite(int64_t step, const StepOutcome& out) {
  const int64_t in_a_row = scaler_.consecutive_skipped(), limit = recipe_.train.max_nonfinite_steps;
  if (in_a_row >= limit) {
    std::string newest = "none";
    checkpoints_->wait();  // a write in flight is of an earlier, finite state: let it commit
    if (is_main())
      if (auto c = newest_valid_checkpoint(checkpoints_->dir(), nullptr)) newest = c->path;
    throw std::runtime_error(fmt::format(
        "training stopped at step {}: {} step{} in a row (train.max_nonfinite_steps = {}) were skipped, the last because {}; "
        "no checkpoint was written after them, the newest committed one is {}. Try a smaller train.lr, another precision, or "
        "resume from it", step, in_a_row, in_a_row == 1 ? "" : "s", limit, out.nonfinite, newest));
  }
  if (is_main() && !opt_.quiet && !scaler_.enabled())
    fmt::print(stderr, "warning: step {} skipped: {} ({} skipped in a row, the run stops at {})\n", step, out.nonfinite, in_a_row, limit);
}

// The student, the target and every sampling EMA must be bit-identical on all ranks: each rank updates
// them locally from identical averaged gradients. A fingerprint per rank proves it cheaply.
static std::vector<dist::NamedTensors> rank_identical_sets(const RunContext& run) {
  std::vector<dist::NamedTensors> sets = {{"student", run.objective.student()->parameters()}};
  std::vector<torch::Tensor> target;
  for (auto& [n, t] : run.emas.target_state()) target.push_back(t);
  sets.emplace_back("target", target);
  const auto& emas = run.emas.sampling();
  for (size_t i = 0; i < emas.rates().size(); ++i) sets.emplace_back("ema " + SamplingEmas::rate_name(emas.rates()[i]), emas.weights(i));
  return sets;
}

static void print_ranks_identical(const RunContext& run, int64_t step) {
  if (run.is_main() && !run.options.quiet)
    fmt::print("cross-rank check at step {}: student, target and EMAs identical on all {} ranks\n", step, run.options.world);
}

// Throws on every rank, naming the step, the set that differs and which ranks agree with which.
static void check_ranks_identical(const RunContext& run, int64_t step) {
  if (run.options.world <= 1) return;
  dist::check_same_on_all_ranks(rank_identical_sets(run), step);
  print_ranks_identical(run, step);
}

// train.check_every during the run (the end is always checked, by finish()).
static void periodic_rank_check(const RunContext& run, int64_t done) {
  if (run.options.world <= 1 || run.recipe.train.check_every <= 0 || done >= run.recipe.train.steps) return;
  if (dist::ConsistencyCheck(run.recipe.train.check_every).maybe(done, rank_identical_sets(run))) print_ranks_identical(run, done);
}

std::map<std::string, double> Trainer::evaluate_quality() {
  return toy_quality(recipe_, *data_, *objective_, *emas_, device_, is_main());
}

std::vector<double> Trainer::benchmark(int64_t warmup, int64_t steps) {
  std::vector<double> seconds;
  for (int64_t k = 0; k < warmup + steps; ++k) {
    const auto t0 = std::chrono::steady_clock::now();
    engine_->step(k);  // ends with a host read of the loss and the gradient check: the device work is done
    if (device_.is_cuda()) torch::cuda::synchronize();
    if (k >= warmup) seconds.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
  }
  return seconds;
}

TrainResult Trainer::stopped(int64_t steps, int sig) const {
  TrainResult res;
  res.steps = steps;
  res.final_loss = last_loss_;
  res.run_dir = recipe_.run.dir;
  res.preempted_by = sig;
  return res;
}

TrainResult Trainer::run() {
  const auto& tc = recipe_.train;
  // Checkpoints (recipes/checkpoint.h): continue from the newest committed one, if any.
  checkpoints_ = std::make_unique<CheckpointCoordinator>(recipe_, state_, CheckpointCoordinator::Options{opt_.rank, opt_.world, opt_.comm.get(), opt_.quiet});
  RunContext ctx{recipe_, opt_, device_, *data_, *objective_, *emas_, scaler_};
  ctx.threads = torch::get_num_threads(), ctx.lanes = lanes();
  ctx.start_step = checkpoints_->resume();
  if (ctx.start_step > 0) check_ranks_identical(ctx, ctx.start_step);
  for (auto& o : observers_) o->on_start(ctx);
  ctx.t0 = std::chrono::steady_clock::now();  // after the observers' set-up (reference statistics for FID)
  if (int sig = checkpoints_->stop_if_requested(ctx.start_step)) return stopped(ctx.start_step, sig);  // asked to stop while starting up
  for (int64_t step = ctx.start_step; step < tc.steps; ++step) {
    dist::set_step(step);  // the step named by watchdog and abort messages
    const StepOutcome out = engine_->step(step);
    if (out.applied) last_loss_ = out.loss;
    else check_nonfinite(step + 1, out);
    for (auto& o : observers_) o->after_step(ctx, step + 1, out);
    periodic_rank_check(ctx, step + 1);
    // Saves when due; on SIGTERM/SIGUSR1 (agreed by all ranks) the checkpoint of this step is committed and the run stops.
    if (int sig = checkpoints_->step_end(step + 1)) return stopped(step + 1, sig);
  }
  return finish(ctx);
}

TrainResult Trainer::finish(RunContext& ctx) {
  const auto& tc = recipe_.train;
  check_ranks_identical(ctx, tc.steps);
  if (is_main() && preemption_signal() != 0)
    fmt::print(stderr, "cm train: {} arrived after the last step: the run is complete, finishing it (exit code 0)\n",
               signal_name(preemption_signal()));
  checkpoints_->finish(tc.steps);  // the final state, written while the samples and figures are made
  const double elapsed = std::chrono::duration<double>(std::chrono::steady_clock::now() - ctx.t0).count();
  TrainResult res = stopped(tc.steps, 0);
  res.images_per_sec = elapsed > 0 ? (tc.steps - ctx.start_step) * tc.batch / elapsed : 0;
  for (auto& o : observers_) o->on_finish(ctx, res);
  checkpoints_->wait();
  return res;
}
}  // namespace cm
