// `cm ts-search`: the intermediate noise level of 2-step sampling, chosen by FID (the reference's search).
#include <chrono>
#include <cmath>
#include <fmt/format.h>
#include <limits>
#include <torch/torch.h>
#include "core/metrics/fid.h"                  // frechet_distance
#include "core/io/safetensors.h"          // write_file_atomic
#include "core/sampler.h"              // ts_to_sigmas
#include "distributed/communicator.h"  // comm->rank()
#include "launch/command.h"
#include "launch/model_args.h"  // --weights/--ema, --labels, run_on_world
#include "recipes/evaluation.h"
#include "recipes/recipe.h"
#include "recipes/sampling.h"

namespace cm::cli {
namespace {

const char* kHelp = R"(Usage: cm ts-search RECIPE --weights FILE|DIR [--ema RATE] [OVERRIDES...] --ref REF [--inception FILE] [--feature-net NET]
                    [--grid N] [--from A] [--to B] [--stride S] [--refine] [--count 5000] [--batch 100]
                    [--seed S] [--labels L] [--no-clip] [--json FILE] [--quiet]

Searches the intermediate step of 2-step consistency sampling as the paper did: for each candidate index i of
an N-point Karras grid (--grid, default the recipe's sample.grid), FID of --count samples with ts = 0,i,N-1
(two network evaluations: f at sigma_max, then at sigma_i after adding sqrt(sigma_i^2 - eps^2) noise) against
REF, on fewer samples than the final 50,000 (default 5,000). Candidates: i = A, A+S, ... <= B (default A = 1,
B = N-2, S = 1); --refine then tries every index within S of the best one. Every candidate uses the same
noise (--seed), so the differences are the sampler's. Prints a table and the best ts; --json FILE writes
{"grid": N, "count": M, "metric": "fid", "results": [{"index": i, "sigma": s, "fid": f}, ...], "best": {...}}
(with --feature-net fmnist the figures are under "fd_fmnist", the network's hash under "feature_net_sha256").
REF, --inception and --feature-net as in `cm eval` (--feature-net fmnist searches by FD_fmnist; a statistics .npz such as a VIRTUAL_*.npz or `cm eval ref-stats`
output, or an image set). Under mpirun/srun the samples and features are split over the ranks.
Denoised estimates are clipped to [-1, 1] before re-noising, as in `cm sample` (--no-clip: raw estimates).
For reference, the published choices: CD ImageNet-64 ts = 0,22,39 (N = 40), CT ImageNet-64 0,106,200
(N = 201), CIFAR-10 0,11,17 (N = 18).)";

struct Candidate {
  int64_t index = 0;
  double sigma = 0, fid = std::numeric_limits<double>::quiet_NaN();
};

// The candidate indices i = from, from + stride, ... <= to of a grid-point Karras grid.
struct Candidates {
  int64_t grid = 0, from = 0, to = 0, stride = 0;
};

Candidates read_candidates(const Args& args, const Recipe& r) {
  Candidates c;
  c.grid = args.int_or("grid", r.sample.grid);
  if (c.grid < 3) throw std::invalid_argument(fmt::format("--grid {}: 2-step sampling needs N >= 3", c.grid));
  c.from = args.int_or("from", 1), c.to = args.int_or("to", c.grid - 2), c.stride = args.int_or("stride", 1);
  if (c.from < 1 || c.to > c.grid - 2 || c.from > c.to || c.stride < 1)
    throw std::invalid_argument(fmt::format("candidates --from {} --to {} --stride {}: need 1 <= from <= to <= N-2 = {} and stride >= 1", c.from,
                                            c.to, c.stride, c.grid - 2));
  return c;
}

SamplingOptions read_sampling(const Args& args, const Recipe& r) {
  SamplingOptions so;
  so.count = args.int_or("count", 5000);
  so.seed = static_cast<uint64_t>(args.int_or("seed", 0));
  so.clip_denoised = clip_arg(args, r);
  labels_arg(args, so);
  if (so.count < 2) throw std::invalid_argument("--count must be >= 2");
  return so;
}

// The FID of each candidate index (each computed once, all from the same noise).
struct CandidateFids {
  NetworkImpl& net;
  const Preconditioning& p;
  const ModelShape& shape;
  torch::Device dev;
  dist::Communicator* comm;
  FeatureNetwork& fnet;
  const ReferenceSet& ref;
  const EvalOptions& o;
  SamplingOptions so;
  int64_t grid = 0;
  bool verbose = false;  // a line per candidate
  std::vector<Candidate> done;

  void evaluate(int64_t i) {
    for (auto& c : done)
      if (c.index == i) return;
    const auto t0 = std::chrono::steady_clock::now();
    Candidate c;
    c.index = i;
    so.sigmas = ts_to_sigmas({0, i, grid - 1}, grid, p.range);
    c.sigma = so.sigmas[1];
    ImageRangeFn images = [&](int64_t b, int64_t e) { return to_uint8_reference(sample_floats(net, p, shape, so, b, e, dev).x.cpu()); };
    SetFeatures f = compute_features(fnet, so.count, images, o, false, false, comm, "samples");
    c.fid = frechet_distance(f.stats, ref.stats);
    done.push_back(c);
    if (verbose)
      fmt::print("  ts = 0,{},{}   sigma {:<10.5g} {} {:.4f}   ({:.1f}s)\n", i, grid - 1, c.sigma, fnet.metric_name(), c.fid,
                 std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
    std::fflush(stdout);
  }
  Candidate best() const {
    return *std::min_element(done.begin(), done.end(), [](const Candidate& a, const Candidate& b) { return a.fid < b.fid; });
  }
  // Every candidate; with --refine (and stride > 1), then every index within stride of the best one.
  void run(const Candidates& c, bool refine) {
    for (int64_t i = c.from; i <= c.to; i += c.stride) evaluate(i);
    if (refine && c.stride > 1) {
      const int64_t b = best().index;
      for (int64_t i = std::max(c.from, b - c.stride + 1); i <= std::min(c.to, b + c.stride - 1); ++i) evaluate(i);
    }
  }
};

// The best candidate, and with --json the whole table (rank 0).
void report(const Args& args, CandidateFids& fids) {
  auto& done = fids.done;
  std::sort(done.begin(), done.end(), [](const Candidate& a, const Candidate& b) { return a.index < b.index; });
  const Candidate b = fids.best();
  const int64_t grid = fids.grid, count = fids.so.count;
  fmt::print("best: --ts 0,{},{} --grid {} (sigma {:.5g}), {} {:.4f} on {} samples\n", b.index, grid - 1, grid, b.sigma, fids.fnet.metric_name(), b.fid, count);
  if (auto j = args.opt("json")) {
    // The figure under the metric's own key, as in `cm eval --json`: "fid" with Inception, "fd_fmnist" with the
    // Fashion-MNIST network (never called FID); the network's SHA-256 likewise under its own key.
    const std::string key = fids.fnet.metric_key(), sha_key = fids.fnet.is_inception() ? "inception_sha256" : "feature_net_sha256";
    std::string results;
    for (auto& c : done)
      results += fmt::format("{}{{\"index\": {}, \"sigma\": {:.17g}, \"{}\": {:.17g}}}", results.empty() ? "" : ", ", c.index, c.sigma, key, c.fid);
    write_file_atomic(*j, fmt::format("{{\"grid\": {}, \"count\": {}, \"metric\": \"{}\", \"feature_net\": \"{}\", \"{}\": \"{}\", \"results\": [{}], "
                                      "\"best\": {{\"index\": {}, \"sigma\": {:.17g}, \"{}\": {:.17g}}}}}\n",
                                      grid, count, key, fids.fnet.kind(), sha_key, fids.fnet.sha256(), results, b.index, b.sigma, key, b.fid));
    fmt::print("wrote {}\n", *j);
  }
}

int search(const Args& args, const Recipe& r, dist::Communicator* comm, torch::Device dev) {
  const bool main = !comm || comm->rank() == 0, quiet = args.flag("quiet");
  if (!r.method.is_consistency()) throw std::invalid_argument(fmt::format("recipe {} trains an EDM model; ts-search is for consistency models", r.name));
  const ModelShape shape = recipe_model_shape(r);
  if (shape.resolution == 0) throw std::invalid_argument("ts-search measures FID of images; this recipe's model makes 2-D points");
  const Candidates cands = read_candidates(args, r);
  auto net = build_network(r, shape);
  load_weights_arg(*net, *args.opt("weights"), args.opt("ema"));
  net->to(dev);
  net->eval();
  const Preconditioning p = preconditioning(r);

  EvalOptions o;
  o.batch = args.int_or("batch", 100);
  o.progress = false;
  if (o.batch < 1) throw std::invalid_argument("--batch must be >= 1");
  FeatureNetwork fnet(FeatureNetwork::resolve(args.opt_or("feature-net", ""), args.opt_or("inception", "")), dev);
  ReferenceSet ref = load_reference(*args.opt("ref"), fnet, o, false, comm);
  CandidateFids fids{*net, p, shape, dev, comm, fnet, ref, o, read_sampling(args, r), cands.grid, main && !quiet, {}};
  if (main && !quiet)
    fmt::print("ts-search: {} of {} samples per candidate, {}-point grid, against {}; {} {} (sha256 {})\n", fnet.metric_name(), fids.so.count,
               cands.grid, ref.description, fnet.is_inception() ? "inception" : "features", fnet.path(), fnet.sha256());
  fids.run(cands, args.flag("refine"));
  if (main) report(args, fids);
  return 0;
}

int run(const std::vector<std::string>& argv) {
  if (wants_help(argv, kHelp)) return 0;
  Args args(argv, {"refine", "quiet"});
  args.check_known({"weights", "ema", "ref", "inception", "feature-net", "grid", "from", "to", "stride", "refine", "count", "batch", "seed", "labels", "json", "quiet"});
  const auto plain = args.plain();
  if (plain.size() != 1) throw std::invalid_argument("expected exactly one RECIPE (see `cm ts-search --help`)");
  if (!args.opt("weights")) throw std::invalid_argument("--weights FILE|DIR is required (see `cm ts-search --help`)");
  if (!args.opt("ref")) throw std::invalid_argument("--ref REF is required: the statistics or images to compute FID against");
  Recipe r = Recipe::load(plain[0], args.overrides());
  return run_on_world(r.train.device, r.train.watchdog_s, [&](dist::Communicator* comm, int, torch::Device dev) { return search(args, r, comm, dev); });
}

CommandRegistration reg({"ts-search", "pick the intermediate step of 2-step sampling by FID", kHelp, run});

}  // namespace
}  // namespace cm::cli
