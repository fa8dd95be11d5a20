// Reading zip archives (PyTorch .pt files, numpy .npz) with libzip (Debian libzip-dev), for untrusted files:
// a member's sizes are checked against the file before anything is allocated for it, only stored and
// deflated members are read (deflate expands at most about 1032:1, so a member's declared size is bounded
// by the bytes present), and a member read to its end is checked against its CRC32 and its size. Every
// error is one line starting with the caller's `prefix` (e.g. "<path>: ").
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace cm {

struct ZipMember {
  std::string name;     // as stored (no character set conversion)
  uint16_t method = 0;  // 0 stored, 8 deflate
  uint64_t compressed_size = 0, size = 0;
  uint32_t crc32 = 0;
  uint64_t index = 0;   // in the central directory
};

class ZipMemberReader;

class ZipReader {
 public:
  // Reads the central directory. Throws "cannot open '<path>': ..." when the file cannot be opened, else
  // "<prefix><what>" (not a zip archive, truncated, inconsistent).
  ZipReader(const std::string& path, std::string prefix);
  ~ZipReader();
  ZipReader(ZipReader&&) noexcept;
  ZipReader& operator=(ZipReader&&) noexcept;

  const std::vector<ZipMember>& members() const { return members_; }
  const ZipMember* find(const std::string& name) const;  // the first member of that name, or nullptr
  const std::string& path() const { return path_; }
  uint64_t file_size() const { return file_size_; }
  // Throws unless `m` is stored or deflated, unencrypted, and its sizes are possible in this file.
  void check(const ZipMember& m) const;
  // A reader of `m` (checked first). It shares this archive's libzip handle, which it keeps open after
  // this ZipReader is gone; `own_handle` opens the archive anew for it, for use from another thread.
  ZipMemberReader open(const ZipMember& m, bool own_handle = false) const;
  [[noreturn]] void fail(const std::string& what) const;

  struct Handle;

 private:
  std::string path_, prefix_;
  uint64_t file_size_ = 0;
  std::shared_ptr<Handle> handle_;
  std::vector<ZipMember> members_;
};

// A member read front to back. Reading its last byte also checks its CRC32 and that no byte follows.
class ZipMemberReader {
 public:
  ZipMemberReader(std::shared_ptr<ZipReader::Handle> handle, const ZipMember& m, std::string prefix);
  ~ZipMemberReader();
  ZipMemberReader(ZipMemberReader&&) noexcept;
  ZipMemberReader& operator=(ZipMemberReader&&) = delete;

  // Reads min(n, bytes left) bytes (all of them, or throws naming the member and the byte).
  size_t read(void* buf, size_t n);
  uint64_t position() const { return pos_; }
  uint64_t size() const { return m_.size; }

 private:
  [[noreturn]] void fail(const std::string& what) const;
  void check_end();
  std::shared_ptr<ZipReader::Handle> handle_;
  ZipMember m_;
  std::string prefix_;
  struct File;
  std::unique_ptr<File> file_;
  uint64_t pos_ = 0;
  bool end_checked_ = false;
};

}  // namespace cm
