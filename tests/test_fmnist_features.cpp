// FD_fmnist's feature network (recipes/eval/fmnist_features.h) on the real Fashion-MNIST of the Debian
// package: the shipped weights classify the test split at the accuracy they state, FD_fmnist of test images
// against train images is small and that of noised images far larger, `cm eval --feature-net fmnist` on 2
// ranks equals 1 rank, and bad inputs get clear errors.
#include <gtest/gtest.h>

#include <filesystem>
#include <nlohmann/json.hpp>
#include <torch/torch.h>

#include "core/io/safetensors.h"
#include "core/metrics/fid.h"
#include "datasets/convert.h"
#include "datasets/npz.h"
#include "recipes/eval/fmnist_features.h"
#include "recipes/evaluation.h"
#include "support/cm_run.h"
#include "support/files.h"
#include "support/mpi_launch.h"
#include "support/paths.h"

using cm::test::source_dir;

namespace fs = std::filesystem;
using namespace cm;

namespace {

const char* kSource = "/usr/share/datasets/fashion-mnist";

class FmnistFeatures : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = new std::string(test::make_temp_dir("cm-fmnist-features"));
    if (!fs::exists(fs::path(kSource) / "t10k-images-idx3-ubyte.gz")) return;
    for (const char* split : {"train", "test"}) {
      data::ConvertOptions o;
      o.format = "fashion-mnist";
      o.src = kSource;
      o.out_dir = *dir_ + "/" + split;
      o.split = split;
      o.shards = 1;
      o.progress = false;
      data::run_conversion(o);
    }
  }
  static void TearDownTestSuite() {
    fs::remove_all(*dir_);
    delete dir_;
  }
  void SetUp() override {
    if (!fs::exists(fs::path(kSource) / "t10k-images-idx3-ubyte.gz"))
      FAIL() << kSource << " is missing: install the Debian package dataset-fashion-mnist";
  }
  static std::string* dir_;
};
std::string* FmnistFeatures::dir_ = nullptr;

FeatureStats stats(FeatureNetwork& net, const torch::Tensor& images) {
  EvalOptions o;
  o.batch = 500;
  o.progress = false;
  return compute_features(net, images.size(0), [&](int64_t b, int64_t e) { return images.slice(0, b, e); }, o, false, false,
                          nullptr, "images")
      .stats;
}

nlohmann::json read_json(const std::string& path) { return nlohmann::json::parse(test::read_text(path)); }

// The shipped weights load, state at least 93 % test accuracy and classify the first 2,000 test images
// at that accuracy (the standard deviation of an accuracy near 0.93 over 2,000 images is 0.006).
TEST_F(FmnistFeatures, ShippedNetworkClassifiesTheTestSplitAtItsStatedAccuracy) {
  torch::set_num_threads(1);
  std::map<std::string, std::string> meta;
  auto net = load_fmnist_classifier(shipped_fmnist_features(), torch::kCPU, &meta);
  ASSERT_TRUE(meta.count("test_accuracy"));
  const double stated = std::stod(meta.at("test_accuracy"));
  EXPECT_GE(stated, 0.93);
  const auto test = load_labelled_images(*dir_ + "/test", 2000);
  const double acc = classifier_accuracy(net, test, torch::kCPU);
  EXPECT_GE(acc, stated - 0.018) << "stated " << stated;
  // The same images padded to 32x32 (the 32-px recipes' layout) are centre-cropped back: same predictions.
  auto padded = torch::constant_pad_nd(test.images.narrow(0, 0, 200).permute({0, 3, 1, 2}), {2, 2, 2, 2}, 0).permute({0, 2, 3, 1}).contiguous();
  torch::NoGradGuard ng;
  EXPECT_TRUE(torch::equal(net->features(fmnist_classifier_input(padded)),
                           net->features(fmnist_classifier_input(test.images.narrow(0, 0, 200)))));
}

// FD_fmnist of 2,000 test images against 5,000 train images is small; with Gaussian noise of std 0.2 it is
// more than ten times that bound; with std 0.05 it lies in between.
TEST_F(FmnistFeatures, FloorIsLowAndNoisedImagesAreFarAboveIt) {
  torch::set_num_threads(1);
  FeatureNetwork net(FeatureNetwork::resolve("fmnist", ""), torch::kCPU);
  EXPECT_EQ(net.metric_name(), "FD_fmnist");
  EXPECT_EQ(net.metric_key(), "fd_fmnist");
  const auto train = load_labelled_images(*dir_ + "/train", 5000), test = load_labelled_images(*dir_ + "/test", 2000);
  const FeatureStats ref = stats(net, train.images);
  const double floor = frechet_distance(stats(net, test.images), ref);
  constexpr double kBound = 2.0;
  EXPECT_LT(floor, kBound);
  auto gen = torch::make_generator<torch::CPUGeneratorImpl>(3);
  auto noised = [&](double std) {
    auto x = test.images.to(torch::kFloat32) + torch::randn(test.images.sizes(), gen, torch::TensorOptions()) * (255 * std);
    return x.round().clamp(0, 255).to(torch::kUInt8);
  };
  const double light = frechet_distance(stats(net, noised(0.05)), ref), heavy = frechet_distance(stats(net, noised(0.2)), ref);
  EXPECT_GT(heavy, 10 * kBound) << "floor " << floor << ", noise 0.05 " << light;
  EXPECT_GT(light, floor);
  EXPECT_LT(light, heavy);
}

// `cm eval --feature-net fmnist` under mpirun with 2 ranks gives the 1-process figures, names them FD_fmnist
// (never FID) and the network by its SHA-256; there is no Inception Score.
TEST_F(FmnistFeatures, EvalOnTwoRanksEqualsOneAndIsNeverCalledFid) {
  const auto train = load_labelled_images(*dir_ + "/train", 400), test = load_labelled_images(*dir_ + "/test", 301);
  data::write_npz(*dir_ + "/s.npz", {{"arr_0", test.images}});
  data::write_npz(*dir_ + "/r.npz", {{"arr_0", train.images}});
  const std::string args = fmt::format("eval {0}/s.npz --ref {0}/r.npz --feature-net fmnist --batch 64 --quiet --json ", *dir_);
  auto one = test::run_cm(args + *dir_ + "/one.json");
  ASSERT_EQ(one.rc, 0) << one.out;
  auto two = test::run_cm(args + *dir_ + "/two.json", test::mpirun_prefix(2));
  ASSERT_EQ(two.rc, 0) << two.out;
  EXPECT_TRUE(test::contains(one.out, "FD_fmnist")) << one.out;
  EXPECT_FALSE(test::contains(one.out, "FID")) << one.out;
  const auto a = read_json(*dir_ + "/one.json"), b = read_json(*dir_ + "/two.json");
  EXPECT_FALSE(a.contains("fid"));
  EXPECT_EQ(a.at("feature_net"), "fmnist");
  EXPECT_EQ(a.at("feature_net_sha256"), FeatureNetwork(shipped_fmnist_features(), torch::kCPU).sha256());
  EXPECT_EQ(a.at("count"), 301);
  EXPECT_GT(a.at("fd_fmnist").get<double>(), 0.0);
  for (const char* k : {"fd_fmnist", "precision", "recall"})
    EXPECT_NEAR(b.at(k).get<double>(), a.at(k).get<double>(), 1e-9 * std::max(1.0, a.at(k).get<double>())) << k;
}

// The main job's recipe for a few steps: the shipped teacher loads from any directory, and FD_fmnist during
// training lands in metrics.jsonl, final.json and the run page at one and two steps, under its own name.
TEST_F(FmnistFeatures, TrainingReportsFdFmnistAtOneAndTwoSteps) {
  const std::string run = *dir_ + "/run";
  auto r = test::run_cm(fmt::format("train fmnist28_cd run.dir={0} dataset.path={1}/train train.steps=2 train.batch=4 "
                                    "eval.every_images=8 eval.count=40 eval.batch=20 eval.ref={1}/test sample.count=4 train.threads=1",
                                    run, *dir_));
  ASSERT_EQ(r.rc, 0) << r.out;
  EXPECT_TRUE(test::contains(r.out, "FD_fmnist")) << r.out;
  const std::string metrics = test::read_text(run + "/metrics.jsonl");
  EXPECT_TRUE(test::contains(metrics, "\"fd_fmnist\": ")) << metrics;
  EXPECT_TRUE(test::contains(metrics, "\"fd_fmnist_1step\": ")) << metrics;
  EXPECT_FALSE(test::contains(metrics, "\"fid")) << metrics;
  const auto final_json = read_json(run + "/final.json");
  EXPECT_GT(final_json.at("fd_fmnist").get<double>(), 0.0);
  EXPECT_GT(final_json.at("fd_fmnist_1step").get<double>(), 0.0);
  int caches = 0;  // the statistics cache, in this network's features only (eval_ref_stats_fmnist_<digest>.npz)
  for (const auto& e : fs::directory_iterator(run)) {
    const std::string name = e.path().filename().string();
    if (name.rfind("eval_ref_stats", 0) == 0) {
      ++caches;
      EXPECT_EQ(name.rfind("eval_ref_stats_fmnist_", 0), 0u) << name;
    }
  }
  EXPECT_EQ(caches, 1);
  std::string out;
  ASSERT_EQ(test::run_command(fmt::format("{} report {} --out {}/report.html 2>&1", test::cm_binary(), run, *dir_), &out), 0) << out;
  const std::string html = test::read_text(*dir_ + "/report.html");
  EXPECT_TRUE(test::contains(html, "FD_fmnist (in-training")) << "no FD_fmnist chart";
  EXPECT_TRUE(test::contains(html, "fd_fmnist_1step")) << "final figures missing";
}

// ts-search by FD_fmnist (what the Fashion-MNIST study uses to pick the second noise level).
TEST_F(FmnistFeatures, TsSearchByFdFmnist) {
  auto r = test::run_cm(fmt::format("ts-search fmnist28_cd --weights {0} --ref {1}/test --feature-net fmnist --from 5 --to 7 --stride 2 "
                                    "--count 20 --batch 10 --json {1}/ts.json",
                                    source_dir() + "/recipes/weights/fmnist28_edm.safetensors", *dir_));
  ASSERT_EQ(r.rc, 0) << r.out;
  EXPECT_TRUE(test::contains(r.out, "FD_fmnist")) << r.out;
  EXPECT_FALSE(test::contains(r.out, "FID")) << r.out;
  const auto j = read_json(*dir_ + "/ts.json");
  EXPECT_EQ(j.at("metric"), "fd_fmnist");
  EXPECT_EQ(j.at("results").size(), 2u);
  EXPECT_GT(j.at("results").at(0).at("fd_fmnist").get<double>(), 0.0);  // under its own name, never "fid"
  EXPECT_FALSE(j.at("results").at(0).contains("fid"));
  EXPECT_FALSE(j.contains("inception_sha256"));
  EXPECT_EQ(j.at("feature_net_sha256"), FeatureNetwork(shipped_fmnist_features(), torch::kCPU).sha256());
  EXPECT_GT(j.at("best").at("fd_fmnist").get<double>(), 0.0);
  const int best = j.at("best").at("index").get<int>();
  EXPECT_TRUE(best == 5 || best == 7) << best;
}

TEST_F(FmnistFeatures, ClearErrors) {
  torch::NoGradGuard ng;
  // Images of another size or colour.
  try {
    fmnist_classifier_input(torch::zeros({2, 16, 16, 1}, torch::kUInt8));
    FAIL() << "16x16 accepted";
  } catch (const std::invalid_argument& e) {
    EXPECT_TRUE(test::contains(e.what(), "[N, 28, 28, 1] or [N, 32, 32, 1]")) << e.what();
  }
  EXPECT_THROW(fmnist_classifier_input(torch::zeros({2, 28, 28, 3}, torch::kUInt8)), std::invalid_argument);
  // The Inception Score has no meaning with this network.
  data::write_npz(*dir_ + "/z.npz", {{"arr_0", torch::zeros({4, 28, 28, 1}, torch::kUInt8)}});
  auto is = test::run_cm(fmt::format("eval {0}/z.npz --ref {0}/z.npz --feature-net fmnist --metrics is", *dir_));
  EXPECT_NE(is.rc, 0);
  EXPECT_TRUE(test::contains(is.out, "Inception Score needs the Inception network")) << is.out;
  // A safetensors file that is not such a classifier.
  save_safetensors(*dir_ + "/other.safetensors", {{"w", torch::zeros({3})}});
  auto other = test::run_cm(fmt::format("eval {0}/z.npz --ref {0}/z.npz --feature-net {0}/other.safetensors", *dir_));
  EXPECT_NE(other.rc, 0);
  EXPECT_TRUE(test::contains(other.out, "not a Fashion-MNIST feature network")) << other.out;
  auto name = test::run_cm(fmt::format("eval {0}/z.npz --ref {0}/z.npz --feature-net vgg", *dir_));
  EXPECT_NE(name.rc, 0);
  EXPECT_TRUE(test::contains(name.out, "not inception, fmnist or an existing file")) << name.out;
}

}  // namespace
