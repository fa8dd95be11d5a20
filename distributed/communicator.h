// Collectives over the ranks of a job. MpiCommunicator works on CPU tensors (contiguous, float/double/
// int64). An NCCL backend for CUDA tensors is the next step (see the issue notes); the interface is the
// one it will implement.
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <vector>
#include <torch/types.h>

namespace cm {

class Communicator {
 public:
  virtual ~Communicator() = default;
  virtual int64_t rank() const = 0;
  virtual int64_t size() const = 0;
  // In place; `average` divides by the world size after summing.
  virtual void all_reduce(torch::Tensor& t, bool average) = 0;
  virtual void broadcast(torch::Tensor& t, int64_t root) = 0;
  virtual void barrier() = 0;
  // Every rank's value of a 64-bit number, in rank order.
  virtual std::vector<uint64_t> all_gather_u64(uint64_t v) = 0;
  virtual std::string backend() const = 0;
};

// MPI when the world has more than one rank, else a no-op single-rank communicator.
std::unique_ptr<Communicator> make_communicator();

// FNV-1a over the bytes of tensors (moved to CPU): a cheap fingerprint to compare state across ranks.
uint64_t tensor_hash(const std::vector<torch::Tensor>& ts);

}  // namespace cm
