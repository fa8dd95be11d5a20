// Tar archives with GNU long names and pax records, plain or gzipped (datasets/archive.cpp TarReader,
// inflate_stream).
#include <memory>
#include <stdexcept>
#include <vector>
#include "fuzz_common.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::unique_ptr<cm::data::ByteStream> s = std::make_unique<cm::fuzz::MemoryStream>(data, size, "fuzz.tar");
  try {
    if (size >= 2 && data[0] == 0x1f && data[1] == 0x8b) s = cm::data::inflate_stream(std::move(s));
    cm::data::TarReader r(*s);
    cm::data::TarEntry e;
    std::vector<char> buf(4096);
    for (int n = 0; n < 64 && r.next(e); ++n)
      if (e.is_file() && e.size > 0) s->read(buf.data(), size_t(std::min<uint64_t>(e.size, buf.size())));
  } catch (const std::runtime_error&) {
  }
  return 0;
}
