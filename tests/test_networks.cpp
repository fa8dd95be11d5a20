// The image networks against the reference fixtures (shared/fixtures/reference-nets): the paper configs
// give exactly the reference state-dict names, shapes and order; the small nets, loaded from the
// reference weights (.safetensors and .pt), reproduce the reference outputs.
#include <gtest/gtest.h>
#include <fmt/format.h>

#include <filesystem>
#include <fstream>
#include <sstream>
#include <tuple>
#include "core/compat.h"
#include "core/config.h"
#include "core/ema.h"
#include "core/nets/attention_cpu.h"
#include "core/nets/layers.h"
#include "core/rng.h"
#include "core/network.h"
#include "core/io/safetensors.h"
#include "core/io/torch_import.h"
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

// ---------------------------------------------------------------------------------------------------
// `cm model`: the summary's counts against closed forms, check and convert against the fixtures.

namespace {

// A recipe made of one model group and an inline dataset table.
std::string write_recipe(const std::string& dir, const std::string& model, int64_t res, int64_t ch, int64_t classes) {
  const std::string path = fmt::format("{}/{}_{}.toml", dir, model, res);
  std::ofstream(path) << fmt::format("defaults = [\"model/{}\"]\n[dataset]\nresolution = {}\nchannels = {}\n"
                                     "num_classes = {}\n", model, res, ch, classes);
  return path;
}

// The numeric value of "key": in the one-line JSON the summary prints.
double json_number(const std::string& json, const std::string& key) {
  auto p = json.find("\"" + key + "\": ");
  EXPECT_NE(p, std::string::npos) << key << " not in " << json;
  return p == std::string::npos ? -1 : std::stod(json.substr(p + key.size() + 4));
}

std::string run_cm(const std::string& args, int expect_rc) {
  std::string out;
  int rc = cm::test::run_command(cm::test::cm_binary() + " " + args, &out);
  EXPECT_EQ(rc, expect_rc) << args << "\n" << out;
  return out;
}

TEST(ModelCommand, SummaryCountsMatchClosedForms) {
  const std::string dir = cm::test::make_temp_dir("cm-model-summary");
  // adm_small at 16 px: attention at 8 px (3 blocks, 64 channels, L = 64) and 4 px (4 blocks, L = 16); each
  // block does q k^T and w v, 2 L^2 C multiply-accumulates, so 4 L^2 C FLOPs.
  auto out = run_cm("model summary " + write_recipe(dir, "adm_small", 16, 3, 10) + " --batch-per-gpu 6 --emas 3 --json", 0);
  EXPECT_EQ(json_number(out, "parameters"), 1422691);
  EXPECT_EQ(json_number(out, "flops_attention"), 3 * 4.0 * 64 * 64 * 64 + 4 * 4.0 * 16 * 16 * 64);
  // Linear layers: time_embed (32x128, 128x128) and one emb projection per ResBlock (128 -> 2 x out channels,
  // scale-shift): outputs 64+64+128+128+128 (input blocks) + 256 (middle) + 3x128+3x128+2x64 (output blocks).
  EXPECT_EQ(json_number(out, "flops_linear"), 2.0 * (32 * 128 + 128 * 128 + 128 * 1664));
  const double conv = json_number(out, "flops_conv");
  EXPECT_GT(conv, 1e8);
  EXPECT_EQ(json_number(out, "flops_per_image"), conv + json_number(out, "flops_attention") + json_number(out, "flops_linear"));
  const double act = json_number(out, "activation_bytes_per_image");
  EXPECT_GT(act, 16 * 16 * 32 * 4 * 10.0);  // at least ten full-resolution feature maps
  EXPECT_NEAR(json_number(out, "memory_activations"), 6 * act, 1.0);
  const double w = 4.0 * 1422691;
  EXPECT_NEAR(json_number(out, "memory_total"), w * (1 + 1 + 2 + 3) + 6 * act, 1.0);

  // The same UNet at twice the resolution (attention at the same levels, now 16 and 8 px): convolutions x4,
  // attention x16 (sequence length x4, quadratic), linear layers unchanged.
  auto out32 = run_cm("model summary " + write_recipe(dir, "adm_small", 32, 3, 10) +
                          " model.attention_resolutions=[16,8] --json", 0);
  EXPECT_NEAR(json_number(out32, "flops_conv"), 4 * conv, 1.0);
  EXPECT_EQ(json_number(out32, "flops_attention"), 16 * json_number(out, "flops_attention"));
  EXPECT_EQ(json_number(out32, "flops_linear"), json_number(out, "flops_linear"));

  // The MLP: only linear layers, 2 x (64x128 + 128x128 + 2x128 + 3 x 3 x 128x128 + 128x2).
  std::ofstream(dir + "/mlp.toml") << "[model]\narch = \"mlp\"\n[dataset]\nchannels = 2\n";
  auto mlp = run_cm("model summary " + dir + "/mlp.toml --json", 0);
  EXPECT_EQ(json_number(mlp, "flops_per_image"), 2.0 * (64 * 128 + 128 * 128 + 2 * 128 + 9 * 128 * 128 + 128 * 2));
  EXPECT_EQ(json_number(mlp, "flops_conv"), 0);

  // Text output names the figures; bad options are errors.
  auto text = run_cm("model summary " + write_recipe(dir, "ncsnpp_cifar10", 32, 3, 0), 0);
  EXPECT_NE(text.find("parameters:   56,395,523"), std::string::npos) << text;
  EXPECT_NE(text.find("GFLOPs per image"), std::string::npos) << text;
  run_cm("model summary " + dir + "/mlp.toml --batch-per-gpu 0", 2);
  run_cm("model summary " + dir + "/mlp.toml --batchsize 4", 2);
  std::filesystem::remove_all(dir);
}

TEST(ModelCommand, CheckAndConvertReferenceWeights) {
  const std::string dir = cm::test::make_temp_dir("cm-model-check");
  const std::string adm = write_recipe(dir, "adm_small", 16, 3, 10);
  auto ok = run_cm("model check " + adm + " " + fixture("adm_small_cond.state_dict.pt"), 0);
  EXPECT_NE(ok.find("all 217 tensors"), std::string::npos) << ok;
  auto bad = run_cm("model check " + adm + " " + fixture("ncsnpp_small.weights.safetensors"), 1);
  EXPECT_NE(bad.find("missing (in the network, not in the file)"), std::string::npos) << bad;
  EXPECT_NE(bad.find("map_noise.freqs [16]"), std::string::npos) << bad;

  run_cm("model convert " + fixture("ncsnpp_small.state_dict.pt") + " " + dir + "/n.safetensors", 0);
  auto converted = cm::load_safetensors(dir + "/n.safetensors").tensors;
  auto ref = cm::load_safetensors(fixture("ncsnpp_small.weights.safetensors")).tensors;
  ASSERT_EQ(converted.size(), ref.size());
  for (size_t i = 0; i < ref.size(); ++i) {
    EXPECT_EQ(converted[i].first, ref[i].first);
    EXPECT_TRUE(torch::equal(converted[i].second, ref[i].second)) << ref[i].first;
  }
  std::filesystem::remove_all(dir);
}

}  // namespace

// An EMA file (core/ema.h) holds the student's state-dict names with each parameter's EMA under that
// parameter's own name. NCSN++ registers a buffer (map_noise.freqs) before parameters, so a positional
// mapping shifts every name after it: check each name against its parameter, by identity.
TEST(Networks, EmaFileNamesEveryParameterRightWhenBuffersComeFirst) {
  auto net = build("ncsnpp_small", {3, 16, 0});
  const auto params = net->parameters();
  std::vector<torch::Tensor> ema;
  for (size_t i = 0; i < params.size(); ++i) ema.push_back(torch::full_like(params[i], static_cast<double>(i) + 0.5));
  const cm::NamedTensors file = cm::ema_state(*net, ema);
  const cm::NamedTensors own = cm::state_dict(*net);
  ASSERT_EQ(file.size(), own.size());
  size_t checked = 0;
  bool buffer_before_parameter = false, seen_buffer = false;
  for (size_t k = 0; k < own.size(); ++k) {
    ASSERT_EQ(file[k].first, own[k].first);
    EXPECT_EQ(file[k].second.sizes(), own[k].second.sizes()) << own[k].first;
    int64_t idx = -1;
    for (size_t i = 0; i < params.size(); ++i)
      if (params[i].is_same(own[k].second)) idx = static_cast<int64_t>(i);
    if (idx < 0) {
      seen_buffer = true;
      EXPECT_TRUE(file[k].second.is_same(own[k].second)) << own[k].first << ": a buffer is written as it is";
    } else {
      buffer_before_parameter = buffer_before_parameter || seen_buffer;
      EXPECT_TRUE(file[k].second.is_same(ema[static_cast<size_t>(idx)])) << own[k].first;
      ++checked;
    }
  }
  EXPECT_EQ(checked, params.size());
  EXPECT_TRUE(buffer_before_parameter) << "the fixture should have a buffer before a parameter";
  // And the file loads into a network of the same architecture.
  auto other = build("ncsnpp_small", {3, 16, 0});
  EXPECT_NO_THROW(cm::load_weights(*other, file, "ema"));
}

// EmaSet::restore reads the corrected layout by name, and an EMA file written before the fix (the k-th
// state-dict name holding the k-th parameter's EMA) by position, for the same values.
namespace {
struct OneFileReader : cm::StateReader {
  std::string name, where = "test-checkpoint";
  cm::TensorFile file;
  cm::Json json;
  bool has(const std::string& f) const override { return f == name; }
  cm::TensorFile read(const std::string&) const override { return file; }
  const cm::Json& state() const override { return json; }
  const std::string& origin() const override { return where; }
};
}  // namespace

TEST(Networks, EmaRestoreReadsTheFixedAndTheOldLayout) {
  auto net = build("ncsnpp_small", {3, 16, 0});
  const auto params = net->parameters();
  std::vector<torch::Tensor> ema;
  for (size_t i = 0; i < params.size(); ++i) ema.push_back(torch::full_like(params[i], static_cast<double>(i) + 0.25));
  const cm::NamedTensors own = cm::state_dict(*net);
  cm::NamedTensors old_layout;
  for (size_t k = 0; k < own.size(); ++k) old_layout.emplace_back(own[k].first, k < ema.size() ? ema[k] : own[k].second);
  for (const cm::NamedTensors& layout : {cm::ema_state(*net, ema), old_layout}) {
    cm::EmaSet set(net, nullptr, [](int64_t) { return 0.0; }, {0.99});
    OneFileReader r;
    r.name = cm::ema_file_name(0.99);
    r.file.tensors = layout;
    set.restore(r);
    const auto& w = set.sampling().weights(0);
    ASSERT_EQ(w.size(), ema.size());
    for (size_t i = 0; i < ema.size(); ++i) ASSERT_TRUE(torch::equal(w[i], ema[i])) << "parameter " << i;
  }
}

// The CPU attention of LibTorch 1.13 (core/nets/attention_cpu.h: a few heads at a time, scores recomputed in
// backward) equals the spelled-out softmax(q^T k / sqrt(d)) v and its gradients, in float64, for blocks of one
// head (L = 256), several with a remainder (L = 64: 32 heads per block, 45 heads) and all at once (L = 4).
TEST(HeadAttention, EqualsTheSpelledOutFormAndItsGradients) {
  for (auto [g, d, l] : std::vector<std::tuple<int64_t, int64_t, int64_t>>{{3, 32, 256}, {45, 16, 64}, {5, 8, 4}}) {
    SCOPED_TRACE(fmt::format("G {} d {} L {}", g, d, l));
    auto gen = cm::cpu_generator(static_cast<uint64_t>(g * 1000 + l));
    auto opts = torch::TensorOptions().dtype(torch::kDouble);
    auto q = torch::randn({g, d, l}, gen, opts).requires_grad_(true), k = torch::randn({g, d, l}, gen, opts).requires_grad_(true);
    auto v = torch::randn({g, d, l}, gen, opts).requires_grad_(true);
    auto up = torch::randn({g, d, l}, gen, opts);
    ASSERT_TRUE(cm::head_attention_applies(q) || cm::compat::kFusedAttention);
    auto out = cm::head_attention(q, k, v);
    auto grads = torch::autograd::grad({out}, {q, k, v}, {up});
    auto w = torch::softmax(torch::matmul(q.transpose(1, 2), k) / std::sqrt(static_cast<double>(d)), -1);
    auto ref = torch::matmul(v, w.transpose(1, 2));
    auto ref_grads = torch::autograd::grad({ref}, {q, k, v}, {up});
    EXPECT_LT((out - ref).abs().max().item<double>(), 1e-12);
    for (int i = 0; i < 3; ++i) EXPECT_LT((grads[i] - ref_grads[i]).abs().max().item<double>(), 1e-11) << "gradient " << i;
  }
  // Where it does not apply: empty batches (the FLOP counter's), autocast, other dtypes.
  EXPECT_FALSE(cm::head_attention_applies(torch::zeros({0, 4, 16})));
  EXPECT_FALSE(cm::head_attention_applies(torch::zeros({2, 4, 16}, torch::kBFloat16)));
}
