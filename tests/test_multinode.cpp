// `cm` on more than one host: two hosts brought up on this machine by launch/slurm/local_nodes.sh (network
// namespaces with their own addresses, hostnames, /etc/hosts and node-local /tmp, an sshd and a slurmd
// each, the slurmctld on the first), sharing the file system as a cluster shares its run directory.
//  - mpirun over ssh with a hostfile (launch/cm-mpirun --hostfile), 2 ranks per host, and
//    `sbatch --nodes=2 launch/slurm/cm_nodes.sbatch` with 2 tasks per node: the rank layout (host, global
//    rank, node-local rank, device) and the trained weights equal to a one-host run with the same global
//    batch (the tolerance of test_distributed_train), for the toy and a small image recipe;
//  - `cm plan --layout` as the dry run of a job's layout;
//  - a two-node job preempted with scancel --signal=USR1 checkpoints once, is requeued and resumes on both
//    nodes; a node lost mid-run (its cm processes killed) ends the job on the other node within the
//    watchdog time, naming the host and ranks, and the resubmitted job resumes from the last committed
//    checkpoint.
// Every test starts its own hosts (a few seconds) and stops them in TearDownTestSuite; local_nodes.sh also
// watches this process (CM_NODES_OWNER) and tears everything down if it dies first. Skipped when not root
// or when a tool is missing.
#include <gtest/gtest.h>
#include <fmt/format.h>
#include <torch/torch.h>
#include <fcntl.h>
#include <sys/file.h>
#include <unistd.h>

#include <chrono>
#include <csignal>
#include <filesystem>
#include <fstream>
#include <regex>
#include <set>
#include <sstream>
#include <thread>
#include "support/datasets_fixtures.h"
#include "support/files.h"
#include "support/paths.h"
#include "support/runs.h"

namespace fs = std::filesystem;
using cm::test::run_command;
using namespace std::chrono_literals;

namespace {

using cm::test::count_of;
using cm::test::read_text;

double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

// The weights of a finished run (model and every EMA) equal the reference run's within the equivalence
// tolerance of tests/test_distributed_train.cpp (float32 sums in another order: tight, not bitwise).
void expect_same_weights(const std::string& ref, const std::string& run, const std::string& what) {
  int files = 0;
  for (auto& e : fs::directory_iterator(ref)) {
    const std::string name = e.path().filename().string();
    if (e.path().extension() != ".safetensors") continue;
    ASSERT_TRUE(fs::exists(run + "/" + name)) << what << ": no " << name << " in " << run;
    EXPECT_LT(cm::test::max_tensor_diff(e.path().string(), run + "/" + name), 2e-5) << what << ": " << name;
    ++files;
  }
  EXPECT_GE(files, 2) << what << ": model and EMA weights expected in " << ref;
}

// Every rank's layout line, as World::init prints it: ranks 0,1 on cmnode1 and 2,3 on cmnode2, node-local
// ranks 0,1 on each, CPU here and cuda:<local rank> on a GPU node.
void expect_layout(const std::string& log, const std::string& what, size_t from = 0) {
  EXPECT_NE(log.find("world: 4 ranks on 2 node(s):", from), std::string::npos) << what << "\n" << log;
  for (int r = 0; r < 4; ++r) {
    const std::string line =
        fmt::format("rank {}/4 host cmnode{} local {}/2 device cpu (on a GPU node: cuda:{})", r, r / 2 + 1, r % 2, r % 2);
    EXPECT_NE(log.find(line, from), std::string::npos) << what << ": no '" << line << "' in\n" << log.substr(from);
  }
}

// Newest committed checkpoint of a run directory (step_NNNNNNNN with its COMMIT marker), -1 when none.
int64_t newest_checkpoint(const std::string& run) {
  int64_t best = -1;
  std::error_code ec;
  for (auto& e : fs::directory_iterator(run + "/checkpoints", ec)) {
    const std::string name = e.path().filename().string();
    if (name.size() == 13 && name.rfind("step_", 0) == 0 && fs::exists(e.path() / "COMMIT"))
      best = std::max<int64_t>(best, std::stoll(name.substr(5)));
  }
  return best;
}
std::set<std::string> checkpoint_dirs(const std::string& run) {
  std::set<std::string> out;
  std::error_code ec;
  for (auto& e : fs::directory_iterator(run + "/checkpoints", ec)) out.insert(e.path().filename().string());
  return out;
}

const char* kToy = "toy_ct train.steps=40 train.batch=96 train.log_every=20 sample.eval_count=300 sample.count=300 train.threads=1";

class Multinode : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    if (geteuid() != 0) {
      skip_ = "the local hosts need root (network namespaces, sshd, slurmd); not running as root";
      return;
    }
    for (const char* tool : {"ip", "nsenter", "unshare", "sshd", "ssh", "munged", "slurmctld", "slurmd", "sbatch"})
      if (run_command(fmt::format("command -v {} >/dev/null", tool), nullptr) != 0) {
        skip_ = fmt::format("'{}' not found (launch/setup.sh installs openssh-server, slurm-wlm, munge)", tool);
        return;
      }
    // One set of local hosts at a time on this machine (they use fixed names, addresses and a bridge): wait
    // for another test program's to go. The lock goes with this process, also when it is killed.
    lock_fd_ = open("/run/lock/cm-local-nodes.lock", O_CREAT | O_RDWR | O_CLOEXEC, 0644);
    const auto waited = std::chrono::steady_clock::now();
    bool locked = false;
    while (lock_fd_ >= 0 && !(locked = flock(lock_fd_, LOCK_EX | LOCK_NB) == 0) && seconds_since(waited) < 900)
      std::this_thread::sleep_for(500ms);
    if (!locked) {
      start_log_ = "another test's local hosts held /run/lock/cm-local-nodes.lock for 15 minutes";
      return;
    }
    if (seconds_since(waited) > 1) std::printf("[ hosts    ] waited %.0f s for another test's hosts\n", seconds_since(waited));
    // Under /var/tmp, not /tmp: every host has a node-local /tmp, and this directory is the shared one.
    char tmpl[] = "/var/tmp/cm-multinode-XXXXXX";
    if (!mkdtemp(tmpl)) {
      start_log_ = "mkdtemp failed";
      return;
    }
    dir_ = tmpl;
    const auto t0 = std::chrono::steady_clock::now();
    const int rc = run_command(fmt::format("CM_NODES_OWNER={} {}/launch/slurm/local_nodes.sh start {}/nodes 2", getpid(),
                                           cm::test::source_dir(), dir_),
                               &start_log_);
    up_ = rc == 0;
    std::printf("[ hosts    ] up in %.1f s: %s", seconds_since(t0), start_log_.c_str());
    std::ofstream(dir_ + "/hostfile") << "cmnode1 slots=2\ncmnode2 slots=2\n";
    cm::test::write_grey_dataset(dir_ + "/data", 48);
  }

  static void TearDownTestSuite() {
    if (dir_.empty()) return;
    std::string out;
    run_command(fmt::format("{2}{1}/launch/slurm/local_nodes.sh stop {0}/nodes", dir_, cm::test::source_dir(),
                            up_ ? fmt::format("SLURM_CONF={}/nodes/slurm.conf timeout 20 scancel --full --quiet -u root; ", dir_) : ""),
                &out);
    // Nothing of the hosts may remain: no namespace, no bridge, no process that names this directory.
    std::string left;
    run_command(fmt::format("ip netns list | grep -E '^cmnode[0-9]'; ip -o link show | grep -E ': (cmbr0|cmv[0-9]+)[:@]'; "
                            "pgrep -af '[{}]{}'",
                            dir_.substr(0, 1), dir_.substr(1)),
                &left);
    if (!left.empty()) ADD_FAILURE() << "left behind after stopping the hosts:\n" << left << "\nstop said:\n" << out;
    if (!::testing::UnitTest::GetInstance()->failed_test_count() && left.empty()) fs::remove_all(dir_);
    else std::printf("[ hosts    ] kept %s for inspection\n", dir_.c_str());
    dir_.clear();
    if (lock_fd_ >= 0) close(lock_fd_);  // releases the lock
    lock_fd_ = -1;
  }

  void SetUp() override {
    if (!skip_.empty()) GTEST_SKIP() << skip_;
    ASSERT_TRUE(up_) << "the local hosts did not start:\n" << start_log_;
  }

  // The environment of every launch here: the built cm, the test cluster, Open MPI on the hosts' bridge
  // (TCP between hosts, shared memory within one; ranks yield when idle, since 4 ranks share 2 cores).
  static std::string env() {
    return fmt::format(
        "export SLURM_CONF={0}/nodes/slurm.conf CM_BIN={1} OMP_NUM_THREADS=1 OMPI_MCA_btl=self,vader,tcp "
        "OMPI_MCA_btl_tcp_if_include=10.213.7.0/24 OMPI_MCA_oob_tcp_if_include=10.213.7.0/24 OMPI_MCA_mpi_yield_when_idle=1 "
        "OMPI_MCA_btl_vader_single_copy_mechanism=none OMPI_MCA_plm_rsh_agent='ssh -F {0}/nodes/ssh_config'",
        dir_, cm::test::cm_binary());
  }
  // A shell command on this machine (where the test runs: sbatch, scontrol, one-host runs).
  static int local(const std::string& cmd, std::string* out) {
    return run_command(fmt::format("cd {} && {} && {} 2>&1", cm::test::source_dir(), env(), cmd), out);
  }
  // A shell command on host cmnode1, over ssh (as a user logs in to the first node and runs mpirun there).
  static int on_node1(const std::string& cmd, std::string* out) {
    static int n = 0;
    const std::string script = fmt::format("{}/node1_cmd{}.sh", dir_, n++);
    std::ofstream(script) << "cd " << cm::test::source_dir() << " && " << env() << " && " << cmd << " 2>&1\n";
    return run_command(fmt::format("timeout 300 ssh -F {}/nodes/ssh_config cmnode1 bash {}", dir_, script), out);
  }
  // One-host reference: a single process with the same global batch.
  static void train_one_host(const std::string& args, const std::string& run) {
    std::string out;
    ASSERT_EQ(local(fmt::format("timeout 300 {} train {} run.dir={}", cm::test::cm_binary(), args, run), &out), 0) << out;
  }
  static std::string image_recipe() {
    return fmt::format("fmnist_ict_mlp dataset.path={}/data model.width=64 model.depth=2 train.batch=16 train.steps=12 "
                       "train.log_every=4 +method.curriculum_steps=16 train.sample_every=0 checkpoint.every=0 sample.count=4 "
                       "train.threads=1",
                       dir_);
  }

  // sbatch of the project's multi-node script on both hosts, 2 tasks per node, CPU only. Returns the job id.
  static std::string submit(const std::string& name, const std::string& cm_args) {
    std::string out;
    const int rc = local(fmt::format("sbatch --parsable --job-name={0} --nodes=2 --ntasks-per-node=2 --gpus-per-node=0 "
                                     "--cpus-per-task=1 --output={1}/{0}.out launch/slurm/cm_nodes.sbatch {2}",
                                     name, dir_, cm_args),
                         &out);
    EXPECT_EQ(rc, 0) << out;
    return rc == 0 ? out.substr(0, out.find_first_of(";\n")) : std::string();
  }
  static std::string job_state(const std::string& job) {
    std::string out;
    local("scontrol show job -o " + job, &out);
    std::smatch m;
    return std::regex_search(out, m, std::regex("JobState=([A-Z_]+)")) ? m[1].str() : std::string("?");
  }
  static bool finished(const std::string& state) {
    static const std::set<std::string> done = {"COMPLETED", "FAILED",   "CANCELLED",     "TIMEOUT", "NODE_FAIL",
                                               "BOOT_FAIL", "DEADLINE", "OUT_OF_MEMORY", "PREEMPTED"};
    return done.count(state) > 0;
  }
  // Waits until the job has ended (polling: faster than sbatch --wait's back-off). Returns its state.
  static std::string wait_job(const std::string& job, double timeout_s) {
    const auto t0 = std::chrono::steady_clock::now();
    std::string st;
    while (seconds_since(t0) < timeout_s) {
      st = job_state(job);
      if (finished(st)) return st;
      std::this_thread::sleep_for(250ms);
    }
    return "still " + st + " after " + std::to_string(timeout_s) + " s";
  }
  template <typename F>
  static bool wait_for(F cond, double timeout_s) {
    const auto t0 = std::chrono::steady_clock::now();
    while (seconds_since(t0) < timeout_s) {
      if (cond()) return true;
      std::this_thread::sleep_for(100ms);
    }
    return cond();
  }
  // The processes called `name` running in a host's network namespace.
  static std::vector<int> pids_named(const std::string& host, const std::string& name) {
    std::string out;
    run_command("ip netns pids " + host, &out);
    std::vector<int> pids;
    std::istringstream in(out);
    for (int p; in >> p;)
      if (read_text(fmt::format("/proc/{}/comm", p)) == name + "\n") pids.push_back(p);
    return pids;
  }
  // The cm ranks running on a host (build/cm execs build/cm-main).
  static std::vector<int> cm_pids(const std::string& host) {
    auto a = pids_named(host, "cm-main"), b = pids_named(host, "cm");
    a.insert(a.end(), b.begin(), b.end());
    return a;
  }

  static inline std::string dir_, start_log_, skip_;
  static inline bool up_ = false;
  static inline int lock_fd_ = -1;
};

}  // namespace

// mpirun over ssh: the user is on cmnode1 and starts 4 ranks with a hostfile of both hosts (2 slots each).
TEST_F(Multinode, MpirunOverSshOnTwoHostsMatchesOneHost) {
  std::string out;
  // The dry run a user does first: where each rank runs and which device it takes, in a second.
  ASSERT_EQ(on_node1(fmt::format("launch/cm-mpirun --hostfile {}/hostfile plan {} --layout --quiet", dir_, kToy), &out), 0) << out;
  expect_layout(out, "cm plan --layout under mpirun");
  EXPECT_NE(out.find("2 node(s) x 2 CPU rank(s) = 4 ranks (this job's"), std::string::npos) << out;
  EXPECT_NE(out.find("per rank 24"), std::string::npos) << out;

  struct Case { std::string name, args; };
  for (const Case& c : {Case{"toy", kToy}, Case{"image", image_recipe()}}) {
    const std::string ref = fmt::format("{}/mpirun_{}_one_host", dir_, c.name), run = fmt::format("{}/mpirun_{}_2x2", dir_, c.name);
    train_one_host(c.args, ref);
    const auto t0 = std::chrono::steady_clock::now();
    ASSERT_EQ(on_node1(fmt::format("launch/cm-mpirun --hostfile {}/hostfile train {} run.dir={}", dir_, c.args, run), &out), 0) << out;
    std::printf("[ timing   ] mpirun 2 hosts x 2 ranks, %s: %.1f s\n", c.name.c_str(), seconds_since(t0));
    EXPECT_NE(out.find("4 ranks on 2 hosts"), std::string::npos) << out;
    expect_layout(out, "mpirun " + c.name);
    EXPECT_NE(out.find("identical on all 4 ranks"), std::string::npos) << out;
    expect_same_weights(ref, run, "mpirun " + c.name);
  }
}

// SLURM: sbatch --nodes=2 launch/slurm/cm_nodes.sbatch with 2 tasks per node (srun --mpi=pmix).
TEST_F(Multinode, SlurmTwoNodeJobMatchesOneHost) {
  // The dry run as a job: the same layout a training job of this allocation gets.
  const std::string plan = submit("plan", fmt::format("plan {} --layout --quiet", kToy));
  ASSERT_FALSE(plan.empty());
  EXPECT_EQ(wait_job(plan, 120), "COMPLETED") << read_text(dir_ + "/plan.out");
  const std::string plan_log = read_text(dir_ + "/plan.out");
  expect_layout(plan_log, "cm plan --layout under sbatch");
  EXPECT_NE(plan_log.find("4 tasks on 2 node(s) cmnode[1-2]"), std::string::npos) << plan_log;

  struct Case { std::string name, args; };
  for (const Case& c : {Case{"toy", kToy}, Case{"image", image_recipe()}}) {
    const std::string ref = fmt::format("{}/slurm_{}_one_host", dir_, c.name), run = fmt::format("{}/slurm_{}_2x2", dir_, c.name);
    train_one_host(c.args, ref);
    const auto t0 = std::chrono::steady_clock::now();
    const std::string job = submit("train_" + c.name, fmt::format("train {} run.dir={}", c.args, run));
    ASSERT_FALSE(job.empty());
    const std::string state = wait_job(job, 240);
    std::printf("[ timing   ] sbatch --nodes=2, 2 tasks per node, %s: %.1f s\n", c.name.c_str(), seconds_since(t0));
    const std::string log = read_text(fmt::format("{}/train_{}.out", dir_, c.name));
    ASSERT_EQ(state, "COMPLETED") << log;
    EXPECT_NE(log.find("4 tasks on 2 node(s) cmnode[1-2]"), std::string::npos) << log;
    expect_layout(log, "sbatch " + c.name);
    EXPECT_NE(log.find("identical on all 4 ranks"), std::string::npos) << log;
    expect_same_weights(ref, run, "sbatch " + c.name);
  }
}

// Preemption of a two-node job: SIGUSR1 to every task on both nodes (what --signal=USR1@T sends before the
// time limit) makes every rank stop after the same step; one checkpoint is committed on the shared run
// directory, job.sh requeues the job, and the requeued job resumes from it on both nodes and finishes.
TEST_F(Multinode, PreemptedTwoNodeJobCheckpointsOnceAndResumesOnBothNodes) {
  const std::string run = dir_ + "/run_preempt";
  // checkpoint.every larger than the run: the only checkpoints are the preemption's and the final one.
  const std::string job = submit("preempt", fmt::format("train toy_ct train.steps=400 train.log_every=10 train.threads=1 "
                                                        "sample.count=200 sample.eval_count=500 checkpoint.every=100000 run.dir={}",
                                                        run));
  ASSERT_FALSE(job.empty());
  const bool training = wait_for([&] { return read_text(run + "/metrics.jsonl").find("\"step\": 40") != std::string::npos; }, 120);
  ASSERT_TRUE(training) << "the job did not start training:\n" << read_text(dir_ + "/preempt.out");
  std::string out;
  ASSERT_EQ(local("scancel --signal=USR1 " + job, &out), 0) << out;
  const auto t0 = std::chrono::steady_clock::now();
  // SLURM holds a requeued job for about 2 minutes (Reason=BeginTime). Here it starts again as soon as the
  // first run's step daemons are gone on both nodes (the requeued job reuses the step ids, and with them the
  // PMIx socket names) and a second has passed (slurmd refuses credentials as old as the revoked ones).
  const bool requeued = wait_for([&] {
    return read_text(dir_ + "/preempt.out").find("requeueing job " + job) != std::string::npos && job_state(job) == "PENDING" &&
           pids_named("cmnode1", "slurmstepd").empty() && pids_named("cmnode2", "slurmstepd").empty();
  }, 120);
  EXPECT_TRUE(requeued) << read_text(dir_ + "/preempt.out");
  if (requeued) local("sleep 1 && scontrol update JobId=" + job + " StartTime=now", &out);
  const bool done = wait_for([&] { return fs::exists(run + "/final.json"); }, 240);
  const std::string state = wait_job(job, 60);
  std::printf("[ timing   ] preempted at step >= 40, requeued, finished 400 steps: %.1f s after the signal\n", seconds_since(t0));
  const std::string log = read_text(dir_ + "/preempt.out");
  ASSERT_TRUE(done) << log;
  EXPECT_EQ(state, "COMPLETED") << log;
  // Every rank stopped after the same step K and exactly one checkpoint (step K) was committed for it.
  EXPECT_EQ(count_of(log, "exiting with code 75"), 1) << log;
  const auto stop = log.find("stopping after step ");
  ASSERT_NE(stop, std::string::npos) << log;
  const int64_t k = std::stoll(log.substr(stop + 20));
  EXPECT_GE(k, 40);
  EXPECT_LT(k, 400);
  EXPECT_EQ(checkpoint_dirs(run), (std::set<std::string>{fmt::format("step_{:08d}", k), "step_00000400"})) << log;
  EXPECT_EQ(count_of(log, fmt::format("step_{:08d}: ", k)), 1) << "the preemption checkpoint should be written once:\n" << log;
  // Requeued by job.sh, restarted on both nodes, resumed from step K, finished.
  EXPECT_NE(log.find("requeueing job " + job), std::string::npos) << log;
  const auto restart = log.find("(restart 1): 4 tasks on 2 node(s) cmnode[1-2]");
  ASSERT_NE(restart, std::string::npos) << log;
  expect_layout(log, "the requeued job", restart);
  EXPECT_NE(log.find(fmt::format("(step {},", k), restart), std::string::npos) << "no 'resuming from ... (step " << k << "' in:\n" << log;
  EXPECT_NE(log.find("step     400/400", restart), std::string::npos) << log;
  EXPECT_NE(log.find("identical on all 4 ranks", restart), std::string::npos) << log;
}

// A node lost mid-run: the cm processes of cmnode2 are killed. The job ends on cmnode1 within the watchdog
// time with a message naming the host and its ranks; resubmitted, it resumes from the last committed
// checkpoint and finishes.
TEST_F(Multinode, LostNodeEndsTheJobAndTheResubmittedJobResumes) {
  const std::string run = dir_ + "/run_lost";
  const double watchdog_s = 30;
  const std::string args = fmt::format("train toy_ct train.steps=300 train.log_every=10 train.threads=1 sample.count=200 "
                                       "sample.eval_count=500 checkpoint.every=20 train.watchdog_s={} run.dir={}",
                                       watchdog_s, run);
  const std::string job = submit("lost", args);
  ASSERT_FALSE(job.empty());
  ASSERT_TRUE(wait_for([&] { return newest_checkpoint(run) >= 40; }, 120)) << read_text(dir_ + "/lost.out");
  std::vector<int> victims = cm_pids("cmnode2");
  ASSERT_EQ(victims.size(), 2u) << "expected 2 cm ranks on cmnode2";
  const auto t0 = std::chrono::steady_clock::now();
  for (int p : victims) kill(p, SIGKILL);
  const std::string state = wait_job(job, 2 * watchdog_s);
  const double ended_after = seconds_since(t0);
  std::printf("[ timing   ] node lost: the job ended %.1f s after cmnode2's ranks were killed (%s)\n", ended_after, state.c_str());
  const std::string log = read_text(dir_ + "/lost.out");
  EXPECT_TRUE(finished(state)) << state << "\n" << log;
  EXPECT_NE(state, "COMPLETED") << log;
  EXPECT_LT(ended_after, watchdog_s) << log;
  EXPECT_TRUE(cm_pids("cmnode1").empty() && cm_pids("cmnode2").empty()) << "cm ranks left running:\n" << log;
  // srun names the lost host and its tasks (= global ranks 2 and 3).
  EXPECT_NE(log.find("cmnode2: tasks 2-3"), std::string::npos) << log;
  EXPECT_EQ(log.find("requeueing job"), std::string::npos) << "a lost node is not a preemption:\n" << log;
  EXPECT_FALSE(fs::exists(run + "/final.json"));

  // Resubmitted: resumes from the newest committed checkpoint on both nodes and finishes.
  const int64_t last = newest_checkpoint(run);
  ASSERT_GE(last, 40);
  const std::string again = submit("lost_again", args);
  ASSERT_FALSE(again.empty());
  EXPECT_EQ(wait_job(again, 240), "COMPLETED") << read_text(dir_ + "/lost_again.out");
  const std::string log2 = read_text(dir_ + "/lost_again.out");
  expect_layout(log2, "the resubmitted job");
  EXPECT_NE(log2.find(fmt::format("step_{:08d} (step {},", last, last)), std::string::npos)
      << "no 'resuming from .../step_" << last << " (step " << last << "' in:\n" << log2;
  EXPECT_NE(log2.find("step     300/300"), std::string::npos) << log2;
  EXPECT_TRUE(fs::exists(run + "/final.json")) << log2;
}
