// EMAs (see ema.h).
#include "core/ema.h"

#include <fmt/format.h>
#include <torch/torch.h>
#include "core/weights.h"

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

std::string ema_file_name(double rate) { return fmt::format("ema_{}.safetensors", SamplingEmas::rate_name(rate)); }

NamedTensors ema_state(const torch::nn::Module& student, const std::vector<torch::Tensor>& ema) {
  NamedTensors out;
  size_t k = 0;
  for (auto& [n, v] : state_dict(student)) {
    out.emplace_back(n, k < ema.size() ? ema[k] : v);
    ++k;
  }
  return out;
}

EmaSet::EmaSet(NetworkPtr student, NetworkPtr target, std::function<double(int64_t)> target_rate, const std::vector<double>& sampling_rates)
    : student_(std::move(student)), target_(std::move(target)), target_rate_(std::move(target_rate)),
      sampling_(sampling_rates, student_->parameters()) {}

void EmaSet::update(int64_t step) {
  auto params = student_->parameters();
  // With mu = 0 and no separate target (iCT) there is nothing to do: the target is stopgrad(theta) itself.
  if (target_) ema_update(target_->parameters(), params, target_rate_(step));
  sampling_.update(params);
}

void EmaSet::reset_target() {
  if (target_) copy_params(target_->parameters(), student_->parameters());
}

NamedTensors EmaSet::target_state() const {
  NamedTensors out;
  if (target_)
    for (auto& [n, t] : state_dict(*target_)) out.emplace_back("target." + n, t);
  return out;
}

std::vector<StateFile> EmaSet::files() const {
  std::vector<StateFile> out;
  if (target_) out.push_back({"objective.safetensors", target_state(), {}});
  const auto& rates = sampling_.rates();
  for (size_t i = 0; i < rates.size(); ++i)
    out.push_back({ema_file_name(rates[i]), ema_state(*student_, sampling_.weights(i)), {{"ema_rate", SamplingEmas::rate_name(rates[i])}}});
  return out;
}

std::vector<std::pair<std::string, std::string>> EmaSet::json_members() const {
  return {{"ema_rates", json_doubles(sampling_.rates())}};
}

void EmaSet::restore(const StateReader& r) {
  if (target_) {
    if (!r.has("objective.safetensors"))
      throw std::runtime_error(fmt::format("{} has no objective.safetensors (target network) but this objective needs one", r.origin()));
    const TensorFile f = r.read("objective.safetensors");
    torch::NoGradGuard ng;
    for (auto& [n, t] : state_dict(*target_)) {
      const torch::Tensor* v = f.find("target." + n);
      if (!v) throw std::runtime_error(fmt::format("checkpoint has no target tensor 'target.{}'", n));
      t.copy_(*v);
    }
  }
  // An EMA file repeats the student's buffers after the EMA's parameters: only the parameters are read.
  const auto params = student_->parameters();
  std::vector<std::string> buffer_names;
  size_t k = 0;
  for (auto& [n, v] : state_dict(*student_))
    if (k++ >= params.size()) buffer_names.push_back(n);
  const auto& rates = sampling_.rates();
  for (size_t i = 0; i < rates.size(); ++i) {
    const std::string name = ema_file_name(rates[i]);
    if (!r.has(name)) throw std::runtime_error(fmt::format("{} has no {} (sampling EMA {})", r.origin(), name, rates[i]));
    NamedTensors dst = ema_state(*student_, sampling_.mutable_weights(i));
    dst.resize(params.size());
    assign_named(dst, r.read(name), r.origin() + "/" + name, buffer_names);
  }
}

}  // namespace cm
