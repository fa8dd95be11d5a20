// LPIPS, the perceptual metric of the reference ImageNet-64 / LSUN-256 consistency-model runs: piq 0.7.0's
// LPIPS(replace_pooling=True) applied as openai/consistency_models' karras_diffusion.py applies it.
//
//   1. images narrower than 256 px are bilinearly resized to 224 x 224 (align_corners=False), as the
//      reference does before calling the metric (x_start.shape[-1] < 256);
//   2. x -> (x + 1) / 2, then (x - ImageNet mean) / ImageNet std;
//   3. VGG16 features (torchvision's `features`, max-pools replaced by 2x2 average pools) taken after
//      relu1_2, relu2_2, relu3_3, relu4_3, relu5_3;
//   4. each feature map divided by (its L2 norm over channels + 1e-10);
//   5. squared difference, weighted per channel by the learned LPIPS weights, mean over space, sum over
//      channels and layers.
// The result is per image ([B]); the caller weights and averages.
//
// Weights cannot be downloaded here: the user supplies a safetensors file with
//   features.{0,2,5,7,10,12,14,17,19,21,24,26,28}.weight / .bias   torchvision VGG16 convolutions
//   lin.{0,1,2,3,4}.weight                                          [1, C, 1, 1] LPIPS layer weights
// made by tools/convert_lpips_weights.py (see its header for the sources).
#pragma once
#include <functional>
#include <string>
#include <vector>
#include <torch/torch.h>

namespace cm {

class LpipsImpl : public torch::nn::Module {
 public:
  // The network with LibTorch's default random initialisation and uniform [0, 1) layer weights; load real
  // weights with make_lpips (or cm::load_weights_file). Parameters do not require gradients.
  // resize = false skips step 1 (images are used at their own size): for callers that resize themselves,
  // and for tests that want a cheap network (VGG16 at 224 px costs 15.5 GMAC per image).
  explicit LpipsImpl(bool resize = true);
  // x, y: [B, 3, H, W] images in [-1, 1] (values outside are not clipped). Returns [B]. Differentiable in x, y.
  torch::Tensor forward(const torch::Tensor& x, const torch::Tensor& y);
  // Steps 1-2: the resize rule (when `resize`) and the normalisation.
  static torch::Tensor preprocess(const torch::Tensor& x, bool resize = true);
  // Steps 3-4 on a preprocessed batch: the five unit-normalised feature maps.
  std::vector<torch::Tensor> features(const torch::Tensor& x);

  static constexpr int kLayers = 5;

 private:
  bool resize_;
  torch::nn::Sequential features_{nullptr};
  std::vector<torch::Tensor> lin_;
  std::vector<std::function<torch::Tensor(const torch::Tensor&)>> ops_;  // features_ in order
};
TORCH_MODULE(Lpips);

// Where the LPIPS weights are looked for when a config does not name a file: $CM_LPIPS_WEIGHTS, else
// $XDG_CACHE_HOME/cm/lpips_vgg16.safetensors (~/.cache/cm/... without XDG_CACHE_HOME).
std::string default_lpips_weights_path();

// Loads LPIPS with the weights at `path` (empty: default_lpips_weights_path()), in eval mode. A missing file
// is an error that explains how to make it.
Lpips make_lpips(const std::string& path = "", bool resize = true);

}  // namespace cm
