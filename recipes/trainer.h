// The training loop: a short loop over named steps (next batch, loss and backward, gradient sync,
// optimizer, EMAs, logs, pictures). Objectives, schedules, EMAs and data live elsewhere.
#pragma once
#include <chrono>
#include <functional>
#include <limits>
#include <fstream>
#include <map>
#include <memory>
#include <string>
#include "core/ema.h"
#include "core/optim.h"
#include "core/precision.h"
#include "core/sampler.h"
#include "datasets/dataset.h"
#include "recipes/objectives.h"
#include "recipes/recipe.h"

namespace cm {

class CheckpointCoordinator;
class FeatureNetwork;
struct FeatureStats;
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
  double fid = std::numeric_limits<double>::quiet_NaN();  // the last in-training FID ([eval]), NaN when off
  std::map<std::string, double> quality;  // e.g. swd_1step, swd_2step, swd_data_floor (toys)
  std::string run_dir;
  int preempted_by = 0;  // the signal that stopped the run after a checkpoint (exit with kExitPreempted); 0 = finished
};

class Trainer {
 public:
  Trainer(Recipe recipe, TrainerOptions opt = {});
  ~Trainer();
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
  SamplingEmas& emas() { return *emas_; }
  Optimizer& optimizer() { return *optimizer_; }
  const Recipe& recipe() const { return recipe_; }
  torch::Device device() const { return device_; }
  CheckpointCoordinator* checkpoints() { return checkpoints_.get(); }  // after run() has started

 private:
  void setup_run_dir(bool resumed);
  struct StepOutcome {
    double loss = 0;
    bool applied = true;  // false: skipped, its loss or gradients were not finite
  };
  StepOutcome train_step(int64_t step);
  void log_progress(int64_t step, const StepOutcome& out);
  void check_nonfinite(int64_t step);
  void write_samples(int64_t step, bool final);
  void save_weights();
  bool is_main() const { return opt_.rank == 0; }
  void check_ranks_identical(int64_t step);
  // [eval]: the Inception network and the reference statistics (computed over all ranks and cached in
  // run.dir when the reference is an image set), then FID of eval.count samples at `step`.
  void setup_eval();
  bool eval_due(int64_t step) const;  // after optimizer step `step` (0-based)
  double evaluate_fid(int64_t step);

  Recipe recipe_;
  TrainerOptions opt_;
  torch::Device device_ = torch::kCPU;
  std::unique_ptr<DataSource> data_;
  std::unique_ptr<Objective> objective_;
  std::unique_ptr<Optimizer> optimizer_;
  std::unique_ptr<SamplingEmas> emas_;
  std::unique_ptr<dist::GradReducer> reducer_;
  std::unique_ptr<dist::Timeline> timeline_;  // disabled unless dist.trace_dir is set
  std::unique_ptr<CheckpointCoordinator> checkpoints_;
  LossScaler scaler_;            // loss scale (fp16) and skipped-step counts, checkpointed
  std::string last_nonfinite_;   // what was not finite in the last skipped step
  DenoiserFn exact_denoiser_;
  std::ofstream metrics_;
  std::chrono::steady_clock::time_point t0_, t_last_;
  int64_t start_step_ = 0, last_logged_step_ = 0;
  double loss_accum_ = 0;
  int64_t loss_count_ = 0;
  double last_loss_ = 0;
  std::unique_ptr<FeatureNetwork> fid_net_;
  std::unique_ptr<FeatureStats> fid_ref_;
  int64_t last_eval_step_ = -1;
  double last_fid_ = std::numeric_limits<double>::quiet_NaN(), last_fid_1step_ = std::numeric_limits<double>::quiet_NaN();
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
