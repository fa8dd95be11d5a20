// Recipe binding (see recipe.h).
#include "recipes/recipe.h"

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fmt/format.h>
#include "core/io/checkpoint_dir.h"
#include "core/network.h"
#include "datasets/loader.h"
#include "datasets/toy2d.h"

namespace cm {

static NoiseRange bind_range(ConfigReader& m) {
  NoiseRange r;
  r.sigma_min = m.get_double("sigma_min", r.sigma_min);
  r.sigma_max = m.get_double("sigma_max", r.sigma_max);
  r.sigma_data = m.get_double("sigma_data", r.sigma_data);
  r.rho = m.get_double("rho", r.rho);
  if (!(r.sigma_min > 0 && r.sigma_max > r.sigma_min && r.sigma_data > 0 && r.rho > 0))
    throw ConfigError(fmt::format("'{}': need 0 < sigma_min < sigma_max, sigma_data > 0, rho > 0", m.path()));
  return r;
}

static TrainConfig bind_train(ConfigReader t) {
  TrainConfig c;
  c.steps = t.require_int("steps");
  c.batch = t.require_int("batch");
  c.micro_batches = t.get_int("micro_batches", c.micro_batches);
  c.optimizer.name = t.get_choice("optimizer", "radam", {"radam", "adam"});
  c.optimizer.lr = t.require_double("lr");
  c.optimizer.beta1 = t.get_double("beta1", c.optimizer.beta1);
  c.optimizer.beta2 = t.get_double("beta2", c.optimizer.beta2);
  c.optimizer.eps = t.get_double("adam_eps", c.optimizer.eps);
  c.ema_rates = t.get_double_list("ema_rates", {});
  c.seed = static_cast<uint64_t>(t.get_int("seed", 0));
  c.device = t.get_choice("device", "auto", {"auto", "cpu", "cuda"});
  c.threads = t.get_int("threads", 0);
  c.lanes = t.get_int("lanes", 0);
  c.channels_last = t.get_choice("channels_last", "auto", {"auto", "on", "off"});
  c.log_every = t.get_int("log_every", c.log_every);
  c.sample_every = t.get_int("sample_every", c.sample_every);
  c.check_every = t.get_int("check_every", c.check_every);
  c.watchdog_s = t.get_double("watchdog_s", c.watchdog_s);
  c.precision = parse_precision(t.get_choice("precision", "fp32", {"fp32", "tf32", "bf16", "fp16"}));
  c.target_precision = parse_target_precision(t.get_choice("target_precision", "auto", {"auto", "fp32", "same"}));
  const std::string scaling = t.get_choice("loss_scale", "auto", {"auto", "dynamic", "none"});
  c.loss_scale.enabled = scaling == "dynamic" || (scaling == "auto" && c.precision == Precision::Fp16);
  c.loss_scale.init = t.get_double("loss_scale_init", c.loss_scale.init);
  c.loss_scale.growth = t.get_double("loss_scale_growth", c.loss_scale.growth);
  c.loss_scale.growth_interval = t.get_int("loss_scale_growth_interval", c.loss_scale.growth_interval);
  c.loss_scale.backoff = t.get_double("loss_scale_backoff", c.loss_scale.backoff);
  c.max_nonfinite_steps = t.get_int("max_nonfinite_steps", c.max_nonfinite_steps);
  t.finish();
  if (c.steps <= 0) throw ConfigError("'train.steps' must be positive");
  if (c.batch <= 0) throw ConfigError("'train.batch' must be positive");
  if (c.micro_batches <= 0) throw ConfigError("'train.micro_batches' must be positive");
  if (c.log_every <= 0) throw ConfigError("'train.log_every' must be positive");
  const auto& o = c.optimizer;
  if (!(o.lr > 0)) throw ConfigError(fmt::format("'train.lr' = {} must be positive", o.lr));
  if (!(o.beta1 >= 0 && o.beta1 < 1) || !(o.beta2 >= 0 && o.beta2 < 1))
    throw ConfigError(fmt::format("'train.beta1' = {} and 'train.beta2' = {} must be in [0, 1)", o.beta1, o.beta2));
  if (!(o.eps > 0)) throw ConfigError(fmt::format("'train.adam_eps' = {} must be positive", o.eps));
  if (c.threads < 0) throw ConfigError(fmt::format("'train.threads' = {} must be >= 0 (0 = cores / ranks on the node)", c.threads));
  if (c.lanes < 0) throw ConfigError(fmt::format("'train.lanes' = {} must be >= 0 (0 = auto)", c.lanes));
  if (c.watchdog_s < 0) throw ConfigError(fmt::format("'train.watchdog_s' = {} must be >= 0 (0 = no watchdog)", c.watchdog_s));
  if (c.sample_every < 0) throw ConfigError(fmt::format("'train.sample_every' = {} must be >= 0 (0 = only at the end)", c.sample_every));
  if (c.check_every < 0) throw ConfigError(fmt::format("'train.check_every' = {} must be >= 0 (0 = only at the end)", c.check_every));
  if (c.max_nonfinite_steps < 1)
    throw ConfigError(fmt::format("'train.max_nonfinite_steps' = {} must be >= 1", c.max_nonfinite_steps));
  LossScaler check(c.loss_scale);  // throws on impossible scaler settings
  for (double r : c.ema_rates)
    if (!(r >= 0 && r < 1)) throw ConfigError(fmt::format("'train.ema_rates' entry {} is not in [0, 1)", r));
  return c;
}

static Curriculum bind_curriculum(ConfigReader& m, const MethodTraits& t, int64_t total_steps) {
  Curriculum c;
  c.kind = parse_curriculum(m.get_choice("schedule", Curriculum{t.curriculum}.name(), {"fixed", "ct", "ict"}));
  c.fixed.num_scales = m.get_int("num_scales", c.fixed.num_scales);
  c.fixed.mu = m.get_double("mu", t.mu);
  const int64_t curriculum_steps = m.get_int("curriculum_steps", total_steps);
  if (c.kind == CurriculumKind::Ct) {
    c.ct.s0 = m.get_int("s0", 2);
    c.ct.s1 = m.get_int("s1", 150);
    c.ct.mu0 = m.get_double("mu0", 0.9);
    c.ct.total_steps = curriculum_steps;
  } else if (c.kind == CurriculumKind::Ict) {
    c.ict.s0 = m.get_int("s0", 10);
    c.ict.s1 = m.get_int("s1", 1280);
    c.ict.total_steps = curriculum_steps;
  }
  return c;
}

static void check_curriculum(const Curriculum& c) {
  if (c.kind == CurriculumKind::Fixed && c.fixed.num_scales < 2) throw ConfigError("'method.num_scales' must be >= 2");
  if (c.kind == CurriculumKind::Ct && !(c.ct.s0 >= 1 && c.ct.s1 >= c.ct.s0 && c.ct.mu0 > 0 && c.ct.mu0 < 1))
    throw ConfigError("'method': need 1 <= s0 <= s1 and 0 < mu0 < 1");
  if (c.kind == CurriculumKind::Ict && !(c.ict.s0 >= 1 && c.ict.s1 >= c.ict.s0)) throw ConfigError("'method': need 1 <= s0 <= s1");
  if (!(c.fixed.mu >= 0 && c.fixed.mu < 1)) throw ConfigError("'method.mu' must be in [0, 1)");
}

std::vector<std::string> batch_split_problems(const TrainConfig& t, int64_t world) {
  std::vector<std::string> problems;
  if (world < 1 || t.batch % world != 0) {
    problems.push_back(fmt::format("train.batch = {} (global) does not divide over {} ranks: the per-rank batch would be {:.2f}; pick "
                                   "a batch that is a multiple of {} or another world size (a batch that does not divide by the {} "
                                   "ranks is never rounded)", t.batch, world, static_cast<double>(t.batch) / std::max<int64_t>(1, world), world, world));
    return problems;
  }
  const int64_t per_rank = t.batch / world;
  if (per_rank % t.micro_batches != 0)
    problems.push_back(fmt::format("the per-rank batch {} does not divide into train.micro_batches = {}", per_rank, t.micro_batches));
  return problems;
}

void check_batch_split(const TrainConfig& t, int64_t world) {
  const auto problems = batch_split_problems(t, world);
  if (!problems.empty()) throw ConfigError(fmt::format("{}", fmt::join(problems, "; ")));
}

// Every unset choice comes from the method's row of the table (recipes/methods.h).
// A weights file the project ships (recipes/weights/...), named relative to the source tree: found from any
// working directory through the recipe search path (recipes/configs -> the tree above it). Anything that
// exists as given, or that is not found there, is returned unchanged (the loader names it when missing).
static std::string shipped_file(const std::string& path) {
  namespace fs = std::filesystem;
  std::error_code ec;
  if (path.empty() || fs::path(path).is_absolute() || fs::exists(path, ec)) return path;
  for (const auto& d : recipe_search_path()) {
    const fs::path p = fs::path(d).parent_path().parent_path() / path;
    if (fs::is_regular_file(p, ec)) return p.string();
  }
  return path;
}

static MethodConfig bind_method(ConfigReader m, int64_t total_steps) {
  MethodConfig c;
  c.name = m.get_choice("name", "", method_names());
  const MethodTraits& t = method_traits(c.name);
  c.kind = t.kind;
  c.range = bind_range(m);
  if (!t.consistency) {
    c.p_mean = m.get_double("p_mean", -1.2);
    c.p_std = m.get_double("p_std", 1.2);
    m.finish();
    return c;
  }
  const Metric metric_default = t.metric;
  c.metric = parse_metric(m.get_choice("metric", to_string(metric_default), {"l2", "l1", "pseudo_huber", "lpips"}));
  if (c.metric == Metric::Lpips) c.lpips_weights = m.get_string("lpips_weights", "");
  c.curriculum = bind_curriculum(m, t, total_steps);
  c.pair_sampling = m.get_choice("index_sampling", t.pairs == PairSampling::Lognormal ? "lognormal" : "uniform", {"uniform", "lognormal"}) == "lognormal"
                        ? PairSampling::Lognormal : PairSampling::Uniform;
  c.weighting = m.get_choice("weighting", t.weighting == Weighting::InverseDt ? "inverse_dt" : "uniform", {"uniform", "inverse_dt"}) == "inverse_dt"
                    ? Weighting::InverseDt : Weighting::Uniform;
  c.p_mean = m.get_double("p_mean", -1.1);
  c.p_std = m.get_double("p_std", 2.0);
  c.boundary_shift = m.get_bool("boundary_shift", true);
  c.stop_gradient = m.get_bool("stop_gradient", true);
  if (t.second_point == SecondPoint::TeacherOde) {
    c.solver = parse_solver(m.get_choice("solver", "heun", {"euler", "heun"}));
    c.teacher = m.require_string("teacher");
    c.exact_teacher = c.teacher == "exact";
    if (!c.exact_teacher) c.teacher = shipped_file(c.teacher);
    c.init_from_teacher = m.get_bool("init_from_teacher", !c.exact_teacher);
  } else {
    c.init_from = m.get_string("init_from", "");
  }
  m.finish();
  check_curriculum(c.curriculum);
  return c;
}

// The index of `rate` in the sampling EMAs (`key` names the setting in errors); rate < 0 = the first one.
static int64_t bind_ema_choice(double rate, const std::vector<double>& rates, const std::string& key) {
  if (rate < 0) return 0;
  for (size_t i = 0; i < rates.size(); ++i)
    if (std::abs(rates[i] - rate) <= 1e-12 * std::max(1.0, std::abs(rate))) return static_cast<int64_t>(i);
  throw ConfigError(fmt::format("'{}' = {} is not one of train.ema_rates = [{}]", key, rate, fmt::join(rates, ", ")));
}

// Checked here, when the recipe is bound, so that a bad sample.ts / sample.sigmas stops `cm train` before
// step 1 rather than when the pictures are drawn at the end.
static SampleConfig bind_sample(ConfigReader s, const NoiseRange& range, const std::vector<double>& ema_rates) {
  SampleConfig c;
  c.ts = s.get_int_list("ts", c.ts);
  c.grid = s.get_int("grid", c.grid);
  c.sigmas = s.get_double_list("sigmas", {});
  c.clip = s.get_bool("clip", c.clip);
  c.ema = s.get_double("ema", c.ema);
  c.count = s.get_int("count", c.count);
  c.edm_steps = s.get_int("edm_steps", c.edm_steps);
  c.eval_count = s.get_int("eval_count", c.eval_count);
  s.finish();
  if (c.ts.empty() || c.ts[0] != 0) throw ConfigError("'sample.ts' must start with 0 (sigma_max)");
  if (c.grid < 2) throw ConfigError(fmt::format("'sample.grid' = {} must be >= 2 (a Karras grid of N points)", c.grid));
  for (size_t i = 0; i < c.ts.size(); ++i) {
    if (c.ts[i] < 0 || c.ts[i] >= c.grid)
      throw ConfigError(fmt::format("'sample.ts' entry {} is outside the {}-point grid [0, {}] (sample.grid)", c.ts[i], c.grid, c.grid - 1));
    if (i > 0 && c.ts[i] <= c.ts[i - 1])
      throw ConfigError(fmt::format("'sample.ts' must increase (indices from sigma_max down): {} after {}", c.ts[i], c.ts[i - 1]));
  }
  if (!c.sigmas.empty()) {
    if (c.ts.size() > 1) throw ConfigError("give either 'sample.ts' (grid indices) or 'sample.sigmas', not both");
    if (std::abs(c.sigmas[0] - range.sigma_max) > 1e-9 * range.sigma_max)
      throw ConfigError(fmt::format("'sample.sigmas' must start at sigma_max = {}, got {}", range.sigma_max, c.sigmas[0]));
    c.sigmas[0] = range.sigma_max;
    for (size_t i = 0; i < c.sigmas.size(); ++i) {
      const double v = c.sigmas[i];
      if (!(v > 0) || v < range.sigma_min || v > range.sigma_max)
        throw ConfigError(fmt::format("'sample.sigmas' entry {} is outside [sigma_min, sigma_max] = [{}, {}]", v, range.sigma_min, range.sigma_max));
      if (i > 0 && !(v < c.sigmas[i - 1]))
        throw ConfigError(fmt::format("'sample.sigmas' must decrease: {} after {}", v, c.sigmas[i - 1]));
    }
  }
  if (c.count < 1) throw ConfigError(fmt::format("'sample.count' = {} must be >= 1", c.count));
  c.ema_index = bind_ema_choice(c.ema, ema_rates, "sample.ema");
  return c;
}

static EvalConfig bind_eval(ConfigReader e) {
  EvalConfig c;
  c.every_images = e.get_int("every_images", c.every_images);
  c.count = e.get_int("count", c.count);
  c.batch = e.get_int("batch", c.batch);
  c.ref = e.get_string("ref", c.ref);
  c.inception = e.get_string("inception", c.inception);
  c.feature_net = e.get_string("feature_net", c.feature_net);
  c.seed = static_cast<uint64_t>(e.get_int("seed", static_cast<int64_t>(c.seed)));
  c.one_step = e.get_bool("one_step", c.one_step);
  c.ema = e.get_double("ema", c.ema);
  e.finish();
  if (c.every_images < 0) throw ConfigError("'eval.every_images' must be >= 0 (0 = no FID during training)");
  if (c.enabled() && c.count < 2) throw ConfigError("'eval.count' must be >= 2 (FID needs a covariance)");
  if (c.batch < 1) throw ConfigError("'eval.batch' must be >= 1");
  return c;
}

Recipe Recipe::load(const std::string& recipe, const std::vector<std::string>& overrides) {
  Config cfg = Config::compose(recipe, overrides);
  return bind(cfg, std::filesystem::path(recipe).stem().string());
}

static void bind_dataset(Recipe& r, ConfigReader d) {
  r.dataset_kind = d.get_choice("kind", "", {"toy", "hdf5"});
  if (r.dataset_kind == "toy") {
    r.toy_name = d.get_choice("name", "ring", toy_names());
    d.finish();
    return;
  }
  r.data_path = d.require_string("path");
  r.random_flip = d.get_bool("random_flip", false);
  r.class_cond = d.get_bool("class_cond", false);
  // The rest of the table is read by make_image_source (datasets/loader.h) when build_data runs:
  // resolution / channels / num_classes are checked against the manifest, the others tune the loader.
  d.allow({"resolution", "channels", "num_classes", "name", "loader_threads", "prefetch", "io"});
  d.finish();
}

static DebugConfig bind_debug(ConfigReader d) {
  DebugConfig c;
  c.fail_rank = d.get_int("fail_rank", -1);
  c.fail_step = d.get_int("fail_step", -1);
  c.hang_rank = d.get_int("hang_rank", -1);
  c.hang_step = d.get_int("hang_step", -1);
  c.signal_rank = d.get_int("signal_rank", -1);
  c.signal_step = d.get_int("signal_step", -1);
  c.nonfinite_rank = d.get_int("nonfinite_rank", -1);
  c.nonfinite_step = d.get_int("nonfinite_step", -1);
  c.nonfinite_steps = d.get_int("nonfinite_steps", 1);
  c.ckpt_crash_at = d.get_string("ckpt_crash_at", "");
  c.ckpt_fault_step = d.get_int("ckpt_fault_step", -1);
  c.ckpt_fail_after_bytes = d.get_int("ckpt_fail_after_bytes", -1);
  d.finish();
  const auto& phases = commit_crash_phases();
  if (!c.ckpt_crash_at.empty() && std::find(phases.begin(), phases.end(), c.ckpt_crash_at) == phases.end())
    throw ConfigError(fmt::format("'debug.ckpt_crash_at' = \"{}\" is not one of: {}", c.ckpt_crash_at, fmt::join(phases, ", ")));
  return c;
}

static CheckpointConfig bind_checkpoint(ConfigReader c) {
  CheckpointConfig k;
  k.every = c.get_int("every", k.every);
  k.keep_last = c.get_int("keep_last", k.keep_last);
  k.keep_every = c.get_int("keep_every", k.keep_every);
  k.async = c.get_bool("async", k.async);
  c.finish();
  if (k.every < 0) throw ConfigError("'checkpoint.every' must be >= 0 (0 = only at the end and when preempted)");
  if (k.keep_last < 1) throw ConfigError("'checkpoint.keep_last' must be >= 1");
  if (k.keep_every < 0) throw ConfigError("'checkpoint.keep_every' must be >= 0 (0 = no milestones)");
  return k;
}

Recipe Recipe::bind(const Config& cfg, const std::string& name) {
  Recipe r;
  r.config = cfg;
  r.name = name;
  ConfigReader root(r.config, "");
  r.train = bind_train(root.sub("train"));
  r.method = bind_method(root.sub("method"), r.train.steps);
  r.sample = bind_sample(root.sub("sample"), r.method.range, r.train.ema_rates);
  r.eval = bind_eval(root.sub("eval"));
  r.eval.ema_index = bind_ema_choice(r.eval.ema, r.train.ema_rates, "eval.ema");
  {
    ConfigReader d = root.sub("dist");
    r.dist = dist::read_dist_options(d);
    d.finish();
  }
  {
    ConfigReader run = root.sub("run");
    r.run.dir = run.get_string("dir", "");
    run.finish();
  }
  bind_dataset(r, root.sub("dataset"));
  r.debug = bind_debug(root.sub("debug"));
  r.checkpoint = bind_checkpoint(root.sub("checkpoint"));
  r.resume = root.get_string("resume", "auto");
  if (r.resume.empty()) throw ConfigError("'resume' must be \"auto\", \"never\" or the path of a checkpoint or run directory");
  root.sub("model");  // checked by build_network
  root.allow({"groups"});
  root.finish();
  if (r.run.dir.empty()) r.run.dir = "runs/" + r.name;
  return r;
}

Preconditioning preconditioning(const Recipe& r) {
  Preconditioning p;
  p.range = r.method.range;
  ConfigReader m(r.config, "model");
  p.label = parse_noise_label(m.get_choice("noise_label", "adm", {"adm", "log"}));
  p.boundary_shift = r.method.boundary_shift;
  p.kind = r.method.is_consistency() ? Preconditioning::Consistency : Preconditioning::Edm;
  return p;
}

NetworkPtr build_network(const Recipe& r, const ModelShape& shape) {
  ConfigReader m(r.config, "model");
  m.allow({"noise_label"});
  auto net = make_network(m, shape);
  m.finish();
  return net;
}

std::unique_ptr<DataSource> build_data(const Recipe& r, int64_t rank, int64_t world, torch::Device device) {
  if (r.dataset_kind == "toy")
    return std::make_unique<ToySource>(make_toy_mixture(r.toy_name), r.toy_name, r.train.batch, rank, world, r.train.seed);
  // One binder for the loader's table (also used by `cm data` and the tests), so every key it knows is
  // honoured here too; path, random_flip and class_cond are the fields bound above.
  ConfigReader d(r.config, "dataset");
  return make_image_source(d, rank, world, r.train.batch, r.train.seed, device);
}

}  // namespace cm
