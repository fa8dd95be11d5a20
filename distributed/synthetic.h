// A synthetic model for measuring gradient communication (`cm bench allreduce`, the overlap tests): parameter
// tensors of chosen sizes, chained so that backward reaches them last-to-first like a real network, and
// spending a known time before producing each gradient (proportional to its size). The time is slept, not
// computed: it stands for a GPU backward during which the host and the communication thread are free, and it
// keeps the measurement independent of how many cores the ranks share.
//
//   SyntheticModel m({4'000'000, 1'000'000, ...}, /*backward_ms=*/200);
//   GradReducer r(comm, m.params);  r.prepare();  m.loss().backward();  r.finish();
//   // every gradient element of parameter i equals m.grad_value(i) on every rank
#pragma once
#include <cstdint>
#include <vector>
#include <torch/types.h>

namespace cm::dist {

struct SyntheticModel {
  SyntheticModel(const std::vector<int64_t>& sizes, double backward_ms, torch::ScalarType dtype = torch::kFloat,
                 torch::Device device = torch::kCPU);
  // Sizes summing to `total` over `layers` tensors of uneven size (like a network's layers: 1, 2, 3, 4 parts
  // repeating), for benchmarks.
  static std::vector<int64_t> layer_sizes(int64_t total, int64_t layers);

  // Cheap forward; its backward sleeps backward_ms in all and fills parameter i's gradient with grad_value(i).
  torch::Tensor loss();
  static double grad_value(size_t i) { return 1.0 + static_cast<double>(i % 7); }

  std::vector<torch::Tensor> params;
  double backward_ms;
};

}  // namespace cm::dist
