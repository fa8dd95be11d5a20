// Noise levels and schedules: the Karras grid, the CT curriculum N(k), mu(k) (reference-code form),
// the iCT exponential curriculum and its discretized lognormal index distribution.
#pragma once
#include <cstdint>
#include <vector>
#include <torch/types.h>

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

// CT curriculum of the consistency-models paper, in the form of the reference code
// (openai/consistency_models, create_ema_and_scales_fn, "adaptive"/"progressive"):
//   s(k)  = max(ceil(sqrt(k/K ((s1+1)^2 - s0^2) + s0^2) - 1), 1)
//   N(k)  = s(k) + 1
//   mu(k) = exp(s0 ln(mu0) / s(k))
// The paper writes mu(k) = exp(s0 ln(mu0) / N(k)); the reference divides by N(k) - 1, and it is the
// reference that produced the published numbers, so we follow it (at k = 0 with s0 = 2, mu0 = 0.9 the
// reference gives 0.81 where the paper's formula gives 0.9).
struct CtCurriculum {
  int64_t s0 = 2, s1 = 150, total_steps = 800000;
  double mu0 = 0.9;
  int64_t num_scales(int64_t k) const;  // N(k)
  double target_ema(int64_t k) const;   // mu(k)
};

// iCT exponential curriculum (Song & Dhariwal 2023): N(k) = min(s0 2^floor(k/K'), s1) + 1 with
// K' = floor(K / (log2(floor(s1/s0)) + 1)). The target is stopgrad(theta) (mu = 0).
struct IctCurriculum {
  int64_t s0 = 10, s1 = 1280, total_steps = 400000;
  int64_t steps_per_stage() const;      // K'
  int64_t num_scales(int64_t k) const;  // N(k)
};

// iCT's discretized lognormal over the N-1 adjacent pairs of a grid (ascending):
// p(i) ~ erf((ln t_{i+1} - P_mean)/(sqrt2 P_std)) - erf((ln t_i - P_mean)/(sqrt2 P_std)), i = 0..N-2.
std::vector<double> lognormal_pair_probs(const std::vector<double>& grid, double p_mean, double p_std);

// Broadcast a [B] tensor of per-sample scalars to x's rank ([B,1,1,1] for images).
torch::Tensor append_dims(const torch::Tensor& v, int64_t ndim);

}  // namespace cm
