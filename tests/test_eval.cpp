// `cm eval` end to end with a stand-in feature network: a TorchScript module built here with the calling
// convention of inception-2015-12-05.pt (forward(images, return_features=..., no_output_bias=...)) whose
// features are a fixed projection of pooled pixels, so the expected values can be computed independently.
// Checks FID against core/fid on features computed here without TorchScript, FID of a set against its own
// statistics ~ 0, IS of uniform predictions = 1 and of others against numpy's (StyleGAN3 formula), precision
// and recall 1 against itself and 0 against a far-away set, the three input kinds (.npz laid out as the
// published files, converted HDF5 dataset, PNG folder), grey images, and the missing-file message.
#include <gtest/gtest.h>
#include <torch/script.h>
#include <torch/torch.h>

#include <filesystem>
#include <fstream>
#include "core/metrics/fid.h"
#include "core/metrics/image_metrics.h"
#include "core/io/json.h"
#include "core/rng.h"
#include "core/io/safetensors.h"
#include "datasets/image_codec.h"
#include "recipes/eval/image_sets.h"
#include "datasets/npz.h"
#include "datasets/shards.h"
#include "support/mpi_launch.h"
#include "support/paths.h"
#include "support/standin_inception.h"

using namespace cm;
namespace fs = std::filesystem;

namespace {

const std::string kPython = "/usr/bin/python3";

torch::Tensor proj() { return test::standin_projection(); }

// The same features without TorchScript, from uint8 NHWC (grey repeated to 3 channels).
torch::Tensor expected_features(torch::Tensor nhwc) {
  if (nhwc.size(3) == 1) nhwc = nhwc.repeat({1, 1, 1, 3});
  auto x = nhwc.permute({0, 3, 1, 2}).to(torch::kFloat32) / 255.0;
  const int64_t h2 = x.size(2) / 2;
  auto f = torch::cat({x.mean({2, 3}), x.narrow(2, 0, h2).mean({2, 3}), (x * x).mean({2, 3})}, 1);
  return torch::mm(f - 0.5, proj());
}

std::string save_net(const std::string& path, bool uniform) { return test::save_standin_inception(path, uniform); }

// N images h x w x c, pixel values in [lo, hi], from a seed.
torch::Tensor images(int64_t n, int64_t hw, int64_t c, int lo, int hi, uint64_t seed) {
  auto g = cpu_generator(seed);
  return torch::randint(lo, hi + 1, {n, hw, hw, c}, g, torch::kInt64).to(torch::kUInt8);
}

// N images whose brightness and contrast vary from image to image (so the stand-in's predictions vary).
torch::Tensor varied_images(int64_t n, int64_t hw, int64_t c, uint64_t seed) {
  auto g = cpu_generator(seed);
  auto scale = torch::rand({n, 1, 1, 1}, g), offset = torch::rand({n, 1, 1, 1}, g) * (1 - scale);
  return ((torch::rand({n, hw, hw, c}, g) * scale + offset) * 255).round().clamp(0, 255).to(torch::kUInt8);
}

void write_dataset(const std::string& dir, const torch::Tensor& nhwc) {
  fs::create_directories(dir);
  data::Manifest m;
  m.info.name = "evalset";
  m.info.source_format = "test";
  m.info.height = nhwc.size(1), m.info.width = nhwc.size(2), m.info.channels = nhwc.size(3);
  m.info.total_records = nhwc.size(0);
  m.info.shard_count = 2;
  for (int64_t s = 0; s < 2; ++s) {
    data::ShardWriter w(dir, m.info, s);
    const auto [first, count] = data::shard_range(nhwc.size(0), 2, s);
    auto part = nhwc.narrow(0, first, count).contiguous();
    w.append(part.data_ptr<uint8_t>(), nullptr, count);
    m.shards.push_back(w.commit());
  }
  data::write_manifest(dir, m);
}

void write_pngs(const std::string& dir, const torch::Tensor& nhwc) {
  fs::create_directories(dir + "/sub");
  for (int64_t i = 0; i < nhwc.size(0); ++i) {
    data::Image img(nhwc.size(1), nhwc.size(2), nhwc.size(3));
    std::memcpy(img.pixels.data(), nhwc[i].contiguous().data_ptr(), img.pixels.size());
    // Half in a subfolder: the listing is depth first with names sorted, "img_..." before "sub".
    const std::string name = i < nhwc.size(0) / 2 ? fmt::format("{}/img_{:03d}.png", dir, i) : fmt::format("{}/sub/{:03d}.png", dir, i);
    std::ofstream(name, std::ios::binary) << data::encode_png(img);
  }
}

struct Eval {
  int rc = -1;
  std::string out;
  Json json;
};

}  // namespace

class EvalCmd : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = test::make_temp_dir("eval");
    net_ = save_net(dir_ + "/inception.pt", false);
    uniform_ = save_net(dir_ + "/uniform.pt", true);
  }
  void TearDown() override { fs::remove_all(dir_); }
  Eval eval(const std::string& args, const std::string& net = "", const std::string& launcher = "") {
    Eval e;
    const std::string json = dir_ + "/out.json";
    fs::remove(json);
    e.rc = test::run_command(fmt::format("{}{} eval {} --inception {} --json {} --quiet 2>&1", launcher, test::cm_binary(), args,
                                         net.empty() ? net_ : net, json), &e.out);
    if (e.rc == 0) e.json = parse_json(read_file(json), json);
    return e;
  }
  static double num(const Eval& e, const std::string& key) {
    const Json* j = e.json.get(key);
    if (!j || j->kind != Json::Num) return std::nan("");
    return j->num;
  }
  std::string dir_, net_, uniform_;
};

// Samples and reference as np.savez writes them (the reference image_sample.py's arr_0 / arr_1 and a
// VIRTUAL_*.npz reference batch with arr_0, mu, sigma, mu_s, sigma_s), FID against core/fid computed here.
TEST_F(EvalCmd, FidAgainstIndependentComputationOnPublishedLayouts) {
  if (!fs::exists(kPython)) GTEST_SKIP() << "needs /usr/bin/python3 with numpy (Debian python3-numpy)";
  auto a = images(40, 16, 3, 0, 255, 1), b = images(50, 16, 3, 30, 200, 2);
  auto fa = feature_stats(expected_features(a).to(torch::kFloat64)), fb = feature_stats(expected_features(b).to(torch::kFloat64));
  const double want = frechet_distance(fa, fb);
  ASSERT_GT(want, 1.0);
  // Raw bytes to numpy, which writes the archives.
  auto dump = [&](const torch::Tensor& t, const std::string& name) {
    auto c = t.contiguous();
    std::ofstream(dir_ + "/" + name, std::ios::binary).write(static_cast<const char*>(c.data_ptr()), static_cast<std::streamsize>(c.nbytes()));
  };
  dump(a, "a.bin");
  dump(b, "b.bin");
  dump(fb.mu, "mu.bin");
  dump(fb.sigma, "sigma.bin");
  std::ofstream(dir_ + "/make.py") << fmt::format(
      "import numpy as np\n"
      "a = np.fromfile('{0}/a.bin', dtype=np.uint8).reshape(40, 16, 16, 3)\n"
      "b = np.fromfile('{0}/b.bin', dtype=np.uint8).reshape(50, 16, 16, 3)\n"
      "mu = np.fromfile('{0}/mu.bin'); sigma = np.fromfile('{0}/sigma.bin').reshape(6, 6)\n"
      "np.savez('{0}/samples_40x16x16x3.npz', a, np.arange(40) % 10)\n"
      "np.savez('{0}/VIRTUAL_test.npz', arr_0=b, mu=mu, sigma=sigma, mu_s=np.zeros(3), sigma_s=np.eye(3))\n",
      dir_);
  std::string out;
  ASSERT_EQ(test::run_command(kPython + " " + dir_ + "/make.py", &out), 0) << out;
  auto e = eval(fmt::format("{0}/samples_40x16x16x3.npz --ref {0}/VIRTUAL_test.npz", dir_));
  ASSERT_EQ(e.rc, 0) << e.out;
  EXPECT_NEAR(num(e, "fid"), want, 1e-6 * want) << e.out;
  EXPECT_EQ(e.json.at("count", "json").integer, 40);
  EXPECT_NE(e.out.find("FID "), std::string::npos) << e.out;
  // Precision/recall came from the reference batch's arr_0 images (as the reference evaluator): finite, in [0, 1].
  EXPECT_GE(num(e, "precision"), 0.0);
  EXPECT_LE(num(e, "recall"), 1.0);
  EXPECT_NE(e.out.find("features of its 50 arr_0 images"), std::string::npos) << e.out;
  // --count uses the first N images.
  e = eval(fmt::format("{0}/samples_40x16x16x3.npz --ref {0}/VIRTUAL_test.npz --count 20 --metrics fid", dir_));
  ASSERT_EQ(e.rc, 0) << e.out;
  const double want20 = frechet_distance(feature_stats(expected_features(a.narrow(0, 0, 20)).to(torch::kFloat64)), fb);
  EXPECT_NEAR(num(e, "fid"), want20, 1e-6 * want20);
  EXPECT_TRUE(std::isnan(num(e, "is_mean")));  // not asked for: null
}

// ref-stats of an HDF5 dataset, then the same images as an .npz (written by cm's writer) and as a PNG folder:
// FID ~ 0, precision = recall = 1. Against a far-away set: precision = recall = 0.
TEST_F(EvalCmd, SelfAndFarAwaySetsAcrossInputKinds) {
  auto a = images(30, 16, 3, 0, 255, 3);
  write_dataset(dir_ + "/data", a);
  data::write_npz(dir_ + "/a.npz", {{"arr_0", a}});
  write_pngs(dir_ + "/png", a);
  std::string out;
  ASSERT_EQ(test::run_command(fmt::format("{} eval ref-stats {}/data --out {}/stats.npz --features --inception {} --quiet", test::cm_binary(),
                                          dir_, dir_, net_), &out), 0) << out;
  EXPECT_NE(out.find("of 30 images, with their features"), std::string::npos) << out;
  for (const std::string s : {dir_ + "/a.npz", dir_ + "/png", dir_ + "/data"}) {
    auto e = eval(fmt::format("{} --ref {}/stats.npz", s, dir_));
    ASSERT_EQ(e.rc, 0) << e.out;
    EXPECT_LT(std::abs(num(e, "fid")), 1e-6) << s << "\n" << e.out;
    EXPECT_EQ(num(e, "precision"), 1.0) << s;
    EXPECT_EQ(num(e, "recall"), 1.0) << s;
    EXPECT_EQ(e.json.at("count", "json").integer, 30);
  }
  // Dark images against bright ones: no sample inside a reference ball, and the other way round.
  write_dataset(dir_ + "/bright", images(30, 16, 3, 220, 255, 4));
  data::write_npz(dir_ + "/dark.npz", {{"arr_0", images(25, 16, 3, 0, 30, 5)}});
  auto e = eval(fmt::format("{0}/dark.npz --ref {0}/bright --metrics fid,pr", dir_));
  ASSERT_EQ(e.rc, 0) << e.out;
  EXPECT_EQ(num(e, "precision"), 0.0) << e.out;
  EXPECT_EQ(num(e, "recall"), 0.0) << e.out;
  EXPECT_GT(num(e, "fid"), 100.0) << e.out;
  // Statistics without features (EDM's files): precision/recall is skipped with a note, or refused when asked for.
  data::write_npz(dir_ + "/edm.npz", {{"mu", torch::zeros({6}, torch::kFloat64)}, {"sigma", torch::eye(6, torch::kFloat64)}});
  e = eval(fmt::format("{0}/a.npz --ref {0}/edm.npz", dir_));
  ASSERT_EQ(e.rc, 0) << e.out;
  EXPECT_NE(e.out.find("precision/recall is skipped"), std::string::npos) << e.out;
  EXPECT_TRUE(std::isnan(num(e, "precision")));
  e = eval(fmt::format("{0}/a.npz --ref {0}/edm.npz --metrics pr", dir_));
  EXPECT_NE(e.rc, 0);
  EXPECT_NE(e.out.find("ref-stats DATASET --features"), std::string::npos) << e.out;
}

// Under mpirun the sets are split over the ranks (each rank reads its own contiguous part: an .npz skips by
// reading, a folder by index, a dataset through its shards) and the features gathered: FID, IS and
// precision/recall agree with one process's for 2 and 3 ranks, and so do `cm eval ref-stats` statistics.
TEST_F(EvalCmd, ShardedOverRanksAgreesWithOneProcess) {
  auto s = varied_images(37, 16, 3, 21);
  data::write_npz(dir_ + "/s.npz", {{"arr_0", s}});
  write_pngs(dir_ + "/s_png", s);
  write_dataset(dir_ + "/ref", varied_images(23, 16, 3, 22));
  const std::string args = fmt::format("{{}} --ref {}/ref --batch 5 --splits 2", dir_);
  auto one = eval(fmt::format(fmt::runtime(args), dir_ + "/s.npz"));
  ASSERT_EQ(one.rc, 0) << one.out;
  ASSERT_GT(num(one, "fid"), 0.1);
  // The network file is named by its sha256, printed and in the JSON.
  std::string sum;
  ASSERT_EQ(test::run_command("sha256sum " + net_, &sum), 0);
  EXPECT_EQ(one.json.at("inception_sha256", "json").str, sum.substr(0, 64));
  EXPECT_NE(one.out.find("sha256 " + sum.substr(0, 64)), std::string::npos) << one.out;
  for (int np : {2, 3}) {
    for (const std::string samples : {dir_ + "/s.npz", dir_ + "/s_png"}) {
      auto e = eval(fmt::format(fmt::runtime(args), samples), "", test::mpirun_prefix(np));
      ASSERT_EQ(e.rc, 0) << e.out;
      for (const char* k : {"fid", "is_mean", "is_std", "precision", "recall"})
        EXPECT_NEAR(num(e, k), num(one, k), 1e-9 * std::max(1.0, std::abs(num(one, k)))) << k << " with " << np << " ranks, " << samples;
      EXPECT_EQ(e.json.at("count", "json").integer, 37);
      // Rank 0 alone reports.
      EXPECT_EQ(e.out.find("FID"), e.out.rfind("FID")) << e.out;
    }
  }
  std::string out;
  const std::string rs = fmt::format("{} eval ref-stats {}/ref --inception {} --batch 4 --quiet", test::cm_binary(), dir_, net_);
  ASSERT_EQ(test::run_command(rs + " --out " + dir_ + "/one.npz 2>&1", &out), 0) << out;
  ASSERT_EQ(test::run_command(test::mpirun_prefix(3) + rs + " --out " + dir_ + "/three.npz 2>&1", &out), 0) << out;
  for (const char* k : {"mu", "sigma"}) {
    auto a = data::read_npz_tensor(dir_ + "/one.npz", k), b = data::read_npz_tensor(dir_ + "/three.npz", k);
    EXPECT_LT((a - b).abs().max().item<double>(), 1e-10) << k;
  }
}

// Uniform predictions give IS = 1 exactly; other predictions give StyleGAN3's value computed by numpy from
// the network's probabilities (no output bias: with it every image would be one class and IS ~ 1).
TEST_F(EvalCmd, InceptionScore) {
  auto a = varied_images(40, 16, 1, 6);  // grey: repeated to 3 channels
  data::write_npz(dir_ + "/a.npz", {{"arr_0", a}});
  auto e = eval(dir_ + "/a.npz", uniform_);
  ASSERT_EQ(e.rc, 0) << e.out;
  EXPECT_NEAR(num(e, "is_mean"), 1.0, 1e-9);
  EXPECT_NEAR(num(e, "is_std"), 0.0, 1e-9);
  if (!fs::exists(kPython)) GTEST_SKIP() << "needs /usr/bin/python3 with numpy for the non-uniform case";
  e = eval(dir_ + "/a.npz --splits 4");
  ASSERT_EQ(e.rc, 0) << e.out;
  // The network's probabilities without bias, straight from the module, to numpy.
  auto m = torch::jit::load(net_);
  auto x = a.permute({0, 3, 1, 2}).repeat({1, 3, 1, 1}).contiguous();
  auto p = m.get_method("forward")({x}, {{"no_output_bias", true}}).toTensor().to(torch::kFloat64);
  data::write_npz(dir_ + "/p.npz", {{"p", p}});
  std::ofstream(dir_ + "/is.py") << fmt::format(
      "import numpy as np\n"
      "p = np.load('{0}/p.npz')['p']; n = len(p); s = []\n"
      "for i in range(4):\n"
      "    part = p[i * n // 4:(i + 1) * n // 4]\n"
      "    kl = part * (np.log(part) - np.log(np.mean(part, axis=0, keepdims=True)))\n"
      "    s.append(np.exp(np.mean(np.sum(kl, axis=1))))\n"
      "print(repr(float(np.mean(s))), repr(float(np.std(s))))\n",
      dir_);
  std::string out;
  ASSERT_EQ(test::run_command(kPython + " " + dir_ + "/is.py", &out), 0) << out;
  double mean = 0, sd = 0;
  ASSERT_EQ(std::sscanf(out.c_str(), "%lf %lf", &mean, &sd), 2) << out;
  EXPECT_GT(mean, 1.2);  // not trivially 1
  EXPECT_NEAR(num(e, "is_mean"), mean, 1e-5 * mean) << e.out;
  EXPECT_NEAR(num(e, "is_std"), sd, 1e-5 * mean + 1e-9) << e.out;
}

// The blocked computation equals a direct one on all pairs (blocks of 7 over 40 and 33 points).
TEST(ImageMetrics, PrecisionRecallBlocksMatchDirectComputation) {
  auto g = cpu_generator(9);
  auto ref = torch::randn({40, 5}, g), smp = torch::randn({33, 5}, g) * 1.3 + 0.4;
  auto direct = [](const torch::Tensor& r, const torch::Tensor& s) {
    auto d2 = [](const torch::Tensor& u, const torch::Tensor& v) { return torch::cdist(u.to(torch::kFloat64), v.to(torch::kFloat64)).square(); };
    auto rr = std::get<0>(d2(r, r).sort(1)).select(1, 3), rs = std::get<0>(d2(s, s).sort(1)).select(1, 3);
    auto d = d2(s, r);  // [S, R]
    double prec = (d <= rr.unsqueeze(0)).any(1).to(torch::kFloat64).mean().item<double>();
    double rec = (d <= rs.unsqueeze(1)).any(0).to(torch::kFloat64).mean().item<double>();
    return std::make_pair(prec, rec);
  };
  auto [p, r] = direct(ref, smp);
  auto got = precision_recall(ref, smp, 3, 7);
  EXPECT_DOUBLE_EQ(got.precision, p);
  EXPECT_DOUBLE_EQ(got.recall, r);
  EXPECT_GT(p, 0.0);
  EXPECT_LT(p, 1.0);  // a case where neither is trivial
  auto radii = manifold_radii(ref, 3, 7);
  auto want = std::get<0>(torch::cdist(ref.to(torch::kFloat64), ref.to(torch::kFloat64)).square().sort(1)).select(1, 3);
  EXPECT_TRUE(torch::allclose(radii.to(torch::kFloat64), want, 1e-4, 1e-5));
}

TEST_F(EvalCmd, MissingInceptionFileSaysWhereToGetIt) {
  data::write_npz(dir_ + "/a.npz", {{"arr_0", images(4, 8, 3, 0, 255, 7)}});
  std::string out;
  const int rc = test::run_command(fmt::format("env -u CM_INCEPTION HOME={0} {1} eval {0}/a.npz", dir_, test::cm_binary()), &out);
  EXPECT_NE(rc, 0);
  for (const char* s : {"inception-2015-12-05.pt", "--inception FILE", "CM_INCEPTION", "StyleGAN2-ADA", ".cache/cm/inception-2015-12-05.pt"})
    EXPECT_NE(out.find(s), std::string::npos) << s << "\n" << out;
  // A file that is not TorchScript is named as such.
  std::ofstream(dir_ + "/junk.pt") << "not a module";
  auto e = eval(dir_ + "/a.npz", dir_ + "/junk.pt");
  EXPECT_NE(e.rc, 0);
  EXPECT_NE(e.out.find("not a TorchScript module"), std::string::npos) << e.out;
}
