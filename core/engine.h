// The training engine: one optimizer step, exactly. A step is
//   batch      the next global batch's rows of this rank, on the device (non-blocking from pinned memory)
//   loss       the objective's loss per micro-batch, under autocast for bf16 / fp16 (core/precision.h),
//              times the loss scale
//   backward   gradients accumulated over the micro-batches
//   reduce     averaged over the ranks (GradSync; the all-reduce overlaps backward)
//   check      loss and gradients finite? If not, the step is skipped (no update) and counted
//   optimizer  unscaled gradients, then Adam / RAdam
//   EMAs       the target theta- with mu(k) and every sampling EMA (core/ema.h)
// Everything around the step (checkpoints, logs, pictures, FID, exports) is the run's business:
// recipes/trainer.h assembles a run and drives this engine.
#pragma once
#include <cstdint>
#include <limits>
#include <string>
#include <torch/types.h>
#include "core/data.h"
#include "core/ema.h"
#include "core/grad_sync.h"
#include "core/objective.h"
#include "core/optim.h"
#include "core/precision.h"

namespace cm {

// Marks the phases of a step (forward, backward, all-reduce wait, optimizer, ema) for a trace; the
// distributed timeline implements it. begin/end pairs nest.
class PhaseTracer {
 public:
  virtual ~PhaseTracer() = default;
  virtual void begin(const char* phase) = 0;
  virtual void end() = 0;
};

// Faults a test injects into the step of this rank (+debug.* keys; resolved per rank by the run).
struct StepFaults {
  int64_t hang_step = -1;      // sleep for an hour before this step's work (the watchdog must end the job)
  int64_t fail_step = -1;      // throw after this step's backward
  int64_t nonfinite_begin = -1, nonfinite_end = -1;  // the loss times inf at steps [begin, end)
};

struct EngineParts {
  DataSource* data = nullptr;
  Objective* objective = nullptr;
  Optimizer* optimizer = nullptr;
  EmaSet* emas = nullptr;
  LossScaler* scaler = nullptr;
  GradSync* sync = nullptr;      // null: a single process
  PhaseTracer* tracer = nullptr;  // null: no trace
};

struct EngineOptions {
  int64_t rank = 0, world = 1;
  int64_t global_batch = 1;
  int64_t micro_batches = 1;
  int64_t lanes = 1;  // parts of each micro-batch computed at once on CPU threads (train.lanes, core/util/lanes.h)
  int threads = 1;    // CPU threads the lanes run on (the rank's intra-op threads)
  bool channels_last = false;  // image batches in channels-last layout (train.channels_last)
  uint64_t seed = 0;
  torch::Device device = torch::kCPU;
  Precision precision = Precision::Fp32;
  StepFaults faults;
};

struct StepOutcome {
  double loss = 0;       // the mean loss over this rank's micro-batches
  bool applied = true;   // false: skipped, its loss or gradients were not finite
  std::string nonfinite; // what was not finite, when skipped
};

class TrainEngine {
 public:
  TrainEngine(EngineParts parts, EngineOptions options);
  // Optimizer step k (0-based). Ends with one host synchronisation (the finite check reads the loss).
  StepOutcome step(int64_t k);
  const EngineOptions& options() const { return o_; }

 private:
  Batch next_batch();
  torch::Tensor part_loss(const Batch& batch, int64_t k, int64_t offset, int64_t rows, int64_t parts);
  torch::Tensor forward_backward(const Batch& batch, int64_t k, double scale);
  torch::Tensor forward_backward_lanes(const Batch& batch, int64_t k, double scale);
  bool gradients_finite(const torch::Tensor& loss_sum, double* loss_value);
  void apply(int64_t k, double scale);

  EngineParts p_;
  EngineOptions o_;
};

}  // namespace cm
