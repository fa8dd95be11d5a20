// A small residual MLP with a sinusoidal noise embedding, for the 2-D toy distributions (and, flattened,
// for small images up to 32x32: tests of the image data path and the Fashion-MNIST CPU main job).
#pragma once
#include "core/network.h"
#include <torch/torch.h>

namespace cm {

struct MlpOptions {
  int64_t dim = 2;          // data dimension
  int64_t width = 128;      // hidden width
  int64_t depth = 3;        // residual blocks
  int64_t emb_dim = 64;     // sinusoidal embedding size
  double dropout = 0.0;
};

class MlpImpl : public NetworkImpl {
 public:
  explicit MlpImpl(const MlpOptions& o);
  torch::Tensor forward(const torch::Tensor& x, const torch::Tensor& noise_labels,
                        const torch::Tensor& class_labels) override;
  const MlpOptions& options() const { return opt_; }
  bool draws_random_numbers() const override { return opt_.dropout > 0; }

 private:
  MlpOptions opt_;
  torch::nn::Linear emb1{nullptr}, emb2{nullptr}, in{nullptr}, out{nullptr};
  torch::nn::ModuleList blocks_in, blocks_emb, blocks_out;
  torch::nn::Dropout drop{nullptr};
};

// ADM-style sinusoidal embedding of a [B] tensor into [B, dim] (cos half, then sin half; max period 10000).
torch::Tensor timestep_embedding(const torch::Tensor& t, int64_t dim, double max_period = 10000.0);

NetworkPtr build_mlp(ConfigReader& cfg, const ModelShape& shape);

}  // namespace cm
