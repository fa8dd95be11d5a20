// Shared pieces of the fuzz targets (tests/fuzz): an in-memory ByteStream and a scratch file for the
// parsers that take a path. Each target catches std::runtime_error only (the documented error of every
// parser); anything else escaping (std::bad_alloc, std::length_error, c10::Error, std::invalid_argument
// from a bare stoul, ...) aborts and libFuzzer reports it, as it does a crash, hang, leak or sanitizer report.
#pragma once
#include <unistd.h>

#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <string>
#include "datasets/archive.h"

namespace cm::fuzz {

class MemoryStream : public cm::data::ByteStream {
 public:
  MemoryStream(const uint8_t* d, size_t n, std::string name = "fuzz-input") : ByteStream(std::move(name)), d_(d), n_(n) {}
  size_t read(void* buf, size_t n) override {
    const size_t take = std::min(n, n_ - size_t(pos_));
    std::memcpy(buf, d_ + pos_, take);
    pos_ += take;
    return take;
  }
  int64_t remaining() const override { return int64_t(n_ - size_t(pos_)); }

 private:
  const uint8_t* d_;
  size_t n_;
};

// A per-process scratch directory under $TMPDIR (one fuzzing process writes its inputs there).
inline const std::string& scratch_dir() {
  static const std::string dir = [] {
    const char* t = std::getenv("TMPDIR");
    std::string tmpl = std::string(t && *t ? t : "/tmp") + "/cm-fuzz-XXXXXX";
    if (!::mkdtemp(tmpl.data())) std::abort();
    return tmpl;
  }();
  return dir;
}

inline std::string write_scratch(const std::string& name, const uint8_t* d, size_t n) {
  const std::string path = scratch_dir() + "/" + name;
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(reinterpret_cast<const char*>(d), std::streamsize(n));
  return path;
}

}  // namespace cm::fuzz
