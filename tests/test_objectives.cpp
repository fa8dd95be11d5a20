// Objective-level properties: identical dropout masks in the student and target passes, the target EMA
// follows mu(k), iCT's target is the student itself, losses are independent of how the global batch is
// split, and CD's teacher step is the Heun step of the teacher.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include "core/ema.h"
#include "core/rng.h"
#include "datasets/toy2d.h"
#include "recipes/objectives.h"
#include "recipes/recipe.h"

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
  obj->after_step(50);
  const double mu = obj->schedule(50).at("mu");
  EXPECT_NEAR(mu, r.method.ct.target_ema(50), 0);
  auto state = obj->state();
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
  EXPECT_TRUE(obj->state().empty());  // theta- = stopgrad(theta)
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
  for (auto& [n, t] : obj->state()) EXPECT_FALSE(t.requires_grad()) << n;
}
