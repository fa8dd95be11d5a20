// `cm eval`: FID, Inception Score and precision/recall of a set of samples, and `cm eval ref-stats`.
#include <fmt/format.h>
#include <fstream>
#include <set>
#include <torch/torch.h>
#include "core/metrics/fid.h"             // frechet_distance
#include "core/metrics/image_metrics.h"   // inception_score, precision_recall
#include "core/io/safetensors.h"     // write_file_atomic
#include "recipes/eval/image_sets.h"  // open_image_set
#include "distributed/communicator.h"  // comm->rank()
#include "launch/command.h"
#include "launch/model_args.h"  // run_on_world
#include "recipes/evaluation.h"

namespace cm::cli {
namespace {

const char* kHelp = R"(Usage: cm eval SAMPLES [--ref REF] [--inception FILE] [--metrics fid,is,pr] [--json FILE]
               [--count N] [--batch B] [--splits 10] [--k 3] [--feature-net inception|fmnist|FILE]
       cm eval ref-stats DATASET --out STATS.npz [--features] [--inception FILE] [--feature-net ...] [--batch B]

Evaluates the images in SAMPLES against REF:
  FID        Frechet distance of the Inception pool_3 feature statistics (float64; core/metrics/fid.h)
  IS         Inception Score: exp(mean KL(p(y|x) || p(y))) over --splits consecutive parts (mean and std),
             from the probabilities without the output bias, as StyleGAN3 / improved-gan
  precision, recall   improved precision and recall (Kynkaanniemi et al.) as the guided-diffusion evaluator:
             balls to the --k-th nearest neighbour (k = 3) within each set, squared Euclidean feature distances
Prints one line per metric; --json FILE also writes {fid, is_mean, is_std, precision, recall, count}.
SAMPLES and image sets in REF / DATASET: an .npz with arr_0 uint8 [N, H, W, C] (`cm sample`'s output, the
reference image_sample.py's, a VIRTUAL_*.npz reference batch), a converted dataset directory (manifest.json
and HDF5 shards, `cm data convert`), or a folder of PNG/JPEG/WebP images (subfolders included, sorted by name).
REF: an .npz with mu and sigma (a VIRTUAL_*.npz reference batch, EDM's dataset statistics such as
cifar10-32x32.npz, or `cm eval ref-stats` output) or an image set, whose statistics are computed. FID uses the
stored mu/sigma; precision/recall needs reference features: a 'features' array (`ref-stats --features`), the
arr_0 images of a reference batch (as the reference evaluator), or an image set. Without them pr is skipped.
`cm eval ref-stats` writes mu, sigma (float64) and with --features the [N, 2048] float32 features.

The feature network (--inception FILE, else $CM_INCEPTION, else ~/.cache/cm/inception-2015-12-05.pt) is the
TorchScript inception-2015-12-05.pt that StyleGAN2-ADA (PyTorch) publishes with its metrics
(https://nvlabs-fi-cdn.nvidia.com/stylegan2-ada-pytorch/pretrained/metrics/inception-2015-12-05.pt; also what
clean-fid loads; EDM and StyleGAN3 use the same network from a pickle); its sha256 is printed and in --json.
It is called as net(images, return_features=True) for features and net(images,
no_output_bias=True) for IS, with uint8 [N, 3, H, W] images (grey ones repeated to 3 channels) that it resizes
to 299 x 299 itself. It runs on the GPU when there is one. 50,000 images are the papers' convention.
Under mpirun/srun the images are split over the ranks (rank r of W takes the contiguous r-th W-th of each
set, one GPU each), their features gathered, and rank 0 prints and writes the results; the figures agree
with one process's to float64 rounding.

--feature-net fmnist uses the Fashion-MNIST classifier that cm trained (recipes/weights/fmnist_features.safetensors,
`cm features --help`) instead of Inception: the Frechet distance in its 256 penultimate features is FD_fmnist
(printed as such, JSON key fd_fmnist, never called FID; its scale is in README), plus precision/recall in the
same features; there is no IS. It takes grey 28x28 images or 32x32 ones (padded; centre-cropped to 28).
--feature-net FILE: such a classifier file (.safetensors) or a TorchScript Inception.
Options:
  --metrics L   which of fid (fd is the same), is, pr (default: all that the inputs allow; without --ref only is)
  --count N     only the first N images of SAMPLES
  --batch B     images per network forward (default 100))";

std::set<std::string> parse_metrics(const std::string& s) {
  std::set<std::string> out;
  size_t start = 0;
  while (start <= s.size()) {
    const size_t comma = s.find(',', start);
    std::string m = s.substr(start, comma == std::string::npos ? std::string::npos : comma - start);
    if (m == "fd") m = "fid";
    if (m != "fid" && m != "is" && m != "pr") throw std::invalid_argument(fmt::format("--metrics: '{}' is not one of fid (fd), is, pr", m));
    out.insert(m);
    if (comma == std::string::npos) break;
    start = comma + 1;
  }
  return out;
}


EvalOptions eval_options(const Args& args) {
  EvalOptions o;
  o.batch = args.int_or("batch", 100);
  o.max_images = args.int_or("count", 0);
  o.progress = !args.flag("quiet");
  if (o.batch < 1) throw std::invalid_argument("--batch must be >= 1");
  if (args.opt("count") && o.max_images < 1) throw std::invalid_argument(fmt::format("--count {}: must be >= 1 (or leave it out for the whole set)", o.max_images));
  return o;
}

int ref_stats(const Args& args, const std::vector<std::string>& plain, dist::Communicator* comm, torch::Device dev) {
  if (plain.size() != 2) throw std::invalid_argument("usage: cm eval ref-stats DATASET --out STATS.npz (see `cm eval --help`)");
  auto out = args.opt("out");
  if (!out) throw std::invalid_argument("cm eval ref-stats needs --out STATS.npz");
  FeatureNetwork net(FeatureNetwork::resolve(args.opt_or("feature-net", ""), args.opt_or("inception", "")), dev);
  auto set = data::open_image_set(plain[1]);
  const bool keep = args.flag("features");
  SetFeatures f = compute_set_features(net, *set, eval_options(args), keep, false, comm);
  if (comm && comm->rank() != 0) return 0;
  write_reference_stats(*out, f.stats, f.features);
  fmt::print("{}: mu [{}], sigma [{}, {}] of {} images{} -> {}\n", f.description, f.stats.mu.size(0), f.stats.sigma.size(0),
             f.stats.sigma.size(1), f.stats.count, keep ? ", with their features" : "", *out);
  return 0;
}

int evaluate(const Args& args, dist::Communicator* comm, torch::Device dev) {
  const auto plain = args.plain();
  if (!plain.empty() && plain[0] == "ref-stats") return ref_stats(args, plain, comm, dev);
  if (plain.size() != 1) throw std::invalid_argument("expected exactly one SAMPLES set (see `cm eval --help`)");
  const auto ref = args.opt("ref");
  const bool explicit_metrics = args.opt("metrics").has_value();
  if (explicit_metrics) {  // the checks that need no network, before loading it
    const auto m = parse_metrics(*args.opt("metrics"));
    if (!ref && (m.count("fid") || m.count("pr"))) throw std::invalid_argument("fid and pr need --ref REF (see `cm eval --help`)");
  }
  const EvalOptions o = eval_options(args);
  const int64_t splits = args.int_or("splits", 10), k = args.int_or("k", 3);
  if (splits < 1) throw std::invalid_argument(fmt::format("--splits {}: must be >= 1", splits));
  if (k < 1) throw std::invalid_argument(fmt::format("--k {}: the k of k-nearest-neighbour precision/recall must be >= 1", k));
  FeatureNetwork net(FeatureNetwork::resolve(args.opt_or("feature-net", ""), args.opt_or("inception", "")), dev);
  const std::string fd = net.metric_name();
  if (!net.is_inception() && !ref) throw std::invalid_argument(fmt::format("{} needs --ref REF (the training or test set, or its ref-stats)", fd));
  // Explicit metrics were checked against --ref above; the defaults without --ref are "is" alone.
  std::set<std::string> metrics = parse_metrics(args.opt_or("metrics", ref ? (net.is_inception() ? "fid,is,pr" : "fid,pr") : "is"));
  if (!net.is_inception() && metrics.count("is"))
    throw std::invalid_argument(fmt::format("--metrics is: the Inception Score needs the Inception network; {} has features only", net.path()));

  const bool main_rank = !comm || comm->rank() == 0;
  auto samples_set = data::open_image_set(plain[0]);
  ReferenceSet reference;
  if (ref) {
    reference = load_reference(*ref, net, o, metrics.count("pr") > 0, comm);
    if (metrics.count("pr") && !reference.features.defined()) {
      if (explicit_metrics)
        throw std::invalid_argument(fmt::format("{} holds statistics only (no 'features', no arr_0 images): precision/recall "
                                                "needs reference features; make them with `cm eval ref-stats DATASET --features`", *ref));
      if (main_rank) fmt::print("note: {} holds statistics only, so precision/recall is skipped (`cm eval ref-stats DATASET --features` stores features)\n", *ref);
      metrics.erase("pr");
    }
  }
  SetFeatures s = compute_set_features(net, *samples_set, o, metrics.count("pr") > 0, metrics.count("is") > 0, comm);
  if (!main_rank) return 0;  // every rank holds the gathered features; rank 0 reports
  EvalResult r;
  r.count = s.stats.count;
  r.inception_sha256 = net.sha256();
  r.feature_net = net.kind();
  fmt::print("{:<10} {} (sha256 {})\n", net.is_inception() ? "inception" : "features", net.path(), net.sha256());
  fmt::print("samples    {}\n", s.description);
  if (ref) fmt::print("reference  {}\n", reference.description);
  if (metrics.count("fid")) {
    r.fid = frechet_distance(s.stats, reference.stats);
    fmt::print("{:<10} {:.4f}\n", fd, r.fid);
  }
  if (metrics.count("is")) {
    InceptionScore is = inception_score(s.probs, splits);
    r.is_mean = is.mean, r.is_std = is.std;
    fmt::print("IS         {:.4f} +- {:.4f} ({} splits)\n", is.mean, is.std, is.splits);
  }
  if (metrics.count("pr")) {
    PrecisionRecall pr = precision_recall(reference.features, s.features, k);
    r.precision = pr.precision, r.recall = pr.recall;
    fmt::print("precision  {:.4f}\nrecall     {:.4f}  (k = {}; {} reference, {} sample features)\n", pr.precision, pr.recall, k,
               reference.features.size(0), s.features.size(0));
  }
  fmt::print("count      {}\n", r.count);
  if (auto j = args.opt("json")) {
    write_file_atomic(*j, eval_json(r) + "\n");
    fmt::print("wrote {}\n", *j);
  }
  return 0;
}

int run(const std::vector<std::string>& argv) {
  if (wants_help(argv, kHelp)) return 0;
  Args args(argv, {"features", "quiet"});
  args.check_known({"ref", "inception", "feature-net", "metrics", "json", "count", "batch", "splits", "k", "out", "features", "quiet"});
  return run_on_world("auto", 600, [&](dist::Communicator* comm, int, torch::Device dev) { return evaluate(args, comm, dev); });
}

CommandRegistration reg({"eval", "FID, Inception Score and precision/recall of samples (TorchScript Inception), or FD_fmnist", kHelp, run});

}  // namespace
}  // namespace cm::cli
