// Per-sample distances d(x, y) of the consistency losses (spec section 6), and the sliced Wasserstein
// distance used to judge toy samples.
#pragma once
#include <string>
#include <torch/types.h>

namespace cm {

enum class Metric { L2, L1, PseudoHuber, Lpips };
Metric parse_metric(const std::string& s);  // "l2", "l1", "pseudo_huber", "lpips"
std::string to_string(Metric m);

// [B] distances over all non-batch dims: l2 = mean squared, l1 = mean absolute,
// pseudo-Huber = sqrt(||x - y||^2 + c^2) - c with c = 0.00054 sqrt(dim) (iCT).
torch::Tensor l2_distance(const torch::Tensor& x, const torch::Tensor& y);
torch::Tensor l1_distance(const torch::Tensor& x, const torch::Tensor& y);
torch::Tensor pseudo_huber_distance(const torch::Tensor& x, const torch::Tensor& y);
double pseudo_huber_c(int64_t dim);

// Sliced Wasserstein-1 between two point sets of equal size [N, D]: mean over `projections` random unit
// directions of the mean absolute difference of the sorted projections. Deterministic given `seed`.
double sliced_wasserstein(const torch::Tensor& a, const torch::Tensor& b, int64_t projections = 256, uint64_t seed = 0);

}  // namespace cm
