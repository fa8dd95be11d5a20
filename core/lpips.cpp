// LPIPS (see lpips.h).
#include "core/lpips.h"

#include <fmt/format.h>
#include <cstdlib>
#include <filesystem>
#include <stdexcept>
#include "core/weights.h"

namespace F = torch::nn::functional;

namespace cm {

namespace {
// torchvision VGG16 configuration "D": channels per conv, 0 = pool. Module indices follow from it
// (conv, relu, ..., pool), which is what makes the parameter names features.<index>.weight.
const int kVgg16[] = {64, 64, 0, 128, 128, 0, 256, 256, 256, 0, 512, 512, 512, 0, 512, 512, 512};
// The ReLUs after conv1_2, conv2_2, conv3_3, conv4_3, conv5_3 (torchvision indices 3, 8, 15, 22, 29).
const int kTapIndices[LpipsImpl::kLayers] = {3, 8, 15, 22, 29};
const int kTapChannels[LpipsImpl::kLayers] = {64, 128, 256, 512, 512};
constexpr double kEps = 1e-10;  // piq's EPS in the feature normalisation
}  // namespace

LpipsImpl::LpipsImpl(bool resize) : resize_(resize) {
  features_ = torch::nn::Sequential();
  int64_t in = 3;
  for (int c : kVgg16) {
    if (c == 0) {
      // replace_pooling=True: piq swaps every MaxPool2d for AvgPool2d(kernel 2, stride 2).
      torch::nn::AvgPool2d pool(torch::nn::AvgPool2dOptions(2).stride(2));
      features_->push_back(pool);
      ops_.push_back([pool = pool.ptr()](const torch::Tensor& h) { return pool->forward(h); });
    } else {
      torch::nn::Conv2d conv(torch::nn::Conv2dOptions(in, c, 3).padding(1));
      features_->push_back(conv);
      ops_.push_back([conv = conv.ptr()](const torch::Tensor& h) { return conv->forward(h); });
      features_->push_back(torch::nn::ReLU());
      ops_.push_back([](const torch::Tensor& h) { return torch::relu(h); });
      in = c;
    }
  }
  // pool5 (index 30) follows relu5_3 in torchvision but nothing reads its output, so it is left out.
  register_module("features", features_);
  // lin.<k>.weight: one [1, C, 1, 1] weight per tapped layer (a 1x1 convolution to one channel, no bias).
  auto lin = std::make_shared<torch::nn::Module>();
  for (int k = 0; k < kLayers; ++k) {
    auto layer = std::make_shared<torch::nn::Module>();
    lin_.push_back(layer->register_parameter("weight", torch::rand({1, kTapChannels[k], 1, 1})));
    lin->register_module(std::to_string(k), layer);
  }
  register_module("lin", lin);
  for (auto& p : parameters()) p.set_requires_grad(false);
}

torch::Tensor LpipsImpl::preprocess(const torch::Tensor& x, bool resize) {
  torch::Tensor h = x;
  if (resize && x.size(-1) < 256)
    h = F::interpolate(x, F::InterpolateFuncOptions()
                              .size(std::vector<int64_t>{224, 224})
                              .mode(torch::kBilinear)
                              .align_corners(false));
  h = (h + 1) / 2;
  const auto o = h.options();
  auto mean = torch::tensor({0.485, 0.456, 0.406}, o).view({1, 3, 1, 1});
  auto std = torch::tensor({0.229, 0.224, 0.225}, o).view({1, 3, 1, 1});
  return (h - mean) / std;
}

std::vector<torch::Tensor> LpipsImpl::features(const torch::Tensor& x) {
  std::vector<torch::Tensor> out;
  torch::Tensor h = x;
  int tap = 0;
  for (size_t i = 0; i < ops_.size() && tap < kLayers; ++i) {
    h = ops_[i](h);
    if (static_cast<int>(i) == kTapIndices[tap]) {
      auto norm = torch::sqrt(torch::sum(h * h, 1, /*keepdim=*/true));
      out.push_back(h / (norm + kEps));
      ++tap;
    }
  }
  return out;
}

torch::Tensor LpipsImpl::forward(const torch::Tensor& x, const torch::Tensor& y) {
  if (x.sizes() != y.sizes() || x.dim() != 4 || x.size(1) != 3)
    throw std::invalid_argument(fmt::format("LPIPS: expected two [B, 3, H, W] images of the same shape, got [{}] and [{}]",
                                            fmt::join(x.sizes(), ", "), fmt::join(y.sizes(), ", ")));
  // One pass over the stacked batch: the same arithmetic as two passes, half the kernel launches.
  auto f = features(preprocess(torch::cat({x, y}, 0), resize_));
  const int64_t b = x.size(0);
  torch::Tensor total;
  for (int k = 0; k < kLayers; ++k) {
    auto d = (f[k].narrow(0, 0, b) - f[k].narrow(0, b, b)).square();
    auto v = (d * lin_[k].to(d.scalar_type())).mean({2, 3}).sum(1);
    total = total.defined() ? total + v : v;
  }
  return total;
}

std::string default_lpips_weights_path() {
  if (const char* p = std::getenv("CM_LPIPS_WEIGHTS"); p && *p) return p;
  std::string base;
  if (const char* x = std::getenv("XDG_CACHE_HOME"); x && *x) base = x;
  else if (const char* h = std::getenv("HOME"); h && *h) base = std::string(h) + "/.cache";
  else base = ".";
  return base + "/cm/lpips_vgg16.safetensors";
}

Lpips make_lpips(const std::string& path_in, bool resize) {
  const std::string path = path_in.empty() ? default_lpips_weights_path() : path_in;
  std::error_code ec;
  if (!std::filesystem::is_regular_file(path, ec))
    throw std::runtime_error(fmt::format(
        "LPIPS weights not found at '{}'.\n"
        "  LPIPS needs torchvision's VGG16 weights plus the LPIPS layer weights, which this program cannot download.\n"
        "  Make the file once, on any machine with Python and PyTorch:\n"
        "    wget https://download.pytorch.org/models/vgg16-397923af.pth\n"
        "    wget https://github.com/photosynthesis-team/photosynthesis.metrics/releases/download/v0.4.0/lpips_weights.pt\n"
        "    python3 tools/convert_lpips_weights.py --vgg vgg16-397923af.pth --lin lpips_weights.pt --out {}\n"
        "  then pass that file (or set CM_LPIPS_WEIGHTS, or put it at {}).",
        path, path, default_lpips_weights_path()));
  Lpips net(resize);
  load_weights_file(*net, path);
  net->eval();
  return net;
}

}  // namespace cm
