// EDM, CD, CT and iCT objectives (see objectives.h).
#include "recipes/objectives.h"

#include <cmath>
#include <optional>
#include <fmt/format.h>
#include <torch/torch.h>
#include "core/distance.h"
#include "core/ema.h"
#include "core/karras.h"
#include "core/lpips.h"
#include "core/network.h"
#include "core/rng_streams.h"
#include "core/precision.h"
#include "core/ode.h"
#include "core/weights.h"

namespace cm {

// PyTorch's state-dict order, so exported files list tensors as the reference code's checkpoints do.
NamedTensors network_state(torch::nn::Module& net) { return state_dict(net); }

// Safetensors or a PyTorch .pt state dict (released checkpoints load directly); a mismatch lists every
// missing, unexpected and mis-shaped tensor.
void load_network_weights(torch::nn::Module& net, const std::string& path) { load_weights_file(net, path); }

namespace {

// The step's random draws, row by row: global row r of step k draws from its own state (seed, stream, k, r),
// so a rank makes only its own rows (O(local batch) work and memory, not O(global batch)), and every row's
// values are the same whatever the world size and micro-batching. Noise tensors are drawn on the training
// device, one generator reseed per row; the per-row scalars (EDM's sigma, the pair index) come from a
// counter-based hash on the host, one value per row, with no device work at all.
double row_uniform(const StepInfo& s, uint64_t stream, int64_t row, uint64_t k = 0);
float row_normal(const StepInfo& s, uint64_t stream, int64_t row, uint64_t k);

torch::Tensor rows_randn(const StepInfo& s, uint64_t stream, torch::IntArrayRef per_sample_shape) {
  const auto opts = torch::TensorOptions().device(s.device);
  int64_t per = 1;
  for (int64_t d : per_sample_shape) per *= d;
  if (per <= 16) {  // 2-D points: a generator reseed and a kernel per row would cost more than the step's math
    std::vector<int64_t> shape = {s.rows.count};
    shape.insert(shape.end(), per_sample_shape.begin(), per_sample_shape.end());
    auto z = torch::empty(shape, torch::kFloat32);
    float* p = z.data_ptr<float>();
    for (int64_t i = 0; i < s.rows.count; ++i)
      for (int64_t j = 0; j < per; ++j) p[i * per + j] = row_normal(s, stream, s.rows.offset + i, static_cast<uint64_t>(j));
    return z.to(s.device);
  }
  std::vector<torch::Tensor> rows;
  rows.reserve(static_cast<size_t>(s.rows.count));
  for (int64_t i = 0; i < s.rows.count; ++i) {
    const uint64_t seed = derive_seed(s.seed, stream, static_cast<uint64_t>(s.step), static_cast<uint64_t>(s.rows.offset + i));
    if (s.device.is_cpu()) {
      // A generator of the row's own, seeded as the default one would be (the same numbers), so that
      // concurrent micro-batches (train.lanes) do not share one.
      rows.push_back(torch::randn(per_sample_shape, cpu_generator(seed), opts));
    } else {
      seed_default_generator(s.device, seed);
      rows.push_back(torch::randn(per_sample_shape, opts));
    }
  }
  return torch::stack(rows);
}

// Uniform in [0, 1) with 53 random bits from the hash of (seed, stream, step, row, k) (derive_seed gives 63
// bits: the top 53 of them).
double row_uniform(const StepInfo& s, uint64_t stream, int64_t row, uint64_t k) {
  const uint64_t h = derive_seed(derive_seed(s.seed, stream, static_cast<uint64_t>(s.step), static_cast<uint64_t>(row)), k);
  return static_cast<double>(h >> 10) * 0x1.0p-53;
}

torch::Tensor rows_uniform(const StepInfo& s, uint64_t stream) {
  auto u = torch::empty({s.rows.count}, torch::kFloat64);
  double* p = u.data_ptr<double>();
  for (int64_t i = 0; i < s.rows.count; ++i) p[i] = row_uniform(s, stream, s.rows.offset + i, 0);
  return u.to(s.device);
}

// Standard normal number k of a row: Box-Muller on two of its uniforms, float32 like torch::randn.
float row_normal(const StepInfo& s, uint64_t stream, int64_t row, uint64_t k) {
  const double u1 = 1.0 - row_uniform(s, stream, row, 2 * k + 1), u2 = row_uniform(s, stream, row, 2 * k + 2);
  return static_cast<float>(std::sqrt(-2.0 * std::log(u1)) * std::cos(2.0 * M_PI * u2));
}

torch::Tensor rows_normal(const StepInfo& s, uint64_t stream) {
  auto n = torch::empty({s.rows.count}, torch::kFloat32);
  float* p = n.data_ptr<float>();
  for (int64_t i = 0; i < s.rows.count; ++i) p[i] = row_normal(s, stream, s.rows.offset + i, 0);
  return n.to(s.device);
}

// Reseeds dropout for (seed, step, rank) and returns a snapshot so the target pass can reuse the masks.
GeneratorSnapshot seed_dropout(const StepInfo& s) {
  seed_default_generator(s.device, derive_seed(s.seed, rng_stream::kDropout, static_cast<uint64_t>(s.step),
                                               static_cast<uint64_t>(s.rank) * 1000003ull + s.rows.offset));
  return GeneratorSnapshot(s.device);
}

// ---------------------------------------------------------------------------------------------------
class EdmObjective : public Objective {
 public:
  EdmObjective(const Recipe& r, NetworkPtr net, Preconditioning p) : m_(r.method) {
    student_ = std::move(net);
    precond_ = p;
    precond_.kind = Preconditioning::Edm;
  }
  torch::Tensor loss(const Batch& b, const StepInfo& s) override {
    auto x = b.x;
    auto n = rows_normal(s, rng_stream::kSigma);
    auto sigma = torch::exp(m_.p_mean + m_.p_std * n).to(x.scalar_type());
    auto z = rows_randn(s, rng_stream::kNoise, x.sizes().slice(1));
    seed_dropout(s);
    auto denoised = precondition(*student_, precond_, x + append_dims(sigma, x.dim()) * z, sigma, b.labels);
    const double sd = m_.range.sigma_data;
    auto weight = (sigma * sigma + sd * sd) / (sigma * sd).square();
    return (weight * l2_distance(denoised, x)).mean();
  }

 private:
  MethodConfig m_;
};

// The cumulative distribution over the N-1 adjacent pairs of a grid of the method's pair sampling.
std::vector<double> pair_cdf(const MethodConfig& m, const std::vector<double>& grid) {
  std::vector<double> cdf;
  switch (m.pair_sampling) {
    case PairSampling::Lognormal: {
      double acc = 0;
      for (double v : lognormal_pair_probs(grid, m.p_mean, m.p_std)) cdf.push_back(acc += v);
      break;
    }
    case PairSampling::Uniform: {
      const double n = static_cast<double>(grid.size() - 1);
      for (size_t i = 1; i < grid.size(); ++i) cdf.push_back(static_cast<double>(i) / n);
      break;
    }
  }
  cdf.back() = 1.0 + 1e-12;  // guard against u rounding past the last bucket
  return cdf;
}

// The noise levels of a row's pair: t_lo = t_n, t_hi = t_{n+1}, [rows] in the batch's dtype.
struct PairLevels {
  torch::Tensor t_lo, t_hi;
};

// ---------------------------------------------------------------------------------------------------
// The consistency loss of CD, CT and iCT, composed of the method's parts (recipes/methods.h): pair
// sampling, the second point, the curriculum, the metric and the weighting.
class ConsistencyObjective : public Objective {
 public:
  ConsistencyObjective(const Recipe& r, NetworkPtr student, NetworkPtr target, Preconditioning p, DenoiserFn teacher,
                       NetworkPtr teacher_net)
      : m_(r.method), target_(std::move(target)), teacher_(std::move(teacher)), teacher_net_(std::move(teacher_net)) {
    student_ = std::move(student);
    precond_ = p;
    precond_.kind = Preconditioning::Consistency;
    // LPIPS: a frozen VGG16 beside the networks. A missing weights file is an error that says how to make it,
    // raised here, before any training step.
    if (m_.metric == Metric::Lpips) lpips_ = make_lpips(m_.lpips_weights);
    if (target_) copy_params(target_->parameters(), student_->parameters());
    const bool mixed = is_mixed(r.train.precision);
    target_fp32_ = mixed && (r.train.target_precision == TargetPrecision::Fp32 ||
                             (r.train.target_precision == TargetPrecision::Auto && !target_));
  }

  std::map<std::string, double> schedule(int64_t k) const override {
    return {{"N", static_cast<double>(m_.curriculum.num_scales(k))}, {"mu", m_.curriculum.target_ema(k)}};
  }

  torch::Tensor loss(const Batch& b, const StepInfo& s) override {
    const auto& x = b.x;
    const int64_t nd = x.dim();
    const auto pair = draw_pair(s, x.scalar_type());
    auto z = injected_noise_.defined() ? injected_noise_.to(x.options()) : rows_randn(s, rng_stream::kNoise, x.sizes().slice(1));
    auto x_hi = x + append_dims(pair.t_hi, nd) * z;
    auto x_lo = second_point(x, z, x_hi, pair, b.labels);
    // Identical dropout masks for the student and target passes: same generator state before each.
    auto snap = seed_dropout(s);
    auto f_student = precondition(*student_, precond_, x_hi, pair.t_hi, b.labels);
    snap.restore();
    auto f_target = target_output(x_lo, pair.t_lo, b.labels);
    auto d = distance(f_student, f_target);
    if (m_.weighting == Weighting::InverseDt) d = d / (pair.t_hi - pair.t_lo);
    return d.mean();
  }

  NetworkPtr target() const override { return target_; }
  double target_ema(int64_t k) const override { return m_.curriculum.target_ema(k); }

  std::vector<torch::nn::Module*> networks() const override {
    std::vector<torch::nn::Module*> out{student_.get()};
    if (target_) out.push_back(target_.get());
    if (teacher_net_) out.push_back(teacher_net_.get());
    if (lpips_) out.push_back(lpips_.ptr().get());
    return out;
  }

 private:
  // Pair index n in [0, N-2] per row (from the step's curriculum grid and the method's pair sampling), and
  // its levels; draws injected by a test replace them.
  PairLevels draw_pair(const StepInfo& s, torch::ScalarType dtype) const {
    const auto grid = karras_grid(m_.curriculum.num_scales(s.step), m_.range);
    auto u = rows_uniform(s, rng_stream::kPairIndex);
    auto cdf_t = torch::tensor(pair_cdf(m_, grid), torch::TensorOptions().dtype(torch::kFloat64).device(s.device));
    auto idx = injected_index_.defined()
                   ? injected_index_.to(torch::TensorOptions().dtype(torch::kInt64).device(s.device))
                   : torch::searchsorted(cdf_t, u, /*out_int32=*/false, /*right=*/true).clamp_max(static_cast<int64_t>(grid.size()) - 2);
    auto grid_t = torch::tensor(grid, torch::TensorOptions().dtype(torch::kFloat64).device(s.device));
    PairLevels p{grid_t.index_select(0, idx).to(dtype), grid_t.index_select(0, idx + 1).to(dtype)};
    if (injected_t_lo_.defined()) p.t_lo = injected_t_lo_.to(p.t_lo.options());
    if (injected_t_hi_.defined()) p.t_hi = injected_t_hi_.to(p.t_hi.options());
    return p;
  }

  // x_{t_n} from x_{t_{n+1}}: the teacher's ODE step (CD) or the same noise at the lower level (CT, iCT).
  torch::Tensor second_point(const torch::Tensor& x, const torch::Tensor& z, const torch::Tensor& x_hi, const PairLevels& p,
                             const torch::Tensor& labels) const {
    switch (m_.traits().second_point) {
      case SecondPoint::TeacherOde: {
        torch::NoGradGuard ng;
        return ode_step(m_.solver, teacher_, x_hi, p.t_hi, p.t_lo, labels);
      }
      case SecondPoint::SameNoise:
      case SecondPoint::None: break;
    }
    return x + append_dims(p.t_lo, x.dim()) * z;
  }

  // The target's output f_{theta-}(x_{t_n}, t_n): theta- itself, or the student when theta- = stopgrad(theta);
  // in fp32 when train.target_precision says so (a bf16 stopgrad(theta) target drowns the pair's difference).
  torch::Tensor target_output(const torch::Tensor& x_lo, const torch::Tensor& t_lo, const torch::Tensor& labels) {
    NetworkImpl& tnet = target_ ? *target_ : *student_;
    std::optional<AutocastOff> fp32;
    if (target_fp32_) fp32.emplace(x_lo.device());
    if (!m_.stop_gradient) return precondition(tnet, precond_, x_lo, t_lo, labels);
    torch::NoGradGuard ng;
    return precondition(tnet, precond_, x_lo, t_lo, labels);
  }

  torch::Tensor distance(const torch::Tensor& f_student, const torch::Tensor& f_target) {
    switch (m_.metric) {
      case Metric::L2: return l2_distance(f_student, f_target);
      case Metric::L1: return l1_distance(f_student, f_target);
      case Metric::PseudoHuber: return pseudo_huber_distance(f_student, f_target);
      case Metric::Lpips: break;
    }
    return lpips_->forward(f_student, f_target.to(f_student.scalar_type()));
  }

  MethodConfig m_;
  Lpips lpips_{nullptr};
  NetworkPtr target_;  // null when theta- = stopgrad(theta) (mu = 0 throughout)
  DenoiserFn teacher_;
  NetworkPtr teacher_net_;  // the learned teacher behind teacher_, if any
  bool target_fp32_ = false;  // the target pass without autocast (train.target_precision)
};

}  // namespace

std::unique_ptr<Objective> make_objective(const Recipe& r, const ObjectiveDeps& deps) {
  auto p = preconditioning(r);
  auto make_net = deps.network_factory ? deps.network_factory : [&] { return build_network(r, deps.shape); };
  auto student = make_net();
  if (!r.method.is_consistency()) return std::make_unique<EdmObjective>(r, student, p);
  // CT from a diffusion checkpoint (the reference's ImageNet-64 / LSUN CT runs); the target copies the student.
  if (!r.method.init_from.empty()) load_network_weights(*student, r.method.init_from);

  DenoiserFn teacher;
  NetworkPtr tnet;
  if (r.method.distills()) {
    if (r.method.exact_teacher) {
      if (!deps.exact_denoiser)
        throw ConfigError("method.teacher = \"exact\" needs a dataset with a closed-form denoiser (the toy mixtures)");
      teacher = deps.exact_denoiser;
    } else {
      tnet = make_net();
      load_network_weights(*tnet, r.method.teacher);
      tnet->eval();
      for (auto& q : tnet->parameters()) q.requires_grad_(false);
      teacher = edm_denoiser(tnet, p);
      if (r.method.init_from_teacher) copy_params(student->parameters(), tnet->parameters());
    }
  }
  // A separate target network only when mu can be non-zero.
  NetworkPtr target;
  if (r.method.has_target_network()) {
    target = make_net();
    for (auto& q : target->parameters()) q.requires_grad_(false);
    target->train();  // dropout active, with the student's masks (see loss)
  }
  return std::make_unique<ConsistencyObjective>(r, student, target, p, teacher, tnet);
}

}  // namespace cm
