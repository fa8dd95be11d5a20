// SHA-256 (FIPS 180-4), to name the exact weights file a figure was computed with (e.g. the Inception
// network of `cm eval`). Streaming; ~300 MB/s, so a 100 MB file costs a fraction of a second.
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>

namespace cm {

class Sha256 {
 public:
  Sha256();
  void update(const void* data, size_t n);
  std::string hex_digest();  // lowercase hex of the 32-byte digest; ends the computation

 private:
  void block(const uint8_t* p);
  uint32_t h_[8];
  uint8_t buf_[64];
  size_t buf_len_ = 0;
  uint64_t total_ = 0;
};

std::string sha256_hex(const std::string& bytes);
// Throws naming the path when the file cannot be read.
std::string sha256_file(const std::string& path);

}  // namespace cm
