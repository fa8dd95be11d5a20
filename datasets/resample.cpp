// Pillow-exact resampling (see resample.h). The arithmetic follows libImaging/Resample.c step by step;
// the order of floating-point operations is kept as there so the fixed-point weights come out the same.
#include "datasets/resample.h"

#include <algorithm>
#include <cmath>
#include <fmt/format.h>
#include <stdexcept>
#include <vector>

namespace cm::data {

namespace {

constexpr int kPrecisionBits = 32 - 8 - 2;

double box_filter(double x) { return (x > -0.5 && x <= 0.5) ? 1.0 : 0.0; }

double bicubic_filter(double x) {
  constexpr double a = -0.5;
  if (x < 0.0) x = -x;
  if (x < 1.0) return ((a + 2.0) * x - (a + 3.0)) * x * x + 1;
  if (x < 2.0) return (((x - 5) * x + 8) * x - 4) * a;
  return 0.0;
}

// Per output pixel: the first input pixel, how many follow, and their fixed-point weights.
struct Coefficients {
  int ksize = 0;
  std::vector<int> first, count;
  std::vector<int32_t> weights;  // [out][ksize]
};

Coefficients precompute(int in_size, int out_size, ResampleFilter f) {
  const double support_base = f == ResampleFilter::box ? 0.5 : 2.0;
  double (*filter)(double) = f == ResampleFilter::box ? box_filter : bicubic_filter;
  double scale = double(float(in_size) - 0.0f) / out_size;  // box (0, in_size) is float in Pillow
  double filterscale = scale < 1.0 ? 1.0 : scale;
  const double support = support_base * filterscale;
  Coefficients c;
  c.ksize = int(std::ceil(support)) * 2 + 1;
  c.first.resize(size_t(out_size));
  c.count.resize(size_t(out_size));
  c.weights.assign(size_t(out_size) * size_t(c.ksize), 0);
  std::vector<double> k(size_t(c.ksize));
  for (int xx = 0; xx < out_size; ++xx) {
    const double center = 0.0 + (xx + 0.5) * scale;
    const double ss = 1.0 / filterscale;
    int xmin = int(center - support + 0.5);  // (int) truncates, as in C
    if (xmin < 0) xmin = 0;
    int xmax = int(center + support + 0.5);
    if (xmax > in_size) xmax = in_size;
    xmax -= xmin;
    double ww = 0.0;
    for (int x = 0; x < xmax; ++x) {
      const double w = filter((x + xmin - center + 0.5) * ss);
      k[size_t(x)] = w;
      ww += w;
    }
    for (int x = 0; x < xmax; ++x) {
      if (ww != 0.0) k[size_t(x)] /= ww;
    }
    int32_t* out = &c.weights[size_t(xx) * size_t(c.ksize)];
    for (int x = 0; x < xmax; ++x) {
      const double v = k[size_t(x)];
      out[x] = v < 0 ? int32_t(-0.5 + v * (1 << kPrecisionBits)) : int32_t(0.5 + v * (1 << kPrecisionBits));
    }
    c.first[size_t(xx)] = xmin;
    c.count[size_t(xx)] = xmax;
  }
  return c;
}

inline uint8_t clip8(int32_t v) {
  const int32_t s = v >> kPrecisionBits;  // arithmetic shift: floor, as Pillow's lookup index
  return uint8_t(s < 0 ? 0 : s > 255 ? 255 : s);
}

// Rows [row0, row0 + rows) of `in`, resampled horizontally.
Image horizontal(const Image& in, int row0, int rows, const Coefficients& c) {
  const int64_t ch = in.channels, out_w = int64_t(c.first.size());
  Image out(rows, out_w, ch);
  std::vector<int32_t> acc(static_cast<size_t>(ch));
  for (int y = 0; y < rows; ++y) {
    const uint8_t* src = in.row(row0 + y);
    uint8_t* dst = out.row(y);
    for (int64_t xx = 0; xx < out_w; ++xx) {
      const int32_t* k = &c.weights[size_t(xx) * size_t(c.ksize)];
      const uint8_t* p = src + int64_t(c.first[size_t(xx)]) * ch;
      std::fill(acc.begin(), acc.end(), 1 << (kPrecisionBits - 1));
      for (int x = 0; x < c.count[size_t(xx)]; ++x, p += ch)
        for (int64_t ci = 0; ci < ch; ++ci) acc[size_t(ci)] += int32_t(p[ci]) * k[x];
      for (int64_t ci = 0; ci < ch; ++ci) dst[xx * ch + ci] = clip8(acc[size_t(ci)]);
    }
  }
  return out;
}

// Vertical pass; `shift` is subtracted from the first-row indices (rows the horizontal pass skipped).
Image vertical(const Image& in, const Coefficients& c, int shift) {
  const int64_t ch = in.channels, w = in.width, out_h = int64_t(c.first.size());
  Image out(out_h, w, ch);
  std::vector<int32_t> acc(size_t(w * ch));
  for (int64_t yy = 0; yy < out_h; ++yy) {
    const int32_t* k = &c.weights[size_t(yy) * size_t(c.ksize)];
    const int ymin = c.first[size_t(yy)] - shift;
    std::fill(acc.begin(), acc.end(), 1 << (kPrecisionBits - 1));
    for (int y = 0; y < c.count[size_t(yy)]; ++y) {
      const uint8_t* src = in.row(ymin + y);
      const int32_t kv = k[y];
      for (int64_t i = 0; i < w * ch; ++i) acc[size_t(i)] += int32_t(src[i]) * kv;
    }
    uint8_t* dst = out.row(yy);
    for (int64_t i = 0; i < w * ch; ++i) dst[i] = clip8(acc[size_t(i)]);
  }
  return out;
}

}  // namespace

Image pillow_resize(const Image& in, int64_t width, int64_t height, ResampleFilter filter) {
  if (width <= 0 || height <= 0 || in.width <= 0 || in.height <= 0)
    throw std::invalid_argument(fmt::format("resize {}x{} -> {}x{}: sizes must be positive", in.width, in.height, width, height));
  if (width == in.width && height == in.height) return in;  // Pillow returns a copy
  const bool need_h = width != in.width, need_v = height != in.height;
  Coefficients ch = precompute(int(in.width), int(width), filter);
  Coefficients cv = precompute(int(in.height), int(height), filter);
  // Pillow resamples horizontally only the input rows the vertical pass will use.
  const int first_row = cv.first.front();
  const int last_row = cv.first.back() + cv.count.back();
  if (need_h) {
    Image tmp = horizontal(in, first_row, last_row - first_row, ch);
    return need_v ? vertical(tmp, cv, first_row) : tmp;
  }
  return vertical(in, cv, 0);
}

int64_t py_round(double x) { return int64_t(std::nearbyint(x)); }

Image crop(const Image& in, int64_t y0, int64_t x0, int64_t h, int64_t w) {
  if (y0 < 0 || x0 < 0 || y0 + h > in.height || x0 + w > in.width)
    throw std::invalid_argument(fmt::format("crop {}x{} at ({}, {}) outside a {}x{} image", w, h, x0, y0, in.width, in.height));
  Image out(h, w, in.channels);
  for (int64_t y = 0; y < h; ++y)
    std::copy_n(in.row(y0 + y) + x0 * in.channels, w * in.channels, out.row(y));
  return out;
}

Image center_crop_arr(const Image& in, int64_t size) {
  Image img = in;
  while (std::min(img.width, img.height) >= 2 * size)
    img = pillow_resize(img, img.width / 2, img.height / 2, ResampleFilter::box);
  const double scale = double(size) / double(std::min(img.width, img.height));
  img = pillow_resize(img, py_round(double(img.width) * scale), py_round(double(img.height) * scale),
                      ResampleFilter::bicubic);
  return crop(img, (img.height - size) / 2, (img.width - size) / 2, size, size);
}

Image lsun_resize_crop(const Image& in, int64_t size) {
  const double scale = double(size) / double(std::min(in.width, in.height));
  Image img = pillow_resize(in, py_round(scale * double(in.width)), py_round(scale * double(in.height)),
                            ResampleFilter::box);
  return crop(img, (img.height - size) / 2, (img.width - size) / 2, size, size);
}

}  // namespace cm::data
