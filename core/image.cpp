// PNG files (encoded and decoded by libpng, core/io/png.h), grids and scatter plots (see image.h).
#include "core/image.h"

#include <cstring>
#include <fmt/format.h>
#include <stdexcept>
#include <torch/torch.h>
#include "core/io/png.h"
#include "core/io/safetensors.h"

namespace cm {

// read_png is for tests and tools: 256 megapixels (1 GiB of RGBA) is far above any picture they read.
constexpr int64_t kMaxReadPixels = int64_t(1) << 28;

void write_png(const std::string& path, const torch::Tensor& img) {
  auto t = img.to(torch::kCPU).contiguous();
  if (t.dim() == 2) t = t.unsqueeze(2);
  if (t.scalar_type() != torch::kUInt8 || t.dim() != 3)
    throw std::invalid_argument(fmt::format("write_png({}): need uint8 [H, W, C], got {} {}", path,
                                            c10::toString(t.scalar_type()), c10::str(t.sizes())));
  const int64_t c = t.size(2);
  if (c != 1 && c != 3 && c != 4) throw std::invalid_argument(fmt::format("write_png({}): {} channels (need 1, 3 or 4)", path, c));
  std::string png;
  try {
    png = png_encode(t.data_ptr<uint8_t>(), t.size(0), t.size(1), c);
  } catch (const std::runtime_error& e) {
    throw std::runtime_error(fmt::format("write_png({}): {}", path, e.what()));
  }
  write_file_atomic(path, png);
}

torch::Tensor read_png(const std::string& path) {
  const std::string s = read_file(path);
  if (s.size() < 8 || s.compare(0, 8, "\x89PNG\r\n\x1a\n") != 0) throw std::runtime_error(path + ": not a PNG file");
  PngPixels p = png_decode(reinterpret_cast<const uint8_t*>(s.data()), s.size(), path, /*keep_alpha=*/true, kMaxReadPixels);
  auto out = torch::empty({p.height, p.width, p.channels}, torch::kUInt8);
  std::memcpy(out.data_ptr<uint8_t>(), p.pixels.data(), p.pixels.size());
  return out;
}

torch::Tensor to_uint8(const torch::Tensor& x) {
  return ((x.detach().to(torch::kFloat32) + 1.0) * 127.5).round().clamp(0, 255).to(torch::kUInt8);
}

torch::Tensor image_grid(const torch::Tensor& nchw, int64_t cols, int64_t pad) {
  auto x = to_uint8(nchw.to(torch::kCPU));
  if (x.size(1) == 1) x = x.expand({x.size(0), 3, x.size(2), x.size(3)});
  const int64_t n = x.size(0), h = x.size(2), w = x.size(3);
  cols = std::max<int64_t>(1, std::min(cols, n));
  const int64_t rows = (n + cols - 1) / cols;
  auto grid = torch::full({rows * (h + pad) + pad, cols * (w + pad) + pad, 3}, 255, torch::kUInt8);
  for (int64_t i = 0; i < n; ++i) {
    const int64_t r = i / cols, c = i % cols;
    grid.narrow(0, pad + r * (h + pad), h).narrow(1, pad + c * (w + pad), w).copy_(x[i].permute({1, 2, 0}));
  }
  return grid;
}

torch::Tensor scatter_plot(const torch::Tensor& data, const torch::Tensor& samples, int64_t size, double extent) {
  auto img = torch::full({size, size, 3}, 255, torch::kUInt8);
  auto* p = img.data_ptr<uint8_t>();
  auto draw = [&](const torch::Tensor& pts, uint8_t r, uint8_t g, uint8_t b) {
    auto q = pts.to(torch::kCPU, torch::kFloat64).contiguous();
    auto* d = q.data_ptr<double>();
    for (int64_t i = 0; i < q.size(0); ++i) {
      const int64_t x = static_cast<int64_t>((d[2 * i] + extent) / (2 * extent) * (size - 1));
      const int64_t y = static_cast<int64_t>((extent - d[2 * i + 1]) / (2 * extent) * (size - 1));
      for (int64_t dy = 0; dy <= 1; ++dy)
        for (int64_t dx = 0; dx <= 1; ++dx) {
          const int64_t xx = x + dx, yy = y + dy;
          if (xx < 0 || yy < 0 || xx >= size || yy >= size) continue;
          uint8_t* px = p + (yy * size + xx) * 3;
          px[0] = r, px[1] = g, px[2] = b;
        }
    }
  };
  // Axes through the origin, light grey.
  for (int64_t i = 0; i < size; ++i) {
    for (int c = 0; c < 3; ++c) p[(size / 2 * size + i) * 3 + c] = p[(i * size + size / 2) * 3 + c] = 225;
  }
  draw(data, 150, 150, 150);
  draw(samples, 220, 30, 30);
  return img;
}

torch::Tensor hconcat(const std::vector<torch::Tensor>& imgs, int64_t gap) {
  std::vector<torch::Tensor> parts;
  for (size_t i = 0; i < imgs.size(); ++i) {
    if (i) parts.push_back(torch::full({imgs[i].size(0), gap, imgs[i].size(2)}, 255, torch::kUInt8));
    parts.push_back(imgs[i]);
  }
  return torch::cat(parts, 1);
}

}  // namespace cm
