// `cm features`: the Fashion-MNIST feature network of FD_fmnist (recipes/eval/fmnist_features.h): train
// it, check its accuracy, and measure the scale of FD_fmnist (floor, blur, noise).
#include <fmt/format.h>
#include <torch/torch.h>
#include "core/io/safetensors.h"  // write_file_atomic
#include "core/metrics/fid.h"     // frechet_distance
#include "launch/command.h"
#include "launch/model_args.h"    // single_process_device, run_on_world
#include "recipes/eval/fmnist_features.h"
#include "recipes/evaluation.h"   // FeatureNetwork, compute_features

namespace cm::cli {
namespace {

const char* kHelp = R"(Usage: cm features train --data TRAIN --test TEST --out FILE [--epochs 20] [--batch 128] [--lr 0.05]
                         [--weight-decay 5e-4] [--seed 0] [--bf16]
       cm features accuracy TEST [--feature-net fmnist|FILE] [--count N]
       cm features scale --data TRAIN --test TEST [--feature-net fmnist|FILE] [--count N] [--json FILE]

The feature network of FD_fmnist, the Frechet distance in the 256 penultimate features of a small Fashion-MNIST
classifier (core/nets/fmnist_classifier.h) that cm trains itself: `cm eval --feature-net fmnist` computes it.
It is not FID and has its own scale; the shipped network is recipes/weights/fmnist_features.safetensors, named
by its SHA-256 beside every figure.
TRAIN, TEST: converted labelled Fashion-MNIST directories, 28x28 or 32x32 (padded) grey:
  cm data convert fashion-mnist /usr/share/datasets/fashion-mnist data/fashion-mnist28-train --shards 2
  cm data convert fashion-mnist /usr/share/datasets/fashion-mnist data/fashion-mnist28-test --split test --shards 1

train     SGD with Nesterov momentum 0.9, batch 128, lr 0.05 (one epoch of warm-up, then cosine to 0),
          weight decay 5e-4, random flips and 2-pixel shifts; the test accuracy is printed after every epoch
          and FILE (safetensors, with the accuracy, epochs and data in its metadata) rewritten atomically.
          --bf16 runs the forward passes under bf16 autocast (where the CPU or GPU has bf16 units).
accuracy  the fraction of TEST (its first --count images) that the network classifies correctly.
scale     what FD_fmnist values mean: the floor (the first --count test images, default all, against the
          whole train split) and the same test images blurred (Gaussian, sigma 0.5, 1, 2 px) or with Gaussian
          noise added (std 0.05, 0.1, 0.2 of the pixel range, clipped, rounded to 8 bits), each against the
          train split. --json FILE writes them.)";

torch::Tensor gaussian_blur(const torch::Tensor& nhwc, double sigma) {
  const int64_t radius = static_cast<int64_t>(std::ceil(3 * sigma));
  auto k = torch::arange(-radius, radius + 1, torch::kFloat64);
  k = torch::exp(-k * k / (2 * sigma * sigma));
  k = (k / k.sum()).to(torch::kFloat32);
  auto x = nhwc.permute({0, 3, 1, 2}).to(torch::kFloat32);
  x = torch::conv2d(torch::constant_pad_nd(x, {radius, radius, 0, 0}, 0.0), k.view({1, 1, 1, -1}));
  x = torch::conv2d(torch::constant_pad_nd(x, {0, 0, radius, radius}, 0.0), k.view({1, 1, -1, 1}));
  return x.round().clamp(0, 255).to(torch::kUInt8).permute({0, 2, 3, 1}).contiguous();
}

torch::Tensor add_noise(const torch::Tensor& nhwc, double std, uint64_t seed) {
  auto gen = torch::make_generator<torch::CPUGeneratorImpl>(seed);
  auto x = nhwc.to(torch::kFloat32) + torch::randn(nhwc.sizes(), gen, torch::TensorOptions().dtype(torch::kFloat32)) * (255.0 * std);
  return x.round().clamp(0, 255).to(torch::kUInt8);
}

FeatureStats stats_of(FeatureNetwork& net, const torch::Tensor& images, const std::string& what) {
  EvalOptions o;
  o.batch = 500;
  o.progress = false;
  return compute_features(net, images.size(0), [&](int64_t b, int64_t e) { return images.slice(0, b, e); }, o, false, false,
                          nullptr, what)
      .stats;
}

int train(const Args& args) {
  args.check_known({"data", "test", "out", "epochs", "batch", "lr", "weight-decay", "seed", "bf16", "count"});
  auto data = args.opt("data"), test = args.opt("test");
  if (!data || !test) throw std::invalid_argument("train needs --data TRAIN and --test TEST (see `cm features --help`)");
  FmnistTrainOptions o;
  o.out = args.opt_or("out", "");
  o.epochs = args.int_or("epochs", o.epochs);
  o.batch = args.int_or("batch", o.batch);
  o.lr = args.double_or("lr", o.lr);
  o.weight_decay = args.double_or("weight-decay", o.weight_decay);
  o.seed = static_cast<uint64_t>(args.int_or("seed", 0));
  o.bf16 = args.flag("bf16");
  if (o.lr <= 0 || o.weight_decay < 0) throw std::invalid_argument("--lr must be > 0 and --weight-decay >= 0");
  if (o.out.empty()) throw std::invalid_argument("train needs --out FILE (the weights, rewritten after every epoch)");
  if (o.epochs < 1 || o.batch < 2) throw std::invalid_argument("--epochs must be >= 1 and --batch >= 2");
  const auto dev = single_process_device();
  const LabelledImages tr = load_labelled_images(*data, args.int_or("count", 0)), te = load_labelled_images(*test);
  fmt::print("training the Fashion-MNIST feature classifier on {} (tested on {}), {} epochs, on {}\n", tr.description, te.description,
             o.epochs, dev.str());
  std::fflush(stdout);
  auto r = train_fmnist_classifier(tr, te, o, dev, [](const std::string& line) {
    fmt::print("{}\n", line);
    std::fflush(stdout);
  });
  fmt::print("test accuracy {:.4f} after {} epochs ({:.0f} s) -> {} (sha256 {})\n", r.test_accuracy, r.epochs, r.seconds, o.out,
             FeatureNetwork(o.out, torch::kCPU).sha256());
  return 0;
}

int accuracy(const Args& args, const std::vector<std::string>& plain) {
  args.check_known({"feature-net", "count"});
  if (plain.size() != 2) throw std::invalid_argument("usage: cm features accuracy TEST [--feature-net fmnist|FILE] [--count N]");
  const std::string path = FeatureNetwork::resolve(args.opt_or("feature-net", "fmnist"), "");
  const auto dev = single_process_device();
  std::map<std::string, std::string> meta;
  auto net = load_fmnist_classifier(path, dev, &meta);
  const auto te = load_labelled_images(plain[1], args.int_or("count", 0));
  const double acc = classifier_accuracy(net, te, dev);
  fmt::print("accuracy {:.4f} on {} (network {}, sha256 {}; it states {} on its test set)\n", acc, te.description, path,
             FeatureNetwork(path, torch::kCPU).sha256(), meta.count("test_accuracy") ? meta["test_accuracy"] : "nothing");
  return 0;
}

int scale(const Args& args) {
  args.check_known({"data", "test", "feature-net", "count", "json"});
  auto data = args.opt("data"), test = args.opt("test");
  if (!data || !test) throw std::invalid_argument("scale needs --data TRAIN and --test TEST (see `cm features --help`)");
  FeatureNetwork net(FeatureNetwork::resolve(args.opt_or("feature-net", "fmnist"), ""), single_process_device());
  if (net.is_inception()) throw std::invalid_argument("scale is for the Fashion-MNIST feature network");
  const auto tr = load_labelled_images(*data), te = load_labelled_images(*test, args.int_or("count", 0));
  fmt::print("FD_fmnist scale: network {} (sha256 {})\nreference: {}\n", net.path(), net.sha256(), tr.description);
  const FeatureStats ref = stats_of(net, tr.images, tr.description);
  std::vector<std::pair<std::string, double>> rows;
  auto row = [&](const std::string& name, const torch::Tensor& images) {
    const double fd = frechet_distance(stats_of(net, images, name), ref);
    rows.emplace_back(name, fd);
    fmt::print("  {:<28} FD_fmnist {:9.3f}   ({} images)\n", name, fd, images.size(0));
    std::fflush(stdout);
  };
  row("test split (floor)", te.images);
  for (double s : {0.5, 1.0, 2.0}) row(fmt::format("test, blurred sigma {} px", s), gaussian_blur(te.images, s));
  for (double s : {0.05, 0.1, 0.2}) row(fmt::format("test, noise std {}", s), add_noise(te.images, s, 7));
  if (auto j = args.opt("json")) {
    std::string body;
    for (auto& [n, v] : rows) body += fmt::format("{}{{\"set\": \"{}\", \"fd_fmnist\": {:.6g}}}", body.empty() ? "" : ", ", n, v);
    write_file_atomic(*j, fmt::format("{{\"feature_net\": \"{}\", \"feature_net_sha256\": \"{}\", \"reference\": \"{}\", \"test\": \"{}\", \"rows\": [{}]}}\n",
                                      net.path(), net.sha256(), tr.description, te.description, body));
    fmt::print("wrote {}\n", *j);
  }
  return 0;
}

int run(const std::vector<std::string>& argv) {
  if (wants_help(argv, kHelp)) return 0;
  Args args(argv, {"bf16"});
  const auto plain = args.plain();
  if (plain.empty()) throw std::invalid_argument("say train, accuracy or scale (see `cm features --help`)");
  if (plain[0] == "train") return train(args);
  if (plain[0] == "accuracy") return accuracy(args, plain);
  if (plain[0] == "scale") return scale(args);
  throw std::invalid_argument(fmt::format("{}: not one of train, accuracy, scale", plain[0]));
}

CommandRegistration reg({"features", "the Fashion-MNIST feature network of FD_fmnist: train it, its accuracy, its scale", kHelp, run});

}  // namespace
}  // namespace cm::cli
