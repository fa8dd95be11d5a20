// Fashion-MNIST / MNIST from the IDX files (gzipped or not): {train,t10k}-images-idx3-ubyte[.gz] with a
// big-endian header (magic 0x00000803, count, rows, cols) and {train,t10k}-labels-idx1-ubyte[.gz]
// (magic 0x00000801, count). Images are 28x28 grey; optionally zero-padded to e.g. 32x32.
#include <filesystem>
#include <fmt/format.h>
#include <stdexcept>

#include "datasets/archive.h"
#include "datasets/convert_formats.h"

namespace fs = std::filesystem;

namespace cm::data {

namespace {

std::string find_idx(const std::string& dir, const std::string& stem) {
  for (const char* ext : {".gz", ""}) {
    fs::path p = fs::path(dir) / (stem + ext);
    if (fs::exists(p)) return p.string();
  }
  throw std::runtime_error(fmt::format("'{}' has no {}[.gz] (expected the IDX files of (Fashion-)MNIST)", dir, stem));
}

uint32_t be32(const unsigned char* p) { return uint32_t(p[0]) << 24 | uint32_t(p[1]) << 16 | uint32_t(p[2]) << 8 | p[3]; }

class IdxSource : public RecordSource {
 public:
  IdxSource(std::string images, std::string labels) : images_(std::move(images)), labels_(std::move(labels)) {
    open(0);
  }
  int64_t count() const override { return count_; }
  int64_t rows() const { return rows_; }
  int64_t cols() const { return cols_; }
  void seek(int64_t index) override {
    if (index != next_) open(index);
  }
  void read(RawRecord& r) override {
    r.bytes.resize(size_t(rows_ * cols_));
    unsigned char label = 0;
    try {
      img_->read_exact(r.bytes.data(), r.bytes.size(), fmt::format("image {}", next_));
    } catch (const std::exception& e) {
      rethrow_with_record(e, images_, next_);
    }
    try {
      lab_->read_exact(&label, 1, fmt::format("label {}", next_));
    } catch (const std::exception& e) {
      rethrow_with_record(e, labels_, next_);
    }
    r.origin = fmt::format("{}: record {}", images_, next_);
    if (label >= 10)
      throw std::runtime_error(fmt::format("{}: record {}: label {} is not a class 0..9 (corrupt file)", labels_, next_, label));
    r.label = label;
    ++next_;
  }

 private:
  // (Re)opens both files, checks their headers and skips to record `index` (gzip cannot seek).
  void open(int64_t index) {
    img_ = open_maybe_gzip(images_);
    lab_ = open_maybe_gzip(labels_);
    unsigned char h[16];
    img_->read_exact(h, 16, "the IDX image header");
    if (be32(h) != 0x00000803)
      throw std::runtime_error(fmt::format("{}: magic {:08x} is not an IDX uint8 image file (0x00000803)", images_, be32(h)));
    count_ = be32(h + 4);
    rows_ = be32(h + 8);
    cols_ = be32(h + 12);
    lab_->read_exact(h, 8, "the IDX label header");
    if (be32(h) != 0x00000801)
      throw std::runtime_error(fmt::format("{}: magic {:08x} is not an IDX uint8 label file (0x00000801)", labels_, be32(h)));
    if (int64_t(be32(h + 4)) != count_)
      throw std::runtime_error(fmt::format("{} holds {} images but {} holds {} labels", images_, count_, labels_, be32(h + 4)));
    if (rows_ <= 0 || cols_ <= 0 || rows_ > 4096 || cols_ > 4096)
      throw std::runtime_error(fmt::format("{}: implausible image size {}x{}", images_, rows_, cols_));
    try {
      img_->skip_exact(uint64_t(index) * uint64_t(rows_ * cols_), "to the first record");
      lab_->skip_exact(uint64_t(index), "to the first label");
    } catch (const std::exception& e) {
      throw std::runtime_error(fmt::format("{} (seeking to record {})", e.what(), index));
    }
    next_ = index;
  }

  std::string images_, labels_;
  std::unique_ptr<ByteStream> img_, lab_;
  int64_t count_ = 0, rows_ = 0, cols_ = 0, next_ = 0;
};

}  // namespace

Converter make_idx_converter(const ConvertOptions& o) {
  check_split(o.split);
  const std::string prefix = o.split == "train" ? "train" : "t10k";
  auto src = std::make_unique<IdxSource>(find_idx(o.src, prefix + "-images-idx3-ubyte"),
                                         find_idx(o.src, prefix + "-labels-idx1-ubyte"));
  const int64_t rows = src->rows(), cols = src->cols();
  const int64_t pad = o.pad_to;
  if (pad && (pad < rows || pad < cols))
    throw std::invalid_argument(fmt::format("--pad {} is smaller than the {}x{} images", pad, rows, cols));
  if (o.channels && o.channels != 1) throw std::invalid_argument("fashion-mnist: --channels must be 1");
  if (o.resolution && o.resolution != (pad ? pad : rows))
    throw std::invalid_argument("fashion-mnist: --resolution is not supported (use --pad 32 to pad 28 -> 32)");
  Converter c;
  c.source = std::move(src);
  c.info.source_format = o.format;
  c.info.source = fs::absolute(o.src).string();
  c.info.height = pad ? pad : rows;
  c.info.width = pad ? pad : cols;
  c.info.channels = 1;
  c.info.num_classes = 10;
  c.info.preprocessing = pad ? fmt::format("zero-padded {}x{} -> {}x{} (centred)", rows, cols, pad, pad) : "none";
  c.info.name = o.name.empty() ? fmt::format("{}-{}", o.format, o.split) : o.name;
  const int64_t H = c.info.height, W = c.info.width, y0 = (H - rows) / 2, x0 = (W - cols) / 2;
  c.transform = [=](const RawRecord& r, uint8_t* out) {
    const auto* px = reinterpret_cast<const uint8_t*>(r.bytes.data());
    std::fill(out, out + H * W, uint8_t(0));
    for (int64_t y = 0; y < rows; ++y) std::copy_n(px + y * cols, cols, out + (y0 + y) * W + x0);
  };
  return c;
}

}  // namespace cm::data
