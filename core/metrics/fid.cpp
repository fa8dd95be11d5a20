#include "core/metrics/fid.h"

#include <fmt/format.h>
#include <stdexcept>
#include <torch/torch.h>

namespace cm {

FeatureAccumulator::FeatureAccumulator(int64_t dim) : dim_(dim) {
  if (dim < 1) throw std::invalid_argument("FeatureAccumulator: dimension must be >= 1");
  sum_ = torch::zeros({dim}, torch::kFloat64);
  outer_ = torch::zeros({dim, dim}, torch::kFloat64);
}

void FeatureAccumulator::add(const torch::Tensor& features) {
  if (features.dim() != 2 || features.size(1) != dim_)
    throw std::invalid_argument(fmt::format("FeatureAccumulator: expected features [B, {}], got {}", dim_,
                                            c10::str(features.sizes())));
  if (features.size(0) == 0) return;
  auto x = features.detach().to(torch::kCPU, torch::kFloat64);
  if (!shift_.defined()) shift_ = x[0].clone();
  x = x - shift_;
  sum_ += x.sum(0);
  outer_ += x.t().mm(x);
  n_ += x.size(0);
}

FeatureStats FeatureAccumulator::stats() const {
  if (n_ < 2) throw std::runtime_error(fmt::format("feature statistics need at least 2 samples, got {}", n_));
  const double n = static_cast<double>(n_);
  auto mean_shifted = sum_ / n;
  FeatureStats s;
  s.mu = mean_shifted + shift_;
  s.sigma = (outer_ - n * torch::outer(mean_shifted, mean_shifted)) / (n - 1);
  s.sigma = (s.sigma + s.sigma.t()) / 2;  // exactly symmetric
  s.count = n_;
  return s;
}

FeatureStats feature_stats(const torch::Tensor& features) {
  FeatureAccumulator acc(features.size(1));
  acc.add(features);
  return acc.stats();
}

namespace {
// Symmetric square root of a symmetric PSD matrix through its eigendecomposition.
torch::Tensor sqrt_psd(const torch::Tensor& s) {
  auto [w, v] = torch::linalg::eigh((s + s.t()) / 2, "L");
  return (v * w.clamp_min(0).sqrt().unsqueeze(0)).mm(v.t());
}
}  // namespace

double trace_sqrt_product(const torch::Tensor& s1, const torch::Tensor& s2) {
  // Eigenvalues of S1 S2 = squared singular values of sqrt(S1) sqrt(S2), so the trace is their sum. Taking
  // singular values (not square roots of eigenvalues) keeps the rounding noise of the zero directions of
  // rank-deficient covariances linear instead of square-rooted.
  auto a1 = sqrt_psd(s1.to(torch::kFloat64)), a2 = sqrt_psd(s2.to(torch::kFloat64));
  return torch::linalg_svdvals(a1.mm(a2)).sum().item<double>();
}

double frechet_distance(const FeatureStats& a, const FeatureStats& b) {
  if (a.mu.dim() != 1 || b.mu.dim() != 1 || a.mu.size(0) != b.mu.size(0) || a.sigma.sizes() != b.sigma.sizes() ||
      a.sigma.dim() != 2 || a.sigma.size(0) != a.mu.size(0) || a.sigma.size(1) != a.mu.size(0))
    throw std::invalid_argument(fmt::format("Fréchet distance of statistics with different shapes: mu {} / {}, sigma {} / {}",
                                            c10::str(a.mu.sizes()), c10::str(b.mu.sizes()), c10::str(a.sigma.sizes()),
                                            c10::str(b.sigma.sizes())));
  auto s1 = a.sigma.to(torch::kFloat64), s2 = b.sigma.to(torch::kFloat64);
  const double mean_term = (a.mu.to(torch::kFloat64) - b.mu.to(torch::kFloat64)).square().sum().item<double>();
  return mean_term + s1.trace().item<double>() + s2.trace().item<double>() - 2 * trace_sqrt_product(s1, s2);
}

}  // namespace cm
