// Distances (see distance.h).
#include "core/distance.h"

#include <cmath>
#include <fmt/format.h>
#include <stdexcept>
#include <torch/torch.h>

namespace cm {

Metric parse_metric(const std::string& s) {
  if (s == "l2") return Metric::L2;
  if (s == "l1") return Metric::L1;
  if (s == "pseudo_huber") return Metric::PseudoHuber;
  if (s == "lpips") return Metric::Lpips;
  throw std::invalid_argument(fmt::format("metric '{}' is not one of: l2, l1, pseudo_huber, lpips", s));
}

std::string to_string(Metric m) {
  switch (m) {
    case Metric::L2: return "l2";
    case Metric::L1: return "l1";
    case Metric::PseudoHuber: return "pseudo_huber";
    case Metric::Lpips: return "lpips";
  }
  return "?";
}

torch::Tensor l2_distance(const torch::Tensor& x, const torch::Tensor& y) {
  return (x - y).square().flatten(1).mean(1);
}

torch::Tensor l1_distance(const torch::Tensor& x, const torch::Tensor& y) { return (x - y).abs().flatten(1).mean(1); }

double pseudo_huber_c(int64_t dim) { return 0.00054 * std::sqrt(static_cast<double>(dim)); }

torch::Tensor pseudo_huber_distance(const torch::Tensor& x, const torch::Tensor& y) {
  const int64_t dim = x[0].numel();
  const double c = pseudo_huber_c(dim);
  return torch::sqrt((x - y).square().flatten(1).sum(1) + c * c) - c;
}

double sliced_wasserstein(const torch::Tensor& a, const torch::Tensor& b, int64_t projections, uint64_t seed) {
  if (a.dim() != 2 || b.dim() != 2 || a.sizes() != b.sizes())
    throw std::invalid_argument(fmt::format("sliced_wasserstein: need two [N, D] sets of equal size, got {} and {}",
                                            c10::str(a.sizes()), c10::str(b.sizes())));
  auto gen = at::make_generator<at::CPUGeneratorImpl>(seed);
  auto dirs = torch::randn({a.size(1), projections}, gen, torch::kFloat64);
  dirs = dirs / dirs.norm(2, 0, true);
  // [P, N] rows, so each sort runs over contiguous memory.
  auto pa = std::get<0>(torch::sort(dirs.t().matmul(a.to(torch::kCPU, torch::kFloat64).t()).contiguous(), 1));
  auto pb = std::get<0>(torch::sort(dirs.t().matmul(b.to(torch::kCPU, torch::kFloat64).t()).contiguous(), 1));
  return (pa - pb).abs().mean().item<double>();
}

}  // namespace cm
