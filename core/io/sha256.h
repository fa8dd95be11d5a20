// SHA-256, to name the exact weights file a figure was computed with (e.g. the Inception network of
// `cm eval`). Streaming; computed by OpenSSL's libcrypto (EVP), so a 100 MB file costs a fraction of a second.
#pragma once
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

namespace cm {

class Sha256 {
 public:
  Sha256();
  ~Sha256();
  Sha256(Sha256&&) noexcept;
  Sha256& operator=(Sha256&&) noexcept;
  void update(const void* data, size_t n);
  std::string hex_digest();  // lowercase hex of the 32-byte digest; ends the computation

 private:
  struct Ctx;  // OpenSSL's digest context, kept out of this header
  std::unique_ptr<Ctx> ctx_;
};

std::string sha256_hex(const std::string& bytes);
// Throws naming the path when the file cannot be read.
std::string sha256_file(const std::string& path);

}  // namespace cm
