// The training loop (see trainer.h).
#include "recipes/trainer.h"

#include <fmt/chrono.h>
#include <fmt/format.h>
#include <unistd.h>

#include <filesystem>
#include <thread>
#include <torch/torch.h>
#include "core/distance.h"
#include "core/fid.h"
#include "core/image.h"
#include "core/rng.h"
#include "datasets/image_sets.h"  // npz_has: is eval.ref a statistics file
#include "datasets/toy2d.h"
#include "distributed/communicator.h"  // the rank's device
#include "distributed/consistency.h"   // check_same_on_all_ranks
#include "distributed/guard.h"         // set_step: the step named by watchdog and abort messages
#include "distributed/preemption.h"    // a stop request that came after the last step
#include "distributed/reducer.h"       // bucketed, overlapped gradient averaging
#include "distributed/timeline.h"      // optional Chrome trace of the phases of a step
#include "recipes/checkpoint.h"       // checkpoints, resume, preemption
#include "recipes/evaluation.h"       // in-training FID: Inception features over all ranks
#include "recipes/sampling.h"         // per-sample noise and labels of the sample pictures

#ifndef CM_SOURCE_REVISION
#define CM_SOURCE_REVISION "unknown"
#endif

namespace fs = std::filesystem;

namespace cm {

static torch::Device pick_device(const std::string& want, int64_t local_rank) {
  const bool cuda = torch::cuda::is_available();
  if (want == "cuda" && !cuda)
    throw std::runtime_error("train.device = \"cuda\" but this LibTorch has no CUDA or no GPU is visible; use train.device=cpu");
  if (want == "cpu" || !cuda) return torch::kCPU;
  const int64_t n = static_cast<int64_t>(torch::cuda::device_count());
  if (local_rank >= n)
    throw std::runtime_error(fmt::format("local rank {} needs GPU {}, but this node has only {} GPUs: start at most {} ranks per node",
                                         local_rank, local_rank, n, n));
  return torch::Device(torch::kCUDA, static_cast<c10::DeviceIndex>(local_rank));
}

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

Trainer::~Trainer() {
  if (opt_.comm) opt_.comm->set_timeline(nullptr);  // the communicator outlives the trainer and its timeline
}

Trainer::Trainer(Recipe recipe, TrainerOptions opt) : recipe_(std::move(recipe)), opt_(opt) {
  const auto& tc = recipe_.train;
  // Under mpirun the world picked the device (dist::World::init) and the communicator works on it.
  device_ = opt_.comm ? opt_.comm->device() : pick_device(tc.device, opt_.local_rank);
  int64_t threads = tc.threads;
  if (threads <= 0) threads = std::max<int64_t>(1, static_cast<int64_t>(std::thread::hardware_concurrency()) / std::max<int64_t>(1, opt_.local_size));
  torch::set_num_threads(static_cast<int>(threads));
  if (tc.batch % opt_.world != 0)
    throw ConfigError(fmt::format("train.batch = {} (global) does not divide over {} ranks; choose a multiple of {}", tc.batch, opt_.world, opt_.world));
  if ((tc.batch / opt_.world) % tc.micro_batches != 0)
    throw ConfigError(fmt::format("per-rank batch {} does not divide into train.micro_batches = {}", tc.batch / opt_.world, tc.micro_batches));

  data_ = opt_.make_data ? opt_.make_data(recipe_, opt_.rank, opt_.world, device_)
                         : build_data(recipe_, opt_.rank, opt_.world, device_);  // pinned batches on a GPU
  ObjectiveDeps deps;
  deps.shape = data_->shape();
  if (auto* toy = dynamic_cast<ToySource*>(data_.get())) exact_denoiser_ = deps.exact_denoiser = toy->mixture().denoiser();
  // Identical initial weights on every rank (also broadcast from rank 0 when distributed).
  torch::manual_seed(derive_seed(tc.seed, /*stream: init*/ 0));
  objective_ = make_objective(recipe_, deps);
  objective_->to(device_);
  objective_->student()->train();
  if (opt_.world > 1) {
    if (!opt_.comm) throw std::logic_error("Trainer: world > 1 needs a communicator");
    // Checks the parameter shapes on all ranks (naming any that differs), broadcasts rank 0's parameters
    // and buffers, and hooks the buckets' all-reduces into backward.
    reducer_ = dist::GradReducer::for_module(opt_.comm, *objective_->student(), recipe_.dist.reducer());
    objective_->after_step(-1);  // no-op for EMA targets built as copies; keeps theta- = theta at start
  }
  optimizer_ = std::make_unique<Optimizer>(objective_->student()->parameters(), tc.optimizer);
  if (!recipe_.dist.trace_dir.empty()) fs::create_directories(recipe_.dist.trace_dir);
  timeline_ = std::make_unique<dist::Timeline>(recipe_.dist.trace_path(static_cast<int>(opt_.rank)), static_cast<int>(opt_.rank));
  if (opt_.comm && timeline_->enabled()) opt_.comm->set_timeline(timeline_.get());
  emas_ = std::make_unique<SamplingEmas>(tc.ema_rates, objective_->student()->parameters());
  scaler_ = LossScaler(tc.loss_scale);
  if (tc.precision == Precision::Fp16 && !device_.is_cuda())
    throw ConfigError(fmt::format("train.precision = \"fp16\" needs a CUDA device (this run is on {}): LibTorch's CPU autocast has "
                                  "no float16; use bf16 on the CPU", device_.str()));
  configure_math(tc.precision, device_);
}

void Trainer::setup_run_dir(bool resumed) {
  if (!is_main()) return;
  const std::string& dir = recipe_.run.dir;
  std::error_code ec;
  fs::create_directories(fs::path(dir) / "samples", ec);
  if (ec) throw std::runtime_error(fmt::format("cannot create run directory '{}': {}", dir, ec.message()));
  write_file_atomic(dir + "/config.toml", recipe_.config.to_toml() + "\n");
  std::string ov;
  for (auto& o : recipe_.config.overrides()) ov += o + "\n";
  write_file_atomic(dir + "/overrides.txt", ov);
  char host[256] = {0};
  gethostname(host, sizeof host - 1);
  write_file_atomic(dir + "/meta.json",
                    fmt::format("{{\"recipe\": \"{}\", \"recipe_file\": \"{}\", \"source_revision\": \"{}\", \"world_size\": {}, "
                                "\"device\": \"{}\", \"host\": \"{}\", \"config_hash\": \"{}\", \"torch\": \"{}.{}\"}}\n",
                                recipe_.name, recipe_.config.recipe_path(), CM_SOURCE_REVISION, opt_.world, device_.str(), host,
                                recipe_.config.hash(), TORCH_VERSION_MAJOR, TORCH_VERSION_MINOR));
  // A resumed run continues the metrics (the checkpoint coordinator trimmed them to its step).
  metrics_.open(dir + "/metrics.jsonl", std::ios::out | (resumed ? std::ios::app : std::ios::trunc));
  if (!metrics_) throw std::runtime_error(fmt::format("cannot write '{}/metrics.jsonl'", dir));
}

Trainer::StepOutcome Trainer::train_step(int64_t step) {
  const auto& tc = recipe_.train;
  dist::set_step(step);
  // Injected hang before the step's work: the other ranks then wait in this step's gradient all-reduce.
  if (recipe_.debug.hang_rank == opt_.rank && recipe_.debug.hang_step == step)
    std::this_thread::sleep_for(std::chrono::hours(1));  // the watchdog must end the job
  Batch batch = data_->next();
  batch.x = batch.x.to(device_, /*non_blocking=*/true);
  if (batch.labels.defined()) batch.labels = batch.labels.to(device_, true);
  if (reducer_) reducer_->prepare();  // zeroes the buckets, which hold the gradients
  else optimizer_->zero_grad();
  const int64_t local = batch.x.size(0), micro = local / tc.micro_batches;
  const double scale = scaler_.scale();  // 1 unless fp16 (or train.loss_scale = "dynamic")
  const auto& dbg = recipe_.debug;
  const bool poisoned = (dbg.nonfinite_rank == opt_.rank || dbg.nonfinite_rank == -2) && step >= dbg.nonfinite_step &&
                        step < dbg.nonfinite_step + dbg.nonfinite_steps;
  // The loss stays on the device: one host synchronisation per step (the finite check below), not one per
  // micro-batch.
  torch::Tensor loss_sum = torch::zeros({}, torch::TensorOptions().dtype(torch::kFloat64).device(device_));
  for (int64_t m = 0; m < tc.micro_batches; ++m) {
    Batch mb{batch.x.narrow(0, m * micro, micro), batch.labels.defined() ? batch.labels.narrow(0, m * micro, micro) : torch::Tensor()};
    StepInfo info{step, opt_.rank, tc.seed, device_, Slice{opt_.rank * local + m * micro, micro, tc.batch}};
    torch::Tensor loss;
    {
      auto t = timeline_->scope("forward");
      AutocastScope autocast(tc.precision, device_);  // student, target, teacher and LPIPS forwards
      loss = objective_->loss(mb, info).to(torch::kFloat) / static_cast<double>(tc.micro_batches);
    }
    if (poisoned) loss = loss * std::numeric_limits<double>::infinity();  // +debug.nonfinite_*: a step that overflows
    const torch::Tensor scaled = scale != 1.0 ? loss * scale : loss;
    {
      auto t = timeline_->scope("backward");
      // Gradient accumulation communicates only on the last micro-batch: the earlier backwards add into the
      // buckets locally; the last one's hooks all-reduce each bucket as soon as its gradients are complete.
      if (reducer_ && m + 1 < tc.micro_batches) {
        auto local_only = reducer_->no_sync();
        scaled.backward();
      } else {
        scaled.backward();
      }
    }
    loss_sum += loss.detach().to(torch::kFloat64);
  }
  if (recipe_.debug.fail_rank == opt_.rank && recipe_.debug.fail_step == step)
    throw std::runtime_error(fmt::format("injected failure at step {} (debug.fail_rank = {})", step, opt_.rank));
  if (reducer_) {
    auto t = timeline_->scope("all-reduce wait");
    reducer_->finish();  // launches what backward did not, waits: every .grad is now the average over ranks
  }
  // Apply the step only when its gradients are finite. They are the all-reduced ones, so every rank takes
  // the same decision; a non-finite loss makes its gradients non-finite (backpropagating inf / nan), and
  // on one rank the loss is checked too. One synchronisation reads the loss and the check together.
  auto params = objective_->student()->parameters();
  std::vector<torch::Tensor> sums = {loss_sum.to(torch::kFloat)};
  for (auto& p : params)
    if (p.grad().defined()) sums.push_back(p.grad().sum().to(torch::kFloat).reshape({}));
  const auto health = torch::stack(sums).to(torch::kFloat64).cpu();
  const double loss_value = health[0].item<double>();
  const bool grads_finite = health.narrow(0, 1, health.size(0) - 1).isfinite().all().item<bool>();
  const bool finite = grads_finite && (opt_.world > 1 || std::isfinite(loss_value));
  scaler_.update(finite);
  if (!finite) {
    last_nonfinite_ = grads_finite ? fmt::format("the loss was not finite ({})", loss_value)
                                   : fmt::format("the gradients were not finite (loss {}{})", loss_value,
                                                 scale != 1.0 ? fmt::format(", loss scale {:.6g}", scale) : "");
    return {loss_value, false};
  }
  if (scale != 1.0) {
    torch::NoGradGuard ng;
    for (auto& p : params)
      if (p.grad().defined()) p.grad().mul_(1.0 / scale);
  }
  {
    auto t = timeline_->scope("optimizer");
    optimizer_->step();
  }
  auto t = timeline_->scope("ema");
  objective_->after_step(step);
  emas_->update(params);
  return {loss_value, true};
}

// After a skipped step: a warning (every one, unless loss scaling expects some), and the end of the run
// when train.max_nonfinite_steps were skipped in a row. The run then stops with the error below and
// writes nothing more: the committed checkpoints stay as they are.
void Trainer::check_nonfinite(int64_t step) {
  const int64_t in_a_row = scaler_.consecutive_skipped(), limit = recipe_.train.max_nonfinite_steps;
  if (in_a_row >= limit) {
    std::string newest = "none";
    checkpoints_->wait();  // a write in flight is of an earlier, finite state: let it commit
    if (is_main())
      if (auto c = newest_valid_checkpoint(checkpoints_->dir(), nullptr)) newest = c->path;
    throw std::runtime_error(fmt::format(
        "training stopped at step {}: {} step{} in a row (train.max_nonfinite_steps = {}) were skipped, the last because {}; "
        "no checkpoint was written after them, the newest committed one is {}. Try a smaller train.lr, another precision, or "
        "resume from it", step, in_a_row, in_a_row == 1 ? "" : "s", limit, last_nonfinite_, newest));
  }
  if (is_main() && !opt_.quiet && !scaler_.enabled())
    fmt::print(stderr, "warning: step {} skipped: {} ({} skipped in a row, the run stops at {})\n", step,
               last_nonfinite_, in_a_row, limit);
}

void Trainer::log_progress(int64_t step, const StepOutcome& out) {
  if (out.applied) {  // the mean loss is that of the applied steps; skipped ones are counted apart
    loss_accum_ += out.loss;
    ++loss_count_;
  }
  const auto& tc = recipe_.train;
  const bool due = (step + 1) % tc.log_every == 0 || step + 1 == tc.steps;
  if (!due || !is_main()) return;
  const auto now = std::chrono::steady_clock::now();
  const double dt = std::chrono::duration<double>(now - t_last_).count();
  const double elapsed = std::chrono::duration<double>(now - t0_).count();
  const int64_t done = step + 1 - start_step_, steps_now = step + 1 - last_logged_step_;
  const double img_s = dt > 0 ? steps_now * tc.batch / dt : 0;
  const double eta = done > 0 ? elapsed / done * (tc.steps - step - 1) : 0;
  const double mean_loss = loss_accum_ / std::max<int64_t>(1, loss_count_);
  auto sched = objective_->schedule(step);
  std::string sched_s;
  for (auto& [k, v] : sched) sched_s += fmt::format(" {} {:.6g}", k, v);
  // The loss scale (when scaling) and the skipped steps (when there were any) on the line and in metrics.
  std::string health_s, health_j;
  if (scaler_.enabled()) {
    health_s += fmt::format(" | scale 2^{:.2f}", std::log2(scaler_.scale()));
    health_j += fmt::format(", \"loss_scale\": {:.10g}", scaler_.scale());
  }
  if (scaler_.enabled() || scaler_.skipped_steps() > 0) {
    health_s += fmt::format(" | skipped {}", scaler_.skipped_steps());
    health_j += fmt::format(", \"skipped_steps\": {}", scaler_.skipped_steps());
  }
  if (!opt_.quiet)
    fmt::print("step {:>7}/{} | loss {:.5f} |{}{} | {:.0f} img/s | elapsed {:.0f}s | ETA {:.0f}s\n", step + 1, tc.steps, mean_loss,
               sched_s, health_s, img_s, elapsed, eta);
  std::fflush(stdout);
  std::string extra;
  for (auto& [k, v] : sched) extra += fmt::format(", \"{}\": {:.10g}", k, v);
  extra += health_j;
  metrics_ << fmt::format("{{\"step\": {}, \"loss\": {:.8g}, \"images_per_sec\": {:.1f}, \"images_seen\": {}, \"elapsed_s\": {:.2f}{}}}\n",
                          step + 1, mean_loss, img_s, (step + 1) * tc.batch, elapsed, extra);
  metrics_.flush();
  loss_accum_ = 0, loss_count_ = 0;
  t_last_ = now;
  last_logged_step_ = step + 1;
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

void Trainer::write_samples(int64_t step, bool final) {
  if (!is_main()) return;
  const auto shape = data_->shape();
  const auto& p = objective_->precond();
  const auto sigmas = recipe_sample_sigmas(recipe_);
  std::vector<torch::Tensor> panels;
  with_sampling_weights(*objective_, *emas_, recipe_.sample.ema_index, [&](NetworkImpl& net) {
    if (shape.resolution == 0) {
      const int64_t n = std::max<int64_t>(recipe_.sample.count, 2000);
      auto gen = cpu_generator(derive_seed(recipe_.train.seed, 21));
      auto data = dynamic_cast<ToySource*>(data_.get())->mixture().sample(n, gen);
      if (p.kind == Preconditioning::Edm) {
        panels.push_back(scatter_plot(data, sample_model(recipe_, net, p, n, sigmas, 99, device_, shape)));
      } else {
        panels.push_back(scatter_plot(data, sample_model(recipe_, net, p, n, {sigmas[0]}, 99, device_, shape)));
        if (sigmas.size() > 1) panels.push_back(scatter_plot(data, sample_model(recipe_, net, p, n, sigmas, 99, device_, shape)));
      }
    } else {
      const int64_t n = recipe_.sample.count;
      const int64_t cols = static_cast<int64_t>(std::ceil(std::sqrt(static_cast<double>(n))));
      panels.push_back(image_grid(sample_model(recipe_, net, p, n, {sigmas[0]}, 99, device_, shape), cols));
      if (sigmas.size() > 1 || p.kind == Preconditioning::Edm)
        panels.push_back(image_grid(sample_model(recipe_, net, p, n, sigmas, 99, device_, shape), cols));
    }
  });
  auto img = hconcat(panels);
  const std::string dir = recipe_.run.dir;
  write_png(fmt::format("{}/samples/step_{:08d}.png", dir, step), img);
  if (final) write_png(dir + "/samples.png", img);
}

std::map<std::string, double> Trainer::evaluate_quality() {
  std::map<std::string, double> q;
  auto* toy = dynamic_cast<ToySource*>(data_.get());
  if (!toy || !is_main()) return q;
  const int64_t n = recipe_.sample.eval_count;
  const auto shape = data_->shape();
  auto gen = cpu_generator(derive_seed(recipe_.train.seed, 31));
  auto data = toy->mixture().sample(n, gen);
  auto gen2 = cpu_generator(derive_seed(recipe_.train.seed, 32));
  q["swd_data_floor"] = sliced_wasserstein(data, toy->mixture().sample(n, gen2));
  const auto& p = objective_->precond();
  const auto sigmas = recipe_sample_sigmas(recipe_);
  with_sampling_weights(*objective_, *emas_, recipe_.sample.ema_index, [&](NetworkImpl& net) {
    if (p.kind == Preconditioning::Edm) {
      q["swd_heun"] = sliced_wasserstein(data, sample_model(recipe_, net, p, n, sigmas, 7, device_, shape).cpu());
    } else {
      q["swd_1step"] = sliced_wasserstein(data, sample_model(recipe_, net, p, n, {sigmas[0]}, 7, device_, shape).cpu());
      if (sigmas.size() > 1) q["swd_2step"] = sliced_wasserstein(data, sample_model(recipe_, net, p, n, sigmas, 7, device_, shape).cpu());
    }
  });
  return q;
}

void Trainer::save_weights() {
  if (!is_main()) return;
  const std::string dir = recipe_.run.dir;
  auto net = objective_->student();
  std::map<std::string, std::string> meta = {{"recipe", recipe_.name}, {"config_hash", recipe_.config.hash()}};
  save_safetensors(dir + "/model.safetensors", network_state(*net), meta);
  const auto& rates = emas_->rates();
  auto params = net->parameters();
  for (size_t i = 0; i < rates.size(); ++i) {
    NamedTensors t;
    size_t k = 0;
    for (auto& [n, v] : network_state(*net)) {
      // parameters come first in network_state, in parameters() order; buffers after
      t.emplace_back(n, k < params.size() ? emas_->weights(i)[k] : v);
      ++k;
    }
    save_safetensors(fmt::format("{}/ema_{}.safetensors", dir, SamplingEmas::rate_name(rates[i])), t, meta);
  }
}

// The student, the target and every sampling EMA must be bit-identical on all ranks: each rank updates
// them locally from identical averaged gradients. A fingerprint per rank proves it cheaply.
void Trainer::check_ranks_identical(int64_t step) {
  if (opt_.world <= 1) return;
  std::vector<dist::NamedTensors> sets = {{"student", objective_->student()->parameters()}};
  std::vector<torch::Tensor> target;
  for (auto& [n, t] : objective_->state()) target.push_back(t);
  sets.emplace_back("target", target);
  for (size_t i = 0; i < emas_->rates().size(); ++i)
    sets.emplace_back("ema " + SamplingEmas::rate_name(emas_->rates()[i]), emas_->weights(i));
  // Throws on every rank, naming the step, the set that differs and which ranks agree with which.
  dist::check_same_on_all_ranks(sets, step);
  if (is_main() && !opt_.quiet)
    fmt::print("cross-rank check at step {}: student, target and EMAs identical on all {} ranks\n", step, opt_.world);
}

void Trainer::setup_eval() {
  const EvalConfig& e = recipe_.eval;
  if (!e.enabled()) return;
  if (data_->shape().resolution == 0) throw ConfigError("eval.every_images > 0: FID needs images; this recipe trains on 2-D points");
  fid_net_ = std::make_unique<FeatureNetwork>(FeatureNetwork::locate(e.inception), device_);
  dist::Communicator* comm = opt_.world > 1 ? opt_.comm.get() : nullptr;
  EvalOptions o;
  o.batch = e.batch;
  o.progress = false;
  const std::string ref = e.ref.empty() ? recipe_.data_path : e.ref;
  if (ref.empty()) throw ConfigError("eval.ref is empty and the recipe has no dataset.path to compute reference statistics from");
  const bool stats_file = fs::is_regular_file(ref) && fs::path(ref).extension() == ".npz" && data::npz_has(ref, "mu");
  const std::string cache = recipe_.run.dir + "/eval_ref_stats.npz";
  // An image set's statistics are computed once (all ranks) and kept in the run directory for resumed runs.
  int64_t cached = is_main() && !stats_file && fs::exists(cache) ? 1 : 0;
  if (comm) {
    auto flag = torch::full({1}, cached, torch::kInt64).to(comm->device());
    comm->broadcast(flag, 0, "eval cache");
    cached = flag.cpu().item<int64_t>();
  }
  const bool use_cache = !stats_file && cached;
  if (is_main() && !opt_.quiet)
    fmt::print("eval: FID of {} samples every {} images against {}{}; inception {} (sha256 {})\n", e.count, e.every_images, ref,
               use_cache ? fmt::format(" (statistics cached in {})", cache) : "", fid_net_->path(), fid_net_->sha256());
  ReferenceSet r = load_reference(use_cache ? cache : ref, *fid_net_, o, false, comm);
  if (is_main() && !stats_file && !use_cache) write_reference_stats(cache, r.stats, torch::Tensor());
  fid_ref_ = std::make_unique<FeatureStats>(r.stats);
}

bool Trainer::eval_due(int64_t step) const {
  const int64_t every = recipe_.eval.every_images, b = recipe_.train.batch;
  return every > 0 && ((step + 1) * b) / every > (step * b) / every;
}

double Trainer::evaluate_fid(int64_t step) {
  const EvalConfig& e = recipe_.eval;
  const auto t_start = std::chrono::steady_clock::now();
  const ModelShape shape = data_->shape();
  const auto& p = objective_->precond();
  SamplingOptions so;
  so.edm_steps = recipe_.sample.edm_steps;
  so.count = e.count;
  so.seed = e.seed;
  so.clip_denoised = recipe_.sample.clip;
  EvalOptions o;
  o.batch = e.batch;
  o.progress = false;
  // "fid": the recipe's sample.ts (EDM models: Heun); "fid_1step" beside it when sample.ts is multistep and
  // eval.one_step is on - the paper's two columns.
  std::vector<std::pair<std::string, std::vector<double>>> passes = {{"fid", recipe_sample_sigmas(recipe_)}};
  if (e.one_step && p.kind != Preconditioning::Edm && passes[0].second.size() > 1) passes.emplace_back("fid_1step", std::vector<double>{passes[0].second[0]});
  std::vector<double> fids;
  with_sampling_weights(*objective_, *emas_, recipe_.eval.ema_index, [&](NetworkImpl& net) {
    const bool was_training = net.is_training();
    net.eval();
    try {
      for (auto& [key, sigmas] : passes) {
        so.sigmas = sigmas;
        ImageRangeFn images = [&](int64_t b, int64_t end) { return to_uint8_reference(sample_floats(net, p, shape, so, b, end, device_).x.cpu()); };
        SetFeatures f = compute_features(*fid_net_, e.count, images, o, false, false, opt_.world > 1 ? opt_.comm.get() : nullptr, "samples");
        fids.push_back(frechet_distance(f.stats, *fid_ref_));
      }
    } catch (...) {
      net.train(was_training);
      throw;
    }
    net.train(was_training);
  });
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t_start).count();
  t_last_ += std::chrono::duration_cast<std::chrono::steady_clock::duration>(std::chrono::duration<double>(secs));  // img/s counts training only
  last_eval_step_ = step;
  last_fid_ = fids[0];
  last_fid_1step_ = fids.size() > 1 ? fids[1] : std::numeric_limits<double>::quiet_NaN();
  if (is_main()) {
    const std::string weights = emas_->rates().empty() ? "student" : "EMA " + SamplingEmas::rate_name(emas_->rates()[0]);
    std::string shown, logged;
    for (size_t i = 0; i < passes.size(); ++i) {
      const size_t levels = passes[i].second.size();
      shown += fmt::format("{}FID {:.4f} ({})", i ? ", " : "", fids[i],
                           p.kind == Preconditioning::Edm ? "Heun" : fmt::format("{} step{}", levels, levels == 1 ? "" : "s"));
      logged += fmt::format(", \"{}\": {:.8g}", passes[i].first, fids[i]);
    }
    if (!opt_.quiet) fmt::print("step {:>7} | {} | {} samples, {} | {:.1f}s\n", step, shown, e.count, weights, secs);
    std::fflush(stdout);
    metrics_ << fmt::format("{{\"step\": {}, \"images_seen\": {}{}, \"fid_samples\": {}, \"fid_s\": {:.2f}}}\n", step, step * recipe_.train.batch,
                            logged, e.count, secs);
    metrics_.flush();
  }
  return fids[0];
}

std::vector<double> Trainer::benchmark(int64_t warmup, int64_t steps) {
  std::vector<double> seconds;
  for (int64_t k = 0; k < warmup + steps; ++k) {
    const auto t0 = std::chrono::steady_clock::now();
    train_step(k);  // ends with a host read of the loss and the gradient check: the device work is done
    if (device_.is_cuda()) torch::cuda::synchronize();
    if (k >= warmup) seconds.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
  }
  return seconds;
}

TrainResult Trainer::run() {
  const auto& tc = recipe_.train;
  // Checkpoints (recipes/checkpoint.h): continue from the newest committed one, if any.
  checkpoints_ = std::make_unique<CheckpointCoordinator>(
      recipe_, TrainStateRefs{objective_.get(), emas_.get(), optimizer_.get(), data_.get(), &scaler_},
      CheckpointCoordinator::Options{opt_.rank, opt_.world, opt_.comm.get(), opt_.quiet});
  start_step_ = checkpoints_->resume();
  if (start_step_ > 0) check_ranks_identical(start_step_);
  setup_run_dir(start_step_ > 0);
  setup_eval();
  if (is_main() && !opt_.quiet) {
    fmt::print("cm train: recipe {} | method {} | {} | {} parameters | device {} | {} rank(s)\n", recipe_.name, recipe_.method.name,
               data_->describe(), count_parameters(*objective_->student()), device_.str(), opt_.world);
    fmt::print("run directory: {}\n", fs::absolute(recipe_.run.dir).string());
    std::fflush(stdout);
  }
  t0_ = t_last_ = std::chrono::steady_clock::now();
  last_logged_step_ = start_step_;
  if (int sig = checkpoints_->stop_if_requested(start_step_)) {  // asked to stop while starting up
    TrainResult res;
    res.steps = start_step_;
    res.run_dir = recipe_.run.dir;
    res.preempted_by = sig;
    return res;
  }
  for (int64_t step = start_step_; step < tc.steps; ++step) {
    const StepOutcome out = train_step(step);
    if (out.applied) last_loss_ = out.loss;
    else check_nonfinite(step + 1);
    log_progress(step, out);
    if (tc.check_every > 0 && (step + 1) % tc.check_every == 0 && step + 1 < tc.steps) check_ranks_identical(step + 1);
    if (tc.sample_every > 0 && (step + 1) % tc.sample_every == 0 && step + 1 < tc.steps) write_samples(step + 1, false);
    if (eval_due(step)) evaluate_fid(step + 1);
    // Saves when due; on SIGTERM/SIGUSR1 (agreed by all ranks) the checkpoint of this step is committed and the run stops.
    if (int sig = checkpoints_->step_end(step + 1)) {
      TrainResult res;
      res.steps = step + 1;
      res.final_loss = last_loss_;
      res.run_dir = recipe_.run.dir;
      res.preempted_by = sig;
      return res;
    }
  }
  check_ranks_identical(tc.steps);
  if (is_main() && preemption_signal() != 0)
    fmt::print(stderr, "cm train: {} arrived after the last step: the run is complete, finishing it (exit code 0)\n",
               signal_name(preemption_signal()));
  checkpoints_->finish(tc.steps);  // the final state, written while the samples and figures are made
  if (recipe_.eval.enabled() && last_eval_step_ != tc.steps) evaluate_fid(tc.steps);
  const double elapsed = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0_).count();
  TrainResult res;
  res.steps = tc.steps;
  res.final_loss = last_loss_;
  res.images_per_sec = elapsed > 0 ? (tc.steps - start_step_) * tc.batch / elapsed : 0;
  res.run_dir = recipe_.run.dir;
  res.fid = last_fid_;
  write_samples(tc.steps, true);
  res.quality = evaluate_quality();
  save_weights();
  checkpoints_->wait();
  if (is_main()) {
    std::string q;
    for (auto& [k, v] : res.quality) q += fmt::format(", \"{}\": {:.6g}", k, v);
    if (std::isfinite(res.fid)) q += fmt::format(", \"fid\": {:.8g}", res.fid);
    if (std::isfinite(last_fid_1step_)) q += fmt::format(", \"fid_1step\": {:.8g}", last_fid_1step_);
    write_file_atomic(recipe_.run.dir + "/final.json",
                      fmt::format("{{\"steps\": {}, \"final_loss\": {:.8g}, \"images_per_sec\": {:.1f}{}}}\n", res.steps, res.final_loss,
                                  res.images_per_sec, q));
    if (!opt_.quiet) {
      for (auto& [k, v] : res.quality) fmt::print("{}: {:.5f}\n", k, v);
      fmt::print("samples: {}\n", fs::absolute(recipe_.run.dir + "/samples.png").string());
    }
  }
  return res;
}

}  // namespace cm
