// The method table (see methods.h).
#include "recipes/methods.h"

#include <stdexcept>

namespace cm {

const std::vector<MethodTraits>& method_table() {
  static const std::vector<MethodTraits> table = {
      {MethodKind::Edm, "edm", false, SecondPoint::None, CurriculumKind::Fixed, Metric::L2, 0.0, PairSampling::Uniform,
       Weighting::Uniform, "EDM denoiser (a teacher for CD): denoising score matching, lognormal sigma"},
      {MethodKind::Cd, "cd", true, SecondPoint::TeacherOde, CurriculumKind::Fixed, Metric::L2, 0.95, PairSampling::Uniform,
       Weighting::Uniform, "consistency distillation: the teacher's ODE step makes the pair; fixed N, mu"},
      {MethodKind::Ct, "ct", true, SecondPoint::SameNoise, CurriculumKind::Ct, Metric::L2, 0.0, PairSampling::Uniform,
       Weighting::Uniform, "consistency training: the same noise at both levels; the CT curriculum N(k), mu(k)"},
      {MethodKind::Ict, "ict", true, SecondPoint::SameNoise, CurriculumKind::Ict, Metric::PseudoHuber, 0.0,
       PairSampling::Lognormal, Weighting::InverseDt,
       "improved CT: pseudo-Huber, lognormal pairs, 1/dt weighting, exponential N(k), target = stopgrad(theta)"},
  };
  return table;
}

const MethodTraits& method_traits(MethodKind kind) {
  for (const auto& m : method_table())
    if (m.kind == kind) return m;
  throw std::logic_error("method kind missing from the method table");
}

const MethodTraits& method_traits(const std::string& name) {
  for (const auto& m : method_table())
    if (name == m.name) return m;
  throw std::invalid_argument("unknown method '" + name + "'");
}

std::vector<std::string> method_names() {
  std::vector<std::string> out;
  for (const auto& m : method_table()) out.emplace_back(m.name);
  return out;
}

}  // namespace cm
