// FID math (core/metrics/fid.h) and reference-statistics files (recipes/eval/ref_stats.h): closed forms, a set against
// itself, streaming accumulation, near-singular covariances against an independent numpy computation, and
// .npz files laid out as the published VIRTUAL_*.npz and EDM statistics.
#include <gtest/gtest.h>
#include <fmt/format.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <torch/torch.h>
#include "core/metrics/fid.h"
#include "recipes/eval/ref_stats.h"
#include "support/paths.h"

using namespace cm;

namespace {

torch::Tensor random_rotation(int64_t d, uint64_t seed) {
  torch::manual_seed(seed);
  auto q = std::get<0>(torch::linalg::qr(torch::randn({d, d}, torch::kFloat64)));
  return q;
}

}  // namespace

// Two Gaussians with known statistics: FID = |mu1 - mu2|^2 + tr(S1 + S2 - 2 (S1^1/2 S2 S1^1/2)^1/2). With
// S1 = R diag(a) R^T and S2 = R diag(b) R^T (same eigenvectors) the last term is sum(sqrt(a b)).
TEST(Fid, ClosedFormForGaussiansWithSharedEigenvectors) {
  const int64_t d = 16;
  auto r = random_rotation(d, 1);
  auto a = torch::linspace(0.1, 3.0, d, torch::kFloat64), b = torch::linspace(2.0, 0.05, d, torch::kFloat64);
  FeatureStats s1{torch::zeros({d}, torch::kFloat64), r.mm(torch::diag(a)).mm(r.t()), 0};
  FeatureStats s2{torch::full({d}, 0.5, torch::kFloat64), r.mm(torch::diag(b)).mm(r.t()), 0};
  const double want = d * 0.25 + (a + b - 2 * (a * b).sqrt()).sum().item<double>();
  EXPECT_NEAR(frechet_distance(s1, s2), want, 1e-9 * want);
  EXPECT_NEAR(frechet_distance(s2, s1), want, 1e-9 * want);  // symmetric
}

// Non-commuting covariances: S1 = I makes the cross term tr(S2^1/2) = sum sqrt(eig(S2)).
TEST(Fid, ClosedFormWithIdentityCovariance) {
  const int64_t d = 12;
  torch::manual_seed(2);
  auto m = torch::randn({d, d}, torch::kFloat64);
  auto s2 = m.mm(m.t()) / d;
  FeatureStats a{torch::zeros({d}, torch::kFloat64), torch::eye(d, torch::kFloat64), 0};
  FeatureStats b{torch::zeros({d}, torch::kFloat64), s2, 0};
  auto eig = torch::linalg::eigvalsh(s2, "L");
  const double want = d + s2.trace().item<double>() - 2 * eig.sqrt().sum().item<double>();
  EXPECT_NEAR(frechet_distance(a, b), want, 1e-9);
}

TEST(Fid, SetAgainstItselfIsZero) {
  torch::manual_seed(3);
  auto f = torch::randn({500, 64}, torch::kFloat32) * 3 + 1;
  auto s = feature_stats(f);
  EXPECT_NEAR(frechet_distance(s, s), 0.0, 1e-6);
}

// Streaming in float64: any batch split gives the statistics of the whole set, and they equal the
// direct formulas (mean, np.cov with ddof = 1), even for features with a large common offset.
TEST(Fid, AccumulatorMatchesDirectStatistics) {
  torch::manual_seed(4);
  auto f = (torch::randn({301, 20}, torch::kFloat64) * 0.01 + 1000.0);
  FeatureAccumulator acc(20);
  for (int64_t i = 0; i < 301; i += 37) acc.add(f.slice(0, i, std::min<int64_t>(301, i + 37)));
  auto s = acc.stats();
  auto mu = f.mean(0);
  auto c = f - mu;
  auto cov = c.t().mm(c) / 300.0;
  EXPECT_EQ(s.count, 301);
  EXPECT_LT((s.mu - mu).abs().max().item<double>(), 1e-9);
  EXPECT_LT((s.sigma - cov).abs().max().item<double>() / cov.abs().max().item<double>(), 1e-9);
  EXPECT_THROW(FeatureAccumulator(3).stats(), std::runtime_error);
  EXPECT_THROW(acc.add(torch::zeros({2, 3})), std::invalid_argument);
}

// Fewer samples than dimensions: singular covariances, where scipy's sqrtm needs the evaluator's eps retry.
// The value must be finite and equal an independent computation (numpy: eigenvalues of S1 S2).
TEST(Fid, NearSingularCovariancesAgreeWithNumpy) {
  const std::string py = "/usr/bin/python3";
  if (!std::filesystem::exists(py)) GTEST_SKIP() << "needs /usr/bin/python3 with numpy (Debian python3-numpy)";
  const std::string dir = cm::test::make_temp_dir("fid");
  torch::manual_seed(5);
  auto f1 = torch::randn({20, 48}, torch::kFloat64), f2 = torch::randn({30, 48}, torch::kFloat64) * 1.5 + 0.2;
  auto s1 = feature_stats(f1), s2 = feature_stats(f2);
  const double ours = frechet_distance(s1, s2);
  ASSERT_TRUE(std::isfinite(ours));
  // The feature rows go to numpy as raw float64 files.
  auto dump = [&](const torch::Tensor& t, const std::string& name) {
    std::ofstream(dir + "/" + name, std::ios::binary).write(static_cast<const char*>(t.contiguous().data_ptr()), t.numel() * 8);
  };
  dump(f1, "f1.bin");
  dump(f2, "f2.bin");
  std::string out;
  const std::string script = fmt::format(
      "import numpy as np\n"
      "f1 = np.fromfile('{0}/f1.bin').reshape(20, 48); f2 = np.fromfile('{0}/f2.bin').reshape(30, 48)\n"
      "m1, m2 = f1.mean(0), f2.mean(0); s1, s2 = np.cov(f1, rowvar=False), np.cov(f2, rowvar=False)\n"
      "ev = np.linalg.eigvals(s1.dot(s2))\n"
      "tr = np.sqrt(np.clip(ev.real, 0, None)).sum()\n"
      "print(repr(float(((m1 - m2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * tr)))\n",
      dir);
  std::ofstream(dir + "/ref.py") << script;
  ASSERT_EQ(cm::test::run_command(py + " " + dir + "/ref.py", &out), 0) << out;
  const double want = std::stod(out);
  EXPECT_NEAR(ours, want, 1e-6 * std::abs(want)) << "numpy: " << out;
}

// .npz files with the published layouts, written by numpy: a VIRTUAL_*.npz reference batch (arr_0 images,
// mu, sigma, mu_s, sigma_s; compressed as np.savez_compressed would) and EDM's (mu, sigma) statistics.
TEST(Fid, ReadsReferenceStatisticsFilesAsPublished) {
  const std::string py = "/usr/bin/python3";
  if (!std::filesystem::exists(py)) GTEST_SKIP() << "needs /usr/bin/python3 with numpy (Debian python3-numpy)";
  const std::string dir = cm::test::make_temp_dir("refstats");
  std::string out;
  const std::string script = fmt::format(
      "import numpy as np\n"
      "r = np.random.RandomState(0)\n"
      "mu = r.randn(2048); a = r.randn(2048, 64); sigma = a.dot(a.T) / 64\n"
      "np.savez('{0}/VIRTUAL_test.npz', arr_0=r.randint(0, 256, (4, 64, 64, 3)).astype(np.uint8), mu=mu, sigma=sigma,\n"
      "         mu_s=r.randn(7), sigma_s=np.eye(7))\n"
      "np.savez_compressed('{0}/edm.npz', mu=mu.astype(np.float32), sigma=sigma)\n"
      "np.savez('{0}/bad.npz', mu=mu)\n"
      "mu.tofile('{0}/mu.bin'); sigma.tofile('{0}/sigma.bin')\n",
      dir);
  std::ofstream(dir + "/make.py") << script;
  ASSERT_EQ(cm::test::run_command(py + " " + dir + "/make.py", &out), 0) << out;
  auto raw = [&](const std::string& name, std::vector<int64_t> shape) {
    auto t = torch::empty(shape, torch::kFloat64);
    std::ifstream(dir + "/" + name, std::ios::binary).read(static_cast<char*>(t.data_ptr()), t.numel() * 8);
    return t;
  };
  auto mu = raw("mu.bin", {2048}), sigma = raw("sigma.bin", {2048, 2048});
  auto v = data::read_reference_stats(dir + "/VIRTUAL_test.npz");
  EXPECT_TRUE(torch::equal(v.mu, mu));
  EXPECT_TRUE(torch::equal(v.sigma, sigma));
  auto e = data::read_reference_stats(dir + "/edm.npz");
  EXPECT_TRUE(torch::equal(e.mu, mu.to(torch::kFloat32).to(torch::kFloat64)));
  EXPECT_TRUE(torch::equal(e.sigma, sigma));
  EXPECT_NEAR(frechet_distance(v, v), 0.0, 1e-6);
  try {
    data::read_reference_stats(dir + "/bad.npz");
    FAIL() << "no error";
  } catch (const std::runtime_error& err) {
    EXPECT_NE(std::string(err.what()).find("no 'sigma' array"), std::string::npos) << err.what();
  }
}
