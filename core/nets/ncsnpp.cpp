// NCSN++ / DDPM++ as EDM's SongUNet (see ncsnpp.h). Construction mirrors training/networks.py so the
// ModuleDict keys, their order and the parameter names are EDM's.
#include "core/nets/ncsnpp.h"

#include <fmt/format.h>
#include <algorithm>
#include <cmath>
#include "core/config.h"

namespace F = torch::nn::functional;

namespace cm {

namespace {
// EDM's Linear with xavier_uniform weights and zero bias (init_bias = 0).
LinearLayer edm_linear(int64_t in, int64_t out, bool bias = true) {
  LinearLayer l(in, out, bias);
  xavier_uniform_(l->weight, in, out);
  if (bias && !shape_only_params()) {
    torch::NoGradGuard ng;
    l->bias.zero_();
  }
  return l;
}

EdmConv2d edm_conv(int64_t in, int64_t out, int64_t kernel, double init_weight = 1.0, bool up = false, bool down = false,
                   const std::vector<double>& filter = {1, 1}, bool fused = false) {
  EdmConv2dOptions o;
  o.in_channels = in, o.out_channels = out, o.kernel = kernel, o.up = up, o.down = down, o.resample_filter = filter;
  o.fused_resample = fused;
  EdmConv2d c(o);
  if (c->weight.defined() && !shape_only_params() && init_weight != 1.0) {
    torch::NoGradGuard ng;
    c->weight.mul_(init_weight);
  }
  return c;
}

constexpr double kInitZero = 1e-5;  // EDM's init_zero: xavier_uniform scaled by 1e-5 (not exactly zero)
}  // namespace

SongBlockImpl::SongBlockImpl(const SongBlockOptions& o) : opt_(o) {
  norm0_ = register_module("norm0", EdmGroupNorm(o.in_channels, o.eps));
  conv0_ = register_module("conv0", edm_conv(o.in_channels, o.out_channels, 3, 1.0, o.up, o.down, o.resample_filter));
  affine_ = register_module("affine", edm_linear(o.emb_channels, o.out_channels * (o.adaptive_scale ? 2 : 1)));
  norm1_ = register_module("norm1", EdmGroupNorm(o.out_channels, o.eps));
  conv1_ = register_module("conv1", edm_conv(o.out_channels, o.out_channels, 3, kInitZero));
  if (o.out_channels != o.in_channels || o.up || o.down) {
    const int64_t kernel = (o.resample_proj || o.out_channels != o.in_channels) ? 1 : 0;
    skip_ = register_module("skip", edm_conv(o.in_channels, o.out_channels, kernel, 1.0, o.up, o.down, o.resample_filter));
  }
  if (o.attention) {
    if (o.num_heads <= 0 || o.out_channels % o.num_heads != 0)
      throw ConfigError(fmt::format("NCSN++ attention: {} heads do not divide {} channels", o.num_heads, o.out_channels));
    norm2_ = register_module("norm2", EdmGroupNorm(o.out_channels, o.eps));
    qkv_ = register_module("qkv", edm_conv(o.out_channels, 3 * o.out_channels, 1, std::sqrt(0.2)));
    proj_ = register_module("proj", edm_conv(o.out_channels, o.out_channels, 1, kInitZero));
  }
}

torch::Tensor SongBlockImpl::forward(const torch::Tensor& input, const torch::Tensor& emb) {
  auto x = conv0_(torch::silu(norm0_(input)));
  auto params = affine_(emb).unsqueeze(2).unsqueeze(3).to(x.scalar_type());
  if (opt_.adaptive_scale) {
    auto ss = params.chunk(2, 1);
    x = torch::silu(torch::addcmul(ss[1], norm1_(x), ss[0] + 1));
  } else {
    x = torch::silu(norm1_(x + params));
  }
  x = conv1_(F::dropout(x, F::DropoutFuncOptions().p(opt_.dropout).training(is_training())));
  x = x + (skip_ ? skip_(input) : input);
  x = x * opt_.skip_scale;
  if (opt_.attention) {
    auto a = attention_qkv_heads_dim_three(qkv_(norm2_(x)), opt_.num_heads);
    x = proj_(a) + x;
    x = x * opt_.skip_scale;
  }
  return x;
}

void SongUNetImpl::add(torch::nn::ModuleDict& dict, std::vector<Step>& steps, const std::string& name, Kind kind,
                       std::shared_ptr<torch::nn::Module> m, std::function<torch::Tensor(const torch::Tensor&)> f) {
  dict->update(std::vector<std::pair<std::string, std::shared_ptr<torch::nn::Module>>>{{name, m}});
  Step s{kind, nullptr, std::move(f)};
  if (kind == Kind::Block) s.block = SongBlock(std::dynamic_pointer_cast<SongBlockImpl>(m));
  steps.push_back(std::move(s));
}

SongUNetImpl::SongUNetImpl(const SongUNetOptions& o) : opt_(o) {
  const int64_t emb_channels = o.model_channels * o.channel_mult_emb;
  const int64_t noise_channels = o.model_channels * o.channel_mult_noise;
  SongBlockOptions bk;
  bk.emb_channels = emb_channels, bk.num_heads = 1, bk.dropout = o.dropout, bk.skip_scale = std::sqrt(0.5);
  bk.eps = 1e-6, bk.resample_filter = o.resample_filter, bk.resample_proj = true, bk.adaptive_scale = false;
  auto block = [&](int64_t cin, int64_t cout, bool up, bool down, bool attn) {
    SongBlockOptions b = bk;
    b.in_channels = cin, b.out_channels = cout, b.up = up, b.down = down, b.attention = attn;
    return SongBlock(b);
  };
  auto has_attn = [&](int64_t res) {
    return std::find(o.attn_resolutions.begin(), o.attn_resolutions.end(), res) != o.attn_resolutions.end();
  };

  // Mapping. The positional embedding has no state; the Fourier one has its `freqs` buffer.
  if (o.embedding_type == "fourier") map_noise_ = register_module("map_noise", FourierEmbedding(noise_channels, o.fourier_scale));
  if (o.label_dim) map_label_ = register_module("map_label", edm_linear(o.label_dim, noise_channels));
  if (o.augment_dim) map_augment_ = register_module("map_augment", edm_linear(o.augment_dim, noise_channels, false));
  map_layer0_ = register_module("map_layer0", edm_linear(noise_channels, emb_channels));
  map_layer1_ = register_module("map_layer1", edm_linear(emb_channels, emb_channels));

  auto plain = [](auto m) { return [m = m.ptr()](const torch::Tensor& x) { return m->forward(x); }; };
  auto res_name = [](int64_t res, const std::string& what) { return fmt::format("{}x{}_{}", res, res, what); };

  // Encoder.
  torch::nn::ModuleDict enc;
  int64_t cout = o.in_channels, caux = o.in_channels;
  std::vector<int64_t> skips;
  const int64_t levels = static_cast<int64_t>(o.channel_mult.size());
  for (int64_t level = 0; level < levels; ++level) {
    const int64_t res = o.img_resolution >> level;
    if (level == 0) {
      const int64_t cin = cout;
      cout = o.model_channels;
      auto c = edm_conv(cin, cout, 3);
      add(enc, enc_, res_name(res, "conv"), Kind::Conv, c.ptr(), plain(c));
      skips.push_back(cout);
    } else {
      add(enc, enc_, res_name(res, "down"), Kind::Block, block(cout, cout, false, true, false).ptr(), nullptr);
      skips.push_back(cout);
      if (o.encoder_type == "skip") {
        auto d = edm_conv(caux, caux, 0, 1.0, false, true, o.resample_filter);
        add(enc, enc_, res_name(res, "aux_down"), Kind::AuxDown, d.ptr(), plain(d));
        auto s = edm_conv(caux, cout, 1);
        add(enc, enc_, res_name(res, "aux_skip"), Kind::AuxSkip, s.ptr(), plain(s));
      }
      if (o.encoder_type == "residual") {
        auto r = edm_conv(caux, cout, 3, 1.0, false, true, o.resample_filter, /*fused=*/true);
        add(enc, enc_, res_name(res, "aux_residual"), Kind::AuxResidual, r.ptr(), plain(r));
        caux = cout;
      }
    }
    for (int64_t idx = 0; idx < o.num_blocks; ++idx) {
      const int64_t cin = cout;
      cout = o.model_channels * o.channel_mult[level];
      add(enc, enc_, res_name(res, fmt::format("block{}", idx)), Kind::Block, block(cin, cout, false, false, has_attn(res)).ptr(),
          nullptr);
      skips.push_back(cout);
    }
  }
  register_module("enc", enc);

  // Decoder.
  torch::nn::ModuleDict dec;
  for (int64_t level = levels - 1; level >= 0; --level) {
    const int64_t res = o.img_resolution >> level;
    if (level == levels - 1) {
      add(dec, dec_, res_name(res, "in0"), Kind::Block, block(cout, cout, false, false, true).ptr(), nullptr);
      add(dec, dec_, res_name(res, "in1"), Kind::Block, block(cout, cout, false, false, false).ptr(), nullptr);
    } else {
      add(dec, dec_, res_name(res, "up"), Kind::Block, block(cout, cout, true, false, false).ptr(), nullptr);
    }
    for (int64_t idx = 0; idx <= o.num_blocks; ++idx) {
      const int64_t cin = cout + skips.back();
      skips.pop_back();
      cout = o.model_channels * o.channel_mult[level];
      add(dec, dec_, res_name(res, fmt::format("block{}", idx)), Kind::Block,
          block(cin, cout, false, false, idx == o.num_blocks && has_attn(res)).ptr(), nullptr);
    }
    if (o.decoder_type == "skip" || level == 0) {
      if (o.decoder_type == "skip" && level < levels - 1) {
        auto u = edm_conv(o.out_channels, o.out_channels, 0, 1.0, true, false, o.resample_filter);
        add(dec, dec_, res_name(res, "aux_up"), Kind::AuxUp, u.ptr(), plain(u));
      }
      EdmGroupNorm n(cout, 1e-6);
      add(dec, dec_, res_name(res, "aux_norm"), Kind::AuxNorm, n.ptr(), plain(n));
      auto c = edm_conv(cout, o.out_channels, 3, kInitZero);
      add(dec, dec_, res_name(res, "aux_conv"), Kind::AuxConv, c.ptr(), plain(c));
    }
  }
  register_module("dec", dec);
}

torch::Tensor SongUNetImpl::forward(const torch::Tensor& x_in, const torch::Tensor& noise_labels,
                                    const torch::Tensor& class_labels) {
  const int64_t noise_channels = opt_.model_channels * opt_.channel_mult_noise;
  auto nl = noise_labels.reshape({-1}).to(x_in.scalar_type());
  auto emb = map_noise_ ? map_noise_(nl) : edm_positional_embedding(nl, noise_channels, /*endpoint=*/true);
  // EDM swaps the two halves: [sin, cos] rather than [cos, sin].
  emb = emb.reshape({emb.size(0), 2, emb.size(1) / 2}).flip({1}).reshape(emb.sizes());
  if (map_label_) {
    auto tmp = class_labels_as_matrix(class_labels, opt_.label_dim, "NCSN++").to(emb.scalar_type());
    if (is_training() && opt_.label_dropout > 0)
      tmp = tmp * (torch::rand({x_in.size(0), 1}, tmp.options()) >= opt_.label_dropout).to(tmp.scalar_type());
    emb = emb + map_label_(tmp * std::sqrt(static_cast<double>(opt_.label_dim)));
  }
  emb = torch::silu(map_layer0_(emb));
  emb = torch::silu(map_layer1_(emb));

  std::vector<torch::Tensor> skips;
  torch::Tensor x = x_in, aux = x_in;
  for (auto& s : enc_) {
    switch (s.kind) {
      case Kind::AuxDown: aux = s.apply(aux); break;
      case Kind::AuxSkip: x = skips.back() = x + s.apply(aux); break;
      case Kind::AuxResidual: x = skips.back() = aux = (x + s.apply(aux)) / std::sqrt(2.0); break;
      case Kind::Block: x = s.block(x, emb); skips.push_back(x); break;
      default: x = s.apply(x); skips.push_back(x); break;
    }
  }

  torch::Tensor out, tmp;
  for (auto& s : dec_) {
    switch (s.kind) {
      case Kind::AuxUp: out = s.apply(out); break;
      case Kind::AuxNorm: tmp = s.apply(x); break;
      case Kind::AuxConv:
        tmp = s.apply(torch::silu(tmp));
        out = out.defined() ? tmp + out : tmp;
        break;
      default:
        // Blocks that take a skip connection are those whose input width differs from x (as EDM decides).
        if (x.size(1) != s.block->options().in_channels) {
          x = torch::cat({x, skips.back()}, 1);
          skips.pop_back();
        }
        x = s.block(x, emb);
        break;
    }
  }
  return out;
}

NetworkPtr build_ncsnpp(ConfigReader& cfg, const ModelShape& shape) {
  if (shape.resolution <= 0)
    throw ConfigError("model.arch = \"ncsnpp\" needs image data: the dataset has no resolution (use arch = \"mlp\")");
  SongUNetOptions o;
  o.img_resolution = shape.resolution;
  o.in_channels = o.out_channels = shape.channels;
  o.model_channels = cfg.get_int("model_channels", o.model_channels);
  o.channel_mult = cfg.get_int_list("channel_mult", o.channel_mult);
  o.channel_mult_emb = cfg.get_int("channel_mult_emb", o.channel_mult_emb);
  o.num_blocks = cfg.get_int("num_blocks", o.num_blocks);
  o.attn_resolutions = cfg.get_int_list("attn_resolutions", o.attn_resolutions);
  o.dropout = cfg.get_fraction("dropout", o.dropout);
  o.label_dropout = cfg.get_fraction("label_dropout", o.label_dropout);
  o.embedding_type = cfg.get_choice("embedding_type", o.embedding_type, {"fourier", "positional"});
  o.channel_mult_noise = cfg.get_int("channel_mult_noise", o.channel_mult_noise);
  o.encoder_type = cfg.get_choice("encoder_type", o.encoder_type, {"standard", "skip", "residual"});
  o.decoder_type = cfg.get_choice("decoder_type", o.decoder_type, {"standard", "skip"});
  o.resample_filter = cfg.get_double_list("resample_filter", o.resample_filter);
  o.fourier_scale = cfg.get_double("fourier_scale", o.fourier_scale);
  o.augment_dim = cfg.get_int("augment_dim", o.augment_dim);
  const bool class_cond = cfg.get_bool("class_cond", false);

  if (o.model_channels <= 0 || o.num_blocks <= 0 || o.channel_mult_emb <= 0 || o.channel_mult_noise <= 0)
    throw ConfigError(fmt::format("{}: model_channels, num_blocks, channel_mult_emb and channel_mult_noise must be positive",
                                  cfg.path()));
  if (o.channel_mult.empty()) throw ConfigError(cfg.key_path("channel_mult") + " must not be empty");
  if ((o.model_channels * o.channel_mult_noise) % 2 != 0)
    throw ConfigError(fmt::format("{}: the noise embedding width model_channels * channel_mult_noise must be even",
                                  cfg.path()));
  if (o.dropout < 0 || o.dropout >= 1) throw ConfigError(cfg.key_path("dropout") + " must be in [0, 1)");
  if (o.resample_filter.empty() || o.resample_filter.size() % 2 != 0)
    throw ConfigError(fmt::format("{} must have an even number of taps (e.g. [1, 1] or [1, 3, 3, 1])",
                                  cfg.key_path("resample_filter")));
  const int64_t levels = static_cast<int64_t>(o.channel_mult.size());
  if (o.img_resolution % (int64_t(1) << (levels - 1)) != 0)
    throw ConfigError(fmt::format("image size {} cannot be halved {} times ({} has {} levels)", o.img_resolution,
                                  levels - 1, cfg.key_path("channel_mult"), levels));
  std::vector<std::string> reachable;
  for (int64_t l = 0; l < levels; ++l) reachable.push_back(std::to_string(o.img_resolution >> l));
  for (auto r : o.attn_resolutions) {
    bool ok = false;
    for (int64_t l = 0; l < levels; ++l) ok |= (o.img_resolution >> l) == r;
    if (!ok)
      throw ConfigError(fmt::format("{}: {} is not a resolution of this UNet (image {}, levels at {})",
                                    cfg.key_path("attn_resolutions"), r, o.img_resolution, fmt::join(reachable, ", ")));
  }
  if (class_cond) {
    if (shape.num_classes <= 0)
      throw ConfigError(fmt::format("{} = true but the dataset has no classes (dataset.num_classes = 0)",
                                    cfg.key_path("class_cond")));
    o.label_dim = shape.num_classes;
  }
  return std::make_shared<SongUNetImpl>(o);
}

}  // namespace cm
