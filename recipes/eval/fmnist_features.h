// FD_fmnist: the Frechet distance in the penultimate features of a Fashion-MNIST classifier that cm trains
// itself (core/nets/fmnist_classifier.h), the offline quality figure of the Fashion-MNIST runs. It is not
// FID (that needs Inception) and is never called so: its scale is its own (README "FD_fmnist" gives the
// floor, test split against train split, and what blur and noise do to it). The shipped weights,
// recipes/weights/fmnist_features.safetensors, are named by their SHA-256 beside every figure.
#pragma once
#include <cstdint>
#include <functional>
#include <map>
#include <string>
#include <torch/types.h>
#include "core/nets/fmnist_classifier.h"

namespace cm {

// What `format` in the metadata of a classifier weights file says.
inline constexpr const char* kFmnistClassifierFormat = "cm fmnist_classifier";

// All images (uint8 [N, H, W, C]) and labels (int64 [N]) of a converted, labelled dataset directory
// (`cm data convert fashion-mnist ...`), or its first `max_images` (0 = all). Throws naming the directory
// when it is unlabelled or has no manifest.
struct LabelledImages {
  torch::Tensor images, labels;
  std::string description;
};
LabelledImages load_labelled_images(const std::string& dir, int64_t max_images = 0);

// uint8 [N, H, W, 1] grey images, 28x28 or 32x32 (the padded layout of the 32-px recipes, centre-cropped
// back to 28), to the classifier's float [N, 1, 28, 28] in [-1, 1]. Throws on any other shape.
torch::Tensor fmnist_classifier_input(const torch::Tensor& nhwc);

// The shipped weights: recipes/weights/fmnist_features.safetensors beside the recipe directories
// (recipe_search_path()); throws naming where it looked and how to make one (`cm features train`).
std::string shipped_fmnist_features();

// Loads a weights file that `cm features train` wrote (metadata format = kFmnistClassifierFormat), in eval
// mode, on `device`; its metadata goes to *metadata when given.
FmnistClassifier load_fmnist_classifier(const std::string& path, torch::Device device,
                                        std::map<std::string, std::string>* metadata = nullptr);

// Fraction of `data` classified correctly (eval mode, batches of `batch`).
double classifier_accuracy(FmnistClassifier& net, const LabelledImages& data, torch::Device device, int64_t batch = 500);

struct FmnistTrainOptions {
  int64_t epochs = 20;
  int64_t batch = 128;
  double lr = 0.05;            // SGD with Nesterov momentum 0.9; one epoch of linear warm-up, then cosine to 0
  double weight_decay = 5e-4;  // on the weights of convolutions and linear layers, not on norms or biases
  uint64_t seed = 0;
  bool bf16 = false;           // forward under bf16 autocast (master weights stay fp32)
  std::string out;             // weights file, rewritten (atomically) after every epoch
};
struct FmnistTrainResult {
  double test_accuracy = 0;
  double seconds = 0;
  int64_t epochs = 0;
};
// Trains on `train` with random horizontal flips and shifts of up to 2 pixels, evaluates on `test` after
// every epoch and writes o.out (with the test accuracy, epochs and data in its metadata). `log` receives
// one line per epoch.
FmnistTrainResult train_fmnist_classifier(const LabelledImages& train, const LabelledImages& test, const FmnistTrainOptions& o,
                                          torch::Device device, const std::function<void(const std::string&)>& log);

}  // namespace cm
