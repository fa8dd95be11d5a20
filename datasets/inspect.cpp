// Grid pictures, throughput measurements and self-describing datasets (see inspect.h).
#include "datasets/inspect.h"

#include <fcntl.h>
#include <sys/resource.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <filesystem>
#include <fmt/format.h>
#include <stdexcept>

#include "datasets/loader.h"
#include "datasets/shards.h"

namespace fs = std::filesystem;

namespace cm::data {

// ------------------------------------------------------------------------------------------------ grid

namespace {

// 3x5 digits, one row per 3-bit group (bit 2 = left column).
constexpr uint8_t kDigits[10][5] = {
    {7, 5, 5, 5, 7}, {2, 6, 2, 2, 7}, {7, 1, 7, 4, 7}, {7, 1, 7, 1, 7}, {5, 5, 7, 1, 1},
    {7, 4, 7, 1, 7}, {7, 4, 7, 5, 7}, {7, 1, 1, 1, 1}, {7, 5, 7, 5, 7}, {7, 5, 7, 1, 7},
};

void draw_number(Image& img, int64_t value, int64_t x0, int64_t y0, int64_t scale) {
  const std::string s = std::to_string(value);
  for (size_t k = 0; k < s.size(); ++k) {
    if (s[k] < '0' || s[k] > '9') continue;
    const auto& g = kDigits[s[k] - '0'];
    for (int64_t gy = 0; gy < 5; ++gy)
      for (int64_t gx = 0; gx < 3; ++gx) {
        if (!((g[gy] >> (2 - gx)) & 1)) continue;
        for (int64_t dy = 0; dy < scale; ++dy)
          for (int64_t dx = 0; dx < scale; ++dx) {
            const int64_t x = x0 + (int64_t(k) * 4 + gx) * scale + dx, y = y0 + gy * scale + dy;
            if (x < 0 || y < 0 || x >= img.width || y >= img.height) continue;
            for (int64_t c = 0; c < 3; ++c) img.at(y, x, c) = 255;
          }
      }
  }
}

}  // namespace

Image dataset_grid(const std::string& dir, int64_t count, uint64_t seed, int64_t cols, std::vector<int64_t>* captions) {
  Manifest m = read_manifest(dir);
  const auto& d = m.info;
  count = std::min(count, d.total_records);
  cols = std::max<int64_t>(1, std::min(cols, count));
  const int64_t rows = (count + cols - 1) / cols;
  // Small images are enlarged (nearest) so the captions stay readable.
  const int64_t zoom = std::max<int64_t>(1, 64 / std::max(d.height, d.width));
  const int64_t scale = 2, caption_h = 5 * scale + 4, pad = 2;
  const int64_t cw = d.width * zoom, ch = d.height * zoom + caption_h;
  Image grid(rows * (ch + pad) + pad, cols * (cw + pad) + pad, 3);
  std::fill(grid.pixels.begin(), grid.pixels.end(), uint8_t(32));
  auto order = epoch_permutation(d.total_records, seed, 0);
  std::vector<uint8_t> px(size_t(d.image_bytes()));
  std::vector<ShardReader> readers;
  std::vector<std::vector<int64_t>> labels;
  for (const auto& e : m.shards) {
    readers.emplace_back((fs::path(dir) / e.file).string());
    readers.back().check_against(m);
    labels.push_back(readers.back().read_labels());
  }
  if (captions) captions->clear();
  for (int64_t k = 0; k < count; ++k) {
    const int64_t index = order[size_t(k)];
    size_t s = 0;
    while (s + 1 < m.shards.size() && index >= m.shards[s + 1].first_record) ++s;
    const int64_t local = index - m.shards[s].first_record;
    readers[s].read_images(local, 1, px.data());
    const int64_t caption = d.labelled() ? labels[s][size_t(local)] : index;
    if (captions) captions->push_back(caption);
    const int64_t gx = pad + (k % cols) * (cw + pad), gy = pad + (k / cols) * (ch + pad);
    for (int64_t y = 0; y < d.height * zoom; ++y)
      for (int64_t x = 0; x < cw; ++x)
        for (int64_t c = 0; c < 3; ++c) {
          const int64_t sc = d.channels == 1 ? 0 : c;
          grid.at(gy + y, gx + x, c) = px[size_t(((y / zoom) * d.width + x / zoom) * d.channels + sc)];
        }
    draw_number(grid, caption, gx + 2, gy + d.height * zoom + 2, scale);
  }
  return grid;
}

// ----------------------------------------------------------------------------------------------- bench

namespace {
double cpu_s() {
  rusage u{};
  getrusage(RUSAGE_SELF, &u);
  return double(u.ru_utime.tv_sec + u.ru_stime.tv_sec) + 1e-6 * double(u.ru_utime.tv_usec + u.ru_stime.tv_usec);
}
double now_s() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}
std::vector<std::string> shard_paths(const std::string& dir) {
  Manifest m = read_manifest(dir);
  std::vector<std::string> v;
  for (const auto& e : m.shards) v.push_back((fs::path(dir) / e.file).string());
  return v;
}
}  // namespace

LoaderBench bench_loader(const std::string& dir, int64_t batch, double seconds, int64_t threads, const std::string& io,
                         bool flip, bool check_records) {
  LoaderOptions o;
  o.dir = dir;
  o.global_batch = batch;
  o.threads = threads;
  o.io = io;
  o.random_flip = flip;
  o.check_records = check_records;
  ShardedLoader loader(o);
  const int64_t image_bytes = loader.manifest().info.image_bytes();
  for (int i = 0; i < 2; ++i) loader.next();
  LoaderBench r;
  r.direct = loader.direct_io();
  const double t0 = now_s(), c0 = cpu_s();
  do {
    Batch b = loader.next();
    r.images += b.x.size(0);
    r.seconds = now_s() - t0;
  } while (r.seconds < seconds);
  r.cpu_seconds = cpu_s() - c0;
  r.images_per_s = double(r.images) / r.seconds;
  r.bytes_per_s = r.images_per_s * double(image_bytes);
  return r;
}

ReadBench bench_raw_read(const std::string& dir, double max_seconds, bool repeat) {
  ReadBench r;
  std::vector<char> buf(4 << 20);
  const auto paths = shard_paths(dir);
  const double t0 = now_s();
  do {
    for (const auto& path : paths) {
      int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
      if (fd < 0) throw std::runtime_error(fmt::format("cannot open '{}'", path));
      ssize_t got;
      while ((got = ::read(fd, buf.data(), buf.size())) > 0) r.bytes += got;
      ::close(fd);
      r.seconds = now_s() - t0;
      if (r.seconds >= max_seconds) break;
    }
  } while (repeat && r.seconds < max_seconds);
  r.seconds = now_s() - t0;
  r.bytes_per_s = double(r.bytes) / std::max(r.seconds, 1e-9);
  return r;
}

void evict_page_cache(const std::string& dir) {
  for (const auto& path : shard_paths(dir)) {
    int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) continue;
    ::fdatasync(fd);
    ::posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED);
    ::close(fd);
  }
}

// ------------------------------------------------------------------------------------ self-describing

namespace {
constexpr uint8_t kMarker[3] = {7, 77, 177};
uint8_t content(int64_t index, int64_t y, int64_t x, int64_t c) { return uint8_t((index * 31 + y * 7 + x * 3 + c * 11) & 255); }
}  // namespace

void encode_index_image(int64_t index, uint8_t* hwc, int64_t h, int64_t w) {
  if (w < 2 || index < 0 || index >= (int64_t(1) << 24)) throw std::invalid_argument("encode_index_image: width >= 2, index < 2^24");
  for (int64_t y = 0; y < h; ++y)
    for (int64_t x = 0; x < w; ++x)
      for (int64_t c = 0; c < 3; ++c) {
        uint8_t v = content(index, y, x, c);
        if (y == 0 && x == 0) v = uint8_t((index >> (8 * c)) & 255);
        if (y == 0 && x == w - 1) v = kMarker[c];
        hwc[(y * w + x) * 3 + c] = v;
      }
}

std::pair<int64_t, bool> decode_index_image(const float* chw, int64_t h, int64_t w) {
  auto px = [&](int64_t y, int64_t x, int64_t c) {
    const float v = (chw[(c * h + y) * w + x] + 1.0f) * 127.5f;
    return int(std::lround(v));
  };
  const bool flipped = px(0, 0, 0) == kMarker[0] && px(0, 0, 1) == kMarker[1] && px(0, 0, 2) == kMarker[2];
  const int64_t ix = flipped ? w - 1 : 0;
  const int64_t index = int64_t(px(0, ix, 0)) | int64_t(px(0, ix, 1)) << 8 | int64_t(px(0, ix, 2)) << 16;
  std::vector<uint8_t> want(size_t(h * w * 3));
  encode_index_image(index, want.data(), h, w);
  for (int64_t y = 0; y < h; ++y)
    for (int64_t x = 0; x < w; ++x)
      for (int64_t c = 0; c < 3; ++c) {
        const int64_t sx = flipped ? w - 1 - x : x;  // where the stored pixel (y, x) appears
        if (px(y, sx, c) != want[size_t((y * w + x) * 3 + c)])
          throw std::runtime_error(fmt::format("self-describing image {}{}: pixel ({}, {}, {}) is {}, expected {}", index,
                                               flipped ? " (flipped)" : "", y, x, c, px(y, sx, c), want[size_t((y * w + x) * 3 + c)]));
      }
  return {index, flipped};
}

void write_index_dataset(const std::string& dir, int64_t count, int64_t shards, int64_t side, int64_t classes) {
  fs::create_directories(dir);
  DatasetInfo info;
  info.name = "index";
  info.source_format = "selftest";
  info.source = "generated";
  info.preprocessing = "self-describing: pixels encode the record index";
  info.height = info.width = side;
  info.channels = 3;
  info.num_classes = classes;
  info.total_records = count;
  info.shard_count = shards;
  Manifest m{info, {}};
  const int64_t block = 1024, img = info.image_bytes();
  std::vector<uint8_t> px(size_t(block * img));
  std::vector<int64_t> labels(static_cast<size_t>(block));
  for (int64_t s = 0; s < shards; ++s) {
    ShardWriter w(dir, info, s);
    auto [first, n] = shard_range(count, shards, s);
    for (int64_t i = first; i < first + n; i += block) {
      const int64_t k = std::min(block, first + n - i);
      for (int64_t j = 0; j < k; ++j) {
        encode_index_image(i + j, px.data() + j * img, side, side);
        labels[size_t(j)] = classes > 0 ? (i + j) % classes : -1;
      }
      w.append(px.data(), classes > 0 ? labels.data() : nullptr, k);
    }
    m.shards.push_back(w.commit());
  }
  write_manifest(dir, m);
}

}  // namespace cm::data
