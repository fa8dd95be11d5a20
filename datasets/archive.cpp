// Streams over files, gzip, tar, zip and .npy (see archive.h). Zip archives are read with libzip (core/io/zip.h)
// and gzip with zlib. Still written here, and why:
// - tar (not part of the change to libraries, which covered zip): the CIFAR-10 converter hands its workers
//   each member's data offset in the uncompressed stream (TarEntry::data_offset) and reads there through a
//   ByteStream; libarchive gives a header's position, not where the data starts after pax or GNU
//   long-name records, and reads only through its own stream. The reader is ~100 lines (ustar/GNU/pax).
// - the .npy header: a Python dict literal, which no Debian C/C++ library parses (numpy's own reader
//   is Python); a small scanner with the limits the hostile-file tests need.
// - ByteStream, the bounded buffered file and inflate streams every reader here is written against.
#include "datasets/archive.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zlib.h>

#include <algorithm>
#include <cctype>
#include <climits>
#include <cstring>
#include <fmt/format.h>
#include <stdexcept>

namespace cm::data {

// ------------------------------------------------------------------------------------------ ByteStream

uint64_t ByteStream::skip(uint64_t n) {
  char buf[65536];
  uint64_t done = 0;
  while (done < n) {
    size_t want = size_t(std::min<uint64_t>(sizeof(buf), n - done));
    size_t got = read(buf, want);
    done += got;
    if (got < want) break;
  }
  return done;
}

void ByteStream::read_exact(void* buf, size_t n, const std::string& what) {
  const uint64_t at = pos_;
  size_t got = read(buf, n);
  if (got != n)
    throw std::runtime_error(fmt::format("{}: truncated at byte {} while reading {} ({} of {} bytes present)", name_,
                                         at + got, what, got, n));
}

void ByteStream::skip_exact(uint64_t n, const std::string& what) {
  const uint64_t at = pos_;
  uint64_t got = skip(n);
  if (got != n)
    throw std::runtime_error(fmt::format("{}: truncated at byte {} while skipping {}", name_, at + got, what));
}

// -------------------------------------------------------------------------------------------- files

namespace {

class FileStream : public ByteStream {
 public:
  FileStream(const std::string& path, uint64_t offset, int64_t length) : ByteStream(path) {
    fd_ = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd_ < 0) throw std::runtime_error(fmt::format("cannot open '{}': {}", path, std::strerror(errno)));
    struct stat st {};
    ::fstat(fd_, &st);
    const uint64_t size = uint64_t(st.st_size);
    file_off_ = offset;
    end_ = length < 0 ? size : std::min<uint64_t>(size, offset + uint64_t(length));
    if (offset > size) end_ = offset;
    buf_.resize(1 << 20);
  }
  ~FileStream() override {
    if (fd_ >= 0) ::close(fd_);
  }
  int64_t remaining() const override { return int64_t((tail_ - head_) + (end_ - std::min(end_, file_off_))); }
  size_t read(void* out, size_t n) override {
    auto* dst = static_cast<char*>(out);
    size_t done = 0;
    while (done < n) {
      if (head_ == tail_ && !refill()) break;
      size_t take = std::min(n - done, tail_ - head_);
      std::memcpy(dst + done, buf_.data() + head_, take);
      head_ += take;
      done += take;
    }
    pos_ += done;
    return done;
  }
  uint64_t skip(uint64_t n) override {
    const uint64_t buffered = tail_ - head_;
    if (n <= buffered) {
      head_ += size_t(n);
      pos_ += n;
      return n;
    }
    const uint64_t rest = std::min<uint64_t>(n - buffered, end_ - file_off_);
    head_ = tail_ = 0;
    file_off_ += rest;
    pos_ += buffered + rest;
    return buffered + rest;
  }

 private:
  bool refill() {
    if (file_off_ >= end_) return false;
    size_t want = size_t(std::min<uint64_t>(buf_.size(), end_ - file_off_));
    ssize_t got;
    do got = ::pread(fd_, buf_.data(), want, off_t(file_off_));
    while (got < 0 && errno == EINTR);
    if (got < 0) throw std::runtime_error(fmt::format("{}: read error at byte {}: {}", name_, file_off_, std::strerror(errno)));
    if (got == 0) return false;
    file_off_ += uint64_t(got);
    head_ = 0;
    tail_ = size_t(got);
    return true;
  }
  int fd_ = -1;
  uint64_t file_off_ = 0, end_ = 0;
  std::vector<char> buf_;
  size_t head_ = 0, tail_ = 0;
};

class InflateStream : public ByteStream {
 public:
  InflateStream(std::unique_ptr<ByteStream> src, bool raw) : ByteStream(src->name()), src_(std::move(src)), raw_(raw) {
    std::memset(&z_, 0, sizeof(z_));
    // 15 + 32: zlib or gzip header, detected; -15: raw deflate (zip entries).
    if (inflateInit2(&z_, raw ? -15 : 15 + 32) != Z_OK) throw std::runtime_error(name_ + ": inflateInit failed");
    in_.resize(1 << 18);
  }
  ~InflateStream() override { inflateEnd(&z_); }
  size_t read(void* out, size_t n) override {
    z_.next_out = static_cast<Bytef*>(out);
    z_.avail_out = uInt(n);
    while (z_.avail_out > 0 && !done_) {
      if (z_.avail_in == 0) {
        z_.avail_in = uInt(src_->read(in_.data(), in_.size()));
        z_.next_in = in_.data();
        if (z_.avail_in == 0)
          throw std::runtime_error(fmt::format("{}: compressed data truncated (stream ends at uncompressed byte {})", name_,
                                               pos_ + (n - z_.avail_out)));
      }
      int rc = inflate(&z_, Z_NO_FLUSH);
      if (rc == Z_STREAM_END) {
        // Another gzip member may follow (gzip allows concatenation); raw deflate ends here.
        if (raw_ || !more_input()) {
          done_ = true;
        } else {
          inflateReset(&z_);
        }
      } else if (rc != Z_OK && rc != Z_BUF_ERROR) {
        throw std::runtime_error(fmt::format("{}: corrupt compressed data near uncompressed byte {} ({})", name_,
                                             pos_ + (n - z_.avail_out), z_.msg ? z_.msg : zError(rc)));
      }
    }
    size_t got = n - z_.avail_out;
    pos_ += got;
    return got;
  }

 private:
  bool more_input() {
    if (z_.avail_in > 0) return true;
    z_.avail_in = uInt(src_->read(in_.data(), in_.size()));
    z_.next_in = in_.data();
    return z_.avail_in > 0;
  }
  std::unique_ptr<ByteStream> src_;
  bool raw_;
  z_stream z_;
  std::vector<Bytef> in_;
  bool done_ = false;
};

}  // namespace

std::unique_ptr<ByteStream> open_file(const std::string& path, uint64_t offset, int64_t length) {
  return std::make_unique<FileStream>(path, offset, length);
}

std::unique_ptr<ByteStream> inflate_stream(std::unique_ptr<ByteStream> src, bool raw) {
  return std::make_unique<InflateStream>(std::move(src), raw);
}

std::unique_ptr<ByteStream> open_maybe_gzip(const std::string& path) {
  unsigned char magic[2] = {0, 0};
  auto f = open_file(path);
  size_t got = f->read(magic, 2);
  f = open_file(path);
  if (got == 2 && magic[0] == 0x1f && magic[1] == 0x8b) return inflate_stream(std::move(f));
  return f;
}

// ----------------------------------------------------------------------------------------------- tar

static uint64_t tar_number(const char* field, size_t len, const std::string& where) {
  // GNU base-256 for large values: high bit of the first byte set.
  if (static_cast<unsigned char>(field[0]) & 0x80) {
    uint64_t v = static_cast<unsigned char>(field[0]) & 0x7f;
    for (size_t i = 1; i < len; ++i) v = (v << 8) | static_cast<unsigned char>(field[i]);
    return v;
  }
  uint64_t v = 0;
  size_t i = 0;
  while (i < len && (field[i] == ' ' || field[i] == '\0')) ++i;
  for (; i < len && field[i] >= '0' && field[i] <= '7'; ++i) v = v * 8 + uint64_t(field[i] - '0');
  for (; i < len; ++i)
    if (field[i] != ' ' && field[i] != '\0')
      throw std::runtime_error(fmt::format("{}: corrupt tar header (bad octal field)", where));
  return v;
}

static std::string cstr(const char* p, size_t max) { return std::string(p, strnlen(p, max)); }

static constexpr uint64_t kMaxExtendedHeader = uint64_t(1) << 20;

// Pax extended header records "LEN key=value\n", LEN (decimal) counting the whole record; read by their
// length field. Returns the last 'path' value, if any.
static bool pax_path(const std::string& d, std::string* path, const std::string& where) {
  bool found = false;
  size_t p = 0;
  while (p < d.size()) {
    if (d[p] == '\0') break;  // NUL padding after the records
    size_t q = p;
    uint64_t len = 0;
    while (q < d.size() && d[q] >= '0' && d[q] <= '9' && q - p < 19) len = len * 10 + uint64_t(d[q++] - '0');
    if (q == p || q >= d.size() || d[q] != ' ' || len <= q - p + 1 || len > d.size() - p || d[p + len - 1] != '\n')
      throw std::runtime_error(fmt::format("{}: corrupt pax record at byte {} of the extended header", where, p));
    const size_t kv = q + 1, kv_end = p + len - 1;  // key=value without the newline
    const size_t eq = d.find('=', kv);
    if (eq == std::string::npos || eq >= kv_end)
      throw std::runtime_error(fmt::format("{}: pax record at byte {} has no '='", where, p));
    if (d.compare(kv, eq - kv, "path") == 0) *path = d.substr(eq + 1, kv_end - eq - 1), found = true;
    p += len;
  }
  return found;
}

bool TarReader::next(TarEntry& e) {
  std::string long_name;
  for (;;) {
    s_.skip_exact(next_header_ - s_.position(), "tar padding");
    char h[512];
    const std::string where = fmt::format("{}: tar header at byte {}", s_.name(), s_.position());
    size_t got = s_.read(h, 512);
    if (got == 0) return false;  // tolerate archives without the two zero blocks
    if (got != 512) throw std::runtime_error(where + ": truncated");
    if (std::all_of(h, h + 512, [](char c) { return c == 0; })) return false;
    unsigned sum = 0;
    for (int i = 0; i < 512; ++i) sum += (i >= 148 && i < 156) ? unsigned(' ') : static_cast<unsigned char>(h[i]);
    if (sum != tar_number(h + 148, 8, where))
      throw std::runtime_error(where + ": checksum mismatch (not a tar archive, or corrupt)");
    e.type = h[156];
    e.size = tar_number(h + 124, 12, where);
    if (e.size > (uint64_t(1) << 56)) throw std::runtime_error(fmt::format("{}: corrupt tar header (entry size {})", where, e.size));
    e.data_offset = s_.position();
    next_header_ = e.data_offset + (e.size + 511) / 512 * 512;
    if (e.type == 'L' || e.type == 'x') {  // GNU long name / pax extended header: the next entry's name
      if (e.size > kMaxExtendedHeader)
        throw std::runtime_error(fmt::format("{}: extended header of {} bytes (at most {} accepted)", where, e.size,
                                             kMaxExtendedHeader));
      std::string data(size_t(e.size), '\0');
      s_.read_exact(data.data(), data.size(), where + " (extended header)");
      if (e.type == 'L') {
        long_name = cstr(data.data(), data.size());
      } else {
        std::string path;
        if (pax_path(data, &path, where)) long_name = path;
      }
      continue;
    }
    if (!long_name.empty()) {
      e.name = long_name;
    } else {
      std::string prefix = std::memcmp(h + 257, "ustar", 5) == 0 ? cstr(h + 345, 155) : "";
      e.name = (prefix.empty() ? "" : prefix + "/") + cstr(h, 100);
    }
    return true;
  }
}

std::vector<TarEntry> list_tar(ByteStream& s) {
  std::vector<TarEntry> out;
  TarReader r(s);
  TarEntry e;
  while (r.next(e))
    if (e.is_file()) out.push_back(e);
  return out;
}

// ----------------------------------------------------------------------------------------------- zip

static uint16_t le16(const unsigned char* p) { return uint16_t(p[0] | (p[1] << 8)); }

ZipArchive::ZipArchive(const std::string& path) : zip_(path, path + ": ") {}

namespace {
// A member through libzip (core/io/zip.h), on a libzip handle of its own: it outlives the ZipArchive and
// may be read from another thread than the archive's other members.
class ZipMemberStream : public ByteStream {
 public:
  ZipMemberStream(ZipMemberReader r, std::string name) : ByteStream(std::move(name)), r_(std::move(r)) {}
  int64_t remaining() const override { return int64_t(std::min<uint64_t>(r_.size() - pos_, uint64_t(INT64_MAX))); }
  size_t read(void* buf, size_t n) override {
    const size_t got = r_.read(buf, n);
    pos_ += got;
    return got;
  }

 private:
  ZipMemberReader r_;
};
}  // namespace

std::unique_ptr<ByteStream> ZipArchive::open(const ZipEntry& e) const {
  return std::make_unique<ZipMemberStream>(zip_.open(e, /*own_handle=*/true), fmt::format("{}:{}", path(), e.name));
}

// ----------------------------------------------------------------------------------------------- npy

int64_t NpyHeader::count() const {
  int64_t n = 1;
  for (auto d : shape)
    if (d < 0 || __builtin_mul_overflow(n, d, &n)) return -1;
  return n;
}

size_t NpyHeader::item_size() const {
  size_t i = 0;
  while (i < descr.size() && !std::isdigit(static_cast<unsigned char>(descr[i]))) ++i;
  size_t v = 0;
  for (; i < descr.size() && std::isdigit(static_cast<unsigned char>(descr[i])); ++i) {
    v = v * 10 + size_t(descr[i] - '0');
    if (v > (1u << 20)) return 0;
  }
  return v;
}

namespace {
// The header dict of a .npy file, a Python literal such as
//   {'descr': '<f4', 'fortran_order': False, 'shape': (3, 4), }
// read by a hand-written scanner (a std::regex over a long hostile header overflows the stack).
class NpyDictScanner {
 public:
  NpyDictScanner(const std::string& t, const std::string& name) : t_(t), name_(name) {}
  NpyHeader parse() {
    NpyHeader h;
    bool have_descr = false, have_shape = false;
    ws();
    expect('{');
    while (true) {
      ws();
      if (at('}')) break;
      const std::string key = quoted();
      ws();
      expect(':');
      ws();
      if (key == "descr") {
        h.descr = quoted(), have_descr = true;
        if (h.descr.size() > 32) fail(fmt::format("'descr' of {} characters is not a numpy dtype", h.descr.size()));
      } else if (key == "fortran_order") {
        if (t_.compare(i_, 4, "True") == 0) h.fortran_order = true, i_ += 4;
        else if (t_.compare(i_, 5, "False") == 0) h.fortran_order = false, i_ += 5;
        else fail("'fortran_order' is not True or False");
      } else if (key == "shape") {
        h.shape = shape(), have_shape = true;
      } else {
        skip_value();
      }
      ws();
      if (at(',')) continue;
      ws();
      if (at('}')) break;
      fail("expected ',' or '}'");
    }
    if (!have_descr) fail("no 'descr'");
    if (!have_shape) fail("no 'shape'");
    return h;
  }

 private:
  [[noreturn]] void fail(const std::string& what) const {
    throw std::runtime_error(fmt::format("{}: bad npy header at character {}: {} (header starts '{}')", name_, i_, what,
                                         printable(t_.substr(0, 60))));
  }
  static std::string printable(std::string s) {
    for (char& c : s)
      if (static_cast<unsigned char>(c) < 0x20 || static_cast<unsigned char>(c) >= 0x7f) c = '?';
    return s;
  }
  void ws() {
    while (i_ < t_.size() && (t_[i_] == ' ' || t_[i_] == '\t' || t_[i_] == '\n' || t_[i_] == '\r')) ++i_;
  }
  bool at(char c) {
    if (i_ < t_.size() && t_[i_] == c) return ++i_, true;
    return false;
  }
  void expect(char c) {
    if (!at(c)) fail(fmt::format("expected '{}'", c));
  }
  std::string quoted() {
    if (i_ >= t_.size() || (t_[i_] != '\'' && t_[i_] != '"')) fail("expected a quoted string");
    const char q = t_[i_++];
    const size_t end = t_.find(q, i_);
    if (end == std::string::npos) fail("unterminated string");
    std::string s = t_.substr(i_, end - i_);
    i_ = end + 1;
    return s;
  }
  std::vector<int64_t> shape() {
    expect('(');
    std::vector<int64_t> dims;
    while (true) {
      ws();
      if (at(')')) break;
      if (i_ < t_.size() && t_[i_] == '-') fail("'shape' has a negative dimension");
      if (i_ >= t_.size() || !std::isdigit(static_cast<unsigned char>(t_[i_]))) fail("'shape' holds something other than integers");
      int64_t v = 0;
      while (i_ < t_.size() && std::isdigit(static_cast<unsigned char>(t_[i_]))) {
        if (__builtin_mul_overflow(v, 10, &v) || __builtin_add_overflow(v, t_[i_] - '0', &v))
          fail("'shape' has a dimension beyond 64 bits");
        ++i_;
      }
      if (i_ < t_.size() && t_[i_] == 'L') ++i_;  // Python 2 long
      if (dims.size() >= 64) fail("'shape' has more than 64 dimensions");
      dims.push_back(v);
      ws();
      if (at(',')) continue;
      ws();
      if (at(')')) break;
      fail("expected ',' or ')' in 'shape'");
    }
    return dims;
  }
  // Any other value: a string, or a word/number, or a bracketed group (nesting counted, not recursed).
  void skip_value() {
    if (i_ < t_.size() && (t_[i_] == '\'' || t_[i_] == '"')) return void(quoted());
    int depth = 0;
    while (i_ < t_.size()) {
      const char c = t_[i_];
      if (c == '\'' || c == '"') {
        quoted();
        continue;
      }
      if (c == '(' || c == '[' || c == '{') ++depth;
      else if (c == ')' || c == ']' || c == '}') {
        if (depth == 0) return;
        --depth;
      } else if (c == ',' && depth == 0) return;
      ++i_;
    }
    fail("unterminated value");
  }
  const std::string& t_;
  const std::string& name_;
  size_t i_ = 0;
};
}  // namespace

NpyHeader read_npy_header(ByteStream& s) {
  unsigned char pre[10];
  s.read_exact(pre, 10, "npy header");
  if (std::memcmp(pre, "\x93NUMPY", 6) != 0) throw std::runtime_error(s.name() + ": not a .npy array (bad magic)");
  size_t hlen;
  if (pre[6] == 1) {
    hlen = le16(pre + 8);
  } else {
    unsigned char more[2];
    s.read_exact(more, 2, "npy header");
    hlen = size_t(le16(pre + 8)) | (size_t(le16(more)) << 16);
  }
  // numpy itself refuses headers over 10,000 bytes unless told otherwise; 1 MiB is plenty.
  if (hlen > (size_t(1) << 20))
    throw std::runtime_error(fmt::format("{}: npy header of {} bytes (at most 1 MiB accepted)", s.name(), hlen));
  std::string text(hlen, '\0');
  s.read_exact(text.data(), hlen, "npy header");
  NpyHeader h = NpyDictScanner(text, s.name()).parse();
  const size_t item = h.item_size();
  if (item == 0)
    throw std::runtime_error(fmt::format("{}: npy dtype '{}' is not supported (no item size)", s.name(),
                                         h.descr.substr(0, 40)));
  const int64_t n = h.count();
  int64_t bytes = 0;
  if (n < 0 || __builtin_mul_overflow(n, int64_t(item), &bytes))
    throw std::runtime_error(fmt::format("{}: npy shape {} of '{}' overflows 64 bits", s.name(), fmt::join(h.shape, "x"),
                                         h.descr));
  const int64_t left = s.remaining();
  if (left >= 0 && bytes > left)
    throw std::runtime_error(fmt::format("{}: npy shape ({}) of '{}' needs {} bytes but only {} follow the header",
                                         s.name(), fmt::join(h.shape, ", "), h.descr, bytes, left));
  return h;
}

}  // namespace cm::data
