// Probability-flow ODE steps (see ode.h).
#include "core/ode.h"

#include <fmt/format.h>
#include <stdexcept>
#include <torch/torch.h>

namespace cm {

Solver parse_solver(const std::string& s) {
  if (s == "euler") return Solver::Euler;
  if (s == "heun") return Solver::Heun;
  throw std::invalid_argument(fmt::format("solver '{}' is not one of: euler, heun", s));
}

torch::Tensor euler_step(const DenoiserFn& d, const torch::Tensor& x, const torch::Tensor& t_from,
                         const torch::Tensor& t_to, const torch::Tensor& labels) {
  const int64_t nd = x.dim();
  auto tf = append_dims(t_from.to(x.scalar_type()), nd), tt = append_dims(t_to.to(x.scalar_type()), nd);
  auto slope = (x - d(x, t_from, labels)) / tf;
  return x + (tt - tf) * slope;
}

torch::Tensor heun_step(const DenoiserFn& d, const torch::Tensor& x, const torch::Tensor& t_from,
                        const torch::Tensor& t_to, const torch::Tensor& labels) {
  const int64_t nd = x.dim();
  auto tf = append_dims(t_from.to(x.scalar_type()), nd), tt = append_dims(t_to.to(x.scalar_type()), nd);
  auto slope = (x - d(x, t_from, labels)) / tf;
  auto x_euler = x + (tt - tf) * slope;
  auto slope2 = (x_euler - d(x_euler, t_to, labels)) / tt;
  return x + (tt - tf) * (slope + slope2) * 0.5;
}

torch::Tensor ode_step(Solver s, const DenoiserFn& d, const torch::Tensor& x, const torch::Tensor& t_from,
                       const torch::Tensor& t_to, const torch::Tensor& labels) {
  return s == Solver::Heun ? heun_step(d, x, t_from, t_to, labels) : euler_step(d, x, t_from, t_to, labels);
}

torch::Tensor edm_heun_sample(const DenoiserFn& d, const torch::Tensor& z, int64_t n, const NoiseRange& r,
                              const torch::Tensor& labels) {
  auto grid = karras_grid(n, r);
  const int64_t b = z.size(0);
  auto opts = z.options();
  auto x = z * r.sigma_max;
  for (int64_t i = n - 1; i >= 0; --i) {
    auto t_from = torch::full({b}, grid[i], opts);
    if (i == 0) {
      x = euler_step(d, x, t_from, torch::zeros({b}, opts), labels);
    } else {
      x = heun_step(d, x, t_from, torch::full({b}, grid[i - 1], opts), labels);
    }
  }
  return x;
}

}  // namespace cm
