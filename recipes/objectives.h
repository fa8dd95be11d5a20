// Training objectives: EDM (denoising score matching, to make teachers), and the consistency family
// CD / CT / iCT (spec sections 3-5). An objective owns the student network and its target theta-.
#pragma once
#include <map>
#include <memory>
#include <string>
#include <torch/types.h>
#include "core/parameterization.h"
#include "core/rng.h"
#include "core/safetensors.h"
#include "datasets/dataset.h"
#include "recipes/recipe.h"

namespace cm {

// What one loss evaluation needs to know about where it runs. `rows` are this micro-batch's rows of the
// global batch: random draws are made for the whole global batch from (seed, step) and sliced (rng.h).
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
  // Mean loss over the micro-batch (the reducer averages over ranks and micro-batches).
  virtual torch::Tensor loss(const Batch& b, const StepInfo& s) = 0;
  // After the optimizer step: target EMA theta- <- mu(k) theta- + (1 - mu(k)) theta.
  virtual void after_step(int64_t step) {}
  // Schedule values at step k for logs and `cm schedule` (e.g. N, mu).
  virtual std::map<std::string, double> schedule(int64_t step) const { return {}; }
  // Tensors beyond the student that a checkpoint must hold (the target network).
  virtual NamedTensors state() const { return {}; }
  virtual void load_state(const NamedTensors&) {}

  // Moves every network the objective owns (student, target, teacher) to the device.
  virtual void to(torch::Device d) { student_->to(d); }

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

// Everything an objective may need besides the recipe: the data's exact denoiser (toys) for CD with
// teacher = "exact", and a factory for networks of the recipe's architecture.
struct ObjectiveDeps {
  ModelShape shape;
  DenoiserFn exact_denoiser;  // may be empty
  // Builds a network of the recipe's architecture; empty = build_network(recipe, shape). Lets a caller
  // supply its own network (tests use a probe that records dropout masks).
  std::function<NetworkPtr()> network_factory;
};

std::unique_ptr<Objective> make_objective(const Recipe& r, const ObjectiveDeps& deps);

// Loads a safetensors file or a PyTorch .pt state dict into the network (names and shapes must match
// exactly; the error lists every missing, unexpected and mis-shaped tensor). See core/weights.h.
void load_network_weights(torch::nn::Module& net, const std::string& path);
// The network's parameters and buffers by name, in PyTorch's state-dict order.
NamedTensors network_state(torch::nn::Module& net);

}  // namespace cm
