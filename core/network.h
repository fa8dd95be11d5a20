// The network interface every architecture implements (MLP, ADM UNet, NCSN++), and the model factory.
#pragma once
#include <functional>
#include <memory>
#include <string>
#include <torch/nn/module.h>

namespace cm {

class ConfigReader;

// F(x, noise_labels[, class_labels]) -> tensor shaped like x. The network is the raw function: the
// consistency / EDM preconditioning (c_skip, c_out, c_in, c_noise) lives in core/parameterization.h.
// class_labels is an undefined tensor for unconditional models.
struct NetworkImpl : torch::nn::Module {
  virtual torch::Tensor forward(const torch::Tensor& x, const torch::Tensor& noise_labels,
                                const torch::Tensor& class_labels) = 0;
  // Whether forward() in training mode draws random numbers (dropout, label dropout): those come from the
  // device's default generator, so such passes cannot run concurrently (train.lanes). An architecture
  // that does not say is taken to draw.
  virtual bool draws_random_numbers() const { return true; }
  ~NetworkImpl() override = default;
};
using NetworkPtr = std::shared_ptr<NetworkImpl>;

// How an architecture is built from the `model` config section. The table of architectures is in
// core/networks.cpp (explicit, so static linking cannot drop one); a builder validates and consumes
// the keys it reads.
struct ModelShape {
  int64_t channels = 3;     // data channels (2 for 2-D toys, seen as [B, 2])
  int64_t resolution = 0;   // image side, 0 for vector data
  int64_t num_classes = 0;  // 0 = unconditional
};
using NetworkBuilder = std::function<NetworkPtr(ConfigReader& model_cfg, const ModelShape& shape)>;

std::vector<std::string> registered_networks();
// Reads `arch` from model_cfg and builds that architecture; unknown arch names the registered ones.
NetworkPtr make_network(ConfigReader& model_cfg, const ModelShape& shape);

int64_t count_parameters(torch::nn::Module& m);

// train.channels_last: every 4-D parameter and buffer of `m` (convolution weights) in channels-last layout
// (NHWC strides, the same values), so the convolutions fed by them run NHWC kernels (on CUDA the layout
// tensor cores want). Tensors keep their identity (set_data), so it may be applied to a module whose
// parameters others already hold. Returns how many tensors were changed.
int64_t to_channels_last(torch::nn::Module& m);
// Whether `m` has a 4-D parameter, i.e. a convolution that channels_last would change.
bool has_4d_parameters(torch::nn::Module& m);

}  // namespace cm
