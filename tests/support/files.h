// Small file and text helpers shared by the tests: whole files in and out, substring tests and counts, and
// damaging one byte of a file.
#pragma once
#include <cstdint>
#include <fstream>
#include <iterator>
#include <stdexcept>
#include <string>

namespace cm::test {

// The whole file (binary); "" when it cannot be read. (core/io/safetensors.h has cm::read_file, which throws.)
inline std::string read_text(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(f), {});
}

// Writes `bytes` to `path` (binary, replacing it); throws when that fails.
inline void write_file(const std::string& path, const std::string& bytes) {
  std::ofstream f(path, std::ios::binary);
  f.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  if (!f) throw std::runtime_error("cannot write " + path);
}

inline bool contains(const std::string& s, const std::string& what) { return s.find(what) != std::string::npos; }

// Occurrences of `needle` in `text` (overlapping ones too).
inline int count_of(const std::string& text, const std::string& needle) {
  int n = 0;
  for (size_t at = text.find(needle); at != std::string::npos; at = text.find(needle, at + 1)) ++n;
  return n;
}

// XORs the byte at `offset` (from the start, or with std::ios::end from the end: offset -1 is the last byte)
// with 0x5a.
inline void flip_byte(const std::string& path, int64_t offset, std::ios::seekdir from = std::ios::beg) {
  std::fstream f(path, std::ios::in | std::ios::out | std::ios::binary);
  f.seekg(offset, from);
  char c = 0;
  f.get(c);
  f.seekp(offset, from);
  f.put(static_cast<char>(c ^ 0x5a));
}

}  // namespace cm::test
