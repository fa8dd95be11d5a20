// Fréchet distance between Gaussian fits of feature sets (FID when the features are Inception pool_3),
// computed the way the reference evaluators do, in float64:
//   FID = |mu1 - mu2|^2 + tr(S1) + tr(S2) - 2 tr(sqrt(S1 S2)),   S = covariance with ddof = 1 (np.cov).
// tr(sqrt(S1 S2)) is the sum of the square roots of the eigenvalues of S1 S2, i.e. the sum of the singular
// values of sqrt(S1) sqrt(S2) (square roots from eigh, negative rounding clamped to 0). This is what
// scipy.linalg.sqrtm's trace gives for PSD inputs, without its failure modes: on near-singular inputs
// (fewer samples than dimensions) it stays finite where sqrtm needs the evaluator's eps * I retry.
#pragma once
#include <cstdint>
#include <torch/types.h>

namespace cm {

struct FeatureStats {
  torch::Tensor mu;     // [D] float64
  torch::Tensor sigma;  // [D, D] float64
  int64_t count = 0;    // features the statistics came from (0 when read from a file that does not say)
};

// Streaming mean and covariance of feature rows, accumulated in float64 (any batch size, any order of
// batches gives the same result up to float64 rounding).
class FeatureAccumulator {
 public:
  explicit FeatureAccumulator(int64_t dim);
  void add(const torch::Tensor& features);  // [B, D], any floating dtype, any device
  int64_t count() const { return n_; }
  // Mean and covariance (ddof = 1, as np.cov); needs at least 2 rows.
  FeatureStats stats() const;

 private:
  int64_t dim_, n_ = 0;
  torch::Tensor shift_;        // first row seen: sums are taken of (x - shift) for accuracy
  torch::Tensor sum_, outer_;  // float64 sum and sum of outer products of shifted rows
};

FeatureStats feature_stats(const torch::Tensor& features);  // [N, D] in one go

// tr(sqrt(S1 S2)) for symmetric positive semi-definite S1, S2 (float64).
double trace_sqrt_product(const torch::Tensor& s1, const torch::Tensor& s2);
// The Fréchet distance; throws naming the shapes when the dimensions differ.
double frechet_distance(const FeatureStats& a, const FeatureStats& b);

}  // namespace cm
