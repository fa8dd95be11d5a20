// Curricula N(k), mu(k) (see curriculum.h).
#include "core/curriculum.h"

#include <algorithm>
#include <cmath>
#include <stdexcept>

namespace cm {

int64_t CtCurriculum::num_scales(int64_t k) const {
  const double frac = static_cast<double>(k) / static_cast<double>(total_steps);
  const double inner = frac * (std::pow(s1 + 1.0, 2) - std::pow(static_cast<double>(s0), 2)) + std::pow(static_cast<double>(s0), 2);
  int64_t s = static_cast<int64_t>(std::ceil(std::sqrt(inner) - 1.0));
  return std::max<int64_t>(s, 1) + 1;
}

double CtCurriculum::target_ema(int64_t k) const {
  const double s = static_cast<double>(num_scales(k) - 1);
  const double c = -std::log(mu0) * static_cast<double>(s0);
  return std::exp(-c / s);
}

int64_t IctCurriculum::steps_per_stage() const {
  // The paper's K' = floor(K / (log2 floor(s1/s0) + 1)): no floor on the log2 (with one, a 10 -> 300
  // curriculum would spread 5 stages over K and never reach N = 301).
  const double stages = std::log2(std::floor(static_cast<double>(s1) / static_cast<double>(s0))) + 1.0;
  return std::max<int64_t>(1, static_cast<int64_t>(std::floor(static_cast<double>(total_steps) / stages)));
}

int64_t IctCurriculum::num_scales(int64_t k) const {
  const int64_t stage = k / steps_per_stage();
  const int64_t n = stage >= 62 ? s1 : std::min<int64_t>(s0 << stage, s1);
  return n + 1;
}

int64_t Curriculum::num_scales(int64_t k) const {
  switch (kind) {
    case CurriculumKind::Ct: return ct.num_scales(k);
    case CurriculumKind::Ict: return ict.num_scales(k);
    case CurriculumKind::Fixed: break;
  }
  return fixed.num_scales_at(k);
}

double Curriculum::target_ema(int64_t k) const {
  switch (kind) {
    case CurriculumKind::Ct: return ct.target_ema(k);
    case CurriculumKind::Ict: return ict.target_ema(k);
    case CurriculumKind::Fixed: break;
  }
  return fixed.target_ema(k);
}

int64_t Curriculum::total_steps() const {
  switch (kind) {
    case CurriculumKind::Ct: return ct.total_steps;
    case CurriculumKind::Ict: return ict.total_steps;
    case CurriculumKind::Fixed: break;
  }
  return 0;
}

bool Curriculum::needs_target_network() const {
  switch (kind) {
    case CurriculumKind::Ct: return true;
    case CurriculumKind::Ict: return false;
    case CurriculumKind::Fixed: break;
  }
  return fixed.mu > 0;
}

const char* Curriculum::name() const {
  switch (kind) {
    case CurriculumKind::Ct: return "ct";
    case CurriculumKind::Ict: return "ict";
    case CurriculumKind::Fixed: break;
  }
  return "fixed";
}

CurriculumKind parse_curriculum(const std::string& name) {
  if (name == "fixed") return CurriculumKind::Fixed;
  if (name == "ct") return CurriculumKind::Ct;
  if (name == "ict") return CurriculumKind::Ict;
  throw std::invalid_argument("unknown curriculum '" + name + "' (fixed | ct | ict)");
}

}  // namespace cm
