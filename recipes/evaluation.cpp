// Evaluation of image sets (see evaluation.h).
#include "recipes/evaluation.h"

#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fmt/format.h>
#include <stdexcept>
#include <torch/script.h>  // torch::jit::load: the feature network is TorchScript
#include <torch/torch.h>
#include "datasets/image_sets.h"  // npz / dataset / folder images, npz arrays
#include "datasets/npz.h"         // write_npz
#include "datasets/progress.h"    // progress line with ETA
#include "datasets/ref_stats.h"   // mu, sigma of published .npz files

namespace fs = std::filesystem;

namespace cm {

struct FeatureNetwork::Impl {
  torch::jit::Module module;
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
      "that StyleGAN2-ADA (PyTorch) publishes with its metrics (pretrained/metrics/inception-2015-12-05.pt; clean-fid "
      "uses the same file, EDM and StyleGAN3 the same network as a pickle, which cm cannot read). Download it once "
      "and point cm at it with --inception FILE or CM_INCEPTION=FILE, or put it at "
      "~/.cache/cm/inception-2015-12-05.pt.",
      path, from));
}

FeatureNetwork::FeatureNetwork(const std::string& path, torch::Device device) : impl_(std::make_unique<Impl>()), path_(path) {
  try {
    impl_->module = torch::jit::load(path, device);
  } catch (const c10::Error& e) {
    throw std::runtime_error(fmt::format("{}: not a TorchScript module torch::jit::load can read ({}); cm eval needs the "
                                         "TorchScript inception-2015-12-05.pt (see cm eval --help)", path, e.what_without_backtrace()));
  }
  impl_->module.eval();
  impl_->device = device;
}

FeatureNetwork::~FeatureNetwork() = default;

torch::Tensor FeatureNetwork::call(const torch::Tensor& nhwc, const std::string& flag) {
  if (nhwc.dim() != 4 || nhwc.scalar_type() != torch::kUInt8 || (nhwc.size(3) != 1 && nhwc.size(3) != 3))
    throw std::invalid_argument(fmt::format("feature network input must be uint8 [N, H, W, 1 or 3], got {} {}", c10::str(nhwc.sizes()),
                                            c10::toString(nhwc.scalar_type())));
  torch::NoGradGuard ng;
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

SetFeatures compute_set_features(FeatureNetwork& net, data::ImageSet& set, const EvalOptions& o, bool keep_features, bool want_probs) {
  const int64_t total = o.max_images > 0 ? std::min(o.max_images, set.size()) : set.size();
  if (total < 2) throw std::runtime_error(fmt::format("{}: {} images; statistics need at least 2", set.describe(), total));
  SetFeatures out;
  out.description = set.describe();
  data::Progress bar("inception features", total, o.progress);
  std::unique_ptr<FeatureAccumulator> acc;
  std::vector<torch::Tensor> feats, probs;
  for (int64_t done = 0; done < total;) {
    auto images = set.read(std::min(o.batch, total - done));
    if (images.size(0) == 0) throw std::runtime_error(fmt::format("{}: ended after {} of {} images", set.describe(), done, total));
    auto f = net.features(images);
    if (!acc) acc = std::make_unique<FeatureAccumulator>(f.size(1));
    acc->add(f);
    if (keep_features) feats.push_back(f);
    if (want_probs) probs.push_back(net.probabilities(images));
    done += images.size(0);
    bar.add(images.size(0));
  }
  bar.finish();
  out.stats = acc->stats();
  if (keep_features) out.features = torch::cat(feats);
  if (want_probs) out.probs = torch::cat(probs);
  return out;
}

ReferenceSet load_reference(const std::string& ref, FeatureNetwork& net, const EvalOptions& o, bool need_features) {
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
        r.features = compute_set_features(net, *set, all, true, false).features;
        r.description += fmt::format(" and features of its {} arr_0 images", r.features.size(0));
      }
    }
    return r;
  }
  auto set = data::open_image_set(ref);
  EvalOptions all = o;
  all.max_images = 0;
  SetFeatures f = compute_set_features(net, *set, all, need_features, false);
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
  return fmt::format("{{\"fid\": {}, \"is_mean\": {}, \"is_std\": {}, \"precision\": {}, \"recall\": {}, \"count\": {}}}", num(r.fid),
                     num(r.is_mean), num(r.is_std), num(r.precision), num(r.recall), r.count);
}

}  // namespace cm
