// Single-process tests of the distributed layer (a world of one: MPI singleton, no mpirun): batch
// semantics, device choice, checksums, bucket layout and gradient views of the reducer, no_sync
// accumulation, timelines, config binding. Multi-rank behaviour is in test_distributed_mpi.cpp.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <sstream>
#include <torch/torch.h>
#include "core/compat.h"
#include "core/config.h"
#include "distributed/check.h"
#include "distributed/communicator.h"
#include "distributed/rank_checksums.h"
#include "distributed/options.h"
#include "distributed/reducer.h"
#include "distributed/synthetic.h"
#include "distributed/timeline.h"
#include "distributed/world.h"
#include "support/batch.h"
#include "support/errors.h"
#include "support/paths.h"

namespace cm::dist {
namespace {

using test::micro_batch;
using test::per_rank_batch;

// MPI starts once per process and stops after the last test.
class MpiEnvironment : public ::testing::Environment {
 public:
  void TearDown() override { World::finalize(); }
};
const auto* const g_env = ::testing::AddGlobalTestEnvironment(new MpiEnvironment);

const World& world() {
  WorldOptions o;
  o.device = "cpu";
  o.timeout_s = 60;
  return World::init(o);
}

using test::error_of;

TEST(DistBatch, GlobalBatchSplitsAcrossRanks) {
  EXPECT_EQ(per_rank_batch(512, 4), 128);
  EXPECT_EQ(per_rank_batch(2048, 64), 32);
  EXPECT_EQ(micro_batch(512, 4, 2), 64);
  const auto msg = error_of([] { per_rank_batch(512, 3); });
  EXPECT_NE(msg.find("global batch 512 does not divide across 3 ranks"), std::string::npos) << msg;
  EXPECT_NE(msg.find("510 or 513"), std::string::npos) << msg;
  const auto msg2 = error_of([] { micro_batch(24, 2, 5); });
  EXPECT_NE(msg2.find("12 samples per rank"), std::string::npos) << msg2;
  EXPECT_NE(msg2.find("multiple of ranks x micro-batches = 10"), std::string::npos) << msg2;
  EXPECT_THROW(per_rank_batch(0, 2), DistError);
}

TEST(DistWorld, DeviceRuleUsesLocalRankAndChecksGpuCount) {
  EXPECT_EQ(pick_device("auto", false, 0, 1, 0, true, "h"), torch::Device(torch::kCPU));
  EXPECT_EQ(pick_device("cpu", true, 3, 4, 8, true, "h"), torch::Device(torch::kCPU));
  EXPECT_EQ(pick_device("auto", true, 3, 4, 8, true, "h"), torch::Device(torch::kCUDA, 3));
  EXPECT_EQ(pick_device("cuda", true, 5, 8, 8, true, "h"), torch::Device(torch::kCUDA, 5));
  // Launcher gave each rank its own GPU (different CUDA_VISIBLE_DEVICES): every rank uses its GPU 0.
  EXPECT_EQ(pick_device("cuda", true, 3, 4, 1, false, "h"), torch::Device(torch::kCUDA, 0));
  const auto few = error_of([] { pick_device("auto", true, 0, 4, 2, true, "node7"); });
  EXPECT_NE(few.find("4 ranks were started on this node but it has only 2 visible GPU(s)"), std::string::npos) << few;
  EXPECT_NE(few.find("node7"), std::string::npos) << few;
  const auto none = error_of([] { pick_device("cuda", false, 0, 1, 0, true, "h"); });
  EXPECT_NE(none.find("without CUDA"), std::string::npos) << none;
  EXPECT_THROW(pick_device("tpu", true, 0, 1, 1, true, "h"), DistError);
}

TEST(DistWorld, SingleProcessWithoutMpirun) {
  const World& w = world();
  EXPECT_EQ(w.rank, 0);
  EXPECT_EQ(w.size, 1);
  EXPECT_EQ(w.local_rank, 0);
  EXPECT_EQ(w.local_size, 1);
  EXPECT_EQ(w.nodes, 1);
  EXPECT_TRUE(w.device.is_cpu());
  EXPECT_FALSE(w.host.empty());
  EXPECT_EQ(all_gather_strings("abc"), std::vector<std::string>{"abc"});
  EXPECT_EQ(all_gather_u64(42), std::vector<uint64_t>{42});
  EXPECT_EQ(broadcast_string(std::string("a\0b", 3)), std::string("a\0b", 3));
  EXPECT_EQ(rank_tag(), "rank 0");
}

TEST(DistChecksum, SensitiveToEveryBitShapeAndDtype) {
  torch::manual_seed(0);
  auto a = torch::randn({3, 5});
  auto b = a.clone();
  EXPECT_EQ(tensors_checksum({a}), tensors_checksum({b}));
  EXPECT_EQ(tensors_checksum({a.t().contiguous().t()}), tensors_checksum({a}));  // values, not layout
  auto bits = b.view(torch::kInt);
  bits[1][2].bitwise_xor_(1);  // flip the lowest mantissa bit of one element
  EXPECT_NE(tensors_checksum({a}), tensors_checksum({b}));
  EXPECT_NE(tensors_checksum({a}), tensors_checksum({a.view({5, 3})}));
  EXPECT_NE(tensors_checksum({a}), tensors_checksum({a.view(torch::kInt)}));
  EXPECT_NE(tensors_checksum({a, b}), tensors_checksum({b, a}));
  // Tails that are not a multiple of 8 bytes count too.
  auto c = torch::zeros({3}, torch::kByte), d = c.clone();
  d[2] = 1;
  EXPECT_NE(tensors_checksum({c}), tensors_checksum({d}));
  world();
  check_same_on_all_ranks({{"a", {a}}}, 0);  // a world of one always agrees
  ConsistencyCheck every3(3);
  EXPECT_TRUE(every3.maybe(6, {{"a", {a}}}));
  EXPECT_FALSE(every3.maybe(7, {{"a", {a}}}));
  EXPECT_FALSE(ConsistencyCheck(0).maybe(0, {{"a", {a}}}));
}

TEST(DistComm, WorldOfOneCollectives) {
  auto comm = Communicator::create(world(), torch::kCPU);
  EXPECT_EQ(comm->backend(), "mpi");
  auto t = torch::arange(6, torch::kFloat);
  comm->all_reduce(t, ReduceOp::Avg);
  EXPECT_TRUE(torch::equal(t, torch::arange(6, torch::kFloat)));
  auto g = comm->all_gather(torch::ones({2, 3}));
  EXPECT_EQ(g.sizes(), (std::vector<int64_t>{1, 2, 3}));
  comm->broadcast(t, 0);
  comm->barrier();
  const auto half = error_of([&] { comm->all_reduce(torch::ones({2}, torch::kHalf)); });
  EXPECT_NE(half.find("Half"), std::string::npos) << half;
  const auto avg_int = error_of([&] { comm->all_reduce(torch::ones({2}, torch::kLong), ReduceOp::Avg); });
  EXPECT_NE(avg_int.find("average of integer"), std::string::npos) << avg_int;
  EXPECT_THROW(comm->broadcast(t, 1), DistError);
}

// The bucket layout: reverse registration order, capacity respected, each .grad a slice of its bucket.
TEST(DistReducer, BucketsInReverseOrderWithGradViews) {
  auto comm = Communicator::create(world(), torch::kCPU);
  std::vector<torch::Tensor> params;
  for (int64_t n : {100, 200, 300, 50, 1000, 10})  // floats: 400, 800, 1200, 200, 4000, 40 bytes
    params.push_back(torch::randn({n}).requires_grad_(true));
  params.push_back(torch::randn({7}));  // no grad: not bucketed
  ReducerOptions o;
  o.bucket_mb = 2000.0 / (1024 * 1024);  // 2000 bytes
  GradReducer r(comm, params, o);
  const auto b = r.buckets();
  ASSERT_EQ(b.size(), 4u);
  EXPECT_EQ(b[0].params, (std::vector<size_t>{5}));  // 1000 does not fit with 10
  EXPECT_EQ(b[1].params, (std::vector<size_t>{4}));  // larger than the capacity: alone
  EXPECT_EQ(b[2].params, (std::vector<size_t>{3, 2}));
  EXPECT_EQ(b[3].params, (std::vector<size_t>{1, 0}));
  EXPECT_EQ(b[2].numel, 350);
  for (size_t bi = 0; bi < b.size(); ++bi) {
    auto flat = r.bucket_tensor(bi);
    const char* lo = static_cast<const char*>(flat.data_ptr());
    for (size_t k : b[bi].params) {
      const auto& g = params[k].grad();
      ASSERT_TRUE(g.defined());
      const char* p = static_cast<const char*>(g.data_ptr());
      EXPECT_TRUE(p >= lo && p + g.nbytes() <= lo + flat.nbytes()) << "param " << k;
    }
  }
  EXPECT_FALSE(params[6].grad().defined());
}

// One rank: the average is the local gradient; no_sync accumulates; views survive zero_grad and are rebuilt
// when a gradient is dropped.
TEST(DistReducer, AccumulationAndGradientViews) {
  auto comm = Communicator::create(world(), torch::kCPU);
  torch::manual_seed(1);
  torch::nn::Sequential net(torch::nn::Linear(4, 8), torch::nn::Tanh(), torch::nn::Linear(8, 3));
  ReducerOptions o;
  o.bucket_mb = 64.0 / (1024 * 1024);
  auto r = GradReducer::for_module(comm, *net, o);
  ASSERT_GE(r->buckets().size(), 3u);
  auto x1 = torch::randn({5, 4}), x2 = torch::randn({5, 4});
  // Reference gradients with plain autograd.
  auto ref = net->clone();
  auto* refnet = dynamic_cast<torch::nn::SequentialImpl*>(ref.get());
  (refnet->forward(x1).pow(2).sum() + refnet->forward(x2).pow(2).sum()).backward();

  r->prepare();
  {
    auto ns = r->no_sync();
    net->forward(x1).pow(2).sum().backward();
  }
  EXPECT_EQ(r->launched_during_backward(), 0u);
  net->forward(x2).pow(2).sum().backward();
  r->finish();
  EXPECT_EQ(r->launched_during_backward(), r->buckets().size());  // every bucket went out during backward
  auto mine = net->parameters(), theirs = ref->parameters();
  for (size_t i = 0; i < mine.size(); ++i) EXPECT_TRUE(torch::allclose(mine[i].grad(), theirs[i].grad(), 1e-6, 1e-6));

  // Optimizer::zero_grad (in place) keeps the gradients inside the buckets.
  torch::optim::SGD sgd(net->parameters(), 0.1);
  const void* before = net->parameters()[0].grad().data_ptr();
  compat::zero_grad_in_place(sgd);
  EXPECT_EQ(net->parameters()[0].grad().data_ptr(), before);
  // A dropped gradient (2.x zero_grad default) is rebuilt in its bucket slice by the hook.
  net->parameters()[0].mutable_grad() = torch::Tensor();
  r->prepare();
  net->forward(x1).pow(2).sum().backward();
  r->finish();
  EXPECT_EQ(net->parameters()[0].grad().data_ptr(), before);
  auto ref2 = net->clone();
  for (auto& p : ref2->parameters()) p.mutable_grad() = torch::Tensor();
  dynamic_cast<torch::nn::SequentialImpl*>(ref2.get())->forward(x1).pow(2).sum().backward();
  for (size_t i = 0; i < mine.size(); ++i)
    EXPECT_TRUE(torch::allclose(net->parameters()[i].grad(), ref2->parameters()[i].grad(), 1e-6, 1e-6));

  // Two synchronized backwards in one step is a mistake the reducer names.
  r->prepare();
  net->forward(x1).sum().backward();
  const auto twice = error_of([&] { net->forward(x1).sum().backward(); });
  EXPECT_NE(twice.find("received its gradient twice"), std::string::npos) << twice;
  EXPECT_NE(twice.find("no_sync"), std::string::npos) << twice;
}

// An unused parameter holds its bucket until finish(), which still reduces it (zero gradient).
TEST(DistReducer, UnusedParameterIsReducedInFinish) {
  auto comm = Communicator::create(world(), torch::kCPU);
  auto used = torch::ones({4}).requires_grad_(true), unused = torch::ones({4}).requires_grad_(true);
  ReducerOptions o;
  o.bucket_mb = 16.0 / (1024 * 1024);  // one parameter per bucket
  GradReducer r(comm, {used, unused}, o);
  r.prepare();
  (used * 3).sum().backward();
  r.finish();
  EXPECT_EQ(r.launched_during_backward(), 0u);  // bucket 0 (unused) never became ready, so bucket 1 waited too
  EXPECT_TRUE(torch::equal(used.grad(), torch::full({4}, 3.0)));
  EXPECT_TRUE(torch::equal(unused.grad(), torch::zeros({4})));
}

TEST(DistReducer, SyntheticModelOverlapsBackward) {
  auto comm = Communicator::create(world(), torch::kCPU);
  SyntheticModel m({1000, 2000, 3000}, 30.0);
  ReducerOptions o;
  o.bucket_mb = 8000.0 / (1024 * 1024);
  GradReducer r(comm, m.params, o);
  ASSERT_EQ(r.buckets().size(), 3u);
  r.prepare();
  m.loss().backward();
  r.finish();
  EXPECT_EQ(r.launched_during_backward(), 3u);
  for (size_t i = 0; i < m.params.size(); ++i)
    EXPECT_TRUE(torch::equal(m.params[i].grad(), torch::full_like(m.params[i], SyntheticModel::grad_value(i))));
  r.set_overlap(false);
  r.prepare();
  m.loss().backward();
  r.finish();
  EXPECT_EQ(r.launched_during_backward(), 0u);
}

TEST(DistTimeline, WritesChromeTrace) {
  const auto dir = cm::test::make_temp_dir("cm-timeline");
  const auto path = dir + "/trace-rank0.json";
  {
    Timeline tl(path, 0);
    { auto s = tl.scope("forward"); }
    std::thread([&] {
      tl.name_thread("comm");
      tl.add("bucket \"0\"", "comm", 10, 30, "\"bytes\": 4");
    }).join();
    EXPECT_EQ(tl.events(), 2u);
    Timeline off;
    { auto s = off.scope("nothing"); }
    EXPECT_EQ(off.events(), 0u);
  }
  std::ifstream f(path);
  std::stringstream ss;
  ss << f.rdbuf();
  const std::string text = ss.str();
  EXPECT_EQ(text.rfind("{\"traceEvents\": [", 0), 0u);
  EXPECT_NE(text.find("\"name\": \"forward\", \"cat\": \"step\", \"ph\": \"X\""), std::string::npos) << text;
  EXPECT_NE(text.find("\"name\": \"bucket \\\"0\\\"\""), std::string::npos) << text;
  EXPECT_NE(text.find("\"ts\": 10, \"dur\": 20"), std::string::npos) << text;
  EXPECT_NE(text.find("\"args\": {\"name\": \"comm\"}"), std::string::npos) << text;
  EXPECT_NE(text.find("\"args\": {\"name\": \"rank 0\"}"), std::string::npos) << text;
  std::filesystem::remove_all(dir);
}

TEST(DistOptions, BindsDistSection) {
  auto cfg = Config::parse("[dist]\nbucket_mb = 4\noverlap = false\ntrace_dir = \"/tmp/t\"\n");
  ConfigReader r(cfg, "dist");
  const auto o = read_dist_options(r);
  r.finish();
  EXPECT_DOUBLE_EQ(o.bucket_mb, 4.0);
  EXPECT_DOUBLE_EQ(o.reducer().bucket_mb, 4.0);
  EXPECT_FALSE(o.reducer().overlap);
  EXPECT_EQ(o.trace_path(3), "/tmp/t/trace-rank3.json");
  EXPECT_EQ(DistOptions().trace_path(0), "");
  // The watchdog timeout and the check interval are train.watchdog_s / train.check_every, not dist keys.
  auto moved = Config::parse("[dist]\ntimeout_s = 30.0\n");
  ConfigReader rm(moved, "dist");
  read_dist_options(rm);
  EXPECT_THROW(rm.finish(), ConfigError);
  auto bad = Config::parse("[dist]\nbucket_mb = -1\n");
  ConfigReader rb(bad, "dist");
  const auto msg = error_of([&] { read_dist_options(rb); });
  EXPECT_NE(msg.find("dist.bucket_mb"), std::string::npos) << msg;
  auto typo = Config::parse("[dist]\nbucket_mbb = 2\n");
  ConfigReader rt(typo, "dist");
  read_dist_options(rt);
  EXPECT_THROW(rt.finish(), ConfigError);
}

}  // namespace
}  // namespace cm::dist
