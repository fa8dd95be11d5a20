// Sampling at scale (`cm sample`, recipes/sampling.h): the samples depend only on (seed, index) - the same
// arr_0 / arr_1 bytes for --batch 3 and 8 and for 1 and 2 ranks under real mpirun -, the .npz reads back
// in numpy with the reference layout (also in its zip64 form), and a multistep chain whose last level is
// sigma_min adds no noise at the end.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <filesystem>
#include <fstream>
#include "core/sampler.h"
#include "core/weights.h"
#include "datasets/archive.h"
#include "datasets/npz.h"
#include "recipes/recipe.h"
#include "recipes/sampling.h"
#include "support/mpi_launch.h"
#include "support/paths.h"

using namespace cm;

namespace {

const std::string kPython = "/usr/bin/python3";

bool have_numpy() {
  std::string out;
  return std::filesystem::exists(kPython) && test::run_command(kPython + " -c 'import numpy'", &out) == 0;
}

// An array of an .npz, read with this project's zip/npy reader.
struct NpyArray {
  data::NpyHeader header;
  std::string bytes;
};
NpyArray read_npz_array(const std::string& path, const std::string& name) {
  data::ZipArchive z(path);
  const data::ZipEntry* e = z.find(name + ".npy");
  if (!e) throw std::runtime_error(path + " has no " + name);
  auto s = z.open(*e);
  NpyArray a;
  a.header = data::read_npy_header(*s);
  a.bytes.resize(static_cast<size_t>(a.header.count()) * a.header.item_size());
  s->read_exact(a.bytes.data(), a.bytes.size(), name);
  return a;
}

// The small class-conditional ADM of model/adm_small at 16x16x3 with random weights (its output layer is
// zero-initialised, which would make every sample the same grey), saved for `cm sample --weights`.
const std::vector<std::string> kRecipe = {"model=adm_small", "dataset.resolution=16", "dataset.channels=3",
                                          "dataset.num_classes=10", "dataset.class_cond=true"};
std::string overrides() {
  std::string s;
  for (auto& o : kRecipe) s += " " + o;
  return s;
}
std::string make_weights(const std::string& dir) {
  Recipe r = Recipe::load("fmnist_ct", kRecipe);
  const ModelShape shape = recipe_model_shape(r);
  EXPECT_EQ(shape.resolution, 16);
  EXPECT_EQ(shape.num_classes, 10);
  auto net = build_network(r, shape);
  torch::manual_seed(3);
  torch::NoGradGuard ng;
  for (auto& p : net->parameters()) p.normal_(0, 0.2);
  const std::string path = dir + "/w.safetensors";
  save_safetensors(path, state_dict(*net));
  return path;
}

}  // namespace

// f records what it is called with; the noise is huge, so any leak of it into the last input shows.
TEST(Sampling, MultistepEndingAtSigmaMinAddsNoNoise) {
  NoiseRange r;  // sigma_min 0.002, sigma_max 80, rho 7
  auto sigmas = ts_to_sigmas({0, 9, 17}, 18, r);
  ASSERT_EQ(sigmas.size(), 3u);
  EXPECT_EQ(sigmas.front(), r.sigma_max);
  EXPECT_EQ(sigmas.back(), r.sigma_min);  // exactly, so sqrt(sigma^2 - eps^2) = 0
  std::vector<torch::Tensor> inputs, outputs;
  ConsistencyFn f = [&](const torch::Tensor& x, const torch::Tensor& t, const torch::Tensor&) {
    inputs.push_back(x.clone());
    auto y = torch::tanh(x * 0.01) + t.view({-1, 1}) * 1e-3;
    outputs.push_back(y.clone());
    return y;
  };
  auto noise = [](int64_t i) { return torch::full({4, 2}, 1000.0 * static_cast<double>(i + 1)); };
  auto x = consistency_sample(f, sigmas, noise, r, torch::Tensor());
  ASSERT_EQ(inputs.size(), 3u);
  EXPECT_TRUE(torch::equal(inputs[0], noise(0) * r.sigma_max));
  // The middle level adds sqrt(sigma^2 - eps^2) z.
  const double s1 = std::sqrt(sigmas[1] * sigmas[1] - r.sigma_min * r.sigma_min);
  EXPECT_TRUE(torch::allclose(inputs[1], outputs[0] + s1 * noise(1)));
  EXPECT_TRUE(torch::equal(inputs[2], outputs[1])) << "noise was added at sigma_min";
  EXPECT_TRUE(torch::equal(x, outputs[2]));
}

// The reference CLI's ts = 0,k,N-1: the last level (sigma_min) is not evaluated - f(x, eps) = x exactly with the
// boundary parameterization - so the samples are those of ts = 0,k, bit for bit, at one evaluation less.
TEST(Sampling, FinalSigmaMinLevelCostsNoEvaluation) {
  Recipe r = Recipe::load("fmnist_ct", kRecipe);
  const ModelShape shape = recipe_model_shape(r);
  auto net = build_network(r, shape);
  torch::manual_seed(4);
  {
    torch::NoGradGuard ng;
    for (auto& p : net->parameters()) p.normal_(0, 0.2);
  }
  net->eval();
  const Preconditioning p = preconditioning(r);
  SamplingOptions a, b;
  a.sigmas = ts_to_sigmas({0, 9, 17}, 18, p.range);
  b.sigmas = ts_to_sigmas({0, 9}, 18, p.range);
  a.count = b.count = 3;
  auto xa = sample_floats(*net, p, shape, a, 0, 3, torch::kCPU).x, xb = sample_floats(*net, p, shape, b, 0, 3, torch::kCPU).x;
  EXPECT_TRUE(torch::equal(xa, xb));
  // ... and the evaluation it skips is the identity: f(x, eps) = x.
  auto x = torch::randn({3, 3, 16, 16});
  auto labels = torch::zeros({3}, torch::kInt64);
  torch::NoGradGuard ng;
  EXPECT_TRUE(torch::equal(precondition(*net, p, x, torch::full({3}, p.range.sigma_min), labels), x));
}

TEST(Sampling, NoiseLabelsAndShardsAreFunctionsOfTheIndex) {
  const std::vector<int64_t> dims = {3, 4, 4};
  EXPECT_TRUE(torch::equal(sample_noise(7, 5, 1, dims), sample_noise(7, 5, 1, dims)));
  EXPECT_FALSE(torch::equal(sample_noise(7, 5, 1, dims), sample_noise(7, 6, 1, dims)));
  EXPECT_FALSE(torch::equal(sample_noise(7, 5, 1, dims), sample_noise(7, 5, 2, dims)));
  EXPECT_FALSE(torch::equal(sample_noise(7, 5, 1, dims), sample_noise(8, 5, 1, dims)));
  SamplingOptions o;
  o.seed = 7;
  std::vector<int64_t> seen(10, 0);
  for (int64_t i = 0; i < 2000; ++i) {
    const int64_t l = sample_label(o, i, 10);
    ASSERT_GE(l, 0);
    ASSERT_LT(l, 10);
    ++seen[static_cast<size_t>(l)];
  }
  for (auto c : seen) EXPECT_GT(c, 140);  // 200 expected per class
  o.labels = LabelMode::Balanced;
  EXPECT_EQ(sample_label(o, 23, 10), 3);
  o.labels = LabelMode::Fixed;
  o.fixed_class = 4;
  EXPECT_EQ(sample_label(o, 23, 10), 4);
  // Contiguous shards covering [0, N) once, sizes within one of each other.
  for (int64_t world : {1, 2, 3, 7}) {
    int64_t next = 0;
    for (int64_t r = 0; r < world; ++r) {
      auto s = shard_range(13, r, world);
      EXPECT_EQ(s.begin, next);
      EXPECT_LE(std::abs(s.size() - 13 / world), 1);
      next = s.end;
    }
    EXPECT_EQ(next, 13);
  }
}

// The reference quantization truncates: ((x + 1) * 127.5).clamp(0, 255).to(uint8).
TEST(Sampling, ReferenceQuantization) {
  auto x = torch::tensor({-2.0, -1.0, -0.999, 0.0, 0.999, 1.0, 3.0}).view({1, 1, 1, 7}).permute({0, 3, 1, 2});  // N=1, C=7
  auto u = to_uint8_reference(x.contiguous());
  ASSERT_EQ(u.sizes(), (torch::IntArrayRef{1, 1, 1, 7}));
  std::vector<int> want = {0, 0, 0, 127, 254, 255, 255};
  for (int i = 0; i < 7; ++i) EXPECT_EQ(u[0][0][0][i].item<int>(), want[static_cast<size_t>(i)]) << i;
}

// The same seed gives the same bytes for --batch 8 and 3 on one rank and on 2 ranks (13 samples: uneven
// shards 6 + 7 and partial rounds), two-step sampling, random labels of a class-conditional model.
TEST(Sampling, SameSamplesForAnyBatchAndWorldSize) {
  const std::string dir = test::make_temp_dir("sampling");
  const std::string w = make_weights(dir);
  auto run = [&](const std::string& launcher, int batch, const std::string& out) {
    std::string log;
    const std::string cmd = fmt::format("{}{} sample fmnist_ct{} --weights {} --count 13 --batch {} --ts 0,10 --grid 18 --seed 5 --out {}",
                                        launcher, test::cm_binary(), overrides(), w, batch, out);
    EXPECT_EQ(test::run_command(cmd, &log), 0) << cmd << "\n" << log;
    return log;
  };
  // The single-process runs on one thread, as each rank of the mpirun below: byte-identical samples are
  // promised for any batch and world size at the same threads per process. oneDNN's convolutions round
  // differently on 1 and 2 threads (~1e-6: a sample may differ by one level in a pixel), checked below.
  auto log = run("OMP_NUM_THREADS=1 ", 8, dir + "/b8");
  EXPECT_NE(log.find("sigmas [80, "), std::string::npos) << log;
  run("OMP_NUM_THREADS=1 ", 3, dir + "/b3");
  run("OMP_NUM_THREADS=2 ", 8, dir + "/t2");
  log = run(test::mpirun_prefix(2), 3, dir + "/w2");
  EXPECT_NE(log.find("on 2 ranks"), std::string::npos) << log;
  const std::string name = "/samples_13x16x16x3.npz";
  auto a8 = read_npz_array(dir + "/b8" + name, "arr_0"), a3 = read_npz_array(dir + "/b3" + name, "arr_0"),
       a2 = read_npz_array(dir + "/w2" + name, "arr_0");
  EXPECT_EQ(a8.header.descr, "|u1");
  EXPECT_EQ(a8.header.shape, (std::vector<int64_t>{13, 16, 16, 3}));
  EXPECT_TRUE(a8.bytes == a3.bytes) << "--batch 3 differs from --batch 8";
  EXPECT_TRUE(a8.bytes == a2.bytes) << "2 ranks differ from 1";
  auto t2 = read_npz_array(dir + "/t2" + name, "arr_0");
  ASSERT_EQ(t2.bytes.size(), a8.bytes.size());
  int64_t differ = 0, most = 0;
  for (size_t i = 0; i < a8.bytes.size(); ++i) {
    const int d = std::abs(static_cast<int>(a8.bytes[i]) - static_cast<int>(t2.bytes[i]));
    differ += d > 0;
    most = std::max<int64_t>(most, d);
  }
  EXPECT_LE(most, 1) << "2 threads vs 1: more than rounding";
  EXPECT_LE(differ, static_cast<int64_t>(a8.bytes.size() / 1000)) << "2 threads vs 1: more than rounding";
  // Not trivially equal: the images vary (the random network is not constant).
  auto img = torch::from_blob(a8.bytes.data(), {13, 16 * 16 * 3}, torch::kUInt8).to(torch::kFloat32);
  EXPECT_GT(img.std().item<double>(), 10.0);
  EXPECT_GT((img[0] - img[1]).abs().mean().item<double>(), 1.0);
  auto l8 = read_npz_array(dir + "/b8" + name, "arr_1"), l2 = read_npz_array(dir + "/w2" + name, "arr_1");
  EXPECT_EQ(l8.header.descr, "<i8");
  EXPECT_EQ(l8.header.shape, (std::vector<int64_t>{13}));
  EXPECT_TRUE(l8.bytes == l2.bytes);
  SamplingOptions o;
  o.seed = 5;
  for (int64_t i = 0; i < 13; ++i)
    EXPECT_EQ(reinterpret_cast<const int64_t*>(l8.bytes.data())[i], sample_label(o, i, 10)) << i;
  EXPECT_TRUE(std::filesystem::exists(dir + "/b8/samples.png"));
  // A different seed gives different samples; a class outside the model is refused.
  std::string out;
  ASSERT_EQ(test::run_command(fmt::format("{} sample fmnist_ct{} --weights {} --count 13 --ts 0,10 --seed 6 --out {}/s6 --quiet",
                                          test::cm_binary(), overrides(), w, dir), &out), 0) << out;
  EXPECT_FALSE(read_npz_array(dir + "/s6" + name, "arr_0").bytes == a8.bytes);
  EXPECT_NE(test::run_command(fmt::format("{} sample fmnist_ct{} --weights {} --count 2 --labels 10 --out {}/x", test::cm_binary(),
                                          overrides(), w, dir), &out), 0);
  EXPECT_NE(out.find("class 10 is outside the model's classes 0..9"), std::string::npos) << out;
  std::filesystem::remove_all(dir);
}

// numpy reads what cm writes: keys, dtypes, shapes and values, in the plain and in the zip64 layout.
TEST(Sampling, NpzReadsBackInNumpy) {
  if (!have_numpy()) GTEST_SKIP() << "needs /usr/bin/python3 with numpy (Debian python3-numpy)";
  const std::string dir = test::make_temp_dir("npz");
  auto images = torch::arange(5 * 4 * 3 * 3, torch::kInt64).remainder(256).to(torch::kUInt8).view({5, 4, 3, 3});
  auto labels = torch::tensor({3, 1, 4, 1, 5}, torch::kInt64);
  auto points = torch::tensor({0.5f, -1.25f}, torch::kFloat32).view({1, 2});
  for (bool zip64 : {false, true}) {
    const std::string path = fmt::format("{}/s{}.npz", dir, zip64 ? 64 : 32);
    data::write_npz(path, {{"arr_0", images}, {"arr_1", labels}, {"pts", points}}, zip64);
    std::string out;
    const std::string script = fmt::format(
        "import numpy as np, zipfile\n"
        "d = np.load('{0}')\n"
        "assert sorted(d.files) == ['arr_0', 'arr_1', 'pts'], d.files\n"
        "a, l, p = d['arr_0'], d['arr_1'], d['pts']\n"
        "assert a.dtype == np.uint8 and a.shape == (5, 4, 3, 3), (a.dtype, a.shape)\n"
        "assert (a.reshape(-1) == np.arange(a.size) % 256).all()\n"
        "assert l.dtype == np.int64 and l.tolist() == [3, 1, 4, 1, 5]\n"
        "assert p.dtype == np.float32 and p.tolist() == [[0.5, -1.25]]\n"
        "z = zipfile.ZipFile('{0}'); assert z.testzip() is None\n"
        "assert all(i.compress_type == zipfile.ZIP_STORED for i in z.infolist())\n"
        "print('ok')\n",
        path);
    std::ofstream(dir + "/check.py") << script;
    EXPECT_EQ(test::run_command(kPython + " " + dir + "/check.py", &out), 0) << "zip64 " << zip64 << "\n" << out;
    // And this project's reader (the one `cm eval` uses) agrees.
    auto a = read_npz_array(path, "arr_0");
    EXPECT_EQ(a.header.shape, (std::vector<int64_t>{5, 4, 3, 3}));
    EXPECT_EQ(std::memcmp(a.bytes.data(), images.data_ptr(), a.bytes.size()), 0);
  }
  // The header is numpy's: data 64-byte aligned, v1.0.
  const std::string h = data::npy_header(torch::kUInt8, {50000, 64, 64, 3});
  EXPECT_EQ(h.size() % 64, 0u);
  EXPECT_EQ(h.substr(0, 8), std::string("\x93NUMPY\x01\x00", 8));
  EXPECT_NE(h.find("{'descr': '|u1', 'fortran_order': False, 'shape': (50000, 64, 64, 3), }"), std::string::npos);
  EXPECT_NE(data::npy_header(torch::kInt64, {7}).find("'shape': (7,), }"), std::string::npos);
  std::filesystem::remove_all(dir);
}

// --weights RUN_DIR --ema RATE samples the EMA of the run's newest checkpoint: the same points as the
// ema_<rate>.safetensors the run wrote at its end (2-D toy: arr_0 float32 [N, 2]).
TEST(Sampling, FromACheckpointEma) {
  const std::string dir = test::make_temp_dir("sampling_ckpt");
  std::string out;
  ASSERT_EQ(test::run_command(fmt::format("{} train toy_ct train.steps=6 train.batch=64 checkpoint.every=6 train.log_every=3 "
                                          "sample.eval_count=100 train.threads=1 run.dir={}/run --quiet", test::cm_binary(), dir), &out), 0) << out;
  const std::string common = fmt::format("{} sample toy_ct --count 20 --ts 0,5 --grid 18 --quiet", test::cm_binary());
  ASSERT_EQ(test::run_command(fmt::format("{} --weights {}/run --ema 0.995 --out {}/a", common, dir, dir), &out), 0) << out;
  ASSERT_EQ(test::run_command(fmt::format("{} --weights {}/run/ema_0.995.safetensors --out {}/b", common, dir, dir), &out), 0) << out;
  auto a = read_npz_array(dir + "/a/samples_20x2.npz", "arr_0"), b = read_npz_array(dir + "/b/samples_20x2.npz", "arr_0");
  EXPECT_EQ(a.header.descr, "<f4");
  EXPECT_TRUE(a.bytes == b.bytes);
  // A rate the checkpoint does not have, and a directory without --ema, are refused with what to do.
  EXPECT_NE(test::run_command(fmt::format("{} --weights {}/run --ema 0.5 --out {}/c", common, dir, dir), &out), 0);
  EXPECT_NE(out.find("has no sampling EMA 0.5"), std::string::npos) << out;
  EXPECT_NE(test::run_command(fmt::format("{} --weights {}/run --out {}/c", common, dir, dir), &out), 0);
  EXPECT_NE(out.find("add --ema RATE"), std::string::npos) << out;
  std::filesystem::remove_all(dir);
}
