// FD_fmnist's feature network: data, training and loading (see fmnist_features.h).
#include "recipes/eval/fmnist_features.h"

#include <chrono>
#include <cmath>
#include <filesystem>
#include <fmt/format.h>
#include <stdexcept>
#include <torch/torch.h>
#include "core/config.h"     // recipe_search_path
#include "core/precision.h"  // AutocastScope
#include "core/weights.h"    // save_weights_file, read_weights_file, load_weights
#include "datasets/shards.h"

namespace fs = std::filesystem;

namespace cm {

LabelledImages load_labelled_images(const std::string& dir, int64_t max_images) {
  if (!fs::is_regular_file(fs::path(dir) / data::kManifestName))
    throw std::runtime_error(fmt::format("{}: not a converted dataset (no {}); make one with `cm data convert fashion-mnist "
                                         "/usr/share/datasets/fashion-mnist DIR` (add --split test for the test split)",
                                         dir, data::kManifestName));
  const data::Manifest m = data::read_manifest(dir);
  const auto& info = m.info;
  if (!info.labelled())
    throw std::runtime_error(fmt::format("{}: the dataset has no labels; the classifier needs a labelled one (Fashion-MNIST)", dir));
  const int64_t n = max_images > 0 ? std::min(max_images, info.total_records) : info.total_records;
  LabelledImages out;
  out.images = torch::empty({n, info.height, info.width, info.channels}, torch::kUInt8);
  out.labels = torch::empty({n}, torch::kInt64);
  int64_t at = 0;
  for (const auto& s : m.shards) {
    if (at >= n) break;
    data::ShardReader r((fs::path(dir) / s.file).string());
    r.check_against(m);
    const int64_t take = std::min(s.records, n - at);
    r.read_images(0, take, out.images.data_ptr<uint8_t>() + at * info.image_bytes());
    const auto labels = r.read_labels();
    for (int64_t i = 0; i < take; ++i) {
      if (labels[i] < 0 || labels[i] >= info.num_classes)
        throw std::runtime_error(fmt::format("{}: record {} has label {}, outside 0..{}", r.path(), i, labels[i], info.num_classes - 1));
      out.labels[at + i] = labels[i];
    }
    at += take;
  }
  out.description = fmt::format("{} ({} of {} images, {}x{}x{})", dir, n, info.total_records, info.height, info.width, info.channels);
  return out;
}

torch::Tensor fmnist_classifier_input(const torch::Tensor& nhwc) {
  if (nhwc.dim() != 4 || nhwc.scalar_type() != torch::kUInt8 || nhwc.size(3) != 1 ||
      !((nhwc.size(1) == 28 && nhwc.size(2) == 28) || (nhwc.size(1) == 32 && nhwc.size(2) == 32)))
    throw std::invalid_argument(fmt::format(
        "FD_fmnist takes grey Fashion-MNIST-sized images, uint8 [N, 28, 28, 1] or [N, 32, 32, 1] (padded, centre-cropped to 28); got {} {}",
        c10::toString(nhwc.scalar_type()), c10::str(nhwc.sizes())));
  auto x = nhwc;
  if (x.size(1) == 32) x = x.narrow(1, 2, 28).narrow(2, 2, 28);
  return x.permute({0, 3, 1, 2}).to(torch::kFloat32).div(127.5).sub(1.0).contiguous();
}

std::string shipped_fmnist_features() {
  std::vector<std::string> looked;
  for (const auto& d : recipe_search_path()) {
    const fs::path p = fs::path(d).parent_path() / "weights" / "fmnist_features.safetensors";
    if (fs::is_regular_file(p)) return p.string();
    looked.push_back(p.string());
  }
  throw std::runtime_error(fmt::format("the shipped Fashion-MNIST feature network is missing (looked at {}); make one with "
                                       "`cm features train --data TRAIN --test TEST --out FILE` and pass it with --feature-net FILE",
                                       fmt::join(looked, ", ")));
}

FmnistClassifier load_fmnist_classifier(const std::string& path, torch::Device device, std::map<std::string, std::string>* metadata) {
  const TensorFile f = load_safetensors(path);
  const auto it = f.metadata.find("format");
  if (it == f.metadata.end() || it->second != kFmnistClassifierFormat)
    throw std::runtime_error(fmt::format("{}: not a Fashion-MNIST feature network (its metadata has no format = \"{}\"; "
                                         "`cm features train` writes one)", path, kFmnistClassifierFormat));
  FmnistClassifier net;
  load_weights(*net, f.tensors, path);
  net->to(device);
  net->eval();
  if (metadata) *metadata = f.metadata;
  return net;
}

double classifier_accuracy(FmnistClassifier& net, const LabelledImages& data, torch::Device device, int64_t batch) {
  torch::NoGradGuard ng;
  const bool was_training = net->is_training();
  net->eval();
  const int64_t n = data.images.size(0);
  int64_t correct = 0;
  for (int64_t b = 0; b < n; b += batch) {
    const int64_t m = std::min(batch, n - b);
    auto x = fmnist_classifier_input(data.images.narrow(0, b, m)).to(device);
    auto pred = net->forward(x).argmax(1).to(torch::kCPU);
    correct += pred.eq(data.labels.narrow(0, b, m)).sum().item<int64_t>();
  }
  if (was_training) net->train();
  return n ? static_cast<double>(correct) / n : 0.0;
}

namespace {

// Random horizontal flips and shifts of up to `shift` pixels (the border filled with the background, -1).
torch::Tensor augment(const torch::Tensor& x, torch::Generator& gen, int64_t shift) {
  const int64_t n = x.size(0), h = x.size(2), w = x.size(3);
  auto flip = torch::rand({n, 1, 1, 1}, gen, torch::TensorOptions().dtype(torch::kFloat32)).lt(0.5);
  auto y = torch::where(flip, x.flip({3}), x);
  auto padded = torch::constant_pad_nd(y, {shift, shift, shift, shift}, -1.0);
  auto offs = torch::randint(0, 2 * shift + 1, {n, 2}, gen, torch::TensorOptions().dtype(torch::kInt64));
  auto out = torch::empty_like(y);
  auto o = offs.accessor<int64_t, 2>();
  for (int64_t i = 0; i < n; ++i) out[i].copy_(padded[i].narrow(1, o[i][0], h).narrow(2, o[i][1], w));
  return out;
}

}  // namespace

FmnistTrainResult train_fmnist_classifier(const LabelledImages& train, const LabelledImages& test, const FmnistTrainOptions& o,
                                          torch::Device device, const std::function<void(const std::string&)>& log) {
  if (o.epochs < 1 || o.batch < 2) throw std::invalid_argument("cm features train: --epochs must be >= 1 and --batch >= 2");
  if (o.out.empty()) throw std::invalid_argument("cm features train needs --out FILE");
  const auto t0 = std::chrono::steady_clock::now();
  torch::manual_seed(o.seed);
  auto gen = torch::make_generator<torch::CPUGeneratorImpl>(o.seed + 1);
  FmnistClassifier net;
  net->to(device);
  std::vector<torch::Tensor> decay, no_decay;
  for (auto& p : net->named_parameters()) (p.value().dim() > 1 ? decay : no_decay).push_back(p.value());
  torch::optim::SGD opt({torch::optim::OptimizerParamGroup(decay, std::make_unique<torch::optim::SGDOptions>(
                                                                     torch::optim::SGDOptions(o.lr).momentum(0.9).nesterov(true).weight_decay(o.weight_decay))),
                         torch::optim::OptimizerParamGroup(no_decay, std::make_unique<torch::optim::SGDOptions>(
                                                                        torch::optim::SGDOptions(o.lr).momentum(0.9).nesterov(true)))},
                        torch::optim::SGDOptions(o.lr));
  const torch::Tensor x_all = fmnist_classifier_input(train.images);
  const int64_t n = x_all.size(0), steps_per_epoch = n / o.batch, total = steps_per_epoch * o.epochs;
  if (steps_per_epoch < 1) throw std::invalid_argument(fmt::format("{} training images for batches of {}", n, o.batch));
  const Precision precision = o.bf16 ? Precision::Bf16 : Precision::Fp32;
  FmnistTrainResult r;
  int64_t step = 0;
  for (int64_t epoch = 1; epoch <= o.epochs; ++epoch) {
    net->train();
    const auto perm = torch::randperm(n, gen, torch::TensorOptions().dtype(torch::kInt64));
    double loss_sum = 0;
    for (int64_t s = 0; s < steps_per_epoch; ++s, ++step) {
      const double lr = step < steps_per_epoch ? o.lr * (step + 1) / steps_per_epoch
                                               : 0.5 * o.lr * (1 + std::cos(M_PI * (step - steps_per_epoch) / double(total - steps_per_epoch)));
      for (auto& g : opt.param_groups()) static_cast<torch::optim::SGDOptions&>(g.options()).lr(lr);
      const auto idx = perm.narrow(0, s * o.batch, o.batch);
      auto x = augment(x_all.index_select(0, idx), gen, 2).to(device);
      auto y = train.labels.index_select(0, idx).to(device);
      torch::Tensor logits;
      {
        AutocastScope autocast(precision, device);
        logits = net->forward(x);
      }
      auto loss = torch::nn::functional::cross_entropy(logits.to(torch::kFloat32), y);
      opt.zero_grad();
      loss.backward();
      opt.step();
      loss_sum += loss.item<double>();
    }
    r.test_accuracy = classifier_accuracy(net, test, device);
    r.epochs = epoch;
    r.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    save_weights_file(*net, o.out,
                      {{"format", kFmnistClassifierFormat},
                       {"epochs", std::to_string(epoch)},
                       {"planned_epochs", std::to_string(o.epochs)},
                       {"test_accuracy", fmt::format("{:.4f}", r.test_accuracy)},
                       {"train_data", train.description},
                       {"test_data", test.description},
                       {"recipe", fmt::format("SGD nesterov lr {} wd {} batch {} seed {} precision {}, flips and 2 px shifts", o.lr,
                                              o.weight_decay, o.batch, o.seed, to_string(precision))}});
    log(fmt::format("epoch {}/{}  loss {:.4f}  test accuracy {:.4f}  {:.0f} s", epoch, o.epochs, loss_sum / steps_per_epoch,
                    r.test_accuracy, r.seconds));
  }
  return r;
}

}  // namespace cm
