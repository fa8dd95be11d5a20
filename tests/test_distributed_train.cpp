// Multi-rank training with `cm train` under real mpirun on CPU (the distributed layer's own tests are in
// test_distributed.cpp and test_distributed_mpi.cpp): a W-rank run equals a 1-rank run with the same global
// batch (CT and CD, also with 2 micro-batches), the weights and EMAs are identical on every rank, and a
// rank that fails takes the whole job down promptly with a message naming it.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <filesystem>
#include <fstream>
#include <iterator>
#include "core/io/safetensors.h"
#include "support/files.h"
#include "support/mpi_launch.h"
#include "support/paths.h"
#include "support/runs.h"

using namespace cm;

namespace {

using test::mpirun_prefix;

std::string train(const std::string& launcher, const std::string& recipe, const std::string& dir, const std::string& extra) {
  std::string out;
  const std::string cmd = fmt::format("{}{} train {} train.steps=40 train.batch=96 train.log_every=20 sample.eval_count=300 "
                                      "sample.count=300 train.threads=1 run.dir={} {}",
                                      launcher, test::cm_binary(), recipe, dir, extra);
  int rc = test::run_command(cmd, &out);
  EXPECT_EQ(rc, 0) << cmd << "\n" << out;
  return out;
}

}  // namespace

class Distributed : public ::testing::Test {
 protected:
  void SetUp() override { dir_ = test::make_temp_dir("dist"); }
  void TearDown() override { std::filesystem::remove_all(dir_); }
  std::string dir_;
};

TEST_F(Distributed, RanksMatchOneRankWithTheSameGlobalBatch) {
  for (const char* recipe : {"toy_ct", "toy_cd"}) {
    const std::string one = dir_ + "/" + recipe + "_w1";
    train("", recipe, one, "");
    for (int np : {2, 3}) {
      for (const char* micro : {"train.micro_batches=1", "train.micro_batches=2"}) {
        const std::string d = fmt::format("{}/{}_w{}_{}", dir_, recipe, np, micro[20]);
        auto out = train(mpirun_prefix(np), recipe, d, micro);
        EXPECT_NE(out.find(fmt::format("identical on all {} ranks", np)), std::string::npos) << out;
        // float32 summation order differs (per-rank means averaged vs one mean): tight, not bitwise.
        EXPECT_LT(test::max_tensor_diff(one + "/model.safetensors", d + "/model.safetensors"), 2e-5) << recipe << " np " << np << " " << micro;
        EXPECT_LT(test::max_tensor_diff(one + "/ema_0.995.safetensors", d + "/ema_0.995.safetensors"), 2e-5) << recipe << " np " << np;
      }
    }
  }
}

// Occurrences of `needle` in the file at `path` (0 when it does not exist).
int count_in_file(const std::string& path, const std::string& needle) { return test::count_of(test::read_text(path), needle); }

TEST_F(Distributed, AccumulationCommunicatesOnlyOnTheLastMicroBatch) {
  // The per-rank timelines (dist.trace_dir) record every backward and every bucket all-reduce: with 2
  // micro-batches per step, 40 steps make 80 backwards but only 40 all-reduces of the (single) bucket.
  const std::string d = dir_ + "/traced";
  train(mpirun_prefix(2), "toy_ct", d, fmt::format("train.micro_batches=2 dist.trace_dir={}/trace", d));
  for (int rank : {0, 1}) {
    const std::string trace = fmt::format("{}/trace/trace-rank{}.json", d, rank);
    EXPECT_EQ(count_in_file(trace, "\"name\": \"backward\""), 80) << trace;
    EXPECT_EQ(count_in_file(trace, "\"name\": \"grad bucket "), 40) << trace;
    EXPECT_EQ(count_in_file(trace, "\"name\": \"optimizer\""), 40) << trace;
  }
}

TEST_F(Distributed, FailingRankAbortsTheJobNamingIt) {
  std::string out;
  const auto t0 = std::chrono::steady_clock::now();
  const std::string marker = dir_ + "/fail";
  int rc = test::run_command(fmt::format("{}{} train toy_ct train.steps=200 train.batch=64 run.dir={} +debug.fail_rank=1 +debug.fail_step=5",
                                         mpirun_prefix(2), test::cm_binary(), marker),
                             &out);
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  EXPECT_NE(rc, 0) << out;
  EXPECT_NE(rc, 124) << "timed out: the surviving rank hung\n" << out;
  EXPECT_LT(secs, 60) << out;
  EXPECT_NE(out.find("rank 1"), std::string::npos) << out;
  EXPECT_NE(out.find("injected failure at step 5"), std::string::npos) << out;
  std::string ps;
  // "[r]un.dir" matches the trainers' command lines but not the shell that runs pgrep.
  test::run_command("pgrep -af '[r]un.dir=" + marker + "'", &ps);
  EXPECT_TRUE(ps.empty()) << "processes left behind: " << ps;
}

TEST_F(Distributed, WatchdogEndsAJobWithAHungRank) {
  std::string out;
  const auto t0 = std::chrono::steady_clock::now();
  const std::string marker = dir_ + "/hang";
  int rc = test::run_command(fmt::format("{}{} train toy_ct train.steps=200 train.batch=64 train.watchdog_s=4 run.dir={} "
                                         "+debug.hang_rank=1 +debug.hang_step=3",
                                         mpirun_prefix(2), test::cm_binary(), marker),
                             &out);
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  EXPECT_NE(rc, 0) << out;
  EXPECT_NE(rc, 124) << "timed out: nobody aborted\n" << out;
  EXPECT_LT(secs, 60) << out;
  // Rank 1 hangs before its step-3 work, so rank 0's watchdog finds its gradient bucket of step 3 unfinished.
  EXPECT_NE(out.find("rank 0/2"), std::string::npos) << out;
  EXPECT_NE(out.find("watchdog: collective 'grad bucket 0/1"), std::string::npos) << out;
  EXPECT_NE(out.find("(entered at step 3) has not completed"), std::string::npos) << out;
  std::string ps;
  test::run_command("pgrep -af '[r]un.dir=" + marker + "'", &ps);
  EXPECT_TRUE(ps.empty()) << "processes left behind: " << ps;
}

TEST_F(Distributed, IndivisibleBatchIsAClearError) {
  std::string out;
  int rc = test::run_command(fmt::format("{}{} train toy_ct train.batch=65 run.dir={}/x", mpirun_prefix(2), test::cm_binary(), dir_), &out);
  EXPECT_NE(rc, 0);
  EXPECT_NE(out.find("train.batch = 65 (global) does not divide over 2 ranks"), std::string::npos) << out;
}

// train.lanes under mpirun: each rank trains its rows in 2 lanes (gradients then reach the buckets after the
// lanes, and finish() reduces them all), also with 2 micro-batches; the result equals one rank without lanes.
TEST_F(Distributed, LanesOnEveryRankMatchOneRank) {
  const std::string one = dir_ + "/one", lanes = dir_ + "/lanes";
  train("", "toy_ct", one, "train.lanes=1");
  auto out = train(mpirun_prefix(2), "toy_ct", lanes, "train.threads=2 train.lanes=2 train.micro_batches=2");
  EXPECT_NE(out.find("2 thread(s), 2 lanes"), std::string::npos) << out;
  EXPECT_NE(out.find("identical on all 2 ranks"), std::string::npos) << out;
  EXPECT_LT(test::max_tensor_diff(one + "/model.safetensors", lanes + "/model.safetensors"), 2e-5);
  EXPECT_LT(test::max_tensor_diff(one + "/ema_0.995.safetensors", lanes + "/ema_0.995.safetensors"), 2e-5);
}
