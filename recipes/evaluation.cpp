// Evaluation of image sets (see evaluation.h).
#include "recipes/evaluation.h"

#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fmt/format.h>
#include <stdexcept>
#include <torch/script.h>  // torch::jit::load: the feature network is TorchScript
#include <torch/torch.h>
#include "core/io/sha256.h"           // names the feature network file
#include "recipes/eval/image_sets.h"  // npz / dataset / folder images, npz arrays
#include "datasets/npz.h"         // write_npz
#include "core/util/progress.h"    // progress line with ETA
#include "recipes/eval/ref_stats.h"   // mu, sigma of published .npz files
#include "distributed/communicator.h"  // all_gather of each round's features
#include "recipes/sampling.h"         // shard_range, round_range
#include "recipes/eval/fmnist_features.h"  // the Fashion-MNIST feature network

namespace fs = std::filesystem;

namespace cm {

struct FeatureNetwork::Impl {
  torch::jit::Module module;
  FmnistClassifier classifier{nullptr};  // when the file is a Fashion-MNIST classifier
  torch::Device device = torch::kCPU;
};

std::string FeatureNetwork::locate(const std::string& option) {
  std::string path = option, from = "--inception";
  if (path.empty()) {
    if (const char* env = std::getenv("CM_INCEPTION"); env && *env) path = env, from = "$CM_INCEPTION";
  }
  if (path.empty()) {
    const char* home = std::getenv("HOME");
    path = (fs::path(home ? home : ".") / ".cache/cm/inception-2015-12-05.pt").string(), from = "the default location";
  }
  if (fs::is_regular_file(path)) return path;
  throw std::runtime_error(fmt::format(
      "the Inception feature network {} ({}) does not exist.\n"
      "cm eval needs inception-2015-12-05.pt: the TorchScript translation of TensorFlow's inception-2015-12-05 graph "
      "that StyleGAN2-ADA (PyTorch) publishes with its metrics (clean-fid uses the same file, EDM and StyleGAN3 the same "
      "network as a pickle, which cm cannot read). Download it once, on a machine with network access:\n"
      "  wget https://nvlabs-fi-cdn.nvidia.com/stylegan2-ada-pytorch/pretrained/metrics/inception-2015-12-05.pt\n"
      "and point cm at it with --inception FILE or CM_INCEPTION=FILE, or put it at "
      "~/.cache/cm/inception-2015-12-05.pt. cm prints the file's sha256 beside every figure it computes with it.",
      path, from));
}

std::string FeatureNetwork::resolve(const std::string& feature_net, const std::string& inception) {
  if (feature_net.empty() || feature_net == "inception") return locate(inception);
  if (feature_net == "fmnist") return shipped_fmnist_features();
  if (fs::is_regular_file(feature_net)) return feature_net;
  throw std::runtime_error(fmt::format("--feature-net {}: not inception, fmnist or an existing file", feature_net));
}

FeatureNetwork::FeatureNetwork(const std::string& path, torch::Device device) : impl_(std::make_unique<Impl>()), path_(path) {
  impl_->device = device;
  if (fs::path(path).extension() == ".safetensors") {
    impl_->classifier = load_fmnist_classifier(path, device);
    kind_ = "fmnist";
    sha256_ = sha256_file(path);
    return;
  }
  try {
    impl_->module = torch::jit::load(path, device);
  } catch (const c10::Error& e) {
    throw std::runtime_error(fmt::format("{}: not a TorchScript module torch::jit::load can read ({}); cm eval needs the "
                                         "TorchScript inception-2015-12-05.pt (see cm eval --help)", path, e.what_without_backtrace()));
  }
  impl_->module.eval();
  impl_->device = device;
  sha256_ = sha256_file(path);
}

FeatureNetwork::~FeatureNetwork() = default;

torch::Tensor FeatureNetwork::call(const torch::Tensor& nhwc, const std::string& flag) {
  if (nhwc.dim() != 4 || nhwc.scalar_type() != torch::kUInt8 || (nhwc.size(3) != 1 && nhwc.size(3) != 3))
    throw std::invalid_argument(fmt::format("feature network input must be uint8 [N, H, W, 1 or 3], got {} {}", c10::str(nhwc.sizes()),
                                            c10::toString(nhwc.scalar_type())));
  torch::NoGradGuard ng;
  if (impl_->classifier) {
    if (flag != "return_features")
      throw std::invalid_argument(fmt::format("{}: the Fashion-MNIST feature network gives features only (FD_fmnist, precision/recall); "
                                              "the Inception Score needs the Inception network", path_));
    return impl_->classifier->features(fmnist_classifier_input(nhwc).to(impl_->device)).to(torch::kCPU, torch::kFloat32);
  }
  auto x = nhwc.permute({0, 3, 1, 2});
  if (x.size(1) == 1) x = x.repeat({1, 3, 1, 1});  // grey -> RGB, as the reference metrics do
  x = x.contiguous().to(impl_->device);
  torch::jit::Kwargs kwargs = {{flag, true}};
  auto out = impl_->module.get_method("forward")({x}, kwargs).toTensor();
  if (out.dim() != 2 || out.size(0) != nhwc.size(0))
    throw std::runtime_error(fmt::format("{}: forward(images, {}=True) returned {}; expected [N, D] for N = {} images", path_, flag,
                                         c10::str(out.sizes()), nhwc.size(0)));
  return out.to(torch::kCPU, torch::kFloat32);
}

torch::Tensor FeatureNetwork::features(const torch::Tensor& nhwc) { return call(nhwc, "return_features"); }
torch::Tensor FeatureNetwork::probabilities(const torch::Tensor& nhwc) { return call(nhwc, "no_output_bias"); }

SetFeatures compute_features(FeatureNetwork& net, int64_t total, const ImageRangeFn& images, const EvalOptions& o, bool keep_features,
                             bool want_probs, dist::Communicator* comm, const std::string& description) {
  if (total < 2) throw std::runtime_error(fmt::format("{}: {} images; statistics need at least 2", description, total));
  const int64_t world = comm ? comm->size() : 1, rank = comm ? comm->rank() : 0;
  if (total < world) throw std::runtime_error(fmt::format("{}: {} images for {} ranks; give every rank at least one", description, total, world));
  SetFeatures out;
  out.description = description;
  data::Progress bar(net.kind() + " features", total, o.progress && rank == 0);
  std::unique_ptr<FeatureAccumulator> acc;
  torch::Tensor feats, probs;  // [total, D] / [total, K] in index order, when kept
  auto take = [&](const torch::Tensor& f, const torch::Tensor& p, int64_t begin) {
    if (!acc) acc = std::make_unique<FeatureAccumulator>(f.size(1));
    acc->add(f);
    if (keep_features) {
      if (!feats.defined()) feats = torch::empty({total, f.size(1)}, torch::kFloat32);
      feats.narrow(0, begin, f.size(0)).copy_(f);
    }
    if (want_probs) {
      if (!probs.defined()) probs = torch::empty({total, p.size(1)}, torch::kFloat32);
      probs.narrow(0, begin, p.size(0)).copy_(p);
    }
  };
  auto forward = [&](int64_t begin, int64_t end, torch::Tensor& f, torch::Tensor& p) {
    auto img = images(begin, end);
    if (img.dim() != 4 || img.size(0) != end - begin)
      throw std::runtime_error(fmt::format("{}: asked for images {}..{}, got {}", description, begin, end, c10::str(img.sizes())));
    f = net.features(img);
    if (want_probs) p = net.probabilities(img);
  };
  if (world == 1) {
    for (int64_t b = 0; b < total; b += o.batch) {
      const int64_t e = std::min(total, b + o.batch);
      torch::Tensor f, p;
      forward(b, e, f, p);
      take(f, p, b);
      bar.add(e - b);
    }
  } else {
    const int64_t rounds = round_count(total, world, o.batch);
    const torch::Device cd = comm->device();  // NCCL gathers CUDA tensors, MPI CPU ones
    int64_t dim = 0, classes = 0;
    for (int64_t j = 0; j < rounds; ++j) {
      const IndexRange mine = round_range(total, rank, world, o.batch, j);
      torch::Tensor f, p;
      if (mine.size() > 0) forward(mine.begin, mine.end, f, p);
      if (j == 0) dim = f.size(1), classes = want_probs ? p.size(1) : 0;  // every rank has images in round 0
      auto pad = [&](const torch::Tensor& t, int64_t cols) {
        auto z = torch::zeros({o.batch, cols}, torch::kFloat32);
        if (t.defined() && t.size(0) > 0) z.narrow(0, 0, t.size(0)).copy_(t);
        return z.to(cd);
      };
      auto fs_all = comm->all_gather(pad(f, dim), "features").cpu();
      torch::Tensor ps_all;
      if (want_probs) ps_all = comm->all_gather(pad(p, classes), "probabilities").cpu();
      for (int64_t r = 0; r < world; ++r) {
        const IndexRange rr = round_range(total, r, world, o.batch, j);
        if (rr.size() == 0) continue;
        take(fs_all[r].narrow(0, 0, rr.size()), want_probs ? ps_all[r].narrow(0, 0, rr.size()) : torch::Tensor(), rr.begin);
        bar.add(rr.size());
      }
    }
  }
  bar.finish();
  out.stats = acc->stats();
  out.features = feats;
  out.probs = probs;
  return out;
}

SetFeatures compute_set_features(FeatureNetwork& net, data::ImageSet& set, const EvalOptions& o, bool keep_features, bool want_probs,
                                 dist::Communicator* comm) {
  const int64_t total = o.max_images > 0 ? std::min(o.max_images, set.size()) : set.size();
  const int64_t world = comm ? comm->size() : 1, rank = comm ? comm->rank() : 0;
  int64_t next = 0;  // this rank reads its own shard, in order
  if (world > 1 && total >= world) {
    next = shard_range(total, rank, world).begin;
    set.skip(next);
  }
  const std::string what = set.describe();
  ImageRangeFn images = [&](int64_t begin, int64_t end) {
    if (begin != next) throw std::logic_error(fmt::format("{}: images {}.. asked for out of order (next is {})", what, begin, next));
    auto t = set.read(end - begin);
    if (t.size(0) != end - begin) throw std::runtime_error(fmt::format("{}: ended after {} of {} images", what, begin + t.size(0), total));
    next = end;
    return t;
  };
  return compute_features(net, total, images, o, keep_features, want_probs, comm, what);
}

ReferenceSet load_reference(const std::string& ref, FeatureNetwork& net, const EvalOptions& o, bool need_features,
                            dist::Communicator* comm) {
  ReferenceSet r;
  const bool npz = fs::is_regular_file(ref) && fs::path(ref).extension() == ".npz";
  if (npz && data::npz_has(ref, "mu")) {
    r.stats = data::read_reference_stats(ref);
    r.description = "statistics " + ref;
    if (need_features) {
      if (data::npz_has(ref, "features")) {
        r.features = data::read_npz_tensor(ref, "features").to(torch::kFloat32);
        r.description += fmt::format(" with {} stored features", r.features.size(0));
      } else if (data::npz_has(ref, "arr_0")) {
        // As the reference evaluator: FID from the stored mu/sigma, precision/recall from the batch's images.
        auto set = data::open_image_set(ref);
        EvalOptions all = o;
        all.max_images = 0;
        r.features = compute_set_features(net, *set, all, true, false, comm).features;
        r.description += fmt::format(" and features of its {} arr_0 images", r.features.size(0));
      }
    }
    return r;
  }
  auto set = data::open_image_set(ref);
  EvalOptions all = o;
  all.max_images = 0;
  SetFeatures f = compute_set_features(net, *set, all, need_features, false, comm);
  r.stats = f.stats;
  r.features = f.features;
  r.description = f.description;
  return r;
}

void write_reference_stats(const std::string& path, const FeatureStats& stats, const torch::Tensor& features) {
  std::vector<std::pair<std::string, torch::Tensor>> arrays = {{"mu", stats.mu.to(torch::kFloat64)}, {"sigma", stats.sigma.to(torch::kFloat64)}};
  if (features.defined()) arrays.emplace_back("features", features.to(torch::kFloat32));
  const fs::path parent = fs::path(path).parent_path();
  if (!parent.empty()) fs::create_directories(parent);
  data::write_npz(path, arrays);
}

std::string eval_json(const EvalResult& r) {
  auto num = [](double v) { return std::isfinite(v) ? fmt::format("{:.17g}", v) : std::string("null"); };
  if (r.feature_net != "inception")
    return fmt::format("{{\"fd_{}\": {}, \"precision\": {}, \"recall\": {}, \"count\": {}, \"feature_net\": \"{}\", \"feature_net_sha256\": \"{}\"}}",
                       r.feature_net, num(r.fid), num(r.precision), num(r.recall), r.count, r.feature_net, r.inception_sha256);
  return fmt::format("{{\"fid\": {}, \"is_mean\": {}, \"is_std\": {}, \"precision\": {}, \"recall\": {}, \"count\": {}, \"inception_sha256\": \"{}\"}}",
                     num(r.fid), num(r.is_mean), num(r.is_std), num(r.precision), num(r.recall), r.count, r.inception_sha256);
}

}  // namespace cm
