// Layers shared by the image networks: ADM's float32 GroupNorm, EDM's GroupNorm and FIR-resampling
// convolution, the two attention channel layouts, embeddings of the noise level and class labels, and
// the reference initialisations. Parameter and buffer names follow the reference modules exactly
// (weight, bias, resample_filter, freqs) so state dicts interchange.
#pragma once
#include <torch/torch.h>
#include <vector>

namespace cm {

// Shape-only construction. Under a ShapeOnlyParams guard every parameter and buffer the layers below
// create is a stride-0 view of one zero: the network has the right names and shapes but takes no memory
// and skips the random initialisation, and it runs forward on an empty batch (B = 0) at no cost. That is
// how the full-size networks are checked against the reference names in milliseconds, and how
// `cm model summary` measures FLOPs and activation sizes per image from the shapes its ops see. (The meta
// device would be the obvious tool, but LibTorch 1.13 has no meta kernels for convolution or index_select,
// and cannot move a built module there.) Such a network cannot be trained or loaded into.
class ShapeOnlyParams {
 public:
  ShapeOnlyParams();
  ~ShapeOnlyParams();
  ShapeOnlyParams(const ShapeOnlyParams&) = delete;
  ShapeOnlyParams& operator=(const ShapeOnlyParams&) = delete;

 private:
  bool previous_;
};
bool shape_only_params();
// A float32 parameter tensor of `shape` filled with `value` (a stride-0 zero under ShapeOnlyParams).
torch::Tensor new_param(at::IntArrayRef shape, double value = 0.0);

// torch.nn.Conv2d / Linear / Embedding: the same parameter names, shapes and default initialisation
// (kaiming_uniform(a=sqrt(5)) weights, i.e. U(+-1/sqrt(fan_in)), the same bound for biases; N(0, 1)
// embeddings), created with new_param so they honour ShapeOnlyParams.
class Conv2dLayerImpl : public torch::nn::Module {
 public:
  Conv2dLayerImpl(int64_t in, int64_t out, int64_t kernel, int64_t stride = 1, int64_t padding = 0, bool bias = true);
  torch::Tensor forward(const torch::Tensor& x);
  torch::Tensor weight, bias;

 private:
  int64_t stride_, padding_;
};
TORCH_MODULE(Conv2dLayer);

class LinearLayerImpl : public torch::nn::Module {
 public:
  LinearLayerImpl(int64_t in, int64_t out, bool bias = true);
  torch::Tensor forward(const torch::Tensor& x);
  torch::Tensor weight, bias;
};
TORCH_MODULE(LinearLayer);

class EmbeddingLayerImpl : public torch::nn::Module {
 public:
  EmbeddingLayerImpl(int64_t num, int64_t dim);
  torch::Tensor forward(const torch::Tensor& indices);
  torch::Tensor weight;
};
TORCH_MODULE(EmbeddingLayer);

// ADM's GroupNorm32 (cm/nn.py normalization): 32 groups, eps 1e-5, always computed in float32 and
// cast back, so it stays stable when the surrounding convolutions run in fp16.
class AdmGroupNormImpl : public torch::nn::Module {
 public:
  explicit AdmGroupNormImpl(int64_t channels, int64_t groups = 32, double eps = 1e-5);
  torch::Tensor forward(const torch::Tensor& x);
  torch::Tensor weight, bias;

 private:
  int64_t groups_;
  double eps_;
};
TORCH_MODULE(AdmGroupNorm);

// EDM's GroupNorm: min(32, channels / 4) groups (so 16 channels use 4 groups), configurable eps.
class EdmGroupNormImpl : public torch::nn::Module {
 public:
  EdmGroupNormImpl(int64_t channels, double eps, int64_t max_groups = 32, int64_t min_channels_per_group = 4);
  torch::Tensor forward(const torch::Tensor& x);
  int64_t groups() const { return groups_; }
  torch::Tensor weight, bias;

 private:
  int64_t groups_;
  double eps_;
};
TORCH_MODULE(EdmGroupNorm);

// EDM's Conv2d: an optional square convolution (kernel 0 = none) with optional 2x up/downsampling by a
// separable FIR filter (outer(f, f) / sum(f)^2, a buffer named resample_filter). Unfused: resample first,
// then convolve. Fused (used by NCSN++'s residual encoder): convolve with extra padding, then filter with
// stride 2 -- a different operation at the borders, which is why the reference keeps both.
struct EdmConv2dOptions {
  int64_t in_channels = 0, out_channels = 0, kernel = 0;
  bool bias = true, up = false, down = false, fused_resample = false;
  std::vector<double> resample_filter = {1, 1};
};
class EdmConv2dImpl : public torch::nn::Module {
 public:
  explicit EdmConv2dImpl(const EdmConv2dOptions& o);
  torch::Tensor forward(const torch::Tensor& x);
  const EdmConv2dOptions& options() const { return opt_; }
  torch::Tensor weight, bias, resample_filter;  // each may be undefined (kernel 0, no bias, no resampling)

 private:
  EdmConv2dOptions opt_;
};
TORCH_MODULE(EdmConv2d);

// Multi-head self-attention over the H*W positions of a [B, 3C, H, W] qkv map; returns [B, C, H, W].
// ADM (flash path of openai/consistency_models, what its released weights use): the 3C channels are
// (three, heads, head_dim) -- all q heads, then all k, then all v.
torch::Tensor attention_qkv_three_heads_dim(const torch::Tensor& qkv, int64_t heads);
// EDM's UNetBlock: the 3C channels are (heads, head_dim, three) -- q, k, v interleaved per channel.
torch::Tensor attention_qkv_heads_dim_three(const torch::Tensor& qkv, int64_t heads);

// EDM embeddings of the noise label. Positional: [cos, sin] of x * (1/max_positions)^(i/(half - endpoint)).
torch::Tensor edm_positional_embedding(const torch::Tensor& x, int64_t channels, bool endpoint,
                                       double max_positions = 10000.0);
// Fourier: [cos, sin] of x * 2 pi freqs, freqs a fixed random buffer ~ N(0, scale^2) named `freqs`.
class FourierEmbeddingImpl : public torch::nn::Module {
 public:
  FourierEmbeddingImpl(int64_t channels, double scale);
  torch::Tensor forward(const torch::Tensor& x);
  torch::Tensor freqs;
};
TORCH_MODULE(FourierEmbedding);

// Class labels as a float [B, num_classes] matrix: int64 indices [B] become one-hot rows; a float
// [B, num_classes] tensor (one-hot or soft labels) is used as it is. Throws naming `who` otherwise.
torch::Tensor class_labels_as_matrix(const torch::Tensor& labels, int64_t num_classes, const char* who);

// Initialisations of the references (no-ops under ShapeOnlyParams). EDM's weight_init: xavier_uniform =
// gain * sqrt(6 / (fan_in + fan_out)) * U(-1, 1).
void xavier_uniform_(torch::Tensor& w, int64_t fan_in, int64_t fan_out, double gain = 1.0);
void uniform_init_(torch::Tensor& t, double bound);
// Zero every parameter of a module (ADM's zero_module on the last conv of each block).
void zero_parameters(torch::nn::Module& m);

}  // namespace cm
