// JPEG / PNG / WebP decoding to Pillow-equal pixels, and PNG encoding (see image_codec.h).
#include "datasets/image_codec.h"

#include <csetjmp>
#include <cstdio>
#include <cstring>
#include <fmt/format.h>
#include <stdexcept>

#include <jpeglib.h>
#include <jerror.h>
#include <png.h>
#include <webp/decode.h>

namespace cm::data {

ImageFormat sniff_image(const uint8_t* d, size_t n) {
  if (n >= 3 && d[0] == 0xFF && d[1] == 0xD8 && d[2] == 0xFF) return ImageFormat::jpeg;
  if (n >= 8 && std::memcmp(d, "\x89PNG\r\n\x1a\n", 8) == 0) return ImageFormat::png;
  if (n >= 12 && std::memcmp(d, "RIFF", 4) == 0 && std::memcmp(d + 8, "WEBP", 4) == 0) return ImageFormat::webp;
  return ImageFormat::unknown;
}

const char* format_name(ImageFormat f) {
  switch (f) {
    case ImageFormat::jpeg: return "JPEG";
    case ImageFormat::png: return "PNG";
    case ImageFormat::webp: return "WebP";
    default: return "unknown";
  }
}

// Pillow's RGB -> L: L = (19595 R + 38470 G + 7471 B + 0x8000) >> 16 (libImaging/Convert.c, L24).
// A few header bytes can declare a 65535 x 65535 image (12 GB of pixels): the decoders refuse anything above
// this many pixels before allocating. 64 megapixels is far above every dataset here (LSUN and ImageNet
// images are at most a few megapixels) and keeps one decoded image (and its RGB copy) under 400 MB.
constexpr int64_t kMaxImagePixels = int64_t(1) << 26;

static bool too_large(int64_t w, int64_t h) { return w <= 0 || h <= 0 || w > kMaxImagePixels / h; }

static std::string size_error(const std::string& origin, const char* format, int64_t w, int64_t h) {
  return fmt::format("{}: {} header declares {} x {} pixels: empty, or above this reader's limit of {} megapixels", origin, format,
                     w, h, kMaxImagePixels >> 20);
}

static Image rgb_to_l(const Image& rgb) {
  Image out(rgb.height, rgb.width, 1);
  const uint8_t* s = rgb.pixels.data();
  for (size_t i = 0; i < out.pixels.size(); ++i, s += 3)
    out.pixels[i] = uint8_t((19595u * s[0] + 38470u * s[1] + 7471u * s[2] + 0x8000u) >> 16);
  return out;
}

static Image l_to_rgb(const Image& l) {
  Image out(l.height, l.width, 3);
  for (size_t i = 0; i < l.pixels.size(); ++i) out.pixels[3 * i] = out.pixels[3 * i + 1] = out.pixels[3 * i + 2] = l.pixels[i];
  return out;
}

static Image to_channels(Image img, int64_t channels) {
  if (img.channels == channels) return img;
  if (img.channels == 3 && channels == 1) return rgb_to_l(img);
  if (img.channels == 1 && channels == 3) return l_to_rgb(img);
  throw std::logic_error("unsupported channel conversion");
}

// --------------------------------------------------------------------------------------------- JPEG

namespace {
struct JpegError {
  jpeg_error_mgr mgr;
  jmp_buf jump;
  char message[JMSG_LENGTH_MAX] = {0};
  bool truncated = false;
};

void jpeg_fail(j_common_ptr cinfo) {
  auto* err = reinterpret_cast<JpegError*>(cinfo->err);
  (*cinfo->err->format_message)(cinfo, err->message);
  longjmp(err->jump, 1);
}

// Warnings: Pillow decodes through most of them, but a premature end of data means a truncated file, which
// Pillow reports as an error ("image file is truncated"); so do we.
void jpeg_warn(j_common_ptr cinfo, int level) {
  auto* err = reinterpret_cast<JpegError*>(cinfo->err);
  if (level < 0 && cinfo->err->msg_code == JWRN_JPEG_EOF) {
    err->truncated = true;
    (*cinfo->err->format_message)(cinfo, err->message);
  }
}
}  // namespace

static Image decode_jpeg(const uint8_t* data, size_t n, const std::string& origin) {
  jpeg_decompress_struct cinfo;
  JpegError err;
  cinfo.err = jpeg_std_error(&err.mgr);
  err.mgr.error_exit = jpeg_fail;
  err.mgr.emit_message = jpeg_warn;
  // Objects with destructors live outside the setjmp region: a longjmp must not skip their construction.
  Image img;
  std::vector<uint8_t> raw;
  if (setjmp(err.jump)) {
    jpeg_destroy_decompress(&cinfo);
    throw std::runtime_error(fmt::format("{}: corrupt JPEG: {}", origin, err.message));
  }
  jpeg_create_decompress(&cinfo);
  jpeg_mem_src(&cinfo, data, static_cast<unsigned long>(n));
  jpeg_read_header(&cinfo, TRUE);
  // Pillow's modes: 1 component -> L, 3 -> RGB, 4 -> CMYK read as Adobe-inverted "CMYK;I".
  const int comps = cinfo.num_components;
  if (comps == 1) {
    cinfo.out_color_space = JCS_GRAYSCALE;
  } else if (comps == 3) {
    cinfo.out_color_space = JCS_RGB;
  } else if (comps == 4) {
    cinfo.out_color_space = JCS_CMYK;
  } else {
    jpeg_destroy_decompress(&cinfo);
    throw std::runtime_error(fmt::format("{}: JPEG with {} components is not supported", origin, comps));
  }
  if (too_large(cinfo.image_width, cinfo.image_height)) {
    const std::string msg = size_error(origin, "JPEG", cinfo.image_width, cinfo.image_height);
    jpeg_destroy_decompress(&cinfo);
    throw std::runtime_error(msg);
  }
  jpeg_start_decompress(&cinfo);
  const int oc = cinfo.output_components;
  raw.resize(size_t(cinfo.output_width) * cinfo.output_height * oc);
  while (cinfo.output_scanline < cinfo.output_height) {
    JSAMPROW row = raw.data() + size_t(cinfo.output_scanline) * cinfo.output_width * oc;
    jpeg_read_scanlines(&cinfo, &row, 1);
  }
  const int64_t h = cinfo.output_height, w = cinfo.output_width;
  jpeg_finish_decompress(&cinfo);
  jpeg_destroy_decompress(&cinfo);
  if (err.truncated) throw std::runtime_error(fmt::format("{}: truncated JPEG ({})", origin, err.message));
  if (oc != 4) {
    img.height = h, img.width = w, img.channels = oc;
    img.pixels = std::move(raw);
    return img;
  }
  // Pillow: "CMYK;I" inverts the samples, then cmyk2rgb: nk = 255 - K, R = nk - C * nk / 255 (rounded as
  // MULDIV255: t = a * b + 128; ((t >> 8) + t) >> 8).
  img = Image(h, w, 3);
  for (int64_t i = 0; i < h * w; ++i) {
    const uint8_t* s = &raw[size_t(4 * i)];
    const int nk = s[3];  // 255 - (255 - k)
    for (int c = 0; c < 3; ++c) {
      const int t = (255 - s[c]) * nk + 128;
      int v = nk - (((t >> 8) + t) >> 8);
      img.pixels[size_t(3 * i + c)] = uint8_t(v < 0 ? 0 : v > 255 ? 255 : v);
    }
  }
  return img;
}

// ---------------------------------------------------------------------------------------------- PNG

namespace {
struct PngSource {
  const uint8_t* data;
  size_t size, pos;
};
struct PngError {
  std::string message;
};
void png_fail(png_structp png, png_const_charp msg) {
  auto* e = static_cast<PngError*>(png_get_error_ptr(png));
  e->message = msg;
  png_longjmp(png, 1);
}
void png_quiet(png_structp, png_const_charp) {}
void png_read_mem(png_structp png, png_bytep out, png_size_t n) {
  auto* s = static_cast<PngSource*>(png_get_io_ptr(png));
  if (s->pos + n > s->size) png_error(png, "unexpected end of data (truncated file)");
  std::memcpy(out, s->data + s->pos, n);
  s->pos += n;
}
}  // namespace

static Image decode_png(const uint8_t* data, size_t n, const std::string& origin) {
  PngError err;
  png_structp png = png_create_read_struct(PNG_LIBPNG_VER_STRING, &err, png_fail, png_quiet);
  if (!png) throw std::runtime_error(origin + ": out of memory");
  png_infop info = png_create_info_struct(png);
  PngSource src{data, n, 0};
  Image img;
  std::vector<png_bytep> rows;
  if (setjmp(png_jmpbuf(png))) {
    png_destroy_read_struct(&png, &info, nullptr);
    throw std::runtime_error(fmt::format("{}: corrupt PNG: {}", origin, err.message));
  }
  png_set_read_fn(png, &src, png_read_mem);
  png_read_info(png, info);
  const int color = png_get_color_type(png, info), depth = png_get_bit_depth(png, info);
  // Pillow keeps the high byte of 16-bit samples, expands palettes and low-depth grey, and drops alpha
  // without compositing it; it applies no gamma.
  if (depth == 16) png_set_strip_16(png);
  if (color == PNG_COLOR_TYPE_PALETTE) png_set_palette_to_rgb(png);
  if (color == PNG_COLOR_TYPE_GRAY && depth < 8) png_set_expand_gray_1_2_4_to_8(png);
  png_set_strip_alpha(png);
  png_set_interlace_handling(png);
  png_read_update_info(png, info);
  const int64_t w = png_get_image_width(png, info), h = png_get_image_height(png, info);
  const int ch = png_get_channels(png, info);
  if (ch != 1 && ch != 3) png_error(png, "unexpected channel count after expansion");
  if (too_large(w, h)) {
    err.message = fmt::format("declares {} x {} pixels: empty, or above this reader's limit of {} megapixels", w, h, kMaxImagePixels >> 20);
    png_longjmp(png, 1);  // no C++ temporary alive across the jump
  }
  img = Image(h, w, ch);
  rows.resize(size_t(h));
  for (int64_t y = 0; y < h; ++y) rows[size_t(y)] = img.row(y);
  png_read_image(png, rows.data());
  png_read_end(png, nullptr);
  png_destroy_read_struct(&png, &info, nullptr);
  return img;
}

namespace {
void png_write_mem(png_structp png, png_bytep data, png_size_t n) {
  static_cast<std::string*>(png_get_io_ptr(png))->append(reinterpret_cast<const char*>(data), n);
}
void png_flush_mem(png_structp) {}
}  // namespace

std::string encode_png(const Image& img) {
  int color;
  switch (img.channels) {
    case 1: color = PNG_COLOR_TYPE_GRAY; break;
    case 3: color = PNG_COLOR_TYPE_RGB; break;
    case 4: color = PNG_COLOR_TYPE_RGB_ALPHA; break;
    default: throw std::invalid_argument(fmt::format("encode_png: {} channels (1, 3 or 4 expected)", img.channels));
  }
  PngError err;
  png_structp png = png_create_write_struct(PNG_LIBPNG_VER_STRING, &err, png_fail, png_quiet);
  png_infop info = png_create_info_struct(png);
  std::string out;
  std::vector<png_bytep> rows(size_t(img.height));
  if (setjmp(png_jmpbuf(png))) {
    png_destroy_write_struct(&png, &info);
    throw std::runtime_error("PNG encoding failed: " + err.message);
  }
  png_set_write_fn(png, &out, png_write_mem, png_flush_mem);
  png_set_IHDR(png, info, png_uint_32(img.width), png_uint_32(img.height), 8, color, PNG_INTERLACE_NONE,
               PNG_COMPRESSION_TYPE_DEFAULT, PNG_FILTER_TYPE_DEFAULT);
  png_write_info(png, info);
  for (int64_t y = 0; y < img.height; ++y) rows[size_t(y)] = const_cast<png_bytep>(img.row(y));
  png_write_image(png, rows.data());
  png_write_end(png, nullptr);
  png_destroy_write_struct(&png, &info);
  return out;
}

// --------------------------------------------------------------------------------------------- WebP

static Image decode_webp(const uint8_t* data, size_t n, const std::string& origin) {
  int w = 0, h = 0;
  if (!WebPGetInfo(data, n, &w, &h)) throw std::runtime_error(fmt::format("{}: corrupt WebP header", origin));
  if (too_large(w, h)) throw std::runtime_error(size_error(origin, "WebP", w, h));
  Image img(h, w, 3);
  // Default decoder settings (fancy upsampling), as Pillow's WebP plugin uses; alpha, if any, is dropped.
  if (!WebPDecodeRGBInto(data, n, img.pixels.data(), img.pixels.size(), int(w * 3)))
    throw std::runtime_error(fmt::format("{}: corrupt or truncated WebP data", origin));
  return img;
}

Image decode_image(const uint8_t* data, size_t n, int64_t channels, const std::string& origin) {
  if (channels != 1 && channels != 3) throw std::invalid_argument("decode_image: channels must be 1 or 3");
  switch (sniff_image(data, n)) {
    case ImageFormat::jpeg: return to_channels(decode_jpeg(data, n, origin), channels);
    case ImageFormat::png: return to_channels(decode_png(data, n, origin), channels);
    case ImageFormat::webp: return to_channels(decode_webp(data, n, origin), channels);
    default: break;
  }
  throw std::runtime_error(fmt::format("{}: not a JPEG, PNG or WebP image ({} bytes; first bytes {:02x})", origin, n,
                                       fmt::join(data, data + std::min<size_t>(n, 8), " ")));
}

}  // namespace cm::data
