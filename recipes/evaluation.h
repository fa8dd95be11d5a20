// Evaluation of image sets (`cm eval`): features from a user-supplied TorchScript Inception, then FID
// (core/metrics/fid.h), Inception Score and precision / recall (core/metrics/image_metrics.h).
//
// The feature network is the TorchScript translation of TensorFlow's inception-2015-12-05 graph that
// StyleGAN2-ADA (PyTorch) published as metrics/inception-2015-12-05.pt
// (https://nvlabs-fi-cdn.nvidia.com/stylegan2-ada-pytorch/pretrained/metrics/inception-2015-12-05.pt) and that
// EDM, StyleGAN3 and many later papers compute FID with. Its calling convention, as those metrics use it:
//   features = net(images, return_features=True)   # [N, 2048] pool_3 features (FID, precision/recall)
//   probs    = net(images, no_output_bias=True)     # [N, 1008] softmax without the output bias (IS, as
//                                                   #  the original improved-gan implementation)
// images: [N, 3, H, W] with values 0..255 (uint8), any H, W: the module resizes to 299 x 299 itself.
// Grey images are repeated to 3 channels first, as those metrics do.
//
// The other feature network is the Fashion-MNIST classifier that cm trains itself (a .safetensors file,
// recipes/eval/fmnist_features.h): its penultimate features give FD_fmnist, a Frechet distance on its own
// scale, never called FID; it has no Inception Score.
#pragma once
#include <cstdint>
#include <functional>
#include <limits>
#include <memory>
#include <string>
#include <torch/types.h>
#include "core/metrics/fid.h"

namespace cm::data {
class ImageSet;
}
namespace cm::dist {
class Communicator;
}

namespace cm {

class FeatureNetwork {
 public:
  // The file to load: `option` (--inception) if given, else $CM_INCEPTION, else
  // ~/.cache/cm/inception-2015-12-05.pt. Throws saying where to get the file and how to point at it.
  static std::string locate(const std::string& option);
  // The file of --feature-net NAME: "" or "inception" = locate(inception); "fmnist" = the shipped
  // Fashion-MNIST classifier (recipes/weights/fmnist_features.safetensors); else NAME is a file (a
  // .safetensors classifier from `cm features train`, or a TorchScript Inception).
  static std::string resolve(const std::string& feature_net, const std::string& inception);
  // A .safetensors file is a Fashion-MNIST classifier, anything else a TorchScript Inception.
  FeatureNetwork(const std::string& path, torch::Device device);
  ~FeatureNetwork();
  // images: uint8 [N, H, W, C], C = 1 or 3. Results are float32 on the CPU.
  torch::Tensor features(const torch::Tensor& nhwc);
  torch::Tensor probabilities(const torch::Tensor& nhwc);
  const std::string& path() const { return path_; }
  // SHA-256 of the file, printed and stored beside every figure so it names the exact network.
  const std::string& sha256() const { return sha256_; }
  bool is_inception() const { return kind_ == "inception"; }
  const std::string& kind() const { return kind_; }   // "inception" or "fmnist"
  // What the Frechet distance in these features is called: "FID" / "FD_fmnist", and its key in JSON and
  // metrics.jsonl: "fid" / "fd_fmnist".
  std::string metric_name() const { return is_inception() ? "FID" : "FD_fmnist"; }
  std::string metric_key() const { return is_inception() ? "fid" : "fd_fmnist"; }

 private:
  torch::Tensor call(const torch::Tensor& nhwc, const std::string& flag);
  struct Impl;
  std::unique_ptr<Impl> impl_;
  std::string path_, sha256_, kind_ = "inception";
};

struct EvalOptions {
  int64_t batch = 100;     // images per network forward
  int64_t max_images = 0;  // use only the first N images of a set (0 = all)
  bool progress = true;    // progress line with ETA on stderr
};

// What one pass of a set through the network gives.
struct SetFeatures {
  FeatureStats stats;    // mean and covariance (float64), always
  torch::Tensor features;  // [N, D] float32, when asked for (precision/recall, stored reference features)
  torch::Tensor probs;     // [N, K] float32, when asked for (IS)
  std::string description;
};
// The features of `total` images, uint8 NHWC, that images(begin, end) gives for each index range, split
// over the ranks of `comm` (null or size 1: this process alone): rank r takes the contiguous indices
// shard_range(total, r, W) in rounds of o.batch (recipes/sampling.h), each round's features are all-gathered,
// and every rank accumulates the statistics of all of them (float64) and, when asked, holds the features and
// probabilities of every image in index order. The statistics agree with one rank's to float64 rounding.
// images() is called on each rank for that rank's ranges only, in increasing order. Progress on rank 0.
using ImageRangeFn = std::function<torch::Tensor(int64_t begin, int64_t end)>;
SetFeatures compute_features(FeatureNetwork& net, int64_t total, const ImageRangeFn& images, const EvalOptions& o, bool keep_features,
                             bool want_probs, dist::Communicator* comm, const std::string& description);
// The same over an image set (its first o.max_images, or all).
SetFeatures compute_set_features(FeatureNetwork& net, data::ImageSet& set, const EvalOptions& o, bool keep_features,
                                 bool want_probs, dist::Communicator* comm = nullptr);

// Reference for FID and precision/recall. REF is an .npz with mu and sigma (a VIRTUAL_*.npz reference batch, EDM's
// dataset statistics, or `cm eval ref-stats` output), whose features for precision/recall come from its
// 'features' array or else from its 'arr_0' images; or an image set (an .npz of images, a converted dataset
// directory, a folder of images), whose statistics and features are computed. When `need_features` and REF has
// neither, features stays undefined.
struct ReferenceSet {
  FeatureStats stats;
  torch::Tensor features;
  std::string description;
};
ReferenceSet load_reference(const std::string& ref, FeatureNetwork& net, const EvalOptions& o, bool need_features,
                            dist::Communicator* comm = nullptr);

// mu, sigma (float64) and, when `features` is defined, 'features' (float32 [N, D]) as an .npz, atomically.
void write_reference_stats(const std::string& path, const FeatureStats& stats, const torch::Tensor& features);

struct EvalResult {
  static constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();
  double fid = kNaN, is_mean = kNaN, is_std = kNaN, precision = kNaN, recall = kNaN;
  int64_t count = 0;
  std::string inception_sha256;     // the feature network's SHA-256 (whichever it is)
  std::string feature_net = "inception";  // FeatureNetwork::kind()
};
// {"fid": .., "is_mean": .., "is_std": .., "precision": .., "recall": .., "count": N, "inception_sha256": ".."}; metrics not
// computed are null. With the Fashion-MNIST network: {"fd_fmnist": .., "precision": .., "recall": .., "count": N,
// "feature_net": "fmnist", "feature_net_sha256": ".."} (no "fid", no IS).
std::string eval_json(const EvalResult& r);

}  // namespace cm
