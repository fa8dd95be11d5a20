// Training precision (core/precision.h): bf16 autocast on the CPU computes the forward in bfloat16 and
// leaves the weights, gradients and loss in float32; the loss scaler follows the reference schedule;
// a step whose gradients are not finite is skipped on every rank alike (an inf injected into one rank's
// loss), the scale drops and the weights and EMAs stay bitwise as they were; the scaler state is part of
// the checkpoint, so an interrupted run resumes bitwise; train.max_nonfinite_steps ends a run that keeps
// producing non-finite losses, leaving the committed checkpoints untouched. LibTorch's CPU autocast has
// no float16, so the scaler is exercised here with bf16 compute (train.loss_scale = "dynamic"); fp16
// itself needs a GPU.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cmath>
#include <filesystem>
#include <fmt/format.h>
#include <fstream>
#include "core/io/checkpoint_dir.h"
#include "core/io/json.h"
#include "core/precision.h"
#include "core/io/safetensors.h"
#include "support/cm_run.h"
#include "support/files.h"
#include "support/mpi_launch.h"
#include "support/paths.h"
#include "support/runs.h"

using namespace cm;
namespace fs = std::filesystem;

namespace {

const char* kToy = "toy_ct train.batch=64 train.log_every=1 train.threads=1 sample.eval_count=200 sample.count=200 model.width=32 "
                   "+method.curriculum_steps=40 train.precision=bf16 train.loss_scale=dynamic";

using test::contains;
using test::expect_same_state;
using test::read_text;
using test::Run;

Run train(const std::string& dir, const std::string& extra, const std::string& launcher = "") {
  return test::run_cm(fmt::format("train {} run.dir={} {}", kToy, dir, extra), launcher);
}

// RUN/checkpoints/step_NNNNNNNN, for short.
std::string ckpt(const std::string& run, int64_t step) { return test::checkpoint_path(run, step); }

Json scaler_state(const std::string& checkpoint) {
  const std::string p = checkpoint + "/state.json";
  return *parse_json(read_text(p), p).get("loss_scaler");
}

class Precision_ : public ::testing::Test {
 protected:
  void SetUp() override { dir_ = test::make_temp_dir("cm-precision"); }
  void TearDown() override { fs::remove_all(dir_); }
  std::string dir_;
};

}  // namespace

TEST(Autocast, Bf16OnTheCpuComputesInBfloat16AndRestoresTheState) {
  torch::nn::Linear lin(8, 4);
  auto x = torch::randn({3, 8});
  EXPECT_EQ(lin(x).scalar_type(), torch::kFloat);
  {
    AutocastScope a(Precision::Bf16, torch::kCPU);
    auto y = lin(x);
    EXPECT_EQ(y.scalar_type(), torch::kBFloat16) << "the forward runs in bfloat16";
    EXPECT_EQ(lin->weight.scalar_type(), torch::kFloat) << "the master weights stay float32";
    auto f = y + x.narrow(1, 0, 4);  // c_skip x + c_out F: promoted back to float32
    EXPECT_EQ(f.scalar_type(), torch::kFloat);
    f.sum().backward();
    EXPECT_EQ(lin->weight.grad().scalar_type(), torch::kFloat) << "float32 gradients for the float32 weights";
    { AutocastScope none(Precision::Fp32, torch::kCPU); EXPECT_EQ(lin(x).scalar_type(), torch::kBFloat16) << "fp32 leaves it as it is"; }
  }
  EXPECT_EQ(lin(x).scalar_type(), torch::kFloat) << "autocast is off again after the scope";
  EXPECT_THROW(AutocastScope(Precision::Fp16, torch::kCPU), std::runtime_error);
}

TEST(LossScaler, FollowsTheReferenceSchedule) {
  LossScalerOptions o;
  o.enabled = true;
  LossScaler s(o);
  EXPECT_EQ(s.scale(), std::pow(2.0, 20));
  for (int i = 0; i < 1000; ++i) s.update(true);
  EXPECT_NEAR(std::log2(s.scale()), 21.0, 1e-9) << "lg_loss_scale grows by 1e-3 per finite step";
  s.update(false);
  EXPECT_NEAR(std::log2(s.scale()), 20.0, 1e-9) << "and drops by 1 on overflow";
  s.update(false);
  EXPECT_EQ(s.skipped_steps(), 2);
  EXPECT_EQ(s.consecutive_skipped(), 2);
  s.update(true);
  EXPECT_EQ(s.consecutive_skipped(), 0);
  LossScaler t(o);
  t.restore(s.state());
  EXPECT_EQ(t.scale(), s.scale());
  EXPECT_EQ(t.skipped_steps(), 2);
  LossScaler off;  // no scaling: scale 1, but skipped steps are still counted
  off.update(false);
  EXPECT_EQ(off.scale(), 1.0);
  EXPECT_EQ(off.skipped_steps(), 1);
  // torch's GradScaler form: x2 after 3 finite steps.
  o.growth = 2, o.growth_interval = 3;
  LossScaler g(o);
  for (int i = 0; i < 5; ++i) g.update(true);
  EXPECT_EQ(g.scale(), std::pow(2.0, 21));
}

TEST_F(Precision_, AnInfOnOneRankIsSkippedByBothRanksAndChangesNothing) {
  const std::string d = dir_ + "/inf";
  // Rank 1's loss is inf at step index 6 (the 7th step): its gradients, and after the all-reduce both
  // ranks', are not finite.
  auto r = train(d, "train.steps=9 checkpoint.every=1 checkpoint.keep_last=20 +debug.nonfinite_rank=1 +debug.nonfinite_step=6",
                 test::mpirun_prefix(2));
  ASSERT_EQ(r.rc, 0) << r.out;
  EXPECT_TRUE(contains(r.out, "skipped 1")) << r.out;
  // Step 7 (1-based) was skipped: its state equals step 6's, bitwise (student, target, EMA, optimizer).
  expect_same_state(ckpt(d, 6), ckpt(d, 7));
  const Json s6 = scaler_state(ckpt(d, 6)), s7 = scaler_state(ckpt(d, 7)), s8 = scaler_state(ckpt(d, 8));
  EXPECT_EQ(s6.get("skipped_steps")->integer, 0);
  EXPECT_EQ(s7.get("skipped_steps")->integer, 1);
  EXPECT_NEAR(std::log2(s7.get("scale")->num), std::log2(s6.get("scale")->num) - 1, 1e-9) << "the scale halves";
  EXPECT_NEAR(std::log2(s6.get("scale")->num), 20 + 6e-3, 1e-9) << "six finite steps of growth before";
  // The step after it is applied again.
  auto m7 = load_safetensors(ckpt(d, 7) + "/model.safetensors"), m8 = load_safetensors(ckpt(d, 8) + "/model.safetensors");
  EXPECT_FALSE(torch::equal(m7.tensors[0].second, m8.tensors[0].second));
  EXPECT_EQ(s8.get("consecutive_skipped")->integer, 0);
  // metrics.jsonl carries the scale and the count.
  const std::string metrics = read_text(d + "/metrics.jsonl");
  EXPECT_TRUE(contains(metrics, "\"step\": 7,") && contains(metrics, "\"skipped_steps\": 1")) << metrics;
  EXPECT_TRUE(contains(metrics, "\"loss_scale\": ")) << metrics;
}

TEST_F(Precision_, ScalerStateResumesBitwise) {
  const std::string ref = dir_ + "/ref", d = dir_ + "/resumed";
  const std::string fault = "+debug.nonfinite_rank=0 +debug.nonfinite_step=3";  // a skipped step before the interruption
  ASSERT_EQ(train(ref, "train.steps=16 checkpoint.every=0 " + fault).rc, 0);
  ASSERT_EQ(train(d, "train.steps=8 checkpoint.every=0 " + fault).rc, 0);
  auto r = train(d, "train.steps=16 checkpoint.every=0 " + fault);
  ASSERT_EQ(r.rc, 0) << r.out;
  EXPECT_TRUE(contains(r.out, "resuming from " + ckpt(d, 8))) << r.out;
  expect_same_state(ckpt(ref, 16), ckpt(d, 16));
  EXPECT_EQ(scaler_state(ckpt(ref, 16)).get("scale")->num, scaler_state(ckpt(d, 16)).get("scale")->num);
  EXPECT_EQ(scaler_state(ckpt(d, 16)).get("skipped_steps")->integer, 1);
}

TEST_F(Precision_, MaxNonfiniteStepsEndsTheRunAndKeepsTheCheckpoints) {
  const std::string d = dir_ + "/nan";
  auto r = train(d, "train.steps=40 checkpoint.every=10 train.loss_scale=none train.max_nonfinite_steps=5 "
                    "+debug.nonfinite_rank=0 +debug.nonfinite_step=12 +debug.nonfinite_steps=1000");
  EXPECT_EQ(r.rc, 1) << r.out;
  EXPECT_TRUE(contains(r.out, "warning: step 13 skipped: the gradients were not finite (loss inf)")) << r.out;
  EXPECT_TRUE(contains(r.out, "training stopped at step 17: 5 steps in a row (train.max_nonfinite_steps = 5) were skipped, the last "
                              "because the gradients were not finite (loss inf); no checkpoint was written after them, the newest "
                              "committed one is " +
                              ckpt(d, 10)))
      << r.out;
  std::vector<int64_t> steps;
  for (auto& [s, p] : list_checkpoint_dirs(d + "/checkpoints")) steps.push_back(s);
  EXPECT_EQ(steps, std::vector<int64_t>{10});
  EXPECT_NO_THROW(verify_checkpoint(ckpt(d, 10)));
  EXPECT_FALSE(fs::exists(d + "/model.safetensors")) << "no final export of a failed run";
}

TEST_F(Precision_, Fp16NeedsAGpuAndSaysSo) {
  if (torch::cuda::is_available()) GTEST_SKIP() << "a GPU is here: fp16 runs";
  auto r = train(dir_ + "/fp16", "train.steps=2 train.precision=fp16");
  EXPECT_EQ(r.rc, 2) << r.out;
  EXPECT_TRUE(contains(r.out, "train.precision = \"fp16\" needs a CUDA device")) << r.out;
}
