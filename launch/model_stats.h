// Parameter count, per-image FLOPs and a training-memory estimate of a recipe's network, measured with a
// shape-only pass (no weights allocated): used by `cm model summary` and `cm plan`.
#pragma once
#include <cstdint>
#include <set>
#include <string>
#include "core/network.h"

namespace cm {
class Config;
struct Recipe;
}

namespace cm::cli {

struct OpStats {
  double conv_macs = 0, linear_macs = 0, attention_macs = 0;  // per image
  double activation_bytes = 0;                                 // per image, outputs kept for backward
  std::set<std::string> uncounted;  // matmul-like ops whose per-image work the shapes do not determine
  double macs() const { return conv_macs + linear_macs + attention_macs; }
};

struct ModelStats {
  std::string arch;
  ModelShape shape;
  int64_t parameters = 0, buffers = 0;
  OpStats ops;
};

// The image shape the recipe's network sees (dataset.resolution, channels, num_classes).
ModelShape model_shape(const Config& cfg);
// The recipe's network (the model table); `arch` receives model.arch.
NetworkPtr build_model(const Config& cfg, const ModelShape& shape, std::string* arch = nullptr);
// Builds the network shape-only and runs one empty batch through it, counting operators. half_activations:
// the pass runs under autocast (bf16 / fp16 training), so activations are counted at the widths it gives them.
ModelStats measure_model(const Config& cfg, bool half_activations = false);

// Bytes per GPU: fp32 weights, gradients, two optimizer moments, `weight_copies` more weight copies (target,
// sampling EMAs, teacher) and the activations of `batch_per_gpu` images (as measure_model counted them).
struct MemoryEstimate {
  double weights = 0, gradients = 0, optimizer = 0, copies = 0, activations_per_image = 0, activations = 0, total = 0;
};
MemoryEstimate estimate_memory(const ModelStats& s, int64_t batch_per_gpu, int64_t weight_copies);

// The training work per image in forward-equivalents of the network: student forward + backward (3), one
// target forward for consistency methods, the teacher's ODE step (Heun 2, Euler 1) for CD with a learned
// teacher. LPIPS is not counted (its VGG's work depends on the resize, not the recipe's network).
struct TrainingFlops {
  double forwards = 0, per_image = 0;  // per_image = 2 * MACs * forwards
  bool lpips_uncounted = false;
};
TrainingFlops training_flops(const Recipe& r, const ModelStats& s);

// 56395523 -> "56,395,523" (parameter counts in cm model / cm plan output).
std::string with_commas(int64_t v);

}  // namespace cm::cli
