// .npz writing (see npz.h). The zip records are written here rather than with libzip (which reads every
// zip in this project, core/io/zip.h), because libzip lacks two things this writer needs:
// - forcing the zip64 records for a small file: libzip writes them only past 4 GiB (its force flag,
//   ZIP_FL_FORCE_ZIP64, is internal), and the test of the layout the > 4 GiB sample sets have
//   (Sampling.NpzReadsBackInNumpy) cannot write 4 GiB;
// - the atomic write: libzip writes the archive at zip_close into a temporary of its own and renames it,
//   without fsync; here the data goes out as it is made, into PATH.tmp-<pid>, fsync'ed, then renamed.
// Only stored members are written, so this is the fixed records of the zip format, around 150 lines.
#include "datasets/npz.h"

#include <fcntl.h>
#include <unistd.h>
#include <zlib.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fmt/format.h>
#include <stdexcept>
#include <torch/torch.h>
#include "core/io/safetensors.h"  // fsync_directory

namespace cm::data {
namespace {

constexpr uint64_t kMax32 = 0xffffffffu;

void put16(std::string& s, uint16_t v) {
  s.push_back(static_cast<char>(v & 0xff));
  s.push_back(static_cast<char>(v >> 8));
}
void put32(std::string& s, uint32_t v) {
  for (int i = 0; i < 4; ++i) s.push_back(static_cast<char>((v >> (8 * i)) & 0xff));
}
void put64(std::string& s, uint64_t v) {
  for (int i = 0; i < 8; ++i) s.push_back(static_cast<char>((v >> (8 * i)) & 0xff));
}

// A file written at increasing offsets, with one patch back (the local header's CRC is known only after
// the data went out); every error names the file.
class OutFile {
 public:
  explicit OutFile(std::string path) : path_(std::move(path)) {
    fd_ = ::open(path_.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (fd_ < 0) throw std::runtime_error(fmt::format("cannot create '{}': {}", path_, std::strerror(errno)));
  }
  ~OutFile() {
    if (fd_ >= 0) ::close(fd_);
  }
  uint64_t offset() const { return off_; }
  void write(const void* data, size_t n) {
    pwrite_all(data, n, off_);
    off_ += n;
  }
  void write(const std::string& s) { write(s.data(), s.size()); }
  void patch(uint64_t at, const std::string& s) { pwrite_all(s.data(), s.size(), at); }
  void close_synced() {
    if (::fsync(fd_) != 0 || ::close(fd_) != 0) {
      fd_ = -1;
      throw std::runtime_error(fmt::format("flushing '{}' failed: {}", path_, std::strerror(errno)));
    }
    fd_ = -1;
  }

 private:
  void pwrite_all(const void* data, size_t n, uint64_t at) {
    const char* p = static_cast<const char*>(data);
    while (n > 0) {
      const ssize_t w = ::pwrite(fd_, p, std::min<size_t>(n, size_t(1) << 30), static_cast<off_t>(at));
      if (w < 0) {
        if (errno == EINTR) continue;
        const int err = errno;
        throw std::runtime_error(fmt::format("writing '{}' failed at byte {}: {}{}", path_, at, std::strerror(err),
                                             err == ENOSPC ? " (the disk is full: free space and run again)" : ""));
      }
      p += w, at += static_cast<uint64_t>(w), n -= static_cast<size_t>(w);
    }
  }
  std::string path_;
  int fd_ = -1;
  uint64_t off_ = 0;
};

struct Written {
  std::string name;
  uint32_t crc = 0;
  uint64_t size = 0, offset = 0;
};

// Local file header of a stored entry. Why always the zip64 extra field when the entry could pass 4 GiB:
// the sizes are patched in after the data, so the header's length must be fixed before it is known.
std::string local_header(const Written& w, bool zip64) {
  std::string h;
  put32(h, 0x04034b50);
  put16(h, zip64 ? 45 : 20);  // version needed
  put16(h, 0);                // flags
  put16(h, 0);                // method: stored
  put16(h, 0);                // time 00:00:00
  put16(h, 0x21);             // date 1980-01-01 (fixed: equal inputs give equal files)
  put32(h, w.crc);
  put32(h, zip64 ? static_cast<uint32_t>(kMax32) : static_cast<uint32_t>(w.size));
  put32(h, zip64 ? static_cast<uint32_t>(kMax32) : static_cast<uint32_t>(w.size));
  put16(h, static_cast<uint16_t>(w.name.size()));
  put16(h, zip64 ? 20 : 0);
  h += w.name;
  if (zip64) {
    put16(h, 0x0001);
    put16(h, 16);
    put64(h, w.size);
    put64(h, w.size);
  }
  return h;
}

std::string central_entry(const Written& w, bool force) {
  const bool big_size = force || w.size >= kMax32, big_off = force || w.offset >= kMax32;
  std::string extra;
  if (big_size || big_off) {
    std::string body;
    if (big_size) put64(body, w.size), put64(body, w.size);
    if (big_off) put64(body, w.offset);
    put16(extra, 0x0001);
    put16(extra, static_cast<uint16_t>(body.size()));
    extra += body;
  }
  std::string h;
  put32(h, 0x02014b50);
  put16(h, extra.empty() ? 20 : 45);  // version made by (MS-DOS attributes)
  put16(h, extra.empty() ? 20 : 45);
  put16(h, 0);
  put16(h, 0);
  put16(h, 0);
  put16(h, 0x21);
  put32(h, w.crc);
  put32(h, big_size ? static_cast<uint32_t>(kMax32) : static_cast<uint32_t>(w.size));
  put32(h, big_size ? static_cast<uint32_t>(kMax32) : static_cast<uint32_t>(w.size));
  put16(h, static_cast<uint16_t>(w.name.size()));
  put16(h, static_cast<uint16_t>(extra.size()));
  put16(h, 0);  // comment
  put16(h, 0);  // disk
  put16(h, 0);  // internal attributes
  put32(h, 0);  // external attributes
  put32(h, big_off ? static_cast<uint32_t>(kMax32) : static_cast<uint32_t>(w.offset));
  h += w.name;
  h += extra;
  return h;
}

std::string end_records(const std::vector<Written>& entries, uint64_t cd_offset, uint64_t cd_size, bool force) {
  std::string h;
  const uint64_t n = entries.size();
  const bool zip64 = force || cd_offset >= kMax32 || cd_size >= kMax32 || n >= 0xffff;
  if (zip64) {
    const uint64_t rec = cd_offset + cd_size;
    put32(h, 0x06064b50);
    put64(h, 44);  // size of the rest of this record
    put16(h, 45);
    put16(h, 45);
    put32(h, 0);
    put32(h, 0);
    put64(h, n);
    put64(h, n);
    put64(h, cd_size);
    put64(h, cd_offset);
    put32(h, 0x07064b50);  // locator
    put32(h, 0);
    put64(h, rec);
    put32(h, 1);
  }
  put32(h, 0x06054b50);
  put16(h, 0);
  put16(h, 0);
  put16(h, zip64 ? 0xffff : static_cast<uint16_t>(n));
  put16(h, zip64 ? 0xffff : static_cast<uint16_t>(n));
  put32(h, zip64 ? static_cast<uint32_t>(kMax32) : static_cast<uint32_t>(cd_size));
  put32(h, zip64 ? static_cast<uint32_t>(kMax32) : static_cast<uint32_t>(cd_offset));
  put16(h, 0);
  return h;
}

uint32_t crc_of(uint32_t crc, const void* p, size_t n) {
  const auto* b = static_cast<const Bytef*>(p);
  while (n > 0) {  // zlib's length is a uInt
    const uInt c = static_cast<uInt>(std::min<size_t>(n, size_t(1) << 30));
    crc = static_cast<uint32_t>(::crc32(crc, b, c));
    b += c, n -= c;
  }
  return crc;
}

}  // namespace

std::string npy_descr(torch::ScalarType t) {
  switch (t) {
    case torch::kByte: return "|u1";
    case torch::kChar: return "|i1";
    case torch::kBool: return "|b1";
    case torch::kShort: return "<i2";
    case torch::kInt: return "<i4";
    case torch::kLong: return "<i8";
    case torch::kHalf: return "<f2";
    case torch::kFloat: return "<f4";
    case torch::kDouble: return "<f8";
    default: throw std::invalid_argument(fmt::format("npz: no numpy dtype for {}", c10::toString(t)));
  }
}

std::string npy_header(torch::ScalarType t, const std::vector<int64_t>& shape) {
  std::string dims;
  for (auto d : shape) dims += fmt::format("{}, ", d);
  if (shape.size() > 1) dims.resize(dims.size() - 2);  // (N,) for one dimension, (N, H, W, C) otherwise
  else if (shape.size() == 1) dims.pop_back();
  std::string dict = fmt::format("{{'descr': '{}', 'fortran_order': False, 'shape': ({}), }}", npy_descr(t), dims);
  // numpy pads with spaces and ends with '\n' so that the data starts at a multiple of 64 bytes.
  const size_t pre = 10;
  const size_t total = (pre + dict.size() + 1 + 63) / 64 * 64;
  dict.append(total - pre - dict.size() - 1, ' ');
  dict.push_back('\n');
  if (dict.size() > 0xffff) throw std::invalid_argument("npz: array header too long for .npy version 1.0");
  std::string h = "\x93NUMPY";
  h.push_back('\x01');
  h.push_back('\x00');
  put16(h, static_cast<uint16_t>(dict.size()));
  return h + dict;
}

void write_npz(const std::string& path, const std::vector<std::pair<std::string, torch::Tensor>>& arrays, bool force_zip64) {
  const std::string tmp = fmt::format("{}.tmp-{}", path, ::getpid());
  try {
    OutFile f(tmp);
    std::vector<Written> entries;
    for (const auto& [name, tensor] : arrays) {
      torch::Tensor t = tensor.to(torch::kCPU).contiguous();
      const std::string header = npy_header(t.scalar_type(), t.sizes().vec());
      Written w;
      w.name = name + ".npy";
      w.offset = f.offset();
      w.size = header.size() + t.nbytes();
      const bool zip64 = force_zip64 || w.size >= kMax32;
      f.write(local_header(w, zip64));  // CRC patched below
      w.crc = crc_of(crc_of(0, header.data(), header.size()), t.data_ptr(), t.nbytes());
      f.write(header);
      f.write(t.data_ptr(), t.nbytes());
      f.patch(w.offset, local_header(w, zip64));
      entries.push_back(w);
    }
    const uint64_t cd_offset = f.offset();
    std::string cd;
    for (const auto& w : entries) cd += central_entry(w, force_zip64);
    f.write(cd);
    f.write(end_records(entries, cd_offset, cd.size(), force_zip64));
    f.close_synced();
    std::filesystem::rename(tmp, path);
  } catch (...) {
    std::error_code ec;
    std::filesystem::remove(tmp, ec);
    throw;
  }
  fsync_directory(std::filesystem::path(path).parent_path().string());
}

}  // namespace cm::data
