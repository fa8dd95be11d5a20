// JPEG / PNG / WebP decoding to Pillow-equal pixels, and PNG encoding (see image_codec.h): libjpeg and
// libwebp here, libpng through core/io/png.h. Written here: only the glue to those libraries and Pillow's
// colour conversions (RGB -> L, inverted CMYK -> RGB), which none of them gives bit for bit.
#include "datasets/image_codec.h"

#include <csetjmp>
#include <cstdio>
#include <cstring>
#include <fmt/format.h>
#include <stdexcept>

#include <jpeglib.h>
#include <jerror.h>
#include <webp/decode.h>
#include "core/io/png.h"

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

// Pillow's modes: 1 component -> L, 3 -> RGB, 4 -> CMYK read as Adobe-inverted "CMYK;I"; others unknown.
static J_COLOR_SPACE jpeg_color_space(int components) {
  switch (components) {
    case 1: return JCS_GRAYSCALE;
    case 3: return JCS_RGB;
    case 4: return JCS_CMYK;
    default: return JCS_UNKNOWN;
  }
}

// Pillow: "CMYK;I" inverts the samples, then cmyk2rgb: nk = 255 - K, R = nk - C * nk / 255 (rounded as
// MULDIV255: t = a * b + 128; ((t >> 8) + t) >> 8).
static Image inverted_cmyk_to_rgb(const std::vector<uint8_t>& raw, int64_t h, int64_t w) {
  Image img(h, w, 3);
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
  const int comps = cinfo.num_components;
  cinfo.out_color_space = jpeg_color_space(comps);
  if (cinfo.out_color_space == JCS_UNKNOWN) {
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
  if (oc == 4) return inverted_cmyk_to_rgb(raw, h, w);
  img.height = h, img.width = w, img.channels = oc;
  img.pixels = std::move(raw);
  return img;
}

// ---------------------------------------------------------------------------------------------- PNG
// libpng through core's one PNG module (core/io/png.h), with Pillow's transforms and alpha dropped.

static Image decode_png(const uint8_t* data, size_t n, const std::string& origin) {
  PngPixels p = png_decode(data, n, origin, /*keep_alpha=*/false, kMaxImagePixels);
  Image img;
  img.height = p.height, img.width = p.width, img.channels = p.channels;
  img.pixels = std::move(p.pixels);
  return img;
}

std::string encode_png(const Image& img) {
  if (img.channels != 1 && img.channels != 3 && img.channels != 4)
    throw std::invalid_argument(fmt::format("encode_png: {} channels (1, 3 or 4 expected)", img.channels));
  return png_encode(img.pixels.data(), img.height, img.width, img.channels);
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
