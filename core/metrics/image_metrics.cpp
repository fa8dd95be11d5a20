// Inception Score and improved precision / recall (see image_metrics.h).
#include "core/metrics/image_metrics.h"

#include <cmath>
#include <fmt/format.h>
#include <stdexcept>
#include <torch/torch.h>

namespace cm {

InceptionScore inception_score(const torch::Tensor& probs, int64_t splits) {
  if (probs.dim() != 2 || probs.size(0) < splits || splits < 1)
    throw std::invalid_argument(fmt::format("inception_score: need [N, K] probabilities with N >= splits = {}, got {}", splits,
                                            c10::str(probs.sizes())));
  const torch::Tensor p = probs.to(torch::kFloat64);
  const int64_t n = p.size(0);
  std::vector<double> scores;
  for (int64_t i = 0; i < splits; ++i) {
    // The parts of StyleGAN3's metric: rows [i N / s, (i + 1) N / s).
    const int64_t b = i * n / splits, e = (i + 1) * n / splits;
    auto part = p.narrow(0, b, e - b);
    auto py = part.mean(0, /*keepdim=*/true);
    // xlogy form: rows with p = 0 contribute 0 (the reference formula would give NaN there).
    auto kl = torch::where(part > 0, part * (torch::log(part) - torch::log(py)), torch::zeros_like(part)).sum(1).mean();
    scores.push_back(std::exp(kl.item<double>()));
  }
  InceptionScore s;
  s.splits = splits;
  for (double v : scores) s.mean += v / static_cast<double>(splits);
  for (double v : scores) s.std += (v - s.mean) * (v - s.mean) / static_cast<double>(splits);  // np.std: ddof 0
  s.std = std::sqrt(s.std);
  return s;
}

namespace {

// Squared Euclidean distances [a, b] between the rows of u and v, clamped at 0, float32 (the evaluator's form
// |u|^2 - 2 u.v + |v|^2).
torch::Tensor pairwise_sq(const torch::Tensor& u, const torch::Tensor& v) {
  auto nu = (u * u).sum(1, /*keepdim=*/true), nv = (v * v).sum(1).unsqueeze(0);
  return (nu - 2 * torch::mm(u, v.t()) + nv).clamp_min(0);
}

torch::Tensor as_features(const torch::Tensor& x, const char* what) {
  if (x.dim() != 2) throw std::invalid_argument(fmt::format("precision/recall: {} features must be [N, D], got {}", what, c10::str(x.sizes())));
  return x.to(torch::kFloat32).contiguous();
}

}  // namespace

torch::Tensor manifold_radii(const torch::Tensor& features, int64_t k, int64_t block) {
  const torch::Tensor x = as_features(features, "the");
  const int64_t n = x.size(0);
  if (n < k + 1) throw std::invalid_argument(fmt::format("manifold radii need more than k = {} points, got {}", k, n));
  auto radii = torch::empty({n}, x.options());
  torch::NoGradGuard ng;
  for (int64_t rb = 0; rb < n; rb += block) {
    const auto rows = x.narrow(0, rb, std::min(block, n - rb));
    torch::Tensor best;  // the k + 1 smallest distances of each row so far, ascending
    for (int64_t cb = 0; cb < n; cb += block) {
      auto d = pairwise_sq(rows, x.narrow(0, cb, std::min(block, n - cb)));
      auto cand = best.defined() ? torch::cat({best, d}, 1) : d;
      best = std::get<0>(torch::topk(cand, std::min<int64_t>(k + 1, cand.size(1)), 1, /*largest=*/false, /*sorted=*/true));
    }
    radii.narrow(0, rb, rows.size(0)).copy_(best.select(1, k));
  }
  return radii;
}

PrecisionRecall precision_recall(const torch::Tensor& ref_features, const torch::Tensor& sample_features, int64_t k, int64_t block) {
  const torch::Tensor ref = as_features(ref_features, "reference"), smp = as_features(sample_features, "sample");
  if (ref.size(1) != smp.size(1))
    throw std::invalid_argument(fmt::format("precision/recall: reference features have {} dimensions, samples {}", ref.size(1), smp.size(1)));
  const auto r_ref = manifold_radii(ref, k, block), r_smp = manifold_radii(smp, k, block);
  auto smp_in = torch::zeros({smp.size(0)}, ref.options().dtype(torch::kBool));
  auto ref_in = torch::zeros({ref.size(0)}, ref.options().dtype(torch::kBool));
  torch::NoGradGuard ng;
  for (int64_t sb = 0; sb < smp.size(0); sb += block) {
    const int64_t ns = std::min(block, smp.size(0) - sb);
    for (int64_t rb = 0; rb < ref.size(0); rb += block) {
      const int64_t nr = std::min(block, ref.size(0) - rb);
      auto d = pairwise_sq(smp.narrow(0, sb, ns), ref.narrow(0, rb, nr));  // [ns, nr]
      smp_in.narrow(0, sb, ns).logical_or_((d <= r_ref.narrow(0, rb, nr).unsqueeze(0)).any(1));
      ref_in.narrow(0, rb, nr).logical_or_((d <= r_smp.narrow(0, sb, ns).unsqueeze(1)).any(0));
    }
  }
  PrecisionRecall pr;
  pr.precision = smp_in.to(torch::kFloat64).mean().item<double>();
  pr.recall = ref_in.to(torch::kFloat64).mean().item<double>();
  return pr;
}

}  // namespace cm
