// PNG, grids and scatter plots (see image.h).
#include "core/image.h"

#include <fmt/format.h>
#include <zlib.h>

#include <stdexcept>
#include <torch/torch.h>
#include "core/safetensors.h"

namespace cm {

namespace {
void put_u32(std::string& s, uint32_t v) {
  for (int i = 3; i >= 0; --i) s += static_cast<char>((v >> (8 * i)) & 0xFF);
}
uint32_t get_u32(const std::string& s, size_t at) {
  uint32_t v = 0;
  for (int i = 0; i < 4; ++i) v = (v << 8) | static_cast<unsigned char>(s.at(at + i));
  return v;
}
void chunk(std::string& out, const char* type, const std::string& data) {
  put_u32(out, static_cast<uint32_t>(data.size()));
  std::string td = std::string(type, 4) + data;
  out += td;
  put_u32(out, static_cast<uint32_t>(crc32(0, reinterpret_cast<const Bytef*>(td.data()), td.size())));
}
}  // namespace

void write_png(const std::string& path, const torch::Tensor& img) {
  auto t = img.to(torch::kCPU).contiguous();
  if (t.dim() == 2) t = t.unsqueeze(2);
  if (t.scalar_type() != torch::kUInt8 || t.dim() != 3)
    throw std::invalid_argument(fmt::format("write_png({}): need uint8 [H, W, C], got {} {}", path,
                                            c10::toString(t.scalar_type()), c10::str(t.sizes())));
  const int64_t h = t.size(0), w = t.size(1), c = t.size(2);
  const int color = c == 1 ? 0 : c == 3 ? 2 : c == 4 ? 6 : -1;
  if (color < 0) throw std::invalid_argument(fmt::format("write_png({}): {} channels (need 1, 3 or 4)", path, c));
  std::string raw;
  raw.reserve(h * (w * c + 1));
  const auto* p = t.data_ptr<uint8_t>();
  for (int64_t y = 0; y < h; ++y) {
    raw += '\0';  // filter: none
    raw.append(reinterpret_cast<const char*>(p + y * w * c), w * c);
  }
  uLongf bound = compressBound(raw.size());
  std::string z(bound, '\0');
  if (compress2(reinterpret_cast<Bytef*>(z.data()), &bound, reinterpret_cast<const Bytef*>(raw.data()), raw.size(), 6) != Z_OK)
    throw std::runtime_error(fmt::format("write_png({}): zlib compression failed", path));
  z.resize(bound);
  std::string png = "\x89PNG\r\n\x1a\n";
  std::string ihdr;
  put_u32(ihdr, static_cast<uint32_t>(w));
  put_u32(ihdr, static_cast<uint32_t>(h));
  ihdr += static_cast<char>(8);
  ihdr += static_cast<char>(color);
  ihdr += std::string("\0\0\0", 3);
  chunk(png, "IHDR", ihdr);
  chunk(png, "IDAT", z);
  chunk(png, "IEND", "");
  write_file_atomic(path, png);
}

torch::Tensor read_png(const std::string& path) {
  std::string s = read_file(path);
  if (s.size() < 8 || s.compare(0, 8, "\x89PNG\r\n\x1a\n") != 0) throw std::runtime_error(path + ": not a PNG file");
  size_t at = 8;
  uint32_t w = 0, h = 0;
  int channels = 0;
  std::string idat;
  while (at + 8 <= s.size()) {
    uint32_t len = get_u32(s, at);
    std::string type = s.substr(at + 4, 4);
    if (at + 12 + len > s.size()) throw std::runtime_error(path + ": truncated PNG chunk " + type);
    std::string data = s.substr(at + 8, len);
    if (type == "IHDR") {
      w = get_u32(data, 0), h = get_u32(data, 4);
      int color = static_cast<unsigned char>(data[9]);
      if (data[8] != 8 || data[12] != 0) throw std::runtime_error(path + ": only 8-bit non-interlaced PNG is supported");
      channels = color == 0 ? 1 : color == 2 ? 3 : color == 6 ? 4 : color == 4 ? 2 : 0;
      if (!channels) throw std::runtime_error(path + ": palette PNG is not supported");
    } else if (type == "IDAT") {
      idat += data;
    }
    at += 12 + len;
  }
  std::string raw(static_cast<size_t>(h) * (w * channels + 1), '\0');
  uLongf n = raw.size();
  if (uncompress(reinterpret_cast<Bytef*>(raw.data()), &n, reinterpret_cast<const Bytef*>(idat.data()), idat.size()) != Z_OK || n != raw.size())
    throw std::runtime_error(path + ": corrupt PNG image data");
  auto out = torch::empty({h, w, channels}, torch::kUInt8);
  auto* o = out.data_ptr<uint8_t>();
  const size_t stride = static_cast<size_t>(w) * channels;
  std::vector<uint8_t> prev(stride, 0), cur(stride);
  for (uint32_t y = 0; y < h; ++y) {
    const uint8_t filter = static_cast<uint8_t>(raw[y * (stride + 1)]);
    const uint8_t* in = reinterpret_cast<const uint8_t*>(raw.data()) + y * (stride + 1) + 1;
    for (size_t x = 0; x < stride; ++x) {
      int a = x >= static_cast<size_t>(channels) ? cur[x - channels] : 0, b = prev[x],
          c = x >= static_cast<size_t>(channels) ? prev[x - channels] : 0;
      int pred = 0;
      switch (filter) {
        case 0: pred = 0; break;
        case 1: pred = a; break;
        case 2: pred = b; break;
        case 3: pred = (a + b) / 2; break;
        case 4: {
          int p = a + b - c, pa = std::abs(p - a), pb = std::abs(p - b), pc = std::abs(p - c);
          pred = (pa <= pb && pa <= pc) ? a : (pb <= pc ? b : c);
          break;
        }
        default: throw std::runtime_error(path + ": bad PNG filter type");
      }
      cur[x] = static_cast<uint8_t>(in[x] + pred);
    }
    std::copy(cur.begin(), cur.end(), o + y * stride);
    std::swap(prev, cur);
  }
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
