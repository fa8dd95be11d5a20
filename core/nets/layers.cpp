// Shared network layers (see layers.h).
#include "core/nets/layers.h"

#include <fmt/format.h>
#include <cmath>
#include <stdexcept>
#include "core/compat.h"
#include "core/nets/attention_cpu.h"

namespace F = torch::nn::functional;

namespace cm {

namespace {
thread_local bool g_shape_only = false;
}

ShapeOnlyParams::ShapeOnlyParams() : previous_(g_shape_only) { g_shape_only = true; }
ShapeOnlyParams::~ShapeOnlyParams() { g_shape_only = previous_; }
bool shape_only_params() { return g_shape_only; }

torch::Tensor new_param(at::IntArrayRef shape, double value) {
  if (g_shape_only) return torch::zeros({}).expand(shape);
  return torch::full(shape, value, torch::kFloat);
}

Conv2dLayerImpl::Conv2dLayerImpl(int64_t in, int64_t out, int64_t kernel, int64_t stride, int64_t padding, bool use_bias)
    : stride_(stride), padding_(padding) {
  const double bound = 1.0 / std::sqrt(static_cast<double>(in * kernel * kernel));
  weight = register_parameter("weight", new_param({out, in, kernel, kernel}));
  uniform_init_(weight, bound);
  if (use_bias) {
    bias = register_parameter("bias", new_param({out}));
    uniform_init_(bias, bound);
  }
}

torch::Tensor Conv2dLayerImpl::forward(const torch::Tensor& x) {
  return F::conv2d(x, weight, F::Conv2dFuncOptions().bias(bias).stride(stride_).padding(padding_));
}

LinearLayerImpl::LinearLayerImpl(int64_t in, int64_t out, bool use_bias) {
  const double bound = 1.0 / std::sqrt(static_cast<double>(in));
  weight = register_parameter("weight", new_param({out, in}));
  uniform_init_(weight, bound);
  if (use_bias) {
    bias = register_parameter("bias", new_param({out}));
    uniform_init_(bias, bound);
  }
}

torch::Tensor LinearLayerImpl::forward(const torch::Tensor& x) { return F::linear(x, weight, bias); }

EmbeddingLayerImpl::EmbeddingLayerImpl(int64_t num, int64_t dim) {
  weight = register_parameter("weight", new_param({num, dim}));
  if (!g_shape_only) {
    torch::NoGradGuard ng;
    weight.normal_();
  }
}

torch::Tensor EmbeddingLayerImpl::forward(const torch::Tensor& indices) { return F::embedding(indices, weight); }

AdmGroupNormImpl::AdmGroupNormImpl(int64_t channels, int64_t groups, double eps) : groups_(groups), eps_(eps) {
  if (channels % groups != 0)
    throw std::invalid_argument(fmt::format("GroupNorm32: {} channels are not divisible into {} groups", channels, groups));
  weight = register_parameter("weight", new_param({channels}, 1.0));
  bias = register_parameter("bias", new_param({channels}, 0.0));
}

torch::Tensor AdmGroupNormImpl::forward(const torch::Tensor& x) {
  auto y = torch::group_norm(x.to(torch::kFloat), groups_, weight.to(torch::kFloat), bias.to(torch::kFloat), eps_);
  return y.to(x.scalar_type());
}

EdmGroupNormImpl::EdmGroupNormImpl(int64_t channels, double eps, int64_t max_groups, int64_t min_channels_per_group)
    : groups_(std::min(max_groups, channels / min_channels_per_group)), eps_(eps) {
  if (groups_ < 1 || channels % groups_ != 0)
    throw std::invalid_argument(fmt::format("EDM GroupNorm: {} channels cannot be split into {} groups", channels, groups_));
  weight = register_parameter("weight", new_param({channels}, 1.0));
  bias = register_parameter("bias", new_param({channels}, 0.0));
}

torch::Tensor EdmGroupNormImpl::forward(const torch::Tensor& x) {
  return torch::group_norm(x, groups_, weight.to(x.scalar_type()), bias.to(x.scalar_type()), eps_);
}

EdmConv2dImpl::EdmConv2dImpl(const EdmConv2dOptions& o) : opt_(o) {
  if (o.up && o.down) throw std::invalid_argument("EdmConv2d: up and down are exclusive");
  const int64_t k = o.kernel;
  if (k) {
    weight = register_parameter("weight", new_param({o.out_channels, o.in_channels, k, k}));
    xavier_uniform_(weight, o.in_channels * k * k, o.out_channels * k * k);
    if (o.bias) bias = register_parameter("bias", new_param({o.out_channels}, 0.0));
  }
  if (o.up || o.down) {
    auto f = torch::tensor(o.resample_filter, torch::kFloat);
    f = torch::outer(f, f).unsqueeze(0).unsqueeze(1) / f.sum().square();
    resample_filter = register_buffer("resample_filter", f);
  }
}

torch::Tensor EdmConv2dImpl::forward(const torch::Tensor& input) {
  const auto dt = input.scalar_type();
  torch::Tensor x = input;
  torch::Tensor w = weight.defined() ? weight.to(dt) : torch::Tensor();
  torch::Tensor f = resample_filter.defined() ? resample_filter.to(dt) : torch::Tensor();
  const int64_t w_pad = w.defined() ? w.size(-1) / 2 : 0;
  const int64_t f_pad = f.defined() ? (f.size(-1) - 1) / 2 : 0;
  const int64_t cin = opt_.in_channels, cout = opt_.out_channels;
  if (opt_.fused_resample && opt_.up && w.defined()) {
    x = F::conv_transpose2d(x, (f * 4).repeat({cin, 1, 1, 1}),
                            F::ConvTranspose2dFuncOptions().groups(cin).stride(2).padding(std::max(f_pad - w_pad, int64_t(0))));
    x = F::conv2d(x, w, F::Conv2dFuncOptions().padding(std::max(w_pad - f_pad, int64_t(0))));
  } else if (opt_.fused_resample && opt_.down && w.defined()) {
    x = F::conv2d(x, w, F::Conv2dFuncOptions().padding(w_pad + f_pad));
    x = F::conv2d(x, f.repeat({cout, 1, 1, 1}), F::Conv2dFuncOptions().groups(cout).stride(2));
  } else {
    if (opt_.up)
      x = F::conv_transpose2d(x, (f * 4).repeat({cin, 1, 1, 1}),
                              F::ConvTranspose2dFuncOptions().groups(cin).stride(2).padding(f_pad));
    if (opt_.down)
      x = F::conv2d(x, f.repeat({cin, 1, 1, 1}), F::Conv2dFuncOptions().groups(cin).stride(2).padding(f_pad));
    if (w.defined()) x = F::conv2d(x, w, F::Conv2dFuncOptions().padding(w_pad));
  }
  // The bias is added after the resampling (as the reference does), not inside the convolution.
  if (bias.defined()) x = x + bias.to(dt).reshape({1, -1, 1, 1});
  return x;
}

// [B, heads, head_dim, L] q, k, v -> attention -> [B, heads * head_dim, L].
static torch::Tensor attend(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v) {
  if (head_attention_applies(q)) {  // LibTorch 1.13 on the CPU: a few heads at a time (attention_cpu.h)
    const int64_t b = q.size(0), heads = q.size(1), d = q.size(2), l = q.size(3);
    return head_attention(q.reshape({b * heads, d, l}), k.reshape({b * heads, d, l}), v.reshape({b * heads, d, l}))
        .reshape({b, heads * d, l});
  }
  // The attention kernels want [B, heads, L, head_dim].
  auto o = compat::scaled_dot_product_attention(q.transpose(-1, -2), k.transpose(-1, -2), v.transpose(-1, -2));
  return o.transpose(-1, -2).reshape({q.size(0), q.size(1) * q.size(2), q.size(3)});
}

torch::Tensor attention_qkv_three_heads_dim(const torch::Tensor& qkv, int64_t heads) {
  const int64_t b = qkv.size(0), c3 = qkv.size(1), c = c3 / 3;
  const int64_t l = qkv.size(2) * qkv.size(3);  // explicit sizes: -1 is ambiguous for an empty batch
  auto t = qkv.reshape({b, 3, heads, c / heads, l});
  auto out = attend(t.select(1, 0), t.select(1, 1), t.select(1, 2));
  return out.reshape({b, c, qkv.size(2), qkv.size(3)});
}

torch::Tensor attention_qkv_heads_dim_three(const torch::Tensor& qkv, int64_t heads) {
  const int64_t b = qkv.size(0), c3 = qkv.size(1), c = c3 / 3;
  const int64_t l = qkv.size(2) * qkv.size(3);
  auto t = qkv.reshape({b, heads, c / heads, 3, l});
  auto out = attend(t.select(3, 0), t.select(3, 1), t.select(3, 2));
  return out.reshape({b, c, qkv.size(2), qkv.size(3)});
}

torch::Tensor edm_positional_embedding(const torch::Tensor& x, int64_t channels, bool endpoint, double max_positions) {
  const int64_t half = channels / 2;
  auto freqs = torch::arange(half, x.options().dtype(torch::kFloat));
  freqs = freqs / static_cast<double>(half - (endpoint ? 1 : 0));
  freqs = torch::pow(1.0 / max_positions, freqs);
  auto a = torch::outer(x, freqs.to(x.scalar_type()));
  return torch::cat({a.cos(), a.sin()}, 1);
}

FourierEmbeddingImpl::FourierEmbeddingImpl(int64_t channels, double scale) {
  freqs = register_buffer("freqs", new_param({channels / 2}));
  if (!g_shape_only) {
    torch::NoGradGuard ng;
    freqs.normal_(0.0, scale);
  }
}

torch::Tensor FourierEmbeddingImpl::forward(const torch::Tensor& x) {
  // Same operation order as the reference ((2 pi) * freqs in float32), so the large arguments of cos/sin
  // round identically: with scale 16 they reach ~1e3 rad, where a different rounding shows at 1e-4.
  auto a = torch::outer(x, (freqs * (2 * M_PI)).to(x.scalar_type()));
  return torch::cat({a.cos(), a.sin()}, 1);
}

torch::Tensor class_labels_as_matrix(const torch::Tensor& labels, int64_t num_classes, const char* who) {
  if (!labels.defined())
    throw std::invalid_argument(fmt::format("{}: the model is class-conditional ({} classes) but no class labels were "
                                            "given", who, num_classes));
  if (labels.dim() == 1 && !labels.is_floating_point()) {
    auto l = labels.to(torch::kLong);
    if (l.numel() && (l.min().item<int64_t>() < 0 || l.max().item<int64_t>() >= num_classes))
      throw std::invalid_argument(fmt::format("{}: class labels must be in [0, {}), got [{}, {}]", who, num_classes,
                                              l.min().item<int64_t>(), l.max().item<int64_t>()));
    return (l.unsqueeze(1) == torch::arange(num_classes, l.options())).to(torch::kFloat);
  }
  if (labels.dim() == 2 && labels.is_floating_point() && labels.size(1) == num_classes) return labels;
  throw std::invalid_argument(fmt::format("{}: class labels must be int64 indices [B] or a float [B, {}] matrix; got "
                                          "{} [{}]", who, num_classes, c10::toString(labels.scalar_type()),
                                          fmt::join(labels.sizes(), ", ")));
}

void uniform_init_(torch::Tensor& t, double bound) {
  if (g_shape_only) return;
  torch::NoGradGuard ng;
  t.uniform_(-bound, bound);
}

void xavier_uniform_(torch::Tensor& w, int64_t fan_in, int64_t fan_out, double gain) {
  uniform_init_(w, gain * std::sqrt(6.0 / static_cast<double>(fan_in + fan_out)));
}

void zero_parameters(torch::nn::Module& m) {
  torch::NoGradGuard ng;
  if (g_shape_only) return;
  for (auto& p : m.parameters()) p.zero_();
}

}  // namespace cm
