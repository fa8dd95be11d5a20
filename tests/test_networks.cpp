// The image networks against the reference fixtures (shared/fixtures/reference-nets): the paper configs
// give exactly the reference state-dict names, shapes and order; the small nets, loaded from the
// reference weights (.safetensors and .pt), reproduce the reference outputs.
#include <gtest/gtest.h>
#include <fmt/format.h>

#include <fstream>
#include <sstream>
#include "core/config.h"
#include "core/nets/layers.h"
#include "core/network.h"
#include "core/safetensors.h"
#include "core/torch_import.h"
#include "core/weights.h"
#include "support/paths.h"

namespace {

std::string fixture(const std::string& name) { return cm::test::shared_dir() + "/fixtures/reference-nets/" + name; }
std::string model_config(const std::string& name) {
  return cm::test::source_dir() + "/recipes/configs/model/" + name + ".toml";
}

cm::NetworkPtr build(const cm::Config& cfg, const cm::ModelShape& shape) {
  cm::ConfigReader r(cfg, "");
  auto net = cm::make_network(r, shape);
  r.finish();
  return net;
}
cm::NetworkPtr build(const std::string& model, const cm::ModelShape& shape) {
  return build(cm::Config::load_file(model_config(model)), shape);
}

std::vector<std::pair<std::string, std::string>> read_params_tsv(const std::string& path) {
  std::ifstream in(path);
  EXPECT_TRUE(in.good()) << path;
  std::vector<std::pair<std::string, std::string>> rows;
  std::string line;
  while (std::getline(in, line)) {
    auto tab = line.find('\t');
    if (tab == std::string::npos) continue;
    rows.emplace_back(line.substr(0, tab), line.substr(tab + 1));
  }
  return rows;
}

std::string shape_of(const torch::Tensor& t) { return fmt::format("{}", fmt::join(t.sizes(), "x")); }

// Names and shapes equal, in the same order; on failure, every difference is listed.
void expect_same_params(cm::NetworkImpl& net, const std::string& tsv) {
  auto want = read_params_tsv(fixture(tsv));
  auto got = cm::state_dict(net);
  ASSERT_FALSE(want.empty());
  std::map<std::string, std::string> want_map(want.begin(), want.end()), got_map;
  for (auto& [n, t] : got) got_map[n] = shape_of(t);
  std::vector<std::string> problems;
  for (auto& [n, s] : want)
    if (!got_map.count(n)) problems.push_back("missing " + n + " " + s);
    else if (got_map[n] != s) problems.push_back(fmt::format("shape of {}: {} (reference {})", n, got_map[n], s));
  for (auto& [n, s] : got_map)
    if (!want_map.count(n)) problems.push_back("extra " + n + " " + s);
  EXPECT_TRUE(problems.empty()) << tsv << ":\n" << fmt::format("{}", fmt::join(problems, "\n"));
  ASSERT_EQ(got.size(), want.size());
  for (size_t i = 0; i < got.size(); ++i)
    ASSERT_EQ(got[i].first, want[i].first) << "state-dict order differs at entry " << i;
}

// The full-size ADMs are built shape-only (no memory, no initialisation); the small nets and the CIFAR-10
// NCSN++ normally, so both construction paths are checked against the reference names.
TEST(Networks, AdmImageNet64MatchesReferenceNames) {
  cm::ShapeOnlyParams shape_only;
  auto net = build("adm_imagenet64", {3, 64, 1000});
  expect_same_params(*net, "adm_imagenet64.params.tsv");
  EXPECT_EQ(cm::count_parameters(*net), 295899267);
}

TEST(Networks, AdmLsun256MatchesReferenceNames) {
  cm::ShapeOnlyParams shape_only;
  auto net = build("adm_lsun256", {3, 256, 0});
  expect_same_params(*net, "adm_lsun256.params.tsv");
  EXPECT_EQ(cm::count_parameters(*net), 526304771);
}

TEST(Networks, NcsnppCifar10MatchesReferenceNames) {
  auto net = build("ncsnpp_cifar10", {3, 32, 0});
  expect_same_params(*net, "ncsnpp_cifar10.params.tsv");
  EXPECT_EQ(cm::count_parameters(*net), 56395523);  // the figure in the fixtures README
}

TEST(Networks, SmallConfigsMatchReferenceNames) {
  expect_same_params(*build("adm_small", {3, 16, 10}), "adm_small_cond.params.tsv");
  expect_same_params(*build("ncsnpp_small", {3, 16, 0}), "ncsnpp_small.params.tsv");
}

struct Io {
  torch::Tensor x, noise, y, out;
};
Io read_io(const std::string& name, const char* noise_key) {
  auto f = cm::load_safetensors(fixture(name));
  Io io;
  io.x = *f.find("x");
  io.noise = *f.find(noise_key);
  if (auto* y = f.find("y")) io.y = *y;
  io.out = *f.find("out");
  return io;
}

double max_abs_diff(const torch::Tensor& a, const torch::Tensor& b) {
  return (a.to(torch::kDouble) - b.to(torch::kDouble)).abs().max().item<double>();
}

// Loads `weights` (either format) into a fresh small net and checks the forward pass against the fixture.
void check_forward(const std::string& model, const cm::ModelShape& shape, const std::string& weights,
                   const std::string& io_name, const char* noise_key) {
  auto net = build(model, shape);
  cm::load_weights_file(*net, fixture(weights));
  net->eval();
  Io io = read_io(io_name, noise_key);
  torch::NoGradGuard ng;
  auto out = net->forward(io.x, io.noise, io.y);
  ASSERT_EQ(out.sizes(), io.out.sizes());
  const double err = max_abs_diff(out, io.out);
  EXPECT_LT(err, 1e-4) << model << " with " << weights;
  // The fixture output is not trivially small: a wrong net cannot pass by accident.
  EXPECT_GT(io.out.abs().max().item<double>(), 1e-2);
}

TEST(Networks, AdmSmallForwardFromSafetensors) {
  check_forward("adm_small", {3, 16, 10}, "adm_small_cond.weights.safetensors", "adm_small_cond.io.safetensors", "timesteps");
}
TEST(Networks, AdmSmallForwardFromTorchPt) {
  check_forward("adm_small", {3, 16, 10}, "adm_small_cond.state_dict.pt", "adm_small_cond.io.safetensors", "timesteps");
}
TEST(Networks, NcsnppSmallForwardFromSafetensors) {
  check_forward("ncsnpp_small", {3, 16, 0}, "ncsnpp_small.weights.safetensors", "ncsnpp_small.io.safetensors",
                "noise_labels");
}
TEST(Networks, NcsnppSmallForwardFromTorchPt) {
  check_forward("ncsnpp_small", {3, 16, 0}, "ncsnpp_small.state_dict.pt", "ncsnpp_small.io.safetensors", "noise_labels");
}

// The class label matters, and one-hot float labels give the same result as indices.
TEST(Networks, AdmClassLabelsAsIndicesOrOneHot) {
  auto net = build("adm_small", {3, 16, 10});
  cm::load_weights_file(*net, fixture("adm_small_cond.weights.safetensors"));
  net->eval();
  Io io = read_io("adm_small_cond.io.safetensors", "timesteps");
  torch::NoGradGuard ng;
  auto a = net->forward(io.x, io.noise, io.y);
  auto b = net->forward(io.x, io.noise, torch::one_hot(io.y, 10).to(torch::kFloat));
  auto c = net->forward(io.x, io.noise, (io.y + 1) % 10);
  EXPECT_LT(max_abs_diff(a, b), 1e-5);
  EXPECT_GT(max_abs_diff(a, c), 1e-3);
  EXPECT_THROW(net->forward(io.x, io.noise, torch::Tensor()), std::invalid_argument);
}

// Fresh networks start as the references do: ADM's output conv is zero (output exactly 0), NCSN++'s
// last conv is scaled by 1e-5 (output tiny but not zero). Gradients reach every parameter.
TEST(Networks, InitialisationAndGradients) {
  torch::manual_seed(0);
  auto adm = build("adm_small", {3, 16, 10});
  auto x = torch::randn({2, 3, 16, 16});
  auto t = torch::tensor({10.0f, -300.0f});
  auto y = torch::tensor({1, 7});
  auto out = adm->forward(x, t, y);
  EXPECT_EQ(out.abs().max().item<double>(), 0.0);
  auto ncsn = build("ncsnpp_small", {3, 16, 0});
  auto o2 = ncsn->forward(x, torch::tensor({0.1f, -2.0f}), torch::Tensor());
  EXPECT_GT(o2.abs().max().item<double>(), 0.0);
  EXPECT_LT(o2.abs().max().item<double>(), 1e-2);

  // With trained-like (fixture) weights every parameter gets a gradient.
  cm::load_weights_file(*ncsn, fixture("ncsnpp_small.weights.safetensors"));
  ncsn->forward(x, torch::tensor({0.1f, -2.0f}), torch::Tensor()).square().sum().backward();
  for (auto& p : ncsn->named_parameters()) {
    ASSERT_TRUE(p.value().grad().defined()) << p.key();
    EXPECT_GT(p.value().grad().abs().sum().item<double>(), 0.0) << p.key();
  }
}

// Dropout acts in training mode only; the same RNG state gives the same masks (what CD/CT rely on).
TEST(Networks, DropoutFollowsModeAndRng) {
  for (const char* model : {"adm_small", "ncsnpp_small"}) {
    cm::Config cfg = cm::Config::load_file(model_config(model));
    cfg.set("dropout", "0.5");
    const bool adm = std::string(model) == "adm_small";
    auto net = build(cfg, {3, 16, adm ? 10 : 0});
    cm::load_weights_file(*net, fixture(adm ? "adm_small_cond.weights.safetensors" : "ncsnpp_small.weights.safetensors"));
    Io io = adm ? read_io("adm_small_cond.io.safetensors", "timesteps") : read_io("ncsnpp_small.io.safetensors", "noise_labels");
    torch::NoGradGuard ng;
    net->eval();
    EXPECT_LT(max_abs_diff(net->forward(io.x, io.noise, io.y), io.out), 1e-4) << model;
    net->train();
    torch::manual_seed(5);
    auto a = net->forward(io.x, io.noise, io.y);
    torch::manual_seed(5);
    auto b = net->forward(io.x, io.noise, io.y);
    auto c = net->forward(io.x, io.noise, io.y);
    EXPECT_EQ(max_abs_diff(a, b), 0.0) << model;
    EXPECT_GT(max_abs_diff(a, c), 1e-4) << model;
    EXPECT_GT(max_abs_diff(a, io.out), 1e-4) << model;
  }
}

TEST(Networks, ConfigErrorsNameTheKey) {
  auto expect_error = [](const std::string& model, const std::string& key, const std::string& value,
                         const cm::ModelShape& shape, const std::string& needle) {
    cm::Config cfg = cm::Config::load_file(model_config(model));
    cfg.set(key, value);
    try {
      build(cfg, shape);
      ADD_FAILURE() << "no error for " << key << " = " << value;
    } catch (const cm::ConfigError& e) {
      EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
    }
  };
  expect_error("adm_small", "attention_resolutions", "[8, 3]", {3, 16, 10}, "attention_resolutions: 3");
  expect_error("adm_small", "class_cond", "true", {3, 16, 0}, "class_cond");
  expect_error("adm_small", "num_head_channels", "24", {3, 16, 10}, "num_head_channels");
  expect_error("adm_small", "channel_mult", "[1, 2, 2, 2, 2, 2]", {3, 16, 10}, "halved");
  expect_error("ncsnpp_small", "attn_resolutions", "[5]", {3, 16, 0}, "attn_resolutions: 5");
  expect_error("ncsnpp_small", "encoder_type", "\"resnet\"", {3, 16, 0}, "encoder_type");
  expect_error("ncsnpp_small", "embeding_type", "\"fourier\"", {3, 16, 0}, "embedding_type");  // typo: unknown key
}

// A learn_sigma ADM doubles the output channels (the reference's 6-channel EDM teachers).
TEST(Networks, AdmLearnSigmaDoublesOutput) {
  cm::Config cfg = cm::Config::load_file(model_config("adm_small"));
  cfg.set("learn_sigma", "true");
  cfg.set("class_cond", "false");
  auto net = build(cfg, {3, 16, 0});
  auto out = net->forward(torch::randn({1, 3, 16, 16}), torch::tensor({1.0f}), torch::Tensor());
  EXPECT_EQ(out.size(1), 6);
}

// Built under ShapeOnlyParams, the networks hold no memory (every tensor is a stride-0 view) and run
// forward on an empty batch, conditional ones included (what FLOP and memory estimates use).
TEST(Networks, ShapeOnlyNetworksRunOnEmptyBatches) {
  cm::ShapeOnlyParams shape_only;
  for (const char* model : {"adm_small", "ncsnpp_small"}) {
    cm::Config cfg = cm::Config::load_file(model_config(model));
    cfg.set("class_cond", "true");
    auto net = build(cfg, {3, 16, 10});
    for (auto& [n, t] : cm::state_dict(*net))
      if (!n.ends_with("resample_filter")) ASSERT_EQ(t.storage().nbytes(), 4u) << model << " " << n;
    torch::NoGradGuard ng;
    auto out = net->forward(torch::zeros({0, 3, 16, 16}), torch::zeros({0}), torch::zeros({0}, torch::kLong));
    EXPECT_EQ(out.sizes(), (std::vector<int64_t>{0, 3, 16, 16})) << model;
  }
}

}  // namespace
