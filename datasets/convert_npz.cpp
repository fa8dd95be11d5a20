// ImageNet 64x64 (also 32x32) from the "downsampled ImageNet" release: train_data_batch_1..10.npz and
// val_data.npz, each a zip of .npy arrays (stored or deflated): 'data' uint8 [N, 3*R*R] channel-major
// (planes R, G, B) and 'labels' 1-based class ids. Not the paper's preprocessing (box-resized by the
// release's authors, not center_crop_arr of ILSVRC2012); the manifest says so.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fmt/format.h>
#include <stdexcept>

#include "datasets/archive.h"
#include "datasets/convert_formats.h"

namespace fs = std::filesystem;

namespace cm::data {

namespace {

struct NpzFile {
  std::string path;
  int64_t records = 0, first = 0;
  int64_t row_bytes = 0;
};

// Reads a 1-D integer .npy array of `n` items into int64.
std::vector<int64_t> read_int_array(ByteStream& s, const NpyHeader& h, int64_t n) {
  const std::string& d = h.descr;
  const size_t size = h.item_size();
  const bool is_signed = d.find('i') != std::string::npos, is_unsigned = d.find('u') != std::string::npos;
  if (!(is_signed || is_unsigned) || (size != 1 && size != 2 && size != 4 && size != 8) || d[0] == '>')
    throw std::runtime_error(fmt::format("{}: labels have dtype '{}', expected a little-endian integer type", s.name(), d));
  std::vector<unsigned char> raw(size_t(n) * size);
  s.read_exact(raw.data(), raw.size(), "the labels");
  std::vector<int64_t> out(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) {
    const unsigned char* p = &raw[size_t(i) * size];
    uint64_t u = 0;
    for (size_t b = 0; b < size; ++b) u |= uint64_t(p[b]) << (8 * b);
    int64_t v = int64_t(u);
    if (is_signed && size < 8 && (u >> (8 * size - 1)) & 1) v = int64_t(u | (~uint64_t(0) << (8 * size)));
    out[size_t(i)] = v;
  }
  return out;
}

class NpzSource : public RecordSource {
 public:
  explicit NpzSource(std::vector<std::string> paths) {
    for (auto& p : paths) {
      NpzFile f;
      f.path = p;
      ZipArchive zip(p);
      auto data = open_member(zip, "data.npy");
      NpyHeader h = read_npy_header(*data);
      if (h.descr != "|u1" || h.shape.size() != 2 || h.fortran_order)
        throw std::runtime_error(fmt::format("{}: 'data' is {} {}-D{}, expected uint8 [N, 3*R*R] in C order", p, h.descr,
                                             h.shape.size(), h.fortran_order ? " Fortran order" : ""));
      f.records = h.shape[0];
      f.row_bytes = h.shape[1];
      f.first = total_;
      total_ += f.records;
      if (!files_.empty() && f.row_bytes != files_[0].row_bytes)
        throw std::runtime_error(fmt::format("{}: rows of {} bytes, {} has {}", p, f.row_bytes, files_[0].path, files_[0].row_bytes));
      files_.push_back(f);
    }
    const int64_t r = int64_t(std::lround(std::sqrt(double(files_.at(0).row_bytes) / 3.0)));
    if (3 * r * r != files_[0].row_bytes)
      throw std::runtime_error(fmt::format("{}: rows of {} bytes are not 3 x R x R images", files_[0].path, files_[0].row_bytes));
    resolution_ = r;
  }
  int64_t count() const override { return total_; }
  int64_t resolution() const { return resolution_; }
  void seek(int64_t index) override {
    size_t f = 0;
    while (f + 1 < files_.size() && index >= files_[f].first + files_[f].records) ++f;
    open(f, index - files_[f].first);
  }
  void read(RawRecord& r) override {
    while (!data_ || local_ >= files_[file_].records) {
      if (data_ && file_ + 1 >= files_.size()) throw std::out_of_range("npz: read past the last record");
      open(data_ ? file_ + 1 : 0, 0);
    }
    const NpzFile& f = files_[file_];
    r.bytes.resize(size_t(f.row_bytes));
    r.origin = fmt::format("{}: record {}", f.path, local_);
    try {
      data_->read_exact(r.bytes.data(), r.bytes.size(), fmt::format("record {}", local_));
    } catch (const std::exception& e) {
      rethrow_with_record(e, f.path + ":data.npy", local_);
    }
    const int64_t label = labels_[size_t(local_)];
    if (label < 1 || label > 1000)
      throw std::runtime_error(fmt::format("{}: label {} is outside the 1-based ImageNet classes 1..1000", r.origin, label));
    r.label = label - 1;
    ++local_;
  }

 private:
  static std::unique_ptr<ByteStream> open_member(const ZipArchive& zip, const std::string& name) {
    const ZipEntry* e = zip.find(name);
    if (!e) throw std::runtime_error(fmt::format("{}: has no '{}' array (not a downsampled-ImageNet .npz)", zip.path(), name));
    return zip.open(*e);
  }
  // Opens file f at record `local`: all its labels (at most ~130k, small), and its data stream there.
  void open(size_t f, int64_t local) {
    const NpzFile& nf = files_[f];
    ZipArchive zip(nf.path);
    auto ls = open_member(zip, "labels.npy");
    NpyHeader lh = read_npy_header(*ls);
    if (lh.count() != nf.records || lh.shape.size() != 1)
      throw std::runtime_error(fmt::format("{}: {} labels for {} images", nf.path, lh.count(), nf.records));
    labels_ = read_int_array(*ls, lh, nf.records);
    data_ = open_member(zip, "data.npy");
    read_npy_header(*data_);
    try {
      data_->skip_exact(uint64_t(local) * uint64_t(nf.row_bytes), "to the first record");
    } catch (const std::exception& e) {
      rethrow_with_record(e, nf.path + ":data.npy", local);
    }
    file_ = f;
    local_ = local;
  }

  std::vector<NpzFile> files_;
  int64_t total_ = 0, resolution_ = 0;
  size_t file_ = 0;
  int64_t local_ = 0;
  std::vector<int64_t> labels_;
  std::unique_ptr<ByteStream> data_;
};

std::vector<std::string> npz_files(const std::string& src, const std::string& split) {
  if (!fs::is_directory(src)) {
    if (fs::exists(src)) return {src};
    throw std::runtime_error(fmt::format("'{}' does not exist", src));
  }
  if (split == "test") {
    fs::path p = fs::path(src) / "val_data.npz";
    if (!fs::exists(p)) throw std::runtime_error(fmt::format("'{}' has no val_data.npz", src));
    return {p.string()};
  }
  std::vector<std::string> files;
  for (int i = 1;; ++i) {
    fs::path p = fs::path(src) / fmt::format("train_data_batch_{}.npz", i);
    if (!fs::exists(p)) break;
    files.push_back(p.string());
  }
  if (files.empty()) throw std::runtime_error(fmt::format("'{}' has no train_data_batch_1.npz", src));
  // A later batch without its predecessor would silently drop a file: refuse.
  for (const auto& e : fs::directory_iterator(src)) {
    const std::string n = e.path().filename().string();
    if (n.rfind("train_data_batch_", 0) == 0 && std::find(files.begin(), files.end(), e.path().string()) == files.end())
      throw std::runtime_error(fmt::format("'{}' has {} but not all batches before it ({} found in sequence)", src, n, files.size()));
  }
  return files;
}

}  // namespace

Converter make_imagenet_npz_converter(const ConvertOptions& o) {
  check_split(o.split);
  auto src = std::make_unique<NpzSource>(npz_files(o.src, o.split));
  const int64_t r = src->resolution();
  if (o.resolution && o.resolution != r)
    throw std::invalid_argument(fmt::format("the .npz files hold {}x{} images; --resolution {} would need resizing", r, r, o.resolution));
  Converter c;
  c.source = std::move(src);
  c.info.source_format = "imagenet64-npz";
  c.info.source = fs::absolute(o.src).string();
  c.info.preprocessing = fmt::format("downsampled-ImageNet release ({}x{}, box-resized by its authors); NOT the paper's "
                                     "center_crop_arr of ILSVRC2012 (use format 'imagenet' for that)", r, r);
  c.info.paper_preprocessing = false;
  c.info.height = c.info.width = r;
  c.info.channels = 3;
  c.info.num_classes = 1000;
  c.info.name = o.name.empty() ? fmt::format("imagenet{}-npz-{}", r, o.split) : o.name;
  c.transform = [r](const RawRecord& rec, uint8_t* out) {
    const auto* px = reinterpret_cast<const uint8_t*>(rec.bytes.data());
    const int64_t plane = r * r;
    for (int64_t i = 0; i < plane; ++i)
      for (int64_t ch = 0; ch < 3; ++ch) out[3 * i + ch] = px[ch * plane + i];
  };
  return c;
}

}  // namespace cm::data
