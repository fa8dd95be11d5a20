// A training run: the engine (core/engine.h) assembled from a recipe, driven over the steps with
// checkpoints (recipes/checkpoint.h) and the observers that `cm train` wires in (recipes/observers.h:
// progress lines and metrics.jsonl, sample pictures, FID during training, toy quality figures, final
// exports). The loop, per step: engine step, the non-finite guard, every observer, the checkpoint hook.
#pragma once
#include <chrono>
#include <functional>
#include <limits>
#include <map>
#include <memory>
#include <string>
#include <vector>
#include "core/data.h"
#include "core/ema.h"
#include "core/engine.h"
#include "core/optim.h"
#include "core/precision.h"
#include "core/sampler.h"
#include "core/train_state.h"
#include "recipes/objectives.h"
#include "recipes/recipe.h"

namespace cm {

class CheckpointCoordinator;
namespace dist {
class Communicator;
class GradReducer;
class Timeline;
}  // namespace dist

struct TrainerOptions {
  int64_t rank = 0, world = 1, local_rank = 0, local_size = 1;
  bool quiet = false;                        // no progress lines (tests)
  std::shared_ptr<dist::Communicator> comm;  // required when world > 1; its device is the rank's device
  // Tools (cm bench step --synthetic): the data source instead of the recipe's (build_data).
  std::function<std::unique_ptr<DataSource>(const Recipe&, int64_t rank, int64_t world, torch::Device)> make_data;
};

// Figures of a finished run, also written to RUN_DIR/final.json.
struct TrainResult {
  int64_t steps = 0;
  double final_loss = 0;
  double images_per_sec = 0;
  double fid = std::numeric_limits<double>::quiet_NaN();        // the last in-training FID ([eval]), NaN when off
  double fid_1step = std::numeric_limits<double>::quiet_NaN();  // its one-step companion, when measured
  std::string fid_key = "fid";  // what that distance is: "fid", or "fd_fmnist" with eval.feature_net = "fmnist"
  std::map<std::string, double> quality;  // e.g. swd_1step, swd_2step, swd_data_floor (toys)
  std::string run_dir;
  int preempted_by = 0;  // the signal that stopped the run after a checkpoint (exit with kExitPreempted); 0 = finished
};

// What observers see of a run.
struct RunContext {
  const Recipe& recipe;
  const TrainerOptions& options;
  torch::Device device;
  DataSource& data;
  Objective& objective;
  EmaSet& emas;
  LossScaler& scaler;
  int64_t start_step = 0;  // steps taken before this process started (resume)
  int64_t threads = 1, lanes = 1;  // intra-op threads of this rank, and train.lanes as resolved
  std::chrono::steady_clock::time_point t0{};
  // Seconds spent on work that is not training (FID during training): images/s leaves them out.
  double excluded_s = 0;
  bool is_main() const { return options.rank == 0; }
  dist::Communicator* comm() const;  // null in a single process
};

// Watches a run (recipes/observers.h has the standard ones). All ranks call every hook.
class TrainObserver {
 public:
  virtual ~TrainObserver() = default;
  virtual void on_start(RunContext& run) {}  // after resume, before the first step
  // After optimizer step `done` - 1, with its outcome (also for a skipped step).
  virtual void after_step(RunContext& run, int64_t done, const StepOutcome& out) {}
  // After the last step (the final checkpoint is being written), in the order the observers were added.
  virtual void on_finish(RunContext& run, TrainResult& res) {}
};

class Trainer {
 public:
  Trainer(Recipe recipe, TrainerOptions opt = {});
  ~Trainer();
  void add_observer(std::unique_ptr<TrainObserver> o) { observers_.push_back(std::move(o)); }
  TrainResult run();
  // `cm bench step`: warmup + steps optimizer steps exactly as run() takes them (data, forward, backward,
  // all-reduce, optimizer, EMAs), without checkpoints, logs or pictures; the seconds of each timed step,
  // measured to the end of its device work.
  std::vector<double> benchmark(int64_t warmup, int64_t steps);
  // Toy data: sliced Wasserstein distances of 1-step / 2-step (or EDM Heun) samples of the sampling
  // weights to fresh data, and the same distance between two data sets (the floor). Empty for images.
  std::map<std::string, double> evaluate_quality();

  // Pieces exposed for tests and tools.
  Objective& objective() { return *objective_; }
  DataSource& data() { return *data_; }
  EmaSet& emas() { return *emas_; }
  Optimizer& optimizer() { return *optimizer_; }
  const Recipe& recipe() const { return recipe_; }
  torch::Device device() const { return device_; }
  int64_t lanes() const;  // train.lanes as resolved for this run
  bool channels_last() const;  // train.channels_last as resolved for this run
  CheckpointCoordinator* checkpoints() { return checkpoints_.get(); }  // after run() has started
  // The parts of the training state, in checkpoint order: model, emas, optimizer, data, loss_scaler.
  const TrainState& state() const { return state_; }

 private:
  void build_parts();
  void check_nonfinite(int64_t step, const StepOutcome& out);
  TrainResult stopped(int64_t steps, int sig) const;
  TrainResult finish(RunContext& ctx);
  bool is_main() const { return opt_.rank == 0; }

  Recipe recipe_;
  TrainerOptions opt_;
  torch::Device device_ = torch::kCPU;
  std::unique_ptr<DataSource> data_;
  std::unique_ptr<Objective> objective_;
  std::unique_ptr<Optimizer> optimizer_;
  std::unique_ptr<EmaSet> emas_;
  std::unique_ptr<dist::GradReducer> reducer_;
  std::unique_ptr<dist::Timeline> timeline_;  // disabled unless dist.trace_dir is set
  std::unique_ptr<PhaseTracer> tracer_;
  LossScaler scaler_;            // loss scale (fp16) and skipped-step counts, checkpointed
  std::unique_ptr<TrainEngine> engine_;
  TrainState state_;
  std::unique_ptr<CheckpointCoordinator> checkpoints_;
  std::vector<std::unique_ptr<TrainObserver>> observers_;
  double last_loss_ = 0;
};

// Samples of a trained model (the objective's student, or weights swapped in): one-step, two-step
// (sample.ts) for consistency models, EDM Heun for EDM. Sample i's noise and label come from (noise_seed, i)
// as in `cm sample` (recipes/sampling.h), so they do not depend on count.
torch::Tensor sample_model(const Recipe& r, NetworkImpl& net, const Preconditioning& p, int64_t count,
                           const std::vector<double>& sigmas, uint64_t noise_seed, torch::Device device,
                           const ModelShape& shape);
// The recipe's sample.sigmas, or the sigmas of its sample.ts (first entry = sigma_max).
std::vector<double> recipe_sample_sigmas(const Recipe& r);
// Runs fn on the objective's student with the parameters of sampling EMA `ema_index` swapped in (the
// student itself when there are no sampling EMAs), restoring the student afterwards, also on throw.
// The trainer's pictures and quality figures use sample.ema_index, FID during training eval.ema_index.
void with_sampling_weights(Objective& obj, SamplingEmas& emas, int64_t ema_index, const std::function<void(NetworkImpl&)>& fn);

}  // namespace cm
