// NcclCommunicator: collectives on CUDA tensors with NCCL, one communicator per rank on the rank's GPU.
// Built only with CM_WITH_NCCL (a CUDA LibTorch and NCCL); on CPU machines with the CUDA headers the build
// still compiles (never links) nccl_communicator.cpp, see cmake/CudaCheck.cmake.
//
// Set-up: rank 0 makes the ncclUniqueId and sends it to all ranks with MPI_Bcast (world.h's control
// communicator); then ncclCommInitRank. Every NCCL and CUDA call is checked (file, line, rank, NCCL's
// last error text); on a NCCL error, and when the job aborts (watchdog, run_guarded), the communicator is
// torn down with ncclCommAbort so that no kernel keeps spinning on a dead peer.
//
// Streams (Note [stream order]): collectives run on a dedicated high-priority NCCL stream, not the compute
// stream, so that a bucket's all-reduce runs while the compute stream carries on with backward.
//  1. Before a collective, the NCCL stream waits on an event recorded on the caller's current (compute)
//     stream: the kernels that wrote the tensor (backward, zeroing) may still be queued there. An event
//     orders the two streams on the GPU; the host never blocks (a cudaStreamSynchronize here would stall
//     backward on every bucket).
//  2. The tensor's memory is marked as used on the NCCL stream (CUDACachingAllocator::recordStream), so the
//     caching allocator does not hand it to another tensor before the collective is done with it.
//  3. Work::wait() makes the caller's current stream wait on an event recorded after the collective; the
//     optimizer's kernels queued afterwards read the reduced values. The host still does not block.
// The watchdog polls that completion event (cudaEventQuery) and the communicator's asynchronous error
// state (ncclCommGetAsyncError), so a hung peer or a failed collective aborts the job with its label.
#pragma once
#include <memory>
#include "distributed/communicator.h"

namespace cm::dist {

class NcclCommunicator final : public Communicator {
 public:
  NcclCommunicator(const World& world, torch::Device device);
  ~NcclCommunicator() override;

  std::string backend() const override { return "nccl"; }
  torch::Device device() const override;
  // float32/64, float16, bfloat16 and integer tensors on this communicator's device.
  std::shared_ptr<Work> all_reduce_async(const torch::Tensor& t, ReduceOp op, const std::string& label) override;
  void broadcast(const torch::Tensor& t, int root, const std::string& label = "broadcast") override;
  torch::Tensor all_gather(const torch::Tensor& t, const std::string& label = "all_gather") override;
  // Blocks the host until every rank reached the barrier (a one-element all-reduce, then a stream sync).
  void barrier() override;
  void set_timeline(Timeline* tl) override;

  struct Impl;

 private:
  std::shared_ptr<Impl> impl_;
};

}  // namespace cm::dist
