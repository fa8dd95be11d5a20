// Dataset shards, the IDX converter (on generated files and on Debian's real Fashion-MNIST), and the
// sharded loader's order, completeness, world-size independence and exact resume, on a self-describing
// dataset whose every image encodes its own global index.
#include <gtest/gtest.h>
#include <torch/torch.h>
#include <zlib.h>

#include <filesystem>
#include <fstream>
#include <set>
#include "core/safetensors.h"
#include "datasets/convert.h"
#include "datasets/loader.h"
#include "datasets/shards.h"
#include "support/paths.h"

using namespace cm;
namespace fs = std::filesystem;

namespace {

void write_gz(const std::string& path, const std::string& bytes) {
  gzFile f = gzopen(path.c_str(), "wb");
  gzwrite(f, bytes.data(), static_cast<unsigned>(bytes.size()));
  gzclose(f);
}
std::string be32(uint32_t v) { return {char(v >> 24), char(v >> 16), char(v >> 8), char(v)}; }

// Images 4x4x3 whose first three bytes are the global index in base 256, labels = index % 7.
void write_self_describing(const std::string& dir, int64_t n, int64_t shards) {
  DatasetMeta m;
  m.name = "selfdesc";
  m.split = "train";
  m.height = m.width = 4;
  m.channels = 3;
  m.num_classes = 7;
  m.total = n;
  const int64_t per = (n + shards - 1) / shards;
  for (int64_t s = 0; s < shards; ++s) {
    ShardWriter w(dir, shard_file_name("selfdesc", s, shards), m, s * per);
    for (int64_t i = s * per; i < std::min(n, (s + 1) * per); ++i) {
      uint8_t img[48] = {0};
      img[0] = i & 255, img[1] = (i >> 8) & 255, img[2] = (i >> 16) & 255;
      w.append(img, i % 7);
    }
    m.shards.push_back(w.finish());
  }
  write_manifest(dir, m);
}

int64_t decode(const torch::Tensor& x) {  // x: [C, H, W] in [-1, 1]
  auto u = ((x + 1) * 127.5).round().to(torch::kInt64);
  return u[0][0][0].item<int64_t>() + 256 * u[1][0][0].item<int64_t>() + 65536 * u[2][0][0].item<int64_t>();
}

}  // namespace

class Datasets : public ::testing::Test {
 protected:
  void SetUp() override { dir_ = test::make_temp_dir("data"); }
  void TearDown() override { fs::remove_all(dir_); }
  std::string dir_;
};

TEST_F(Datasets, IdxConversionIsExactWithPadding) {
  std::string img = be32(0x803) + be32(3) + be32(2) + be32(3), lab = be32(0x801) + be32(3);
  for (int i = 0; i < 3; ++i) {
    for (int p = 0; p < 6; ++p) img += char(10 * i + p);
    lab += char(i + 4);
  }
  write_gz(dir_ + "/img.gz", img);
  write_gz(dir_ + "/lab.gz", lab);
  ConvertOptions o;
  o.out_dir = dir_ + "/out";
  o.name = "tiny";
  o.shards = 2;
  o.pad_to = 4;
  o.progress = false;
  convert_idx(dir_ + "/img.gz", dir_ + "/lab.gz", "train", o);
  auto m = read_manifest(o.out_dir);
  ASSERT_EQ(m.total, 3);
  ASSERT_EQ(m.shards.size(), 2u);
  EXPECT_EQ(m.shards[1].first_index, 2);
  auto b = read_shard_block(o.out_dir + "/" + m.shards[0].file, 0, 2);
  ASSERT_EQ(b.images.sizes(), (torch::IntArrayRef{2, 4, 4, 1}));
  // 2x3 image centred in 4x4: rows 1..2, columns 0..2 (left pad (4-3)/2 = 0).
  EXPECT_EQ(b.images[1][1][0][0].item<int>(), 10);
  EXPECT_EQ(b.images[1][2][2][0].item<int>(), 15);
  EXPECT_EQ(b.images[1][0][0][0].item<int>(), 0);
  EXPECT_EQ(b.labels[1].item<int64_t>(), 5);
  EXPECT_TRUE(verify_dataset(o.out_dir, false).empty());
}

TEST_F(Datasets, TruncatedIdxNamesFileAndRecord) {
  std::string img = be32(0x803) + be32(3) + be32(2) + be32(2) + std::string(8, 'x'), lab = be32(0x801) + be32(3) + std::string("\x01\x02\x03", 3);
  write_gz(dir_ + "/img.gz", img);
  write_gz(dir_ + "/lab.gz", lab);
  ConvertOptions o;
  o.out_dir = dir_ + "/out";
  o.name = "t";
  o.progress = false;
  try {
    convert_idx(dir_ + "/img.gz", dir_ + "/lab.gz", "train", o);
    FAIL() << "no error";
  } catch (const std::runtime_error& e) {
    std::string m = e.what();
    EXPECT_NE(m.find("img.gz"), std::string::npos) << m;
    EXPECT_NE(m.find("image record 2"), std::string::npos) << m;
  }
  // Nothing that looks complete was left behind.
  EXPECT_FALSE(fs::exists(o.out_dir + "/manifest.json"));
  for (auto& e : fs::directory_iterator(o.out_dir)) ADD_FAILURE() << "left behind: " << e.path();
}

TEST_F(Datasets, FashionMnistFromTheDebianPackage) {
  const std::string src = "/usr/share/datasets/fashion-mnist";
  if (!fs::exists(src + "/train-images-idx3-ubyte.gz")) GTEST_SKIP() << "dataset-fashion-mnist is not installed";
  std::string out;
  ASSERT_EQ(test::run_command(test::cm_binary() + " data convert fashion_mnist " + src + " " + dir_ + "/train --shards 3 --pad-to 32", &out), 0) << out;
  ASSERT_EQ(test::run_command(test::cm_binary() + " data convert fashion_mnist " + src + " " + dir_ + "/test --split test", &out), 0) << out;
  ASSERT_EQ(test::run_command(test::cm_binary() + " data verify " + dir_ + "/train", &out), 0) << out;
  auto tr = read_manifest(dir_ + "/train"), te = read_manifest(dir_ + "/test");
  EXPECT_EQ(tr.total, 60000);
  EXPECT_EQ(te.total, 10000);
  EXPECT_EQ(tr.height, 32);
  EXPECT_EQ(te.height, 28);
  std::vector<int64_t> hist(10, 0);
  for (auto& s : tr.shards) {
    auto b = read_shard_block(dir_ + "/train/" + s.file, 0, s.count);
    for (int64_t i = 0; i < s.count; ++i) ++hist[b.labels[i].item<int64_t>()];
    if (s.first_index == 0) {
      EXPECT_EQ(b.labels[0].item<int64_t>(), 9);  // the first training image is an ankle boot
      EXPECT_EQ(b.labels[1].item<int64_t>(), 0);  // the second a T-shirt/top
      EXPECT_EQ(b.images.narrow(1, 0, 2).sum().item<int64_t>(), 0);  // padding rows are black
    }
  }
  for (int c = 0; c < 10; ++c) EXPECT_EQ(hist[c], 6000) << "class " << c;
}

TEST_F(Datasets, CorruptOrMissingShardIsACleanError) {
  write_self_describing(dir_, 100, 2);
  auto m = read_manifest(dir_);
  {
    auto b = read_shard_block(dir_ + "/" + m.shards[1].file, 0, 1);  // sanity
    EXPECT_EQ(b.images.size(0), 1);
  }
  // Flip one byte of image data in shard 1: HDF5 still opens it, the checksum catches it.
  auto path = dir_ + "/" + m.shards[1].file;
  auto bytes = read_file(path);
  auto blk = read_shard_block(path, 0, m.shards[1].count);
  std::string needle(reinterpret_cast<const char*>(blk.images.data_ptr<uint8_t>()), 48 * 3);
  auto at = bytes.find(needle);
  ASSERT_NE(at, std::string::npos);
  bytes[at + 1] ^= 0x55;
  std::ofstream(path, std::ios::binary) << bytes;
  auto problems = verify_dataset(dir_, false);
  ASSERT_EQ(problems.size(), 1u);
  EXPECT_NE(problems[0].find(m.shards[1].file), std::string::npos) << problems[0];
  EXPECT_NE(problems[0].find("checksum"), std::string::npos) << problems[0];
  fs::remove(dir_ + "/" + m.shards[0].file);
  try {
    ShardedLoader l(LoaderOptions{dir_, 10, 0, 1, 0, false});
    FAIL() << "no error";
  } catch (const std::runtime_error& e) {
    EXPECT_NE(std::string(e.what()).find(m.shards[0].file), std::string::npos) << e.what();
  }
}

TEST_F(Datasets, UnfinishedShardLeavesNothing) {
  DatasetMeta m;
  m.name = "x";
  m.height = m.width = 2;
  m.channels = 1;
  m.total = 1;
  {
    ShardWriter w(dir_, "x-00000-of-00001.h5", m, 0);
    uint8_t img[4] = {1, 2, 3, 4};
    w.append(img, 0);
  }  // destroyed without finish(): the conversion was interrupted
  EXPECT_TRUE(fs::is_empty(dir_));
}

// Every index once per epoch across ranks, the same global order for W = 1, 2, 3, pixels that match the
// indices, and exact continuation after restore, also on another world size.
TEST_F(Datasets, LoaderOrderIsWorldSizeIndependentAndResumable) {
  const int64_t n = 120, batch = 12;
  write_self_describing(dir_, n, 5);
  auto global_order = [&](int64_t world, int64_t batches, const DataCursor* from) {
    std::vector<std::unique_ptr<ShardedLoader>> ranks;
    for (int64_t r = 0; r < world; ++r) {
      ranks.push_back(std::make_unique<ShardedLoader>(LoaderOptions{dir_, batch, r, world, 9, true}));
      if (from) ranks.back()->restore(*from);
    }
    std::vector<int64_t> order;
    for (int64_t b = 0; b < batches; ++b)
      for (auto& l : ranks) {
        auto want = l->peek_indices();
        auto got = l->next();
        for (int64_t k = 0; k < got.x.size(0); ++k) {
          // Flipped images carry the index in the last column instead of the first.
          auto img = got.x[k];
          int64_t v = decode(img);
          if (v != want[k]) v = decode(img.flip({2}));
          EXPECT_EQ(v, want[k]);
          EXPECT_EQ(got.labels[k].item<int64_t>(), want[k] % 7);
          order.push_back(want[k]);
        }
      }
    return std::make_pair(order, ranks[0]->cursor());
  };
  auto [w1, c1] = global_order(1, 25, nullptr);  // 2 full epochs + 5 batches
  auto [w2, c2] = global_order(2, 25, nullptr);
  auto [w3, c3] = global_order(3, 25, nullptr);
  EXPECT_EQ(w1, w2);
  EXPECT_EQ(w1, w3);
  for (int e = 0; e < 2; ++e) {
    std::set<int64_t> seen(w1.begin() + e * n, w1.begin() + (e + 1) * n);
    EXPECT_EQ(static_cast<int64_t>(seen.size()), n) << "epoch " << e;
  }
  EXPECT_NE(std::vector<int64_t>(w1.begin(), w1.begin() + n), std::vector<int64_t>(w1.begin() + n, w1.begin() + 2 * n));
  // Resume after 13 batches (mid-epoch) on 1 and on 3 ranks: the rest equals the uninterrupted run.
  auto [head, cur] = global_order(2, 13, nullptr);
  auto [tail1, x1] = global_order(1, 12, &cur);
  auto [tail3, x3] = global_order(3, 12, &cur);
  std::vector<int64_t> joined = head;
  joined.insert(joined.end(), tail1.begin(), tail1.end());
  EXPECT_EQ(joined, w1);
  EXPECT_EQ(tail1, tail3);
}
