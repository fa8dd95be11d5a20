// The training engine (see engine.h).
#include "core/engine.h"
#include "core/util/lanes.h"

#include <chrono>
#include <cmath>
#include <fmt/format.h>
#include <stdexcept>
#include <thread>
#include <torch/torch.h>
#include <ATen/record_function.h>

namespace cm {

namespace {
// A phase of the step in the trace, for the scope's lifetime.
class Phase {
 public:
  Phase(PhaseTracer* t, const char* name) : t_(t) {
    if (t_) t_->begin(name);
  }
  ~Phase() {
    if (t_) t_->end();
  }
  Phase(const Phase&) = delete;
  Phase& operator=(const Phase&) = delete;

 private:
  PhaseTracer* t_;
};
}  // namespace

TrainEngine::TrainEngine(EngineParts parts, EngineOptions options) : p_(parts), o_(options) {
  if (!p_.data || !p_.objective || !p_.optimizer || !p_.emas || !p_.scaler) throw std::logic_error("TrainEngine: a part is missing");
  if (o_.world > 1 && !p_.sync) throw std::logic_error("TrainEngine: world > 1 needs a gradient synchronisation");
}

// The step's parts are also named for RecordFunction observers (`cm bench step --breakdown`): cm::data,
// cm::lane (one part of a micro-batch in a lane), cm::lane_sum, cm::check, cm::optimizer, cm::ema.
Batch TrainEngine::next_batch() {
  RECORD_USER_SCOPE("cm::data");
  Batch batch = p_.data->next();
  batch.x = batch.x.to(o_.device, /*non_blocking=*/true);
  if (o_.channels_last && batch.x.dim() == 4) batch.x = batch.x.contiguous(torch::MemoryFormat::ChannelsLast);
  if (batch.labels.defined()) batch.labels = batch.labels.to(o_.device, true);
  return batch;
}

// The loss of rows [offset, offset + rows) of this rank's batch, as a 1/parts share of the step's mean (fp32,
// the forwards under autocast), made infinite at an injected non-finite step (+debug.nonfinite_*).
torch::Tensor TrainEngine::part_loss(const Batch& batch, int64_t k, int64_t offset, int64_t rows, int64_t parts) {
  const int64_t local = batch.x.size(0);
  Batch mb{batch.x.narrow(0, offset, rows), batch.labels.defined() ? batch.labels.narrow(0, offset, rows) : torch::Tensor()};
  StepInfo info{k, o_.rank, o_.seed, o_.device, Slice{o_.rank * local + offset, rows, o_.global_batch}};
  torch::Tensor loss;
  {
    AutocastScope autocast(o_.precision, o_.device);  // student, target, teacher and LPIPS forwards
    loss = p_.objective->loss(mb, info).to(torch::kFloat) / static_cast<double>(parts);
  }
  if (k >= o_.faults.nonfinite_begin && k < o_.faults.nonfinite_end) loss = loss * std::numeric_limits<double>::infinity();
  return loss;
}

// Loss and backward of every micro-batch; returns the sum of their (unscaled) losses, on the device: one
// host synchronisation per step (the finite check), not one per micro-batch.
torch::Tensor TrainEngine::forward_backward(const Batch& batch, int64_t k, double scale) {
  if (o_.lanes > 1) return forward_backward_lanes(batch, k, scale);
  const int64_t micro = batch.x.size(0) / o_.micro_batches;
  torch::Tensor loss_sum = torch::zeros({}, torch::TensorOptions().dtype(torch::kFloat64).device(o_.device));
  for (int64_t m = 0; m < o_.micro_batches; ++m) {
    torch::Tensor loss;
    {
      Phase ph(p_.tracer, "forward");
      loss = part_loss(batch, k, m * micro, micro, o_.micro_batches);
    }
    const torch::Tensor scaled = scale != 1.0 ? loss * scale : loss;
    {
      Phase ph(p_.tracer, "backward");
      // Gradient accumulation communicates only on the last micro-batch: the earlier backwards add into the
      // buckets locally; the last one's hooks all-reduce each bucket as soon as its gradients are complete.
      const bool local_only = p_.sync && m + 1 < o_.micro_batches;
      if (local_only) p_.sync->set_local_accumulation(true);
      try {
        scaled.backward();
      } catch (...) {
        if (local_only) p_.sync->set_local_accumulation(false);
        throw;
      }
      if (local_only) p_.sync->set_local_accumulation(false);
    }
    loss_sum += loss.detach().to(torch::kFloat64);
  }
  return loss_sum;
}

// train.lanes > 1 (CPU): every micro-batch is cut into `lanes` equal parts whose forward and backward run at
// the same time, one per thread, each with single-threaded kernels (core/util/lanes.h). The parts' gradients
// are summed in part order after all have finished, the order in which sequential micro-batches accumulate
// them, and written into .grad (for a reducer, its buckets: finish() then reduces every bucket, without
// overlap).
torch::Tensor TrainEngine::forward_backward_lanes(const Batch& batch, int64_t k, double scale) {
  const int64_t parts = o_.micro_batches * o_.lanes, micro = batch.x.size(0) / parts;
  std::vector<torch::Tensor> params;
  for (auto& p : p_.objective->student()->parameters())
    if (p.requires_grad()) params.push_back(p);
  std::vector<std::vector<torch::Tensor>> grads(static_cast<size_t>(o_.lanes));
  std::vector<torch::Tensor> losses(static_cast<size_t>(o_.lanes));
  torch::Tensor loss_total = torch::zeros({}, torch::kFloat64);
  for (int64_t m = 0; m < o_.micro_batches; ++m) {
    Phase ph(p_.tracer, "forward+backward (lanes)");
    run_lanes(o_.lanes, o_.threads, [&](int64_t l) {
      RECORD_USER_SCOPE("cm::lane");
      torch::AutoGradMode grad_on(true);
      const torch::Tensor loss = part_loss(batch, k, (m * o_.lanes + l) * micro, micro, parts);
      const torch::Tensor scaled = scale != 1.0 ? loss * scale : loss;
      grads[static_cast<size_t>(l)] = torch::autograd::grad({scaled}, params, {}, false, false, /*allow_unused=*/true);
      losses[static_cast<size_t>(l)] = loss.detach().to(torch::kFloat64);
    });
    RECORD_USER_SCOPE("cm::lane_sum");
    torch::NoGradGuard ng;
    for (size_t i = 0; i < params.size(); ++i) {
      auto& g = params[i].mutable_grad();
      for (int64_t l = 0; l < o_.lanes; ++l) {
        const auto& gl = grads[static_cast<size_t>(l)][i];
        if (!gl.defined()) continue;
        if (!g.defined()) g = torch::zeros_like(params[i]);
        g.add_(gl);
      }
    }
    for (auto& l : losses) loss_total += l;
  }
  return loss_total;
}

// Whether the step may be applied. The gradients checked are the all-reduced ones, so every rank takes
// the same decision; a non-finite loss makes its gradients non-finite (backpropagating inf / nan), and on
// one rank the loss is checked too. One synchronisation reads the loss and the check together.
bool TrainEngine::gradients_finite(const torch::Tensor& loss_sum, double* loss_value) {
  RECORD_USER_SCOPE("cm::check");
  std::vector<torch::Tensor> sums = {loss_sum.to(torch::kFloat)};
  for (auto& p : p_.objective->student()->parameters())
    if (p.grad().defined()) sums.push_back(p.grad().sum().to(torch::kFloat).reshape({}));
  const auto health = torch::stack(sums).to(torch::kFloat64).cpu();
  *loss_value = health[0].item<double>();
  return health.narrow(0, 1, health.size(0) - 1).isfinite().all().item<bool>();
}

void TrainEngine::apply(int64_t k, double scale) {
  {
    RECORD_USER_SCOPE("cm::optimizer");
    if (scale != 1.0) {
      torch::NoGradGuard ng;
      for (auto& p : p_.objective->student()->parameters())
        if (p.grad().defined()) p.grad().mul_(1.0 / scale);
    }
    Phase ph(p_.tracer, "optimizer");
    p_.optimizer->step();
  }
  Phase ph(p_.tracer, "ema");
  RECORD_USER_SCOPE("cm::ema");
  p_.emas->update(k);
}

StepOutcome TrainEngine::step(int64_t k) {
  // Injected hang before the step's work: the other ranks then wait in this step's gradient all-reduce.
  if (o_.faults.hang_step == k) std::this_thread::sleep_for(std::chrono::hours(1));
  Batch batch = next_batch();
  {
    RECORD_USER_SCOPE("cm::optimizer");
    if (p_.sync) p_.sync->prepare();  // zeroes the buckets, which hold the gradients
    else p_.optimizer->zero_grad();
  }
  const double scale = p_.scaler->scale();  // 1 unless fp16 (or train.loss_scale = "dynamic")
  const torch::Tensor loss_sum = forward_backward(batch, k, scale);
  if (o_.faults.fail_step == k)
    throw std::runtime_error(fmt::format("injected failure at step {} (debug.fail_rank = {})", k, o_.rank));
  if (p_.sync) {
    Phase ph(p_.tracer, "all-reduce wait");
    p_.sync->finish();  // launches what backward did not, waits: every .grad is now the average over ranks
  }
  StepOutcome out;
  const bool grads_finite = gradients_finite(loss_sum, &out.loss);
  const bool finite = grads_finite && (o_.world > 1 || std::isfinite(out.loss));
  p_.scaler->update(finite);
  if (!finite) {
    out.applied = false;
    out.nonfinite = grads_finite ? fmt::format("the loss was not finite ({})", out.loss)
                                 : fmt::format("the gradients were not finite (loss {}{})", out.loss,
                                               scale != 1.0 ? fmt::format(", loss scale {:.6g}", scale) : "");
    return out;
  }
  apply(k, scale);
  return out;
}

}  // namespace cm
