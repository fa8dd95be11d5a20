// Training precision (train.precision) and the loss scaler of fp16 training.
//
// fp32   plain float32 (on CUDA with TF32 switched off, so matmuls and convolutions are true fp32)
// tf32   float32 tensors, TF32 tensor-core math for matmuls and convolutions (CUDA; same as fp32 on CPU)
// bf16   the forward passes (student, target, teacher, LPIPS: everything inside Objective::loss) under
//        autocast to bfloat16 (CUDA and CPU)
// fp16   the same with float16 (CUDA only: LibTorch's CPU autocast has no float16), with loss scaling
// In every precision the master weights, the optimizer moments, the target and the sampling EMAs stay
// float32 (autocast casts copies of the weights for the forward), and the loss is float32: the
// consistency function's c_skip x + c_out F promotes F's half-precision output back to float32 before
// the distance and its reductions.
//
// Loss scaling (LossScaler): the loss is multiplied by S before backward, the gradients (all-reduced
// first, so every rank decides alike) are checked for inf/nan and divided by S; a step with non-finite
// gradients is skipped (no optimizer, target or EMA update) and S is multiplied by `backoff`; after
// `growth_interval` finite steps in a row S is multiplied by `growth`. The defaults follow the reference
// code the paper's fp16 runs used (openai/consistency_models fp16_util.MixedPrecisionTrainer:
// initial_lg_loss_scale = 20, lg_loss_scale += fp16_scale_growth = 1e-3 after every finite step, -= 1 on
// overflow), i.e. init 2^20, growth 2^0.001 every step, backoff 0.5. (EDM uses a fixed --ls instead:
// growth = 1 and backoff = 1 give that; torch.cuda.amp.GradScaler is growth 2 every 2000 steps.)
#pragma once
#include <cstdint>
#include <string>

namespace c10 {
struct Device;
}

namespace cm {

enum class Precision { Fp32, Tf32, Bf16, Fp16 };
Precision parse_precision(const std::string& s);  // "fp32" | "tf32" | "bf16" | "fp16"
const char* to_string(Precision p);
// bf16 / fp16: the forwards run under autocast at 16 bits (fp32 master weights).
inline bool is_mixed(Precision p) { return p == Precision::Bf16 || p == Precision::Fp16; }

// Sets the process-wide math flags of `p` on `device`: TF32 on or off for CUDA matmuls and cuDNN, and
// cuDNN's benchmark mode (autotuned convolution algorithms; the shapes of a training step never change).
void configure_math(Precision p, const c10::Device& device);

// Autocast for the scope's lifetime when `p` is bf16 or fp16 (nothing otherwise); restores the previous
// state and drops autocast's cast cache on exit.
class AutocastScope {
 public:
  AutocastScope(Precision p, const c10::Device& device);
  ~AutocastScope();
  AutocastScope(const AutocastScope&) = delete;
  AutocastScope& operator=(const AutocastScope&) = delete;

 private:
  bool active_ = false;
  int device_type_ = 0;
  bool was_enabled_ = false;
  int was_dtype_ = 0;
};

// No autocast for the scope's lifetime (on the device's type), whatever was on; restores it on exit.
class AutocastOff {
 public:
  explicit AutocastOff(const c10::Device& device);
  ~AutocastOff();
  AutocastOff(const AutocastOff&) = delete;
  AutocastOff& operator=(const AutocastOff&) = delete;

 private:
  int device_type_ = 0;
  bool was_enabled_ = false;
  int was_dtype_ = 0;
};

// train.target_precision (see _base.toml): the precision of the target's forward pass.
enum class TargetPrecision { Auto, Fp32, Same };
TargetPrecision parse_target_precision(const std::string& s);  // "auto" | "fp32" | "same"

struct LossScalerOptions {
  bool enabled = false;         // train.loss_scale = "dynamic" (default for fp16) or "none"
  double init = 1048576.0;      // 2^20
  double growth = 1.0006933874625807;  // 2^0.001
  int64_t growth_interval = 1;  // finite steps in a row before each growth
  double backoff = 0.5;
};

// The scale, and in every precision (scaling or not) the count of skipped steps.
class LossScaler {
 public:
  explicit LossScaler(LossScalerOptions o = {});
  double scale() const { return o_.enabled ? scale_ : 1.0; }
  bool enabled() const { return o_.enabled; }
  // After a step: finite = its gradients were finite (it was applied; otherwise it was skipped).
  void update(bool finite);
  int64_t skipped_steps() const { return skipped_; }        // since the run began
  int64_t consecutive_skipped() const { return in_a_row_; }  // 0 after an applied step

  // Checkpointed state (state.json "loss_scaler"), so a resumed run scales and counts exactly on.
  struct State {
    double scale = 0;
    int64_t good_steps = 0, skipped_steps = 0, consecutive_skipped = 0;
  };
  State state() const { return {scale_, good_, skipped_, in_a_row_}; }
  void restore(const State& s);

 private:
  LossScalerOptions o_;
  double scale_;
  int64_t good_ = 0;  // finite steps since the last growth or backoff
  int64_t skipped_ = 0, in_a_row_ = 0;
};

}  // namespace cm
