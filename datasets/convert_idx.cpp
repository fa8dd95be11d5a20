// IDX (MNIST / Fashion-MNIST) converter (see convert.h).
#include <fmt/format.h>
#include <zlib.h>

#include <chrono>
#include <filesystem>
#include <stdexcept>
#include <vector>
#include "datasets/convert.h"
#include "datasets/shards.h"

namespace cm {

namespace {

// gzip-transparent sequential reader that knows where it is, for error messages.
class GzReader {
 public:
  explicit GzReader(const std::string& path) : path_(path) {
    f_ = gzopen(path.c_str(), "rb");
    if (!f_) throw std::runtime_error(fmt::format("cannot open '{}'", path));
  }
  ~GzReader() {
    if (f_) gzclose(f_);
  }
  void read(void* dst, size_t n, const std::string& what) {
    int got = gzread(f_, dst, static_cast<unsigned>(n));
    if (got < 0 || static_cast<size_t>(got) != n)
      throw std::runtime_error(fmt::format("{}: truncated or corrupt at {} (byte {}): wanted {} bytes, got {}", path_, what, pos_,
                                           n, got < 0 ? 0 : got));
    pos_ += n;
  }
  uint32_t be32(const std::string& what) {
    unsigned char b[4];
    read(b, 4, what);
    return (uint32_t(b[0]) << 24) | (uint32_t(b[1]) << 16) | (uint32_t(b[2]) << 8) | b[3];
  }

 private:
  std::string path_;
  gzFile f_ = nullptr;
  size_t pos_ = 0;
};

}  // namespace

void convert_idx(const std::string& images_path, const std::string& labels_path, const std::string& split, const ConvertOptions& opt) {
  GzReader img(images_path), lab(labels_path);
  if (uint32_t m = img.be32("the header"); m != 0x00000803)
    throw std::runtime_error(fmt::format("{}: magic {:08x} is not that of an IDX image file (00000803)", images_path, m));
  if (uint32_t m = lab.be32("the header"); m != 0x00000801)
    throw std::runtime_error(fmt::format("{}: magic {:08x} is not that of an IDX label file (00000801)", labels_path, m));
  const int64_t n = img.be32("the header"), rows = img.be32("the header"), cols = img.be32("the header");
  const int64_t nl = lab.be32("the header");
  if (n != nl) throw std::runtime_error(fmt::format("{} has {} images but {} has {} labels", images_path, n, labels_path, nl));
  const int64_t side = std::max({rows, cols, opt.pad_to});
  DatasetMeta meta;
  meta.name = opt.name;
  meta.split = split;
  meta.source = fmt::format("IDX {} + {}", images_path, labels_path);
  meta.preprocessing = opt.pad_to > rows ? fmt::format("zero-padded from {}x{} to {}x{}", rows, cols, side, side) : "none";
  meta.height = meta.width = side;
  meta.channels = 1;
  meta.num_classes = 10;
  meta.total = n;
  std::filesystem::create_directories(opt.out_dir);
  std::filesystem::remove(opt.out_dir + "/manifest.json");  // a re-conversion is incomplete until its manifest is written
  const int64_t per = (n + opt.shards - 1) / opt.shards;
  std::vector<uint8_t> raw(rows * cols), padded(side * side, 0);
  const int64_t top = (side - rows) / 2, left = (side - cols) / 2;
  const auto t0 = std::chrono::steady_clock::now();
  int64_t done = 0;
  for (int64_t s = 0; s < opt.shards; ++s) {
    const int64_t first = s * per, count = std::min(per, n - first);
    if (count <= 0) break;
    ShardWriter w(opt.out_dir, shard_file_name(opt.name, s, opt.shards), meta, first);
    for (int64_t i = 0; i < count; ++i) {
      const int64_t rec = first + i;
      img.read(raw.data(), raw.size(), fmt::format("image record {}", rec));
      uint8_t label = 0;
      lab.read(&label, 1, fmt::format("label record {}", rec));
      for (int64_t y = 0; y < rows; ++y) std::copy_n(raw.data() + y * cols, cols, padded.data() + (y + top) * side + left);
      w.append(padded.data(), label);
    }
    meta.shards.push_back(w.finish());
    done += count;
    if (opt.progress) {
      const double el = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      fmt::print(stderr, "  {}: {}/{} images, {:.0f} img/s, ETA {:.0f}s\n", meta.shards.back().file, done, n, done / std::max(el, 1e-9),
                 (n - done) * el / std::max<int64_t>(done, 1));
    }
  }
  write_manifest(opt.out_dir, meta);  // last: the dataset exists only once every shard is in place
}

}  // namespace cm
