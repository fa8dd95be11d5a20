// ADM UNet (see adm_unet.h). The construction loops mirror cm/unet.py UNetModel.__init__ so the module
// tree, and with it the state-dict names and order, come out identical.
#include "core/nets/adm_unet.h"

#include <fmt/format.h>
#include "core/config.h"
#include "core/nets/mlp.h"  // timestep_embedding: the ADM sinusoidal embedding (cos half, then sin half)

namespace F = torch::nn::functional;

namespace cm {

static Conv2dLayer conv(int64_t in, int64_t out, int64_t k, int64_t stride = 1) {
  return Conv2dLayer(in, out, k, stride, k / 2);
}

AdmResBlockImpl::AdmResBlockImpl(int64_t channels, int64_t emb_channels, double dropout, int64_t out_channels,
                                 bool use_scale_shift_norm, bool up, bool down)
    : scale_shift_(use_scale_shift_norm), up_(up), down_(down) {
  in_norm_ = AdmGroupNorm(channels);
  in_conv_ = conv(channels, out_channels, 3);
  register_module("in_layers", torch::nn::Sequential(in_norm_, torch::nn::SiLU(), in_conv_));
  emb_linear_ = LinearLayer(emb_channels, use_scale_shift_norm ? 2 * out_channels : out_channels);
  register_module("emb_layers", torch::nn::Sequential(torch::nn::SiLU(), emb_linear_));
  out_norm_ = AdmGroupNorm(out_channels);
  dropout_ = torch::nn::Dropout(dropout);
  out_conv_ = conv(out_channels, out_channels, 3);
  zero_parameters(*out_conv_);
  register_module("out_layers", torch::nn::Sequential(out_norm_, torch::nn::SiLU(), dropout_, out_conv_));
  if (out_channels != channels) skip_ = register_module("skip_connection", conv(channels, out_channels, 1));
}

static torch::Tensor resample(const torch::Tensor& x, bool up, bool down) {
  if (up) return F::interpolate(x, F::InterpolateFuncOptions().scale_factor(std::vector<double>{2, 2}).mode(torch::kNearest));
  if (down) return F::avg_pool2d(x, F::AvgPool2dFuncOptions(2).stride(2));
  return x;
}

torch::Tensor AdmResBlockImpl::forward(const torch::Tensor& x_in, const torch::Tensor& emb) {
  // With up/down the resampling sits between the first norm+SiLU and the first conv, on both paths.
  auto h = torch::silu(in_norm_(x_in));
  h = in_conv_(resample(h, up_, down_));
  auto x = resample(x_in, up_, down_);
  auto e = emb_linear_(torch::silu(emb)).to(h.scalar_type()).unsqueeze(-1).unsqueeze(-1);
  if (scale_shift_) {
    auto ss = e.chunk(2, 1);
    h = out_norm_(h) * (1 + ss[0]) + ss[1];
  } else {
    h = out_norm_(h + e);
  }
  h = out_conv_(dropout_(torch::silu(h)));
  return (skip_ ? skip_(x) : x) + h;
}

AdmAttentionImpl::AdmAttentionImpl(int64_t channels, int64_t num_heads, int64_t num_head_channels) {
  if (num_head_channels == -1) {
    heads_ = num_heads;
  } else {
    if (num_head_channels <= 0 || channels % num_head_channels != 0)
      throw ConfigError(fmt::format("model.num_head_channels = {} does not divide the {} channels of an attention block",
                                    num_head_channels, channels));
    heads_ = channels / num_head_channels;
  }
  if (heads_ <= 0 || channels % heads_ != 0)
    throw ConfigError(fmt::format("model.num_heads = {} does not divide the {} channels of an attention block", heads_,
                                  channels));
  norm_ = register_module("norm", AdmGroupNorm(channels));
  qkv_ = register_module("qkv", conv(channels, 3 * channels, 1));
  proj_out_ = register_module("proj_out", conv(channels, channels, 1));
  zero_parameters(*proj_out_);
}

torch::Tensor AdmAttentionImpl::forward(const torch::Tensor& x) {
  return x + proj_out_(attention_qkv_three_heads_dim(qkv_(norm_(x)), heads_));
}

void AdmStepImpl::add(AdmResBlock b) {
  register_module(std::to_string(calls_.size()), b);
  calls_.push_back([b = b.ptr()](const torch::Tensor& x, const torch::Tensor& emb) { return b->forward(x, emb); });
}

void AdmStepImpl::add(AdmAttention a) {
  register_module(std::to_string(calls_.size()), a);
  calls_.push_back([a = a.ptr()](const torch::Tensor& x, const torch::Tensor&) { return a->forward(x); });
}

void AdmStepImpl::add(const std::string&, std::shared_ptr<torch::nn::Module> m,
                      std::function<torch::Tensor(const torch::Tensor&)> f) {
  register_module(std::to_string(calls_.size()), std::move(m));
  calls_.push_back([f](const torch::Tensor& x, const torch::Tensor&) { return f(x); });
}

torch::Tensor AdmStepImpl::forward(const torch::Tensor& x, const torch::Tensor& emb) {
  torch::Tensor h = x;
  for (auto& c : calls_) h = c(h, emb);
  return h;
}

// Downsample / Upsample of the reference when resblock_updown is off: a strided conv named `op` (or 2x2
// average pooling), and nearest x2 followed by a conv named `conv` (or nothing).
namespace {
struct AdmResampleImpl : torch::nn::Module {
  AdmResampleImpl(int64_t ch, bool up, bool use_conv) : up(up) {
    if (use_conv) c = register_module(up ? "conv" : "op", conv(ch, ch, 3, up ? 1 : 2));
  }
  torch::Tensor forward(const torch::Tensor& x) {
    if (up) {
      auto h = resample(x, true, false);
      return c ? c(h) : h;
    }
    return c ? c(x) : resample(x, false, true);
  }
  bool up;
  Conv2dLayer c{nullptr};
};
TORCH_MODULE(AdmResample);
}  // namespace

AdmUNetImpl::AdmUNetImpl(const AdmOptions& o) : opt_(o) {
  const int64_t mc = o.model_channels, emb_dim = 4 * mc;
  const int64_t heads_up = o.num_heads_upsample == -1 ? o.num_heads : o.num_heads_upsample;
  time_embed_ = register_module(
      "time_embed", torch::nn::Sequential(LinearLayer(mc, emb_dim), torch::nn::SiLU(), LinearLayer(emb_dim, emb_dim)));
  if (o.num_classes > 0) label_emb_ = register_module("label_emb", EmbeddingLayer(o.num_classes, emb_dim));

  auto resblock = [&](int64_t cin, int64_t cout, bool up, bool down) {
    return AdmResBlock(cin, emb_dim, o.dropout, cout, o.use_scale_shift_norm, up, down);
  };
  auto input_list = register_module("input_blocks", torch::nn::ModuleList());
  auto push_input = [&](AdmStep s) { input_list->push_back(s); input_blocks_.push_back(s); };

  int64_t ch = o.channel_mult[0] * mc;
  const int64_t input_ch = ch;
  {
    AdmStep s;
    auto c = conv(o.in_channels, ch, 3);
    s->add("conv", c.ptr(), [c = c.ptr()](const torch::Tensor& x) { return c->forward(x); });
    push_input(s);
  }
  std::vector<int64_t> input_block_chans = {ch};
  int64_t ds = 1;
  const int64_t levels = static_cast<int64_t>(o.channel_mult.size());
  for (int64_t level = 0; level < levels; ++level) {
    for (int64_t i = 0; i < o.num_res_blocks; ++i) {
      AdmStep s;
      const int64_t cout = o.channel_mult[level] * mc;
      s->add(resblock(ch, cout, false, false));
      ch = cout;
      if (o.attention_ds.count(ds)) s->add(AdmAttention(ch, o.num_heads, o.num_head_channels));
      push_input(s);
      input_block_chans.push_back(ch);
    }
    if (level != levels - 1) {
      AdmStep s;
      if (o.resblock_updown) {
        s->add(resblock(ch, ch, false, true));
      } else {
        AdmResample r(ch, false, o.conv_resample);
        s->add("down", r.ptr(), [r = r.ptr()](const torch::Tensor& x) { return r->forward(x); });
      }
      push_input(s);
      input_block_chans.push_back(ch);
      ds *= 2;
    }
  }

  middle_block_ = AdmStep();
  middle_block_->add(resblock(ch, ch, false, false));
  middle_block_->add(AdmAttention(ch, o.num_heads, o.num_head_channels));
  middle_block_->add(resblock(ch, ch, false, false));
  register_module("middle_block", middle_block_);

  auto output_list = register_module("output_blocks", torch::nn::ModuleList());
  for (int64_t level = levels - 1; level >= 0; --level) {
    for (int64_t i = 0; i <= o.num_res_blocks; ++i) {
      const int64_t ich = input_block_chans.back();
      input_block_chans.pop_back();
      AdmStep s;
      const int64_t cout = o.channel_mult[level] * mc;
      s->add(resblock(ch + ich, cout, false, false));
      ch = cout;
      if (o.attention_ds.count(ds)) s->add(AdmAttention(ch, heads_up, o.num_head_channels));
      if (level && i == o.num_res_blocks) {
        if (o.resblock_updown) {
          s->add(resblock(ch, ch, true, false));
        } else {
          AdmResample r(ch, true, o.conv_resample);
          s->add("up", r.ptr(), [r = r.ptr()](const torch::Tensor& x) { return r->forward(x); });
        }
        ds /= 2;
      }
      output_list->push_back(s);
      output_blocks_.push_back(s);
    }
  }

  auto out_conv = conv(input_ch, o.out_channels, 3);
  zero_parameters(*out_conv);
  out_ = register_module("out", torch::nn::Sequential(AdmGroupNorm(ch), torch::nn::SiLU(), out_conv));
}

torch::Tensor AdmUNetImpl::forward(const torch::Tensor& x, const torch::Tensor& noise_labels,
                                   const torch::Tensor& class_labels) {
  auto emb = time_embed_->forward(timestep_embedding(noise_labels.reshape({-1}), opt_.model_channels).to(x.scalar_type()));
  if (opt_.num_classes > 0) {
    if (class_labels.defined() && class_labels.dim() == 1 && !class_labels.is_floating_point())
      emb = emb + label_emb_(class_labels.to(torch::kLong));
    else  // one-hot or soft labels: the same embedding as a matrix product
      emb = emb + torch::matmul(class_labels_as_matrix(class_labels, opt_.num_classes, "ADM UNet").to(emb.scalar_type()),
                                label_emb_->weight);
  }
  std::vector<torch::Tensor> hs;
  torch::Tensor h = x;
  for (auto& b : input_blocks_) {
    h = b(h, emb);
    hs.push_back(h);
  }
  h = middle_block_(h, emb);
  for (auto& b : output_blocks_) {
    h = torch::cat({h, hs.back()}, 1);
    hs.pop_back();
    h = b(h, emb);
  }
  return out_->forward(h);
}

// The bound options' sanity, and attention resolutions turned into downsample rates (as the reference does).
static void check_adm_options(ConfigReader& cfg, AdmOptions& o, const std::vector<int64_t>& attn_res) {
  if (o.model_channels <= 0 || o.num_res_blocks <= 0)
    throw ConfigError(fmt::format("{} and {} must be positive", cfg.key_path("model_channels"), cfg.key_path("num_res_blocks")));
  if (o.dropout < 0 || o.dropout >= 1) throw ConfigError(fmt::format("{} must be in [0, 1)", cfg.key_path("dropout")));
  for (auto m : o.channel_mult)
    if (m <= 0 || (m * o.model_channels) % 32 != 0)
      throw ConfigError(fmt::format("{}: every multiplier times model_channels must be a positive multiple of 32 "
                                    "(GroupNorm32); {} x {} is not", cfg.key_path("channel_mult"), m, o.model_channels));
  const int64_t levels = static_cast<int64_t>(o.channel_mult.size());
  if (o.image_size % (int64_t(1) << (levels - 1)) != 0)
    throw ConfigError(fmt::format("image size {} cannot be halved {} times ({} has {} levels)", o.image_size, levels - 1,
                                  cfg.key_path("channel_mult"), levels));
  // The reference turns resolutions into downsample rates (image_size // res) and silently ignores those
  // the UNet never reaches; a resolution that matches no level is almost surely a typo, so it is an error.
  std::vector<std::string> reachable;
  for (int64_t l = 0; l < levels; ++l) reachable.push_back(std::to_string(o.image_size >> l));
  for (auto r : attn_res) {
    bool ok = false;
    for (int64_t l = 0; l < levels; ++l) ok |= (o.image_size >> l) == r;
    if (!ok)
      throw ConfigError(fmt::format("{}: {} is not a resolution of this UNet (image {}, levels at {})",
                                    cfg.key_path("attention_resolutions"), r, o.image_size, fmt::join(reachable, ", ")));
    o.attention_ds.insert(o.image_size / r);
  }
}

NetworkPtr build_adm(ConfigReader& cfg, const ModelShape& shape) {
  AdmOptions o;
  if (shape.resolution <= 0)
    throw ConfigError("model.arch = \"adm\" needs image data: the dataset has no resolution (use arch = \"mlp\")");
  o.image_size = shape.resolution;
  o.in_channels = shape.channels;
  o.model_channels = cfg.require_int("model_channels");
  o.num_res_blocks = cfg.require_int("num_res_blocks");
  // Default channel multipliers by image size, as create_model chooses them.
  std::vector<int64_t> def_mult;
  switch (o.image_size) {
    case 256: def_mult = {1, 1, 2, 2, 4, 4}; break;
    case 128: def_mult = {1, 1, 2, 3, 4}; break;
    case 64: def_mult = {1, 2, 3, 4}; break;
    default: break;
  }
  o.channel_mult = cfg.get_int_list("channel_mult", def_mult);
  if (o.channel_mult.empty())
    throw ConfigError(fmt::format("{} is required for image size {} (the reference has defaults only for 64, 128, 256)",
                                  cfg.key_path("channel_mult"), o.image_size));
  const auto attn_res = cfg.get_int_list("attention_resolutions", {16});
  o.num_heads = cfg.get_int("num_heads", 1);
  o.num_head_channels = cfg.get_int("num_head_channels", -1);
  o.num_heads_upsample = cfg.get_int("num_heads_upsample", -1);
  o.use_scale_shift_norm = cfg.get_bool("use_scale_shift_norm", false);
  o.resblock_updown = cfg.get_bool("resblock_updown", false);
  o.conv_resample = cfg.get_bool("conv_resample", true);
  o.dropout = cfg.get_fraction("dropout", 0.0);
  const bool learn_sigma = cfg.get_bool("learn_sigma", false);
  const bool class_cond = cfg.get_bool("class_cond", false);
  o.out_channels = learn_sigma ? 2 * o.in_channels : o.in_channels;

  check_adm_options(cfg, o, attn_res);
  if (class_cond) {
    if (shape.num_classes <= 0)
      throw ConfigError(fmt::format("{} = true but the dataset has no classes (dataset.num_classes = 0)",
                                    cfg.key_path("class_cond")));
    o.num_classes = shape.num_classes;
  }
  return std::make_shared<AdmUNetImpl>(o);
}

}  // namespace cm
