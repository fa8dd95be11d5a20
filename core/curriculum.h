// Discretisation curricula of the consistency methods: how many grid points N(k) and which target EMA
// rate mu(k) step k uses. Three kinds, one struct each, and `Curriculum`, the bound choice among them
// (method.schedule = fixed | ct | ict; recipes/methods.h says which method uses which by default).
#pragma once
#include <cstdint>
#include <string>

namespace cm {

// A constant grid and target EMA (consistency distillation: N = 18, mu = 0.95 in the CIFAR-10 recipes).
struct FixedCurriculum {
  int64_t num_scales = 18;
  double mu = 0.0;
  int64_t num_scales_at(int64_t) const { return num_scales; }
  double target_ema(int64_t) const { return mu; }
};

// CT curriculum of the consistency-models paper, in the form of the reference code
// (openai/consistency_models, create_ema_and_scales_fn, "adaptive"/"progressive"):
//   s(k)  = max(ceil(sqrt(k/K ((s1+1)^2 - s0^2) + s0^2) - 1), 1)
//   N(k)  = s(k) + 1
//   mu(k) = exp(s0 ln(mu0) / s(k))
// The paper writes mu(k) = exp(s0 ln(mu0) / N(k)); the reference divides by N(k) - 1, and it is the
// reference that produced the published numbers, so we follow it (at k = 0 with s0 = 2, mu0 = 0.9 the
// reference gives 0.81 where the paper's formula gives 0.9).
struct CtCurriculum {
  int64_t s0 = 2, s1 = 150, total_steps = 800000;
  double mu0 = 0.9;
  int64_t num_scales(int64_t k) const;  // N(k)
  double target_ema(int64_t k) const;   // mu(k)
};

// iCT exponential curriculum (Song & Dhariwal 2023): N(k) = min(s0 2^floor(k/K'), s1) + 1 with
// K' = floor(K / (log2(floor(s1/s0)) + 1)). The target is stopgrad(theta) (mu = 0).
struct IctCurriculum {
  int64_t s0 = 10, s1 = 1280, total_steps = 400000;
  int64_t steps_per_stage() const;      // K'
  int64_t num_scales(int64_t k) const;  // N(k)
  double target_ema(int64_t) const { return 0.0; }
};

enum class CurriculumKind { Fixed, Ct, Ict };

// The bound curriculum: its kind and the parameters of each kind (only those of `kind` are used).
struct Curriculum {
  CurriculumKind kind = CurriculumKind::Fixed;
  FixedCurriculum fixed;
  CtCurriculum ct;
  IctCurriculum ict;

  int64_t num_scales(int64_t k) const;  // N(k)
  double target_ema(int64_t k) const;   // mu(k)
  // The steps a growing curriculum spans (method.curriculum_steps); 0 for a fixed one.
  int64_t total_steps() const;
  // Whether mu(k) can be non-zero, so the target theta- needs a network of its own (else theta- = stopgrad(theta)).
  bool needs_target_network() const;
  const char* name() const;  // "fixed" | "ct" | "ict" (the method.schedule spelling)
};

CurriculumKind parse_curriculum(const std::string& name);  // fixed | ct | ict

}  // namespace cm
