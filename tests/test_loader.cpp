// The sharded loader in one process, on self-describing data (every image encodes its own record index,
// every label is index % 10): the global order does not depend on the world size, every record appears
// once per epoch, flips follow (seed, epoch, index), restoring a cursor continues exactly (also on another
// world size), batches handed out are never overwritten, and bad shards stop it at start-up.
#include <gtest/gtest.h>

#include <filesystem>
#include <fmt/format.h>
#include <set>

#include "core/config.h"
#include "datasets/inspect.h"
#include "datasets/loader.h"
#include "recipes/recipe.h"
#include "support/datasets_fixtures.h"

namespace fs = std::filesystem;
using namespace cm::data;

namespace {

constexpr int64_t kRecords = 1000, kSide = 8, kBatch = 12;
constexpr int64_t kPerEpoch = kRecords / kBatch;  // 83; the last 4 records of each epoch's order are dropped

struct Seen {
  int64_t index = -1, label = -1;
  bool flip = false;
  bool operator==(const Seen& o) const { return index == o.index && label == o.label && flip == o.flip; }
};
using GlobalBatch = std::vector<Seen>;

std::vector<Seen> decode(const cm::Batch& b) {
  EXPECT_EQ(b.x.dtype(), torch::kFloat);
  EXPECT_EQ(b.x.dim(), 4);
  EXPECT_EQ(b.x.size(1), 3);
  EXPECT_EQ(b.x.size(2), kSide);
  EXPECT_TRUE(b.x.is_contiguous());
  std::vector<Seen> v;
  const float* x = b.x.data_ptr<float>();
  for (int64_t i = 0; i < b.x.size(0); ++i) {
    auto [index, flip] = decode_index_image(x + i * 3 * kSide * kSide, kSide, kSide);  // checks every pixel
    v.push_back({index, b.labels.defined() ? b.labels[i].item<int64_t>() : -1, flip});
  }
  return v;
}

class Loader : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = cm::test::make_temp_dir("cm-loader");
    write_index_dataset(dir_ + "/data", kRecords, 7, kSide, 10);
  }
  static void TearDownTestSuite() { fs::remove_all(dir_); }

  static LoaderOptions options(int64_t rank, int64_t world, bool flip = true) {
    LoaderOptions o;
    o.dir = dir_ + "/data";
    o.rank = rank;
    o.world = world;
    o.global_batch = kBatch;
    o.seed = 42;
    o.random_flip = flip;
    o.labels = true;
    o.threads = 2;
    o.prefetch = 3;
    return o;
  }
  // `count` global batches from `world` ranks, each rank's slice concatenated in rank order; ranks
  // restored to `from` first when given.
  static std::vector<GlobalBatch> run(int64_t world, int64_t count, const cm::DataCursor* from = nullptr,
                                      const std::string& io = "auto") {
    std::vector<std::unique_ptr<ShardedLoader>> ranks;
    for (int64_t r = 0; r < world; ++r) {
      auto o = options(r, world);
      o.io = io;
      ranks.push_back(std::make_unique<ShardedLoader>(o));
      if (from) ranks.back()->restore(*from);
    }
    std::vector<GlobalBatch> out;
    for (int64_t k = 0; k < count; ++k) {
      GlobalBatch g;
      for (auto& l : ranks) {
        auto part = decode(l->next());
        EXPECT_EQ(int64_t(part.size()), kBatch / world);
        g.insert(g.end(), part.begin(), part.end());
      }
      out.push_back(g);
    }
    return out;
  }
  static std::string dir_;
};
std::string Loader::dir_;

TEST(LoaderOrder, PermutationIsAFixedFunctionOfSeedAndEpoch) {
  auto p = epoch_permutation(1000, 7, 3);
  std::vector<int64_t> sorted = p;
  std::sort(sorted.begin(), sorted.end());
  for (int64_t i = 0; i < 1000; ++i) ASSERT_EQ(sorted[size_t(i)], i);
  EXPECT_EQ(p, epoch_permutation(1000, 7, 3));
  EXPECT_NE(p, epoch_permutation(1000, 7, 4));
  EXPECT_NE(p, epoch_permutation(1000, 8, 3));
  // Pinned values: a resumed run reads its position in this order from a checkpoint, so the order must
  // never change between builds (SplitMix64 + Lemire, no std:: distributions).
  EXPECT_EQ(epoch_permutation(10, 0, 0), (std::vector<int64_t>{3, 1, 0, 7, 4, 9, 6, 2, 5, 8}));
  int flips = 0;
  for (int64_t i = 0; i < 10000; ++i) flips += flip_of(42, 1, i);
  EXPECT_GT(flips, 4800);
  EXPECT_LT(flips, 5200);
  EXPECT_EQ(flip_of(42, 1, 17), flip_of(42, 1, 17));
  EXPECT_EQ(pixel_to_float(0), -1.0f);
  EXPECT_EQ(pixel_to_float(255), 1.0f);
  EXPECT_EQ(pixel_to_float(200), 200.0f / 127.5f - 1.0f);
}

TEST_F(Loader, SameGlobalBatchesOnEveryWorldSizeAndEachRecordOncePerEpoch) {
  const int64_t count = 2 * kPerEpoch + 5;
  auto ref = run(1, count);
  for (int64_t epoch = 0; epoch < 2; ++epoch) {
    std::set<int64_t> seen;
    for (int64_t b = 0; b < kPerEpoch; ++b)
      for (const auto& s : ref[size_t(epoch * kPerEpoch + b)]) {
        EXPECT_TRUE(seen.insert(s.index).second) << "record " << s.index << " twice in epoch " << epoch;
        EXPECT_EQ(s.label, s.index % 10);
        EXPECT_EQ(s.flip, flip_of(42, epoch, s.index));
      }
    EXPECT_EQ(int64_t(seen.size()), kPerEpoch * kBatch);
  }
  // Epoch 1 is a different order than epoch 0.
  EXPECT_NE(ref[0][0].index * 1000 + ref[0][1].index, ref[size_t(kPerEpoch)][0].index * 1000 + ref[size_t(kPerEpoch)][1].index);
  for (int64_t world : {2, 3, 4}) {
    auto got = run(world, count);
    for (int64_t k = 0; k < count; ++k) ASSERT_EQ(got[size_t(k)], ref[size_t(k)]) << "world " << world << " batch " << k;
  }
}

TEST_F(Loader, RestoreContinuesExactlyAlsoOnAnotherWorldSize) {
  auto ref = run(1, kPerEpoch + 20);
  // Two ranks take 37 batches; their cursor (the same on both) restores three ranks.
  ShardedLoader a(options(0, 2)), b(options(1, 2));
  for (int k = 0; k < 37; ++k) {
    a.next();
    b.next();
  }
  cm::DataCursor c = a.cursor();
  EXPECT_EQ(c.batches_total, 37);
  EXPECT_EQ(c.epoch, 0);
  EXPECT_EQ(c.batch_in_epoch, 37);
  EXPECT_EQ(b.cursor().batches_total, 37);
  auto resumed = run(3, kPerEpoch + 20 - 37, &c);
  for (size_t k = 0; k < resumed.size(); ++k) ASSERT_EQ(resumed[k], ref[37 + k]) << "batch " << 37 + k;
  // Going back on a live loader works too.
  cm::DataCursor back{0, 5, 5};
  a.restore(back);
  b.restore(back);
  GlobalBatch g = decode(a.next());
  auto g1 = decode(b.next());
  g.insert(g.end(), g1.begin(), g1.end());
  EXPECT_EQ(g, ref[5]);
  EXPECT_EQ(a.cursor().batches_total, 6);
  // A cursor that does not fit this dataset and batch size is refused.
  EXPECT_THROW(a.restore(cm::DataCursor{1, 5, 7}), std::runtime_error);
}

TEST_F(Loader, HdfsAndDirectReadsGiveTheSameBatches) {
  ShardedLoader direct(options(0, 1));
  EXPECT_TRUE(direct.direct_io());
  auto a = run(1, 20, nullptr, "auto");
  auto b = run(1, 20, nullptr, "hdf5");
  EXPECT_EQ(a, b);
}

TEST_F(Loader, HandedOutBatchesAreNeverOverwritten) {
  ShardedLoader l(options(0, 1));
  cm::Batch first = l.next();
  torch::Tensor copy = first.x.clone();
  torch::Tensor view = l.next().x.narrow(0, 2, 3);  // a view keeps its storage alive too
  torch::Tensor view_copy = view.clone();
  for (int k = 0; k < 20; ++k) l.next();
  EXPECT_TRUE(torch::equal(first.x, copy));
  EXPECT_TRUE(torch::equal(view, view_copy));
  EXPECT_GE(first.x.min().item<float>(), -1.0f);
  EXPECT_LE(first.x.max().item<float>(), 1.0f);
  EXPECT_EQ(first.labels.dtype(), torch::kLong);
}

TEST_F(Loader, WithoutFlipsOrLabels) {
  auto o = options(0, 1, /*flip=*/false);
  o.labels = false;
  ShardedLoader l(o);
  EXPECT_EQ(l.shape().num_classes, 0);
  for (int k = 0; k < 5; ++k) {
    cm::Batch b = l.next();
    EXPECT_FALSE(b.labels.defined());
    for (const auto& s : decode(b)) EXPECT_FALSE(s.flip);
  }
  EXPECT_THROW(ShardedLoader(options(0, 5)), std::invalid_argument);  // 12 is not a multiple of 5
}

TEST_F(Loader, BadShardsStopItAtStartUpWithTheirName) {
  const std::string base = dir_ + "/bad";
  auto fresh = [&](const std::string& name) {
    const std::string d = base + "-" + name;
    write_index_dataset(d, 100, 3, kSide, 10);
    return d;
  };
  auto expect_error = [&](const std::string& d, const std::string& needle) {
    LoaderOptions o = options(0, 1);
    o.dir = d;
    try {
      ShardedLoader l(o);
      ADD_FAILURE() << d << ": loader started";
    } catch (const std::exception& e) {
      EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
    }
  };
  std::string d = fresh("missing");
  fs::remove(d + "/index-00001-of-00003.h5");
  expect_error(d, "index-00001-of-00003.h5");
  d = fresh("truncated");
  fs::resize_file(d + "/index-00002-of-00003.h5", fs::file_size(d + "/index-00002-of-00003.h5") - 100);
  expect_error(d, "index-00002-of-00003.h5");
  d = fresh("foreign");  // a shard of another dataset under the right name
  write_index_dataset(base + "-other", 99, 3, kSide, 10);
  fs::copy_file(base + "-other/index-00000-of-00003.h5", d + "/index-00000-of-00003.h5", fs::copy_options::overwrite_existing);
  expect_error(d, "index-00000-of-00003.h5");
  d = fresh("nomanifest");
  fs::remove(d + "/manifest.json");
  expect_error(d, "manifest.json");
}

TEST_F(Loader, FactoryReadsTheDatasetTable) {
  auto make = [&](const std::string& extra) {
    cm::Config cfg = cm::Config::parse(fmt::format("[dataset]\nkind = \"hdf5\"\npath = \"{}/data\"\n{}", dir_, extra));
    cm::ConfigReader r(cfg, "dataset");
    return cm::make_image_source(r, 1, 2, kBatch, 42);
  };
  auto src = make("resolution = 8\nchannels = 3\nnum_classes = 10\nclass_cond = true\nrandom_flip = false\nloader_threads = 1\n");
  EXPECT_EQ(src->shape().resolution, kSide);
  EXPECT_EQ(src->shape().channels, 3);
  EXPECT_EQ(src->shape().num_classes, 10);
  EXPECT_NE(src->describe().find("rank 1/2"), std::string::npos) << src->describe();
  cm::Batch b = src->next();
  EXPECT_EQ(b.x.size(0), kBatch / 2);
  EXPECT_TRUE(b.labels.defined());
  EXPECT_EQ(make("num_classes = 10\n")->shape().num_classes, 0);  // unconditional unless class_cond
  for (auto [extra, needle] : {std::pair{"resolution = 32\n", "dataset.resolution"}, {"num_classes = 100\n", "dataset.num_classes"},
                               {"random_flips = true\n", "random_flips"}, {"io = \"mmap\"\n", "dataset.io"}}) {
    try {
      make(extra);
      ADD_FAILURE() << extra << " accepted";
    } catch (const cm::ConfigError& e) {
      EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
    }
  }
}

// What the trainer gets: a recipe whose dataset is an HDF5 directory, built by build_data for rank r of
// W, streams the same global batches (order, flips, labels) as the loader itself, for W = 1, 2, 3, across
// an epoch boundary, and resumes from a cursor through the DataSource interface.
TEST_F(Loader, RecipeBuildsTheSameStreamOnEveryWorldSize) {
  const int64_t count = kPerEpoch + 7;
  const auto want = run(1, count);
  auto recipe = [&] {
    return cm::Recipe::bind(cm::Config::compose("toy_ct", {"dataset.kind=\"hdf5\"", fmt::format("+dataset.path=\"{}/data\"", dir_),
                                                           "+dataset.random_flip=true", "+dataset.class_cond=true",
                                                           "+dataset.loader_threads=1", fmt::format("train.batch={}", kBatch),
                                                           "train.seed=42"}),
                            "hdf5_test");
  };
  const cm::Recipe r = recipe();
  for (int64_t world : {1, 2, 3}) {
    std::vector<std::unique_ptr<cm::DataSource>> ranks;
    for (int64_t k = 0; k < world; ++k) ranks.push_back(cm::build_data(r, k, world));
    EXPECT_EQ(ranks[0]->shape().num_classes, 10);
    EXPECT_EQ(ranks[0]->shape().resolution, kSide);
    for (int64_t k = 0; k < count; ++k) {
      GlobalBatch g;
      for (auto& src : ranks) {
        auto part = decode(src->next());
        g.insert(g.end(), part.begin(), part.end());
      }
      ASSERT_EQ(g, want[size_t(k)]) << "world " << world << " batch " << k;
    }
    EXPECT_EQ(ranks[0]->cursor().batches_total, count);
    EXPECT_EQ(ranks[0]->cursor().epoch, 1);
  }
  auto src = cm::build_data(r, 0, 1);
  cm::DataCursor c;
  c.epoch = 0, c.batch_in_epoch = kPerEpoch - 2, c.batches_total = kPerEpoch - 2;
  src->restore(c);
  for (int64_t k = kPerEpoch - 2; k < count; ++k) ASSERT_EQ(decode(src->next()), want[size_t(k)]) << "batch " << k;
}

// The dataset configs shipped in recipes/configs/dataset bind to the loader (every key known, geometry as
// the converters make it); the data itself is a stand-in of the same geometry.
TEST_F(Loader, ShippedDatasetConfigsBind) {
  struct Want {
    const char* name;
    int64_t side, classes;
  };
  for (Want w : {Want{"cifar10", 32, 10}, Want{"imagenet64", 64, 1000}, Want{"lsun_bedroom256", 256, 0}, Want{"lsun_cat256", 256, 0}}) {
    const std::string data = dir_ + "/standin-" + w.name;
    write_index_dataset(data, 24, 2, w.side, w.classes);
    cm::Config cfg = cm::Config::load_file(cm::test::source_dir() + "/recipes/configs/dataset/" + w.name + ".toml");
    cfg.set("path", "\"" + data + "\"");
    cm::ConfigReader r(cfg, "");
    auto src = cm::make_image_source(r, 0, 1, 8, 0);
    EXPECT_EQ(src->shape().resolution, w.side) << w.name;
    EXPECT_EQ(src->shape().channels, 3) << w.name;
    cm::Batch b = src->next();
    EXPECT_EQ(b.x.size(2), w.side) << w.name;
    EXPECT_EQ(b.labels.defined(), std::string(w.name) == "imagenet64") << w.name;
  }
}

}  // namespace
