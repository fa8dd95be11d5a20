// The objective contract of the training engine (core/engine.h): a loss per micro-batch, the schedule
// values at a step, and the networks it trains and uses. The objectives themselves (EDM, and the
// consistency family CD / CT / iCT composed from recipes/methods.h) are in recipes/objectives.h.
#pragma once
#include <cstdint>
#include <map>
#include <string>
#include <vector>
#include <torch/types.h>
#include "core/data.h"
#include "core/network.h"
#include "core/parameterization.h"
#include "core/rng.h"

namespace cm {

// What one loss evaluation needs to know about where it runs. `rows` are this micro-batch's rows of the
// global batch: random draws are made row by row from (seed, step, global row), so they do not depend on
// the world size or the micro-batching.
struct StepInfo {
  int64_t step = 0;
  int64_t rank = 0;
  uint64_t seed = 0;
  torch::Device device = torch::kCPU;
  Slice rows;
};

class Objective {
 public:
  virtual ~Objective() = default;
  // Mean loss over the micro-batch (the gradient synchronisation averages over ranks and micro-batches).
  virtual torch::Tensor loss(const Batch& b, const StepInfo& s) = 0;
  // Schedule values at step k for logs and `cm schedule` (e.g. N, mu).
  virtual std::map<std::string, double> schedule(int64_t step) const { return {}; }
  // The target theta- when it is a network of its own (its parameters are an EMA of the student's,
  // updated by the run's EmaSet, core/ema.h), else null (no target, or theta- = stopgrad(theta)).
  virtual NetworkPtr target() const { return nullptr; }
  // mu(k): the target's EMA rate after optimizer step k.
  virtual double target_ema(int64_t step) const { return 0.0; }

  // Every network the objective uses (student, and target, teacher, LPIPS where it has them).
  virtual std::vector<torch::nn::Module*> networks() const { return {student_.get()}; }
  // Moves them all to the device.
  void to(torch::Device d) {
    for (auto* m : networks()) m->to(d);
  }
  // train.channels_last: the convolution weights of all of them in channels-last layout (core/network.h
  // to_channels_last); before the optimizer, the EMAs and the gradient buckets are made.
  void to_channels_last() {
    for (auto* m : networks()) cm::to_channels_last(*m);
  }

  NetworkPtr student() const { return student_; }
  const Preconditioning& precond() const { return precond_; }

  // Draws supplied instead of made from (seed, step), for tests against the reference code (consistency
  // objectives): the noise z ([rows, ...] like the batch) and the pair index n ([rows] int64, 0-based from
  // sigma_min up: the pair (t_n, t_{n+1}) of the step's grid). Used by every loss() until reset with
  // undefined tensors. t_lo / t_hi ([rows], optional) replace the pair's noise levels t_n, t_{n+1} (the
  // reference code computes its grid in float32).
  void inject_draws(torch::Tensor noise, torch::Tensor pair_index, torch::Tensor t_lo = {}, torch::Tensor t_hi = {}) {
    injected_noise_ = std::move(noise);
    injected_index_ = std::move(pair_index);
    injected_t_lo_ = std::move(t_lo);
    injected_t_hi_ = std::move(t_hi);
  }

 protected:
  torch::Tensor injected_noise_, injected_index_, injected_t_lo_, injected_t_hi_;
  NetworkPtr student_;
  Preconditioning precond_;
};

}  // namespace cm
