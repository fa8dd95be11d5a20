// Run directories of `cm train` in tests: checkpoint paths and steps, and comparing weight files
// (safetensors) bitwise or within a tolerance.
#pragma once
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <algorithm>
#include <cstdint>
#include <string>
#include <vector>
#include "core/io/checkpoint_dir.h"
#include "core/io/safetensors.h"

namespace cm::test {

// RUN/checkpoints/step_NNNNNNNN.
inline std::string checkpoint_path(const std::string& run_dir, int64_t step) {
  return run_dir + "/checkpoints/" + checkpoint_dir_name(step);
}

// The steps of the checkpoint directories of a run, in order.
inline std::vector<int64_t> checkpoint_steps(const std::string& run_dir) {
  std::vector<int64_t> s;
  for (auto& [step, path] : list_checkpoint_dirs(run_dir + "/checkpoints")) s.push_back(step);
  return s;
}

// Every tensor of two safetensors files is bitwise equal (same names, shapes, dtypes, bytes).
inline void expect_same_tensors(const std::string& a, const std::string& b) {
  auto fa = load_safetensors(a), fb = load_safetensors(b);
  ASSERT_EQ(fa.tensors.size(), fb.tensors.size()) << a << " vs " << b;
  for (auto& [n, t] : fa.tensors) {
    const torch::Tensor* u = fb.find(n);
    ASSERT_TRUE(u) << n << " missing in " << b;
    EXPECT_TRUE(t.scalar_type() == u->scalar_type() && t.sizes() == u->sizes() && torch::equal(t, *u))
        << n << " differs between " << a << " and " << b << " (max |diff| "
        << (t.to(torch::kFloat64) - u->to(torch::kFloat64)).abs().max().item<double>() << ")";
  }
}

// The complete training state of two checkpoints of the toy recipes (one sampling EMA, 0.995) is bitwise equal.
inline void expect_same_state(const std::string& a, const std::string& b) {
  for (const char* f : {"model.safetensors", "objective.safetensors", "ema_0.995.safetensors", "optimizer.safetensors"}) {
    SCOPED_TRACE(f);
    expect_same_tensors(a + "/" + f, b + "/" + f);
  }
}

// The largest absolute difference between the tensors of the same name in two safetensors files (a tensor
// missing in `b` is a test failure).
inline double max_tensor_diff(const std::string& a, const std::string& b) {
  auto fa = load_safetensors(a), fb = load_safetensors(b);
  EXPECT_EQ(fa.tensors.size(), fb.tensors.size()) << a << " vs " << b;
  double m = 0;
  for (auto& [n, t] : fa.tensors) {
    const torch::Tensor* u = fb.find(n);
    if (!u) {
      ADD_FAILURE() << n << " missing in " << b;
      continue;
    }
    m = std::max(m, (t - *u).abs().max().item<double>());
  }
  return m;
}

}  // namespace cm::test
