// PNG through libpng (see png.h). libpng reports errors through a callback that must not return: it
// longjmps back to the setjmp of the calling function, so objects with destructors are made before it.
#include "core/io/png.h"

#include <png.h>

#include <csetjmp>
#include <cstring>
#include <fmt/format.h>
#include <stdexcept>

namespace cm {

namespace {
struct PngSource {
  const uint8_t* data;
  size_t size, pos;
};
struct PngError {
  std::string message;
};
void png_fail(png_structp png, png_const_charp msg) {
  static_cast<PngError*>(png_get_error_ptr(png))->message = msg;
  png_longjmp(png, 1);
}
void png_quiet(png_structp, png_const_charp) {}
void png_read_mem(png_structp png, png_bytep out, png_size_t n) {
  auto* s = static_cast<PngSource*>(png_get_io_ptr(png));
  if (n > s->size - s->pos) png_error(png, "unexpected end of data (truncated file)");
  std::memcpy(out, s->data + s->pos, n);
  s->pos += n;
}
void png_write_mem(png_structp png, png_bytep data, png_size_t n) {
  static_cast<std::string*>(png_get_io_ptr(png))->append(reinterpret_cast<const char*>(data), n);
}
void png_flush_mem(png_structp) {}

int color_type(int64_t channels) {
  switch (channels) {
    case 1: return PNG_COLOR_TYPE_GRAY;
    case 2: return PNG_COLOR_TYPE_GRAY_ALPHA;
    case 3: return PNG_COLOR_TYPE_RGB;
    case 4: return PNG_COLOR_TYPE_RGB_ALPHA;
    default: throw std::invalid_argument(fmt::format("png_encode: {} channels (1 to 4 expected)", channels));
  }
}

// The transforms to 8-bit samples (see png.h), then the header of the image they give.
void set_transforms(png_structp png, png_infop info, bool keep_alpha) {
  png_read_info(png, info);
  const int color = png_get_color_type(png, info), depth = png_get_bit_depth(png, info);
  if (depth == 16) png_set_strip_16(png);
  if (color == PNG_COLOR_TYPE_PALETTE) png_set_palette_to_rgb(png);
  if (color == PNG_COLOR_TYPE_GRAY && depth < 8) png_set_expand_gray_1_2_4_to_8(png);
  if (!keep_alpha) png_set_strip_alpha(png);
  png_set_interlace_handling(png);
  png_read_update_info(png, info);
}
}  // namespace

std::string png_encode(const uint8_t* pixels, int64_t height, int64_t width, int64_t channels) {
  const int color = color_type(channels);
  PngError err;
  png_structp png = png_create_write_struct(PNG_LIBPNG_VER_STRING, &err, png_fail, png_quiet);
  if (!png) throw std::runtime_error("PNG encoding failed: out of memory");
  png_infop info = png_create_info_struct(png);
  std::string out;
  std::vector<png_bytep> rows(static_cast<size_t>(height));
  if (setjmp(png_jmpbuf(png))) {
    png_destroy_write_struct(&png, &info);
    throw std::runtime_error("PNG encoding failed: " + err.message);
  }
  png_set_write_fn(png, &out, png_write_mem, png_flush_mem);
  png_set_IHDR(png, info, png_uint_32(width), png_uint_32(height), 8, color, PNG_INTERLACE_NONE, PNG_COMPRESSION_TYPE_DEFAULT,
               PNG_FILTER_TYPE_DEFAULT);
  png_write_info(png, info);
  for (int64_t y = 0; y < height; ++y) rows[size_t(y)] = const_cast<png_bytep>(pixels + size_t(y * width * channels));
  png_write_image(png, rows.data());
  png_write_end(png, nullptr);
  png_destroy_write_struct(&png, &info);
  return out;
}

PngPixels png_decode(const uint8_t* data, size_t n, const std::string& origin, bool keep_alpha, int64_t max_pixels) {
  PngError err;
  png_structp png = png_create_read_struct(PNG_LIBPNG_VER_STRING, &err, png_fail, png_quiet);
  if (!png) throw std::runtime_error(origin + ": out of memory");
  png_infop info = png_create_info_struct(png);
  PngSource src{data, n, 0};
  PngPixels img;
  std::vector<png_bytep> rows;
  if (setjmp(png_jmpbuf(png))) {
    png_destroy_read_struct(&png, &info, nullptr);
    throw std::runtime_error(fmt::format("{}: corrupt PNG: {}", origin, err.message));
  }
  png_set_read_fn(png, &src, png_read_mem);
  set_transforms(png, info, keep_alpha);
  const int64_t w = png_get_image_width(png, info), h = png_get_image_height(png, info);
  const int ch = png_get_channels(png, info);
  if (ch < 1 || ch > 4 || (!keep_alpha && ch != 1 && ch != 3)) png_error(png, "unexpected channel count after expansion");
  if (w <= 0 || h <= 0 || w > max_pixels / h) {
    err.message = fmt::format("declares {} x {} pixels: empty, or above this reader's limit of {} megapixels", w, h, max_pixels >> 20);
    png_longjmp(png, 1);  // no C++ temporary alive across the jump
  }
  img.height = h, img.width = w, img.channels = ch;
  img.pixels.resize(size_t(h * w * ch));
  rows.resize(size_t(h));
  for (int64_t y = 0; y < h; ++y) rows[size_t(y)] = img.pixels.data() + size_t(y * w * ch);
  png_read_image(png, rows.data());
  png_read_end(png, nullptr);
  png_destroy_read_struct(&png, &info, nullptr);
  return img;
}

}  // namespace cm
