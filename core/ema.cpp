// EMAs (see ema.h).
#include "core/ema.h"

#include <fmt/format.h>
#include <torch/torch.h>

namespace cm {

void ema_update(const std::vector<torch::Tensor>& ema, const std::vector<torch::Tensor>& params, double rate) {
  torch::NoGradGuard ng;
  for (size_t i = 0; i < ema.size(); ++i) {
    if (rate == 0.0) ema[i].copy_(params[i]);
    else ema[i].mul_(rate).add_(params[i].detach(), 1.0 - rate);
  }
}

void copy_params(const std::vector<torch::Tensor>& dst, const std::vector<torch::Tensor>& src) {
  torch::NoGradGuard ng;
  for (size_t i = 0; i < dst.size(); ++i) dst[i].copy_(src[i]);
}

std::vector<torch::Tensor> clone_params(const std::vector<torch::Tensor>& src) {
  std::vector<torch::Tensor> out;
  for (auto& p : src) out.push_back(p.detach().clone());
  return out;
}

SamplingEmas::SamplingEmas(const std::vector<double>& rates, const std::vector<torch::Tensor>& params) : rates_(rates) {
  for (size_t i = 0; i < rates.size(); ++i) emas_.push_back(clone_params(params));
}

void SamplingEmas::update(const std::vector<torch::Tensor>& params) {
  for (size_t i = 0; i < rates_.size(); ++i) ema_update(emas_[i], params, rates_[i]);
}

std::string SamplingEmas::rate_name(double rate) {
  for (int digits = 1; digits <= 17; ++digits) {
    std::string s = fmt::format("{:.{}g}", rate, digits);
    if (std::stod(s) == rate) return s;
  }
  return fmt::format("{:.17g}", rate);
}

}  // namespace cm
