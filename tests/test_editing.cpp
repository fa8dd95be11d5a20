// Zero-shot editing (recipes/editing.h, `cm edit`): Algorithm 4 keeps the known part of the input -
// inpainting the known pixels bit for bit, colorization the luma, super-resolution the block means - for
// any consistency function, here a nonlinear stand-in and, through the CLI, a real network with random weights.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <filesystem>
#include "core/image.h"
#include "core/io/safetensors.h"
#include "core/weights.h"
#include "recipes/eval/image_sets.h"
#include "recipes/editing.h"
#include "recipes/recipe.h"
#include "recipes/sampling.h"
#include "support/paths.h"

using namespace cm;

namespace {

// A nonlinear "consistency function" that mixes pixels and channels, so nothing is kept by accident.
ConsistencyFn standin() {
  return [](const torch::Tensor& x, const torch::Tensor& t, const torch::Tensor&) {
    auto s = t.view({-1, 1, 1, 1});
    auto mixed = x.roll(1, 3) * 0.5 + x.roll(1, 1) * 0.3 + x.flip(2) * 0.2;
    return torch::tanh(mixed / (1 + s) + 0.3 * torch::sin(3 * x));
  };
}

std::function<torch::Tensor(int64_t)> noise_of(std::vector<int64_t> shape) {
  return [shape](int64_t step) {
    auto g = at::detail::createCPUGenerator(1000 + static_cast<uint64_t>(step));
    return torch::randn(shape, g);
  };
}

torch::Tensor random_images(std::vector<int64_t> shape, uint64_t seed) {
  auto g = at::detail::createCPUGenerator(seed);
  return torch::rand(shape, g) * 2 - 1;
}

const NoiseRange kRange;
const std::vector<double> kSigmas = {80.0, 10.0, 1.0, 0.002};

}  // namespace

TEST(Editing, InpaintingKeepsTheKnownPixelsExactly) {
  auto y = random_images({3, 3, 16, 16}, 1);
  for (const std::string& preset : preset_mask_names()) {
    auto mask = preset_mask(preset, 16, 16);
    ASSERT_GT(mask.sum().item<double>(), 0) << preset;
    ASSERT_LT(mask.sum().item<double>(), 256) << preset;
    auto out = edit_known(standin(), KnownPart::pixels(mask), y, kSigmas, noise_of({3, 3, 16, 16}), kRange, {});
    auto known = (mask > 0.5).expand({3, 3, 16, 16});
    EXPECT_TRUE(torch::equal(out.masked_select(known), y.masked_select(known))) << preset;
    // The generated part is the model's, not the input's.
    EXPECT_GT((out.masked_select(~known) - y.masked_select(~known)).abs().mean().item<double>(), 0.05) << preset;
  }
  EXPECT_THROW(preset_mask("circle", 16, 16), std::invalid_argument);
}

TEST(Editing, ColorizationKeepsTheLuma) {
  auto y = random_images({4, 3, 8, 8}, 2);
  auto out = edit_known(standin(), KnownPart::luma(), y, kSigmas, noise_of({4, 3, 8, 8}), kRange, {});
  EXPECT_LT((luma(out) - luma(y)).abs().max().item<double>(), 1e-5);
  // Colour was generated: the chroma differs from the input's.
  EXPECT_GT((out - y).abs().mean().item<double>(), 0.05);
  // The known part of y has y's luma, and projecting it again changes nothing.
  auto p = KnownPart::luma().project(y);
  EXPECT_LT((luma(p) - luma(y)).abs().max().item<double>(), 1e-6);
  EXPECT_LT((KnownPart::luma().project(p) - p).abs().max().item<double>(), 1e-6);
}

TEST(Editing, SuperResolutionDownsamplesToTheInput) {
  for (int64_t factor : {2, 4, 8}) {
    auto lr = random_images({2, 3, 16 / factor, 16 / factor}, 3);
    auto y = lr.repeat_interleave(factor, 2).repeat_interleave(factor, 3);
    auto out = edit_known(standin(), KnownPart::blocks(factor), y, kSigmas, noise_of({2, 3, 16, 16}), kRange, {});
    EXPECT_LT((box_downsample(out, factor) - lr).abs().max().item<double>(), 1e-5) << factor;
    EXPECT_GT((out - y).abs().mean().item<double>(), 0.02) << "no detail generated at x" << factor;
  }
  EXPECT_THROW(box_downsample(torch::zeros({1, 3, 10, 10}), 4), std::invalid_argument);
}

TEST(Editing, EveryStepSeesTheKnownPartAndTheRightNoise) {
  // The first input is P y + T z_0; each later one is the previous result (known part imposed) plus
  // sqrt(tau^2 - eps^2) z_i; at tau = eps nothing is added.
  std::vector<torch::Tensor> inputs, outputs;
  auto inner = standin();
  ConsistencyFn f = [&](const torch::Tensor& x, const torch::Tensor& t, const torch::Tensor& l) {
    inputs.push_back(x.clone());
    auto o = inner(x, t, l);
    outputs.push_back(o.clone());
    return o;
  };
  auto y = random_images({2, 3, 8, 8}, 4);
  auto mask = preset_mask("left", 8, 8);
  KnownPart k = KnownPart::pixels(mask);
  auto noise = noise_of({2, 3, 8, 8});
  auto out = edit_known(f, k, y, kSigmas, noise, kRange, {});
  ASSERT_EQ(inputs.size(), kSigmas.size());
  EXPECT_TRUE(torch::allclose(inputs[0], k.project(y) + 80.0 * noise(0)));
  for (size_t i = 1; i < kSigmas.size(); ++i) {
    const double s = std::sqrt(kSigmas[i] * kSigmas[i] - kRange.sigma_min * kRange.sigma_min);
    auto prev = k.impose(outputs[i - 1].clamp(-1, 1), k.project(y));
    EXPECT_TRUE(torch::allclose(inputs[i], prev + s * noise(static_cast<int64_t>(i)))) << i;
  }
  EXPECT_TRUE(torch::equal(inputs.back(), k.impose(outputs[kSigmas.size() - 2].clamp(-1, 1), k.project(y))));
}

TEST(Editing, SlerpEndsAtTheNoisesAndKeepsTheirNorm) {
  auto g = at::detail::createCPUGenerator(5);
  auto z0 = torch::randn({3, 16, 16}, g), z1 = torch::randn({3, 16, 16}, g);
  EXPECT_TRUE(torch::allclose(slerp(z0, z1, 0), z0, 1e-5, 1e-6));
  EXPECT_TRUE(torch::allclose(slerp(z0, z1, 1), z1, 1e-5, 1e-6));
  auto mid = slerp(z0, z1, 0.5);
  // Nearly orthogonal Gaussian vectors of similar norms: the arc keeps the norm where the chord shrinks it.
  const double n0 = z0.norm().item<double>(), nm = mid.norm().item<double>();
  EXPECT_NEAR(nm / n0, 1.0, 0.05);
  EXPECT_LT(((z0 + z1) / 2).norm().item<double>() / n0, 0.8);
  EXPECT_THROW(slerp(z0, torch::zeros({3, 16, 16}), 0.5), std::invalid_argument);
}

// `cm edit` end to end on the small ADM with random weights: every task writes its picture and .npz;
// inpainting keeps the known pixels (as uint8 in the .npz), colorization the luma, super-resolution the
// block means of the input.
TEST(Editing, CliRunsEveryTask) {
  const std::string dir = test::make_temp_dir("cm_edit");
  const std::vector<std::string> ov = {"model=adm_small", "dataset.resolution=16", "dataset.channels=3", "dataset.num_classes=10",
                                       "dataset.class_cond=true"};
  Recipe r = Recipe::load("fmnist_ct", ov);
  auto net = build_network(r, recipe_model_shape(r));
  torch::manual_seed(3);
  {
    torch::NoGradGuard ng;
    for (auto& p : net->parameters()) p.normal_(0, 0.2);
  }
  save_safetensors(dir + "/w.safetensors", state_dict(*net));
  // Four input images, and a 8x8 low-resolution one.
  std::filesystem::create_directories(dir + "/in");
  auto imgs = to_uint8(random_images({4, 3, 16, 16}, 6));
  for (int i = 0; i < 4; ++i) write_png(fmt::format("{}/in/{}.png", dir, i), imgs[i].permute({1, 2, 0}).contiguous());
  std::string base = test::cm_binary() + " edit {} fmnist_ct model=adm_small dataset.resolution=16 dataset.channels=3 "
                     "dataset.num_classes=10 dataset.class_cond=true --weights " + dir +
                     "/w.safetensors --grid 10 --ts 0,5,9 --out " + dir + " ";
  auto run = [&](const std::string& task, const std::string& extra) {
    std::string out;
    const int rc = test::run_command(fmt::format(fmt::runtime(base), task) + extra + " 2>&1", &out);
    EXPECT_EQ(rc, 0) << out;
    EXPECT_TRUE(std::filesystem::exists(dir + "/edit_" + task + ".png")) << out;
    return data::read_npz_tensor(dir + "/edit_" + task + ".npz", "arr_0");
  };
  auto input = (imgs.to(torch::kFloat32) / 127.5 - 1);

  auto inpainted = run("inpaint", "--input " + dir + "/in --mask-preset center");
  auto known_u8 = data::read_npz_tensor(dir + "/edit_inpaint.npz", "inputs");
  ASSERT_EQ(inpainted.sizes(), (std::vector<int64_t>{4, 16, 16, 3}));
  auto keep = (preset_mask("center", 16, 16) > 0.5).view({1, 16, 16, 1}).expand({4, 16, 16, 3});
  EXPECT_TRUE(torch::equal(inpainted.masked_select(keep), known_u8.masked_select(keep)));
  // ... and those are the input's pixels (up to the reference's truncating quantization of v / 127.5 - 1).
  auto in_nhwc = imgs.permute({0, 2, 3, 1});
  EXPECT_LE((inpainted.masked_select(keep).to(torch::kInt32) - in_nhwc.masked_select(keep).to(torch::kInt32)).abs().max().item<int>(), 1);

  auto colorized = run("colorize", "--input " + dir + "/in");
  auto cf = colorized.permute({0, 3, 1, 2}).to(torch::kFloat32) / 127.5 - 1;
  // Off by the uint8 quantization only, except where imposing the luma pushed a channel past [-1, 1] and the
  // quantization clipped it (Algorithm 4 does not clamp after imposing, nor does the reference).
  auto luma_err = (luma(cf) - luma(input)).abs();
  EXPECT_LT((luma_err > 2.5 / 127.5).to(torch::kFloat32).mean().item<double>(), 0.1);
  EXPECT_LT(luma_err.median().item<double>(), 1.0 / 127.5);

  auto sr = run("superres", "--input " + dir + "/in --factor 4");
  auto sf = sr.permute({0, 3, 1, 2}).to(torch::kFloat32) / 127.5 - 1;
  auto block_err = (box_downsample(sf, 4) - box_downsample(input, 4)).abs();
  EXPECT_LT((block_err > 2.5 / 127.5).to(torch::kFloat32).mean().item<double>(), 0.1);
  EXPECT_LT(block_err.median().item<double>(), 1.0 / 127.5);

  EXPECT_EQ(run("stroke", "--input " + dir + "/in --sigma 5").size(0), 4);
  EXPECT_EQ(run("denoise", "--input " + dir + "/in --sigma 0.5 --add-noise").size(0), 4);
  EXPECT_EQ(run("interpolate", "--count 2 --frames 5").size(0), 10);

  // Bad input is named.
  std::string out;
  EXPECT_NE(test::run_command(fmt::format(fmt::runtime(base), "denoise") + "--input " + dir + "/in 2>&1", &out), 0);
  EXPECT_NE(out.find("--sigma"), std::string::npos) << out;
  EXPECT_NE(test::run_command(fmt::format(fmt::runtime(base), "inpaint") + "--input " + dir + "/in --mask-preset moon 2>&1", &out), 0);
  EXPECT_NE(out.find("presets"), std::string::npos) << out;
  EXPECT_NE(test::run_command(fmt::format(fmt::runtime(base), "superres") + "--input " + dir + "/in --factor 3 2>&1", &out), 0);
  EXPECT_NE(out.find("--factor"), std::string::npos) << out;
  std::filesystem::remove_all(dir);
}
