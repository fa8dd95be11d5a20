// `cm bench step`: the recipe's whole training step timed (not a timed test: it checks what is printed
// and written, not how fast): the FLOPs per image are the network's forward FLOPs times the method's
// forward-equivalents, images/s and TFLOP/s agree with the step time, --synthetic needs no dataset, and
// under mpirun the job's images/s is the ranks' sum.
#include <gtest/gtest.h>

#include <filesystem>
#include <fmt/format.h>
#include "core/io/json.h"
#include "support/files.h"
#include "support/mpi_launch.h"
#include "support/paths.h"

using namespace cm;
namespace fs = std::filesystem;

namespace {

Json bench(const std::string& dir, const std::string& args, const std::string& launcher = "") {
  const std::string json = dir + "/bench.json";
  fs::remove(json);
  std::string out;
  const std::string cmd = fmt::format("OMP_NUM_THREADS=1 {}{} bench step {} --steps 2 --warmup 1 --json {}", launcher, test::cm_binary(), args, json);
  EXPECT_EQ(test::run_command(cmd, &out), 0) << cmd << "\n" << out;
  EXPECT_NE(out.find("images/s"), std::string::npos) << out;
  return parse_json(test::read_text(json), json);
}

}  // namespace

TEST(BenchStep, FiguresAgreeWithEachOtherAndTheWorkCount) {
  const std::string dir = test::make_temp_dir("cm-bench-step");
  // iCT on flattened Fashion-MNIST-sized images, without the dataset: 4 forward-equivalents.
  Json j = bench(dir, "fmnist_ict_mlp train.batch=32 train.threads=1 --synthetic");
  const double step = j.get("step_s")->num, ips = j.get("images_per_s_rank")->num, gflop = j.get("gflop_per_image")->num;
  EXPECT_GT(step, 0);
  EXPECT_NEAR(ips, 32 / step, 1e-3 * ips);
  EXPECT_NEAR(j.get("tflops_rank")->num, ips * gflop / 1e3, 1e-3 * j.get("tflops_rank")->num + 1e-4);
  // iCT: student forward + backward (3) and the stop-gradient target forward (1) = 4 x cm model summary's
  // forward FLOPs.
  std::string summary;
  ASSERT_EQ(test::run_command(fmt::format("{} model summary fmnist_ict_mlp --json 2>/dev/null", test::cm_binary()), &summary), 0) << summary;
  const double forward = parse_json(summary, "summary").get("flops_per_image")->num;
  EXPECT_GT(forward, 0);
  EXPECT_NEAR(gflop, 4 * forward / 1e9, 1e-6 * gflop);
  EXPECT_EQ(j.get("precision")->str, "fp32");
  Json bf = bench(dir, "fmnist_ict_mlp train.batch=32 train.threads=1 train.precision=bf16 --synthetic");
  EXPECT_EQ(bf.get("precision")->str, "bf16");
  EXPECT_NEAR(bf.get("gflop_per_image")->num, gflop, 1e-9);
  // Two ranks: half the batch each, the job's rate the sum of theirs.
  Json two = bench(dir, "fmnist_ict_mlp train.batch=32 train.threads=1 --synthetic",
                   test::mpirun_prefix(2));
  EXPECT_EQ(two.get("ranks")->integer, 2);
  EXPECT_EQ(two.get("batch_per_rank")->integer, 16);
  EXPECT_NEAR(two.get("images_per_s_job")->num, 2 * two.get("images_per_s_rank")->num, 1e-3 * two.get("images_per_s_job")->num);
  fs::remove_all(dir);
}
