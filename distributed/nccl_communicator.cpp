// NcclCommunicator (see nccl_communicator.h for the stream order). The only file that includes the CUDA
// runtime and NCCL headers, so it also holds their checking macros.
#include "distributed/nccl_communicator.h"

#include <ATen/cuda/CUDAEvent.h>
#include <c10/cuda/CUDACachingAllocator.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_runtime_api.h>
#include <mpi.h>
#include <nccl.h>
#include <atomic>
#include <cstring>
#include <optional>
#include <fmt/format.h>
#include "distributed/check.h"
#include "distributed/guard.h"
#include "distributed/timeline.h"
#include "distributed/watchdog.h"
#include "distributed/world.h"

#if NCCL_VERSION_CODE < NCCL_VERSION(2, 13, 0)
#error "NcclCommunicator needs NCCL >= 2.13 (ncclAvg, ncclGetLastError)"
#endif

namespace cm::dist {
namespace {

[[noreturn]] void throw_cuda_error(cudaError_t e, const char* call, const char* file, int line) {
  throw DistError(fmt::format("{}: {} failed at {}:{}: {} ({}).\nHINT: a kernel fault earlier in the step is "
                              "reported by the next CUDA call; run with CUDA_LAUNCH_BLOCKING=1 to find it.",
                              rank_tag(), call, file, line, cudaGetErrorString(e), cudaGetErrorName(e)));
}

}  // namespace

#define CM_CUDA_CHECK(call)                                                               \
  do {                                                                                    \
    const cudaError_t cm_cuda_rc_ = (call);                                               \
    if (cm_cuda_rc_ != cudaSuccess) throw_cuda_error(cm_cuda_rc_, #call, __FILE__, __LINE__); \
  } while (0)

// `impl` may be null (calls made before the communicator exists); otherwise the communicator is aborted.
#define CM_NCCL_CHECK(call, impl)                                                          \
  do {                                                                                     \
    const ncclResult_t cm_nccl_rc_ = (call);                                               \
    if (cm_nccl_rc_ != ncclSuccess) nccl_fail(cm_nccl_rc_, #call, __FILE__, __LINE__, impl); \
  } while (0)

struct NcclCommunicator::Impl {
  ncclComm_t comm = nullptr;
  torch::Device device = torch::kCPU;
  std::optional<c10::cuda::CUDAStream> stream;  // the dedicated NCCL stream
  std::atomic<bool> aborted{false};
  int abort_hook = 0;
  Timeline* timeline = nullptr;

  // ncclCommAbort: NCCL's way to stop a communicator whose peers may be gone; safe from any thread.
  void abort() {
    if (comm && !aborted.exchange(true)) ncclCommAbort(comm);
  }
};

namespace {

[[noreturn]] void nccl_fail(ncclResult_t r, const char* call, const char* file, int line,
                            NcclCommunicator::Impl* impl) {
  std::string detail;
  if (impl && impl->comm) {
    const char* last = ncclGetLastError(impl->comm);
    if (last && *last) detail = fmt::format(" Last NCCL error: {}.", last);
    impl->abort();
  }
  throw DistError(fmt::format(
      "{}: {} failed at {}:{}: {}.{}\nHINT: run with NCCL_DEBUG=WARN (or INFO) for NCCL's own diagnosis; "
      "'unhandled system error' usually means a network or shared-memory problem, 'remote process exited' a "
      "peer that died (look for its message).",
      rank_tag(), call, file, line, ncclGetErrorString(r), detail));
}

ncclDataType_t nccl_type(torch::ScalarType t) {
  switch (t) {
    case torch::kFloat: return ncclFloat32;
    case torch::kDouble: return ncclFloat64;
    case torch::kHalf: return ncclFloat16;
    case torch::kBFloat16: return ncclBfloat16;
    case torch::kInt: return ncclInt32;
    case torch::kLong: return ncclInt64;
    case torch::kByte: return ncclUint8;
    case torch::kChar: return ncclInt8;
    default:
      throw DistError(fmt::format("{}: NCCL cannot reduce tensors of dtype {}", rank_tag(), c10::toString(t)));
  }
}

class NcclWork final : public Work {
 public:
  NcclWork(std::shared_ptr<at::cuda::CUDAEvent> done, torch::Device device) : done_(std::move(done)), device_(device) {}
  // Note [stream order] 3: the caller's stream waits for the collective on the GPU; the host goes on.
  void wait() override {
    c10::cuda::CUDAGuard guard(device_);
    done_->block(c10::cuda::getCurrentCUDAStream(device_.index()));
  }

 private:
  std::shared_ptr<at::cuda::CUDAEvent> done_;
  torch::Device device_;
};

}  // namespace

NcclCommunicator::NcclCommunicator(const World& world, torch::Device device)
    : Communicator(world), impl_(std::make_shared<Impl>()) {
  if (!device.is_cuda() || !device.has_index())
    throw DistError(fmt::format("{}: NcclCommunicator needs a CUDA device with an index (got {})", rank_tag(), device.str()));
  int count = 0;
  CM_CUDA_CHECK(cudaGetDeviceCount(&count));
  if (device.index() >= count)
    throw DistError(fmt::format("{} on {}: device {} does not exist; this process sees {} GPU(s)", rank_tag(),
                                world.host, device.str(), count));
  impl_->device = device;
  c10::cuda::CUDAGuard guard(device);

  ncclUniqueId id;
  std::memset(&id, 0, sizeof(id));
  if (world.rank == 0) CM_NCCL_CHECK(ncclGetUniqueId(&id), nullptr);
  const std::string bytes =
      broadcast_string(world.rank == 0 ? std::string(reinterpret_cast<const char*>(&id), sizeof(id)) : std::string());
  if (bytes.size() != sizeof(id))
    throw DistError(fmt::format("{}: received a NCCL unique id of {} bytes, expected {}", rank_tag(), bytes.size(), sizeof(id)));
  std::memcpy(&id, bytes.data(), sizeof(id));

  const auto wd = Watchdog::get().begin("ncclCommInitRank");
  CM_NCCL_CHECK(ncclCommInitRank(&impl_->comm, world.size, id, world.rank), nullptr);
  Watchdog::get().end(wd);
  impl_->stream = c10::cuda::getStreamFromPool(/*isHighPriority=*/true, device.index());
  std::weak_ptr<Impl> weak = impl_;
  impl_->abort_hook = add_abort_hook([weak] {
    if (auto i = weak.lock()) i->abort();
  });
}

NcclCommunicator::~NcclCommunicator() {
  remove_abort_hook(impl_->abort_hook);
  if (impl_->comm && !impl_->aborted.load()) {
    const ncclResult_t r = ncclCommDestroy(impl_->comm);
    if (r != ncclSuccess)
      std::fprintf(stderr, "cm: %s: ncclCommDestroy failed: %s\n", rank_tag().c_str(), ncclGetErrorString(r));
  }
}

torch::Device NcclCommunicator::device() const { return impl_->device; }

void NcclCommunicator::set_timeline(Timeline* tl) {
  Communicator::set_timeline(tl);
  impl_->timeline = tl;
}

namespace {

void check_tensor(const torch::Tensor& t, const torch::Device& dev, const char* what, const std::string& label) {
  if (!t.defined()) throw DistError(fmt::format("{}: NcclCommunicator::{} '{}' got an undefined tensor", rank_tag(), what, label));
  if (t.device() != dev)
    throw DistError(fmt::format("{}: NcclCommunicator::{} '{}' got a tensor on {}, expected {} (this rank's GPU)",
                                rank_tag(), what, label, t.device().str(), dev.str()));
}

// Runs `launch(stream)` on the NCCL stream, ordered after the caller's current stream, and returns the Work
// whose wait() orders the caller's stream after it. `tensors` are marked as in use on the NCCL stream.
template <typename Launch>
std::shared_ptr<Work> enqueue(NcclCommunicator::Impl& impl, const std::string& label, int64_t bytes,
                              std::initializer_list<torch::Tensor> tensors, Launch&& launch) {
  if (impl.aborted.load())
    throw DistError(fmt::format("{}: NCCL communicator was aborted after an earlier error; '{}' cannot run",
                                rank_tag(), label));
  c10::cuda::CUDAGuard guard(impl.device);
  const int64_t t0 = Timeline::now_us();
  c10::cuda::CUDAStream compute = c10::cuda::getCurrentCUDAStream(impl.device.index());
  c10::cuda::CUDAStream& nccl = *impl.stream;
  at::cuda::CUDAEvent ready;  // Note [stream order] 1
  ready.record(compute);
  ready.block(nccl);
  for (const auto& t : tensors)  // Note [stream order] 2
    c10::cuda::CUDACachingAllocator::recordStream(t.storage().data_ptr(), nccl);
  launch(nccl.stream());
  auto done = std::make_shared<at::cuda::CUDAEvent>();
  done->record(nccl);
  // The watchdog retires the entry when the event has fired, and turns an asynchronous NCCL error into an abort.
  ncclComm_t comm = impl.comm;
  Watchdog::get().begin(label, [done, comm, label] {
    ncclResult_t async = ncclSuccess;
    if (ncclCommGetAsyncError(comm, &async) == ncclSuccess && async != ncclSuccess && async != ncclInProgress)
      throw DistError(fmt::format("{}: NCCL reported '{}' during '{}'", rank_tag(), ncclGetErrorString(async), label));
    return done->query();
  });
  if (impl.timeline)  // host-side enqueue time; the GPU time shows in Nsight Systems
    impl.timeline->add(label, "comm", t0, Timeline::now_us(), fmt::format("\"bytes\": {}", bytes));
  return std::make_shared<NcclWork>(std::move(done), impl.device);
}

}  // namespace

std::shared_ptr<Work> NcclCommunicator::all_reduce_async(const torch::Tensor& t, ReduceOp op, const std::string& label) {
  check_tensor(t, impl_->device, "all_reduce", label);
  if (!t.is_contiguous())
    throw DistError(fmt::format("{}: all_reduce '{}' needs a contiguous tensor", rank_tag(), label));
  const ncclDataType_t type = nccl_type(t.scalar_type());
  if (op == ReduceOp::Avg && !t.is_floating_point())
    throw DistError(fmt::format("{}: all_reduce '{}': average of integer dtype {} is not defined; use Sum",
                                rank_tag(), label, c10::toString(t.scalar_type())));
  // ncclAvg divides on the GPU inside the collective; the result is the same bytes on every rank.
  const ncclRedOp_t nop = op == ReduceOp::Avg ? ncclAvg : ncclSum;
  Impl* impl = impl_.get();
  return enqueue(*impl_, label, static_cast<int64_t>(t.nbytes()), {t}, [&](cudaStream_t s) {
    CM_NCCL_CHECK(ncclAllReduce(t.data_ptr(), t.data_ptr(), static_cast<size_t>(t.numel()), type, nop, impl->comm, s), impl);
  });
}

void NcclCommunicator::broadcast(const torch::Tensor& t, int root, const std::string& label) {
  check_tensor(t, impl_->device, "broadcast", label);
  if (root < 0 || root >= size_)
    throw DistError(fmt::format("{}: broadcast '{}' from root {} but the world has {} ranks", rank_tag(), label, root, size_));
  torch::NoGradGuard no_grad;
  c10::cuda::CUDAGuard guard(impl_->device);
  torch::Tensor c = t.is_contiguous() ? t : t.contiguous();
  Impl* impl = impl_.get();
  enqueue(*impl_, label, static_cast<int64_t>(c.nbytes()), {c}, [&](cudaStream_t s) {
    CM_NCCL_CHECK(ncclBroadcast(c.data_ptr(), c.data_ptr(), c.nbytes(), ncclUint8, root, impl->comm, s), impl);
  })->wait();
  if (!c.is_same(t)) t.copy_(c);  // on the current stream, after wait()
}

torch::Tensor NcclCommunicator::all_gather(const torch::Tensor& t, const std::string& label) {
  check_tensor(t, impl_->device, "all_gather", label);
  c10::cuda::CUDAGuard guard(impl_->device);
  torch::Tensor c = t.contiguous();
  std::vector<int64_t> shape{size_};
  for (auto s : c.sizes()) shape.push_back(s);
  torch::Tensor out = torch::empty(shape, c.options());
  Impl* impl = impl_.get();
  enqueue(*impl_, label, static_cast<int64_t>(out.nbytes()), {c, out}, [&](cudaStream_t s) {
    CM_NCCL_CHECK(ncclAllGather(c.data_ptr(), out.data_ptr(), c.nbytes(), ncclUint8, impl->comm, s), impl);
  })->wait();
  return out;
}

void NcclCommunicator::barrier() {
  c10::cuda::CUDAGuard guard(impl_->device);
  torch::Tensor one = torch::ones({1}, torch::TensorOptions().dtype(torch::kInt).device(impl_->device));
  all_reduce_async(one, ReduceOp::Sum, "barrier")->wait();
  const auto id = Watchdog::get().begin("barrier (stream sync)");
  CM_CUDA_CHECK(cudaStreamSynchronize(impl_->stream->stream()));
  Watchdog::get().end(id);
}

}  // namespace cm::dist
