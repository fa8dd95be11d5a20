// MpiCommunicator: collectives on CPU tensors with MPI, run in order on one communication thread.
//
// Why a thread and not MPI_Iallreduce: Open MPI's non-blocking collectives (libnbc) advance only while the
// application is inside an MPI call; the shared-memory and TCP transports have no progress thread. A bucket
// launched early in backward with MPI_Iallreduce would mostly sit idle until finish() calls MPI_Wait, so
// nothing overlaps unless the autograd hooks keep calling MPI_Test. A thread that sits in a blocking
// MPI_Allreduce drives its own progress while backward computes, and runs the very same algorithm as one
// flat MPI_Allreduce. Cost: one thread per rank and MPI_THREAD_MULTIPLE (see world.cpp).
// The thread works on its own duplicate of MPI_COMM_WORLD, so the main thread's control exchanges
// (world.h) can never be matched against a bucket's all-reduce.
#pragma once
#include <memory>
#include "distributed/communicator.h"

namespace cm::dist {

class MpiCommunicator final : public Communicator {
 public:
  explicit MpiCommunicator(const World& world);
  ~MpiCommunicator() override;  // runs what is queued, then stops the thread

  std::string backend() const override { return "mpi"; }
  torch::Device device() const override { return torch::kCPU; }
  // Float, double and integer tensors; Avg needs a floating dtype. Half / bfloat16 have no MPI type.
  std::shared_ptr<Work> all_reduce_async(const torch::Tensor& t, ReduceOp op, const std::string& label) override;
  void broadcast(const torch::Tensor& t, int root, const std::string& label = "broadcast") override;
  torch::Tensor all_gather(const torch::Tensor& t, const std::string& label = "all_gather") override;
  void barrier() override;
  void set_timeline(Timeline* tl) override;

  struct Impl;

 private:
  std::unique_ptr<Impl> impl_;
};

}  // namespace cm::dist
