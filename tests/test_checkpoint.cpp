// Checkpoints: the commit protocol (a write killed at any point never leaves a checkpoint that loads,
// a corrupt or truncated one is refused, a full disk leaves the committed ones intact), exact resume
// (a run stopped after k steps and resumed for k more ends bitwise equal to an uninterrupted 2k-step run:
// student, target, EMAs and optimizer state, with dropout, the CT curriculum and the HDF5 loader's cursor
// in play, on 1 and 2 ranks), preemption by SIGUSR1 (checkpoint, exit code 75, resume), retention,
// config checks on resume and `cm export`.
#include <gtest/gtest.h>
#include <signal.h>
#include <torch/torch.h>

#include <filesystem>
#include <fstream>
#include "core/io/checkpoint_dir.h"
#include "core/io/safetensors.h"
#include "datasets/shards.h"
#include "distributed/preemption.h"
#include "recipes/checkpoint.h"
#include "support/cm_run.h"
#include "support/files.h"
#include "support/mpi_launch.h"
#include "support/paths.h"
#include "support/runs.h"

using namespace cm;
namespace fs = std::filesystem;

namespace {

// Small CT runs: dropout on (so the student/target mask sharing is in play), the curriculum pinned to 40
// steps so that train.steps may differ between the parts of a run.
const char* kToy =
    "toy_ct train.batch=64 train.log_every=10 train.threads=1 sample.eval_count=200 sample.count=200 model.width=32 "
    "model.dropout=0.1 +method.curriculum_steps=40";

using test::contains;
using test::expect_same_state;
using test::expect_same_tensors;
using test::Run;
using test::run_cm;

Run train(const std::string& dir, const std::string& extra, const std::string& launcher = "", const char* base = kToy) {
  return run_cm(fmt::format("train {} run.dir={} {}", base, dir, extra), launcher);
}

// RUN/checkpoints/step_NNNNNNNN, for short.
std::string ckpt(const std::string& run_dir, int64_t step) { return test::checkpoint_path(run_dir, step); }

NamedTensors some_tensors(float v) {
  return {{"a", torch::full({3, 5}, v)}, {"b", torch::arange(100, torch::kInt64)}, {"c", torch::randn({1000})}};
}

}  // namespace

class Checkpoint : public ::testing::Test {
 protected:
  void SetUp() override { dir_ = test::make_temp_dir("ckpt"); }
  void TearDown() override {
    if (!HasFailure()) fs::remove_all(dir_);
  }
  std::string dir_;
};

// ---------------------------------------------------------------------------------------------------
// The commit protocol, in process.

TEST_F(Checkpoint, CommitVerifiesAndCorruptionIsRefused) {
  const std::string parent = dir_ + "/checkpoints";
  fs::create_directories(parent);
  const NamedTensors ts = some_tensors(1.5f);
  auto res = commit_checkpoint(parent, 7, {PendingFile::of_tensors("w.safetensors", ts, {{"k", "v"}}),
                                           PendingFile::of_text("state.json", "{\"step\": 7}\n")});
  EXPECT_EQ(res.path, parent + "/step_00000007");
  auto info = verify_checkpoint(res.path);
  EXPECT_EQ(info.step, 7);
  ASSERT_EQ(info.files.size(), 2u);
  // The streamed file is exactly what save_safetensors would write.
  EXPECT_EQ(read_checkpoint_file(info, "w.safetensors"), safetensors_bytes(ts, {{"k", "v"}}));
  auto back = parse_safetensors(read_checkpoint_file(info, "w.safetensors"), "w");
  EXPECT_TRUE(torch::equal(back.find("a")->clone(), torch::full({3, 5}, 1.5f)));
  EXPECT_EQ(back.metadata.at("k"), "v");
  // Only step_<digits> directories are listed; temporaries and set-aside ones are not.
  fs::create_directories(parent + "/.tmp-step_00000009-1-0");
  fs::create_directories(parent + "/step_00000003.skipped");
  auto listed = list_checkpoint_dirs(parent);
  ASSERT_EQ(listed.size(), 1u);
  EXPECT_EQ(listed[0].first, 7);
  EXPECT_EQ(remove_stale_temporaries(parent), std::vector<std::string>{".tmp-step_00000009-1-0"});
  // A committed directory is never overwritten.
  EXPECT_THROW(commit_checkpoint(parent, 7, {PendingFile::of_text("x", "y")}), std::runtime_error);

  // Bit flip -> CRC32 mismatch; truncation -> size mismatch; no marker -> incomplete.
  const std::string c1 = commit_checkpoint(parent, 8, {PendingFile::of_tensors("w.safetensors", some_tensors(2.f))}).path;
  test::flip_byte(c1 + "/w.safetensors", -10, std::ios::end);
  try {
    verify_checkpoint(c1);
    ADD_FAILURE() << "a bit flip was not detected";
  } catch (const std::runtime_error& e) {
    EXPECT_TRUE(contains(e.what(), "CRC32") && contains(e.what(), "step_00000008")) << e.what();
  }
  const std::string c2 = commit_checkpoint(parent, 9, {PendingFile::of_tensors("w.safetensors", some_tensors(2.f))}).path;
  fs::resize_file(c2 + "/w.safetensors", fs::file_size(c2 + "/w.safetensors") - 100);
  try {
    verify_checkpoint(c2);
    ADD_FAILURE() << "truncation was not detected";
  } catch (const std::runtime_error& e) {
    EXPECT_TRUE(contains(e.what(), "truncated")) << e.what();
  }
  const std::string c3 = commit_checkpoint(parent, 10, {PendingFile::of_text("a.txt", "hello")}).path;
  fs::remove(c3 + "/COMMIT");
  try {
    verify_checkpoint(c3);
    ADD_FAILURE() << "a directory without marker was accepted";
  } catch (const std::runtime_error& e) {
    EXPECT_TRUE(contains(e.what(), "no COMMIT marker")) << e.what();
  }
  // The newest that verifies is 7; the three broken ones are named.
  std::vector<std::string> skipped;
  auto newest = newest_valid_checkpoint(parent, &skipped);
  ASSERT_TRUE(newest.has_value());
  EXPECT_EQ(newest->step, 7);
  EXPECT_EQ(skipped.size(), 3u);
  remove_checkpoint(c1);
  EXPECT_FALSE(fs::exists(c1));
}

TEST_F(Checkpoint, DiskFullLeavesNothingBehind) {
  const std::string parent = dir_ + "/checkpoints";
  fs::create_directories(parent);
  commit_checkpoint(parent, 1, {PendingFile::of_tensors("w.safetensors", some_tensors(1.f))});
  CommitFaults f;
  f.fail_after_bytes = 2000;
  try {
    commit_checkpoint(parent, 2, {PendingFile::of_tensors("w.safetensors", some_tensors(2.f)), PendingFile::of_text("b", "x")}, f);
    ADD_FAILURE() << "the injected ENOSPC did not fail the commit";
  } catch (const std::runtime_error& e) {
    EXPECT_TRUE(contains(e.what(), "No space left on device") && contains(e.what(), "disk is full")) << e.what();
  }
  std::vector<std::string> entries;
  for (auto& e : fs::directory_iterator(parent)) entries.push_back(e.path().filename().string());
  EXPECT_EQ(entries, std::vector<std::string>{"step_00000001"});
  EXPECT_NO_THROW(verify_checkpoint(parent + "/step_00000001"));
}

// ---------------------------------------------------------------------------------------------------
// Whole runs.

TEST_F(Checkpoint, ExactResumeIsBitwise) {
  const std::string full = dir_ + "/full", part = dir_ + "/part";
  auto a = train(full, "train.steps=40 checkpoint.every=20");
  ASSERT_EQ(a.rc, 0) << a.out;
  EXPECT_EQ(test::checkpoint_steps(full), (std::vector<int64_t>{20, 40}));
  auto b1 = train(part, "train.steps=20 checkpoint.every=20");
  ASSERT_EQ(b1.rc, 0) << b1.out;
  auto b2 = train(part, "train.steps=40 checkpoint.every=20");  // the same command with more steps: resume=auto
  ASSERT_EQ(b2.rc, 0) << b2.out;
  EXPECT_TRUE(contains(b2.out, "resuming from " + ckpt(part, 20))) << b2.out;
  expect_same_state(ckpt(full, 20), ckpt(part, 20));
  expect_same_state(ckpt(full, 40), ckpt(part, 40));
  expect_same_tensors(full + "/model.safetensors", part + "/model.safetensors");
  expect_same_tensors(full + "/ema_0.995.safetensors", part + "/ema_0.995.safetensors");
  // The resumed run's metrics continue those of the first part: one line per 10 steps, no repeats.
  std::ifstream m(part + "/metrics.jsonl");
  std::string line, steps;
  while (std::getline(m, line)) steps += line.substr(0, line.find(',')) + " ";
  EXPECT_EQ(steps, "{\"step\": 10 {\"step\": 20 {\"step\": 30 {\"step\": 40 ");
  // A finished run restarted with the same command has nothing left to do and changes nothing.
  auto b3 = train(part, "train.steps=40 checkpoint.every=20");
  ASSERT_EQ(b3.rc, 0) << b3.out;
  EXPECT_TRUE(contains(b3.out, "resuming from " + ckpt(part, 40))) << b3.out;
  expect_same_tensors(full + "/model.safetensors", part + "/model.safetensors");
  // Synchronous writes give the same checkpoints.
  const std::string sync = dir_ + "/sync";
  auto c = train(sync, "train.steps=40 checkpoint.every=20 checkpoint.async=false");
  ASSERT_EQ(c.rc, 0) << c.out;
  expect_same_state(ckpt(full, 40), ckpt(sync, 40));
}

TEST_F(Checkpoint, ExactResumeWithTheHdf5LoaderCursor) {
  // 100 self-describing 4x4x3 images in 3 shards; global batch 16 = 6 batches per epoch, so 40 steps
  // cross 6 epoch boundaries and the resume at step 20 lands in the middle of an epoch.
  const std::string data_dir = dir_ + "/data";
  fs::create_directories(data_dir);
  data::Manifest m;
  m.info.name = "tiny";
  m.info.source_format = "test";
  m.info.height = m.info.width = 4;
  m.info.channels = 3;
  m.info.num_classes = 7;
  m.info.total_records = 100;
  m.info.shard_count = 3;
  for (int64_t s = 0; s < 3; ++s) {
    data::ShardWriter w(data_dir, m.info, s);
    const auto [first, count] = data::shard_range(100, 3, s);
    for (int64_t i = first; i < first + count; ++i) {
      uint8_t img[48];
      for (int k = 0; k < 48; ++k) img[k] = static_cast<uint8_t>((i * 37 + k * 11) & 255);
      const int64_t label = i % 7;
      w.append(img, &label, 1);
    }
    m.shards.push_back(w.commit());
  }
  data::write_manifest(data_dir, m);
  // dataset/toy_ring has neither path nor random_flip: they are added.
  const std::string b = fmt::format("{} dataset.kind=hdf5 +dataset.path={} +dataset.random_flip=true train.batch=16", kToy, data_dir);
  const std::string full = dir_ + "/full", part = dir_ + "/part";
  auto a = train(full, "train.steps=40 checkpoint.every=20", "", b.c_str());
  ASSERT_EQ(a.rc, 0) << a.out;
  auto p1 = train(part, "train.steps=20 checkpoint.every=20", "", b.c_str());
  ASSERT_EQ(p1.rc, 0) << p1.out;
  auto p2 = train(part, "train.steps=40 checkpoint.every=20", "", b.c_str());
  ASSERT_EQ(p2.rc, 0) << p2.out;
  EXPECT_TRUE(contains(read_file(ckpt(part, 20) + "/state.json"), "\"batch_in_epoch\": 2")) << read_file(ckpt(part, 20) + "/state.json");
  expect_same_state(ckpt(full, 40), ckpt(part, 40));
}

TEST_F(Checkpoint, ExactResumeUnderMpirunAndOnAnotherWorldSize) {
  const std::string full = dir_ + "/full2", part = dir_ + "/part2";
  auto a = train(full, "train.steps=40 checkpoint.every=20", test::mpirun_prefix(2));
  ASSERT_EQ(a.rc, 0) << a.out;
  auto p1 = train(part, "train.steps=20 checkpoint.every=20", test::mpirun_prefix(2));
  ASSERT_EQ(p1.rc, 0) << p1.out;
  auto p2 = train(part, "train.steps=40 checkpoint.every=20", test::mpirun_prefix(2));
  ASSERT_EQ(p2.rc, 0) << p2.out;
  EXPECT_TRUE(contains(p2.out, "identical on all 2 ranks")) << p2.out;
  expect_same_state(ckpt(full, 40), ckpt(part, 40));
  // A 2-rank checkpoint continued on 1 rank: allowed (same global batch) and said; per-rank dropout
  // is re-derived, so it is a different (valid) continuation, close to the 2-rank one but not bitwise.
  const std::string one = dir_ + "/one";
  fs::create_directories(one + "/checkpoints");
  fs::copy(ckpt(part, 20), ckpt(one, 20), fs::copy_options::recursive);
  auto w1 = train(one, "train.steps=40 checkpoint.every=20");
  ASSERT_EQ(w1.rc, 0) << w1.out;
  EXPECT_TRUE(contains(w1.out, "written by 2 rank(s), this run has 1; the global batch (64) is unchanged")) << w1.out;
}

TEST_F(Checkpoint, KilledDuringAWriteResumesFromThePreviousCheckpoint) {
  const std::string ref = dir_ + "/ref";
  ASSERT_EQ(train(ref, "train.steps=30 checkpoint.every=10").rc, 0);
  for (const std::string phase : {"mid_file", "before_marker", "after_marker", "after_rename"}) {
    SCOPED_TRACE(phase);
    const std::string d = dir_ + "/" + phase;
    auto k = train(d, "train.steps=30 checkpoint.every=10 +debug.ckpt_fault_step=20 +debug.ckpt_crash_at=" + phase);
    EXPECT_EQ(k.rc, 128 + SIGKILL) << k.out;
    EXPECT_TRUE(contains(k.out, "killing this process with SIGKILL")) << k.out;
    const bool committed = phase == "after_rename";  // the rename is the commit
    const std::vector<int64_t> expected = committed ? std::vector<int64_t>{10, 20} : std::vector<int64_t>{10};
    EXPECT_EQ(test::checkpoint_steps(d), expected) << k.out;
    std::vector<std::string> skipped;
    auto newest = newest_valid_checkpoint(d + "/checkpoints", &skipped);
    ASSERT_TRUE(newest.has_value());
    EXPECT_EQ(newest->step, committed ? 20 : 10);
    EXPECT_TRUE(skipped.empty());
    // Whatever the write left behind never loads: an explicit resume from the temporary is refused.
    for (auto& e : fs::directory_iterator(d + "/checkpoints")) {
      const std::string name = e.path().filename().string();
      if (name.rfind(".tmp-", 0) != 0) continue;
      auto bad = train(d + "/other", "train.steps=30 resume=" + e.path().string());
      EXPECT_NE(bad.rc, 0) << bad.out;
      EXPECT_TRUE(contains(bad.out, "is the temporary directory of a checkpoint write that did not complete")) << bad.out;
    }
    // The same command again: resumes from the last committed checkpoint and ends where the reference does.
    auto r = train(d, "train.steps=30 checkpoint.every=10");
    ASSERT_EQ(r.rc, 0) << r.out;
    EXPECT_TRUE(contains(r.out, "resuming from " + ckpt(d, committed ? 20 : 10))) << r.out;
    if (!committed) EXPECT_TRUE(contains(r.out, "left by a checkpoint write that was interrupted")) << r.out;
    expect_same_state(ckpt(ref, 30), ckpt(d, 30));
  }
}

TEST_F(Checkpoint, CorruptNewestIsSkippedWithAMessage) {
  const std::string ref = dir_ + "/ref", d = dir_ + "/d";
  ASSERT_EQ(train(ref, "train.steps=40 checkpoint.every=10").rc, 0);
  ASSERT_EQ(train(d, "train.steps=30 checkpoint.every=10").rc, 0);
  EXPECT_EQ(test::checkpoint_steps(d), (std::vector<int64_t>{10, 20, 30}));
  test::flip_byte(ckpt(d, 30) + "/optimizer.safetensors", -123, std::ios::end);
  fs::resize_file(ckpt(d, 20) + "/model.safetensors", 1000);  // and the one before is truncated
  auto r = train(d, "train.steps=40 checkpoint.every=10");
  ASSERT_EQ(r.rc, 0) << r.out;
  EXPECT_TRUE(contains(r.out, "warning: skipping a checkpoint that does not verify: checkpoint '" + ckpt(d, 30) +
                                  "': optimizer.safetensors has CRC32"))
      << r.out;
  EXPECT_TRUE(contains(r.out, "checkpoint '" + ckpt(d, 20) + "': model.safetensors has 1000 bytes")) << r.out;
  EXPECT_TRUE(contains(r.out, "resuming from " + ckpt(d, 10))) << r.out;
  EXPECT_TRUE(fs::exists(ckpt(d, 30) + ".skipped")) << "the corrupt checkpoint is kept aside, not deleted";
  expect_same_state(ckpt(ref, 40), ckpt(d, 40));
}

TEST_F(Checkpoint, Sigusr1WritesACheckpointExitsWith75AndResumes) {
  // A real signal from outside, at an arbitrary moment of a long run.
  const std::string d = dir_ + "/sig";
  const std::string cmd = fmt::format("OMP_NUM_THREADS=1 {} train {} train.steps=1000000 checkpoint.every=0 run.dir={} "
                                      "+method.curriculum_steps=40 > {}/log 2>&1 & pid=$!; "
                                      "for i in $(seq 600); do [ -s {}/metrics.jsonl ] && break; sleep 0.1; done; "
                                      "kill -USR1 $pid; wait $pid; echo rc=$?",
                                      test::cm_binary(), std::string(kToy).substr(0, std::string(kToy).find(" +method")), d, dir_, d);
  std::string out;
  test::run_command(cmd, &out);
  const std::string log = read_file(dir_ + "/log");
  EXPECT_TRUE(contains(out, fmt::format("rc={}", kExitPreempted))) << out << log;
  EXPECT_TRUE(contains(log, "on SIGUSR1")) << log;
  auto steps = test::checkpoint_steps(d);
  ASSERT_EQ(steps.size(), 1u) << log;
  const int64_t p = steps[0];
  EXPECT_GE(p, 10);
  EXPECT_TRUE(contains(log, fmt::format("stopping after step {} on SIGUSR1: checkpoint {} is committed; exiting with code 75", p,
                                        ckpt(d, p))))
      << log;
  // Resume (with fewer total steps, curriculum pinned) and compare with an uninterrupted run.
  const std::string ref = dir_ + "/ref";
  auto r = train(d, fmt::format("train.steps={} checkpoint.every=0", p + 5));
  ASSERT_EQ(r.rc, 0) << r.out;
  EXPECT_TRUE(contains(r.out, "resuming from " + ckpt(d, p))) << r.out;
  ASSERT_EQ(train(ref, fmt::format("train.steps={} checkpoint.every=0", p + 5)).rc, 0);
  expect_same_state(ckpt(ref, p + 5), ckpt(d, p + 5));
}

TEST_F(Checkpoint, PreemptionIsAgreedByAllRanksUnderMpirun) {
  // Only rank 1 gets the signal (after step 15): both ranks stop after the same step, rank 0 writes.
  const std::string d = dir_ + "/mpi", ref = dir_ + "/ref";
  auto s = train(d, "train.steps=30 checkpoint.every=0 +debug.signal_rank=1 +debug.signal_step=15", test::mpirun_prefix(2));
  EXPECT_EQ(s.rc, kExitPreempted) << s.out;
  EXPECT_TRUE(contains(s.out, "stopping after step 15 on a stop signal received by another rank")) << s.out;
  EXPECT_EQ(test::checkpoint_steps(d), std::vector<int64_t>{15});
  auto r = train(d, "train.steps=30 checkpoint.every=0", test::mpirun_prefix(2));
  ASSERT_EQ(r.rc, 0) << r.out;
  ASSERT_EQ(train(ref, "train.steps=30 checkpoint.every=0", test::mpirun_prefix(2)).rc, 0);
  expect_same_state(ckpt(ref, 30), ckpt(d, 30));
}

TEST_F(Checkpoint, DiskFullStopsTheRunAndKeepsThePreviousCheckpoints) {
  const std::string d = dir_ + "/full";
  auto r = train(d, "train.steps=30 checkpoint.every=10 +debug.ckpt_fault_step=20 +debug.ckpt_fail_after_bytes=5000");
  EXPECT_EQ(r.rc, 1) << r.out;
  EXPECT_TRUE(contains(r.out, "checkpoint step_00000020 could not be written, so training stops")) << r.out;
  EXPECT_TRUE(contains(r.out, "No space left on device")) << r.out;
  EXPECT_EQ(test::checkpoint_steps(d), std::vector<int64_t>{10});
  EXPECT_NO_THROW(verify_checkpoint(ckpt(d, 10)));
  for (auto& e : fs::directory_iterator(d + "/checkpoints")) EXPECT_EQ(e.path().filename().string(), "step_00000010");
}

TEST_F(Checkpoint, RealDiskFullOnASmallTmpfs) {
  // A 1 MB tmpfs in a private mount namespace (needs unprivileged user namespaces or root): each toy
  // checkpoint is about 0.27 MB, so the fourth one runs out of space for real.
  std::string probe;
  if (test::run_command("unshare -rm sh -c 'mount -t tmpfs -o size=1m tmpfs /mnt && echo ok'", &probe) != 0 || !contains(probe, "ok"))
    GTEST_SKIP() << "no private mount namespace here: " << probe;
  const std::string mnt = dir_ + "/mnt";
  fs::create_directories(mnt);
  const std::string script = fmt::format(
      "mount -t tmpfs -o size=1m tmpfs {0} && OMP_NUM_THREADS=1 {1} train {2} train.steps=40 checkpoint.every=5 checkpoint.keep_last=5 "
      "run.dir={0}/run; echo rc=$?; echo listing: $(ls -A {0}/run/checkpoints); {1} export {0}/run --ema 0.995 --out {0}/e.safetensors && echo export-ok",
      mnt, test::cm_binary(), kToy);
  std::string out;
  test::run_command("unshare -rm sh -c '" + script + "'", &out);
  EXPECT_TRUE(contains(out, "rc=1")) << out;
  EXPECT_TRUE(contains(out, "No space left on device") && contains(out, "could not be written, so training stops")) << out;
  // What fit is committed; the write that failed left nothing (no temporary, no partial step directory).
  const size_t at = out.find("listing: ");
  ASSERT_NE(at, std::string::npos) << out;
  const std::string listing = out.substr(at, out.find('\n', at) - at);
  EXPECT_TRUE(contains(listing, "listing: step_00000005")) << out;
  EXPECT_FALSE(contains(listing, ".tmp-") || contains(listing, "step_00000040")) << out;
  EXPECT_TRUE(contains(out, "export-ok")) << "the newest committed checkpoint must still verify and export\n" << out;
}

TEST_F(Checkpoint, RetentionKeepsTheLastKAndMilestones) {
  const std::string d = dir_ + "/keep";
  auto r = train(d, "train.steps=40 checkpoint.every=5 checkpoint.keep_last=2 checkpoint.keep_every=15");
  ASSERT_EQ(r.rc, 0) << r.out;
  EXPECT_EQ(test::checkpoint_steps(d), (std::vector<int64_t>{15, 30, 35, 40}));
}

TEST_F(Checkpoint, ResumeChecksTheConfig) {
  const std::string d = dir_ + "/cfg";
  ASSERT_EQ(train(d, "train.steps=20 checkpoint.every=10").rc, 0);
  auto lr = train(d, "train.steps=30 train.lr=3e-4 train.seed=5");
  EXPECT_EQ(lr.rc, 2) << lr.out;
  EXPECT_TRUE(contains(lr.out, "differs from the one it was trained with in keys (train.lr, train.seed)")) << lr.out;
  // train.steps moving the CT curriculum (not pinned) is refused, with the fix.
  const std::string e = dir_ + "/curr";
  const std::string unpinned = std::string(kToy).substr(0, std::string(kToy).find(" +method"));
  ASSERT_EQ(train(e, "train.steps=20", "", unpinned.c_str()).rc, 0);
  auto st = train(e, "train.steps=40", "", unpinned.c_str());
  EXPECT_EQ(st.rc, 2) << st.out;
  EXPECT_TRUE(contains(st.out, "add +method.curriculum_steps=20 to keep it")) << st.out;
  auto fixed = train(e, "train.steps=40 +method.curriculum_steps=20", "", unpinned.c_str());
  EXPECT_EQ(fixed.rc, 0) << fixed.out;
  // resume=never refuses a run directory with checkpoints; allowed keys may change.
  auto nv = train(d, "train.steps=20 resume=never");
  EXPECT_EQ(nv.rc, 2) << nv.out;
  EXPECT_TRUE(contains(nv.out, "already holds checkpoints")) << nv.out;
  auto ok = train(d, "train.steps=30 train.log_every=5 checkpoint.every=3 sample.count=100");
  EXPECT_EQ(ok.rc, 0) << ok.out;
}

TEST_F(Checkpoint, ExportWritesTheSamplingWeights) {
  const std::string d = dir_ + "/exp";
  ASSERT_EQ(train(d, "train.steps=20 checkpoint.every=10").rc, 0);
  auto e = run_cm(fmt::format("export {} --ema 0.995 --out {}/ema.safetensors", d, dir_));
  ASSERT_EQ(e.rc, 0) << e.out;
  expect_same_tensors(d + "/ema_0.995.safetensors", dir_ + "/ema.safetensors");
  EXPECT_EQ(load_safetensors(dir_ + "/ema.safetensors").metadata.at("step"), "20");
  auto s = run_cm(fmt::format("export {} --student --out {}/s.safetensors", ckpt(d, 10), dir_));
  ASSERT_EQ(s.rc, 0) << s.out;
  expect_same_tensors(ckpt(d, 10) + "/model.safetensors", dir_ + "/s.safetensors");
  auto t = run_cm(fmt::format("export {} --target --out {}/t.safetensors", d, dir_));
  ASSERT_EQ(t.rc, 0) << t.out;
  auto bad = run_cm(fmt::format("export {} --ema 0.5 --out {}/x.safetensors", d, dir_));
  EXPECT_EQ(bad.rc, 2) << bad.out;
  EXPECT_TRUE(contains(bad.out, "has no sampling EMA 0.5; it has: 0.995")) << bad.out;
  // The exported file samples like the run's own.
  auto smp = run_cm(fmt::format("sample toy_ct model.width=32 --weights {}/ema.safetensors --count 50 --out {}/smp", dir_, dir_));
  EXPECT_EQ(smp.rc, 0) << smp.out;
}
