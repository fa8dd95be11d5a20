// LPIPS: metric properties, the resize rule, and agreement with an independent PyTorch implementation of
// piq 0.7.0's formula (tools/lpips_reference.py, run with Debian's python3-torch) under random weights.
#include <gtest/gtest.h>
#include <fmt/format.h>

#include <cmath>
#include <filesystem>
#include "core/lpips.h"
#include "core/io/safetensors.h"
#include "core/weights.h"
#include "support/paths.h"

namespace {

namespace fs = std::filesystem;
const char* kPython = "/usr/bin/python3";

// Random weights with a sensible scale: He-normal convolutions (activations neither vanish nor explode
// through 13 layers), small biases, non-negative layer weights as real LPIPS weights are.
cm::Lpips random_lpips(uint64_t seed, bool resize) {
  torch::manual_seed(seed);
  cm::Lpips net(resize);
  torch::NoGradGuard ng;
  for (auto& [name, t] : cm::state_dict(*net)) {
    if (name.rfind("lin.", 0) == 0) t.uniform_(0, 1);
    else if (t.dim() == 4) t.normal_(0, std::sqrt(2.0 / (t.size(1) * 9)));
    else t.uniform_(-0.05, 0.05);
  }
  net->eval();
  return net;
}

torch::Tensor images(int64_t b, int64_t size, uint64_t seed) {
  torch::manual_seed(seed);
  return (torch::rand({b, 3, size, size}) * 2 - 1);
}

// The metric properties hold at any size, so they are checked without the resize to 224 px (32 px images
// cost 1/49 of the compute). One batch holds the pairs (a, a), (a, b), (b, a), (a, a + small noise).
TEST(Lpips, IdenticalImagesGiveZeroAndItIsSymmetric) {
  auto net = random_lpips(1, /*resize=*/false);
  auto a = images(1, 32, 2), b = images(1, 32, 3);
  torch::manual_seed(4);
  auto a_near = (a + 0.05 * torch::randn_like(a)).clamp(-1, 1);
  torch::NoGradGuard ng;
  auto d = net->forward(torch::cat({a, a, b, a}), torch::cat({a, b, a, a_near}));
  EXPECT_EQ(d[0].item<double>(), 0.0);
  EXPECT_GT(d[1].item<double>(), 0.0);
  EXPECT_LT(std::abs(d[1].item<double>() - d[2].item<double>()) / d[1].item<double>(), 1e-5);
  // A small perturbation is closer than an unrelated image.
  EXPECT_GT(d[3].item<double>(), 0.0);
  EXPECT_LT(d[3].item<double>(), d[1].item<double>());
}

TEST(Lpips, ResizeRuleOfTheReference) {
  // Below 256 px: bilinear to 224 x 224; from 256 px up: unchanged.
  EXPECT_EQ(cm::LpipsImpl::preprocess(torch::zeros({1, 3, 64, 64})).sizes(), (std::vector<int64_t>{1, 3, 224, 224}));
  EXPECT_EQ(cm::LpipsImpl::preprocess(torch::zeros({1, 3, 32, 32})).sizes(), (std::vector<int64_t>{1, 3, 224, 224}));
  EXPECT_EQ(cm::LpipsImpl::preprocess(torch::zeros({1, 3, 256, 256})).sizes(), (std::vector<int64_t>{1, 3, 256, 256}));
  EXPECT_EQ(cm::LpipsImpl::preprocess(torch::zeros({1, 3, 64, 64}), false).sizes(), (std::vector<int64_t>{1, 3, 64, 64}));
  // The resized image is the bilinear interpolation (align_corners = False): a horizontal ramp stays a ramp
  // whose interior samples sit at (i + 0.5) * 32 / 224 - 0.5 in source pixels.
  auto ramp = torch::arange(32, torch::kFloat).div(31).mul(2).sub(1).view({1, 1, 1, 32}).expand({1, 3, 32, 32});
  auto r = cm::LpipsImpl::preprocess(ramp);
  const double src = (100 + 0.5) * 32.0 / 224.0 - 0.5;
  const double expect = ((src / 31 * 2 - 1) + 1) / 2;  // then (x + 1) / 2 before the ImageNet normalisation
  EXPECT_NEAR(r[0][0][5][100].item<double>() * 0.229 + 0.485, expect, 1e-5);
  // (x + 1) / 2 then ImageNet normalisation: x = 1 maps to (1 - mean) / std.
  auto p = cm::LpipsImpl::preprocess(torch::ones({1, 3, 8, 8}));
  EXPECT_NEAR(p[0][0][0][0].item<double>(), (1 - 0.485) / 0.229, 1e-5);
  EXPECT_NEAR(p[0][2][100][100].item<double>(), (1 - 0.406) / 0.225, 1e-5);
}

TEST(Lpips, GradientReachesTheImageNotTheWeights) {
  auto net = random_lpips(4, /*resize=*/false);
  auto x = images(1, 32, 5).requires_grad_(true);
  auto y = images(1, 32, 6);
  net->forward(x, y).sum().backward();
  ASSERT_TRUE(x.grad().defined());
  EXPECT_GT(x.grad().abs().sum().item<double>(), 0.0);
  for (auto& p : net->parameters()) EXPECT_FALSE(p.grad().defined());
}

TEST(Lpips, MissingWeightsFileExplainsWhatToDo) {
  try {
    cm::make_lpips("/nonexistent/lpips.safetensors");
    FAIL() << "no error";
  } catch (const std::runtime_error& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find("/nonexistent/lpips.safetensors"), std::string::npos) << msg;
    EXPECT_NE(msg.find("tools/convert_lpips_weights.py"), std::string::npos) << msg;
    EXPECT_NE(msg.find("vgg16-397923af.pth"), std::string::npos) << msg;
  }
}

// The same numbers as the independent PyTorch implementation: once through the reference resize (32 px to
// 224 px) and once at the images' own size, with the weights going through a safetensors file and make_lpips.
TEST(Lpips, MatchesIndependentPyTorchImplementation) {
  if (!fs::exists(kPython) ||
      cm::test::run_command(std::string(kPython) + " -c 'import importlib.util as u, sys; "
                            "sys.exit(not (u.find_spec(\"torch\") and u.find_spec(\"numpy\")))'", nullptr) != 0)
    GTEST_SKIP() << kPython << " with torch is not available";
  const std::string dir = cm::test::make_temp_dir("cm-lpips");
  auto net = random_lpips(7, /*resize=*/true);
  cm::save_weights_file(*net, dir + "/w.safetensors");
  // Two cases in one Python run (importing torch takes seconds): through the resize, and at own size.
  struct Case {
    std::string name;
    int64_t batch, size;
    bool resize;
    torch::Tensor x, y;
  };
  std::vector<Case> cases = {{"resized", 1, 32, true, {}, {}}, {"own_size", 2, 48, false, {}, {}}};
  cm::NamedTensors io;
  for (auto& c : cases) {
    c.x = images(c.batch, c.size, 10 + c.size), c.y = images(c.batch, c.size, 20 + c.size);
    io.emplace_back("x." + c.name, c.x);
    io.emplace_back("y." + c.name, c.y);
    io.emplace_back("resize." + c.name, torch::tensor(static_cast<uint8_t>(c.resize)));
  }
  cm::save_safetensors(dir + "/io.safetensors", io);
  std::string out;
  const int rc = cm::test::run_command(fmt::format("{} {}/tools/lpips_reference.py {}/w.safetensors {}/io.safetensors "
                                                   "{}/ref.safetensors", kPython, cm::test::source_dir(), dir, dir, dir),
                                       &out);
  ASSERT_EQ(rc, 0) << out;
  auto ref = cm::load_safetensors(dir + "/ref.safetensors");
  for (auto& c : cases) {
    auto lpips = cm::make_lpips(dir + "/w.safetensors", c.resize);
    torch::NoGradGuard ng;
    auto got = lpips->forward(c.x, c.y);
    auto want = *ref.find("lpips." + c.name);
    ASSERT_EQ(got.sizes(), want.sizes());
    const double rel = ((got - want).abs() / want.abs()).max().item<double>();
    EXPECT_LT(rel, 1e-4) << c.name << ": got " << got << " want " << want;
    // Every layer contributes (no tap silently dropped).
    for (int k = 0; k < cm::LpipsImpl::kLayers; ++k)
      EXPECT_GT(ref.find(fmt::format("layer{}.{}", k, c.name))->min().item<double>(), 0.0) << c.name;
  }
  // The in-memory network and the one reloaded from the file agree exactly.
  {
    torch::NoGradGuard ng;
    cm::Lpips own_size(false);
    cm::load_weights(*own_size, cm::state_dict(*net), "in-memory");
    EXPECT_TRUE(torch::equal(own_size->forward(cases[1].x, cases[1].y),
                             cm::make_lpips(dir + "/w.safetensors", false)->forward(cases[1].x, cases[1].y)));
  }
  fs::remove_all(dir);
}

}  // namespace
