// End-to-end quality on the 2-D ring of Gaussians: the sliced Wasserstein distance (SW1, 10k points, 256
// projections) between one-step samples and the data, against the exact teacher's own many-step ODE
// samples and the untrained model. Deliberate bugs (no eps shift in c_skip/c_out; a target that carries
// gradient) must break the bound, which shows the bound can fail. Measured figures are in README.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <filesystem>
#include "core/distance.h"
#include "core/ode.h"
#include "core/rng.h"
#include "recipes/eval/image_sets.h"  // read_npz_tensor: cm sample's output
#include "datasets/toy2d.h"
#include "recipes/observers.h"  // add_standard_observers
#include "recipes/trainer.h"
#include "support/paths.h"

using namespace cm;

namespace {

// The exact teacher: EDM Heun sampling (N = 40, 79 evaluations) with the closed-form denoiser.
double teacher_swd() {
  auto mix = make_toy_mixture("ring");
  auto g1 = cpu_generator(derive_seed(0, 31));  // the same data draw as Trainer::evaluate_quality
  auto data = mix.sample(10000, g1);
  auto g2 = cpu_generator(123);
  auto z = torch::randn({10000, 2}, g2, torch::kFloat32);
  return sliced_wasserstein(data, edm_heun_sample(mix.denoiser(), z, 40, NoiseRange{}, {}));
}

struct Outcome {
  double before = 0, after = 0, two_step = 0, floor = 0;
  double cli_one_step = -1;  // SW1 of `cm sample --ts 0` of the run's EMA, when asked for
};

Outcome train(const std::string& recipe, std::vector<std::string> overrides, bool sample_with_cli = false) {
  static int counter = 0;
  auto dir = test::make_temp_dir("quality");
  overrides.push_back("run.dir=" + dir);
  overrides.push_back("train.threads=1");  // one thread: OpenMP barriers degrade badly when the 2 cores are shared
  Trainer t(Recipe::load(recipe, overrides), TrainerOptions{0, 1, 0, 1, /*quiet=*/true});
  add_standard_observers(t);
  Outcome o;
  o.before = t.evaluate_quality().at("swd_1step");
  auto res = t.run();
  o.after = res.quality.at("swd_1step");
  o.two_step = res.quality.count("swd_2step") ? res.quality.at("swd_2step") : 0;
  o.floor = res.quality.at("swd_data_floor");
  if (sample_with_cli) {
    // The same bound through the user's path: `cm sample` of the saved sampling EMA, 10,000 one-step points.
    std::string out;
    const Recipe r = Recipe::load(recipe, overrides);
    const std::string cmd = fmt::format("{} sample {} --weights {}/ema_{}.safetensors --ts 0 --count 10000 --batch 2500 --seed 5 --out {}/s --quiet 2>&1",
                                        test::cm_binary(), recipe, dir, SamplingEmas::rate_name(r.train.ema_rates.at(0)), dir);
    EXPECT_EQ(test::run_command(cmd, &out), 0) << cmd << "\n" << out;
    auto pts = data::read_npz_tensor(dir + "/s/samples_10000x2.npz", "arr_0");
    auto g = cpu_generator(derive_seed(0, 31));
    o.cli_one_step = sliced_wasserstein(make_toy_mixture("ring").sample(10000, g), pts);
    std::printf("[quality] %s via cm sample: 1-step %.4f\n", recipe.c_str(), o.cli_one_step);
  }
  std::filesystem::remove_all(dir);
  std::printf("[quality] %s %s: untrained %.4f -> 1-step %.4f, 2-step %.4f (data floor %.4f)\n", recipe.c_str(),
              ++counter > 0 ? "" : "", o.before, o.after, o.two_step, o.floor);
  return o;
}

// Thresholds, from measurements on this machine (README, "Toy quality") with margin >= 1.5x:
// trained 1-step SW1 within a per-method factor of the exact teacher's many-step SW1 (~0.006), and at
// least 3x better than the same network untrained (~0.38).
constexpr double kCdFactor = 15.0;   // measured 0.058 = 9.4x
constexpr double kCtFactor = 20.0;   // measured 0.077 = 12.6x
constexpr double kIctFactor = 25.0;  // measured 0.099 = 16x; 2-step 0.017 = 2.8x
constexpr double kIct2StepFactor = 6.0;
constexpr double kBetter = 3.0;

}  // namespace

class ToyQuality : public ::testing::Test {
 protected:
  static void SetUpTestSuite() { teacher_ = teacher_swd(); std::printf("[quality] exact teacher, Heun N=40: %.4f\n", teacher_); }
  static double teacher_;
};
double ToyQuality::teacher_ = 0;

TEST_F(ToyQuality, CdFromExactTeacher) {
  auto o = train("toy_cd", {});
  EXPECT_LT(o.after, kCdFactor * teacher_);
  EXPECT_LT(o.after * kBetter, o.before);
}

// The same run with the forward passes under bf16 autocast (core/precision.h; CPU autocast runs the MLP's
// matmuls in bfloat16): the same bound.
TEST_F(ToyQuality, CdInBf16) {
  auto o = train("toy_cd", {"train.precision=bf16"});
  EXPECT_LT(o.after, kCdFactor * teacher_);
  EXPECT_LT(o.after * kBetter, o.before);
}

TEST_F(ToyQuality, ConsistencyTraining) {
  auto o = train("toy_ct", {}, /*sample_with_cli=*/true);
  EXPECT_LT(o.after, kCtFactor * teacher_);
  EXPECT_LT(o.cli_one_step, kCtFactor * teacher_) << "cm sample of the trained EMA";
  EXPECT_LT(o.after * kBetter, o.before);
}

TEST_F(ToyQuality, ImprovedConsistencyTraining) {
  auto o = train("toy_ict", {});
  EXPECT_LT(o.after, kIctFactor * teacher_);
  EXPECT_LT(o.two_step, kIct2StepFactor * teacher_);
  EXPECT_LT(o.after * kBetter, o.before);
}

// Deliberate bug: the iCT target theta- = theta *with* gradient (no stop-gradient). Measured 1-step
// 0.238, 2-step 0.155: the same bound that the correct run passes fails. (The other bug the issue
// suggests, c_skip/c_out without the eps shift, is unit-tested for exactness in test_core_math but does
// not move this toy's quality: measured 0.0765 against 0.0768 for CT, so it cannot serve here.)
TEST_F(ToyQuality, DeliberateBugTargetWithGradientFails) {
  auto o = train("toy_ict", {"+method.stop_gradient=false"});
  EXPECT_GT(o.after, kIctFactor * teacher_);
}
