// EMAs (see ema.h).
#include "core/ema.h"

#include <unordered_map>

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

namespace {

// For each entry of state_dict(student): the index of its parameter in student.parameters(), or -1 for a
// buffer. PyTorch's state-dict order interleaves them module by module (a module's parameters, its buffers,
// then its children), so an entry's position says nothing about which parameter it is: match by identity.
std::vector<int64_t> parameter_index_of_entries(const torch::nn::Module& student) {
  std::unordered_map<const void*, int64_t> index;
  const auto params = student.parameters();
  for (size_t i = 0; i < params.size(); ++i) index.emplace(params[i].unsafeGetTensorImpl(), static_cast<int64_t>(i));
  std::vector<int64_t> out;
  for (auto& [n, v] : state_dict(student)) {
    auto it = index.find(v.unsafeGetTensorImpl());
    out.push_back(it == index.end() ? -1 : it->second);
  }
  return out;
}

}  // namespace

NamedTensors ema_state(const torch::nn::Module& student, const std::vector<torch::Tensor>& ema) {
  NamedTensors out;
  const auto which = parameter_index_of_entries(student);
  size_t k = 0;
  for (auto& [n, v] : state_dict(student)) {
    const int64_t i = which[k++];
    out.emplace_back(n, i >= 0 && static_cast<size_t>(i) < ema.size() ? ema[static_cast<size_t>(i)] : v);
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
  // An EMA file repeats the student's buffers beside the EMA's parameters: only the parameters are read.
  const auto which = parameter_index_of_entries(*student_);
  const NamedTensors entries = state_dict(*student_);
  std::vector<std::string> buffer_names;
  for (size_t k = 0; k < entries.size(); ++k)
    if (which[k] < 0) buffer_names.push_back(entries[k].first);
  const auto& rates = sampling_.rates();
  for (size_t i = 0; i < rates.size(); ++i) {
    const std::string name = ema_file_name(rates[i]);
    if (!r.has(name)) throw std::runtime_error(fmt::format("{} has no {} (sampling EMA {})", r.origin(), name, rates[i]));
    auto& weights = sampling_.mutable_weights(i);
    NamedTensors dst;
    for (size_t k = 0; k < entries.size(); ++k)
      if (which[k] >= 0) dst.emplace_back(entries[k].first, weights[static_cast<size_t>(which[k])]);
    const TensorFile f = r.read(name);
    try {
      assign_named(dst, f, r.origin() + "/" + name, buffer_names);
    } catch (const std::runtime_error& e) {
      if (!restore_positional_layout(entries, weights, f)) throw;
      fmt::print(stderr, "note: {}/{} has the EMA layout of cm before the fix of networks with buffers (NCSN++): read by "
                 "position; the next checkpoint is written in the corrected layout\n", r.origin(), name);
    }
  }
}

// Before the identity fix, an EMA file gave its k-th state-dict name the k-th parameter's EMA (wrong names
// wherever a buffer precedes a parameter, as NCSN++'s map_noise.freqs). Such a file is read back by position
// when every shape fits that reading; returns false otherwise.
bool EmaSet::restore_positional_layout(const NamedTensors& entries, std::vector<torch::Tensor>& weights, const TensorFile& f) {
  if (entries.size() < weights.size()) return false;
  for (size_t k = 0; k < weights.size(); ++k) {
    const torch::Tensor* t = f.find(entries[k].first);
    if (!t || t->sizes() != weights[k].sizes() || t->scalar_type() != weights[k].scalar_type()) return false;
  }
  torch::NoGradGuard ng;
  for (size_t k = 0; k < weights.size(); ++k) weights[k].copy_(*f.find(entries[k].first));
  return true;
}

}  // namespace cm
