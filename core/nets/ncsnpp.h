// NCSN++ (and DDPM++) as NVlabs/edm's SongUNet: the CIFAR-10 network of the paper. Module structure and
// parameter names are EDM's (map_noise.freqs, enc.32x32_block0.conv0.weight, dec.32x32_aux_conv.bias, ...),
// so state dicts exported from EDM's pickles load by name.
#pragma once
#include <functional>
#include <string>
#include <vector>
#include "core/network.h"
#include "core/nets/layers.h"

namespace cm {

struct SongUNetOptions {
  int64_t img_resolution = 32;
  int64_t in_channels = 3, out_channels = 3;
  int64_t label_dim = 0;                 // classes, 0 = unconditional
  int64_t augment_dim = 0;               // EDM's augmentation labels (map_augment); unused at run time
  int64_t model_channels = 128;
  std::vector<int64_t> channel_mult = {2, 2, 2};
  int64_t channel_mult_emb = 4;
  int64_t num_blocks = 4;
  std::vector<int64_t> attn_resolutions = {16};
  double dropout = 0.10;
  double label_dropout = 0.0;
  std::string embedding_type = "fourier";  // "fourier" (NCSN++) | "positional" (DDPM++)
  int64_t channel_mult_noise = 2;
  std::string encoder_type = "residual";   // "standard" | "skip" | "residual"
  std::string decoder_type = "standard";   // "standard" | "skip"
  std::vector<double> resample_filter = {1, 3, 3, 1};
  double fourier_scale = 16.0;
};

// EDM's UNetBlock in the form SongUNet uses (adaptive_scale off, resample_proj on, skip_scale sqrt(1/2),
// eps 1e-6): norm0-SiLU-conv0(resampling), + affine(emb), norm1-SiLU-dropout-conv1, + skip, then an
// optional single-head attention (norm2, qkv in the (heads, head_dim, three) layout, proj).
struct SongBlockOptions {
  int64_t in_channels = 0, out_channels = 0, emb_channels = 0;
  bool up = false, down = false, attention = false;
  int64_t num_heads = 1;
  double dropout = 0.0, skip_scale = 1.0, eps = 1e-5;
  std::vector<double> resample_filter = {1, 1};
  bool resample_proj = false, adaptive_scale = true;
};
class SongBlockImpl : public torch::nn::Module {
 public:
  explicit SongBlockImpl(const SongBlockOptions& o);
  torch::Tensor forward(const torch::Tensor& x, const torch::Tensor& emb);
  const SongBlockOptions& options() const { return opt_; }

 private:
  SongBlockOptions opt_;
  EdmGroupNorm norm0_{nullptr}, norm1_{nullptr}, norm2_{nullptr};
  EdmConv2d conv0_{nullptr}, conv1_{nullptr}, skip_{nullptr}, qkv_{nullptr}, proj_{nullptr};
  LinearLayer affine_{nullptr};
};
TORCH_MODULE(SongBlock);

class SongUNetImpl : public NetworkImpl {
 public:
  explicit SongUNetImpl(const SongUNetOptions& o);
  // x [B, C, H, W]; noise_labels [B] (EDM's c_noise); class_labels int64 [B] or float [B, classes] for
  // conditional models, ignored otherwise.
  torch::Tensor forward(const torch::Tensor& x, const torch::Tensor& noise_labels,
                        const torch::Tensor& class_labels) override;
  const SongUNetOptions& options() const { return opt_; }
  bool draws_random_numbers() const override { return opt_.dropout > 0 || opt_.label_dropout > 0; }

 private:
  // One entry of enc / dec, in order, with what the forward pass does with it.
  enum class Kind { Conv, Block, AuxDown, AuxSkip, AuxResidual, AuxUp, AuxNorm, AuxConv };
  struct Step {
    Kind kind;
    SongBlock block{nullptr};
    std::function<torch::Tensor(const torch::Tensor&)> apply;  // for the plain layers
  };
  void add(torch::nn::ModuleDict& dict, std::vector<Step>& steps, const std::string& name, Kind kind,
           std::shared_ptr<torch::nn::Module> m, std::function<torch::Tensor(const torch::Tensor&)> f);

  SongUNetOptions opt_;
  FourierEmbedding map_noise_{nullptr};
  LinearLayer map_label_{nullptr}, map_augment_{nullptr}, map_layer0_{nullptr}, map_layer1_{nullptr};
  std::vector<Step> enc_, dec_;
};

// Config keys of the `model` table (arch = "ncsnpp"), EDM's SongUNet argument names:
//   model_channels, channel_mult, channel_mult_emb, num_blocks, attn_resolutions, dropout, label_dropout,
//   embedding_type, channel_mult_noise, encoder_type, decoder_type, resample_filter, fourier_scale,
//   augment_dim, class_cond. Defaults are the NCSN++ form (EDM's --arch=ncsnpp).
NetworkPtr build_ncsnpp(ConfigReader& cfg, const ModelShape& shape);

}  // namespace cm
