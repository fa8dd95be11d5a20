// Head-blocked attention on the CPU (see attention_cpu.h).
#include "core/nets/attention_cpu.h"

#include <algorithm>
#include <cmath>
#include <torch/torch.h>
#include "core/compat.h"
#include "core/util/lanes.h"

namespace cm {

namespace {

// Heads per block: their float scores take at most 512 KB (128 Ki elements), a core's L2 or less.
int64_t heads_per_block(int64_t heads, int64_t positions) {
  return std::clamp<int64_t>(131072 / std::max<int64_t>(1, positions * positions), 1, heads);
}

// body(g0, n) for every block of heads [g0, g0 + n), each on one thread: the blocks at once on the intra-op
// threads (core/util/lanes.h), OpenBLAS at one thread, so every head's numbers are those one thread computes,
// whatever the thread count (OpenBLAS's products of this size differ in their last bits between 1 and 2
// threads; world-size independent samples need them not to). Inside a lane, where everything is on one
// thread already, the blocks run in turn.
template <class Body>
void for_each_block(int64_t heads, int64_t positions, const Body& body) {
  const int64_t block = heads_per_block(heads, positions), blocks = (heads + block - 1) / block;
  auto one = [&](int64_t b) { body(b * block, std::min(block, heads - b * block)); };
  if (at::in_parallel_region()) {
    for (int64_t b = 0; b < blocks; ++b) one(b);
    return;
  }
  SingleThreadedBlas blas;
  run_lanes(blocks, at::get_num_threads(), one);
}

// The scores' softmax of heads [g0, g0 + n): softmax(q^T k * scale) as [n, Lq, Lk], in the order of the
// spelled-out form (product, then scale, then softmax).
torch::Tensor probabilities(const torch::Tensor& q, const torch::Tensor& k, int64_t g0, int64_t n, double scale) {
  auto s = torch::bmm(q.narrow(0, g0, n).transpose(1, 2), k.narrow(0, g0, n));
  s.mul_(scale);
  return at::_softmax(s, 2, false);
}

struct HeadAttention : public torch::autograd::Function<HeadAttention> {
  static torch::Tensor forward(torch::autograd::AutogradContext* ctx, const torch::Tensor& q_in, const torch::Tensor& k_in,
                               const torch::Tensor& v_in) {
    const auto q = q_in.contiguous(), k = k_in.contiguous(), v = v_in.contiguous();
    const int64_t heads = q.size(0), positions = q.size(2);
    const double scale = 1.0 / std::sqrt(static_cast<double>(q.size(1)));
    auto out = torch::empty_like(q);
    for_each_block(heads, positions, [&](int64_t g0, int64_t n) {
      const auto p = probabilities(q, k, g0, n, scale);
      auto o = out.narrow(0, g0, n);
      at::bmm_out(o, v.narrow(0, g0, n), p.transpose(1, 2));
    });
    ctx->save_for_backward({q, k, v});
    return out;
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx, torch::autograd::variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const auto &q = saved[0], &k = saved[1], &v = saved[2];
    const auto dout = grads[0].contiguous();
    const int64_t heads = q.size(0), positions = q.size(2);
    const double scale = 1.0 / std::sqrt(static_cast<double>(q.size(1)));
    auto dq = torch::empty_like(q), dk = torch::empty_like(k), dv = torch::empty_like(v);
    for_each_block(heads, positions, [&](int64_t g0, int64_t n) {
      const auto p = probabilities(q, k, g0, n, scale);  // recomputed rather than kept
      const auto dos = dout.narrow(0, g0, n);
      auto dvs = dv.narrow(0, g0, n), dqs = dq.narrow(0, g0, n), dks = dk.narrow(0, g0, n);
      at::bmm_out(dvs, dos, p);                                             // out = v p^T: dv = dout p
      const auto dp = torch::bmm(dos.transpose(1, 2), v.narrow(0, g0, n));  // dp = dout^T v
      auto ds = at::_softmax_backward_data(dp, p, 2, p.scalar_type());
      ds.mul_(scale);
      at::bmm_out(dqs, k.narrow(0, g0, n), ds.transpose(1, 2));  // s = q^T k * scale: dq = k ds^T
      at::bmm_out(dks, q.narrow(0, g0, n), ds);                  // dk = q ds
    });
    return {dq, dk, dv};
  }
};

}  // namespace

bool head_attention_applies(const torch::Tensor& q) {
  if (compat::kFusedAttention) return false;
  return q.device().is_cpu() && (q.scalar_type() == torch::kFloat || q.scalar_type() == torch::kDouble) && q.numel() > 0 &&
         !compat::autocast_enabled(torch::kCPU);
}

torch::Tensor head_attention(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v) {
  TORCH_CHECK(q.dim() == 3 && k.sizes() == q.sizes() && v.sizes() == q.sizes(), "head_attention: q, k, v must be [G, d, L] alike");
  return HeadAttention::apply(q, k, v);
}

}  // namespace cm
