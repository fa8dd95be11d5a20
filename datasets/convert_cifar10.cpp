// CIFAR-10 from its binary release: cifar-10-binary.tar.gz (read directly: gzip + tar) or the extracted
// cifar-10-batches-bin/. Train = data_batch_1..5.bin, test = test_batch.bin, in that order; each record is
// 1 label byte then 3072 pixel bytes as three 32x32 planes R, G, B.
#include <filesystem>
#include <map>
#include <fmt/format.h>
#include <stdexcept>

#include "datasets/archive.h"
#include "datasets/convert_formats.h"

namespace fs = std::filesystem;

namespace cm::data {

namespace {

constexpr int64_t kSide = 32, kPixels = 3 * kSide * kSide, kRecord = 1 + kPixels;

// One batch file: where its records start in its stream and how many there are.
struct Part {
  std::string name;        // batch file name, or archive:member
  std::string path;        // file to open (the archive for members)
  bool in_archive = false;
  uint64_t offset = 0;     // byte offset of record 0 in the (uncompressed) stream
  int64_t records = 0;
  int64_t first = 0;       // global index of its first record
};

std::vector<std::string> batch_names(const std::string& split) {
  if (split == "test") return {"test_batch.bin"};
  std::vector<std::string> v;
  for (int i = 1; i <= 5; ++i) v.push_back(fmt::format("data_batch_{}.bin", i));
  return v;
}

int64_t records_in(const std::string& what, uint64_t bytes) {
  if (bytes % kRecord != 0 || bytes == 0)
    throw std::runtime_error(fmt::format("{}: {} bytes is not a whole number of {}-byte CIFAR-10 records: record {} is "
                                         "incomplete (truncated, or not a CIFAR-10 binary batch)",
                                         what, bytes, kRecord, bytes / kRecord));
  return int64_t(bytes / kRecord);
}

std::vector<Part> parts_from_directory(const std::string& src, const std::string& split) {
  fs::path dir = src;
  if (!fs::exists(dir / batch_names(split).front()) && fs::exists(dir / "cifar-10-batches-bin")) dir /= "cifar-10-batches-bin";
  std::vector<Part> parts;
  for (const auto& b : batch_names(split)) {
    Part p;
    p.path = (dir / b).string();
    p.name = p.path;
    if (!fs::exists(p.path))
      throw std::runtime_error(fmt::format("CIFAR-10 batch '{}' is missing (expected the extracted cifar-10-batches-bin/)", p.path));
    p.records = records_in(p.path, fs::file_size(p.path));
    parts.push_back(p);
  }
  return parts;
}

// One pass over the archive to find the members and where their data starts in the tar stream; reading
// through every member here also reports truncation or corruption before any shard is written.
std::vector<Part> parts_from_archive(const std::string& archive, const std::string& split) {
  auto stream = open_maybe_gzip(archive);
  TarReader tar(*stream);
  TarEntry e;
  std::map<std::string, Part> found;
  try {
    while (tar.next(e)) {
      if (!e.is_file()) continue;
      if (stream->skip(e.size) != e.size) throw std::runtime_error("the archive ends early");
      Part p;
      p.path = archive;
      p.in_archive = true;
      p.name = fmt::format("{}:{}", archive, e.name);
      p.offset = e.data_offset;
      p.records = int64_t(e.size);  // bytes for now; records once we know it is a batch we use
      found[fs::path(e.name).filename().string()] = p;
    }
  } catch (const std::runtime_error& err) {
    const uint64_t at = stream->position();
    if (e.size > 0 && at >= e.data_offset && at < e.data_offset + e.size)
      throw std::runtime_error(fmt::format("{}: member {} is cut off or corrupt near record {} of {}: {}", archive, e.name,
                                           (at - e.data_offset) / kRecord, e.size / kRecord, err.what()));
    throw;
  }
  std::vector<Part> parts;
  for (const auto& b : batch_names(split)) {
    auto it = found.find(b);
    if (it == found.end())
      throw std::runtime_error(fmt::format("{}: member {} is missing (not the CIFAR-10 binary release?)", archive, b));
    parts.push_back(it->second);
    parts.back().records = records_in(parts.back().name, uint64_t(parts.back().records));
  }
  return parts;
}

class CifarSource : public RecordSource {
 public:
  explicit CifarSource(std::vector<Part> parts) : parts_(std::move(parts)) {
    for (auto& p : parts_) {
      p.first = total_;
      total_ += p.records;
    }
  }
  int64_t count() const override { return total_; }
  void seek(int64_t index) override {
    part_ = 0;
    while (part_ + 1 < parts_.size() && index >= parts_[part_].first + parts_[part_].records) ++part_;
    local_ = index - parts_[part_].first;
    open_part();
  }
  void read(RawRecord& r) override {
    while (local_ >= parts_[part_].records) {
      if (part_ + 1 >= parts_.size()) throw std::out_of_range("CIFAR-10: read past the last record");
      ++part_;
      local_ = 0;
      open_part();
    }
    const Part& p = parts_[part_];
    r.bytes.resize(size_t(kRecord));
    r.origin = fmt::format("{}: record {}", p.name, local_);
    try {
      stream_->read_exact(r.bytes.data(), r.bytes.size(), "a record");
    } catch (const std::exception& e) {
      rethrow_with_record(e, p.name, local_);
    }
    const int label = static_cast<unsigned char>(r.bytes[0]);
    if (label >= 10)
      throw std::runtime_error(fmt::format("{}: label byte {} is not a CIFAR-10 class 0..9 (corrupt record)", r.origin, label));
    r.label = label;
    ++local_;
  }

 private:
  void open_part() {
    const Part& p = parts_[part_];
    const uint64_t target = p.offset + uint64_t(local_) * kRecord;
    if (p.in_archive) {
      // gzip cannot seek: reuse the open stream when the target lies ahead, else start over.
      if (!stream_ || stream_name_ != p.path || stream_->position() > target) {
        stream_ = open_maybe_gzip(p.path);
        stream_name_ = p.path;
      }
      stream_->skip_exact(target - stream_->position(), "to " + p.name);
    } else {
      stream_ = open_file(p.path, target);
      stream_name_ = p.path;
    }
  }

  std::vector<Part> parts_;
  int64_t total_ = 0;
  size_t part_ = 0;
  int64_t local_ = 0;
  std::unique_ptr<ByteStream> stream_;
  std::string stream_name_;
};

}  // namespace

Converter make_cifar10_converter(const ConvertOptions& o) {
  check_split(o.split);
  if (o.resolution && o.resolution != kSide) throw std::invalid_argument("cifar10: --resolution must be 32 (no resizing)");
  if (o.channels && o.channels != 3) throw std::invalid_argument("cifar10: --channels must be 3");
  if (!fs::exists(o.src)) throw std::runtime_error(fmt::format("CIFAR-10 source '{}' does not exist", o.src));
  Converter c;
  c.source = std::make_unique<CifarSource>(fs::is_directory(o.src) ? parts_from_directory(o.src, o.split)
                                                                   : parts_from_archive(o.src, o.split));
  c.info.source_format = "cifar10";
  c.info.source = fs::absolute(o.src).string();
  c.info.preprocessing = "none (CIFAR-10 binary release, planes R,G,B -> HWC)";
  c.info.height = c.info.width = kSide;
  c.info.channels = 3;
  c.info.num_classes = 10;
  c.info.name = o.name.empty() ? "cifar10-" + o.split : o.name;
  c.transform = [](const RawRecord& r, uint8_t* out) {
    const auto* px = reinterpret_cast<const uint8_t*>(r.bytes.data()) + 1;
    const int64_t plane = kSide * kSide;
    for (int64_t i = 0; i < plane; ++i) {
      out[3 * i + 0] = px[i];
      out[3 * i + 1] = px[plane + i];
      out[3 * i + 2] = px[2 * plane + i];
    }
  };
  return c;
}

}  // namespace cm::data
