// Gradient synchronisation as the training engine (core/engine.h) sees it. A single process has none;
// data-parallel ranks average their gradients with dist::GradReducer (distributed/reducer.h), which
// implements this: buckets all-reduced from autograd hooks while backward runs.
#pragma once

namespace cm {

class GradSync {
 public:
  virtual ~GradSync() = default;
  // Start of a step: zero every gradient (the reducer's buckets hold them).
  virtual void prepare() = 0;
  // While on, backward passes accumulate locally without communicating (every micro-batch but the last).
  virtual void set_local_accumulation(bool on) = 0;
  // After the last backward: every gradient is the average over the ranks.
  virtual void finish() = 0;
};

}  // namespace cm
