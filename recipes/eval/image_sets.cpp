// Image collections for evaluation (see image_sets.h).
#include "recipes/eval/image_sets.h"

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <fmt/format.h>
#include <stdexcept>
#include <torch/torch.h>
#include "core/io/safetensors.h"      // read_file
#include "datasets/archive.h"      // ZipArchive, read_npy_header
#include "datasets/image_codec.h"  // decode_image
#include "datasets/shards.h"       // read_manifest, ShardReader

namespace fs = std::filesystem;

namespace cm::data {
namespace {

std::string dims(int64_t h, int64_t w, int64_t c) { return fmt::format("{}x{}x{}", h, w, c); }

// arr_0 of an .npz streamed from its zip entry (stored or deflated).
class NpzImages : public ImageSet {
 public:
  NpzImages(const std::string& path, const std::string& array) : path_(path), array_(array), zip_(path) {
    const ZipEntry* e = zip_.find(array + ".npy");
    if (!e) throw std::runtime_error(fmt::format("{}: no '{}' array of images (an .npz from `cm sample` or the reference "
                                                 "image_sample.py has arr_0 uint8 [N, H, W, C])", path, array));
    stream_ = zip_.open(*e);
    NpyHeader h = read_npy_header(*stream_);
    if (h.descr != "|u1" || h.fortran_order || h.shape.size() != 4 || (h.shape[3] != 1 && h.shape[3] != 3))
      throw std::runtime_error(fmt::format("{}: '{}' is {} {} (fortran_order {}); images must be uint8 ('|u1') [N, H, W, C] "
                                           "with C = 1 or 3, in C order", path, array, h.descr, c10::str(h.shape), h.fortran_order));
    count_ = h.shape[0], h_ = h.shape[1], w_ = h.shape[2], c_ = h.shape[3];
  }
  torch::Tensor read(int64_t n) override {
    n = std::min(n, count_ - next_);
    auto t = torch::empty({n, h_, w_, c_}, torch::kUInt8);
    if (n > 0) stream_->read_exact(t.data_ptr(), static_cast<size_t>(t.numel()), fmt::format("'{}' images {}..", array_, next_));
    next_ += n;
    return t;
  }
  std::string describe() const override { return fmt::format("npz {} ({}: {} x {})", path_, array_, count_, dims(h_, w_, c_)); }

 private:
  std::string path_, array_;
  ZipArchive zip_;
  std::unique_ptr<ByteStream> stream_;
  int64_t next_ = 0;
};

// A converted dataset directory, shard after shard.
class ShardImages : public ImageSet {
 public:
  explicit ShardImages(const std::string& dir) : dir_(dir), m_(read_manifest(dir)) {
    count_ = m_.info.total_records, h_ = m_.info.height, w_ = m_.info.width, c_ = m_.info.channels;
  }
  torch::Tensor read(int64_t n) override {
    n = std::min(n, count_ - next_);
    auto t = torch::empty({n, h_, w_, c_}, torch::kUInt8);
    int64_t done = 0;
    while (done < n) {
      const ShardInfo& s = m_.shards[static_cast<size_t>(shard_)];
      if (!reader_) reader_ = std::make_unique<ShardReader>((fs::path(dir_) / s.file).string());
      const int64_t local = next_ + done - s.first_record, take = std::min(n - done, s.records - local);
      reader_->read_images(local, take, t.data_ptr<uint8_t>() + done * h_ * w_ * c_);
      done += take;
      if (local + take == s.records) ++shard_, reader_.reset();
    }
    next_ += n;
    return t;
  }
  std::string describe() const override {
    return fmt::format("dataset {} ({}: {} x {}, {} shards)", dir_, m_.info.name, count_, dims(h_, w_, c_), m_.shards.size());
  }

 private:
  std::string dir_;
  Manifest m_;
  std::unique_ptr<ShardReader> reader_;
  int64_t shard_ = 0, next_ = 0;
};

bool is_image_file(const fs::path& p) {
  std::string ext = p.extension().string();
  std::transform(ext.begin(), ext.end(), ext.begin(), [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  return ext == ".png" || ext == ".jpg" || ext == ".jpeg" || ext == ".webp";
}

void list_images(const fs::path& dir, std::vector<fs::path>& out) {
  std::vector<fs::directory_entry> entries(fs::directory_iterator(dir), fs::directory_iterator{});
  std::sort(entries.begin(), entries.end(), [](const auto& a, const auto& b) { return a.path().filename() < b.path().filename(); });
  for (const auto& e : entries) {
    if (e.is_directory()) list_images(e.path(), out);
    else if (is_image_file(e.path())) out.push_back(e.path());
  }
}

// A folder of image files, decoded to RGB (grey files become three equal channels).
class FolderImages : public ImageSet {
 public:
  explicit FolderImages(const std::string& dir) : dir_(dir) {
    if (fs::is_regular_file(dir)) files_.push_back(dir);  // one image file: a set of one
    else list_images(dir, files_);
    if (files_.empty()) throw std::runtime_error(fmt::format("{}: no .png/.jpg/.jpeg/.webp images found (searched subfolders too)", dir));
    Image first = decode(0);
    count_ = static_cast<int64_t>(files_.size()), h_ = first.height, w_ = first.width, c_ = 3;
  }
  torch::Tensor read(int64_t n) override {
    n = std::min(n, count_ - next_);
    auto t = torch::empty({n, h_, w_, c_}, torch::kUInt8);
    for (int64_t i = 0; i < n; ++i) {
      Image img = decode(next_ + i);
      if (img.height != h_ || img.width != w_)
        throw std::runtime_error(fmt::format("{}: {}x{}, but {} is {}x{}; every image of a set must have one size",
                                             files_[static_cast<size_t>(next_ + i)].string(), img.height, img.width,
                                             files_[0].string(), h_, w_));
      std::memcpy(t[i].data_ptr(), img.pixels.data(), img.pixels.size());
    }
    next_ += n;
    return t;
  }
  void skip(int64_t n) override { next_ = std::min(count_, next_ + std::max<int64_t>(0, n)); }
  std::string describe() const override { return fmt::format("folder {} ({} images, {})", dir_, count_, dims(h_, w_, c_)); }

 private:
  Image decode(int64_t i) const {
    const std::string path = files_[static_cast<size_t>(i)].string();
    const std::string bytes = read_file(path);
    return decode_image(reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size(), 3, path);
  }
  std::string dir_;
  std::vector<fs::path> files_;
  int64_t next_ = 0;
};

}  // namespace

void ImageSet::skip(int64_t n) {
  while (n > 0) {
    const int64_t got = read(std::min<int64_t>(n, 256)).size(0);
    if (got == 0) return;
    n -= got;
  }
}

std::unique_ptr<ImageSet> open_image_set(const std::string& path, const std::string& array) {
  if (fs::is_directory(path)) {
    if (fs::exists(fs::path(path) / kManifestName)) return std::make_unique<ShardImages>(path);
    return std::make_unique<FolderImages>(path);
  }
  if (!fs::exists(path)) throw std::runtime_error(fmt::format("{}: no such file or directory", path));
  if (fs::path(path).extension() == ".npz") return std::make_unique<NpzImages>(path, array);
  if (is_image_file(path)) return std::make_unique<FolderImages>(path);
  throw std::runtime_error(fmt::format("{}: not an image set; give an .npz (arr_0 uint8 NHWC), a converted dataset directory "
                                       "(with {}), a folder of PNG/JPEG/WebP images or one such image", path, kManifestName));
}

bool npz_has(const std::string& path, const std::string& name) {
  ZipArchive z(path);
  return z.find(name + ".npy") != nullptr;
}

torch::Tensor read_npz_tensor(const std::string& path, const std::string& name) {
  ZipArchive z(path);
  const ZipEntry* e = z.find(name + ".npy");
  if (!e) throw std::runtime_error(fmt::format("{}: no '{}' array", path, name));
  auto s = z.open(*e);
  NpyHeader h = read_npy_header(*s);
  torch::ScalarType dtype;
  if (h.descr == "|u1") dtype = torch::kUInt8;
  else if (h.descr == "<i8") dtype = torch::kInt64;
  else if (h.descr == "<f4") dtype = torch::kFloat32;
  else if (h.descr == "<f8") dtype = torch::kFloat64;
  else throw std::runtime_error(fmt::format("{}: '{}' has dtype {}; expected |u1, <i8, <f4 or <f8", path, name, h.descr));
  if (h.fortran_order) throw std::runtime_error(fmt::format("{}: '{}' is in Fortran order, expected C order", path, name));
  auto t = torch::empty(h.shape, dtype);
  s->read_exact(t.data_ptr(), t.nbytes(), fmt::format("'{}' data", name));
  return t;
}

}  // namespace cm::data
