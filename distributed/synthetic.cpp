// SyntheticModel (see synthetic.h).
#include "distributed/synthetic.h"

#include <chrono>
#include <thread>
#include <torch/torch.h>

namespace cm::dist {
namespace {

// h_out = h + 0 * sum(p); backward sleeps `ms`, then hands back grad_h and a constant gradient for p.
struct SleepyLayer : torch::autograd::Function<SleepyLayer> {
  static torch::Tensor forward(torch::autograd::AutogradContext* ctx, torch::Tensor h, torch::Tensor p, double ms,
                               double value) {
    ctx->saved_data["ms"] = ms;
    ctx->saved_data["value"] = value;
    ctx->saved_data["sizes"] = p.sizes().vec();
    ctx->saved_data["dtype"] = static_cast<int64_t>(p.scalar_type());
    ctx->saved_data["device"] = p.device();
    return h.clone();
  }
  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    std::this_thread::sleep_for(std::chrono::duration<double, std::milli>(ctx->saved_data["ms"].toDouble()));
    const auto sizes = ctx->saved_data["sizes"].toIntVector();
    const auto dtype = static_cast<torch::ScalarType>(ctx->saved_data["dtype"].toInt());
    auto gp = torch::full(sizes, ctx->saved_data["value"].toDouble(),
                          torch::TensorOptions().dtype(dtype).device(ctx->saved_data["device"].toDevice()));
    return {grads[0], gp, torch::Tensor(), torch::Tensor()};
  }
};

}  // namespace

SyntheticModel::SyntheticModel(const std::vector<int64_t>& sizes, double ms, torch::ScalarType dtype,
                               torch::Device device)
    : backward_ms(ms) {
  for (auto n : sizes)
    params.push_back(torch::zeros({n}, torch::TensorOptions().dtype(dtype).device(device)).requires_grad_(true));
}

std::vector<int64_t> SyntheticModel::layer_sizes(int64_t total, int64_t layers) {
  std::vector<int64_t> sizes;
  int64_t weight_sum = 0;
  for (int64_t i = 0; i < layers; ++i) weight_sum += 1 + i % 4;
  int64_t used = 0;
  for (int64_t i = 0; i < layers; ++i) {
    const int64_t n = i + 1 == layers ? total - used : total * (1 + i % 4) / weight_sum;
    sizes.push_back(std::max<int64_t>(n, 1));
    used += n;
  }
  return sizes;
}

torch::Tensor SyntheticModel::loss() {
  int64_t total = 0;
  for (auto& p : params) total += p.numel();
  torch::Tensor h = torch::zeros({1}, torch::TensorOptions().device(params.empty() ? torch::kCPU : params[0].device()));
  for (size_t i = 0; i < params.size(); ++i) {
    const double ms = backward_ms * static_cast<double>(params[i].numel()) / static_cast<double>(std::max<int64_t>(total, 1));
    h = SleepyLayer::apply(h, params[i], ms, grad_value(i));
  }
  return h.sum();
}

}  // namespace cm::dist
