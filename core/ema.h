// Exponential moving averages of parameters: the target network theta- (rate mu(k)) and the sampling
// EMAs (fixed rates). Updated locally on every rank with the same ops from identical parameters, so they
// stay bit-identical across ranks without communication.
#pragma once
#include <string>
#include <vector>
#include <torch/types.h>
#include "core/safetensors.h"

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

}  // namespace cm
