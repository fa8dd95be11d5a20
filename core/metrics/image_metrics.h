// Sample-quality metrics on feature vectors, besides FID (core/metrics/fid.h), as the reference evaluators compute them:
//  - Inception Score (Salimans et al. 2016; StyleGAN3's metrics/inception_score.py, the guided-diffusion
//    evaluator): the N class-probability rows split into `splits` consecutive parts, per part
//    exp(mean_i KL(p(y|x_i) || mean_j p(y|x_j))); the mean and (population) standard deviation over parts.
//  - Improved precision and recall (Kynkaanniemi et al. 2019, guided-diffusion evaluations/evaluator.py's
//    ManifoldEstimator): each set's manifold is the union of balls around its points whose radius is the
//    distance to the k-th nearest neighbour in the same set (k = 3; the point itself counts as the 0th);
//    precision = fraction of sample points inside the reference manifold, recall = fraction of reference
//    points inside the sample manifold. Distances are squared Euclidean, in float32, computed in blocks of
//    `block` x `block` so 50k x 50k sets need a few hundred MB, not 10 GB.
#pragma once
#include <cstdint>
#include <torch/types.h>

namespace cm {

struct InceptionScore {
  double mean = 0, std = 0;
  int64_t splits = 0;
};
// probs: [N, K] rows of class probabilities (any floating dtype; computed in float64). 0 * log 0 = 0.
InceptionScore inception_score(const torch::Tensor& probs, int64_t splits = 10);

// Squared distance of every row of `x` to its k-th nearest row of `x` (itself included as the 0th). [N] float32.
torch::Tensor manifold_radii(const torch::Tensor& x, int64_t k = 3, int64_t block = 10000);

struct PrecisionRecall {
  double precision = 0, recall = 0;
};
PrecisionRecall precision_recall(const torch::Tensor& ref, const torch::Tensor& samples, int64_t k = 3, int64_t block = 10000);

}  // namespace cm
