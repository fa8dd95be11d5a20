// The loader under a real `mpirun -np W`: each rank of `cm data selftest run` writes the record indices,
// flips and labels it saw (decoded from self-describing pixels); the global batches assembled from the
// ranks' files must be the same for W = 1, 2, 3, hold every record once per epoch, and a cursor saved by
// a 2-rank run must continue on 3 ranks exactly where an uninterrupted run goes.
#include <gtest/gtest.h>

#include <filesystem>
#include <fmt/format.h>
#include <set>

#include "support/datasets_fixtures.h"
#include "support/mpi_launch.h"

namespace fs = std::filesystem;

namespace {

constexpr int64_t kRecords = 600, kBatch = 12, kPerEpoch = kRecords / kBatch;

using GlobalBatches = std::vector<std::vector<std::string>>;  // per batch: "index:flip:label" items

std::string run_ok(const std::string& cmd) {
  std::string out;
  int rc = cm::test::run_command(cmd, &out);
  EXPECT_EQ(rc, 0) << cmd << "\n" << out;
  return out;
}

// Reads PREFIX.rank<r>.txt of `world` ranks and concatenates each batch's slices in rank order.
GlobalBatches assemble(const std::string& prefix, int world, int64_t first_seq) {
  GlobalBatches out;
  for (int r = 0; r < world; ++r) {
    std::istringstream in(cm::read_file(fmt::format("{}.rank{}.txt", prefix, r)));
    std::string line;
    size_t k = 0;
    while (std::getline(in, line)) {
      std::istringstream l(line);
      std::string word, item;
      int64_t seq;
      l >> word >> seq;
      EXPECT_EQ(seq, first_seq + int64_t(k)) << prefix << " rank " << r;
      if (out.size() <= k) out.resize(k + 1);
      int64_t items = 0;
      while (l >> item) {
        out[k].push_back(item);
        ++items;
      }
      EXPECT_EQ(items, kBatch / world) << prefix << " rank " << r << " batch " << seq;
      ++k;
    }
  }
  return out;
}

class LoaderMpi : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = cm::test::make_temp_dir("cm-loader-mpi");
    run_ok(fmt::format("{} data selftest make {}/data --count {} --shards 5 --side 8 --classes 10", cm::test::cm_binary(), dir_,
                       kRecords));
  }
  static void TearDownTestSuite() { fs::remove_all(dir_); }
  static std::string selftest(int world, const std::string& tag, int64_t batches, const std::string& extra = "") {
    const std::string prefix = dir_ + "/" + tag;
    run_ok(fmt::format("{} {} data selftest run {}/data --batch {} --batches {} --seed 5 --flip --out {} {}",
                       cm::test::mpirun_prefix(world), cm::test::cm_binary(), dir_, kBatch, batches, prefix, extra));
    return prefix;
  }
  static std::string dir_;
};
std::string LoaderMpi::dir_;

TEST_F(LoaderMpi, GlobalOrderIsTheSameForOneTwoAndThreeRanks) {
  const int64_t batches = kPerEpoch + 10;
  auto ref = assemble(selftest(1, "w1", batches), 1, 0);
  ASSERT_EQ(int64_t(ref.size()), batches);
  std::set<int64_t> epoch0;
  for (int64_t k = 0; k < kPerEpoch; ++k)
    for (const auto& item : ref[size_t(k)]) {
      const int64_t index = std::stoll(item.substr(0, item.find(':')));
      EXPECT_TRUE(epoch0.insert(index).second) << "record " << index << " twice in epoch 0";
      EXPECT_EQ(item.substr(item.rfind(':') + 1), std::to_string(index % 10)) << "label of " << index;
    }
  EXPECT_EQ(int64_t(epoch0.size()), kRecords);
  int flips = 0;
  for (const auto& b : ref)
    for (const auto& item : b) flips += item[item.find(':') + 1] == '1';
  EXPECT_GT(flips, int(batches * kBatch) / 3);  // random flips happen, on about half of the records
  for (int world : {2, 3}) {
    auto got = assemble(selftest(world, fmt::format("w{}", world), batches), world, 0);
    ASSERT_EQ(got.size(), ref.size());
    for (size_t k = 0; k < ref.size(); ++k) ASSERT_EQ(got[k], ref[k]) << "world " << world << " batch " << k;
  }
}

TEST_F(LoaderMpi, CursorFromTwoRanksContinuesOnThreeRanks) {
  auto ref = assemble(selftest(1, "ref", 70), 1, 0);
  const std::string cursor = dir_ + "/cursor.txt";
  selftest(2, "first", 30, fmt::format("--save-cursor {} --save-at 30", cursor));
  // --save-at equal to --batches: the cursor is written after the last batch.
  ASSERT_TRUE(fs::exists(cursor)) << "no cursor written";
  auto second = assemble(selftest(3, "second", 40, "--restore " + cursor), 3, 30);
  ASSERT_EQ(second.size(), 40u);
  for (size_t k = 0; k < second.size(); ++k) ASSERT_EQ(second[k], ref[30 + k]) << "batch " << 30 + k;
}

}  // namespace
