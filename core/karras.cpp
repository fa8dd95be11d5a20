// Noise grids and curricula (see karras.h).
#include "core/karras.h"

#include <cmath>
#include <stdexcept>
#include <fmt/format.h>
#include <torch/torch.h>

namespace cm {

std::vector<double> karras_grid(int64_t n, const NoiseRange& r) {
  if (n < 2) throw std::invalid_argument(fmt::format("Karras grid needs N >= 2 points, got {}", n));
  const double a = std::pow(r.sigma_min, 1.0 / r.rho), b = std::pow(r.sigma_max, 1.0 / r.rho);
  std::vector<double> g(n);
  for (int64_t i = 0; i < n; ++i) g[i] = std::pow(a + static_cast<double>(i) / (n - 1) * (b - a), r.rho);
  // Pin the endpoints: pow(pow(x, 1/rho), rho) may differ from x in the last bit.
  g.front() = r.sigma_min;
  g.back() = r.sigma_max;
  return g;
}

torch::Tensor karras_grid_tensor(int64_t n, const NoiseRange& r) {
  auto g = karras_grid(n, r);
  return torch::tensor(g, torch::kFloat64);
}

std::vector<double> lognormal_pair_probs(const std::vector<double>& grid, double p_mean, double p_std) {
  std::vector<double> p(grid.size() - 1);
  double total = 0;
  for (size_t i = 0; i + 1 < grid.size(); ++i) {
    p[i] = std::erf((std::log(grid[i + 1]) - p_mean) / (std::sqrt(2.0) * p_std)) -
           std::erf((std::log(grid[i]) - p_mean) / (std::sqrt(2.0) * p_std));
    total += p[i];
  }
  for (auto& v : p) v /= total;
  return p;
}

torch::Tensor append_dims(const torch::Tensor& v, int64_t ndim) {
  std::vector<int64_t> shape = {v.size(0)};
  for (int64_t i = 1; i < ndim; ++i) shape.push_back(1);
  return v.reshape(shape);
}

}  // namespace cm
