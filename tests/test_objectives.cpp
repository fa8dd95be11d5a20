// Objective-level properties: identical dropout masks in the student and target passes, the target EMA
// follows mu(k), iCT's target is the student itself, losses are independent of how the global batch is
// split, and CD's teacher step is the Heun step of the teacher.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cmath>
#include "core/ema.h"
#include "core/compat.h"
#include "core/lpips.h"
#include "core/precision.h"
#include "core/weights.h"
#include "core/rng.h"
#include "datasets/toy2d.h"
#include "recipes/objectives.h"
#include "recipes/recipe.h"
#include "support/paths.h"

using namespace cm;

namespace {

// A network whose output is x times a fresh dropout mask, recording every mask it draws.
struct ProbeImpl : NetworkImpl {
  std::vector<torch::Tensor>* masks;
  torch::Tensor w;
  explicit ProbeImpl(std::vector<torch::Tensor>* m) : masks(m) { w = register_parameter("w", torch::ones({1})); }
  torch::Tensor forward(const torch::Tensor& x, const torch::Tensor&, const torch::Tensor&) override {
    auto mask = torch::dropout(torch::ones_like(x), 0.5, is_training());
    masks->push_back(mask.detach().clone());
    return x * mask * w;
  }
};

Batch ring_batch(int64_t n, uint64_t seed) {
  auto gen = cpu_generator(seed);
  return Batch{make_toy_mixture("ring").sample(n, gen), torch::Tensor()};
}

StepInfo info(int64_t step, int64_t offset, int64_t count, int64_t global) {
  return StepInfo{step, 0, 42, torch::kCPU, Slice{offset, count, global}};
}

}  // namespace

TEST(Objectives, StudentAndTargetShareDropoutMasks) {
  for (const char* recipe : {"toy_ct", "toy_cd", "toy_ict"}) {
    std::vector<torch::Tensor> masks;
    Recipe r = Recipe::load(recipe, {});
    ObjectiveDeps deps;
    deps.shape.channels = 2;
    deps.exact_denoiser = make_toy_mixture("ring").denoiser();
    deps.network_factory = [&] { return std::make_shared<ProbeImpl>(&masks); };
    auto obj = make_objective(r, deps);
    obj->student()->train();
    masks.clear();
    obj->loss(ring_batch(64, 1), info(5, 0, 64, 64));
    ASSERT_EQ(masks.size(), 2u) << recipe;  // student pass, target pass (the teacher is exact)
    EXPECT_TRUE(torch::equal(masks[0], masks[1])) << recipe;
    EXPECT_GT(masks[0].eq(0).sum().item<int64_t>(), 0) << "dropout inactive in " << recipe;
    // Another step draws other masks (the seed depends on the step).
    auto first = masks[0];
    masks.clear();
    obj->loss(ring_batch(64, 1), info(6, 0, 64, 64));
    EXPECT_FALSE(torch::equal(first, masks[0])) << recipe;
  }
}

TEST(Objectives, TargetFollowsMuOfTheStep) {
  Recipe r = Recipe::load("toy_ct", {"train.steps=100"});
  ObjectiveDeps deps;
  deps.shape.channels = 2;
  torch::manual_seed(0);
  auto obj = make_objective(r, deps);
  auto student = obj->student()->parameters();
  auto target0 = clone_params(student);  // target starts as a copy of the student
  {
    torch::NoGradGuard ng;
    for (auto& p : student) p.add_(1.0);
  }
  Objective* o = obj.get();
  EmaSet emas(obj->student(), obj->target(), [o](int64_t k) { return o->target_ema(k); }, {});
  emas.update(50);
  const double mu = obj->schedule(50).at("mu");
  EXPECT_NEAR(mu, r.method.curriculum.ct.target_ema(50), 0);
  auto state = emas.target_state();
  ASSERT_EQ(state.size(), student.size());
  for (size_t i = 0; i < student.size(); ++i) {
    auto expect = mu * target0[i] + (1 - mu) * student[i];
    EXPECT_TRUE(torch::allclose(state[i].second, expect, 1e-6, 1e-6));
  }
}

TEST(Objectives, IctHasNoSeparateTargetAndLossIsSplitInvariant) {
  Recipe r = Recipe::load("toy_ict", {});
  ObjectiveDeps deps;
  deps.shape.channels = 2;
  torch::manual_seed(0);
  auto obj = make_objective(r, deps);
  EXPECT_TRUE(obj->target() == nullptr);  // theta- = stopgrad(theta)
  // The loss of a global batch equals the mean of the losses of its halves computed as two ranks would.
  auto b = ring_batch(128, 3);
  auto whole = obj->loss(b, info(7, 0, 128, 128)).item<double>();
  Batch lo{b.x.narrow(0, 0, 64), {}}, hi{b.x.narrow(0, 64, 64), {}};
  auto a = obj->loss(lo, info(7, 0, 64, 128)).item<double>();
  auto c = obj->loss(hi, info(7, 64, 64, 128)).item<double>();
  EXPECT_NEAR(whole, (a + c) / 2, 1e-6 * std::abs(whole));
}

TEST(Objectives, LossGradientReachesOnlyTheStudent) {
  Recipe r = Recipe::load("toy_ct", {});
  ObjectiveDeps deps;
  deps.shape.channels = 2;
  auto obj = make_objective(r, deps);
  auto loss = obj->loss(ring_batch(32, 4), info(0, 0, 32, 32));
  loss.backward();
  double gnorm = 0;
  for (auto& p : obj->student()->parameters()) gnorm += p.grad().defined() ? p.grad().norm().item<double>() : 0;
  EXPECT_GT(gnorm, 0);
  ASSERT_TRUE(obj->target() != nullptr);
  for (auto& [n, t] : state_dict(*obj->target())) EXPECT_FALSE(t.requires_grad()) << n;
}

namespace {
// F(x) = w * x: enough to see the metric at work on images.
struct ScaleImpl : NetworkImpl {
  torch::Tensor w;
  ScaleImpl() { w = register_parameter("w", torch::full({1}, 0.5)); }
  torch::Tensor forward(const torch::Tensor& x, const torch::Tensor&, const torch::Tensor&) override { return x * w; }
};
}  // namespace

// metric = lpips: the objective loads the VGG16 + LPIPS weights file named by method.lpips_weights, the loss
// is finite and positive on images, and its gradient reaches the student, never the frozen LPIPS network.
TEST(Objectives, LpipsMetricLoadsItsWeightsAndTrainsOnlyTheStudent) {
  const std::string dir = cm::test::make_temp_dir("lpips_obj");
  const std::string path = dir + "/lpips.safetensors";
  {
    torch::manual_seed(3);
    Lpips net;
    torch::NoGradGuard ng;
    for (auto& [name, t] : state_dict(*net)) {
      if (name.rfind("lin.", 0) == 0) t.uniform_(0, 1);
      else if (t.dim() == 4) t.normal_(0, std::sqrt(2.0 / (t.size(1) * 9)));
      else t.uniform_(-0.05, 0.05);
    }
    save_weights_file(*net, path);
  }
  Recipe r = Recipe::load("toy_ct", {"method.metric=lpips", "+method.lpips_weights=" + path});
  ObjectiveDeps deps;
  deps.shape.channels = 3;
  deps.shape.resolution = 16;
  deps.network_factory = [] { return std::make_shared<ScaleImpl>(); };
  auto obj = make_objective(r, deps);
  torch::manual_seed(5);
  Batch b{torch::rand({2, 3, 16, 16}) * 2 - 1, torch::Tensor()};
  auto loss = obj->loss(b, info(3, 0, 2, 2));
  ASSERT_TRUE(std::isfinite(loss.item<double>()));
  EXPECT_GT(loss.item<double>(), 0);
  loss.backward();
  auto w = obj->student()->parameters()[0];
  ASSERT_TRUE(w.grad().defined());
  EXPECT_GT(w.grad().abs().item<double>(), 0);
}

TEST(Objectives, LpipsMetricWithoutWeightsFileIsAClearError) {
  Recipe r = Recipe::load("toy_ct", {"method.metric=lpips", "+method.lpips_weights=/nonexistent/vgg_lpips.safetensors"});
  ObjectiveDeps deps;
  deps.shape.channels = 3;
  deps.shape.resolution = 16;
  deps.network_factory = [] { return std::make_shared<ScaleImpl>(); };
  try {
    make_objective(r, deps);
    FAIL() << "no error";
  } catch (const std::exception& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find("/nonexistent/vgg_lpips.safetensors"), std::string::npos) << msg;
    EXPECT_NE(msg.find("convert_lpips_weights.py"), std::string::npos) << msg;
  }
}

namespace {
// Records, per forward, whether CPU autocast was on.
struct AutocastProbeImpl : NetworkImpl {
  std::vector<bool>* on;
  torch::Tensor w;
  explicit AutocastProbeImpl(std::vector<bool>* o) : on(o) { w = register_parameter("w", torch::ones({1})); }
  torch::Tensor forward(const torch::Tensor& x, const torch::Tensor&, const torch::Tensor&) override {
    on->push_back(compat::autocast_enabled(torch::kCPU));
    return x * w;
  }
};

// The autocast state of the student and the target pass of one bf16 loss.
std::vector<bool> autocast_of_passes(const std::string& recipe, std::vector<std::string> overrides) {
  overrides.push_back("train.precision=bf16");
  Recipe r = Recipe::load(recipe, overrides);
  std::vector<bool> on;
  ObjectiveDeps deps;
  deps.shape.channels = 2;
  deps.exact_denoiser = make_toy_mixture("ring").denoiser();
  deps.network_factory = [&] { return std::make_shared<AutocastProbeImpl>(&on); };
  auto obj = make_objective(r, deps);
  {
    AutocastScope bf16(Precision::Bf16, torch::kCPU);
    obj->loss(ring_batch(8, 1), info(0, 0, 8, 8));
  }
  return on;
}
}  // namespace

// train.target_precision = auto: the target pass leaves autocast when theta- = stopgrad(theta) (CD with
// mu = 0, iCT), where a bf16 target drowns the pair's difference; a separate EMA target stays in bf16.
TEST(Objectives, StopgradTargetPassRunsInFp32UnderAutoTargetPrecision) {
  EXPECT_EQ(autocast_of_passes("toy_cd", {}), (std::vector<bool>{true, false}));   // mu = 0
  EXPECT_EQ(autocast_of_passes("toy_ict", {}), (std::vector<bool>{true, false}));  // stopgrad(theta)
  EXPECT_EQ(autocast_of_passes("toy_ct", {}), (std::vector<bool>{true, true}));    // an EMA target network
  EXPECT_EQ(autocast_of_passes("toy_ct", {"train.target_precision=fp32"}), (std::vector<bool>{true, false}));
  EXPECT_EQ(autocast_of_passes("toy_cd", {"train.target_precision=same"}), (std::vector<bool>{true, true}));
}
