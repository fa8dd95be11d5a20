// Toy Gaussian mixtures and their exact denoiser (see toy2d.h).
#include "datasets/toy2d.h"

#include <cmath>
#include <fmt/format.h>
#include <stdexcept>
#include <torch/torch.h>
#include "core/karras.h"
#include "core/rng.h"
#include "core/rng_streams.h"

namespace cm {

torch::Tensor GaussianMixture::sample(int64_t n, torch::Generator& gen) const {
  auto k = torch::multinomial(weights, n, /*replacement=*/true, gen);
  auto z = torch::randn({n, means.size(1)}, gen, torch::kFloat64);
  return (means.index_select(0, k) + stds.index_select(0, k).unsqueeze(1) * z).to(torch::kFloat32);
}

torch::Tensor GaussianMixture::denoise(const torch::Tensor& x_in, const torch::Tensor& sigma_in) const {
  auto dev = x_in.device();
  auto x = x_in.to(torch::kCPU, torch::kFloat64);                       // [B, D]
  auto sigma = sigma_in.to(torch::kCPU, torch::kFloat64).reshape({-1, 1});  // [B, 1]
  const double d = static_cast<double>(means.size(1));
  auto var = stds.square().unsqueeze(0) + sigma.square();               // [B, K]
  auto diff = x.unsqueeze(1) - means.unsqueeze(0);                      // [B, K, D]
  auto sq = diff.square().sum(2);                                       // [B, K]
  auto logp = torch::log(weights).unsqueeze(0) - 0.5 * sq / var - 0.5 * d * torch::log(var);
  auto r = torch::softmax(logp, 1);                                     // [B, K]
  auto shrink = (stds.square().unsqueeze(0) / var).unsqueeze(2);        // [B, K, 1]
  auto post_means = means.unsqueeze(0) + shrink * diff;                 // [B, K, D]
  auto out = (r.unsqueeze(2) * post_means).sum(1);
  return out.to(dev, x_in.scalar_type());
}

DenoiserFn GaussianMixture::denoiser() const {
  GaussianMixture self = *this;
  return [self](const torch::Tensor& x, const torch::Tensor& sigma, const torch::Tensor&) { return self.denoise(x, sigma); };
}

std::vector<std::string> toy_names() { return {"ring", "moons", "grid"}; }

GaussianMixture make_toy_mixture(const std::string& name) {
  std::vector<double> mx, my, sd;
  if (name == "ring") {
    for (int k = 0; k < 8; ++k) {
      const double a = 2 * M_PI * k / 8;
      mx.push_back(0.7 * std::cos(a)), my.push_back(0.7 * std::sin(a)), sd.push_back(0.05);
    }
  } else if (name == "moons") {
    for (int k = 0; k < 32; ++k) {
      const double a = M_PI * k / 31;
      mx.push_back(0.6 * std::cos(a) - 0.3), my.push_back(0.6 * std::sin(a) - 0.15), sd.push_back(0.035);
      mx.push_back(0.3 - 0.6 * std::cos(a)), my.push_back(0.15 - 0.6 * std::sin(a)), sd.push_back(0.035);
    }
  } else if (name == "grid") {
    for (int i = 0; i < 5; ++i)
      for (int j = 0; j < 5; ++j) mx.push_back(-0.8 + 0.4 * i), my.push_back(-0.8 + 0.4 * j), sd.push_back(0.04);
  } else {
    throw std::invalid_argument(fmt::format("unknown toy distribution '{}' (known: ring, moons, grid)", name));
  }
  GaussianMixture g;
  const int64_t k = static_cast<int64_t>(mx.size());
  g.means = torch::stack({torch::tensor(mx, torch::kFloat64), torch::tensor(my, torch::kFloat64)}, 1);
  g.stds = torch::tensor(sd, torch::kFloat64);
  g.weights = torch::full({k}, 1.0 / k, torch::kFloat64);
  return g;
}

ToySource::ToySource(GaussianMixture mix, std::string name, int64_t global_batch, int64_t rank, int64_t world, uint64_t seed)
    : mix_(std::move(mix)), name_(std::move(name)), global_batch_(global_batch), rank_(rank), world_(world), seed_(seed) {
  if (global_batch % world != 0)
    throw std::invalid_argument(fmt::format("global batch {} does not divide over {} ranks", global_batch, world));
}

Batch ToySource::next() {
  auto gen = cpu_generator(derive_seed(seed_, rng_stream::kToyData, static_cast<uint64_t>(cursor_.batches_total)));
  auto all = mix_.sample(global_batch_, gen);
  const int64_t per = global_batch_ / world_;
  ++cursor_.batches_total;
  ++cursor_.batch_in_epoch;
  return Batch{all.narrow(0, rank_ * per, per).contiguous(), torch::Tensor()};
}

ModelShape ToySource::shape() const {
  ModelShape s;
  s.channels = mix_.means.size(1);
  return s;
}

std::string ToySource::describe() const {
  return fmt::format("toy '{}' ({} Gaussians in {}-D), global batch {}", name_, mix_.means.size(0), mix_.means.size(1), global_batch_);
}

}  // namespace cm
