// Image decoding (JPEG via libjpeg, PNG via libpng, WebP via libwebp; chosen by magic bytes, not by file
// name) and PNG encoding. Decoding reproduces what Pillow gives for Image.open(f).convert("RGB") (or
// "L"), because the reference preprocessing is written with Pillow: same libjpeg settings (integer DCT,
// fancy upsampling), alpha dropped rather than composited, palettes expanded, no gamma correction, and
// Pillow's formulas for CMYK -> RGB and RGB -> L.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace cm::data {

// 8-bit pixels, rows of width * channels bytes (HWC).
struct Image {
  int64_t height = 0, width = 0, channels = 0;
  std::vector<uint8_t> pixels;

  Image() = default;
  Image(int64_t h, int64_t w, int64_t c) : height(h), width(w), channels(c), pixels(size_t(h * w * c)) {}
  uint8_t* row(int64_t y) { return pixels.data() + size_t(y * width * channels); }
  const uint8_t* row(int64_t y) const { return pixels.data() + size_t(y * width * channels); }
  uint8_t& at(int64_t y, int64_t x, int64_t c) { return pixels[size_t((y * width + x) * channels + c)]; }
  uint8_t at(int64_t y, int64_t x, int64_t c) const { return pixels[size_t((y * width + x) * channels + c)]; }
};

enum class ImageFormat { unknown, jpeg, png, webp };
ImageFormat sniff_image(const uint8_t* data, size_t n);
const char* format_name(ImageFormat f);

// Decodes to `channels` = 3 (RGB) or 1 (L). Throws std::runtime_error naming `origin` (file / record)
// for corrupt, truncated or unsupported data.
Image decode_image(const uint8_t* data, size_t n, int64_t channels, const std::string& origin);

// PNG bytes of an 8-bit image with 1, 3 or 4 channels.
std::string encode_png(const Image& img);

}  // namespace cm::data
