// MpiCommunicator (see mpi_communicator.h) and the backend factory Communicator::create.
#include "distributed/mpi_communicator.h"

#include <mpi.h>
#include <climits>
#include <condition_variable>
#include <deque>
#include <functional>
#include <mutex>
#include <thread>
#include <fmt/format.h>
#include "distributed/check.h"
#include "distributed/timeline.h"
#include "distributed/watchdog.h"
#include "distributed/world.h"
#if CM_WITH_NCCL
#include "distributed/nccl_communicator.h"
#endif

namespace cm::dist {

Communicator::Communicator(const World& world)
    : rank_(world.rank), size_(world.size), local_rank_(world.local_rank) {}

std::shared_ptr<Communicator> Communicator::create(const World& world, torch::Device device) {
  if (device.is_cuda()) {
#if CM_WITH_NCCL
    return std::make_shared<NcclCommunicator>(world, device);
#else
    throw DistError(fmt::format("{}: device {} needs the NCCL communicator, but this build has CM_WITH_NCCL=OFF. "
                                "Configure with a CUDA LibTorch and NCCL (cmake -DCM_WITH_NCCL=ON) or use device=cpu.",
                                rank_tag(), device.str()));
#endif
  }
  if (!device.is_cpu())
    throw DistError(fmt::format("{}: no communicator for device {} (cpu and cuda are supported)", rank_tag(), device.str()));
  return std::make_shared<MpiCommunicator>(world);
}

namespace {

// The largest element count of one MPI call is INT_MAX; bigger tensors go in chunks of 2^30 elements.
constexpr int64_t kChunk = int64_t{1} << 30;

MPI_Datatype mpi_type(torch::ScalarType t) {
  switch (t) {
    case torch::kFloat: return MPI_FLOAT;
    case torch::kDouble: return MPI_DOUBLE;
    case torch::kInt: return MPI_INT32_T;
    case torch::kLong: return MPI_INT64_T;
    case torch::kShort: return MPI_INT16_T;
    case torch::kChar: return MPI_INT8_T;
    case torch::kByte: return MPI_UINT8_T;
    default:
      throw DistError(fmt::format(
          "{}: MPI cannot reduce tensors of dtype {} (no MPI type for half / bfloat16 / bool). Keep CPU "
          "gradients in float32, or reduce on GPUs with NCCL.", rank_tag(), c10::toString(t)));
  }
}

void check_cpu(const torch::Tensor& t, const char* what) {
  if (!t.defined()) throw DistError(fmt::format("{}: MpiCommunicator::{} got an undefined tensor", rank_tag(), what));
  if (!t.device().is_cpu())
    throw DistError(fmt::format("{}: MpiCommunicator::{} got a tensor on {}; it works on CPU tensors. CUDA tensors "
                                "go through the NCCL communicator (Communicator::create picks it for CUDA devices).",
                                rank_tag(), what, t.device().str()));
}

class MpiWork final : public Work {
 public:
  void wait() override {
    std::unique_lock<std::mutex> lk(mu_);
    cv_.wait(lk, [&] { return done_; });
    if (error_) std::rethrow_exception(error_);
  }
  void complete(std::exception_ptr e) {
    {
      std::lock_guard<std::mutex> lk(mu_);
      done_ = true;
      error_ = std::move(e);
    }
    cv_.notify_all();
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  bool done_ = false;
  std::exception_ptr error_;
};

struct Task {
  std::string label;
  int64_t bytes;
  std::function<void(MPI_Comm)> run;
  std::shared_ptr<MpiWork> work;
};

}  // namespace

struct MpiCommunicator::Impl {
  MPI_Comm comm = MPI_COMM_NULL;
  int size = 1;
  std::mutex mu;
  std::condition_variable cv;
  std::deque<Task> queue;
  bool stop = false;
  Timeline* timeline = nullptr;
  std::thread thread;

  void loop() {
    bool named = false;
    for (;;) {
      Task task;
      {
        std::unique_lock<std::mutex> lk(mu);
        cv.wait(lk, [&] { return stop || !queue.empty(); });
        if (queue.empty()) return;  // stop requested and everything queued has run
        task = std::move(queue.front());
        queue.pop_front();
      }
      Timeline* tl = timeline;
      if (tl && !named) {
        tl->name_thread("comm");
        named = true;
      }
      const auto id = Watchdog::get().begin(task.label);
      const int64_t t0 = Timeline::now_us();
      std::exception_ptr err;
      try {
        auto lock = mpi_serialize();
        task.run(comm);
      } catch (...) {
        err = std::current_exception();
      }
      Watchdog::get().end(id);
      if (tl) tl->add(task.label, "comm", t0, Timeline::now_us(), fmt::format("\"bytes\": {}", task.bytes));
      task.work->complete(err);
    }
  }

  std::shared_ptr<Work> submit(std::string label, int64_t bytes, std::function<void(MPI_Comm)> run) {
    auto work = std::make_shared<MpiWork>();
    {
      std::lock_guard<std::mutex> lk(mu);
      if (stop) throw DistError(fmt::format("{}: MpiCommunicator used after shutdown ({})", rank_tag(), label));
      queue.push_back(Task{std::move(label), bytes, std::move(run), work});
    }
    cv.notify_one();
    return work;
  }
};

MpiCommunicator::MpiCommunicator(const World& world) : Communicator(world), impl_(std::make_unique<Impl>()) {
  auto lock = mpi_serialize();
  CM_MPI_CHECK(MPI_Comm_dup(MPI_COMM_WORLD, &impl_->comm));
  impl_->size = world.size;
  impl_->thread = std::thread([this] { impl_->loop(); });
}

MpiCommunicator::~MpiCommunicator() {
  {
    std::lock_guard<std::mutex> lk(impl_->mu);
    impl_->stop = true;
  }
  impl_->cv.notify_all();
  if (impl_->thread.joinable()) impl_->thread.join();
  int fin = 0;
  MPI_Finalized(&fin);
  if (!fin && impl_->comm != MPI_COMM_NULL) {
    auto lock = mpi_serialize();
    MPI_Comm_free(&impl_->comm);
  }
}

void MpiCommunicator::set_timeline(Timeline* tl) {
  std::lock_guard<std::mutex> lk(impl_->mu);
  Communicator::set_timeline(tl);
  impl_->timeline = tl;
}

std::shared_ptr<Work> MpiCommunicator::all_reduce_async(const torch::Tensor& t, ReduceOp op,
                                                        const std::string& label) {
  check_cpu(t, "all_reduce");
  const MPI_Datatype type = mpi_type(t.scalar_type());
  if (op == ReduceOp::Avg && !t.is_floating_point())
    throw DistError(fmt::format("{}: all_reduce '{}': average of integer dtype {} is not defined; use Sum",
                                rank_tag(), label, c10::toString(t.scalar_type())));
  const int size = impl_->size;
  return impl_->submit(label, static_cast<int64_t>(t.nbytes()), [t, type, op, size](MPI_Comm comm) {
    torch::NoGradGuard no_grad;
    torch::Tensor c = t.is_contiguous() ? t : t.contiguous();
    auto* base = static_cast<char*>(c.data_ptr());
    const int64_t n = c.numel(), esz = static_cast<int64_t>(c.element_size());
    for (int64_t off = 0; off < n; off += kChunk) {
      const int cnt = static_cast<int>(std::min(kChunk, n - off));
      CM_MPI_CHECK(MPI_Allreduce(MPI_IN_PLACE, base + off * esz, cnt, type, MPI_SUM, comm));
    }
    // Every rank divides the identical sum by the same number, so the average stays bitwise equal on all ranks.
    if (op == ReduceOp::Avg && size > 1) c.div_(static_cast<double>(size));
    if (!c.is_same(t)) t.copy_(c);
  });
}

void MpiCommunicator::broadcast(const torch::Tensor& t, int root, const std::string& label) {
  check_cpu(t, "broadcast");
  if (root < 0 || root >= size_)
    throw DistError(fmt::format("{}: broadcast '{}' from root {} but the world has {} ranks", rank_tag(), label, root, size_));
  impl_->submit(label, static_cast<int64_t>(t.nbytes()), [t, root](MPI_Comm comm) {
    torch::NoGradGuard no_grad;
    torch::Tensor c = t.is_contiguous() ? t : t.contiguous();
    auto* base = static_cast<char*>(c.data_ptr());
    const int64_t n = static_cast<int64_t>(c.nbytes());
    for (int64_t off = 0; off < n; off += kChunk) {
      const int cnt = static_cast<int>(std::min(kChunk, n - off));
      CM_MPI_CHECK(MPI_Bcast(base + off, cnt, MPI_BYTE, root, comm));
    }
    if (!c.is_same(t)) t.copy_(c);
  })->wait();
}

torch::Tensor MpiCommunicator::all_gather(const torch::Tensor& t, const std::string& label) {
  check_cpu(t, "all_gather");
  torch::Tensor c = t.contiguous();
  if (static_cast<int64_t>(c.nbytes()) > INT_MAX)
    throw DistError(fmt::format("{}: all_gather '{}' of {} bytes exceeds one MPI call (2 GB); gather in pieces",
                                rank_tag(), label, c.nbytes()));
  std::vector<int64_t> shape{size_};
  for (auto s : c.sizes()) shape.push_back(s);
  torch::Tensor out = torch::empty(shape, c.options());
  impl_->submit(label, static_cast<int64_t>(out.nbytes()), [c, out](MPI_Comm comm) {
    const int n = static_cast<int>(c.nbytes());
    CM_MPI_CHECK(MPI_Allgather(c.data_ptr(), n, MPI_BYTE, out.data_ptr(), n, MPI_BYTE, comm));
  })->wait();
  return out;
}

void MpiCommunicator::barrier() {
  impl_->submit("barrier", 0, [](MPI_Comm comm) { CM_MPI_CHECK(MPI_Barrier(comm)); })->wait();
}

}  // namespace cm::dist
