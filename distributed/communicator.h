// Communicator: the collectives data-parallel training needs, on CPU tensors (MpiCommunicator,
// distributed/mpi_communicator.h) or CUDA tensors (NcclCommunicator, distributed/nccl_communicator.h).
//
//   auto comm = cm::dist::Communicator::create(world, world.device);   // NCCL for CUDA, MPI otherwise
//   comm->all_reduce(t, ReduceOp::Avg);                  // in place; every rank gets the same bytes
//   auto work = comm->all_reduce_async(bucket, ReduceOp::Avg, "bucket 0");  ...  work->wait();
//   comm->broadcast(t, /*root=*/0);  comm->barrier();  auto all = comm->all_gather(t);  // [W, ...t.shape]
//
// Rules shared by both backends:
//  - Every rank issues the same collectives in the same order (the GradReducer guarantees it for buckets).
//  - A tensor handed to an *_async call must not be read or written until wait() has returned.
//  - Collectives run in issue order on one communication context (a thread for MPI, a stream for NCCL);
//    each is registered with the watchdog under its label and recorded on the timeline if one is set.
//  - The communicator must be destroyed before World::finalize().
// Host-side values (shapes, names, hashes) travel through world.h's all_gather_strings / all_gather_u64.
#pragma once
#include <memory>
#include <string>
#include <torch/types.h>

namespace cm::dist {

struct World;
class Timeline;

enum class ReduceOp { Sum, Avg };

// A collective in flight.
class Work {
 public:
  virtual ~Work() = default;
  // MPI: blocks until the collective finished (and rethrows its error). NCCL: makes the current CUDA stream
  // wait for the collective (the host does not block), so later kernels on that stream see the result.
  virtual void wait() = 0;
};

class Communicator {
 public:
  // NcclCommunicator for a CUDA device (throws when built without NCCL), MpiCommunicator for the CPU.
  static std::shared_ptr<Communicator> create(const World& world, torch::Device device);
  virtual ~Communicator() = default;

  int rank() const { return rank_; }
  int size() const { return size_; }
  int local_rank() const { return local_rank_; }
  virtual std::string backend() const = 0;  // "mpi", "nccl"
  virtual torch::Device device() const = 0;

  // In-place sum or average of `t` over all ranks; `label` names it in watchdog messages and the timeline.
  virtual std::shared_ptr<Work> all_reduce_async(const torch::Tensor& t, ReduceOp op, const std::string& label) = 0;
  void all_reduce(const torch::Tensor& t, ReduceOp op = ReduceOp::Sum, const std::string& label = "all_reduce") {
    all_reduce_async(t, op, label)->wait();
  }
  // Overwrites `t` on every rank with root's `t` (same shape and dtype on all ranks).
  virtual void broadcast(const torch::Tensor& t, int root, const std::string& label = "broadcast") = 0;
  // Returns [size, ...t.shape]: row r is rank r's `t`.
  virtual torch::Tensor all_gather(const torch::Tensor& t, const std::string& label = "all_gather") = 0;
  virtual void barrier() = 0;

  // Records every collective on `tl` (may be null; must outlive the communicator or be reset).
  virtual void set_timeline(Timeline* tl) { timeline_ = tl; }

 protected:
  explicit Communicator(const World& world);
  int rank_ = 0, size_ = 1, local_rank_ = 0;
  Timeline* timeline_ = nullptr;
};

}  // namespace cm::dist
