// Cross-rank consistency checks: a cheap 64-bit checksum of the bytes of tensors, gathered from every rank,
// so that state that must be bit-identical everywhere (parameters after the reducer, the target network and
// the sampling EMAs, spec section 7) is verified every few steps instead of drifting silently.
//
//   ConsistencyCheck check(cfg.check_every);                         // 0 = never
//   check.maybe(step, {{"student", student_params}, {"ema 0.9999", ema_params}});
//   // or directly: check_same_on_all_ranks({{"target", target->parameters()}}, step);
//
// A mismatch throws DistError on every rank (all ranks see all checksums, so none is left waiting), naming the
// step, the tensor set and which ranks agree with which. Cost: one pass over the bytes (about memory
// bandwidth; CUDA tensors are copied to the host first) and one small all-gather.
#pragma once
#include <cstdint>
#include <string>
#include <utility>
#include <vector>
#include <torch/nn/module.h>
#include <torch/types.h>

namespace cm::dist {

// Checksum of dtype, shape and bytes of each tensor, in order (a 64-bit multiply-rotate hash, not
// cryptographic). Equal tensors give equal sums on every machine; one flipped bit changes the sum.
uint64_t tensors_checksum(const std::vector<torch::Tensor>& tensors);

using NamedTensors = std::pair<std::string, std::vector<torch::Tensor>>;
void check_same_on_all_ranks(const std::vector<NamedTensors>& sets, int64_t step);

class ConsistencyCheck {
 public:
  explicit ConsistencyCheck(int64_t every) : every_(every) {}
  // Runs the check when every > 0 and step % every == 0; returns whether it ran.
  bool maybe(int64_t step, const std::vector<NamedTensors>& sets) const;
  int64_t every() const { return every_; }

 private:
  int64_t every_;
};

}  // namespace cm::dist
