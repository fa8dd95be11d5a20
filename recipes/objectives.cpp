// EDM, CD, CT and iCT objectives (see objectives.h).
#include "recipes/objectives.h"

#include <cmath>
#include <fmt/format.h>
#include <torch/torch.h>
#include "core/distance.h"
#include "core/ema.h"
#include "core/karras.h"
#include "core/lpips.h"
#include "core/network.h"
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
    seed_default_generator(s.device, derive_seed(s.seed, stream, static_cast<uint64_t>(s.step), static_cast<uint64_t>(s.rows.offset + i)));
    rows.push_back(torch::randn(per_sample_shape, opts));
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
  seed_default_generator(s.device, derive_seed(s.seed, /*stream: dropout*/ 7, static_cast<uint64_t>(s.step),
                                               static_cast<uint64_t>(s.rank) * 1000003ull + s.rows.offset));
  return GeneratorSnapshot(s.device);
}

enum Stream : uint64_t { kNoise = 3, kIndex = 4, kSigma = 5 };

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
    auto n = rows_normal(s, kSigma);
    auto sigma = torch::exp(m_.p_mean + m_.p_std * n).to(x.scalar_type());
    auto z = rows_randn(s, kNoise, x.sizes().slice(1));
    seed_dropout(s);
    auto denoised = precondition(*student_, precond_, x + append_dims(sigma, x.dim()) * z, sigma, b.labels);
    const double sd = m_.range.sigma_data;
    auto weight = (sigma * sigma + sd * sd) / (sigma * sd).square();
    return (weight * l2_distance(denoised, x)).mean();
  }

 private:
  MethodConfig m_;
};

// ---------------------------------------------------------------------------------------------------
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
  }

  int64_t num_scales(int64_t k) const {
    if (m_.schedule == "ct") return m_.ct.num_scales(k);
    if (m_.schedule == "ict") return m_.ict.num_scales(k);
    return m_.num_scales;
  }
  double target_ema(int64_t k) const {
    if (m_.schedule == "ct") return m_.ct.target_ema(k);
    if (m_.schedule == "ict") return 0.0;
    return m_.mu;
  }

  std::map<std::string, double> schedule(int64_t k) const override {
    return {{"N", static_cast<double>(num_scales(k))}, {"mu", target_ema(k)}};
  }

  torch::Tensor loss(const Batch& b, const StepInfo& s) override {
    const auto& x = b.x;
    const int64_t nd = x.dim();
    const auto grid = karras_grid(num_scales(s.step), m_.range);
    // Pair index n in [0, N-2]: uniform, or iCT's discretized lognormal, drawn for the global batch.
    auto u = rows_uniform(s, kIndex);
    std::vector<double> cdf;
    if (m_.index_sampling == "lognormal") {
      auto p = lognormal_pair_probs(grid, m_.p_mean, m_.p_std);
      double acc = 0;
      for (double v : p) cdf.push_back(acc += v);
    } else {
      const double n = static_cast<double>(grid.size() - 1);
      for (size_t i = 1; i < grid.size(); ++i) cdf.push_back(static_cast<double>(i) / n);
    }
    cdf.back() = 1.0 + 1e-12;  // guard against u rounding past the last bucket
    auto cdf_t = torch::tensor(cdf, torch::TensorOptions().dtype(torch::kFloat64).device(s.device));
    auto idx = injected_index_.defined()
                   ? injected_index_.to(torch::TensorOptions().dtype(torch::kInt64).device(s.device))
                   : torch::searchsorted(cdf_t, u, /*out_int32=*/false, /*right=*/true).clamp_max(static_cast<int64_t>(grid.size()) - 2);
    auto grid_t = torch::tensor(grid, torch::TensorOptions().dtype(torch::kFloat64).device(s.device));
    auto t_lo = grid_t.index_select(0, idx).to(x.scalar_type());      // t_n
    auto t_hi = grid_t.index_select(0, idx + 1).to(x.scalar_type());  // t_{n+1}
    if (injected_t_lo_.defined()) t_lo = injected_t_lo_.to(t_lo.options());
    if (injected_t_hi_.defined()) t_hi = injected_t_hi_.to(t_hi.options());

    auto z = injected_noise_.defined() ? injected_noise_.to(x.options()) : rows_randn(s, kNoise, x.sizes().slice(1));
    auto x_hi = x + append_dims(t_hi, nd) * z;
    torch::Tensor x_lo;
    if (m_.name == "cd") {
      torch::NoGradGuard ng;
      x_lo = ode_step(m_.solver, teacher_, x_hi, t_hi, t_lo, b.labels);
    } else {
      x_lo = x + append_dims(t_lo, nd) * z;  // CT: the same z on both sides
    }

    // Identical dropout masks for the student and target passes: same generator state before each.
    auto snap = seed_dropout(s);
    auto f_student = precondition(*student_, precond_, x_hi, t_hi, b.labels);
    snap.restore();
    torch::Tensor f_target;
    NetworkImpl& tnet = target_ ? *target_ : *student_;
    if (m_.stop_gradient) {
      torch::NoGradGuard ng;
      f_target = precondition(tnet, precond_, x_lo, t_lo, b.labels);
    } else {
      f_target = precondition(tnet, precond_, x_lo, t_lo, b.labels);
    }

    torch::Tensor d;
    switch (m_.metric) {
      case Metric::L2: d = l2_distance(f_student, f_target); break;
      case Metric::L1: d = l1_distance(f_student, f_target); break;
      case Metric::PseudoHuber: d = pseudo_huber_distance(f_student, f_target); break;
      case Metric::Lpips:
        d = lpips_->forward(f_student, f_target.to(f_student.scalar_type()));
        break;
    }
    if (m_.weighting == "inverse_dt") d = d / (t_hi - t_lo);
    return d.mean();
  }

  void after_step(int64_t step) override {
    // theta- follows mu(k) of the step just taken. With mu = 0 and no separate target (iCT) there is
    // nothing to do: the target is stopgrad(theta) itself.
    if (target_) ema_update(target_->parameters(), student_->parameters(), target_ema(step));
  }

  NamedTensors state() const override {
    NamedTensors out;
    if (target_)
      for (auto& [n, t] : network_state(*target_)) out.emplace_back("target." + n, t);
    return out;
  }
  void load_state(const NamedTensors& st) override {
    if (!target_) return;
    torch::NoGradGuard ng;
    for (auto& [n, t] : network_state(*target_)) {
      bool found = false;
      for (auto& [k, v] : st)
        if (k == "target." + n) t.copy_(v), found = true;
      if (!found) throw std::runtime_error(fmt::format("checkpoint has no target tensor 'target.{}'", n));
    }
  }

 private:
  MethodConfig m_;
  Lpips lpips_{nullptr};
  NetworkPtr target_;  // null when theta- = stopgrad(theta) (mu = 0 throughout)
  DenoiserFn teacher_;
  NetworkPtr teacher_net_;  // the learned teacher behind teacher_, if any

 public:
  void to(torch::Device d) override {
    student_->to(d);
    if (target_) target_->to(d);
    if (teacher_net_) teacher_net_->to(d);
    if (lpips_) lpips_->to(d);
  }
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
  if (r.method.name == "cd") {
    if (r.method.teacher == "exact") {
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
  const bool needs_target = r.method.schedule == "ct" || (r.method.schedule == "fixed" && r.method.mu > 0);
  NetworkPtr target;
  if (needs_target) {
    target = make_net();
    for (auto& q : target->parameters()) q.requires_grad_(false);
    target->train();  // dropout active, with the student's masks (see loss)
  }
  return std::make_unique<ConsistencyObjective>(r, student, target, p, teacher, tnet);
}

}  // namespace cm
