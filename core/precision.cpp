// Training precision and the loss scaler (see precision.h).
#include "core/precision.h"

#include <fmt/format.h>
#include <stdexcept>
#include <torch/torch.h>
#include "core/compat.h"
#include "core/config.h"

namespace cm {

Precision parse_precision(const std::string& s) {
  if (s == "fp32") return Precision::Fp32;
  if (s == "tf32") return Precision::Tf32;
  if (s == "bf16") return Precision::Bf16;
  if (s == "fp16") return Precision::Fp16;
  throw ConfigError(fmt::format("precision '{}' is not one of fp32, tf32, bf16, fp16", s));
}

const char* to_string(Precision p) {
  switch (p) {
    case Precision::Fp32: return "fp32";
    case Precision::Tf32: return "tf32";
    case Precision::Bf16: return "bf16";
    case Precision::Fp16: return "fp16";
  }
  return "?";
}

void configure_math(Precision p, const c10::Device& device) {
  if (!device.is_cuda()) return;  // CPU: fp32 math is fp32; bf16 comes from autocast alone
  auto& ctx = at::globalContext();
  // PyTorch's defaults allow TF32 in cuDNN but not in cuBLAS: "fp32" means fp32 in both.
  const bool tf32 = p == Precision::Tf32;
  ctx.setAllowTF32CuBLAS(tf32);
  ctx.setAllowTF32CuDNN(tf32);
  ctx.setBenchmarkCuDNN(true);
}

AutocastScope::AutocastScope(Precision p, const c10::Device& device) {
  if (!is_mixed(p)) return;
  if (p == Precision::Fp16 && !device.is_cuda())
    throw std::runtime_error("train.precision = \"fp16\" needs a CUDA device: LibTorch's CPU autocast has no float16 (use bf16 on CPU)");
  const auto type = device.is_cuda() ? torch::kCUDA : torch::kCPU;
  active_ = true;
  device_type_ = static_cast<int>(type);
  was_enabled_ = compat::autocast_enabled(type);
  was_dtype_ = static_cast<int>(compat::autocast_dtype(type));
  compat::set_autocast(type, true, p == Precision::Bf16 ? torch::kBFloat16 : torch::kHalf);
  at::autocast::increment_nesting();
}

AutocastScope::~AutocastScope() {
  if (!active_) return;
  // The cast weights are cached for the scope (one cast per forward, shared by student and target
  // passes of the same weights); the cache must not outlive it, the weights change at the next step.
  if (at::autocast::decrement_nesting() == 0) at::autocast::clear_cache();
  compat::set_autocast(static_cast<torch::DeviceType>(device_type_), was_enabled_, static_cast<torch::ScalarType>(was_dtype_));
}

AutocastOff::AutocastOff(const c10::Device& device) {
  const auto type = device.is_cuda() ? torch::kCUDA : torch::kCPU;
  device_type_ = static_cast<int>(type);
  was_enabled_ = compat::autocast_enabled(type);
  was_dtype_ = static_cast<int>(compat::autocast_dtype(type));
  if (was_enabled_) compat::set_autocast(type, false, static_cast<torch::ScalarType>(was_dtype_));
}

AutocastOff::~AutocastOff() {
  if (was_enabled_)
    compat::set_autocast(static_cast<torch::DeviceType>(device_type_), true, static_cast<torch::ScalarType>(was_dtype_));
}

TargetPrecision parse_target_precision(const std::string& s) {
  if (s == "auto") return TargetPrecision::Auto;
  if (s == "fp32") return TargetPrecision::Fp32;
  if (s == "same") return TargetPrecision::Same;
  throw std::invalid_argument("train.target_precision '" + s + "' is not one of: auto, fp32, same");
}

LossScaler::LossScaler(LossScalerOptions o) : o_(o), scale_(o.init) {
  if (o_.enabled && !(o_.init > 0 && o_.growth >= 1 && o_.growth_interval >= 1 && o_.backoff > 0 && o_.backoff <= 1))
    throw ConfigError("loss scaling needs loss_scale_init > 0, loss_scale_growth >= 1, loss_scale_growth_interval >= 1 and "
                      "0 < loss_scale_backoff <= 1");
}

void LossScaler::update(bool finite) {
  skipped_ += !finite;
  in_a_row_ = finite ? 0 : in_a_row_ + 1;
  if (!o_.enabled) return;
  if (!finite) {
    scale_ *= o_.backoff;
    good_ = 0;
    return;
  }
  if (++good_ >= o_.growth_interval) {
    scale_ *= o_.growth;
    good_ = 0;
  }
}

void LossScaler::restore(const State& s) {
  scale_ = s.scale;
  good_ = s.good_steps;
  skipped_ = s.skipped_steps;
  in_a_row_ = s.consecutive_skipped;
}

}  // namespace cm
