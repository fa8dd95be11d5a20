// train.lanes (core/engine.h): on the CPU the parts of each micro-batch train at once, one per thread with
// single-threaded kernels. A 2-lane run equals a 1-lane run to float32 rounding (the parts' gradients are
// summed in part order, as sequential micro-batches accumulate them; the random draws are per row), repeats
// itself bitwise and resumes bitwise; lanes combine with micro-batches; the ADM UNet (convolutions, group
// norm, attention inside the lanes' parallel region) agrees the same way; explicit values that cannot work
// are errors that say why, and auto picks lanes only where they work. train.channels_last (the convolution
// weights and batches in NHWC layout) trains the ADM as the NCHW layout does, and files written from it hold
// the plain NCHW tensors.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <atomic>
#include <chrono>
#include <filesystem>
#include <fmt/format.h>
#include <mutex>
#include <set>
#include <stdexcept>
#include <thread>
#include "core/config.h"
#include "core/io/safetensors.h"
#include "core/rng.h"
#include "core/util/lanes.h"
#include "recipes/recipe.h"
#include "recipes/trainer.h"
#include "support/adm_steps.h"
#include "support/cm_run.h"
#include "support/files.h"
#include "support/paths.h"
#include "support/runs.h"

using namespace cm;
namespace fs = std::filesystem;

namespace {

const char* kToy = "toy_ct train.batch=64 train.log_every=4 train.threads=2 sample.eval_count=200 sample.count=200 model.width=32 "
                   "+method.curriculum_steps=40";

test::Run train(const std::string& dir, const std::string& extra) {
  return test::run_cm(fmt::format("train {} run.dir={} {}", kToy, dir, extra));
}

class Lanes : public ::testing::Test {
 protected:
  void SetUp() override { dir_ = test::make_temp_dir("cm-lanes"); }
  void TearDown() override { fs::remove_all(dir_); }
  std::string dir_;
};

std::vector<torch::Tensor> adm_after_steps(const std::vector<std::string>& extra, int64_t* lanes) {
  auto r = test::adm_after_steps(extra);
  *lanes = r.lanes;
  return r.params;
}
using test::max_diff;

}  // namespace

// The lanes of this build (Debian's LibTorch, OpenMP) run at once, on distinct threads, and LibTorch sees a
// parallel region in each, so its kernels run single-threaded there. A convolution's backward made first
// outside the lanes on 2 threads and then inside them with the same shapes finishes (oneDNN sizes its
// primitives by the thread count: one made for 2 threads inside a lane used to wait forever at its barrier).
// An exception in a lane reaches the caller.
TEST(RunLanes, RunAtOnceOnDistinctThreadsWithSingleThreadedKernels) {
  torch::set_num_threads(2);
  ASSERT_TRUE(lanes_run_concurrently()) << "this build's lanes should be OpenMP threads of LibTorch's runtime";
  std::atomic<int> arrived{0};
  std::atomic<bool> met{true};
  std::mutex mu;
  std::set<std::thread::id> ids;
  std::vector<int> kernel_threads(2, -1), in_region(2, -1);
  run_lanes(2, 2, [&](int64_t l) {
    {
      std::lock_guard<std::mutex> lock(mu);
      ids.insert(std::this_thread::get_id());
    }
    kernel_threads[static_cast<size_t>(l)] = at::get_num_threads();
    in_region[static_cast<size_t>(l)] = at::in_parallel_region() ? 1 : 0;
    // Each lane waits (up to 20 s) for the other to arrive: only lanes that run at once both get past.
    ++arrived;
    const auto until = std::chrono::steady_clock::now() + std::chrono::seconds(20);
    while (arrived.load() < 2 && std::chrono::steady_clock::now() < until) std::this_thread::yield();
    if (arrived.load() < 2) met = false;
  });
  EXPECT_TRUE(met.load()) << "the two lanes did not run at the same time";
  EXPECT_EQ(ids.size(), 2u);
  EXPECT_EQ(kernel_threads, std::vector<int>({1, 1}));
  EXPECT_EQ(in_region, std::vector<int>({1, 1}));
  EXPECT_EQ(at::get_num_threads(), 2) << "the caller's thread count is left as it was";

  auto conv_backward = [](int64_t seed) {
    auto gen = cpu_generator(static_cast<uint64_t>(seed));
    auto x = torch::randn({4, 64, 16, 16}, gen, torch::kFloat).requires_grad_(true);
    auto w = torch::randn({64, 64, 3, 3}, gen, torch::kFloat).mul_(0.05).requires_grad_(true);
    auto y = torch::conv2d(x, w, {}, 1, 1);
    y.backward(torch::ones_like(y));
    return w.grad().sum().item<double>();
  };
  const double outside = conv_backward(0);
  std::vector<double> inside(2, 0.0);
  run_lanes(2, 2, [&](int64_t l) { inside[static_cast<size_t>(l)] = conv_backward(l); });
  EXPECT_NEAR(inside[0], outside, 1e-3 * std::abs(outside) + 1e-3);

  EXPECT_THROW(run_lanes(3, 2, [](int64_t l) {
                 if (l == 1) throw std::runtime_error("lane 1 failed");
               }),
               std::runtime_error);
}

TEST_F(Lanes, TwoLanesMatchOneLaneRepeatBitwiseAndResumeBitwise) {
  const std::string one = dir_ + "/one", two = dir_ + "/two", again = dir_ + "/again", mixed = dir_ + "/mixed", cut = dir_ + "/cut";
  auto r1 = train(one, "train.steps=16 train.lanes=1");
  ASSERT_EQ(r1.rc, 0) << r1.out;
  EXPECT_TRUE(test::contains(r1.out, "| 2 thread(s)\n")) << r1.out;
  auto r2 = train(two, "train.steps=16 train.lanes=0");  // auto: 2 threads, no dropout, 64 rows -> 2 lanes
  ASSERT_EQ(r2.rc, 0) << r2.out;
  EXPECT_TRUE(test::contains(r2.out, "| 2 thread(s), 2 lanes\n")) << r2.out;
  ASSERT_EQ(train(again, "train.steps=16 train.lanes=2").rc, 0);
  // 2 micro-batches of 2 lanes: 4 parts of 16 rows.
  auto r4 = train(mixed, "train.steps=16 train.lanes=2 train.micro_batches=2");
  ASSERT_EQ(r4.rc, 0) << r4.out;
  for (const char* f : {"model.safetensors", "ema_0.995.safetensors"}) {
    SCOPED_TRACE(f);
    EXPECT_LT(test::max_tensor_diff(one + "/" + f, two + "/" + f), 2e-5);
    EXPECT_LT(test::max_tensor_diff(one + "/" + f, mixed + "/" + f), 2e-5);
    test::expect_same_tensors(two + "/" + f, again + "/" + f);  // deterministic: the parts sum in a fixed order
  }
  // Interrupted at 8 and resumed (the resume may even change train.lanes' spelling: auto resolves to 2).
  ASSERT_EQ(train(cut, "train.steps=8 train.lanes=2 checkpoint.every=0").rc, 0);
  auto rr = train(cut, "train.steps=16 train.lanes=0 checkpoint.every=0");
  ASSERT_EQ(rr.rc, 0) << rr.out;
  EXPECT_TRUE(test::contains(rr.out, "resuming from")) << rr.out;
  ASSERT_EQ(train(dir_ + "/whole", "train.steps=16 train.lanes=2 checkpoint.every=0").rc, 0);
  test::expect_same_state(test::checkpoint_path(dir_ + "/whole", 16), test::checkpoint_path(cut, 16));
}

TEST_F(Lanes, ExplicitValuesThatCannotWorkSayWhyAndAutoAvoidsThem) {
  auto odd = train(dir_ + "/odd", "train.steps=2 train.lanes=3");
  EXPECT_NE(odd.rc, 0);
  EXPECT_TRUE(test::contains(odd.out, "train.lanes = 3 does not divide the micro-batch of 64 rows per rank")) << odd.out;
  auto drop = train(dir_ + "/drop", "train.steps=2 train.lanes=2 model.dropout=0.1");
  EXPECT_NE(drop.rc, 0);
  EXPECT_TRUE(test::contains(drop.out, "train.lanes = 2 needs a network without dropout")) << drop.out;
  auto neg = train(dir_ + "/neg", "train.steps=2 train.lanes=-1");
  EXPECT_NE(neg.rc, 0);
  EXPECT_TRUE(test::contains(neg.out, "'train.lanes' = -1 must be >= 0")) << neg.out;
  // Auto with dropout, or with one thread: one lane.
  auto auto_drop = train(dir_ + "/auto_drop", "train.steps=2 model.dropout=0.1");
  ASSERT_EQ(auto_drop.rc, 0) << auto_drop.out;
  EXPECT_TRUE(test::contains(auto_drop.out, "| 2 thread(s)\n")) << auto_drop.out;
  auto single = train(dir_ + "/single", "train.steps=2 train.threads=1");
  ASSERT_EQ(single.rc, 0) << single.out;
  EXPECT_TRUE(test::contains(single.out, "| 1 thread(s)\n")) << single.out;
}

TEST(LanesAdm, ConvolutionsNormsAndAttentionInLanesMatchOneLane) {
  int64_t l1 = 0, l2 = 0, l2b = 0;
  const auto a = adm_after_steps({"train.lanes=1"}, &l1);
  const auto b = adm_after_steps({}, &l2);
  const auto c = adm_after_steps({"train.lanes=2"}, &l2b);
  EXPECT_EQ(l1, 1);
  EXPECT_EQ(l2, 2) << "auto: 2 threads and an ADM without dropout";
  // The run moved the weights (else the comparison says nothing); the lanes differ from it by rounding only.
  int64_t l0 = 0;
  const auto start = adm_after_steps({"train.lanes=1", "train.lr=1e-30"}, &l0);
  const double moved = max_diff(a, start), d = max_diff(a, b);
  std::printf("weights moved by up to %.3g; 1 lane vs 2 lanes: %.3g\n", moved, d);
  EXPECT_GT(moved, 1e-3);
  EXPECT_LT(d, 1e-3 * moved);
  EXPECT_EQ(max_diff(b, c), 0.0) << "bitwise repeatable";
}

TEST(ChannelsLast, AdmTrainsAsInNchwLayoutAloneAndInLanes) {
  int64_t lanes = 0;
  const auto nchw = adm_after_steps({"train.lanes=1", "train.channels_last=off"}, &lanes);
  const auto nhwc = adm_after_steps({"train.lanes=1", "train.channels_last=on"}, &lanes);
  const auto nhwc_lanes = adm_after_steps({"train.lanes=2", "train.channels_last=on"}, &lanes);
  EXPECT_EQ(lanes, 2);
  const auto start = adm_after_steps({"train.lanes=1", "train.lr=1e-30"}, &lanes);
  const double moved = max_diff(nchw, start);
  std::printf("weights moved by up to %.3g; NCHW vs NHWC %.3g, vs NHWC in 2 lanes %.3g\n", moved, max_diff(nchw, nhwc),
              max_diff(nchw, nhwc_lanes));
  EXPECT_GT(moved, 1e-3);
  EXPECT_LT(max_diff(nchw, nhwc), 1e-3 * moved);
  EXPECT_LT(max_diff(nchw, nhwc_lanes), 1e-3 * moved);
  int64_t convs = 0;
  for (size_t i = 0; i < nhwc.size(); ++i) {
    if (nhwc[i].dim() != 4) continue;
    ++convs;
    EXPECT_TRUE(nhwc[i].is_contiguous(torch::MemoryFormat::ChannelsLast)) << "parameter " << i;
    if (nchw[i].size(2) > 1) EXPECT_FALSE(nchw[i].is_contiguous(torch::MemoryFormat::ChannelsLast)) << "auto on the CPU is NCHW";
  }
  EXPECT_GT(convs, 10);

  // A channels-last tensor written to safetensors reads back as the same NCHW values.
  const std::string dir = test::make_temp_dir("cm-channels-last");
  auto w = torch::arange(2 * 3 * 4 * 5, torch::kFloat).reshape({2, 3, 4, 5});
  save_safetensors(dir + "/w.safetensors", {{"w", w.contiguous(torch::MemoryFormat::ChannelsLast)}});
  const auto back = load_safetensors(dir + "/w.safetensors");
  ASSERT_EQ(back.tensors.size(), 1u);
  ASSERT_NE(back.find("w"), nullptr);
  EXPECT_TRUE(torch::equal(*back.find("w"), w));
  fs::remove_all(dir);
}
