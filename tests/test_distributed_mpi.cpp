// Multi-rank tests under a real `mpirun -np W` (W = 1, 2, 3): collectives against closed forms, W-rank
// training equal to 1-rank training with the same global batch (also with 2 micro-batches), parameters and
// EMA bit-identical across ranks, mismatches named, overlap visible in the timeline, and failures (a rank
// that throws, a killed rank, a rank that hangs) ending the whole job with a message naming the rank.
//
// Each test launches this very executable under mpirun with --gtest_filter=DistWorker.Run and the scenario in
// CM_DIST_SCENARIO; the worker writes its results into CM_DIST_OUT, which the test then compares. Run
// directly (without the variable), DistWorker.Run skips.
#include <gtest/gtest.h>

#include <chrono>
#include <csignal>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <thread>
#include <fmt/format.h>
#include <torch/torch.h>
#include "distributed/check.h"
#include "distributed/communicator.h"
#include "distributed/rank_checksums.h"
#include "distributed/guard.h"
#include "distributed/reducer.h"
#include "distributed/synthetic.h"
#include "distributed/timeline.h"
#include "distributed/world.h"
#include "core/network.h"  // to_channels_last
#include "support/batch.h"
#include "support/files.h"
#include "support/mpi_launch.h"
#include "support/paths.h"

namespace cm::dist {
namespace {

using test::micro_batch;
using test::per_rank_batch;

// ------------------------------------------------------------------------------------------------------------
// The worker: runs inside each rank.

std::string env_or(const char* key, const std::string& def) {
  const char* v = std::getenv(key);
  return v ? std::string(v) : def;
}

using test::write_file;

void expect(bool ok, const std::string& what) {
  if (!ok) throw std::runtime_error("check failed: " + what);
}

torch::nn::Sequential make_mlp(int64_t hidden, torch::Dtype dtype) {
  torch::nn::Sequential net(torch::nn::Linear(8, hidden), torch::nn::Tanh(), torch::nn::Linear(hidden, hidden),
                            torch::nn::Tanh(), torch::nn::Linear(hidden, 4));
  net->to(dtype);
  return net;
}

// A small convolution network on [B, 2, 6, 6] inputs (the channels_last scenario).
torch::nn::Sequential make_convnet(torch::Dtype dtype) {
  torch::nn::Sequential net(torch::nn::Conv2d(torch::nn::Conv2dOptions(2, 4, 3).padding(1)), torch::nn::Tanh(),
                            torch::nn::Conv2d(torch::nn::Conv2dOptions(4, 4, 3).padding(1)), torch::nn::Tanh(),
                            torch::nn::Flatten(), torch::nn::Linear(144, 4));
  net->to(dtype);
  return net;
}

struct TrainSpec {
  std::string opt = "sgd";
  bool conv = false;           // the convolution network instead of the MLP
  bool channels_last = false;  // its weights and inputs in channels-last layout (train.channels_last)
  int64_t accum = 1;
  torch::Dtype dtype = torch::kDouble;
  int64_t steps = 6;
  int64_t global_batch = 24;
  int64_t hidden = 32;
  double ema_mu = 0.9;
  int64_t check_every = 0;
  Timeline* timeline = nullptr;
  std::function<void(int64_t step)> before_step;
  std::function<void(int64_t step, std::vector<torch::Tensor>& ema)> after_step;
};

struct TrainOut {
  std::vector<torch::Tensor> params, ema;
  size_t overlapped = 0;
};

// K steps of SGD or Adam on an MLP with a synthetic regression loss. The global batch of step k is drawn from
// seed 1000 + k (the same on every rank); rank r takes rows [r * B/W, (r + 1) * B/W), split into micro-batches.
// Every rank starts from a different initialization, so the result also depends on the reducer's broadcast.
TrainOut train(const std::shared_ptr<Communicator>& comm, const TrainSpec& spec) {
  const int W = comm->size(), r = comm->rank();
  torch::manual_seed(100 + 7919 * r);
  auto net = spec.conv ? make_convnet(spec.dtype) : make_mlp(spec.hidden, spec.dtype);
  if (spec.channels_last) expect(to_channels_last(*net) == 2, "two convolution weights in channels-last layout");
  ReducerOptions ro;
  ro.bucket_mb = 0.002;  // ~2 KB: several buckets even for this small model
  auto reducer = GradReducer::for_module(comm, *net, ro);
  std::unique_ptr<torch::optim::Optimizer> opt;
  if (spec.opt == "sgd") opt = std::make_unique<torch::optim::SGD>(net->parameters(), torch::optim::SGDOptions(0.05).momentum(0.9));
  else opt = std::make_unique<torch::optim::Adam>(net->parameters(), torch::optim::AdamOptions(1e-2));
  TrainOut out;
  for (auto& p : net->parameters()) out.ema.push_back(p.detach().clone());
  const int64_t per = per_rank_batch(spec.global_batch, W);
  const int64_t micro = micro_batch(spec.global_batch, W, spec.accum);
  ConsistencyCheck check(spec.check_every);
  Timeline none;
  Timeline& tl = spec.timeline ? *spec.timeline : none;
  for (int64_t step = 0; step < spec.steps; ++step) {
    set_step(step);
    if (spec.before_step) spec.before_step(step);
    torch::manual_seed(1000 + step);
    auto x = spec.conv ? torch::randn({spec.global_batch, 2, 6, 6}, spec.dtype) : torch::randn({spec.global_batch, 8}, spec.dtype);
    auto y = torch::randn({spec.global_batch, 4}, spec.dtype);
    if (spec.channels_last) x = x.contiguous(torch::MemoryFormat::ChannelsLast);
    reducer->prepare();
    for (int64_t m = 0; m < spec.accum; ++m) {
      const int64_t row = r * per + m * micro;
      torch::Tensor loss;
      {
        auto s = tl.scope("forward");
        loss = torch::mse_loss(net->forward(x.narrow(0, row, micro)), y.narrow(0, row, micro)) / spec.accum;
      }
      auto s = tl.scope("backward");
      if (m + 1 < spec.accum) {
        auto ns = reducer->no_sync();
        loss.backward();
      } else {
        loss.backward();
      }
    }
    {
      auto s = tl.scope("reducer.finish");
      reducer->finish();
    }
    // Every gradient is still the parameter's slice of its bucket, in the parameter's own layout.
    for (auto& p : net->parameters())
      expect(p.grad().strides() == p.strides(), fmt::format("a gradient in the layout of its parameter ({} dims)", p.dim()));
    out.overlapped += reducer->launched_during_backward();
    {
      auto s = tl.scope("optimizer");
      opt->step();
    }
    {
      auto s = tl.scope("ema");
      torch::NoGradGuard no_grad;
      auto params = net->parameters();
      for (size_t i = 0; i < params.size(); ++i) out.ema[i].mul_(spec.ema_mu).add_(params[i].detach(), 1 - spec.ema_mu);
    }
    if (spec.after_step) spec.after_step(step, out.ema);
    check.maybe(step + 1, {{"params", net->parameters()}, {"ema 0.9", out.ema}});
  }
  for (auto& p : net->parameters()) out.params.push_back(p.detach().clone());
  return out;
}

void scenario_collectives(const std::shared_ptr<Communicator>& comm, const std::string& dir) {
  const int W = comm->size(), r = comm->rank();
  auto f = torch::full({1000}, static_cast<float>(r + 1));
  comm->all_reduce(f, ReduceOp::Sum);
  expect(torch::equal(f, torch::full({1000}, W * (W + 1) / 2.0f)), "float sum");
  auto d = torch::full({3, 4}, static_cast<double>(r + 1), torch::kDouble);
  comm->all_reduce(d, ReduceOp::Avg);
  expect(torch::equal(d, torch::full({3, 4}, (W + 1) / 2.0, torch::kDouble)), "double average");
  auto l = torch::full({5}, int64_t{1} << (40 + r), torch::kLong);
  comm->all_reduce(l);
  int64_t want = 0;
  for (int k = 0; k < W; ++k) want += int64_t{1} << (40 + k);
  expect(torch::equal(l, torch::full({5}, want, torch::kLong)), "int64 sum");
  // A non-contiguous tensor is reduced in place through a copy.
  auto base = torch::arange(12, torch::kFloat).view({3, 4}) * (r + 1);
  auto tr = base.t();
  comm->all_reduce(tr, ReduceOp::Sum);
  expect(torch::equal(base, torch::arange(12, torch::kFloat).view({3, 4}) * (W * (W + 1) / 2)), "non-contiguous sum");
  // Asynchronous collectives complete in issue order.
  auto a = torch::ones({100}), b = torch::full({100}, 2.0f);
  auto wa = comm->all_reduce_async(a, ReduceOp::Sum, "a");
  auto wb = comm->all_reduce_async(b, ReduceOp::Avg, "b");
  wb->wait();
  wa->wait();
  expect(torch::equal(a, torch::full({100}, static_cast<float>(W))) && torch::equal(b, torch::full({100}, 2.0f)), "async");
  auto bc = torch::full({7}, static_cast<float>(r));
  comm->broadcast(bc, W - 1);
  expect(torch::equal(bc, torch::full({7}, static_cast<float>(W - 1))), "broadcast from the last rank");
  auto g = comm->all_gather(torch::full({2, 2}, static_cast<float>(10 * r)));
  expect(g.sizes() == torch::IntArrayRef({W, 2, 2}), "all_gather shape");
  for (int k = 0; k < W; ++k) expect(torch::equal(g[k], torch::full({2, 2}, 10.0f * k)), fmt::format("all_gather row {}", k));
  comm->barrier();
  const auto names = all_gather_strings(fmt::format("r{}", r));
  for (int k = 0; k < W; ++k) expect(names[k] == fmt::format("r{}", k), "all_gather_strings");
  const World& w = World::get();
  expect(w.local_size == W && w.local_rank == r && w.nodes == 1, "one node holds every rank");
  write_file(fmt::format("{}/collectives-rank{}.txt", dir, r), "ok");
}

void scenario_train(const std::shared_ptr<Communicator>& comm, const std::string& dir) {
  const int W = comm->size(), r = comm->rank();
  for (std::string opt : {"sgd", "adam"})
    for (int64_t accum : {1, 2}) {
      TrainSpec spec;
      spec.opt = opt;
      spec.accum = accum;
      auto out = train(comm, spec);
      expect(out.overlapped > 0, "buckets were launched during backward");
      torch::save(out.params, fmt::format("{}/train-{}-acc{}-np{}-rank{}.pt", dir, opt, accum, W, r));
    }
  // A convolution network, plain and in channels-last layout (its gradient slices then have its strides).
  for (bool cl : {false, true}) {
    TrainSpec spec;
    spec.conv = true;
    spec.channels_last = cl;
    auto out = train(comm, spec);
    torch::save(out.params, fmt::format("{}/train-conv-cl{}-np{}-rank{}.pt", dir, cl ? 1 : 0, W, r));
  }
  // float32 with an EMA, checked across ranks every 2 steps, with a timeline.
  Timeline tl(fmt::format("{}/trace-np{}-rank{}.json", dir, W, r), r);
  comm->set_timeline(&tl);
  TrainSpec spec;
  spec.opt = "adam";
  spec.dtype = torch::kFloat;
  spec.steps = 8;
  spec.check_every = 2;
  spec.timeline = &tl;
  auto out = train(comm, spec);
  comm->set_timeline(nullptr);
  std::vector<torch::Tensor> both = out.params;
  both.insert(both.end(), out.ema.begin(), out.ema.end());
  torch::save(both, fmt::format("{}/float-np{}-rank{}.pt", dir, W, r));
  const auto ph = all_gather_u64(tensors_checksum(out.params)), eh = all_gather_u64(tensors_checksum(out.ema));
  std::string text;
  for (int k = 0; k < W; ++k) text += fmt::format("{:016x} {:016x}\n", ph[k], eh[k]);
  write_file(fmt::format("{}/hashes-np{}-rank{}.txt", dir, W, r), text);
}

void scenario_failure(const std::shared_ptr<Communicator>& comm, const std::string& kind) {
  const int W = comm->size(), r = comm->rank();
  TrainSpec spec;
  spec.steps = 1000;
  spec.before_step = [&](int64_t step) {
    if (step != 3) return;
    if (kind == "throw" && r == W - 1) throw std::runtime_error("injected failure on purpose");
    if (kind == "kill" && r == 1) std::raise(SIGKILL);
    if (kind == "hang" && r == 1) std::this_thread::sleep_for(std::chrono::seconds(60));
  };
  train(comm, spec);
}

void scenario_mismatch(const std::shared_ptr<Communicator>& comm, const std::string& dir) {
  const int W = comm->size(), r = comm->rank();
  auto net = make_mlp(r == W - 1 ? 16 : 32, torch::kFloat);
  std::string msg = "<no error>";
  try {
    auto reducer = GradReducer::for_module(comm, *net);
  } catch (const DistError& e) {
    msg = e.what();
  }
  write_file(fmt::format("{}/mismatch-rank{}.txt", dir, r), msg);
}

void scenario_ema_diverge(const std::shared_ptr<Communicator>& comm, const std::string& dir) {
  const int r = comm->rank();
  TrainSpec spec;
  spec.dtype = torch::kFloat;
  spec.check_every = 2;
  spec.after_step = [&](int64_t step, std::vector<torch::Tensor>& ema) {
    if (step == 3 && r == 1) ema[2].view(-1).view(torch::kInt)[5].bitwise_xor_(1);  // one bit of one EMA element
  };
  std::string msg = "<no error>";
  try {
    train(comm, spec);
  } catch (const DistError& e) {
    msg = e.what();
  }
  write_file(fmt::format("{}/ema-rank{}.txt", dir, r), msg);
}

void scenario_overlap(const std::shared_ptr<Communicator>& comm, const std::string& dir) {
  const int r = comm->rank();
  Timeline tl(fmt::format("{}/overlap-rank{}.json", dir, r), r);
  comm->set_timeline(&tl);
  // 1 MB each, 250 ms of backward each: bucket 2 is ready 250 ms before backward ends, a margin that holds
  // when the ranks share their cores with other work (100 ms did not under a loaded ctest -j2).
  SyntheticModel m({250000, 250000, 250000, 250000}, 1000.0);
  ReducerOptions ro;
  ro.bucket_mb = 1.0;
  GradReducer reducer(comm, m.params, ro);
  expect(reducer.buckets().size() == 4, "one parameter per bucket");
  int64_t bwd_end = 0;
  for (int step = 0; step < 2; ++step) {
    reducer.prepare();
    {
      auto s = tl.scope("backward");
      m.loss().backward();
    }
    bwd_end = Timeline::now_us();
    reducer.finish();
  }
  expect(reducer.launched_during_backward() == 4, "all four buckets launched from autograd hooks");
  // In the last step, buckets 0..2 must have started communicating while backward was still running.
  std::map<std::string, int64_t> start;
  for (auto& e : tl.snapshot())
    if (e.category == "comm") start[e.name] = e.ts;  // later events overwrite: the last step remains
  std::string report;
  for (int b = 0; b < 3; ++b) {
    const auto key = fmt::format("grad bucket {}/4 (1.0 MB)", b);
    expect(start.count(key) == 1, "timeline has " + key);
    expect(start[key] < bwd_end, fmt::format("{} started {} us before the end of backward", key, bwd_end - start[key]));
    report += fmt::format("{} started {:.0f} ms before the end of backward\n", key, (bwd_end - start[key]) / 1000.0);
  }
  comm->set_timeline(nullptr);
  for (size_t i = 0; i < m.params.size(); ++i)
    expect(torch::equal(m.params[i].grad(), torch::full_like(m.params[i], SyntheticModel::grad_value(i))), "averaged gradient");
  write_file(fmt::format("{}/overlap-rank{}.txt", dir, r), report);
}

TEST(DistWorker, Run) {
  const std::string scenario = env_or("CM_DIST_SCENARIO", "");
  if (scenario.empty()) GTEST_SKIP() << "helper of the DistMpi tests; runs only under their mpirun";
  const std::string dir = env_or("CM_DIST_OUT", ".");
  const int rc = run_guarded([&] {
    WorldOptions wo;
    wo.device = "cpu";
    wo.timeout_s = std::stod(env_or("CM_DIST_TIMEOUT", "60"));
    const World& w = World::init(wo);
    auto comm = Communicator::create(w, w.device);
    if (scenario == "collectives") scenario_collectives(comm, dir);
    else if (scenario == "train") scenario_train(comm, dir);
    else if (scenario == "mismatch") scenario_mismatch(comm, dir);
    else if (scenario == "ema") scenario_ema_diverge(comm, dir);
    else if (scenario == "overlap") scenario_overlap(comm, dir);
    else scenario_failure(comm, scenario);
    return 0;
  });
  World::finalize();
  EXPECT_EQ(rc, 0);
}

// ------------------------------------------------------------------------------------------------------------
// The tests: launch the worker, compare what it wrote.

using test::read_text;

std::vector<torch::Tensor> load_tensors(const std::string& path) {
  std::vector<torch::Tensor> v;
  torch::load(v, path);
  return v;
}

class DistMpi : public ::testing::Test {
 protected:
  void SetUp() override { dir_ = cm::test::make_temp_dir("cm-dist"); }
  void TearDown() override {
    if (!HasFailure()) std::filesystem::remove_all(dir_);
  }
  cm::test::MpiRun run(int np, const std::string& scenario, double timeout_s = 60,
                       std::map<std::string, std::string> env = {}) {
    env["CM_DIST_SCENARIO"] = scenario;
    env["CM_DIST_OUT"] = dir_;
    // The output directory is also an argument, so the ranks can be found by command line afterwards.
    const std::string cmd = cm::test::self_exe() + " --gtest_filter=DistWorker.Run " + dir_;
    if (np > 1) return cm::test::mpirun(np, cmd, env, timeout_s);
    // One rank: started directly, without mpirun (MPI singleton), as a user would on a workstation.
    std::string direct = "timeout -k 5 " + std::to_string(static_cast<int>(timeout_s)) + " env";
    for (auto& [k, v] : env) direct += " " + k + "='" + v + "'";
    cm::test::MpiRun r;
    const auto t0 = std::chrono::steady_clock::now();
    r.rc = cm::test::run_command(direct + " " + cmd, &r.output);
    r.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    return r;
  }
  // No rank, orted or mpirun of this test may outlive the job.
  void expect_nothing_left() {
    int left = 0;
    for (int i = 0; i < 50; ++i) {
      left = cm::test::count_processes_with(dir_);
      if (left == 0) break;
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
    EXPECT_EQ(left, 0) << "processes left behind by the job";
  }
  std::string dir_;
};

TEST_F(DistMpi, CollectivesClosedForm) {
  auto r = run(3, "collectives");
  ASSERT_EQ(r.rc, 0) << r.output;
  for (int k = 0; k < 3; ++k) EXPECT_EQ(read_text(fmt::format("{}/collectives-rank{}.txt", dir_, k)), "ok");
}

// W-rank training with the global batch split across ranks equals 1-rank training on the same global batch,
// for SGD with momentum and Adam, with and without 2 micro-batches of accumulation (float64, tight tolerance);
// a convolution network in channels-last layout (weights, inputs and so the gradient slices of the buckets)
// trains as the plain one on one rank.
TEST_F(DistMpi, TrainingMatchesSingleRank) {
  for (int np : {1, 2, 3}) {
    auto r = run(np, "train", 90);
    ASSERT_EQ(r.rc, 0) << "np " << np << ":\n" << r.output;
  }
  for (std::string opt : {"sgd", "adam"}) {
    const auto ref = load_tensors(fmt::format("{}/train-{}-acc1-np1-rank0.pt", dir_, opt));
    for (int np : {1, 2, 3})
      for (int accum : {1, 2}) {
        if (np == 1 && accum == 1) continue;
        for (int rank = 0; rank < np; ++rank) {
          const auto got = load_tensors(fmt::format("{}/train-{}-acc{}-np{}-rank{}.pt", dir_, opt, accum, np, rank));
          ASSERT_EQ(got.size(), ref.size());
          for (size_t i = 0; i < ref.size(); ++i) {
            const double diff = (got[i] - ref[i]).abs().max().item<double>();
            EXPECT_LT(diff, 1e-10) << opt << " accum " << accum << " np " << np << " rank " << rank << " param " << i;
          }
        }
      }
  }
  const auto conv = load_tensors(fmt::format("{}/train-conv-cl0-np1-rank0.pt", dir_));
  ASSERT_EQ(conv.size(), 6u);
  for (int np : {1, 2, 3})
    for (int cl : {0, 1})
      for (int rank = 0; rank < np; ++rank) {
        const auto got = load_tensors(fmt::format("{}/train-conv-cl{}-np{}-rank{}.pt", dir_, cl, np, rank));
        ASSERT_EQ(got.size(), conv.size());
        for (size_t i = 0; i < conv.size(); ++i)
          EXPECT_LT((got[i] - conv[i]).abs().max().item<double>(), 1e-10) << "conv channels_last " << cl << " np " << np << " rank " << rank << " param " << i;
      }
}

// Parameters and the EMA copy are bit-identical on every rank after K steps: the hashes gathered from every
// rank agree, and the saved tensors are equal bit for bit.
TEST_F(DistMpi, ParamsAndEmaBitwiseIdenticalAcrossRanks) {
  for (int np : {2, 3}) {
    auto r = run(np, "train", 90);
    ASSERT_EQ(r.rc, 0) << r.output;
    const auto hashes = read_text(fmt::format("{}/hashes-np{}-rank0.txt", dir_, np));
    std::istringstream lines(hashes);
    std::string first, line;
    std::getline(lines, first);
    int n = 1;
    while (std::getline(lines, line)) {
      EXPECT_EQ(line, first) << "rank " << n << " differs from rank 0";
      ++n;
    }
    EXPECT_EQ(n, np);
    const auto t0 = load_tensors(fmt::format("{}/float-np{}-rank0.pt", dir_, np));
    for (int rank = 1; rank < np; ++rank) {
      const auto t = load_tensors(fmt::format("{}/float-np{}-rank{}.pt", dir_, np, rank));
      ASSERT_EQ(t.size(), t0.size());
      for (size_t i = 0; i < t.size(); ++i) {
        ASSERT_EQ(t[i].sizes(), t0[i].sizes());
        EXPECT_EQ(std::memcmp(t[i].data_ptr(), t0[i].data_ptr(), t[i].nbytes()), 0) << "tensor " << i << " rank " << rank;
      }
    }
    const auto trace = read_text(fmt::format("{}/trace-np{}-rank1.json", dir_, np));
    for (const char* name : {"\"forward\"", "\"backward\"", "\"optimizer\"", "\"ema\"", "grad bucket 0/"})
      EXPECT_NE(trace.find(name), std::string::npos) << name;
  }
}

TEST_F(DistMpi, ShapeMismatchNamesParameterAndRank) {
  auto r = run(3, "mismatch");
  ASSERT_EQ(r.rc, 0) << r.output;
  for (int k = 0; k < 3; ++k) {
    const auto msg = read_text(fmt::format("{}/mismatch-rank{}.txt", dir_, k));
    EXPECT_NE(msg.find("the model differs across ranks"), std::string::npos) << msg;
    EXPECT_NE(msg.find("rank 0: parameter '0.weight' Float [32, 8]  vs  rank 2: parameter '0.weight' Float [16, 8]"),
              std::string::npos) << msg;
    EXPECT_NE(msg.find("'4.weight'"), std::string::npos) << msg;
    EXPECT_EQ(msg.find("vs  rank 1:"), std::string::npos) << "rank 1 agrees with rank 0: " << msg;
  }
}

TEST_F(DistMpi, EmaDivergenceNamesStepAndRanks) {
  auto r = run(3, "ema");
  ASSERT_EQ(r.rc, 0) << r.output;
  for (int k = 0; k < 3; ++k) {
    const auto msg = read_text(fmt::format("{}/ema-rank{}.txt", dir_, k));
    EXPECT_NE(msg.find("'ema 0.9' differs across ranks at step 4"), std::string::npos) << msg;
    EXPECT_NE(msg.find("ranks 0, 2: "), std::string::npos) << msg;
    EXPECT_NE(msg.find("rank 1: "), std::string::npos) << msg;
    EXPECT_EQ(msg.find("'params'"), std::string::npos) << "parameters are still identical: " << msg;
  }
}

TEST_F(DistMpi, OverlapVisibleInTimeline) {
  auto r = run(2, "overlap");
  ASSERT_EQ(r.rc, 0) << r.output;
  for (int k = 0; k < 2; ++k) {
    const auto report = read_text(fmt::format("{}/overlap-rank{}.txt", dir_, k));
    EXPECT_NE(report.find("grad bucket 2/4 (1.0 MB) started"), std::string::npos) << report;
    EXPECT_NE(read_text(fmt::format("{}/overlap-rank{}.json", dir_, k)).find("\"cat\": \"comm\""), std::string::npos);
  }
}

TEST_F(DistMpi, RankThatThrowsAbortsJob) {
  auto r = run(3, "throw", 60);
  EXPECT_NE(r.rc, 0) << r.output;
  EXPECT_NE(r.rc, 124) << "the job hung until the test's timeout:\n" << r.output;
  EXPECT_NE(r.output.find("rank 2/3"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("at step 3: error: injected failure on purpose"), std::string::npos) << r.output;
  EXPECT_LT(r.seconds, 30.0);
  expect_nothing_left();
}

TEST_F(DistMpi, KilledRankEndsJob) {
  auto r = run(3, "kill", 60);
  EXPECT_NE(r.rc, 0) << r.output;
  EXPECT_NE(r.rc, 124) << "the job hung until the test's timeout:\n" << r.output;
  EXPECT_NE(r.output.find("rank 1"), std::string::npos) << r.output;
  EXPECT_LT(r.seconds, 30.0);
  expect_nothing_left();
}

TEST_F(DistMpi, WatchdogAbortsHungCollective) {
  auto r = run(2, "hang", 60, {{"CM_DIST_TIMEOUT", "2"}});
  EXPECT_NE(r.rc, 0) << r.output;
  EXPECT_NE(r.rc, 124) << "the job hung until the test's timeout:\n" << r.output;
  EXPECT_NE(r.output.find("cm: rank 0/2"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("watchdog: collective 'grad bucket"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("(entered at step 3)"), std::string::npos) << r.output;
  EXPECT_LT(r.seconds, 30.0);  // 2 s timeout, far from the 60 s the hung rank sleeps
  expect_nothing_left();
}

TEST_F(DistMpi, BenchAllreduceRunsAndVerifies) {
  auto r = cm::test::mpirun(2, cm::test::cm_binary() + " bench allreduce --params 2e6 --bucket-mb 1 --iters 2", {}, 90);
  ASSERT_EQ(r.rc, 0) << r.output;
  for (const char* s : {"flat MPI_Allreduce", "bucketed", "step, no overlap", "step, overlap", "verified"})
    EXPECT_NE(r.output.find(s), std::string::npos) << s << "\n" << r.output;
}

}  // namespace
}  // namespace cm::dist
