// The feature network of FD_fmnist (recipes/eval/fmnist_features.h): a small convolutional classifier of
// 28x28 grey Fashion-MNIST images that `cm features train` trains from the dataset itself, because the
// Inception network of FID cannot be downloaded on the machines this project is developed on, and
// Inception features of 28x28 grey garments say little anyway.
//
// Input: float [N, 1, 28, 28] with pixel values mapped to [-1, 1] (x / 127.5 - 1, the data convention of
// the training recipes). Layout (VGG-like, 0.44 M parameters, 44 MFLOPs per image):
//   conv3x3 32, conv3x3 32, maxpool 2          28 -> 14
//   conv3x3 64, conv3x3 64, maxpool 2          14 -> 7
//   conv3x3 128, maxpool 2                     7 -> 3
//   flatten 1152, linear 256                   the 256 penultimate features (after batch norm and ReLU)
//   dropout 0.4, linear 10                     logits
// Every convolution is followed by batch norm and ReLU.
#pragma once
#include <torch/torch.h>

namespace cm {

class FmnistClassifierImpl : public torch::nn::Module {
 public:
  static constexpr int64_t kFeatures = 256, kClasses = 10, kSize = 28;
  FmnistClassifierImpl();
  // The penultimate features, [N, 256].
  torch::Tensor features(const torch::Tensor& x);
  // Class logits, [N, 10].
  torch::Tensor forward(const torch::Tensor& x);

 private:
  torch::nn::Sequential body{nullptr};
  torch::nn::Linear fc{nullptr}, head{nullptr};
  torch::nn::BatchNorm1d fc_norm{nullptr};
  torch::nn::Dropout drop{nullptr};
};
TORCH_MODULE(FmnistClassifier);

}  // namespace cm
