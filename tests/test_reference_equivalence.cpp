// The project's consistency losses, their parameter gradients and whole training steps against
// openai/consistency_models, run by tools/reference_equivalence.py (which says exactly what it ran) into
// tests/fixtures/reference_equivalence/reference.safetensors. Same network weights (made here and there by
// the same counter-based hash), same batch, noise z, pair indices and class labels, dropout off.
// Cases: CT with l2 and l1, CD with a Heun and an Euler teacher step, iCT (pseudo-Huber, 1/dt weighting;
// the reference has no iCT, the generator builds it from its CT call), and 7 CT training steps (curriculum
// N(k) and mu(k), RAdam, target EMA, a sampling EMA). Tolerance: 1e-5 relative.
#include <gtest/gtest.h>
#include <fmt/format.h>

#include <cmath>
#include <filesystem>
#include <torch/torch.h>
#include "core/ema.h"
#include "core/karras.h"
#include "core/optim.h"
#include "core/rng.h"
#include "core/io/safetensors.h"
#include "core/weights.h"
#include "recipes/objectives.h"
#include "recipes/recipe.h"
#include "support/paths.h"

namespace {

using namespace cm;

constexpr int64_t kImage = 8, kClasses = 10;
constexpr double kTol = 1e-5;

const TensorFile& ref() {
  static TensorFile f = load_safetensors(test::source_dir() + "/tests/fixtures/reference_equivalence/reference.safetensors");
  return f;
}
torch::Tensor get(const std::string& name) {
  const torch::Tensor* t = ref().find(name);
  if (!t) throw std::runtime_error("fixture has no tensor " + name);
  return *t;
}

// The generator's weights (its splitmix64 is core/rng.h's): tensor k of the state dict, element i -> 24-bit
// u -> (u/2^24 - 0.5)/8, or 1 + (u/2^24 - 0.5)/4 for 1-D "*weight" tensors; exact in double, rounded once
// to float.
void hash_weights(NetworkImpl& net, uint64_t seed) {
  torch::NoGradGuard ng;
  int64_t k = 0;
  for (auto& [name, t] : state_dict(net)) {
    const int64_t n = t.numel();
    std::vector<float> v(n);
    const bool gn = t.dim() == 1 && name.size() >= 6 && name.compare(name.size() - 6, 6, "weight") == 0;
    for (int64_t i = 0; i < n; ++i) {
      const uint64_t key = (seed << 48) ^ (static_cast<uint64_t>(k) << 32) ^ static_cast<uint64_t>(i);
      const double u = static_cast<double>(splitmix64(key) >> 40) / static_cast<double>(1 << 24) - 0.5;
      v[i] = static_cast<float>(gn ? 1.0 + u / 4.0 : u / 8.0);
    }
    t.copy_(torch::from_blob(v.data(), t.sizes(), torch::kFloat32));
    ++k;
  }
}

// [64 evenly spaced entries (all when fewer), sum of squares, dot with the hash-sign vector], as summarize().
std::vector<double> summarize(const torch::Tensor& t) {
  auto f = t.detach().to(torch::kFloat64).contiguous().reshape(-1);
  const double* p = f.data_ptr<double>();
  const int64_t n = f.numel(), m = std::min<int64_t>(n, 64);
  std::vector<double> out;
  for (int64_t j = 0; j < m; ++j) out.push_back(p[(j * n) / m]);
  double ss = 0, proj = 0;
  for (int64_t i = 0; i < n; ++i) {
    ss += p[i] * p[i];
    proj += ((static_cast<uint64_t>(i) * 0x9E3779B97F4A7C15ull) >> 63) ? p[i] : -p[i];
  }
  out.push_back(ss);
  out.push_back(proj);
  return out;
}

// Largest relative difference of one tensor's summary against the reference's: the entries relative to
// its largest sampled magnitude, the norm and the projection relative to its norm. Floors of 1e-2 of the
// largest entry / of the norm over all tensors (so 1e-5 of them is ~1e-7, float32 resolution, of the
// largest) keep tensors whose gradient is zero in exact arithmetic from comparing rounding noise with
// itself: a conv bias right before a GroupNorm of one channel per group (in_layers.2.bias,
// out_layers.3.bias, skip_connection.bias of the ADM blocks) gets ~1e-10 of rounding on both sides.
double summary_error(const std::vector<double>& got, const torch::Tensor& want_t, double entry_floor, double norm_floor) {
  auto w = want_t.to(torch::kFloat64).contiguous();
  const double* want = w.data_ptr<double>();
  const size_t m = got.size() - 2;
  EXPECT_EQ(static_cast<size_t>(w.numel()), got.size());
  double scale = entry_floor;
  for (size_t j = 0; j < m; ++j) scale = std::max(scale, std::abs(want[j]));
  double err = 0;
  for (size_t j = 0; j < m; ++j) err = std::max(err, std::abs(got[j] - want[j]) / scale);
  const double norm = std::max(std::sqrt(want[m]), norm_floor);
  err = std::max(err, std::abs(std::sqrt(got[m]) - std::sqrt(want[m])) / norm);
  err = std::max(err, std::abs(got[m + 1] - want[m + 1]) / norm);
  return err;
}

// Every parameter of the list against the fixture's summaries under PREFIX; returns the worst error.
double compare_params(const std::vector<std::pair<std::string, torch::Tensor>>& params, const std::string& prefix,
                      std::string* worst_name) {
  double max_entry = 0, total_sq = 0;
  for (auto& [name, t] : params) {
    auto w = get(prefix + name).to(torch::kFloat64).contiguous();
    const int64_t m = w.numel() - 2;
    max_entry = std::max(max_entry, w.narrow(0, 0, m).abs().max().item<double>());
    total_sq += w[m].item<double>();
  }
  double worst = 0;
  for (auto& [name, t] : params) {
    const double e = summary_error(summarize(t), get(prefix + name), 1e-2 * max_entry, 1e-2 * std::sqrt(total_sq));
    if (e > worst) worst = e, *worst_name = name;
  }
  return worst;
}

std::vector<std::string> model_overrides() {
  // The generator's UNetModel: 32 channels, channel_mult (1,), 1 res block, attention at 8 px with 16 channels
  // per head, scale-shift norm, resblock up/down, 10 classes.
  return {"model=adm_small", "model.channel_mult=[1]", "model.attention_resolutions=[8]", "model.dropout=0.0"};
}

struct Built {
  std::unique_ptr<Objective> obj;
  std::string dir;
};

// An objective of RECIPE + overrides on the ADM above: student = seed 1, its separate target = seed 2
// (method.mu > 0 so that there is one; mu only matters after a step), teacher = seed 3 (written to a file).
Built build(const std::string& recipe, std::vector<std::string> extra, bool separate_target = true) {
  Built b;
  b.dir = test::make_temp_dir("cm_refeq");
  auto ov = model_overrides();
  if (recipe == "toy_cd") {
    Recipe probe = Recipe::load("toy_ct", ov);
    auto teacher = build_network(probe, {3, kImage, kClasses});
    hash_weights(*teacher, 3);
    save_safetensors(b.dir + "/teacher.safetensors", state_dict(*teacher));
    ov.push_back("method.teacher=\"" + b.dir + "/teacher.safetensors\"");
    ov.push_back("+method.init_from_teacher=false");
  }
  ov.insert(ov.end(), extra.begin(), extra.end());
  Recipe r = Recipe::load(recipe, ov);
  ObjectiveDeps deps;
  deps.shape = {3, kImage, kClasses};
  b.obj = make_objective(r, deps);
  hash_weights(*b.obj->student(), 1);
  if (separate_target) {
    auto probe = build_network(r, deps.shape);
    hash_weights(*probe, 2);
    load_weights(*b.obj->target(), state_dict(*probe), "probe");
  }
  return b;
}

// The fixture's z and pair indices into the objective; the step's StepInfo.
StepInfo inject(Objective& obj, const std::string& prefix, int64_t num_scales, int64_t step = 0) {
  // The reference's index i counts from sigma_max down (t = its t_i > t2 = t_{i+1}); ours counts pairs up
  // from sigma_min: n = N - 2 - i.
  auto idx = (num_scales - 2) - get(prefix + "idx");
  // Our grid (float64, rounded once) against the reference's (float32 arithmetic): equal to float32 rounding.
  // Then the reference's own sigmas are used (see tools/reference_equivalence.py for why).
  auto grid = karras_grid_tensor(num_scales, NoiseRange{});
  auto ours_lo = grid.index_select(0, idx), ours_hi = grid.index_select(0, idx + 1);
  auto ref_lo = get(prefix + "t2").to(torch::kFloat64), ref_hi = get(prefix + "t").to(torch::kFloat64);
  EXPECT_LT(((ours_lo - ref_lo).abs() / ref_lo).max().item<double>(), 1e-6) << prefix;
  EXPECT_LT(((ours_hi - ref_hi).abs() / ref_hi).max().item<double>(), 1e-6) << prefix;
  obj.inject_draws(get(prefix + "z"), idx, get(prefix + "t2"), get(prefix + "t"));
  StepInfo s;
  s.step = step;
  s.rows = Slice{0, 4, 4};
  return s;
}

Batch batch(const std::string& prefix) { return Batch{get(prefix + "x"), get(prefix + "y")}; }

void check_loss_case(const std::string& name, const std::string& recipe, std::vector<std::string> extra, int64_t n,
                     bool separate_target = true) {
  SCOPED_TRACE(name);
  auto b = build(recipe, std::move(extra), separate_target);
  {
    std::string worst;
    EXPECT_LT(compare_params(b.obj->student()->named_parameters().pairs(), "weights.student/", &worst), 1e-12)
        << "the hash-made weights differ from the generator's (" << worst << ")";
  }
  auto& net = *b.obj->student();
  net.zero_grad();
  auto loss = b.obj->loss(batch(name + "/"), inject(*b.obj, name + "/", n));
  loss.backward();
  const double want = get(name + "/loss").item<double>();
  const double rel = std::abs(loss.item<double>() - want) / std::abs(want);
  EXPECT_LT(rel, kTol) << fmt::format("loss {:.9g}, reference {:.9g}", loss.item<double>(), want);
  std::vector<std::pair<std::string, torch::Tensor>> grads;
  for (auto& [pn, p] : net.named_parameters().pairs()) {
    ASSERT_TRUE(p.grad().defined()) << pn;
    grads.emplace_back(pn, p.grad());
  }
  std::string worst;
  const double gerr = compare_params(grads, name + "/grad/", &worst);
  EXPECT_LT(gerr, kTol) << "worst parameter gradient: " << worst;
  std::printf("%s: loss %.9g (reference %.9g, rel %.2e), worst gradient rel %.2e (%s)\n", name.c_str(),
              loss.item<double>(), want, rel, gerr, worst.c_str());
  std::filesystem::remove_all(b.dir);
}

TEST(ReferenceEquivalence, CtL2) {
  check_loss_case("ct_l2", "toy_ct", {"method.metric=l2", "method.schedule=fixed", "~method.s0", "~method.s1", "~method.mu0", "+method.num_scales=6", "+method.mu=0.5"}, 6);
}
TEST(ReferenceEquivalence, CtL1) {
  check_loss_case("ct_l1", "toy_ct", {"method.metric=l1", "method.schedule=fixed", "~method.s0", "~method.s1", "~method.mu0", "+method.num_scales=6", "+method.mu=0.5"}, 6);
}
TEST(ReferenceEquivalence, CdHeun) {
  check_loss_case("cd_heun", "toy_cd", {"method.metric=l2", "method.num_scales=6", "method.mu=0.5", "method.solver=heun"}, 6);
}
TEST(ReferenceEquivalence, CdEuler) {
  check_loss_case("cd_euler", "toy_cd", {"method.metric=l2", "method.num_scales=6", "method.mu=0.5", "method.solver=euler"}, 6);
}
// iCT: theta- = stopgrad(theta), no separate target; s0 = s1 = 10 gives N = 11 at every step.
TEST(ReferenceEquivalence, IctPseudoHuber) {
  check_loss_case("ict", "toy_ict", {"method.s0=10", "method.s1=10"}, 11, /*separate_target=*/false);
}

// 7 steps of CT as the reference's CMTrainLoop: loss, backward, RAdam, sampling EMA 0.9, target EMA mu(k),
// with N(k), mu(k) of s0 2 -> s1 10, mu0 0.9 over K = 8; the same order as Trainer::train_step.
TEST(ReferenceEquivalence, CtTrainingSteps) {
  auto b = build("toy_ct", {"method.metric=l2", "method.s0=2", "method.s1=10", "method.mu0=0.9", "train.steps=8",
                            "train.lr=2e-3", "train.ema_rates=[0.9]"},
                 /*separate_target=*/false);
  Objective& obj = *b.obj;
  // The target starts as the student (the objective copies it at construction; the student was re-hashed after).
  {
    NamedTensors st;
    for (auto& [n, t] : state_dict(*obj.student())) st.emplace_back(n, t.clone());
    load_weights(*obj.target(), st, "student");
  }
  auto params = obj.student()->parameters();
  OptimizerOptions oo;
  oo.name = "radam";
  oo.lr = 2e-3;
  Optimizer opt(params, oo);
  Objective* o = &obj;
  EmaSet emas(obj.student(), obj.target(), [o](int64_t k) { return o->target_ema(k); }, {0.9});
  for (int64_t k = 0; k < 7; ++k) {
    const std::string pre = fmt::format("train/{}/", k);
    const auto sched = obj.schedule(k);
    const int64_t n = static_cast<int64_t>(sched.at("N"));
    opt.zero_grad();
    auto loss = obj.loss(batch(pre), inject(obj, pre, n, k));
    loss.backward();
    opt.step();
    emas.update(k);
    const double want = get(pre + "loss").item<double>();
    EXPECT_LT(std::abs(loss.item<double>() - want) / std::abs(want), kTol)
        << fmt::format("step {} (N {}, mu {}): loss {:.9g}, reference {:.9g}", k, n, sched.at("mu"), loss.item<double>(), want);
  }
  std::vector<std::pair<std::string, torch::Tensor>> student = obj.student()->named_parameters().pairs(), target, ema;
  for (auto& [n, t] : emas.target_state())
    if (n.rfind("target.", 0) == 0) target.emplace_back(n.substr(7), t);
  size_t i = 0;
  for (auto& [n, t] : student) ema.emplace_back(n, emas.sampling().weights(0).at(i++));
  for (auto [what, list] : {std::pair{"student", &student}, std::pair{"target", &target}, std::pair{"ema", &ema}}) {
    std::string worst;
    const double e = compare_params(*list, fmt::format("train/{}/", what), &worst);
    EXPECT_LT(e, kTol) << what << ", worst " << worst;
    std::printf("after 7 steps, %s: worst rel %.2e (%s)\n", what, e, worst.c_str());
  }
  std::filesystem::remove_all(b.dir);
}

}  // namespace
