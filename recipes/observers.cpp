// The standard observers of a run (see observers.h).
#include "recipes/observers.h"

#include <fmt/format.h>
#include <unistd.h>

#include <cmath>
#include <filesystem>
#include <torch/torch.h>
#include "source_revision.h"  // generated: git describe of the build
#include "core/io/checkpoint_dir.h"       // write_file_atomic
#include "core/io/sha256.h"              // the name of the reference statistics cache
#include "core/metrics/fid.h"
#include "core/image.h"
#include "core/rng.h"
#include "core/rng_streams.h"
#include "core/weights.h"
#include "recipes/eval/image_sets.h"       // npz_has: is eval.ref a statistics file
#include "distributed/communicator.h"
#include "recipes/evaluation.h"        // in-training FID: Inception features over all ranks
#include "recipes/sampling.h"          // per-sample noise and labels of the sample pictures


namespace fs = std::filesystem;

namespace cm {

void MetricsFile::open(const std::string& path, bool append) {
  out_.open(path, std::ios::out | (append ? std::ios::app : std::ios::trunc));
  if (!out_) throw std::runtime_error(fmt::format("cannot write '{}'", path));
}

void MetricsFile::write(const std::string& json_line) {
  if (!out_.is_open()) return;
  out_ << json_line << "\n";
  out_.flush();
}

namespace {

using Clock = std::chrono::steady_clock;

// ---------------------------------------------------------------------------------------------------
class RunDirectory : public TrainObserver {
 public:
  explicit RunDirectory(std::shared_ptr<MetricsFile> m) : metrics_(std::move(m)) {}
  void on_start(RunContext& run) override {
    if (!run.is_main()) return;
    const Recipe& r = run.recipe;
    const std::string& dir = r.run.dir;
    std::error_code ec;
    fs::create_directories(fs::path(dir) / "samples", ec);
    if (ec) throw std::runtime_error(fmt::format("cannot create run directory '{}': {}", dir, ec.message()));
    write_file_atomic(dir + "/config.toml", r.config.to_toml() + "\n");
    std::string ov;
    for (auto& o : r.config.overrides()) ov += o + "\n";
    write_file_atomic(dir + "/overrides.txt", ov);
    char host[256] = {0};
    gethostname(host, sizeof host - 1);
    write_file_atomic(dir + "/meta.json",
                      fmt::format("{{\"recipe\": \"{}\", \"recipe_file\": \"{}\", \"source_revision\": \"{}\", \"world_size\": {}, "
                                  "\"device\": \"{}\", \"host\": \"{}\", \"config_hash\": \"{}\", \"torch\": \"{}.{}\"}}\n",
                                  r.name, r.config.recipe_path(), source_revision(), run.options.world, run.device.str(), host,
                                  r.config.hash(), TORCH_VERSION_MAJOR, TORCH_VERSION_MINOR));
    // A resumed run continues the metrics (the checkpoint coordinator trimmed them to its step).
    metrics_->open(dir + "/metrics.jsonl", run.start_step > 0);
  }

 private:
  std::shared_ptr<MetricsFile> metrics_;
};

// ---------------------------------------------------------------------------------------------------
class ProgressLog : public TrainObserver {
 public:
  explicit ProgressLog(std::shared_ptr<MetricsFile> m) : metrics_(std::move(m)) {}
  void on_start(RunContext& run) override {
    last_logged_step_ = run.start_step;
    if (!run.is_main() || run.options.quiet) return;
    const Recipe& r = run.recipe;
    fmt::print("cm train: recipe {} | method {} | {} | {} parameters | device {} | {} rank(s) | {} thread(s){}\n", r.name,
               r.method.name, run.data.describe(), count_parameters(*run.objective.student()), run.device.str(), run.options.world,
               run.threads, run.lanes > 1 ? fmt::format(", {} lanes", run.lanes) : "");
    fmt::print("run directory: {}\n", fs::absolute(r.run.dir).string());
    std::fflush(stdout);
  }

  void after_step(RunContext& run, int64_t done, const StepOutcome& out) override {
    if (out.applied) {  // the mean loss is that of the applied steps; skipped ones are counted apart
      loss_accum_ += out.loss;
      ++loss_count_;
    }
    if (done == run.start_step + 1) t_last_ = run.t0;  // the first step of this process: from the run's start
    const auto& tc = run.recipe.train;
    const bool due = done % tc.log_every == 0 || done == tc.steps;
    if (!due || !run.is_main()) return;
    const auto now = Clock::now();
    const double dt = std::chrono::duration<double>(now - t_last_).count() - (run.excluded_s - excluded_at_last_);
    const double elapsed = std::chrono::duration<double>(now - run.t0).count();
    const int64_t since_start = done - run.start_step, steps_now = done - last_logged_step_;
    const double img_s = dt > 0 ? steps_now * tc.batch / dt : 0;
    const double eta = since_start > 0 ? elapsed / since_start * (tc.steps - done) : 0;
    const double mean_loss = loss_accum_ / std::max<int64_t>(1, loss_count_);
    const auto sched = run.objective.schedule(done - 1);
    std::string sched_s, extra;
    for (auto& [k, v] : sched) sched_s += fmt::format(" {} {:.6g}", k, v), extra += fmt::format(", \"{}\": {:.10g}", k, v);
    const auto [health_s, health_j] = health(run.scaler);
    if (!run.options.quiet)
      fmt::print("step {:>7}/{} | loss {:.5f} |{}{} | {:.0f} img/s | elapsed {:.0f}s | ETA {:.0f}s\n", done, tc.steps, mean_loss,
                 sched_s, health_s, img_s, elapsed, eta);
    std::fflush(stdout);
    metrics_->write(fmt::format("{{\"step\": {}, \"loss\": {:.8g}, \"images_per_sec\": {:.1f}, \"images_seen\": {}, \"elapsed_s\": {:.2f}{}{}}}",
                                done, mean_loss, img_s, done * tc.batch, elapsed, extra, health_j));
    loss_accum_ = 0, loss_count_ = 0;
    t_last_ = now;
    excluded_at_last_ = run.excluded_s;
    last_logged_step_ = done;
  }

 private:
  // The loss scale (when scaling) and the skipped steps (when there were any): on the line and in metrics.
  static std::pair<std::string, std::string> health(const LossScaler& s) {
    std::string line, json;
    if (s.enabled()) {
      line += fmt::format(" | scale 2^{:.2f}", std::log2(s.scale()));
      json += fmt::format(", \"loss_scale\": {:.10g}", s.scale());
    }
    if (s.enabled() || s.skipped_steps() > 0) {
      line += fmt::format(" | skipped {}", s.skipped_steps());
      json += fmt::format(", \"skipped_steps\": {}", s.skipped_steps());
    }
    return {line, json};
  }

  std::shared_ptr<MetricsFile> metrics_;
  Clock::time_point t_last_;
  double excluded_at_last_ = 0;
  int64_t last_logged_step_ = 0;
  double loss_accum_ = 0;
  int64_t loss_count_ = 0;
};

// ---------------------------------------------------------------------------------------------------
// Toys: scatter plots of one-step and multistep samples over fresh data; images: grids of the same.
torch::Tensor picture(const RunContext& run, NetworkImpl& net) {
  const Recipe& r = run.recipe;
  const auto shape = run.data.shape();
  const auto& p = run.objective.precond();
  const auto sigmas = recipe_sample_sigmas(r);
  const bool edm = p.kind == Preconditioning::Edm;
  auto draw = [&](int64_t n, const std::vector<double>& s) { return sample_model(r, net, p, n, s, rng_stream::kPictureNoise, run.device, shape); };
  std::vector<torch::Tensor> panels;
  if (shape.resolution == 0) {
    const int64_t n = std::max<int64_t>(r.sample.count, 2000);
    auto gen = cpu_generator(derive_seed(r.train.seed, rng_stream::kPictureData));
    auto data = run.data.fresh_points(n, gen);
    if (!data.defined()) throw std::logic_error("2-D data without fresh_points: no picture to draw");
    panels.push_back(scatter_plot(data, draw(n, edm ? sigmas : std::vector<double>{sigmas[0]})));
    if (!edm && sigmas.size() > 1) panels.push_back(scatter_plot(data, draw(n, sigmas)));
  } else {
    const int64_t n = r.sample.count;
    const int64_t cols = static_cast<int64_t>(std::ceil(std::sqrt(static_cast<double>(n))));
    panels.push_back(image_grid(draw(n, {sigmas[0]}), cols));
    if (sigmas.size() > 1 || edm) panels.push_back(image_grid(draw(n, sigmas), cols));
  }
  return hconcat(panels);
}

class SamplePictures : public TrainObserver {
 public:
  void after_step(RunContext& run, int64_t done, const StepOutcome&) override {
    const auto& tc = run.recipe.train;
    if (tc.sample_every > 0 && done % tc.sample_every == 0 && done < tc.steps) write(run, done, false);
  }
  void on_finish(RunContext& run, TrainResult& res) override { write(run, res.steps, true); }

 private:
  static void write(RunContext& run, int64_t step, bool final) {
    if (!run.is_main()) return;
    torch::Tensor img;
    with_sampling_weights(run.objective, run.emas.sampling(), run.recipe.sample.ema_index, [&](NetworkImpl& net) { img = picture(run, net); });
    const std::string dir = run.recipe.run.dir;
    write_png(fmt::format("{}/samples/step_{:08d}.png", dir, step), img);
    if (final) write_png(dir + "/samples.png", img);
  }
};

// ---------------------------------------------------------------------------------------------------
// [eval]: the Inception network and the reference statistics (computed over all ranks and cached in
// run.dir when the reference is an image set), then FID of eval.count samples when due.
class FidDuringTraining : public TrainObserver {
 public:
  explicit FidDuringTraining(std::shared_ptr<MetricsFile> m) : metrics_(std::move(m)) {}
  void on_start(RunContext& run) override;
  void after_step(RunContext& run, int64_t done, const StepOutcome&) override {
    const int64_t every = run.recipe.eval.every_images, b = run.recipe.train.batch;
    if (every > 0 && (done * b) / every > ((done - 1) * b) / every) evaluate(run, done);
  }
  void on_finish(RunContext& run, TrainResult& res) override {
    if (!run.recipe.eval.enabled()) return;
    if (last_eval_step_ != res.steps) evaluate(run, res.steps);
    res.fid = last_fid_;
    res.fid_1step = last_fid_1step_;
    res.fid_key = net_->metric_key();
  }

 private:
  void evaluate(RunContext& run, int64_t step);
  std::vector<double> fids_of(RunContext& run, const std::vector<std::pair<std::string, std::vector<double>>>& passes);

  std::shared_ptr<MetricsFile> metrics_;
  std::unique_ptr<FeatureNetwork> net_;
  std::unique_ptr<FeatureStats> ref_;
  int64_t last_eval_step_ = -1;
  double last_fid_ = std::numeric_limits<double>::quiet_NaN(), last_fid_1step_ = std::numeric_limits<double>::quiet_NaN();
};

void FidDuringTraining::on_start(RunContext& run) {
  const EvalConfig& e = run.recipe.eval;
  if (!e.enabled()) return;
  if (run.data.shape().resolution == 0) throw ConfigError("eval.every_images > 0: FID needs images; this recipe trains on 2-D points");
  net_ = std::make_unique<FeatureNetwork>(FeatureNetwork::resolve(e.feature_net, e.inception), run.device);
  dist::Communicator* comm = run.comm();
  EvalOptions o;
  o.batch = e.batch;
  o.progress = false;
  const std::string ref = e.ref.empty() ? run.recipe.data_path : e.ref;
  if (ref.empty()) throw ConfigError("eval.ref is empty and the recipe has no dataset.path to compute reference statistics from");
  const bool stats_file = fs::is_regular_file(ref) && fs::path(ref).extension() == ".npz" && data::npz_has(ref, "mu");
  // Statistics of another image set, or in another network's features, must never be mistaken for these: the
  // cache is named by the network's kind and a digest of its file's SHA-256 and the reference path, so a resumed
  // run that switched eval.feature_net, eval.inception or eval.ref computes its statistics afresh.
  std::error_code ec;
  const fs::path ref_abs = fs::weakly_canonical(fs::path(ref), ec);
  const std::string key = sha256_hex(net_->sha256() + "\n" + (ec ? ref : ref_abs.string())).substr(0, 16);
  const std::string cache = run.recipe.run.dir + "/eval_ref_stats_" + net_->kind() + "_" + key + ".npz";
  // An image set's statistics are computed once (all ranks) and kept in the run directory for resumed runs.
  int64_t cached = run.is_main() && !stats_file && fs::exists(cache) ? 1 : 0;
  if (comm) {
    auto flag = torch::full({1}, cached, torch::kInt64).to(comm->device());
    comm->broadcast(flag, 0, "eval cache");
    cached = flag.cpu().item<int64_t>();
  }
  const bool use_cache = !stats_file && cached;
  if (run.is_main() && !run.options.quiet)
    fmt::print("eval: {} of {} samples every {} images against {}{}; {} {} (sha256 {})\n", net_->metric_name(), e.count, e.every_images, ref,
               use_cache ? fmt::format(" (statistics cached in {})", cache) : "", net_->is_inception() ? "inception" : "features",
               net_->path(), net_->sha256());
  ReferenceSet r = load_reference(use_cache ? cache : ref, *net_, o, false, comm);
  if (run.is_main() && !stats_file && !use_cache) write_reference_stats(cache, r.stats, torch::Tensor());
  ref_ = std::make_unique<FeatureStats>(r.stats);
}

// FID of each pass (a name and its noise levels) of the eval EMA's samples.
std::vector<double> FidDuringTraining::fids_of(RunContext& run, const std::vector<std::pair<std::string, std::vector<double>>>& passes) {
  const EvalConfig& e = run.recipe.eval;
  const ModelShape shape = run.data.shape();
  const auto& p = run.objective.precond();
  SamplingOptions so;
  so.edm_steps = run.recipe.sample.edm_steps;
  so.count = e.count;
  so.seed = e.seed;
  so.clip_denoised = run.recipe.sample.clip;
  EvalOptions o;
  o.batch = e.batch;
  o.progress = false;
  std::vector<double> fids;
  with_sampling_weights(run.objective, run.emas.sampling(), e.ema_index, [&](NetworkImpl& net) {
    const bool was_training = net.is_training();
    net.eval();
    try {
      for (auto& [key, sigmas] : passes) {
        so.sigmas = sigmas;
        ImageRangeFn images = [&](int64_t b, int64_t end) { return to_uint8_reference(sample_floats(net, p, shape, so, b, end, run.device).x.cpu()); };
        SetFeatures f = compute_features(*net_, e.count, images, o, false, false, run.comm(), "samples");
        fids.push_back(frechet_distance(f.stats, *ref_));
      }
    } catch (...) {
      net.train(was_training);
      throw;
    }
    net.train(was_training);
  });
  return fids;
}

void FidDuringTraining::evaluate(RunContext& run, int64_t step) {
  const EvalConfig& e = run.recipe.eval;
  const auto t_start = Clock::now();
  const auto& p = run.objective.precond();
  // "fid": the recipe's sample.ts (EDM models: Heun); "fid_1step" beside it when sample.ts is multistep and
  // eval.one_step is on - the paper's two columns.
  const std::string key = net_->metric_key();  // "fid", or "fd_fmnist" in the Fashion-MNIST classifier's features
  std::vector<std::pair<std::string, std::vector<double>>> passes = {{key, recipe_sample_sigmas(run.recipe)}};
  if (e.one_step && p.kind != Preconditioning::Edm && passes[0].second.size() > 1) passes.emplace_back(key + "_1step", std::vector<double>{passes[0].second[0]});
  const std::vector<double> fids = fids_of(run, passes);
  const double secs = std::chrono::duration<double>(Clock::now() - t_start).count();
  run.excluded_s += secs;  // img/s counts training only
  last_eval_step_ = step;
  last_fid_ = fids[0];
  last_fid_1step_ = fids.size() > 1 ? fids[1] : std::numeric_limits<double>::quiet_NaN();
  if (!run.is_main()) return;
  const auto& rates = run.emas.sampling().rates();
  const std::string weights = rates.empty() ? "student" : "EMA " + SamplingEmas::rate_name(rates[0]);
  std::string shown, logged;
  for (size_t i = 0; i < passes.size(); ++i) {
    const size_t levels = passes[i].second.size();
    shown += fmt::format("{}{} {:.4f} ({})", i ? ", " : "", net_->metric_name(), fids[i],
                         p.kind == Preconditioning::Edm ? "Heun" : fmt::format("{} step{}", levels, levels == 1 ? "" : "s"));
    logged += fmt::format(", \"{}\": {:.8g}", passes[i].first, fids[i]);
  }
  if (!run.options.quiet) fmt::print("step {:>7} | {} | {} samples, {} | {:.1f}s\n", step, shown, e.count, weights, secs);
  std::fflush(stdout);
  const char* count_key = net_->is_inception() ? "fid" : "fd";  // fid_samples / fd_samples, fid_s / fd_s
  metrics_->write(fmt::format("{{\"step\": {}, \"images_seen\": {}{}, \"{}_samples\": {}, \"{}_s\": {:.2f}}}", step,
                              step * run.recipe.train.batch, logged, count_key, e.count, count_key, secs));
}

// ---------------------------------------------------------------------------------------------------
class ToyQualityFigures : public TrainObserver {
 public:
  void on_finish(RunContext& run, TrainResult& res) override {
    res.quality = toy_quality(run.recipe, run.data, run.objective, run.emas, run.device, run.is_main());
  }
};

// ---------------------------------------------------------------------------------------------------
class FinalExports : public TrainObserver {
 public:
  void on_finish(RunContext& run, TrainResult& res) override {
    if (!run.is_main()) return;
    save_weights(run);
    std::string q;
    for (auto& [k, v] : res.quality) q += fmt::format(", \"{}\": {:.6g}", k, v);
    if (std::isfinite(res.fid)) q += fmt::format(", \"{}\": {:.8g}", res.fid_key, res.fid);
    if (std::isfinite(res.fid_1step)) q += fmt::format(", \"{}_1step\": {:.8g}", res.fid_key, res.fid_1step);
    write_file_atomic(run.recipe.run.dir + "/final.json",
                      fmt::format("{{\"steps\": {}, \"final_loss\": {:.8g}, \"images_per_sec\": {:.1f}{}}}\n", res.steps, res.final_loss,
                                  res.images_per_sec, q));
    if (!run.options.quiet) {
      for (auto& [k, v] : res.quality) fmt::print("{}: {:.5f}\n", k, v);
      fmt::print("samples: {}\n", fs::absolute(run.recipe.run.dir + "/samples.png").string());
    }
  }

 private:
  static void save_weights(RunContext& run) {
    const std::string dir = run.recipe.run.dir;
    auto net = run.objective.student();
    std::map<std::string, std::string> meta = {{"recipe", run.recipe.name}, {"config_hash", run.recipe.config.hash()}};
    save_safetensors(dir + "/model.safetensors", state_dict(*net), meta);
    const auto& emas = run.emas.sampling();
    for (size_t i = 0; i < emas.rates().size(); ++i)
      save_safetensors(dir + "/" + ema_file_name(emas.rates()[i]), ema_state(*net, emas.weights(i)), meta);
  }
};

}  // namespace

std::map<std::string, double> toy_quality(const Recipe& r, DataSource& data, Objective& obj, EmaSet& emas, torch::Device device,
                                          bool is_main) {
  std::map<std::string, double> q;
  const int64_t n = r.sample.eval_count;
  auto gen = cpu_generator(derive_seed(r.train.seed, rng_stream::kQualityData));
  auto points = is_main ? data.fresh_points(n, gen) : torch::Tensor();
  if (!points.defined()) return q;
  auto gen2 = cpu_generator(derive_seed(r.train.seed, rng_stream::kQualityFloor));
  q["swd_data_floor"] = sliced_wasserstein(points, data.fresh_points(n, gen2));
  const auto& p = obj.precond();
  const auto sigmas = recipe_sample_sigmas(r);
  const auto shape = data.shape();
  with_sampling_weights(obj, emas.sampling(), r.sample.ema_index, [&](NetworkImpl& net) {
    auto swd = [&](const std::vector<double>& s) {
      return sliced_wasserstein(points, sample_model(r, net, p, n, s, rng_stream::kQualityNoise, device, shape).cpu());
    };
    if (p.kind == Preconditioning::Edm) {
      q["swd_heun"] = swd(sigmas);
    } else {
      q["swd_1step"] = swd({sigmas[0]});
      if (sigmas.size() > 1) q["swd_2step"] = swd(sigmas);
    }
  });
  return q;
}

void add_standard_observers(Trainer& trainer) {
  auto metrics = std::make_shared<MetricsFile>();
  trainer.add_observer(std::make_unique<RunDirectory>(metrics));
  trainer.add_observer(std::make_unique<ProgressLog>(metrics));
  trainer.add_observer(std::make_unique<SamplePictures>());
  trainer.add_observer(std::make_unique<FidDuringTraining>(metrics));
  trainer.add_observer(std::make_unique<ToyQualityFigures>());
  trainer.add_observer(std::make_unique<FinalExports>());
}

}  // namespace cm
