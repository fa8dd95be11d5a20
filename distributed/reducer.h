// Gradient averaging across ranks: parameters packed into persistent flat buckets (default ~25 MB, in
// reverse registration order: the last layers' gradients are ready first in backward), each parameter's
// .grad a view into its bucket so a bucket is reduced in place with one collective. Buckets are reduced
// in the same fixed order on every rank after backward.
// Not yet: launching each bucket from autograd hooks as soon as it is complete, to overlap the reduction
// with the rest of backward (see the issue notes).
#pragma once
#include <vector>
#include <torch/types.h>
#include "distributed/communicator.h"

namespace cm {

class GradReducer {
 public:
  GradReducer(Communicator& comm, std::vector<torch::Tensor> params, int64_t bucket_bytes = 25ll << 20);
  // Broadcast parameters from rank 0 and check that every rank has the same shapes (the error names the
  // first parameter whose shape differs and the ranks).
  void sync_parameters(const std::vector<std::string>& names);
  // Average the gradients of all ranks (call after the last micro-batch's backward).
  void all_reduce_gradients();
  size_t bucket_count() const { return buckets_.size(); }

 private:
  void bind_grads();  // (re)points every .grad at its bucket slice
  Communicator& comm_;
  std::vector<torch::Tensor> params_;
  struct Bucket {
    torch::Tensor flat;
    std::vector<size_t> members;  // indices into params_
    std::vector<int64_t> offsets;
  };
  std::vector<Bucket> buckets_;
};

}  // namespace cm
