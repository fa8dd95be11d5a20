// Closed-form facts of the consistency-model core: parameterization, grids, curricula, ODE steps,
// distances, optimizers, the exact toy denoiser.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include "core/distance.h"
#include "core/karras.h"
#include "core/ode.h"
#include "core/optim.h"
#include "core/parameterization.h"
#include "core/rng.h"
#include "core/sampler.h"
#include "core/io/sha256.h"
#include "datasets/toy2d.h"
#include "support/paths.h"

using namespace cm;

TEST(Parameterization, BoundaryConditionIsExactAtEps) {
  NoiseRange r;
  auto t = torch::tensor({r.sigma_min}, torch::kFloat32);
  auto s = consistency_scalings(t, r);
  EXPECT_EQ(s.c_skip.item<float>(), 1.0f);
  EXPECT_EQ(s.c_out.item<float>(), 0.0f);
  auto td = torch::tensor({r.sigma_min}, torch::kFloat64);
  auto sd = consistency_scalings(td, r);
  EXPECT_EQ(sd.c_skip.item<double>(), 1.0);
  EXPECT_EQ(sd.c_out.item<double>(), 0.0);
  // Without the eps shift (the deliberate-bug knob) the boundary condition is not exact.
  auto bad = consistency_scalings(td, r, /*boundary_shift=*/false);
  EXPECT_NE(bad.c_out.item<double>(), 0.0);
}

TEST(Parameterization, ScalingsMatchFormulas) {
  NoiseRange r;
  const double t = 1.7, sd = r.sigma_data, eps = r.sigma_min;
  auto s = consistency_scalings(torch::tensor({t}, torch::kFloat64), r);
  EXPECT_DOUBLE_EQ(s.c_skip.item<double>(), sd * sd / ((t - eps) * (t - eps) + sd * sd));
  EXPECT_DOUBLE_EQ(s.c_out.item<double>(), sd * (t - eps) / std::sqrt(sd * sd + t * t));
  EXPECT_DOUBLE_EQ(s.c_in.item<double>(), 1.0 / std::sqrt(sd * sd + t * t));
  auto e = edm_scalings(torch::tensor({t}, torch::kFloat64), r);
  EXPECT_DOUBLE_EQ(e.c_skip.item<double>(), sd * sd / (t * t + sd * sd));
  EXPECT_DOUBLE_EQ(e.c_out.item<double>(), t * sd / std::sqrt(t * t + sd * sd));
  auto tt = torch::tensor({t}, torch::kFloat64);
  EXPECT_DOUBLE_EQ(noise_labels(tt, NoiseLabel::Adm).item<double>(), 250.0 * std::log(t + 1e-44));
  EXPECT_DOUBLE_EQ(noise_labels(tt, NoiseLabel::Log).item<double>(), 0.25 * std::log(t));
  // "ve" (ln(sigma / 2), EDM's VEPrecond label) is refused: EDM's released CIFAR-10 model is an EDMPrecond one.
  EXPECT_THROW(parse_noise_label("ve"), std::invalid_argument);
}

TEST(Karras, GridEndpointsAndMonotone) {
  NoiseRange r;
  for (int64_t n : {2, 18, 40, 201}) {
    auto g = karras_grid(n, r);
    ASSERT_EQ(static_cast<int64_t>(g.size()), n);
    EXPECT_EQ(g.front(), 0.002);
    EXPECT_EQ(g.back(), 80.0);
    for (int64_t i = 1; i < n; ++i) EXPECT_LT(g[i - 1], g[i]);
  }
  // Middle point of a 3-point grid: ((eps^(1/7) + T^(1/7)) / 2)^7.
  auto g3 = karras_grid(3, r);
  EXPECT_NEAR(g3[1], std::pow((std::pow(0.002, 1 / 7.0) + std::pow(80.0, 1 / 7.0)) / 2, 7), 1e-12);
}

TEST(Karras, TsIndicesCountFromSigmaMax) {
  NoiseRange r;
  auto s = ts_to_sigmas({0, 17}, 18, r);
  EXPECT_DOUBLE_EQ(s[0], 80.0);
  EXPECT_NEAR(s[1], 0.002, 1e-15);
  auto g = karras_grid(18, r);
  auto s2 = ts_to_sigmas({11}, 18, r);
  EXPECT_NEAR(s2[0], g[17 - 11], 1e-12);
  EXPECT_THROW(ts_to_sigmas({18}, 18, r), std::invalid_argument);
}

// Hand computations of the spec's formulas (reference-code form for CT).
TEST(Curriculum, CtMatchesHandComputedValues) {
  CtCurriculum c{2, 150, 800000, 0.9};
  // k = 0: s = ceil(sqrt(4) - 1) = 1, N = 2, mu = exp(2 ln 0.9 / 1) = 0.81.
  EXPECT_EQ(c.num_scales(0), 2);
  EXPECT_NEAR(c.target_ema(0), 0.81, 1e-15);
  // k = K/2: sqrt(0.5 (151^2 - 4) + 4) = sqrt(11402.5) = 106.782...; s = ceil(105.78) = 106, N = 107.
  EXPECT_EQ(c.num_scales(400000), 107);
  EXPECT_NEAR(c.target_ema(400000), std::exp(2 * std::log(0.9) / 106), 1e-15);
  // k = K: s = ceil(151 - 1) = 150, N = 151, mu = 0.9^(2/150).
  EXPECT_EQ(c.num_scales(800000), 151);
  EXPECT_NEAR(c.target_ema(800000), std::pow(0.9, 2.0 / 150), 1e-15);
  // ImageNet-64 CT: 2 -> 200, mu0 0.95.
  CtCurriculum im{2, 200, 800000, 0.95};
  EXPECT_EQ(im.num_scales(800000), 201);
  EXPECT_NEAR(im.target_ema(200000), std::exp(2 * std::log(0.95) / std::ceil(std::sqrt(0.25 * (201.0 * 201 - 4) + 4) - 1)), 1e-15);
}

TEST(Curriculum, IctMatchesHandComputedValues) {
  IctCurriculum c{10, 1280, 400000};
  // K' = floor(400000 / (log2(128) + 1)) = floor(400000 / 8) = 50000.
  EXPECT_EQ(c.steps_per_stage(), 50000);
  EXPECT_EQ(c.num_scales(0), 11);
  EXPECT_EQ(c.num_scales(49999), 11);
  EXPECT_EQ(c.num_scales(50000), 21);
  EXPECT_EQ(c.num_scales(200000), 161);
  EXPECT_EQ(c.num_scales(350000), 1281);
  EXPECT_EQ(c.num_scales(400000), 1281);  // capped at s1 + 1
}

TEST(Curriculum, LognormalPairProbabilities) {
  NoiseRange r;
  auto g = karras_grid(11, r);
  auto p = lognormal_pair_probs(g, -1.1, 2.0);
  ASSERT_EQ(p.size(), 10u);
  double total = 0;
  for (double v : p) {
    total += v;
    EXPECT_GT(v, 0);
  }
  EXPECT_NEAR(total, 1.0, 1e-12);
  // Unnormalised mass of pair 3 by hand.
  auto phi = [](double x) { return std::erf((std::log(x) + 1.1) / (std::sqrt(2.0) * 2.0)); };
  double z = phi(g[10]) - phi(g[0]);
  EXPECT_NEAR(p[3], (phi(g[4]) - phi(g[3])) / z, 1e-12);
}

// dx/dt = (x - D(x, t)) / t with D = c (a constant) has the exact solution x(t) = c + (x0 - c) t / t0:
// linear in t, so one Euler or Heun step is exact.
TEST(Ode, StepsAreExactOnLinearOde) {
  DenoiserFn d = [](const torch::Tensor& x, const torch::Tensor&, const torch::Tensor&) { return torch::full_like(x, 0.3); };
  auto x0 = torch::tensor({{1.5, -2.0}}, torch::kFloat64);
  auto t0 = torch::tensor({5.0}, torch::kFloat64), t1 = torch::tensor({0.7}, torch::kFloat64);
  auto exact = 0.3 + (x0 - 0.3) * (0.7 / 5.0);
  EXPECT_TRUE(torch::allclose(heun_step(d, x0, t0, t1, {}), exact, 0, 1e-14));
  EXPECT_TRUE(torch::allclose(euler_step(d, x0, t0, t1, {}), exact, 0, 1e-14));
}

// D(x, t) = a x gives dx/dt = (1 - a) x / t, x(t) = x0 (t / t0)^(1 - a). Heun is second order: halving the
// step divides its error by ~4 (Euler: by ~2), and a step equals the hand-computed Heun formula.
TEST(Ode, HeunIsSecondOrderAndMatchesFormula) {
  const double a = 0.6;
  DenoiserFn d = [a](const torch::Tensor& x, const torch::Tensor&, const torch::Tensor&) { return a * x; };
  auto x0 = torch::tensor({{1.0}}, torch::kFloat64);
  auto run = [&](bool heun, int steps) {
    auto x = x0.clone();
    const double t0 = 2.0, t1 = 1.0;
    for (int i = 0; i < steps; ++i) {
      auto ta = torch::tensor({t0 + (t1 - t0) * i / steps}, torch::kFloat64);
      auto tb = torch::tensor({t0 + (t1 - t0) * (i + 1) / steps}, torch::kFloat64);
      x = heun ? heun_step(d, x, ta, tb, {}) : euler_step(d, x, ta, tb, {});
    }
    return std::abs(x.item<double>() - std::pow(0.5, 1 - a));
  };
  EXPECT_NEAR(run(true, 8) / run(true, 16), 4.0, 0.3);
  EXPECT_NEAR(run(false, 8) / run(false, 16), 2.0, 0.2);
  // One step by hand: slope k1 = (1-a) x/t0; x_e = x + h k1; k2 = (1-a) x_e / t1; x + h (k1 + k2) / 2.
  const double h = -1.0, k1 = (1 - a) * 1.0 / 2.0, xe = 1.0 + h * k1, k2 = (1 - a) * xe / 1.0;
  auto one = heun_step(d, x0, torch::tensor({2.0}, torch::kFloat64), torch::tensor({1.0}, torch::kFloat64), {});
  EXPECT_NEAR(one.item<double>(), 1.0 + h * (k1 + k2) / 2, 1e-15);
}

TEST(Distance, PseudoHuberMatchesFormula) {
  auto x = torch::tensor({{0.1, 0.2, 0.3, 0.4}, {1.0, 0.0, 0.0, 0.0}}, torch::kFloat64);
  auto y = torch::zeros_like(x);
  auto d = pseudo_huber_distance(x, y);
  const double c = 0.00054 * 2.0;  // sqrt(4) = 2
  EXPECT_NEAR(d[0].item<double>(), std::sqrt(0.01 + 0.04 + 0.09 + 0.16 + c * c) - c, 1e-15);
  EXPECT_NEAR(d[1].item<double>(), std::sqrt(1.0 + c * c) - c, 1e-15);
  EXPECT_NEAR(l2_distance(x, y)[0].item<double>(), 0.3 / 4, 1e-15);
  EXPECT_NEAR(l1_distance(x, y)[0].item<double>(), 1.0 / 4, 1e-15);
  EXPECT_EQ(pseudo_huber_distance(x, x).abs().max().item<double>(), 0.0);
}

TEST(Distance, SlicedWassersteinOfShiftedSet) {
  auto gen = cpu_generator(1);
  auto a = torch::randn({4000, 2}, gen, torch::kFloat64);
  EXPECT_EQ(sliced_wasserstein(a, a), 0.0);
  // Shifting by v moves every projection by <v, u>: SW1 = E|<v, u>| = |v| * 2/pi for u uniform on the circle.
  auto b = a + torch::tensor({{1.0, 0.0}}, torch::kFloat64);
  EXPECT_NEAR(sliced_wasserstein(a, b, 1024), 2.0 / M_PI, 0.03);
}

// RAdam (torch.optim.RAdam) and Adam on one scalar with hand-computed steps.
TEST(Optim, RadamMatchesHandComputedSteps) {
  auto p = torch::tensor({1.0}, torch::kFloat64).requires_grad_(true);
  OptimizerOptions o;
  o.name = "radam";
  o.lr = 0.1;
  Optimizer opt({p}, o);
  const double b1 = 0.9, b2 = 0.999, eps = 1e-8, lr = 0.1;
  double m = 0, v = 0, x = 1.0;
  const double rho_inf = 2 / (1 - b2) - 1;
  for (int t = 1; t <= 8; ++t) {
    const double g = 2 * x;  // loss x^2
    p.mutable_grad() = torch::tensor({g}, torch::kFloat64);
    opt.step();
    m = b1 * m + (1 - b1) * g;
    v = b2 * v + (1 - b2) * g * g;
    const double mh = m / (1 - std::pow(b1, t));
    const double rho = rho_inf - 2 * t * std::pow(b2, t) / (1 - std::pow(b2, t));
    if (rho > 5) {
      const double r = std::sqrt((rho - 4) * (rho - 2) * rho_inf / ((rho_inf - 4) * (rho_inf - 2) * rho));
      x -= lr * mh * r * std::sqrt(1 - std::pow(b2, t)) / (std::sqrt(v) + eps);
    } else {
      x -= lr * mh;
    }
    ASSERT_NEAR(p.item<double>(), x, 1e-13) << "step " << t;
  }
  // Steps 1-5 are SGD with momentum (rho_t <= 5); step 6 is the first rectified one.
  EXPECT_EQ(opt.steps_taken(), 8);
}

TEST(Optim, AdamMatchesHandComputedSteps) {
  auto p = torch::tensor({0.5}, torch::kFloat64).requires_grad_(true);
  OptimizerOptions o;
  o.name = "adam";
  o.lr = 0.01;
  Optimizer opt({p}, o);
  double m = 0, v = 0, x = 0.5;
  for (int t = 1; t <= 5; ++t) {
    const double g = 3 * x * x;
    p.mutable_grad() = torch::tensor({g}, torch::kFloat64);
    opt.step();
    m = 0.9 * m + 0.1 * g;
    v = 0.999 * v + 0.001 * g * g;
    x -= 0.01 * (m / (1 - std::pow(0.9, t))) / (std::sqrt(v / (1 - std::pow(0.999, t))) + 1e-8);
    ASSERT_NEAR(p.item<double>(), x, 1e-13);
  }
}

TEST(Optim, StateRoundTrip) {
  auto p = torch::randn({3, 4}).requires_grad_(true);
  Optimizer a({p}, {});
  p.mutable_grad() = torch::ones_like(p);
  a.step();
  auto q = p.detach().clone().requires_grad_(true);
  Optimizer b({q}, {});
  b.load_state(a.state());
  p.mutable_grad() = torch::full_like(p, 0.5);
  q.mutable_grad() = torch::full_like(q, 0.5);
  a.step();
  b.step();
  EXPECT_TRUE(torch::equal(p, q));
}

// The exact denoiser of a single Gaussian N(m, s^2): D(x, sigma) = m + s^2 / (s^2 + sigma^2) (x - m).
TEST(Toy, ExactDenoiserOfOneGaussian) {
  GaussianMixture g;
  g.weights = torch::ones({1}, torch::kFloat64);
  g.means = torch::tensor({{0.3, -0.2}}, torch::kFloat64);
  g.stds = torch::tensor({0.1}, torch::kFloat64);
  auto x = torch::tensor({{1.0, 1.0}}, torch::kFloat64);
  auto d = g.denoise(x, torch::tensor({0.5}, torch::kFloat64));
  const double k = 0.01 / (0.01 + 0.25);
  EXPECT_NEAR(d[0][0].item<double>(), 0.3 + k * 0.7, 1e-12);
  EXPECT_NEAR(d[0][1].item<double>(), -0.2 + k * 1.2, 1e-12);
}

// The EDM Heun sampler with the exact denoiser reproduces the data distribution (this is the "teacher's
// many-step ODE samples" baseline of the quality tests).
TEST(Toy, ExactTeacherOdeSamplesMatchData) {
  auto mix = make_toy_mixture("ring");
  auto gen = cpu_generator(5);
  const int64_t n = 4000;
  auto data = mix.sample(n, gen);
  auto z = torch::randn({n, 2}, gen, torch::kFloat32);
  auto s = edm_heun_sample(mix.denoiser(), z, 40, NoiseRange{}, {});
  auto gen2 = cpu_generator(6);
  double floor = sliced_wasserstein(data, mix.sample(n, gen2));
  double swd = sliced_wasserstein(data, s);
  EXPECT_LT(swd, 2.5 * floor + 0.005) << "floor " << floor;
  EXPECT_GT(sliced_wasserstein(data, z * 0.5), 5 * floor);  // a wrong distribution is far
}

// Multistep sampling: the last level at sigma_min adds exactly no noise (sqrt(eps^2 - eps^2) = 0), and an
// intermediate level tau adds sqrt(tau^2 - eps^2) z.
TEST(Sampler, MultistepNoiseScales) {
  NoiseRange r;
  ConsistencyFn identity = [](const torch::Tensor& x, const torch::Tensor&, const torch::Tensor&) { return x; };
  auto gen = cpu_generator(3);
  auto z0 = torch::randn({5, 2}, gen, torch::kFloat64), z1 = torch::randn({5, 2}, gen, torch::kFloat64);
  auto noise = [&](int64_t i) { return i == 0 ? z0 : z1; };
  auto out = consistency_sample(identity, {r.sigma_max, r.sigma_min}, noise, r, {});
  EXPECT_TRUE(torch::equal(out, z0 * r.sigma_max));
  auto out2 = consistency_sample(identity, {r.sigma_max, 2.0}, noise, r, {});
  EXPECT_TRUE(torch::allclose(out2, z0 * r.sigma_max + std::sqrt(4.0 - r.sigma_min * r.sigma_min) * z1, 0, 1e-12));
  EXPECT_THROW(consistency_sample(identity, {2.0, 3.0}, noise, r, {}), std::invalid_argument);
}

// SHA-256 (core/io/sha256.h) on the FIPS 180-4 / NIST test vectors, fed in one piece and in odd pieces, and
// a file against coreutils' sha256sum.
TEST(Sha256, KnownVectorsStreamingAndFiles) {
  EXPECT_EQ(sha256_hex(""), "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
  EXPECT_EQ(sha256_hex("abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
  const std::string two_blocks = "abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq";
  EXPECT_EQ(sha256_hex(two_blocks), "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1");
  const std::string million(1000000, 'a');
  EXPECT_EQ(sha256_hex(million), "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0");
  Sha256 s;
  for (size_t i = 0, k = 1; i < million.size(); i += k, k = k % 97 + 13) s.update(million.data() + i, std::min(k, million.size() - i));
  EXPECT_EQ(s.hex_digest(), "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0");
  const std::string dir = cm::test::make_temp_dir("sha");
  std::string bytes;
  for (int64_t i = 0; i < 3000001; ++i) bytes += static_cast<char>((i * 7919) % 251);
  { std::ofstream(dir + "/f.bin", std::ios::binary) << bytes; }
  std::string out;
  ASSERT_EQ(cm::test::run_command("sha256sum " + dir + "/f.bin", &out), 0);
  EXPECT_EQ(sha256_file(dir + "/f.bin"), out.substr(0, 64));
  EXPECT_THROW(sha256_file(dir + "/missing"), std::runtime_error);
  std::filesystem::remove_all(dir);
}
