// The ADM UNet of openai/consistency_models (cm/unet.py UNetModel): the ImageNet-64 and LSUN-256
// networks of the paper. Module structure and parameter names are the reference's, so its released
// state dicts load by name (time_embed.0.weight, input_blocks.3.1.qkv.weight, ...).
#pragma once
#include <functional>
#include <set>
#include <vector>
#include "core/network.h"
#include "core/nets/layers.h"

namespace cm {

struct AdmOptions {
  int64_t image_size = 64;
  int64_t in_channels = 3;
  int64_t model_channels = 192;
  int64_t out_channels = 3;                 // 2 * in_channels with learn_sigma
  int64_t num_res_blocks = 3;
  std::set<int64_t> attention_ds;           // downsample rates (image_size / resolution) with attention
  double dropout = 0.0;
  std::vector<int64_t> channel_mult = {1, 2, 3, 4};
  bool conv_resample = true;                // learned up/downsampling convs (only without resblock_updown)
  int64_t num_classes = 0;                  // 0 = unconditional
  int64_t num_heads = 1;
  int64_t num_head_channels = -1;           // > 0 overrides num_heads: heads = channels / num_head_channels
  int64_t num_heads_upsample = -1;          // -1 = num_heads
  bool use_scale_shift_norm = false;
  bool resblock_updown = false;
};

// ResBlock: GroupNorm-SiLU-conv, embedding added (or FiLM scale/shift after the second norm), GroupNorm-
// SiLU-dropout-conv(zero init), plus a skip (identity, or 1x1 conv when channels change). With up/down
// both paths are resampled (nearest x2 / 2x2 average) between the first norm and conv.
class AdmResBlockImpl : public torch::nn::Module {
 public:
  AdmResBlockImpl(int64_t channels, int64_t emb_channels, double dropout, int64_t out_channels,
                  bool use_scale_shift_norm, bool up, bool down);
  torch::Tensor forward(const torch::Tensor& x, const torch::Tensor& emb);

 private:
  bool scale_shift_, up_, down_;
  AdmGroupNorm in_norm_{nullptr}, out_norm_{nullptr};
  Conv2dLayer in_conv_{nullptr}, out_conv_{nullptr}, skip_{nullptr};
  LinearLayer emb_linear_{nullptr};
  torch::nn::Dropout dropout_{nullptr};
};
TORCH_MODULE(AdmResBlock);

// Self-attention block: norm, 1x1 qkv conv in the flash layout (three, heads, head_dim), softmax(q k^T /
// sqrt(head_dim)) v, 1x1 proj_out (zero init), residual.
class AdmAttentionImpl : public torch::nn::Module {
 public:
  AdmAttentionImpl(int64_t channels, int64_t num_heads, int64_t num_head_channels);
  torch::Tensor forward(const torch::Tensor& x);
  int64_t heads() const { return heads_; }

 private:
  int64_t heads_;
  AdmGroupNorm norm_{nullptr};
  Conv2dLayer qkv_{nullptr}, proj_out_{nullptr};
};
TORCH_MODULE(AdmAttention);

// TimestepEmbedSequential: children named 0, 1, 2 as in the reference; each gets the embedding if it
// takes one.
class AdmStepImpl : public torch::nn::Module {
 public:
  void add(AdmResBlock b);
  void add(AdmAttention a);
  void add(const std::string& kind, std::shared_ptr<torch::nn::Module> m,
           std::function<torch::Tensor(const torch::Tensor&)> f);  // plain layers (conv, resampling)
  torch::Tensor forward(const torch::Tensor& x, const torch::Tensor& emb);

 private:
  std::vector<std::function<torch::Tensor(const torch::Tensor&, const torch::Tensor&)>> calls_;
};
TORCH_MODULE(AdmStep);

class AdmUNetImpl : public NetworkImpl {
 public:
  explicit AdmUNetImpl(const AdmOptions& o);
  // x [B, C, H, W]; noise_labels [B] (the reference's "timesteps", 1000 * 0.25 * ln(sigma) in CM);
  // class_labels int64 [B] (or float [B, classes]) for conditional models, ignored otherwise.
  torch::Tensor forward(const torch::Tensor& x, const torch::Tensor& noise_labels,
                        const torch::Tensor& class_labels) override;
  const AdmOptions& options() const { return opt_; }
  bool draws_random_numbers() const override { return opt_.dropout > 0; }

 private:
  AdmOptions opt_;
  torch::nn::Sequential time_embed_{nullptr};
  EmbeddingLayer label_emb_{nullptr};
  std::vector<AdmStep> input_blocks_, output_blocks_;
  AdmStep middle_block_{nullptr};
  torch::nn::Sequential out_{nullptr};
};

// Config keys of the `model` table (arch = "adm"); names follow the reference's create_model / UNetModel:
//   model_channels, num_res_blocks, channel_mult (default by image size as in the reference),
//   attention_resolutions (resolutions, e.g. [32, 16, 8]), num_heads, num_head_channels, num_heads_upsample,
//   use_scale_shift_norm, resblock_updown, conv_resample, dropout, learn_sigma, class_cond.
// Image size, channels and class count come from `shape`.
NetworkPtr build_adm(ConfigReader& cfg, const ModelShape& shape);

}  // namespace cm
