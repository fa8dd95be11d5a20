// launch/gpu/check.sh and the CUDA assertions it runs on a GPU machine.
//
// GpuScript.*: the script's CPU-side parts, here and in CI: unpacking .debs into a prefix (a package made
// by dpkg-deb in the test), the library path of missing sonames, the summary and the failure report (a
// failing step, the steps after it skipped, exit code 1), and - when launch/gpu/prepare.sh has filled
// launch/gpu/carry/debs - a dry run that configures cm against the unpacked prefix alone; and the
// projection `cm plan --scaling` against its ring all-reduce model.
// Cuda*: what the script checks on the GPU (each skipped without a GPU): the reference-network fixtures on
// CUDA with TF32 off, the NCCL communicator in a world of one (collectives, argument errors, the bucketed
// reducer with overlap on CUDA streams) and the job abort after the NCCL abort hook.
#include <gtest/gtest.h>
#include <fmt/format.h>
#include <torch/torch.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <thread>
#include <ATen/Context.h>
#include "core/config.h"
#include "core/io/json.h"
#include "core/network.h"
#include "core/io/safetensors.h"
#include "core/weights.h"
#include "distributed/communicator.h"
#include "distributed/guard.h"
#include "distributed/reducer.h"
#include "support/adm_steps.h"
#include "support/errors.h"
#include "distributed/synthetic.h"
#include "distributed/world.h"
#include "support/paths.h"

namespace fs = std::filesystem;
using namespace cm;

namespace {

std::string slurp(const std::string& path) {
  std::ifstream f(path);
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}
bool contains(const std::string& s, const std::string& part) { return s.find(part) != std::string::npos; }
std::string script() { return test::source_dir() + "/launch/gpu/check.sh"; }

// A .deb holding one shared-library-like file under usr/lib/x86_64-linux-gnu, built with dpkg-deb.
bool make_fake_deb(const std::string& dir, const std::string& soname) {
  const std::string pkg = dir + "/pkg";
  fs::create_directories(pkg + "/DEBIAN");
  fs::create_directories(pkg + "/usr/lib/x86_64-linux-gnu");
  std::ofstream(pkg + "/DEBIAN/control") << "Package: cm-fake\nVersion: 1.0\nArchitecture: amd64\nMaintainer: cm tests\n"
                                            "Description: a stand-in package for the check.sh unpack test\n";
  std::ofstream(pkg + "/usr/lib/x86_64-linux-gnu/" + soname) << "not really a library\n";
  fs::create_directories(dir + "/carry/debs");
  std::string out;
  return test::run_command(fmt::format("dpkg-deb --build {} {}/carry/debs/cm-fake_1.0_amd64.deb", pkg, dir), &out) == 0;
}

}  // namespace

// The unpack step with a stand-in package: the file lands in the prefix, its soname (absent from this
// machine) on the library path; the package has no OpenMPI, which the step reports as its failure; the
// steps that need it are skipped; the summary says all of it and the exit code is 1.
TEST(GpuScript, UnpackLibraryPathAndFailureReport) {
  if (test::run_command("command -v dpkg-deb", nullptr) != 0) GTEST_SKIP() << "no dpkg-deb here";
  const std::string dir = test::make_temp_dir("cm-gpu-script");
  ASSERT_TRUE(make_fake_deb(dir, "libcmfake.so.7"));
  std::string out;
  const int rc = test::run_command(fmt::format("bash {} --dry-run --work {}/w --carry {}/carry --steps env,unpack,configure,build "
                                               "--budget 120", script(), dir, dir), &out);
  EXPECT_EQ(rc, 1) << out;
  EXPECT_TRUE(fs::exists(dir + "/w/prefix/usr/lib/x86_64-linux-gnu/libcmfake.so.7")) << out;
  EXPECT_TRUE(fs::is_symlink(dir + "/w/libpath/libcmfake.so.7")) << out;
  const std::string md = slurp(dir + "/w/out/summary.md");
  EXPECT_TRUE(contains(md, "# cm GPU check (dry run, CPU): FAIL")) << md;
  EXPECT_TRUE(contains(md, "| env | PASS |")) << md;
  EXPECT_TRUE(contains(md, "| unpack | FAIL |")) << md;
  EXPECT_TRUE(contains(md, "no mpicc.openmpi in the carried packages")) << md;
  EXPECT_TRUE(contains(md, "| configure | SKIP | 0 | unpack failed |")) << md;
  EXPECT_TRUE(contains(md, "| build | SKIP | 0 | configure skipped |")) << md;
  const Json j = parse_json(slurp(dir + "/w/out/summary.json"), "summary.json");
  EXPECT_EQ(j.get("verdict")->str, "FAIL");
  EXPECT_TRUE(j.get("dry_run")->kind == Json::Bool);
  EXPECT_TRUE(fs::exists(dir + "/w/out/logs.tar.gz"));
  EXPECT_TRUE(fs::exists(dir + "/w/out/results.tsv"));
  // --fail marks a step failed on purpose; the GPU steps of a dry run are skipped, not failed.
  ASSERT_EQ(test::run_command(fmt::format("bash {} --dry-run --work {}/w --carry {}/carry --steps env,tests,nccl --fail env "
                                          "--budget 60", script(), dir, dir), &out), 1) << out;
  const std::string md2 = slurp(dir + "/w/out/summary.md");
  EXPECT_TRUE(contains(md2, "FAIL injected by --fail env")) << md2;
  EXPECT_TRUE(contains(md2, "| tests | SKIP | 0 | dry run: needs a GPU |")) << md2;
  // Usage errors are exit code 2, before anything runs.
  EXPECT_EQ(test::run_command(fmt::format("bash {} --steps nosuchstep", script()), &out), 2) << out;
  fs::remove_all(dir);
}

// With the carried packages (launch/gpu/prepare.sh): unpack, configure against the prefix only (every
// dependency's path checked by the script), a 1- and 2-rank start of the carried OpenMPI, the summary.
TEST(GpuScript, DryRunConfiguresAgainstTheCarriedPackages) {
  const std::string carry = test::source_dir() + "/launch/gpu/carry";
  if (!fs::exists(carry + "/debs")) GTEST_SKIP() << "no " << carry << "/debs: run launch/gpu/prepare.sh to test this";
  const std::string dir = test::make_temp_dir("cm-gpu-dry");
  std::string out;
  const int rc = test::run_command(fmt::format("bash {} --dry-run --work {} --steps env,unpack,configure,mpi --budget 600",
                                               script(), dir), &out);
  const std::string md = slurp(dir + "/out/summary.md");
  EXPECT_EQ(rc, 0) << out;
  for (const char* step : {"env", "unpack", "configure", "mpi"})
    EXPECT_TRUE(contains(md, fmt::format("| {} | PASS |", step))) << step << "\n" << md;
  EXPECT_TRUE(contains(md, "dependencies from the prefix: yes")) << md;
  EXPECT_TRUE(contains(md, "singleton and mpirun -n 2 run")) << md;
  fs::remove_all(dir);
}

// cm plan --scaling: the ring model of its help, recomputed here from the buckets it reports: 1 GPU is
// the measured step, within a node NVLink, across nodes InfiniBand, the overlap capped by the backward
// time and never hiding the last bucket; the bucket bytes are the network's float32 parameters.
TEST(GpuScript, PlanScalingFollowsTheRingModel) {
  const std::string dir = test::make_temp_dir("cm-plan-scaling");
  std::string out;
  const std::string cmd = fmt::format("{} plan cifar10_ct --scaling --step-s 0.1 --batch-per-gpu 64 --overlap 0.5 --json {}/s.json",
                                      test::cm_binary(), dir);
  ASSERT_EQ(test::run_command(cmd, &out), 0) << cmd << "\n" << out;
  EXPECT_TRUE(contains(out, "efficiency")) << out;
  const Json j = parse_json(slurp(dir + "/s.json"), "s.json");
  const double bytes = j.get("bucket_bytes")->num, last = j.get("last_bucket_bytes")->num;
  const double nb = j.get("buckets")->num, backward = j.get("backward_s")->num;
  EXPECT_EQ(bytes, 4.0 * 56'395'523);  // NCSN++ CIFAR-10, float32 gradients
  EXPECT_GE(nb, std::ceil(bytes / (25.0 * 1024 * 1024)));  // whole tensors in buckets of at most 25 MiB
  EXPECT_LE(last, 25.0 * 1024 * 1024);
  EXPECT_NEAR(backward, 0.1 * 2 / 4, 1e-12);   // CT: 4 forward-equivalents, backward = 2 of them
  const auto& rows = j.get("rows")->arr;
  ASSERT_GE(rows.size(), 5u);  // 1 GPU, then 1, 2, 4, 8 nodes of 8
  EXPECT_EQ(rows[0].get("gpus")->integer, 1);
  EXPECT_DOUBLE_EQ(rows[0].get("efficiency")->num, 1.0);
  for (size_t i = 1; i < rows.size(); ++i) {
    const double nodes = rows[i].get("nodes")->num, w = rows[i].get("gpus")->num;
    EXPECT_EQ(w, 8 * nodes);
    const double bw = nodes > 1 ? 50e9 : 450e9, hop = nodes > 1 ? 5e-6 : 2e-6;
    const double comm = 2 * (w - 1) / w * bytes / bw + nb * 2 * (w - 1) * hop;
    const double t_last = 2 * (w - 1) / w * last / bw + 2 * (w - 1) * hop;
    const double exposed = std::max(comm - std::min(0.5 * comm, backward), t_last);
    EXPECT_NEAR(rows[i].get("comm_s")->num, comm, 1e-6 * comm) << w;
    EXPECT_NEAR(rows[i].get("exposed_s")->num, exposed, 1e-6 * exposed) << w;
    EXPECT_NEAR(rows[i].get("efficiency")->num, 0.1 / (0.1 + exposed), 1e-5) << w;
    EXPECT_NEAR(rows[i].get("images_per_s")->num, w * 64 / (0.1 + exposed), 1e-4 * w * 64 / (0.1 + exposed)) << w;
  }
  EXPECT_EQ(rows.back().get("gpus")->integer, 64);
  // The step time is required, and the overlap is a fraction.
  EXPECT_NE(test::run_command(fmt::format("{} plan cifar10_ct --scaling", test::cm_binary()), &out), 0);
  EXPECT_TRUE(contains(out, "--step-s")) << out;
  EXPECT_NE(test::run_command(fmt::format("{} plan cifar10_ct --scaling --step-s 0.1 --overlap 2", test::cm_binary()), &out), 0);
  fs::remove_all(dir);
}

// ---- on the GPU ----

namespace {

bool have_cuda() { return torch::cuda::is_available() && torch::cuda::device_count() > 0; }

NetworkPtr small_net(const std::string& model, const ModelShape& shape) {
  ConfigReader r(Config::load_file(test::source_dir() + "/recipes/configs/model/" + model + ".toml"), "");
  auto net = make_network(r, shape);
  r.finish();
  return net;
}

// Forward of the fixture inputs on CUDA in float32 with TF32 off, against the reference output.
double cuda_fixture_error(const std::string& model, const ModelShape& shape, const std::string& stem, const char* noise_key) {
  const std::string base = test::shared_dir() + "/fixtures/reference-nets/" + stem;
  auto net = small_net(model, shape);
  load_weights_file(*net, base + ".weights.safetensors");
  net->eval();
  const torch::Device dev(torch::kCUDA, 0);
  net->to(dev);
  auto io = load_safetensors(base + ".io.safetensors");
  torch::Tensor y;
  if (auto* t = io.find("y")) y = t->to(dev);
  torch::NoGradGuard ng;
  auto out = net->forward(io.find("x")->to(dev), io.find(noise_key)->to(dev), y).to(torch::kCPU);
  const auto& want = *io.find("out");
  EXPECT_EQ(out.sizes(), want.sizes());
  EXPECT_GT(want.abs().max().item<double>(), 1e-2);  // not trivially small
  return (out.to(torch::kDouble) - want.to(torch::kDouble)).abs().max().item<double>();
}

using test::error_of;

}  // namespace

TEST(CudaNets, ReferenceFixturesMatchWithTf32Off) {
  if (!have_cuda()) GTEST_SKIP() << "no GPU";
  auto& ctx = at::globalContext();
  const bool cublas = ctx.allowTF32CuBLAS(), cudnn = ctx.allowTF32CuDNN();
  ctx.setAllowTF32CuBLAS(false);
  ctx.setAllowTF32CuDNN(false);
  const double adm = cuda_fixture_error("adm_small", {3, 16, 10}, "adm_small_cond", "timesteps");
  const double ncsnpp = cuda_fixture_error("ncsnpp_small", {3, 16, 0}, "ncsnpp_small", "noise_labels");
  ctx.setAllowTF32CuBLAS(cublas);
  ctx.setAllowTF32CuDNN(cudnn);
  std::printf("[gpu] fixture max |diff| on CUDA, TF32 off: ADM %.3g, NCSN++ %.3g\n", adm, ncsnpp);
  EXPECT_LT(adm, 1e-3);
  EXPECT_LT(ncsnpp, 1e-3);
}

// train.channels_last on CUDA (auto: on there): a small ADM trains in NHWC layout as in NCHW (fp32, TF32 off;
// cuDNN may pick other algorithms per layout, so to 1 % of how far the weights moved), its convolution
// weights are NHWC, and bf16 steps run in both layouts.
TEST(CudaChannelsLast, AdmTrainsAsInNchwLayout) {
  if (!have_cuda()) GTEST_SKIP() << "no GPU";
  const auto nchw = test::adm_after_steps({"train.device=cuda", "train.precision=fp32", "train.channels_last=off"});
  const auto nhwc = test::adm_after_steps({"train.device=cuda", "train.precision=fp32"});
  const auto start = test::adm_after_steps({"train.device=cuda", "train.precision=fp32", "train.lr=1e-30"});
  EXPECT_FALSE(nchw.channels_last);
  EXPECT_TRUE(nhwc.channels_last) << "auto is on for CUDA";
  const double moved = test::max_diff(nchw.params, start.params), d = test::max_diff(nchw.params, nhwc.params);
  std::printf("[gpu] channels_last: weights moved by up to %.3g, NCHW vs NHWC %.3g\n", moved, d);
  EXPECT_GT(moved, 1e-3);
  EXPECT_LT(d, 1e-2 * moved);
  for (const auto& p : nhwc.params)
    if (p.dim() == 4) EXPECT_TRUE(p.is_contiguous(torch::MemoryFormat::ChannelsLast));
  for (const char* layout : {"train.channels_last=off", "train.channels_last=on"}) {
    const auto bf16 = test::adm_after_steps({"train.device=cuda", "train.precision=bf16", layout});
    for (const auto& p : bf16.params) EXPECT_TRUE(torch::isfinite(p).all().item<bool>()) << layout;
  }
}

// NCCL in a world of one (MPI singleton): the collectives, the argument errors, and the bucketed reducer
// launching its buckets on the NCCL stream from autograd hooks during backward.
TEST(CudaNccl, WorldOfOneCollectivesAndReducerOverlap) {
  if (!have_cuda()) GTEST_SKIP() << "no GPU";
  dist::WorldOptions o;
  o.device = "cuda";
  o.timeout_s = 120;
  const dist::World& w = dist::World::init(o);
  ASSERT_TRUE(w.device.is_cuda());
  {
    auto comm = dist::Communicator::create(w, w.device);
    EXPECT_EQ(comm->backend(), "nccl");
    const auto opts = torch::TensorOptions().dtype(torch::kFloat).device(w.device);
    auto t = torch::arange(1000, opts);
    comm->all_reduce(t, dist::ReduceOp::Sum);
    comm->all_reduce(t, dist::ReduceOp::Avg);
    EXPECT_TRUE(torch::equal(t.cpu(), torch::arange(1000, torch::kFloat)));
    auto h = torch::ones({64}, opts.dtype(torch::kHalf));
    comm->all_reduce(h);  // NCCL reduces half precision (MPI does not)
    EXPECT_TRUE(torch::equal(h.cpu(), torch::ones({64}, torch::kHalf)));
    comm->broadcast(t, 0);
    auto g = comm->all_gather(torch::full({2, 3}, 7.0, opts));
    EXPECT_EQ(g.sizes(), (std::vector<int64_t>{1, 2, 3}));
    EXPECT_TRUE(torch::equal(g.cpu(), torch::full({1, 2, 3}, 7.0)));
    comm->barrier();
    EXPECT_TRUE(contains(error_of([&] { comm->all_reduce(torch::ones({4})); }), "expected cuda"))
        << error_of([&] { comm->all_reduce(torch::ones({4})); });
    EXPECT_TRUE(contains(error_of([&] { comm->broadcast(t, 1); }), "root 1"));
    EXPECT_TRUE(contains(error_of([&] { comm->all_reduce(torch::ones({4}, opts.dtype(torch::kLong)), dist::ReduceOp::Avg); }),
                         "average of integer"));

    // The reducer: 3 buckets, each launched during backward, gradients equal to the synthetic values.
    dist::SyntheticModel m({1000, 2000, 3000}, 30.0, torch::kFloat, w.device);
    dist::ReducerOptions ro;
    ro.bucket_mb = 8000.0 / (1024 * 1024);
    dist::GradReducer red(comm, m.params, ro);
    ASSERT_EQ(red.buckets().size(), 3u);
    for (int step = 0; step < 2; ++step) {
      red.prepare();
      m.loss().backward();
      red.finish();
      EXPECT_EQ(red.launched_during_backward(), 3u) << "step " << step;
      torch::cuda::synchronize();
      for (size_t i = 0; i < m.params.size(); ++i)
        EXPECT_TRUE(torch::equal(m.params[i].grad(), torch::full_like(m.params[i], dist::SyntheticModel::grad_value(i))))
            << "param " << i;
    }
  }
  dist::World::finalize();
}

// A failing rank ends the job: abort_job runs the NCCL communicator's abort hook (ncclCommAbort), then ours,
// and the process exits with code 1 and the message, without hanging. A death test in its own process
// (threadsafe style: a fresh process, so CUDA and MPI start there, not in a fork).
TEST(CudaNccl, AbortJobEndsTheProcessAfterTheNcclAbortHook) {
  if (!have_cuda()) GTEST_SKIP() << "no GPU";
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  EXPECT_EXIT(
      {
        dist::WorldOptions o;
        o.device = "cuda";
        o.timeout_s = 60;
        const dist::World& w = dist::World::init(o);
        auto comm = dist::Communicator::create(w, w.device);
        auto t = torch::ones({1 << 20}, torch::TensorOptions().device(w.device));
        comm->all_reduce(t);
        dist::add_abort_hook([] { std::fprintf(stderr, "after the NCCL abort hook\n"); });
        dist::abort_job("planted failure of the GPU check");
      },
      ::testing::ExitedWithCode(1), "planted failure of the GPU check(.|\n)*after the NCCL abort hook");
}
