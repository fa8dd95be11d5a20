// The Fashion-MNIST feature classifier (see fmnist_classifier.h).
#include "core/nets/fmnist_classifier.h"

#include <fmt/format.h>
#include <stdexcept>

namespace cm {
namespace {

void add_conv(torch::nn::Sequential& s, int64_t in, int64_t out) {
  s->push_back(torch::nn::Conv2d(torch::nn::Conv2dOptions(in, out, 3).padding(1).bias(false)));
  s->push_back(torch::nn::BatchNorm2d(out));
  s->push_back(torch::nn::ReLU());
}

}  // namespace

FmnistClassifierImpl::FmnistClassifierImpl() {
  torch::nn::Sequential s;
  add_conv(s, 1, 32);
  add_conv(s, 32, 32);
  s->push_back(torch::nn::MaxPool2d(2));
  add_conv(s, 32, 64);
  add_conv(s, 64, 64);
  s->push_back(torch::nn::MaxPool2d(2));
  add_conv(s, 64, 128);
  s->push_back(torch::nn::MaxPool2d(2));
  body = register_module("body", s);
  fc = register_module("fc", torch::nn::Linear(torch::nn::LinearOptions(128 * 3 * 3, kFeatures).bias(false)));
  fc_norm = register_module("fc_norm", torch::nn::BatchNorm1d(kFeatures));
  drop = register_module("drop", torch::nn::Dropout(0.4));
  head = register_module("head", torch::nn::Linear(kFeatures, kClasses));
}

torch::Tensor FmnistClassifierImpl::features(const torch::Tensor& x) {
  if (x.dim() != 4 || x.size(1) != 1 || x.size(2) != kSize || x.size(3) != kSize)
    throw std::invalid_argument(fmt::format("the Fashion-MNIST classifier takes [N, 1, 28, 28] images, got {}", c10::str(x.sizes())));
  auto h = body->forward(x).flatten(1);
  return torch::relu(fc_norm->forward(fc->forward(h)));
}

torch::Tensor FmnistClassifierImpl::forward(const torch::Tensor& x) { return head->forward(drop->forward(features(x))); }

}  // namespace cm
