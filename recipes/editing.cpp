// Zero-shot editing (see editing.h).
#include "recipes/editing.h"

#include <cmath>
#include <fmt/format.h>
#include <stdexcept>
#include <torch/torch.h>

namespace cm {
namespace {

constexpr double kLuma[3] = {0.2989, 0.5870, 0.1140};

torch::Tensor luma_weights(const torch::TensorOptions& o) {
  return torch::tensor({kLuma[0], kLuma[1], kLuma[2]}, o.dtype(torch::kFloat64)).view({1, 3, 1, 1});
}

void check_images(const torch::Tensor& x, const char* what) {
  if (x.dim() != 4) throw std::invalid_argument(fmt::format("{}: expected images [N, C, H, W], got {}", what, c10::str(x.sizes())));
}

}  // namespace

torch::Tensor luma(const torch::Tensor& nchw) {
  check_images(nchw, "luma");
  if (nchw.size(1) != 3) throw std::invalid_argument(fmt::format("luma needs RGB images, got {} channels", nchw.size(1)));
  auto w = luma_weights(nchw.options());
  return (nchw.to(torch::kFloat64) * w).sum(1, /*keepdim=*/true).to(nchw.scalar_type());
}

torch::Tensor box_downsample(const torch::Tensor& nchw, int64_t f) {
  check_images(nchw, "box_downsample");
  const int64_t n = nchw.size(0), c = nchw.size(1), h = nchw.size(2), w = nchw.size(3);
  if (f < 1 || h % f != 0 || w % f != 0)
    throw std::invalid_argument(fmt::format("box_downsample: {}x{} images do not divide into {}x{} blocks", h, w, f, f));
  return nchw.reshape({n, c, h / f, f, w / f, f}).mean({3, 5});
}

KnownPart KnownPart::pixels(const torch::Tensor& known) {
  KnownPart k;
  k.kind_ = Pixels;
  torch::Tensor m = known;
  if (m.dim() == 2) m = m.view({1, 1, m.size(0), m.size(1)});
  if (m.dim() != 4) throw std::invalid_argument(fmt::format("inpainting mask: expected [H, W] or [N, C, H, W], got {}", c10::str(known.sizes())));
  k.mask_ = m.to(torch::kFloat32) > 0.5;
  return k;
}

KnownPart KnownPart::luma() {
  KnownPart k;
  k.kind_ = Luma;
  return k;
}

KnownPart KnownPart::blocks(int64_t factor) {
  if (factor < 1) throw std::invalid_argument(fmt::format("super-resolution factor must be >= 1, got {}", factor));
  KnownPart k;
  k.kind_ = Blocks;
  k.factor_ = factor;
  return k;
}

torch::Tensor KnownPart::project(const torch::Tensor& y) const { return impose(torch::zeros_like(y), y); }

torch::Tensor KnownPart::impose(const torch::Tensor& x, const torch::Tensor& y) const {
  check_images(x, "edit");
  if (!x.sizes().equals(y.sizes()))
    throw std::invalid_argument(fmt::format("edit: images {} and reference {} differ in shape", c10::str(x.sizes()), c10::str(y.sizes())));
  switch (kind_) {
    case Pixels: {
      auto m = mask_.to(x.device());
      if (m.size(2) != x.size(2) || m.size(3) != x.size(3))
        throw std::invalid_argument(fmt::format("inpainting mask is {}x{}, the images {}x{}", m.size(2), m.size(3), x.size(2), x.size(3)));
      return torch::where(m, y, x);  // the known pixels are y's own values, bit for bit
    }
    case Luma: {
      if (x.size(1) != 3) throw std::invalid_argument(fmt::format("colorization needs an RGB model, this one has {} channels", x.size(1)));
      auto w = luma_weights(x.options());
      auto d = (y.to(torch::kFloat64) - x.to(torch::kFloat64));
      auto coef = (d * w).sum(1, true) / (w * w).sum();  // projection of y - x on the luma direction
      return (x.to(torch::kFloat64) + coef * w).to(x.scalar_type());
    }
    case Blocks: {
      const int64_t f = factor_;
      auto d = box_downsample(y.to(torch::kFloat64) - x.to(torch::kFloat64), f);  // block means of y - x
      auto up = d.repeat_interleave(f, 2).repeat_interleave(f, 3);
      return (x.to(torch::kFloat64) + up).to(x.scalar_type());
    }
  }
  throw std::logic_error("KnownPart: unknown kind");
}

namespace {

// x <- after(f(x_start, sigmas[0]).clamp(-1, 1)); then for each later level
// x <- after(f(x + sqrt(tau^2 - eps^2) z_i, tau).clamp(-1, 1)): the chain both editing forms share
// (without the clamps when clip is off).
torch::Tensor chain(const ConsistencyFn& f, const torch::Tensor& x_start, const std::vector<double>& sigmas, const EditNoise& noise,
                    const NoiseRange& r, const torch::Tensor& labels, const std::function<torch::Tensor(const torch::Tensor&)>& after,
                    const char* what, bool clip) {
  auto clipped = [clip](const torch::Tensor& d) { return clip ? d.clamp(-1, 1) : d; };
  if (sigmas.empty()) throw std::invalid_argument(fmt::format("{}: no noise levels", what));
  for (size_t i = 1; i < sigmas.size(); ++i)
    if (!(sigmas[i] < sigmas[i - 1]))
      throw std::invalid_argument(fmt::format("{}: noise levels must decrease, got {} after {}", what, sigmas[i], sigmas[i - 1]));
  torch::NoGradGuard ng;
  const int64_t b = x_start.size(0);
  auto x = after(clipped(f(x_start, torch::full({b}, sigmas[0], x_start.options()), labels)));
  for (size_t i = 1; i < sigmas.size(); ++i) {
    const double scale = std::sqrt(std::max(0.0, sigmas[i] * sigmas[i] - r.sigma_min * r.sigma_min));
    x = after(clipped(f(x + scale * noise(static_cast<int64_t>(i)), torch::full({b}, sigmas[i], x_start.options()), labels)));
  }
  return x;
}

}  // namespace

torch::Tensor edit_known(const ConsistencyFn& f, const KnownPart& known, const torch::Tensor& y, const std::vector<double>& sigmas,
                         const EditNoise& noise, const NoiseRange& r, const torch::Tensor& labels, bool clip) {
  if (sigmas.empty()) throw std::invalid_argument("edit: no noise levels");
  const torch::Tensor y0 = known.project(y);
  return chain(f, y0 + sigmas[0] * noise(0), sigmas, noise, r, labels, [&](const torch::Tensor& x) { return known.impose(x, y0); }, "edit", clip);
}

torch::Tensor denoise_from(const ConsistencyFn& f, const torch::Tensor& x_start, const std::vector<double>& sigmas, const EditNoise& noise,
                           const NoiseRange& r, const torch::Tensor& labels, bool clip) {
  return chain(f, x_start, sigmas, noise, r, labels, [](const torch::Tensor& x) { return x; }, "denoise", clip);
}

torch::Tensor slerp(const torch::Tensor& z0, const torch::Tensor& z1, double alpha) {
  if (!z0.sizes().equals(z1.sizes())) throw std::invalid_argument("slerp: the two noises differ in shape");
  auto a = z0.to(torch::kFloat64), b = z1.to(torch::kFloat64);
  const double na = a.norm().item<double>(), nb = b.norm().item<double>();
  if (na == 0 || nb == 0) throw std::invalid_argument("slerp: a zero noise vector has no direction");
  const double cosv = std::clamp((a * b).sum().item<double>() / (na * nb), -1.0, 1.0);
  const double theta = std::acos(cosv);
  torch::Tensor out;
  if (std::sin(theta) < 1e-8) out = (1 - alpha) * a + alpha * b;  // (anti)parallel: the chord is the arc
  else out = (std::sin((1 - alpha) * theta) * a + std::sin(alpha * theta) * b) / std::sin(theta);
  return out.to(z0.scalar_type());
}

const std::vector<std::string>& preset_mask_names() {
  static const std::vector<std::string> names = {"center", "left", "right", "top", "bottom", "stripes"};
  return names;
}

torch::Tensor preset_mask(const std::string& name, int64_t h, int64_t w) {
  auto m = torch::ones({h, w});
  if (name == "center") m.slice(0, h / 4, h - h / 4).slice(1, w / 4, w - w / 4).zero_();
  else if (name == "left") m.slice(1, 0, w / 2).zero_();
  else if (name == "right") m.slice(1, w / 2, w).zero_();
  else if (name == "top") m.slice(0, 0, h / 2).zero_();
  else if (name == "bottom") m.slice(0, h / 2, h).zero_();
  else if (name == "stripes") {
    const int64_t band = std::max<int64_t>(1, h / 8);
    for (int64_t c = band; c < w; c += 2 * band) m.slice(1, c, std::min(w, c + band)).zero_();
  } else {
    std::string all;
    for (auto& n : preset_mask_names()) all += (all.empty() ? "" : ", ") + n;
    throw std::invalid_argument(fmt::format("unknown mask preset '{}' (presets: {})", name, all));
  }
  return m;
}

}  // namespace cm
