// Optimizers with explicit, named state (so checkpoints hold them as plain tensors): Adam and RAdam
// (Liu et al. 2019, as torch.optim.RAdam computes it; LibTorch 1.13 has no RAdam). Constant learning
// rate, no weight decay, as in the paper's runs.
#pragma once
#include <memory>
#include <string>
#include <vector>
#include <torch/types.h>
#include "core/io/safetensors.h"

namespace cm {

struct OptimizerOptions {
  std::string name = "radam";  // "radam" | "adam"
  double lr = 1e-4;
  double beta1 = 0.9, beta2 = 0.999, eps = 1e-8;
};

class Optimizer {
 public:
  Optimizer(std::vector<torch::Tensor> params, OptimizerOptions opt);
  void step();  // uses each parameter's .grad (a missing grad is treated as zero but still counts a step)
  void zero_grad();
  int64_t steps_taken() const { return t_; }
  const OptimizerOptions& options() const { return opt_; }
  void set_lr(double lr) { opt_.lr = lr; }
  // "exp_avg.<i>", "exp_avg_sq.<i>" and "step" (int64 scalar).
  NamedTensors state() const;
  void load_state(const NamedTensors& state);  // throws on a missing or mis-shaped entry

 private:
  std::vector<torch::Tensor> params_;
  std::vector<torch::Tensor> m_, v_;
  OptimizerOptions opt_;
  int64_t t_ = 0;
};

}  // namespace cm
