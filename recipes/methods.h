// What EDM, CD, CT and iCT are: one row each in one table. Binding a recipe (recipes/recipe.cpp) reads
// method.name, looks up its row and takes every unset choice from it; after binding, code branches on the
// typed fields of MethodConfig (recipes/recipe.h), never on strings. The consistency loss
// (recipes/objectives.cpp) is composed of the row's parts:
//   pair sampling   which adjacent pair (t_n, t_{n+1}) of the step's grid a sample trains on
//   second point    how x_{t_n} is made from x_{t_{n+1}}: the teacher's ODE step (distillation) or the
//                   same noise at the lower level (training)
//   curriculum      N(k) and the target EMA mu(k) (core/curriculum.h)
//   metric          the distance between the student's and the target's outputs (core/distance.h)
//   weighting       lambda(t_n): uniform or 1 / (t_{n+1} - t_n)
// A new method is a new row here (plus a new enumerator wherever it needs a part that does not exist yet).
#pragma once
#include <string>
#include <vector>
#include "core/curriculum.h"
#include "core/distance.h"

namespace cm {

enum class MethodKind { Edm, Cd, Ct, Ict };
enum class PairSampling { Uniform, Lognormal };  // iCT: the discretized lognormal (core/karras.h)
enum class Weighting { Uniform, InverseDt };
enum class SecondPoint {
  None,        // EDM: no pair (denoising score matching)
  TeacherOde,  // CD: one ODE step of the teacher from x_{t_{n+1}} down to t_n (method.solver)
  SameNoise,   // CT / iCT: x + t_n z with the z of x_{t_{n+1}} = x + t_{n+1} z
};

struct MethodTraits {
  MethodKind kind;
  const char* name;  // method.name
  bool consistency;  // trains a consistency model f(x, t) (else an EDM denoiser)
  SecondPoint second_point;
  // Defaults of the recipe keys (method.schedule, .metric, .mu, .index_sampling, .weighting):
  CurriculumKind curriculum;
  Metric metric;
  double mu;  // the fixed schedule's target EMA
  PairSampling pairs;
  Weighting weighting;
  const char* summary;
};

// Every method, in method.name order edm, cd, ct, ict.
const std::vector<MethodTraits>& method_table();
const MethodTraits& method_traits(MethodKind kind);
// The row named `name`; throws std::invalid_argument for an unknown one (binding checks the choice first).
const MethodTraits& method_traits(const std::string& name);
std::vector<std::string> method_names();

}  // namespace cm
