// .npy headers (datasets/archive.cpp read_npy_header): magic, version, the header dict scanner.
#include <stdexcept>
#include "fuzz_common.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  cm::fuzz::MemoryStream s(data, size, "fuzz.npy");
  try {
    cm::data::NpyHeader h = cm::data::read_npy_header(s);
    (void)h.count(), (void)h.item_size();
  } catch (const std::runtime_error&) {
  }
  return 0;
}
