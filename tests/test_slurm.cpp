// The project's SLURM batch scripts on a real single-node SLURM cluster brought up on this machine
// (launch/slurm/local_cluster.sh: munged, slurmctld and slurmd on localhost), shut down afterwards.
// Skipped only when not running as root (slurmd must be able to run jobs).
#include <gtest/gtest.h>
#include <fmt/format.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <thread>
#include "support/files.h"
#include "support/paths.h"

namespace fs = std::filesystem;
using cm::test::run_command;

namespace {

using cm::test::read_text;

// One cluster for all tests of this program (starting one takes a few seconds).
class SlurmCluster : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    if (geteuid() != 0) return;
    dir_ = cm::test::make_temp_dir("slurm");
    std::string out;
    const int rc = run_command(fmt::format("{}/launch/slurm/local_cluster.sh start {}/cluster 2>&1", cm::test::source_dir(), dir_), &out);
    up_ = rc == 0;
    start_log_ = out;
  }
  static void TearDownTestSuite() {
    if (dir_.empty()) return;
    std::string out;
    run_command(fmt::format("SLURM_CONF={0}/cluster/slurm.conf scancel --full --quiet -u root 2>/dev/null; "
                            "{1}/launch/slurm/local_cluster.sh stop {0}/cluster 2>&1",
                            dir_, cm::test::source_dir()),
                &out);
  }
  void SetUp() override {
    if (geteuid() != 0) GTEST_SKIP() << "a local SLURM cluster needs root (slurmd runs the jobs); not running as root";
    ASSERT_TRUE(up_) << "the local SLURM cluster did not start:\n" << start_log_;
  }
  // Runs a shell command with SLURM_CONF pointing at the test cluster and CM_BIN at the built cm.
  static int slurm(const std::string& cmd, std::string* out) {
    return run_command(fmt::format("cd {} && export SLURM_CONF={}/cluster/slurm.conf CM_BIN={} && {} 2>&1",
                                   cm::test::source_dir(), dir_, cm::test::cm_binary(), cmd),
                       out);
  }
  // sbatch options that fit the project's 1-node script to this CPU-only machine: 2 tasks, 1 CPU each.
  static std::string cpu_job(const std::string& name) {
    return fmt::format("--job-name={} --ntasks-per-node=2 --gpus-per-node=0 --cpus-per-task=1 --output={}/{}.out", name,
                       dir_, name);
  }

  static inline std::string dir_, start_log_;
  static inline bool up_ = false;
};

// The tiny recipe every job trains: the toy CT recipe, 120 steps, small sample sets.
const char* kTiny = "toy_ct train.steps=120 train.log_every=20 sample.count=200 sample.eval_count=500";

}  // namespace

TEST_F(SlurmCluster, OneNodeBatchScriptTrainsWithTwoTasks) {
  const std::string run = dir_ + "/run_plain";
  std::string out;
  const int rc = slurm(fmt::format("timeout 600 sbatch --wait {} launch/slurm/cm_1node.sbatch train {} run.dir={}",
                                   cpu_job("plain"), kTiny, run),
                       &out);
  const std::string log = read_text(dir_ + "/plain.out");
  ASSERT_EQ(rc, 0) << out << "\njob output:\n" << log;
  EXPECT_NE(log.find("2 tasks on 1 node(s)"), std::string::npos) << log;
  EXPECT_NE(log.find("2 rank(s)"), std::string::npos) << log;  // one MPI world of 2 ranks via srun --mpi=pmix
  EXPECT_NE(log.find("identical on all 2 ranks"), std::string::npos) << log;
  EXPECT_TRUE(fs::exists(run + "/final.json")) << log;
  EXPECT_TRUE(fs::exists(run + "/samples.png")) << log;
  EXPECT_TRUE(fs::exists(run + "/model.safetensors")) << log;
}

TEST_F(SlurmCluster, JobWithoutRunDirectoryIsRefused) {
  std::string out;
  slurm(fmt::format("timeout 120 sbatch --wait {} launch/slurm/cm_1node.sbatch train toy_ct", cpu_job("norundir")), &out);
  const std::string log = read_text(dir_ + "/norundir.out");
  EXPECT_NE(log.find("give run.dir=DIR"), std::string::npos) << out << log;
}

// Preemption: SIGUSR1 to the job's tasks (what --signal=USR1@T sends before the time limit) makes every rank
// stop after the same step with a committed checkpoint and exit 75; job.sh requeues the job, which resumes
// from that checkpoint in the same run directory and finishes.
TEST_F(SlurmCluster, PreemptedJobCheckpointsIsRequeuedAndFinishes) {
  const std::string run = dir_ + "/run_preempt";
  std::string out;
  // checkpoint.every larger than the run: the only checkpoints are the preemption's and the final one.
  ASSERT_EQ(slurm(fmt::format("sbatch --parsable {} launch/slurm/cm_1node.sbatch train toy_ct train.steps=600 "
                              "train.log_every=10 sample.count=200 sample.eval_count=500 checkpoint.every=100000 run.dir={}",
                              cpu_job("preempt"), run),
                  &out),
            0)
      << out;
  const std::string job = out.substr(0, out.find_first_of(";\n"));
  // Wait until training is under way (metrics of step 40 written), then signal every task of the job.
  bool training = false;
  for (int i = 0; i < 600 && !training; ++i) {
    training = read_text(run + "/metrics.jsonl").find("\"step\": 40") != std::string::npos ||
               read_text(run + "/metrics.jsonl").find("\"step\":40") != std::string::npos;
    if (!training) std::this_thread::sleep_for(std::chrono::milliseconds(200));
  }
  ASSERT_TRUE(training) << "the job did not start training:\n" << read_text(dir_ + "/preempt.out");
  ASSERT_EQ(slurm("scancel --signal=USR1 " + job, &out), 0) << out;
  // The requeued job runs to the end.
  bool done = false;
  for (int i = 0; i < 1500 && !done; ++i) {
    done = fs::exists(run + "/final.json");
    if (!done) std::this_thread::sleep_for(std::chrono::milliseconds(200));
  }
  // Let the batch script finish writing its last lines.
  for (int i = 0; i < 100 && read_text(dir_ + "/preempt.out").find("cm exited with") == std::string::npos; ++i)
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
  const std::string log = read_text(dir_ + "/preempt.out");
  ASSERT_TRUE(done) << log;
  EXPECT_NE(log.find("exiting with code 75"), std::string::npos) << log;
  EXPECT_NE(log.find("requeueing job " + job), std::string::npos) << log;
  EXPECT_NE(log.find("(restart 1)"), std::string::npos) << log;
  // The second run resumed from the preemption checkpoint, not from scratch.
  const auto stop = log.find("stopping after step ");
  ASSERT_NE(stop, std::string::npos) << log;
  const int64_t k = std::stoll(log.substr(stop + 20));
  EXPECT_GE(k, 40);
  EXPECT_LT(k, 600);
  EXPECT_NE(log.find(fmt::format("(step {},", k)), std::string::npos) << "no 'resuming from ... (step " << k << "' in:\n" << log;
  EXPECT_NE(log.find("step     600/600"), std::string::npos) << log;
  EXPECT_TRUE(fs::exists(run + "/checkpoints/step_00000600")) << log;
}
