// Consistency-model samplers (spec section 8): one step f(T z, T), and multistep (paper Algorithm 1)
// with intermediate noise levels given as sigmas or as indices ts into an N-point Karras grid.
#pragma once
#include <functional>
#include <vector>
#include <torch/types.h>
#include "core/parameterization.h"

namespace cm {

// The reference CLI's ts: indices into an N-point grid counted from sigma_max downwards (ts = 0 is T).
std::vector<double> ts_to_sigmas(const std::vector<int64_t>& ts, int64_t n, const NoiseRange& r);

// f(x, t) as a function (a preconditioned network, or anything else with the same contract).
using ConsistencyFn = std::function<torch::Tensor(const torch::Tensor& x, const torch::Tensor& t, const torch::Tensor& labels)>;
ConsistencyFn consistency_fn(NetworkPtr net, Preconditioning p);

// x = f(T z0, T); then for each sigma in `sigmas` after the first (which must be T):
// x = f(x + sqrt(sigma^2 - eps^2) z_i, sigma). `noise(i)` returns the standard normal z_i for step i
// (i = 0 is the initial noise) shaped like the output. Sigmas must be decreasing.
torch::Tensor consistency_sample(const ConsistencyFn& f, const std::vector<double>& sigmas,
                                 const std::function<torch::Tensor(int64_t)>& noise, const NoiseRange& r,
                                 const torch::Tensor& labels);

}  // namespace cm
