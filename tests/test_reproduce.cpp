// launch/reproduce.sh end to end at toy size: a 60-image CIFAR-10 in the published binary .tar.gz form, the
// cifar10_ct row (no teacher needed) with a tiny network and 4 training steps, 24 samples per column, the
// stand-in Inception of support/standin_inception.h. Every stage runs and hands its output to the next
// (convert -> train -> sample 1 and 2 steps -> training-set statistics -> FID -> results); a preempted
// training stage exits 75 and the rerun resumes it; a rerun of the finished command skips every stage and
// prints the same figures; a stage whose output was removed is redone alone; a CD row without its teacher and
// a dataset without --source stop before anything runs, saying how to get what is missing.
#include <gtest/gtest.h>

#include <sys/stat.h>

#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <sstream>
#include <string>
#include <vector>

#include <fmt/format.h>

#include "core/io/json.h"
#include "support/datasets_fixtures.h"
#include "support/files.h"
#include "support/paths.h"
#include "support/standin_inception.h"

namespace fs = std::filesystem;
using cm::Json;
using cm::parse_json;
using cm::test::contains;
using cm::test::count_of;
using cm::test::read_text;

namespace {

// cifar-10-binary.tar.gz as published (cifar-10-batches-bin/data_batch_1..5.bin, test_batch.bin, batches.meta.txt;
// records of 1 label byte + 3072 bytes of R, G, B planes), 12 training images per batch.
const char* kTinyCifar = R"PY(
import numpy as np, os, tarfile
rng = np.random.default_rng(7)
os.makedirs("cifar-10-batches-bin")
def batch(name, n):
    lab = rng.integers(0, 10, n, dtype=np.uint8)
    px = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
    np.concatenate([lab[:, None], px], axis=1).tofile("cifar-10-batches-bin/" + name)
for i in range(1, 6):
    batch(f"data_batch_{i}.bin", 12)
batch("test_batch.bin", 4)
open("cifar-10-batches-bin/batches.meta.txt", "w").write("airplane\nautomobile\n")
with tarfile.open("cifar-10-binary.tar.gz", "w:gz") as t:
    t.add("cifar-10-batches-bin")
)PY";

// The recipe's NCSN++ (56M parameters) replaced by the small NCSN++ of the tests (16 channels): the same
// architecture, so its sampling EMA files go through the same naming as the real row's (NCSN++ registers a
// buffer before its parameters: core/ema.h matches EMA values to names by identity). method.metric=l2: the
// LPIPS weights are not available here. sample.count=8: the training picture only.
const char* kTinyOverrides =
    "model=ncsnpp_small method.metric=l2 train.batch=8 train.log_every=1 checkpoint.every=0 sample.count=8";

struct Result {
  int rc = -1;
  std::string out;
};

class Reproduce : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = cm::test::make_temp_dir("cm-reproduce");
    cm::test::run_python(dir_, kTinyCifar);
    cm::test::save_standin_inception(dir_ + "/inception.pt", false);
  }
  void TearDown() override {
    if (!HasFailure()) fs::remove_all(dir_);
  }
  // launch/reproduce.sh ARGS in the test's directory, with this build's cm.
  Result reproduce(const std::string& args) const {
    Result r;
    const std::string cmd = fmt::format("cd '{}' && CM_BIN='{}' OMP_NUM_THREADS=1 bash '{}/launch/reproduce.sh' {}", dir_,
                                        cm::test::cm_binary(), cm::test::source_dir(), args);
    r.rc = cm::test::run_command(cmd, &r.out);
    r.out = cmd + "\n" + r.out;
    return r;
  }
  std::string path(const std::string& p) const { return dir_ + "/" + p; }
  std::string dir_;
};

// The lines "ROW: FID x (k step[s]) | published y" at the end of the output.
std::vector<std::string> result_lines(const std::string& out, const std::string& row) {
  std::vector<std::string> lines;
  std::istringstream in(out);
  for (std::string l; std::getline(in, l);)
    if (l.rfind(row + ": FID ", 0) == 0) lines.push_back(l);
  return lines;
}

// The number after "FID " in such a line (NaN when there is none).
double fid_of(const std::string& line) {
  const auto at = line.find(": FID ");
  if (at == std::string::npos) return std::nan("");
  const char* s = line.c_str() + at + 6;
  char* end = nullptr;
  const double v = std::strtod(s, &end);
  return end == s ? std::nan("") : v;
}

double num(const Json& j, const std::string& key) {
  const Json* v = j.get(key);
  return v && v->kind == Json::Num ? v->num : std::nan("");
}

int64_t mtime_ns(const std::string& p) {
  struct stat st {};
  if (stat(p.c_str(), &st) != 0) return -1;
  return int64_t(st.st_mtim.tv_sec) * 1000000000 + st.st_mtim.tv_nsec;
}

}  // namespace

TEST_F(Reproduce, EveryStageRunsHandsOnAndResumes) {
  const std::string base = fmt::format(
      "cifar10_ct --source cifar-10-binary.tar.gz --data-dir data/cifar10 --run-dir runs/ct --steps 4 --count 24 "
      "--inception inception.pt --shards 2 --batch 12 -- {}",
      kTinyOverrides);

  // 1. Preempted in training (a SIGUSR1 at step 2, as SLURM sends before the time limit): converted, one
  //    checkpoint committed, exit 75 passed on with the advice to rerun; nothing sampled yet.
  Result a = reproduce(base + " +debug.signal_rank=0 +debug.signal_step=2");
  ASSERT_EQ(a.rc, 75) << a.out;
  EXPECT_TRUE(contains(a.out, "run the same command again to resume")) << a.out;
  EXPECT_TRUE(fs::exists(path("data/cifar10/manifest.json"))) << a.out;
  EXPECT_TRUE(fs::exists(path("runs/ct/checkpoints/step_00000002/COMMIT"))) << a.out;
  EXPECT_FALSE(fs::exists(path("runs/ct/final.json")));
  EXPECT_FALSE(fs::exists(path("runs/ct/fid/1step")));

  // 2. The same command again: conversion skipped (it verifies), training resumes from step 2 to 4, then
  //    both columns are sampled, the training set's statistics computed and both FIDs printed.
  Result b = reproduce(base);
  ASSERT_EQ(b.rc, 0) << b.out;
  EXPECT_TRUE(contains(b.out, "skipped: data/cifar10 verifies (cm data verify: 60 images 32x32x3)")) << b.out;
  EXPECT_TRUE(contains(b.out, "resuming from runs/ct/checkpoints/step_00000002")) << b.out;
  for (const char* stage : {"[1/6] convert", "[2/6] train", "[3/6] sample", "[4/6] ref", "[5/6] eval", "[6/6] results"})
    EXPECT_TRUE(contains(b.out, stage)) << stage << "\n" << b.out;
  EXPECT_EQ(count_of(b.out, "skipped:"), 1) << b.out;
  EXPECT_TRUE(contains(read_text(path("runs/ct/final.json")), "\"steps\": 4"));
  for (const char* f : {"runs/ct/checkpoints/step_00000004/COMMIT", "runs/ct/fid/1step/samples_24x32x32x3.npz",
                        "runs/ct/fid/2step/samples_24x32x32x3.npz", "runs/ct/fid/ref_stats_train.npz",
                        "runs/ct/fid/1step/eval.json", "runs/ct/fid/2step/eval.json", "runs/ct/reproduce.json"})
    EXPECT_TRUE(fs::exists(path(f))) << f << "\n" << b.out;
  // The paper's sampling: one step (--ts 0), and the recipe's two steps (ts 0,11 of N = 18) from EMA 0.9999.
  EXPECT_TRUE(contains(b.out, "--ema 0.9999") && contains(b.out, "--count 24")) << b.out;
  EXPECT_TRUE(contains(read_text(path("runs/ct/fid/2step/inputs.txt")), "2 steps, ts 0,11 of N = 18"));
  EXPECT_NE(read_text(path("runs/ct/fid/1step/samples_24x32x32x3.npz")), read_text(path("runs/ct/fid/2step/samples_24x32x32x3.npz")));

  const auto lines = result_lines(b.out, "cifar10_ct");
  ASSERT_EQ(lines.size(), 2u) << b.out;
  EXPECT_TRUE(contains(lines[0], "(1 step) | published 8.70")) << lines[0];
  EXPECT_TRUE(contains(lines[1], "(2 steps) | published 5.83")) << lines[1];
  for (const auto& l : lines) EXPECT_TRUE(std::isfinite(fid_of(l)) && fid_of(l) > 0) << l;

  // Hand-offs: the results file holds each column's FID of its eval.json, and that FID is what cm eval gives
  // for the samples against the converted training set itself (the cached statistics are that set's).
  const Json res = parse_json(read_text(path("runs/ct/reproduce.json")), "reproduce.json");
  EXPECT_EQ(res.at("row", "reproduce.json").str, "cifar10_ct");
  EXPECT_EQ(res.at("train_steps", "reproduce.json").integer, 4);
  EXPECT_EQ(res.at("count", "reproduce.json").integer, 24);
  const Json& cols = res.at("results", "reproduce.json");
  ASSERT_EQ(cols.arr.size(), 2u);
  const double published[2] = {8.70, 5.83};
  for (size_t i = 0; i < 2; ++i) {
    const std::string k = std::to_string(i + 1);
    const Json e = parse_json(read_text(path("runs/ct/fid/" + k + "step/eval.json")), "eval.json");
    EXPECT_EQ(num(cols.arr[i], "fid"), num(e, "fid"));
    EXPECT_EQ(num(cols.arr[i], "published"), published[i]);
    EXPECT_NEAR(fid_of(lines[i]), num(e, "fid"), 0.006);
    std::string out;
    ASSERT_EQ(cm::test::run_command(fmt::format("cd '{}' && {} eval runs/ct/fid/{}step/samples_24x32x32x3.npz --ref data/cifar10 "
                                                "--inception inception.pt --metrics fid --json direct{}.json",
                                                dir_, cm::test::cm_binary(), k, k),
                                    &out),
              0)
        << out;
    const double direct = num(parse_json(read_text(path("direct" + k + ".json")), "direct.json"), "fid");
    EXPECT_NEAR(num(e, "fid"), direct, 1e-6 * std::max(1.0, direct)) << k << " step";
  }

  // 3. Rerun of the finished command: every stage skipped (nothing of cm runs but config and verify), the
  //    same figures, the outputs untouched.
  const int64_t npz_time = mtime_ns(path("runs/ct/fid/1step/samples_24x32x32x3.npz"));
  const std::string results = read_text(path("runs/ct/reproduce.json"));
  Result c = reproduce(base);
  ASSERT_EQ(c.rc, 0) << c.out;
  EXPECT_EQ(count_of(c.out, "skipped:"), 7) << c.out;  // convert, train, 2 x sample, ref, 2 x eval
  EXPECT_EQ(count_of(c.out, "[reproduce]   $ "), 0) << c.out;
  EXPECT_EQ(result_lines(c.out, "cifar10_ct"), lines) << c.out;
  EXPECT_EQ(read_text(path("runs/ct/reproduce.json")), results);
  EXPECT_EQ(mtime_ns(path("runs/ct/fid/1step/samples_24x32x32x3.npz")), npz_time);

  // 4. A lost output is made again, alone: the two-step FID.
  fs::remove(path("runs/ct/fid/2step/eval.json"));
  Result d = reproduce(base);
  ASSERT_EQ(d.rc, 0) << d.out;
  EXPECT_EQ(count_of(d.out, "skipped:"), 6) << d.out;
  EXPECT_EQ(count_of(d.out, "[reproduce]   $ "), 1) << d.out;
  EXPECT_TRUE(contains(d.out, "eval runs/ct/fid/2step/samples_24x32x32x3.npz")) << d.out;
  EXPECT_EQ(result_lines(d.out, "cifar10_ct"), lines) << d.out;
  EXPECT_EQ(read_text(path("runs/ct/reproduce.json")), results);
}

TEST_F(Reproduce, MissingTeacherOrSourceStopsBeforeAnythingRuns) {
  // A CD row without the EDM teacher: exit 1 naming the file and the ways to get it; nothing converted.
  Result cd = reproduce("cifar10_cd_lpips --source cifar-10-binary.tar.gz --data-dir data/cd --run-dir runs/cd --inception inception.pt");
  EXPECT_EQ(cd.rc, 1) << cd.out;
  for (const char* s : {"cifar10_cd_lpips distils an EDM teacher", "method.teacher = 'teachers/edm_cifar10.safetensors' does not exist",
                        "edm-cifar10-32x32-uncond-ve.pkl", "tools/edm_pickle_to_safetensors.py", "cm train cifar10_edm",
                        "-- method.teacher=FILE"})
    EXPECT_TRUE(contains(cd.out, s)) << s << "\n" << cd.out;
  EXPECT_FALSE(fs::exists(path("data/cd")));
  EXPECT_FALSE(fs::exists(path("runs/cd")));

  // A dataset not converted yet and no --source: exit 1 saying which file to pass and where it comes from.
  Result src = reproduce(fmt::format("cifar10_ct --data-dir data/none --run-dir runs/none --inception inception.pt -- {}", kTinyOverrides));
  EXPECT_EQ(src.rc, 1) << src.out;
  EXPECT_TRUE(contains(src.out, "data/none is not a converted dataset yet, and no --source was given")) << src.out;
  EXPECT_TRUE(contains(src.out, "https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz")) << src.out;
  EXPECT_FALSE(fs::exists(path("runs/none/final.json")));

  // A row that is not in the paper's table.
  Result bad = reproduce("toy_ct --inception inception.pt");
  EXPECT_EQ(bad.rc, 2) << bad.out;
  EXPECT_TRUE(contains(bad.out, "'toy_ct' is not a row of the paper's table")) << bad.out;
}
