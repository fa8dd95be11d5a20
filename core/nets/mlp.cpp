// Residual MLP for 2-D toys (see mlp.h).
#include "core/nets/mlp.h"

#include <fmt/format.h>
#include "core/config.h"

namespace cm {

torch::Tensor timestep_embedding(const torch::Tensor& t, int64_t dim, double max_period) {
  const int64_t half = dim / 2;
  auto freqs = torch::exp(-std::log(max_period) * torch::arange(half, t.options().dtype(torch::kFloat)) / half);
  auto args = t.to(torch::kFloat).unsqueeze(1) * freqs.unsqueeze(0);
  auto emb = torch::cat({torch::cos(args), torch::sin(args)}, 1);
  if (dim % 2) emb = torch::cat({emb, torch::zeros_like(emb.narrow(1, 0, 1))}, 1);
  return emb;
}

MlpImpl::MlpImpl(const MlpOptions& o) : opt_(o) {
  emb1 = register_module("emb1", torch::nn::Linear(o.emb_dim, o.width));
  emb2 = register_module("emb2", torch::nn::Linear(o.width, o.width));
  in = register_module("in", torch::nn::Linear(o.dim, o.width));
  for (int64_t i = 0; i < o.depth; ++i) {
    blocks_in->push_back(torch::nn::Linear(o.width, o.width));
    blocks_emb->push_back(torch::nn::Linear(o.width, o.width));
    blocks_out->push_back(torch::nn::Linear(o.width, o.width));
  }
  register_module("blocks_in", blocks_in);
  register_module("blocks_emb", blocks_emb);
  register_module("blocks_out", blocks_out);
  drop = register_module("drop", torch::nn::Dropout(o.dropout));
  out = register_module("out", torch::nn::Linear(o.width, o.dim));
}

torch::Tensor MlpImpl::forward(const torch::Tensor& x, const torch::Tensor& noise_labels, const torch::Tensor&) {
  auto temb = torch::silu(emb2(torch::silu(emb1(timestep_embedding(noise_labels, opt_.emb_dim)))));
  auto h = in(x.flatten(1)) + temb;  // images (small ones) are flattened
  for (int64_t i = 0; i < opt_.depth; ++i) {
    auto r = blocks_in[i]->as<torch::nn::Linear>()->forward(torch::silu(h));
    r = r + blocks_emb[i]->as<torch::nn::Linear>()->forward(temb);
    r = blocks_out[i]->as<torch::nn::Linear>()->forward(drop(torch::silu(r)));
    h = h + r;
  }
  return out(torch::silu(h)).view(x.sizes());
}

NetworkPtr build_mlp(ConfigReader& cfg, const ModelShape& shape) {
  MlpOptions o;
  o.dim = shape.resolution > 0 ? shape.channels * shape.resolution * shape.resolution : shape.channels;
  o.width = cfg.get_int("width", o.width);
  o.depth = cfg.get_int("depth", o.depth);
  o.emb_dim = cfg.get_int("emb_dim", o.emb_dim);
  o.dropout = cfg.get_fraction("dropout", o.dropout);
  if (o.width <= 0 || o.depth < 0 || o.emb_dim <= 0)
    throw ConfigError(cfg.key_path("width/depth/emb_dim") + " must be positive");
  // Flattened images: fine for the 2-core CPU runs on 28x28 Fashion-MNIST (784 inputs), wasteful beyond.
  if (shape.resolution > 32)
    throw ConfigError(fmt::format("model.arch = \"mlp\" flattens images, which is meant for small images (at most 32x32); {}x{} "
                                  "images need a convolutional network (adm or ncsnpp)", shape.resolution, shape.resolution));
  return std::make_shared<MlpImpl>(o);
}

}  // namespace cm
