// PNG encoding and decoding with libpng, shared by core's pictures (write_png, read_png) and the dataset
// converters (datasets/image_codec.h): one encoder, one decoder.
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace cm {

// 8-bit samples, rows of width * channels bytes (HWC).
struct PngPixels {
  int64_t height = 0, width = 0, channels = 0;
  std::vector<uint8_t> pixels;
};

// PNG bytes of 8-bit HWC pixels: channels 1 (grey), 2 (grey + alpha), 3 (RGB) or 4 (RGBA). Throws
// std::invalid_argument for another channel count, std::runtime_error when libpng fails.
std::string png_encode(const uint8_t* pixels, int64_t height, int64_t width, int64_t channels);

// Decodes PNG bytes to 8-bit samples as Pillow does: 16-bit samples keep their high byte, palettes and
// low-depth grey are expanded, interlacing is undone, no gamma is applied; alpha is kept (`keep_alpha`:
// 1 to 4 channels) or dropped without compositing (1 or 3 channels). Refuses, before allocating, an image
// of more than `max_pixels` pixels. Throws std::runtime_error "<origin>: corrupt PNG: <what>".
PngPixels png_decode(const uint8_t* data, size_t n, const std::string& origin, bool keep_alpha, int64_t max_pixels);

}  // namespace cm
