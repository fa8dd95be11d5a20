// GradReducer: data-parallel gradient averaging. Gradients live in persistent flat buckets (each parameter's
// .grad is a tensor over its slice of a bucket), and each bucket is all-reduced (average) as soon as every
// gradient in it is ready during backward, in the same fixed order on every rank.
//
//   GradReducer reducer(comm, model->parameters(), opts);     // checks shapes on all ranks, broadcasts
//   // or: auto reducer = GradReducer::for_module(comm, *model, opts);   // names + buffers from the module
//   for each step:
//     reducer.prepare();                                       // zero the buckets (replaces zero_grad)
//     for m in 0..M-1:                                         // gradient accumulation over M micro-batches
//       if (m + 1 < M) { auto ns = reducer.no_sync(); (loss_m / M).backward(); }   // local only
//       else (loss_m / M).backward();                          // buckets all-reduce while backward runs
//     reducer.finish();                                        // every .grad is now the average over ranks
//     optimizer.step();
//
// Buckets: parameters in reverse order of registration (backward produces the last layers' gradients first),
// a new bucket when the dtype changes or the capacity (ReducerOptions::bucket_mb, default 25 MiB) would be
// exceeded; a parameter larger than the capacity gets a bucket of its own. Parameters that do not require
// grad are broadcast at start but not bucketed.
// Order: bucket b is launched only after buckets 0..b-1, so every rank issues the same collectives in the
// same order even when autograd finishes gradients in a different order on different ranks. A parameter
// unused in a step (no gradient) holds its bucket, and those after it, until finish().
// Gradients: 1.13 and 2.x accumulate in place into a defined .grad, so the bucket slices stay the gradients.
// If something replaces or drops a .grad (2.x zero_grad() defaults to set_to_none; use
// compat::zero_grad_in_place or prepare()), the reducer copies the new gradient into its slice and
// re-attaches the slice, at the cost of a copy.
// Threads: hooks run on autograd's threads; the reducer locks its state. Do not issue other collectives on
// the same communicator between the first synchronized backward and finish().
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <vector>
#include <torch/nn/module.h>
#include <torch/types.h>
#include "core/grad_sync.h"
#include "distributed/communicator.h"

namespace cm::dist {

struct ReducerOptions {
  double bucket_mb = 25.0;             // bucket capacity in MiB
  bool overlap = true;                 // false: buckets are launched in finish() (measurement, debugging)
  bool sync_at_start = true;           // compare shapes on all ranks, broadcast params + buffers from rank 0
  std::vector<std::string> names;      // parameter names for messages (default "param[i]")
  std::vector<torch::Tensor> buffers;  // broadcast at start too (running statistics and the like)
  std::vector<std::string> buffer_names;
  std::string label = "grad";          // prefix of the bucket labels in watchdog messages and the timeline
};

class GradReducer : public cm::GradSync {
 public:
  GradReducer(std::shared_ptr<Communicator> comm, std::vector<torch::Tensor> params, ReducerOptions options = {});
  // Parameters and buffers of `module` with their names (as in named_parameters / named_buffers).
  static std::unique_ptr<GradReducer> for_module(std::shared_ptr<Communicator> comm, torch::nn::Module& module,
                                                 ReducerOptions options = {});
  ~GradReducer();
  GradReducer(const GradReducer&) = delete;
  GradReducer& operator=(const GradReducer&) = delete;

  // Start of a step: zero every bucket (so every .grad) and re-attach gradients that were replaced.
  void prepare() override;
  // End of a step, after the last backward: launch the buckets still waiting (in order), wait for all.
  // MPI: returns when the averages are in place. NCCL: the current stream waits for them.
  void finish() override;

  // While a NoSync is alive, backward passes accumulate into the buckets without communicating.
  class NoSync {
   public:
    explicit NoSync(GradReducer* r);
    NoSync(NoSync&& o) noexcept;
    NoSync(const NoSync&) = delete;
    ~NoSync();

   private:
    GradReducer* r_;
  };
  [[nodiscard]] NoSync no_sync() { return NoSync(this); }
  // The engine's form of NoSync (core/grad_sync.h): on / off around a backward.
  void set_local_accumulation(bool on) override;

  // Check shapes across ranks, then copy rank 0's parameters and buffers to every rank (done at construction
  // when sync_at_start). Throws DistError naming every parameter whose shape or dtype differs and the ranks.
  void broadcast_parameters();

  struct BucketInfo {
    int64_t numel = 0;
    int64_t bytes = 0;
    torch::ScalarType dtype = torch::kFloat;
    std::vector<size_t> params;  // indices into the constructor's list, in bucket order
  };
  // Switch overlap on or off between steps (benchmarks compare both on the same buckets).
  void set_overlap(bool overlap);

  std::vector<BucketInfo> buckets() const;
  torch::Tensor bucket_tensor(size_t b) const;  // the flat storage of bucket b
  // Buckets launched from autograd hooks (i.e. overlapped with backward) in the last finished step.
  size_t launched_during_backward() const;

  struct State;

 private:
  std::shared_ptr<Communicator> comm_;
  std::shared_ptr<State> state_;
};

}  // namespace cm::dist
