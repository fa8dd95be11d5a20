// The checkpoint coordinator: what the training state is, when it is saved, how it is written (a
// background thread, from a CPU copy), which checkpoints are kept, and how a run resumes.
//
// The state, all of it: the parts of a TrainState (core/train_state.h), each written by its owner.
// A checkpoint run.dir/checkpoints/step_NNNNNNNN/ holds
//   model.safetensors        the student theta (parameters and buffers; `cm sample --weights` reads it)
//   objective.safetensors    the target theta- ("target.*"), when it is a network of its own (the EMA set)
//   ema_<rate>.safetensors   every sampling EMA (the student's layout; `cm sample` reads these too)
//   optimizer.safetensors    the moments and the step count of Adam/RAdam
//   state.json               step, images seen, data cursor, world size, global batch, config hash
//   config.toml              the resolved config it was trained with
//   COMMIT                   the marker, written last (core/io/checkpoint_dir.h)
// and nothing else is needed: every random draw of step k is derived from (seed, k[, rank]) (core/rng.h),
// so there is no generator state to save on any rank, and a resumed run draws exactly what an
// uninterrupted one would; the CT/iCT curriculum N(k), mu(k) is a function of the step; the data stream
// is defined in global batches and restored from its cursor; the loss scaler's state is in state.json.
// Only rank 0 writes: the weights, EMAs and optimizer state are
// bit-identical on all ranks (checked by fingerprint) and the cursor is global.
//
// Writing. save() copies the state into CPU buffers on the calling thread (the only part a training step
// waits for; the buffers are kept and reused, so this is a memcpy) and hands the copy to a background thread that streams it to disk with checksums and
// commits it; the next save first waits for the previous one. A write error (a full disk) is raised on
// the training thread at the next step boundary and stops the run; committed checkpoints are untouched.
//
// Keeping. After each commit the newest checkpoint.keep_last are kept, plus every multiple of
// checkpoint.keep_every; the others are deleted, marker first.
//
// Resuming (resume = auto | never | PATH). Rank 0 chooses the checkpoint (the newest that verifies;
// newer ones that do not are skipped with a warning naming them and moved aside as *.skipped so that
// the run can commit that step again), checks that the config matches the saved one except for keys
// that may change, and broadcasts its path; every rank then loads it. A different world size is
// allowed when the global batch is unchanged (the run says so: per-rank dropout is re-derived from
// (seed, step, rank), so the continuation equals a run on the new world size, not the old one bitwise).
#pragma once
#include <chrono>
#include <future>
#include <mutex>
#include <optional>
#include <string>
#include <vector>
#include "core/io/checkpoint_dir.h"
#include "core/ema.h"  // ema_file_name
#include "core/train_state.h"
#include "recipes/recipe.h"

namespace cm {

namespace dist {
class Communicator;
}

// Timings of one checkpoint (rank 0).
struct CheckpointTimes {
  int64_t step = 0;
  double wait_s = 0;      // training thread: waiting for the previous write to finish
  double snapshot_s = 0;  // training thread: copying the state to CPU
  double write_s = 0;     // writer: streaming, checksums, fsyncs, commit, retention
  int64_t bytes = 0;      // on disk
  bool async = true;
  double step_blocked_s() const { return wait_s + snapshot_s + (async ? 0.0 : write_s); }
};

// Keys whose values may differ between a checkpoint's config and the resumed run's. train.steps may
// change when the CT/iCT curriculum does not (pin it with +method.curriculum_steps=OLD_STEPS).
const std::vector<std::string>& resume_mutable_keys();
// Throws ConfigError naming every key that differs (and the curriculum when train.steps moved it).
void check_resume_config(const Recipe& now, const Config& saved, const std::string& origin);

class CheckpointCoordinator {
 public:
  struct Options {
    int64_t rank = 0, world = 1;
    dist::Communicator* comm = nullptr;  // required when world > 1
    bool quiet = false;
  };
  // `state`: the parts a checkpoint holds (core/train_state.h), produced by their owners; it must outlive the coordinator.
  CheckpointCoordinator(const Recipe& recipe, const TrainState& state, Options opt);
  ~CheckpointCoordinator();  // waits for a write in flight; its error is printed, not thrown

  // Hook at the start of training (all ranks): restores the checkpoint that `resume` selects and returns
  // the number of steps it had taken (0 = a fresh start). Rank 0 also trims metrics.jsonl to that step.
  int64_t resume();
  // Hook at the end of every step (all ranks, `done` = steps completed): raises a failed background
  // write, saves when due, and checks for preemption. Returns 0 to go on, or the signal (non-zero) after
  // the checkpoint of this step is committed: the trainer then stops and the program exits with
  // kExitPreempted (distributed/preemption.h).
  int step_end(int64_t done);
  // Collective: whether any rank was asked to stop (SIGTERM, SIGUSR1, SIGINT); if so, commits the
  // checkpoint of step `done` unless it exists (or done = 0) and returns the signal. step_end calls it;
  // the trainer also calls it once before the first step, for a signal that came during start-up.
  int stop_if_requested(int64_t done);
  // Hook after the last step: a checkpoint of the final state unless this step already has one.
  void finish(int64_t done);
  // All ranks call it at the same step; rank 0 writes. wait = true returns after the commit.
  void save(int64_t step, bool wait);
  // Waits for a write in flight; rethrows its error.
  void wait();
  bool busy() const;  // a background write is in flight

  const std::string& dir() const { return dir_; }
  std::vector<CheckpointTimes> history() const;  // completed writes, oldest first (rank 0)

 private:
  struct Snapshot;
  Snapshot capture(int64_t step);
  torch::Tensor copy_to_buffer(const torch::Tensor& t);
  void write(Snapshot& s, CheckpointTimes t);
  void apply_retention(int64_t newest);
  void restore(const CheckpointInfo& c);
  std::string choose_checkpoint();
  void move_newer_aside(int64_t from);
  std::string state_json(int64_t step) const;
  bool is_main() const { return opt_.rank == 0; }

  const Recipe& recipe_;
  const TrainState& state_;
  Options opt_;
  std::string dir_;
  int64_t last_saved_ = -1;
  std::future<void> pending_;
  // CPU copies of the previous snapshot, reused by the next one (same sizes): copying into memory that is
  // already mapped avoids a page fault per 4 KB, which costs more than the copy itself. Safe because a
  // save first waits for the write of the previous one.
  std::vector<torch::Tensor> buffers_;
  mutable size_t next_buffer_ = 0;
  mutable std::mutex mu_;
  std::vector<CheckpointTimes> history_;
};

// For tools (cm export) and tests. PATH is a checkpoint directory (used as it is: an error if it does
// not verify), or a checkpoints/ or run directory (its newest checkpoint that verifies; those skipped are
// described in *skipped).
CheckpointInfo find_checkpoint(const std::string& path, std::vector<std::string>* skipped = nullptr);
// The newest checkpoint under a checkpoints/ directory that verifies, if any.
std::optional<CheckpointInfo> newest_valid_checkpoint(const std::string& parent, std::vector<std::string>* skipped);
TensorFile read_checkpoint_tensors(const CheckpointInfo& c, const std::string& name);
// ema_file_name(rate): "ema_0.995.safetensors" (core/ema.h).

}  // namespace cm
