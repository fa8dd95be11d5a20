// `cm sample`: N samples of a trained model (one step, multistep, or EDM Heun), sharded over the ranks of
// an mpirun/srun job, written by rank 0 as the reference evaluator's .npz plus a picture of the first 64.
#include <cmath>
#include <filesystem>
#include <fmt/format.h>
#include <unistd.h>
#include <torch/torch.h>
#include "core/image.h"                // samples.png
#include "distributed/communicator.h"  // comm->size()
#include "launch/command.h"
#include "launch/model_args.h"        // --weights/--ema, --ts/--grid/--sigmas, --labels
#include "recipes/recipe.h"
#include "recipes/sampling.h"

namespace cm::cli {
namespace {

const char* kHelp = R"(Usage: cm sample RECIPE --weights FILE|DIR [OVERRIDES...] [--count N] [--batch B] [--ts 0,22,39]
                 [--grid N | --sigmas 80,0.8] [--seed S] [--labels random|balanced|K] [--ema RATE]
                 [--out DIR] [--quiet]

Draws N samples from a model trained with RECIPE and writes, on rank 0,
  DIR/samples_<N>x<H>x<W>x<C>.npz   'arr_0' uint8 NHWC images, 'arr_1' int64 labels (class-conditional
                                    models only): the layout of the reference code's image_sample.py that
                                    its evaluator and `cm eval` read (2-D toys: float32 [N, 2] points)
  DIR/samples.png                   a grid of the first (up to) 64 samples
Weights: a .safetensors or PyTorch .pt state dict (model.safetensors, ema_<rate>.safetensors, a released
checkpoint), or a checkpoint / run directory with --ema RATE (its newest committed checkpoint).
Consistency models: --ts gives indices of noise levels into a --grid-point Karras grid counted from
sigma_max (default: the recipe's sample.ts and sample.grid; 0 alone = one step; e.g. CD ImageNet-64
--ts 0,22,39 --grid 40), or --sigmas lists them (the first must be sigma_max). Multistep is the paper's
Algorithm 1: x = f(x + sqrt(sigma^2 - eps^2) z, sigma) for each later sigma. EDM models: Heun with
sample.edm_steps.
Reproducibility: sample i's noise (initial and at every step) comes from (seed, i, step) and its random
label from (seed, i), so the samples do not depend on --batch or on the number of ranks.
Under mpirun/srun rank r of W draws the contiguous indices [r N / W, (r+1) N / W); each round of --batch
is gathered to rank 0, which holds the whole set (50,000 x 64x64x3 = 614 MB) and writes it.
Options:
  --count N      samples in total (default: the recipe's sample.count)
  --batch B      samples per network forward on each rank (default 64)
  --seed S       noise seed (default 0)
  --labels L     class-conditional models: random (default), balanced (index % classes), or a class K
  --no-clip      do not clip each denoised estimate to [-1, 1] before re-noising (default: clip, as the
                 reference samplers; the recipe's sample.clip = false turns it off too)
  --quiet        no progress line)";

SamplingOptions sampling_options(const Args& args, const Recipe& r) {
  SamplingOptions o;
  o.sigmas = noise_levels_arg(args, r);
  o.edm_steps = r.sample.edm_steps;
  o.count = args.int_or("count", r.sample.count);
  o.batch = args.int_or("batch", 64);
  o.seed = static_cast<uint64_t>(args.int_or("seed", 0));
  o.clip_denoised = clip_arg(args, r);
  labels_arg(args, o);
  return o;
}

void write_picture(const std::string& path, const SampleSet& s, int64_t resolution) {
  const int64_t n = std::min<int64_t>(64, s.size());
  torch::Tensor img;
  if (resolution > 0) {
    auto x = s.samples.narrow(0, 0, n).permute({0, 3, 1, 2}).to(torch::kFloat32) / 127.5 - 1;
    img = image_grid(x, static_cast<int64_t>(std::ceil(std::sqrt(static_cast<double>(n)))));
  } else {
    img = scatter_plot(torch::zeros({0, 2}), s.samples);
  }
  write_png(path, img);
}

// The whole set is gathered on rank 0 and written as one .npz: refuse at once what cannot fit, instead
// of sampling for hours and failing (or swapping) at the end.
void check_count(const SamplingOptions& o, const ModelShape& shape) {
  if (o.count < 1) throw std::invalid_argument(fmt::format("--count {}: need at least one sample", o.count));
  if (o.batch < 1) throw std::invalid_argument(fmt::format("--batch {}: must be >= 1", o.batch));
  const double per = shape.resolution > 0 ? double(shape.channels * shape.resolution * shape.resolution) : 4.0 * double(shape.channels);
  const double need = double(o.count) * (per + 8), memory = double(::sysconf(_SC_PHYS_PAGES)) * double(::sysconf(_SC_PAGESIZE));
  if (need > 0.5 * memory)
    throw std::invalid_argument(fmt::format("--count {}: the set ({:.1f} GB) is kept on rank 0 and written as one .npz, more than half "
                                            "of this machine's memory ({:.1f} GB); sample fewer (the paper's FID uses 50,000)",
                                            o.count, need / 1e9, memory / 1e9));
}

int sample(const Args& args, Recipe r, int rank, dist::Communicator* comm, torch::Device dev) {
  const SamplingOptions opts = sampling_options(args, r);
  const ModelShape shape = recipe_model_shape(r);
  check_count(opts, shape);
  auto net = build_network(r, shape);
  load_weights_arg(*net, *args.opt("weights"), args.opt("ema"));
  net->to(dev);
  const Preconditioning p = preconditioning(r);
  const bool quiet = args.flag("quiet");
  const int world = comm ? comm->size() : 1;
  if (rank == 0 && !quiet)
    fmt::print("sampling {} ({}) on {} rank{}, batch {} per rank, seed {}: {}\n", opts.count,
               shape.resolution > 0 ? fmt::format("{}x{}x{}", shape.resolution, shape.resolution, shape.channels) : fmt::format("{}-D", shape.channels),
               world, world == 1 ? "" : "s", opts.batch, opts.seed,
               p.kind == Preconditioning::Edm ? fmt::format("EDM Heun, {} steps", opts.edm_steps)
                                              : fmt::format("sigmas [{}]", fmt::join(opts.sigmas, ", ")));
  std::fflush(stdout);
  Sampler sampler(net, p, shape, opts, dev);
  SampleSet all = sample_all(sampler, comm, !quiet);
  if (rank != 0) return 0;
  const std::string out = args.opt_or("out", ".");
  const std::string npz = write_sample_npz(out, all);
  write_picture((std::filesystem::path(out) / "samples.png").string(), all, shape.resolution);
  fmt::print("wrote {} ({} samples{}) and {}/samples.png\n", npz, all.size(), all.labels.defined() ? ", labels in arr_1" : "", out);
  return 0;
}

int run(const std::vector<std::string>& argv) {
  if (wants_help(argv, kHelp)) return 0;
  Args args(argv, {"quiet"});
  args.check_known({"weights", "ema", "count", "batch", "ts", "grid", "sigmas", "seed", "labels", "out", "quiet"});
  auto plain = args.plain();
  if (plain.size() != 1) throw std::invalid_argument("expected exactly one RECIPE (see `cm sample --help`)");
  if (!args.opt("weights")) throw std::invalid_argument("--weights FILE|DIR is required (a model.safetensors, ema_<rate>.safetensors, .pt, or a run directory with --ema RATE)");
  Recipe r = Recipe::load(plain[0], args.overrides());
  return run_on_world(r.train.device, r.train.watchdog_s, [&](dist::Communicator* comm, int rank, torch::Device dev) {
    return sample(args, r, rank, comm, dev);
  });
}

CommandRegistration reg({"sample", "draw N samples (sharded over ranks) into the evaluator's .npz", kHelp, run});

}  // namespace
}  // namespace cm::cli
