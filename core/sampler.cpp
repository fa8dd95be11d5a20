// Samplers (see sampler.h).
#include "core/sampler.h"

#include <cmath>
#include <fmt/format.h>
#include <stdexcept>
#include <torch/torch.h>

namespace cm {

std::vector<double> ts_to_sigmas(const std::vector<int64_t>& ts, int64_t n, const NoiseRange& r) {
  if (n < 2) throw std::invalid_argument(fmt::format("ts need a grid of N >= 2 points, got N = {}", n));
  const double a = std::pow(r.sigma_max, 1.0 / r.rho), b = std::pow(r.sigma_min, 1.0 / r.rho);
  std::vector<double> out;
  for (auto i : ts) {
    if (i < 0 || i >= n) throw std::invalid_argument(fmt::format("ts index {} is outside the {}-point grid [0, {}]", i, n, n - 1));
    // The ends exactly: pow(pow(eps, 1/rho), rho) may round above eps, and then a multistep chain ending
    // at index N-1 would add sqrt(sigma^2 - eps^2) ~ 1e-11 of noise instead of none.
    double t = i == 0 ? r.sigma_max : i == n - 1 ? r.sigma_min : std::pow(a + static_cast<double>(i) / (n - 1) * (b - a), r.rho);
    out.push_back(std::clamp(t, r.sigma_min, r.sigma_max));
  }
  return out;
}

ConsistencyFn consistency_fn(NetworkPtr net, Preconditioning p) {
  p.kind = Preconditioning::Consistency;
  return [net, p](const torch::Tensor& x, const torch::Tensor& t, const torch::Tensor& labels) {
    return precondition(*net, p, x, t, labels);
  };
}

torch::Tensor consistency_sample(const ConsistencyFn& f, const std::vector<double>& sigmas,
                                 const std::function<torch::Tensor(int64_t)>& noise, const NoiseRange& r,
                                 const torch::Tensor& labels) {
  if (sigmas.empty()) throw std::invalid_argument("consistency_sample: no noise levels given");
  for (size_t i = 1; i < sigmas.size(); ++i)
    if (!(sigmas[i] < sigmas[i - 1]))
      throw std::invalid_argument(fmt::format("consistency_sample: noise levels must decrease, got {} after {}",
                                              sigmas[i], sigmas[i - 1]));
  torch::NoGradGuard ng;
  auto z = noise(0);
  const int64_t b = z.size(0);
  auto x = f(z * sigmas[0], torch::full({b}, sigmas[0], z.options()), labels);
  for (size_t i = 1; i < sigmas.size(); ++i) {
    // At sigma = eps the added noise is exactly zero: sqrt(eps^2 - eps^2).
    const double scale = std::sqrt(std::max(0.0, sigmas[i] * sigmas[i] - r.sigma_min * r.sigma_min));
    auto xt = x + scale * noise(static_cast<int64_t>(i));
    x = f(xt, torch::full({b}, sigmas[i], z.options()), labels);
  }
  return x;
}

}  // namespace cm
