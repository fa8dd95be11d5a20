// Fashion-MNIST from the Debian package dataset-fashion-mnist (/usr/share/datasets/fashion-mnist): 60,000
// train and 10,000 test records, 6,000 / 1,000 per class, the known first labels, and pixels equal to the
// IDX payload (its CRC32 as Python's zlib computes it over the decompressed files, header stripped).
#include <gtest/gtest.h>

#include <filesystem>

#include "core/config.h"
#include "datasets/convert.h"
#include "datasets/loader.h"
#include "support/datasets_fixtures.h"

namespace fs = std::filesystem;
using namespace cm::data;

namespace {

const char* kSource = "/usr/share/datasets/fashion-mnist";

std::vector<int64_t> histogram(const std::vector<int64_t>& labels) {
  std::vector<int64_t> h(10, 0);
  for (int64_t l : labels) h.at(size_t(l))++;
  return h;
}

class FashionMnist : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!fs::exists(fs::path(kSource) / "train-images-idx3-ubyte.gz"))
      FAIL() << kSource << " is missing: install the Debian package dataset-fashion-mnist";
    dir_ = cm::test::make_temp_dir("cm-fmnist");
  }
  void TearDown() override { fs::remove_all(dir_); }
  ConvertOptions options(const std::string& split, int64_t shards, const std::string& out) {
    ConvertOptions o;
    o.format = "fashion-mnist";
    o.src = kSource;
    o.out_dir = dir_ + "/" + out;
    o.split = split;
    o.shards = shards;
    o.progress = false;
    return o;
  }
  std::string dir_;
};

TEST_F(FashionMnist, TrainAndTestFromTheDebianPackage) {
  run_conversion(options("train", 4, "train"));
  auto train = cm::test::read_dataset(dir_ + "/train");
  EXPECT_EQ(train.manifest.info.total_records, 60000);
  EXPECT_EQ(train.manifest.info.height, 28);
  EXPECT_EQ(train.manifest.info.channels, 1);
  ASSERT_EQ(train.labels.size(), 60000u);
  EXPECT_EQ(histogram(train.labels), std::vector<int64_t>(10, 6000));
  EXPECT_EQ(std::vector<int64_t>(train.labels.begin(), train.labels.begin() + 10),
            (std::vector<int64_t>{9, 0, 0, 3, 0, 2, 7, 2, 5, 5}));
  EXPECT_EQ(crc_hex(crc32_update(0, train.images.data(), train.images.size())), "ae65dccd");

  run_conversion(options("test", 1, "test"));
  auto test = cm::test::read_dataset(dir_ + "/test");
  EXPECT_EQ(test.manifest.info.total_records, 10000);
  EXPECT_EQ(histogram(test.labels), std::vector<int64_t>(10, 1000));
  EXPECT_EQ(std::vector<int64_t>(test.labels.begin(), test.labels.begin() + 10),
            (std::vector<int64_t>{9, 2, 1, 1, 6, 1, 4, 6, 5, 7}));
  EXPECT_EQ(crc_hex(test.manifest.shards[0].images_crc32), "12728439");

  // Padded to 32x32 through the README's command line: a zero border of two pixels around the same
  // 28x28 pixels.
  std::string out;
  ASSERT_EQ(cm::test::run_command(cm::test::cm_binary() + " data convert fashion_mnist " + kSource + " " + dir_ +
                                      "/test32 --split test --shards 2 --pad-to 32 --quiet",
                                  &out),
            0)
      << out;
  ASSERT_EQ(cm::test::run_command(cm::test::cm_binary() + " data verify " + dir_ + "/test32", &out), 0) << out;
  auto padded = cm::test::read_dataset(dir_ + "/test32");
  EXPECT_EQ(padded.manifest.info.height, 32);
  EXPECT_EQ(padded.labels, test.labels);
  for (int64_t i : {0, 1, 4999, 9999})
    for (int64_t y = 0; y < 32; ++y)
      for (int64_t x = 0; x < 32; ++x) {
        const uint8_t v = padded.images[size_t(i * 1024 + y * 32 + x)];
        const bool inside = y >= 2 && y < 30 && x >= 2 && x < 30;
        const uint8_t want = inside ? test.images[size_t(i * 784 + (y - 2) * 28 + (x - 2))] : 0;
        ASSERT_EQ(v, want) << "record " << i << " (" << y << ", " << x << ")";
      }

  // The shipped dataset config reads the padded conversion.
  cm::Config cfg = cm::Config::load_file(cm::test::source_dir() + "/recipes/configs/dataset/fashion_mnist.toml");
  cfg.set("path", "\"" + dir_ + "/test32\"");
  cm::ConfigReader r(cfg, "");
  auto src = cm::make_image_source(r, 0, 1, 100, 0);
  EXPECT_EQ(src->shape().channels, 1);
  EXPECT_EQ(src->shape().resolution, 32);
  cm::Batch b = src->next();
  EXPECT_EQ(b.x.sizes(), (std::vector<int64_t>{100, 1, 32, 32}));
}

}  // namespace
