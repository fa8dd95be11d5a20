// Adam and RAdam (see optim.h). The arithmetic mirrors torch.optim's single-tensor implementations so
// that runs are comparable with the Python reference code.
#include "core/optim.h"

#include <cmath>
#include <fmt/format.h>
#include <stdexcept>
#include <torch/torch.h>

namespace cm {

Optimizer::Optimizer(std::vector<torch::Tensor> params, OptimizerOptions opt) : params_(std::move(params)), opt_(opt) {
  if (opt_.name != "adam" && opt_.name != "radam")
    throw std::invalid_argument(fmt::format("optimizer '{}' is not one of: adam, radam", opt_.name));
  for (auto& p : params_) {
    m_.push_back(torch::zeros_like(p, torch::MemoryFormat::Preserve));
    v_.push_back(torch::zeros_like(p, torch::MemoryFormat::Preserve));
  }
}

void Optimizer::zero_grad() {
  for (auto& p : params_)
    if (p.grad().defined()) p.mutable_grad().zero_();
}

void Optimizer::step() {
  torch::NoGradGuard ng;
  ++t_;
  const double b1 = opt_.beta1, b2 = opt_.beta2;
  const double bc1 = 1.0 - std::pow(b1, static_cast<double>(t_));
  const double bc2 = 1.0 - std::pow(b2, static_cast<double>(t_));
  // RAdam's variance rectification term (torch.optim.RAdam).
  const double rho_inf = 2.0 / (1.0 - b2) - 1.0;
  const double rho_t = rho_inf - 2.0 * t_ * std::pow(b2, static_cast<double>(t_)) / bc2;
  for (size_t i = 0; i < params_.size(); ++i) {
    auto& p = params_[i];
    auto g = p.grad().defined() ? p.grad() : torch::zeros_like(p);
    m_[i].lerp_(g, 1.0 - b1);
    v_[i].mul_(b2).addcmul_(g, g, 1.0 - b2);
    if (opt_.name == "adam") {
      auto denom = (v_[i].sqrt() / std::sqrt(bc2)).add_(opt_.eps);
      p.addcdiv_(m_[i], denom, -opt_.lr / bc1);
    } else {
      auto m_hat = m_[i] / bc1;
      if (rho_t > 5.0) {
        const double rect = std::sqrt((rho_t - 4) * (rho_t - 2) * rho_inf / ((rho_inf - 4) * (rho_inf - 2) * rho_t));
        auto adaptive = std::sqrt(bc2) / v_[i].sqrt().add_(opt_.eps);
        p.add_(m_hat * rect * adaptive, -opt_.lr);
      } else {
        p.add_(m_hat, -opt_.lr);
      }
    }
  }
}

NamedTensors Optimizer::state() const {
  NamedTensors s;
  s.emplace_back("step", torch::tensor(t_, torch::kInt64));
  for (size_t i = 0; i < params_.size(); ++i) {
    s.emplace_back(fmt::format("exp_avg.{}", i), m_[i]);
    s.emplace_back(fmt::format("exp_avg_sq.{}", i), v_[i]);
  }
  return s;
}

void Optimizer::load_state(const NamedTensors& state) {
  auto find = [&](const std::string& n) -> const torch::Tensor& {
    for (auto& [k, v] : state)
      if (k == n) return v;
    throw std::runtime_error(fmt::format("optimizer state has no entry '{}'", n));
  };
  torch::NoGradGuard ng;
  t_ = find("step").item<int64_t>();
  for (size_t i = 0; i < params_.size(); ++i) {
    for (auto [name, dst] : {std::pair{"exp_avg", &m_[i]}, std::pair{"exp_avg_sq", &v_[i]}}) {
      const auto& src = find(fmt::format("{}.{}", name, i));
      if (src.sizes() != dst->sizes())
        throw std::runtime_error(fmt::format("optimizer state '{}.{}' has shape {}, the parameter has {}", name, i,
                                             c10::str(src.sizes()), c10::str(dst->sizes())));
      dst->copy_(src);
    }
  }
}

}  // namespace cm
