// LibTorch version differences (Debian's 1.13 CPU build vs CUDA LibTorch 2.x), kept in this one place.
#pragma once
#include <torch/torch.h>
#include <torch/version.h>

#define CM_TORCH_AT_LEAST(major, minor) \
  (TORCH_VERSION_MAJOR > (major) || (TORCH_VERSION_MAJOR == (major) && TORCH_VERSION_MINOR >= (minor)))

namespace cm::compat {

// softmax(q k^T / sqrt(d)) v over the last two dims of [B, heads, L, d] tensors. LibTorch 2.x has a fused
// kernel (flash / memory-efficient on CUDA); 1.13 does not, so we spell it out there.
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

// Whether this LibTorch was built with CUDA and a device is present.
inline bool cuda_available() { return torch::cuda::is_available(); }

}  // namespace cm::compat
