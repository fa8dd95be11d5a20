// LibTorch version differences (Debian's 1.13 CPU build vs CUDA LibTorch 2.x), kept in this one place.
#pragma once
#include <torch/torch.h>
#include <torch/version.h>
#include <ATen/autocast_mode.h>
#include <torch/csrc/autograd/function.h>
#include <torch/csrc/autograd/function_hook.h>
#include <torch/csrc/autograd/variable.h>
#include <functional>
#include <memory>

#define CM_TORCH_AT_LEAST(major, minor) \
  (TORCH_VERSION_MAJOR > (major) || (TORCH_VERSION_MAJOR == (major) && TORCH_VERSION_MINOR >= (minor)))

namespace cm::compat {

// softmax(q k^T / sqrt(d)) v over the last two dims of [B, heads, L, d] tensors. LibTorch 2.x has a fused
// kernel (flash / memory-efficient on CUDA, flash on the CPU); 1.13 does not, so we spell it out there (and
// on its CPU float32 path core/nets/attention_cpu.h takes over).
inline constexpr bool kFusedAttention = CM_TORCH_AT_LEAST(2, 0);
inline torch::Tensor scaled_dot_product_attention(const torch::Tensor& q, const torch::Tensor& k,
                                                  const torch::Tensor& v) {
#if CM_TORCH_AT_LEAST(2, 0)
  return at::scaled_dot_product_attention(q, k, v);
#else
  const double scale = 1.0 / std::sqrt(static_cast<double>(q.size(-1)));
  auto w = torch::matmul(q, k.transpose(-2, -1)).mul_(scale);
  return torch::matmul(torch::softmax(w.to(torch::kFloat), -1).to(q.scalar_type()), v);
#endif
}

// ---- Autocast (core/precision.h) ----
// 2.4 took the device type as an argument (set_autocast_enabled(device, on)); 1.13 has one function per
// device (set_enabled for CUDA, set_cpu_enabled for CPU). Only CPU and CUDA are used here.
inline bool autocast_enabled(torch::DeviceType d) {
#if CM_TORCH_AT_LEAST(2, 4)
  return at::autocast::is_autocast_enabled(d);
#else
  return d == torch::kCUDA ? at::autocast::is_enabled() : at::autocast::is_cpu_enabled();
#endif
}
inline torch::ScalarType autocast_dtype(torch::DeviceType d) {
#if CM_TORCH_AT_LEAST(2, 4)
  return at::autocast::get_autocast_dtype(d);
#else
  return d == torch::kCUDA ? at::autocast::get_autocast_gpu_dtype() : at::autocast::get_autocast_cpu_dtype();
#endif
}
inline void set_autocast(torch::DeviceType d, bool on, torch::ScalarType dtype) {
#if CM_TORCH_AT_LEAST(2, 4)
  at::autocast::set_autocast_enabled(d, on);
  at::autocast::set_autocast_dtype(d, dtype);
#else
  if (d == torch::kCUDA) {
    at::autocast::set_enabled(on);
    at::autocast::set_autocast_gpu_dtype(dtype);
  } else {
    at::autocast::set_cpu_enabled(on);
    at::autocast::set_autocast_cpu_dtype(dtype);
  }
#endif
}

// Whether this LibTorch was built with CUDA and a device is present.
inline bool cuda_available() { return torch::cuda::is_available(); }

// ---- Gradient-ready hooks (used by distributed/reducer.h) ----
// Calls `fn` each time autograd has accumulated a gradient into `param.grad()`: a post hook on the
// parameter's AccumulateGrad node, which runs after the accumulation, so the gradient is complete.
//  - 1.13 and 2.x: Node::add_post_hook / del_post_hook and FunctionPostHook::operator()(outputs, inputs)
//    are the same. 2.x adds FunctionPostHook::compiled_args (only compiled autograd calls it; its default
//    throws there, and C++ training does not use compiled autograd). 2.1+ also has a "post accumulate grad"
//    hook slot on the tensor, but it holds a single, Python-oriented hook; the AccumulateGrad post hook
//    works in every version and is what PyTorch's own DDP reducer uses.
//  - A leaf tensor keeps only a weak_ptr to its AccumulateGrad node: the caller must hold the returned node,
//    otherwise a later forward builds a fresh node without the hook.
// `key` receives the id for remove_grad_ready_hook.
struct GradReadyHook final : torch::autograd::FunctionPostHook {
  explicit GradReadyHook(std::function<void()> f) : fn(std::move(f)) {}
  torch::autograd::variable_list operator()(const torch::autograd::variable_list& outputs,
                                            const torch::autograd::variable_list& /*inputs*/) override {
    fn();
    return outputs;
  }
  std::function<void()> fn;
};

inline std::shared_ptr<torch::autograd::Node> add_grad_ready_hook(const torch::Tensor& param,
                                                                 std::function<void()> fn, uintptr_t* key) {
  auto acc = torch::autograd::impl::grad_accumulator(param);
  TORCH_CHECK(acc, "add_grad_ready_hook: tensor is not a leaf that requires grad");
  *key = acc->add_post_hook(std::make_unique<GradReadyHook>(std::move(fn)));
  return acc;
}

inline void remove_grad_ready_hook(const std::shared_ptr<torch::autograd::Node>& acc, uintptr_t key) {
  if (acc) acc->del_post_hook(key);
}

// Optimizer::zero_grad: 1.13 zeroes the gradients in place; 2.x defaults to set_to_none = true, which drops
// them (and with them the bucket views of distributed/reducer.h, which GradReducer then has to rebuild with a
// copy). This keeps the 1.13 behaviour on both.
inline void zero_grad_in_place(torch::optim::Optimizer& opt) {
#if CM_TORCH_AT_LEAST(2, 0)
  opt.zero_grad(/*set_to_none=*/false);
#else
  opt.zero_grad();
#endif
}

}  // namespace cm::compat
