// Noise levels: the Karras grid and iCT's discretized lognormal distribution over its pairs. The curricula
// N(k), mu(k) are in core/curriculum.h.
#pragma once
#include <cstdint>
#include <vector>
#include <torch/types.h>
#include "core/curriculum.h"  // the curricula N(k), mu(k) (they lived here before)

namespace cm {

// sigma range and data scale of the EDM / VE noise process (spec section 1).
struct NoiseRange {
  double sigma_min = 0.002;  // eps
  double sigma_max = 80.0;   // T
  double sigma_data = 0.5;
  double rho = 7.0;
};

// Karras grid of N >= 2 points, ascending: t_1 = sigma_min ... t_N = sigma_max (1-based in the spec,
// 0-based here: grid[0] = sigma_min). Computed in double.
std::vector<double> karras_grid(int64_t n, const NoiseRange& r);
torch::Tensor karras_grid_tensor(int64_t n, const NoiseRange& r);  // float64 [n]

// iCT's discretized lognormal over the N-1 adjacent pairs of a grid (ascending):
// p(i) ~ erf((ln t_{i+1} - P_mean)/(sqrt2 P_std)) - erf((ln t_i - P_mean)/(sqrt2 P_std)), i = 0..N-2.
std::vector<double> lognormal_pair_probs(const std::vector<double>& grid, double p_mean, double p_std);

// Broadcast a [B] tensor of per-sample scalars to x's rank ([B,1,1,1] for images).
torch::Tensor append_dims(const torch::Tensor& v, int64_t ndim);

}  // namespace cm
