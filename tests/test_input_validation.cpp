// Bad input refused early and clearly, and stop requests that all mean the same thing: settings that
// cannot be right stop `cm train` before its first step with one line naming the key; resume=auto over a
// run whose checkpoints all fail to verify stops instead of starting over; a weights tensor of another
// dtype is an error naming it; a dataset record damaged on disk is caught when it is read (naming shard
// and record), through the memory mapping and through HDF5; `cm eval` / `cm sample` options out of range
// and a statistics file whose sigma is no covariance are refused; SIGTERM (also twice), SIGINT and a
// signal during start-up all end in the checkpoint of the current step and exit code 75.
#include <gtest/gtest.h>
#include <signal.h>
#include <torch/torch.h>

#include <filesystem>
#include <fmt/format.h>
#include <fstream>
#include "core/io/checkpoint_dir.h"
#include "core/config.h"
#include "core/nets/mlp.h"
#include "core/io/safetensors.h"
#include "core/weights.h"
#include "datasets/inspect.h"
#include "datasets/loader.h"
#include "datasets/npz.h"
#include "recipes/eval/ref_stats.h"
#include "distributed/preemption.h"
#include "recipes/recipe.h"
#include "support/cm_run.h"
#include "support/files.h"
#include "support/paths.h"
#include "support/runs.h"

using namespace cm;
namespace fs = std::filesystem;

namespace {

const char* kToy = "toy_ct train.batch=64 train.log_every=10 train.threads=1 sample.eval_count=200 sample.count=200 model.width=32 "
                   "+method.curriculum_steps=40";

using test::contains;
using test::flip_byte;
using test::read_text;
using test::run_cm;

class Validation : public ::testing::Test {
 protected:
  void SetUp() override { dir_ = test::make_temp_dir("cm-validation"); }
  void TearDown() override { fs::remove_all(dir_); }
  std::string dir_;
};

// ------------------------------------------------------------------------------------------ settings

TEST(ValidationConfig, ImpossibleTrainSettingsFailWhenTheRecipeIsBound) {
  struct Case {
    const char* override_;
    const char* message;
  };
  const Case cases[] = {
      {"train.lr=-1", "'train.lr' = -1 must be positive"},
      {"train.lr=0", "'train.lr' = 0 must be positive"},
      {"train.lr=nan", "'train.lr' = nan must be a finite number"},
      {"train.lr=inf", "'train.lr' = inf must be a finite number"},
      {"train.lr=-inf", "'train.lr' = -inf must be a finite number"},
      {"train.threads=-1", "'train.threads' = -1 must be >= 0"},
      {"train.watchdog_s=-1", "'train.watchdog_s' = -1 must be >= 0"},
      {"train.beta1=1", "must be in [0, 1)"},
      {"train.adam_eps=0", "'train.adam_eps' = 0 must be positive"},
      {"train.sample_every=-5", "'train.sample_every' = -5 must be >= 0"},
      {"train.ema_rates=[0.9,nan]", "'train.ema_rates[1]' must be numbers"},
  };
  for (const auto& c : cases) {
    SCOPED_TRACE(c.override_);
    try {
      Recipe::load("toy_ct", {c.override_});
      ADD_FAILURE() << "accepted";
    } catch (const ConfigError& e) {
      EXPECT_TRUE(contains(e.what(), c.message)) << e.what();
    }
  }
  EXPECT_NO_THROW(Recipe::load("toy_ct", {"train.lr=2e-4", "train.threads=0", "train.watchdog_s=0"}));
}

TEST(ValidationConfig, DropoutOutsideZeroToOneIsAConfigError) {
  Recipe r = Recipe::load("toy_ct", {"model.dropout=2"});
  try {
    build_network(r, ModelShape{2, 0, 0});
    ADD_FAILURE() << "dropout 2 accepted";
  } catch (const ConfigError& e) {
    EXPECT_TRUE(contains(e.what(), "'model.dropout' = 2 must be in [0, 1)")) << e.what();
  }
  Recipe ok = Recipe::load("toy_ct", {"model.dropout=0.5"});
  EXPECT_NO_THROW(build_network(ok, ModelShape{2, 0, 0}));
}

TEST_F(Validation, TrainStopsBeforeTheFirstStepOnABadSetting) {
  for (const std::string bad : {"model.dropout=2", "train.lr=nan", "train.threads=-1"}) {
    SCOPED_TRACE(bad);
    const std::string run = dir_ + "/run";
    auto r = run_cm(fmt::format("train {} run.dir={} {}", kToy, run, bad));
    EXPECT_EQ(r.rc, 2) << r.out;
    EXPECT_TRUE(contains(r.out, "config error")) << r.out;
    EXPECT_FALSE(contains(r.out, "Exception raised from")) << "a LibTorch stack trace reached the user\n" << r.out;
    EXPECT_FALSE(fs::exists(run + "/metrics.jsonl")) << r.out;
  }
}

// ------------------------------------------------------------------------------------------- resume

TEST_F(Validation, ResumeAutoWithNoCheckpointThatVerifiesStops) {
  const std::string run = dir_ + "/run";
  ASSERT_EQ(run_cm(fmt::format("train {} run.dir={} train.steps=20 checkpoint.every=10", kToy, run)).rc, 0);
  ASSERT_EQ(test::checkpoint_steps(run), (std::vector<int64_t>{10, 20}));
  const std::string c10 = run + "/checkpoints/" + checkpoint_dir_name(10), c20 = run + "/checkpoints/" + checkpoint_dir_name(20);
  flip_byte(c10 + "/model.safetensors", 200);
  fs::resize_file(c20 + "/optimizer.safetensors", 100);
  const auto before = read_text(run + "/metrics.jsonl");
  auto r = run_cm(fmt::format("train {} run.dir={} train.steps=30 checkpoint.every=10", kToy, run));
  EXPECT_EQ(r.rc, 1) << r.out;
  EXPECT_TRUE(contains(r.out, "resume = \"auto\", but no checkpoint in " + run + "/checkpoints verifies (2 skipped")) << r.out;
  EXPECT_TRUE(contains(r.out, "checkpoint '" + c20 + "': optimizer.safetensors has 100 bytes")) << r.out;
  EXPECT_TRUE(contains(r.out, "checkpoint '" + c10 + "': model.safetensors has CRC32")) << r.out;
  EXPECT_TRUE(contains(r.out, "To start this run over, move " + run + "/checkpoints aside")) << r.out;
  // Nothing was trained or overwritten: the damaged checkpoints are still there, the metrics unchanged.
  EXPECT_EQ(test::checkpoint_steps(run), (std::vector<int64_t>{10, 20}));
  EXPECT_EQ(read_text(run + "/metrics.jsonl"), before);
  EXPECT_FALSE(contains(r.out, "step      10/30")) << r.out;
}

// ------------------------------------------------------------------------------------------ weights

TEST_F(Validation, AWeightsTensorOfAnIntegerDtypeIsRefusedByName) {
  MlpOptions o;
  o.dim = 2, o.width = 8, o.depth = 1, o.emb_dim = 8;
  auto net = std::make_shared<MlpImpl>(o);
  NamedTensors t = state_dict(*net);
  ASSERT_FALSE(t.empty());
  const std::string victim = t[0].first;
  t[0].second = torch::ones(t[0].second.sizes(), torch::kInt32);
  const std::string path = dir_ + "/i32.safetensors";
  save_safetensors(path, t, {});
  try {
    load_weights_file(*net, path);
    ADD_FAILURE() << "an I32 tensor loaded into a float parameter";
  } catch (const std::exception& e) {
    EXPECT_TRUE(contains(e.what(), path)) << e.what();
    EXPECT_TRUE(contains(e.what(), "1 of another dtype")) << e.what();
    EXPECT_TRUE(contains(e.what(), victim + ": file Int, network Float")) << e.what();
  }
  // Floating kinds convert, as documented: a half-precision export loads into the float network.
  NamedTensors h = state_dict(*net);
  for (auto& [n, v] : h) v = v.to(torch::kHalf);
  save_safetensors(dir_ + "/f16.safetensors", h, {});
  EXPECT_NO_THROW(load_weights_file(*net, dir_ + "/f16.safetensors"));
}

// ------------------------------------------------------------------------------------------ dataset

TEST_F(Validation, ADamagedRecordIsCaughtWhenReadNamingShardAndRecord) {
  const std::string d = dir_ + "/data";
  data::write_index_dataset(d, 60, 2, 8, 10);
  const std::string shard = d + "/index-00001-of-00002.h5";
  int64_t offset = 0;
  {
    data::ShardReader r(shard);
    ASSERT_EQ(r.record_checksums().size(), 30u) << "format version 2 shards carry one checksum per record";
    auto o = r.direct_offset();
    ASSERT_TRUE(o.has_value());
    offset = *o;
  }
  const int64_t record = 7, image_bytes = 8 * 8 * 3;
  flip_byte(shard, offset + record * image_bytes + 5);
  const std::string needle = fmt::format("shard '{}': record 7 (global index 37) is corrupt", shard);
  for (const std::string io : {"direct", "hdf5"}) {
    SCOPED_TRACE(io);
    data::LoaderOptions o;
    o.dir = d, o.global_batch = 60, o.seed = 1, o.random_flip = false, o.threads = 2, o.io = io;
    data::ShardedLoader loader(o);  // the header and manifest are fine: it starts
    try {
      loader.next();  // one batch of every record: the damaged one among them
      ADD_FAILURE() << "a damaged record was read without complaint";
    } catch (const std::exception& e) {
      EXPECT_TRUE(contains(e.what(), needle)) << e.what();
    }
  }
  auto v = run_cm("data verify " + d);
  EXPECT_NE(v.rc, 0) << v.out;
  EXPECT_TRUE(contains(v.out, shard + ": 1 record(s) fail their checksum (local indices 7)")) << v.out;
}

// ---------------------------------------------------------------------------------- eval and sample

TEST_F(Validation, EvalAndSampleOptionsOutOfRangeAreRefusedAtOnce) {
  data::write_npz(dir_ + "/s.npz", {{"arr_0", torch::zeros({4, 8, 8, 3}, torch::kUInt8)}});
  for (const std::string opt : {"--k 0", "--count -1", "--count 0", "--splits 0"}) {
    SCOPED_TRACE(opt);
    auto r = run_cm(fmt::format("eval {}/s.npz --inception {}/none.pt {}", dir_, dir_, opt));
    EXPECT_EQ(r.rc, 2) << r.out;
    EXPECT_TRUE(contains(r.out, opt.substr(0, opt.find(' ')))) << r.out;
  }
  auto s = run_cm(fmt::format("sample toy_ct --weights {}/none.safetensors --count 1000000000000 --out {}", dir_, dir_));
  EXPECT_EQ(s.rc, 2) << s.out;
  EXPECT_TRUE(contains(s.out, "--count 1000000000000: the set")) << s.out;
  auto z = run_cm(fmt::format("sample toy_ct --weights {}/none.safetensors --count 0 --out {}", dir_, dir_));
  EXPECT_EQ(z.rc, 2) << z.out;
}

TEST_F(Validation, StatisticsWhoseSigmaIsNoCovarianceAreRefused) {
  const int64_t d = 6;
  auto a = torch::randn({d, d}, torch::kFloat64);
  data::write_npz(dir_ + "/ok.npz", {{"mu", torch::zeros({d}, torch::kFloat64)}, {"sigma", a.matmul(a.t())}});
  EXPECT_NO_THROW(data::read_reference_stats(dir_ + "/ok.npz"));
  auto indefinite = torch::eye(d, torch::kFloat64);
  indefinite[2][2] = -3.0;
  auto asym = a.matmul(a.t());
  asym[0][1] += 1.0;
  auto nan = torch::eye(d, torch::kFloat64);
  nan[1][1] = std::nan("");
  const std::pair<torch::Tensor, std::string> cases[] = {
      {indefinite, "sigma is not positive semi-definite (smallest eigenvalue -3"},
      {asym, "sigma is not symmetric"},
      {nan, "mu or sigma holds nan or inf"}};
  for (auto& [sigma, message] : cases) {
    SCOPED_TRACE(message);
    const std::string p = dir_ + "/bad.npz";
    data::write_npz(p, {{"mu", torch::zeros({d}, torch::kFloat64)}, {"sigma", sigma}});
    try {
      data::read_reference_stats(p);
      ADD_FAILURE() << "accepted";
    } catch (const std::exception& e) {
      EXPECT_TRUE(contains(e.what(), p + ": " + message)) << e.what();
    }
  }
}

// -------------------------------------------------------------------------------------------- stops

// Starts a long toy run, sends `signals` (shell commands with $pid) once it has logged, returns the log.
struct Stopped {
  int rc = -1;
  std::string log;
};

Stopped stop_run(const std::string& dir, const std::string& run, const std::string& signals, bool wait_for_metrics = true) {
  const std::string cmd = fmt::format(
      "OMP_NUM_THREADS=1 {} train {} train.steps=1000000 checkpoint.every=0 run.dir={} > {}/log 2>&1 & pid=$!; {}"
      "{}; wait $pid; echo rc=$?",
      test::cm_binary(), kToy, run, dir,
      wait_for_metrics ? fmt::format("for i in $(seq 600); do [ -s {}/metrics.jsonl ] && break; sleep 0.1; done; ", run) : "",
      signals);
  std::string out;
  test::run_command(cmd, &out);
  Stopped s;
  const auto at = out.rfind("rc=");
  if (at != std::string::npos) s.rc = std::atoi(out.c_str() + at + 3);
  s.log = read_text(dir + "/log");
  return s;
}

TEST_F(Validation, ASecondSigtermStillEndsWithTheCheckpointAndExit75) {
  const std::string run = dir_ + "/twice";
  auto s = stop_run(dir_, run, "kill -TERM $pid; sleep 0.02; kill -TERM $pid; sleep 0.3; kill -TERM $pid");
  EXPECT_EQ(s.rc, kExitPreempted) << s.log;
  ASSERT_EQ(test::checkpoint_steps(run).size(), 1u) << s.log;
  EXPECT_TRUE(contains(s.log, fmt::format("stopping after step {} on SIGTERM", test::checkpoint_steps(run)[0]))) << s.log;
  EXPECT_NO_THROW(verify_checkpoint(run + "/checkpoints/" + checkpoint_dir_name(test::checkpoint_steps(run)[0])));
}

TEST_F(Validation, CtrlCIsACleanStopToo) {
  const std::string run = dir_ + "/int";
  auto s = stop_run(dir_, run, "kill -INT $pid");
  EXPECT_EQ(s.rc, kExitPreempted) << s.log;
  ASSERT_EQ(test::checkpoint_steps(run).size(), 1u) << s.log;
  EXPECT_TRUE(contains(s.log, fmt::format("stopping after step {} on SIGINT", test::checkpoint_steps(run)[0]))) << s.log;
  // ... and the same command continues from it.
  auto r = run_cm(fmt::format("train {} run.dir={} train.steps={} checkpoint.every=0", kToy, run, test::checkpoint_steps(run)[0] + 5));
  EXPECT_EQ(r.rc, 0) << r.out;
  EXPECT_TRUE(contains(r.out, "resuming from " + run + "/checkpoints/" + checkpoint_dir_name(test::checkpoint_steps(run)[0]))) << r.out;
}

TEST_F(Validation, ASignalDuringStartUpIsAStopRequestNotAKill) {
  for (const std::string delay : {"0.05", "0.3"}) {
    SCOPED_TRACE(delay);
    const std::string run = dir_ + "/early-" + delay;
    auto s = stop_run(dir_, run, "sleep " + delay + "; kill -TERM $pid", /*wait_for_metrics=*/false);
    EXPECT_EQ(s.rc, kExitPreempted) << s.log;
    EXPECT_TRUE(contains(s.log, "on SIGTERM")) << s.log;
  }
}

}  // namespace
