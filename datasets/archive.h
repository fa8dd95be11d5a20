// Reading the containers the published datasets come in, as bounded-memory streams: plain files, gzip
// (.gz, .tar.gz, via zlib), tar archives, zip archives (.npz, stored or deflated, zip64, via libzip) and
// .npy arrays.
// Every error names the file and the byte position where it went wrong.
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <vector>
#include "core/io/zip.h"

namespace cm::data {

// A forward-only byte stream.
class ByteStream {
 public:
  virtual ~ByteStream() = default;
  // Reads up to n bytes; fewer only at the end of the stream.
  virtual size_t read(void* buf, size_t n) = 0;
  // Skips n bytes (by reading where the stream cannot seek); returns how many were skipped.
  virtual uint64_t skip(uint64_t n);
  uint64_t position() const { return pos_; }
  const std::string& name() const { return name_; }
  // Reads exactly n bytes or throws "<name>: truncated at byte <pos> while reading <what>".
  void read_exact(void* buf, size_t n, const std::string& what);
  void skip_exact(uint64_t n, const std::string& what);
  // Bytes left when the stream knows its length (a zip member), else -1: lets readers of untrusted
  // headers refuse sizes the data cannot hold before allocating for them.
  virtual int64_t remaining() const { return -1; }

 protected:
  explicit ByteStream(std::string name) : name_(std::move(name)) {}
  uint64_t pos_ = 0;
  std::string name_;
};

// A file read through a buffer; `offset`/`length` select a byte range (length < 0: to the end).
std::unique_ptr<ByteStream> open_file(const std::string& path, uint64_t offset = 0, int64_t length = -1);
// Inflates a zlib/gzip stream (`raw`: headerless deflate as inside zip). Gzip members may be concatenated.
std::unique_ptr<ByteStream> inflate_stream(std::unique_ptr<ByteStream> src, bool raw = false);
// A file, inflated when it starts with the gzip magic bytes.
std::unique_ptr<ByteStream> open_maybe_gzip(const std::string& path);

// Tar (ustar, GNU long names, pax path records). next() positions the stream at the entry's data.
struct TarEntry {
  std::string name;
  uint64_t size = 0;
  char type = '0';           // '0' file, '5' directory, ...
  uint64_t data_offset = 0;  // position of the data in the (uncompressed) stream
  bool is_file() const { return type == '0' || type == '\0' || type == '7'; }
};
class TarReader {
 public:
  explicit TarReader(ByteStream& s) : s_(s) {}
  bool next(TarEntry& e);  // false at the end of the archive

 private:
  ByteStream& s_;
  uint64_t next_header_ = 0;
};
// Entries (files only) of a tar stream, with their data offsets; reads through the whole stream.
std::vector<TarEntry> list_tar(ByteStream& s);

// Zip archive (for .npz), read with libzip (core/io/zip.h). Members are read as streams, each on its own
// libzip handle; a fully read member is checked against its CRC32.
using ZipEntry = cm::ZipMember;
class ZipArchive {
 public:
  explicit ZipArchive(const std::string& path);
  const std::vector<ZipEntry>& entries() const { return zip_.members(); }
  const ZipEntry* find(const std::string& name) const { return zip_.find(name); }
  std::unique_ptr<ByteStream> open(const ZipEntry& e) const;
  const std::string& path() const { return zip_.path(); }

 private:
  ZipReader zip_;
};

// The header of a .npy array; the stream is left at the first data byte. The header dict is read by a
// small scanner (no regex): 'descr' must give an item size, 'shape' non-negative dimensions whose byte
// count fits 63 bits (and the stream's remaining bytes when it knows them); errors name the stream.
struct NpyHeader {
  std::string descr;  // e.g. "|u1", "<i8"
  bool fortran_order = false;
  std::vector<int64_t> shape;
  int64_t count() const;
  size_t item_size() const;  // from descr
};
NpyHeader read_npy_header(ByteStream& s);

}  // namespace cm::data
