// A recipe bound into typed structs: what to train (method), on what (dataset), with which network (model),
// how (train), how to look at it (sample), and where (run). Binding reads every key through ConfigReader,
// so an unknown key, a wrong type or a bad choice fails here, before anything runs.
#pragma once
#include <memory>
#include <string>
#include <vector>
#include "core/config.h"
#include "core/curriculum.h"
#include "core/distance.h"
#include "core/karras.h"
#include "core/ode.h"
#include "core/optim.h"
#include "core/parameterization.h"
#include "core/precision.h"
#include "core/data.h"
#include "distributed/options.h"
#include "recipes/methods.h"

namespace cm {

struct TrainConfig {
  int64_t steps = 1000;         // total optimizer steps K
  int64_t batch = 256;          // global batch (all ranks together)
  int64_t micro_batches = 1;    // gradient accumulation: each rank splits its batch into this many parts
  OptimizerOptions optimizer;
  std::vector<double> ema_rates;  // sampling EMAs
  uint64_t seed = 0;
  std::string device = "auto";  // auto | cpu | cuda
  int64_t threads = 0;          // intra-op threads per rank, 0 = cores / local ranks
  // CPU: parts of each micro-batch whose forward and backward run at once, one per thread with single-
  // threaded kernels (core/engine.h); 0 = auto (as many as threads when the network draws no random
  // numbers and the micro-batch divides; 1 on a GPU).
  int64_t lanes = 0;
  // Convolution weights and input batches in channels-last (NHWC) layout: "auto" (on for CUDA runs of
  // convolution networks, off on the CPU), "on", "off".
  std::string channels_last = "auto";
  int64_t log_every = 100;
  int64_t sample_every = 0;     // steps between sample pictures, 0 = only at the end
  int64_t check_every = 0;      // steps between cross-rank identity checks of the weights, 0 = at the end only
  double watchdog_s = 600;      // multi-rank: abort the job when a collective waits longer than this (0 = off)
  Precision precision = Precision::Fp32;  // core/precision.h
  TargetPrecision target_precision = TargetPrecision::Auto;  // the target pass: auto = fp32 when theta- = stopgrad(theta)
  LossScalerOptions loss_scale;           // dynamic loss scaling (on by default for fp16)
  int64_t max_nonfinite_steps = 20;       // this many skipped (non-finite) steps in a row end the run
};

// Fault injection for tests of failure handling (absent from recipes; set with +debug.fail_rank=1 ...).
struct DebugConfig {
  int64_t fail_rank = -1, fail_step = -1;  // throw on that rank at that step
  int64_t hang_rank = -1, hang_step = -1;  // sleep forever on that rank at that step
  int64_t signal_rank = -1, signal_step = -1;  // that rank raises SIGUSR1 on itself after that many steps
  // that rank's loss is multiplied by inf (so its gradients, and after the all-reduce everybody's, are
  // not finite) at steps [nonfinite_step, nonfinite_step + nonfinite_steps); rank -2 = every rank
  int64_t nonfinite_rank = -1, nonfinite_step = -1, nonfinite_steps = 1;
  std::string ckpt_crash_at;                // SIGKILL during a checkpoint commit at this phase (core/io/checkpoint_dir.h)
  int64_t ckpt_fail_after_bytes = -1;       // a checkpoint commit fails with ENOSPC after this many bytes
  int64_t ckpt_fault_step = -1;             // the two checkpoint faults hit the checkpoint of this step (-1: every one)
};

// Checkpoints ([checkpoint] in _base.toml; recipes/checkpoint.h). Changing these keys on resume is allowed.
struct CheckpointConfig {
  int64_t every = 1000;    // steps between checkpoints; 0 = only at the end and when preempted
  int64_t keep_last = 3;   // committed checkpoints kept (the newest ones) ...
  int64_t keep_every = 0;  // ... plus every step that is a multiple of this (milestones); 0 = none
  bool async = true;       // write in a background thread from a CPU copy (false: the step waits for the disk)
};

// The [method] table, bound: the method's row of recipes/methods.h and every choice typed.
struct MethodConfig {
  std::string name;             // method.name as the recipe spells it (logs, tests); code uses `kind`
  MethodKind kind = MethodKind::Edm;
  Metric metric = Metric::L2;
  NoiseRange range;
  // consistency methods
  Curriculum curriculum;        // method.schedule: fixed (num_scales, mu) | ct (s0, s1, mu0) | ict (s0, s1)
  std::string lpips_weights;    // metric = lpips: safetensors file of VGG16 + LPIPS weights ("" = default path, see core/lpips.h)
  PairSampling pair_sampling = PairSampling::Uniform;  // method.index_sampling: uniform | lognormal (iCT)
  Weighting weighting = Weighting::Uniform;            // method.weighting: uniform | inverse_dt (iCT)
  double p_mean = -1.1, p_std = 2.0;       // lognormal index sampling (iCT) / sigma sampling (EDM)
  bool boundary_shift = true;              // c_skip/c_out with the eps shift (false only for ablations)
  bool stop_gradient = true;               // target without gradient (false only for ablations)
  // distillation
  Solver solver = Solver::Heun;
  std::string teacher;          // "exact" (toy mixtures) or a safetensors file of an EDM model of the same arch
  bool exact_teacher = false;   // teacher = "exact": the data's closed-form denoiser
  bool init_from_teacher = true;
  // CT / iCT: initialise the student (and so its target) from this diffusion checkpoint of the same
  // architecture ("" = random initialisation). The reference ImageNet-64 / LSUN CT runs pass
  // --teacher_model_path, and cm_train.py copies that EDM model into the student.
  std::string init_from;

  const MethodTraits& traits() const { return method_traits(kind); }
  bool is_consistency() const { return traits().consistency; }
  bool distills() const { return traits().second_point == SecondPoint::TeacherOde; }
  // A learned teacher network (CD from an EDM checkpoint, not the toys' exact denoiser).
  bool learned_teacher() const { return distills() && !exact_teacher; }
  // Whether theta- is a network of its own (mu can be non-zero) or stopgrad(theta).
  bool has_target_network() const { return is_consistency() && curriculum.needs_target_network(); }
};

struct SampleConfig {
  std::vector<int64_t> ts = {0};  // indices into a `grid`-point Karras grid, from sigma_max down
  int64_t grid = 18;
  std::vector<double> sigmas;     // the noise levels themselves (first = sigma_max, decreasing); replaces ts when set
  bool clip = true;               // images: clip every denoised estimate to [-1, 1] before re-noising (the reference samplers)
  double ema = -1;                // the sampling EMA the pictures use (one of train.ema_rates); < 0 = the first
  int64_t ema_index = 0;          // its index in train.ema_rates (resolved when bound)
  int64_t count = 64;             // samples in the picture (2-D: points per set)
  int64_t edm_steps = 18;         // Heun grid size when sampling an EDM model
  int64_t eval_count = 10000;     // toy: points for the sliced Wasserstein figure
};

// FID during training ([eval]; off unless every_images > 0). Samples of the first sampling EMA (or the
// student when there is none) with sample.ts, split over the ranks, against the reference statistics.
struct EvalConfig {
  int64_t every_images = 0;  // evaluate every this many training images (all ranks together); 0 = off
  int64_t count = 10000;     // samples per evaluation
  int64_t batch = 100;       // samples and Inception images per forward on each rank
  std::string ref;           // mu/sigma .npz or an image set; "" = the training dataset (statistics cached in run.dir)
  std::string inception;     // the TorchScript Inception; "" = $CM_INCEPTION or ~/.cache/cm/inception-2015-12-05.pt
  std::string feature_net;   // "" / "inception" = FID; "fmnist" (or a classifier file) = FD_fmnist (recipes/eval/fmnist_features.h)
  uint64_t seed = 12345;     // sample noise seed, the same at every evaluation (the curve shows the model, not the noise)
  bool one_step = true;      // also one-step FID ("fid_1step") when sample.ts is multistep
  double ema = -1;           // the sampling EMA evaluated (one of train.ema_rates); < 0 = the first
  int64_t ema_index = 0;     // its index in train.ema_rates (resolved when bound)
  bool enabled() const { return every_images > 0; }
};

struct RunConfig {
  std::string dir;  // run directory; "" = runs/<recipe name>
};

struct Recipe {
  Config config;  // the resolved config (kept verbatim in the run directory)
  std::string name;
  TrainConfig train;
  MethodConfig method;
  SampleConfig sample;
  EvalConfig eval;
  RunConfig run;
  dist::DistOptions dist;  // [dist]: gradient buckets, overlap, timelines (multi-rank runs)
  CheckpointConfig checkpoint;
  // "auto": continue from the newest committed checkpoint of run.dir if there is one; "never": start
  // from scratch (an error when run.dir already holds checkpoints); else the path of a checkpoint, of a
  // checkpoints/ directory or of a run directory (its newest committed checkpoint).
  std::string resume = "auto";
  DebugConfig debug;
  std::string dataset_kind;  // toy | hdf5
  std::string toy_name;
  std::string data_path;     // hdf5: the converted dataset directory
  bool random_flip = false;  // hdf5: horizontal flips
  bool class_cond = false;   // hdf5: pass labels to the network (when the data is labelled)

  // Compose + bind. Model and dataset keys are checked when the network / data source is built
  // (build_network / build_data), which `cm train` does before the first step.
  static Recipe load(const std::string& recipe, const std::vector<std::string>& overrides);
  static Recipe bind(const Config& cfg, const std::string& name);
};

// What is wrong with splitting train.batch (global) over `world` ranks and then into train.micro_batches:
// one message per problem, empty when the split is exact. A batch that does not divide is an error, never
// rounded (rounding would change the effective batch, and with it the learning rate's and EMAs' meaning).
std::vector<std::string> batch_split_problems(const TrainConfig& t, int64_t world);
// Throws ConfigError with the problems above, if any.
void check_batch_split(const TrainConfig& t, int64_t world);

// Network of the recipe's `model` table for the given data shape; checks model keys.
NetworkPtr build_network(const Recipe& r, const ModelShape& shape);
Preconditioning preconditioning(const Recipe& r);  // noise range + the model's c_noise convention
// The recipe's data stream for this rank.
// On a CUDA `device` the loader hands out pinned batches, so the trainer's non_blocking copy overlaps.
std::unique_ptr<DataSource> build_data(const Recipe& r, int64_t rank, int64_t world, torch::Device device = torch::kCPU);

}  // namespace cm
