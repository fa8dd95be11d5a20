// Self-attention on the CPU without the L x L matrices of a whole batch (LibTorch 1.13, which has no fused
// attention kernel; 2.x uses its own, core/compat.h).
//
// Spelled out with batched matmuls, one attention block of a 32x32 ADM at 16x16 (L = 256, 4 heads) writes and
// reads B x 4 x 256 x 256 floats several times over (scores, softmax, their gradients): 8 MB per 8 images,
// more than a core's cache, and keeps the softmax for backward. Here the heads are taken a few at a time, so
// their scores (at most 512 KB) stay in cache from the product that makes them to the product that uses them;
// backward recomputes them from q and k (one more product per head) instead of keeping them, so only q, k
// and v are saved. The arithmetic is the same: softmax(q^T k / sqrt(d)) with the same operators per head.
// The blocks run at once on the intra-op threads, each block on one thread (OpenBLAS too), so the numbers do
// not depend on the thread count: one process on 2 threads samples what 2 ranks on 1 thread each do.
#pragma once
#include <torch/types.h>

namespace cm {

// Whether head_attention applies: CPU, float32 or float64, a non-empty batch (an empty one, as the FLOP
// counter of `cm model summary` runs, keeps the plain operators it counts), autocast off.
bool head_attention_applies(const torch::Tensor& q);

// q, k, v: [G, d, L] (G = images x heads, d = channels per head, L = positions). Returns [G, d, L]:
// out[g] = v[g] softmax(q[g]^T k[g] / sqrt(d))^T, differentiable in q, k and v (once).
torch::Tensor head_attention(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v);

}  // namespace cm
