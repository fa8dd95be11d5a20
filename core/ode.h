// One step of the probability-flow ODE dx/dt = (x - D(x, t)) / t with a denoiser: Euler and Heun
// (the teacher step of consistency distillation, spec section 3), and EDM's deterministic Heun sampler.
#pragma once
#include <string>
#include <torch/types.h>
#include "core/karras.h"
#include "core/parameterization.h"

namespace cm {

enum class Solver { Euler, Heun };
Solver parse_solver(const std::string& s);

// From x at t_from[B] to t_to[B] (t_to > 0 for Heun; Euler allows t_to = 0).
torch::Tensor euler_step(const DenoiserFn& d, const torch::Tensor& x, const torch::Tensor& t_from,
                         const torch::Tensor& t_to, const torch::Tensor& labels);
torch::Tensor heun_step(const DenoiserFn& d, const torch::Tensor& x, const torch::Tensor& t_from,
                        const torch::Tensor& t_to, const torch::Tensor& labels);
torch::Tensor ode_step(Solver s, const DenoiserFn& d, const torch::Tensor& x, const torch::Tensor& t_from,
                       const torch::Tensor& t_to, const torch::Tensor& labels);

// EDM's deterministic sampler: x_T = T z, Heun steps down an N-point Karras grid, a last Euler step to 0.
// 2N - 1 denoiser evaluations. `z` is standard normal noise of the output shape.
torch::Tensor edm_heun_sample(const DenoiserFn& d, const torch::Tensor& z, int64_t n, const NoiseRange& r,
                              const torch::Tensor& labels);

}  // namespace cm
