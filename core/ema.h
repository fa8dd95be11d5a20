// Exponential moving averages of parameters: the target network theta- (rate mu(k)) and the sampling
// EMAs (fixed rates), owned together by a run's EmaSet. Updated locally on every rank with the same ops from identical parameters, so they
// stay bit-identical across ranks without communication.
#pragma once
#include <functional>
#include <string>
#include <vector>
#include <torch/types.h>
#include "core/network.h"
#include "core/io/safetensors.h"
#include "core/train_state.h"

namespace cm {

// ema <- rate * ema + (1 - rate) * param, in place, without gradient. rate = 0 copies.
void ema_update(const std::vector<torch::Tensor>& ema, const std::vector<torch::Tensor>& params, double rate);
void copy_params(const std::vector<torch::Tensor>& dst, const std::vector<torch::Tensor>& src);
std::vector<torch::Tensor> clone_params(const std::vector<torch::Tensor>& src);

// One sampling EMA per rate; names "ema_<rate>" as the reference code's files (ema_0.9999_...).
class SamplingEmas {
 public:
  SamplingEmas(const std::vector<double>& rates, const std::vector<torch::Tensor>& params);
  void update(const std::vector<torch::Tensor>& params);
  const std::vector<double>& rates() const { return rates_; }
  const std::vector<torch::Tensor>& weights(size_t i) const { return emas_.at(i); }
  std::vector<torch::Tensor>& mutable_weights(size_t i) { return emas_.at(i); }
  static std::string rate_name(double rate);  // "0.9999" with enough digits to be exact

 private:
  std::vector<double> rates_;
  std::vector<std::vector<torch::Tensor>> emas_;
};

// "ema_0.9999.safetensors": a sampling EMA's file in checkpoints and run directories.
std::string ema_file_name(double rate);
// The student's layout (its state-dict names and order, parameters and buffers as PyTorch interleaves them)
// with an EMA's values for the parameters, matched by identity: what an EMA file holds, so `cm sample
// --weights` reads it like a model file.
NamedTensors ema_state(const torch::nn::Module& student, const std::vector<torch::Tensor>& ema);

// Every moving average of a run, with one owner: the target theta- when it is a network of its own (rate
// mu(k), from the objective) and the sampling EMAs (fixed rates, train.ema_rates). As a part of the
// training state it writes objective.safetensors ("target.*") and one ema_<rate>.safetensors each.
class EmaSet : public StatePart {
 public:
  // target: null when theta- = stopgrad(theta) (iCT) or there is none (EDM); target_rate(k) = mu(k).
  EmaSet(NetworkPtr student, NetworkPtr target, std::function<double(int64_t)> target_rate, const std::vector<double>& sampling_rates);
  // After optimizer step `step`: theta- <- mu(step) theta- + (1 - mu(step)) theta, then every sampling EMA.
  void update(int64_t step);
  // theta- <- theta exactly (after rank 0's parameters were broadcast to every rank).
  void reset_target();
  NetworkPtr target() const { return target_; }
  SamplingEmas& sampling() { return sampling_; }
  const SamplingEmas& sampling() const { return sampling_; }
  // "target.<name>" for every tensor of theta- (parameters and buffers); empty without a target network.
  NamedTensors target_state() const;

  std::vector<StateFile> files() const override;
  std::vector<std::pair<std::string, std::string>> json_members() const override;
  void restore(const StateReader& r) override;

 private:
  static bool restore_positional_layout(const NamedTensors& entries, std::vector<torch::Tensor>& weights, const TensorFile& f);
  NetworkPtr student_, target_;
  std::function<double(int64_t)> target_rate_;
  SamplingEmas sampling_;
};

}  // namespace cm
