// Zip archives and the .npy arrays inside .npz files (datasets/archive.cpp ZipArchive, read_npy_header).
#include <stdexcept>
#include <vector>
#include "fuzz_common.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string path = cm::fuzz::write_scratch("input.npz", data, size);
  try {
    cm::data::ZipArchive zip(path);
    int n = 0;
    for (auto& e : zip.entries()) {
      if (++n > 8) break;
      try {
        auto s = zip.open(e);
        const std::string& name = e.name;
        std::vector<char> buf(1 << 16);
        if (name.size() > 4 && name.compare(name.size() - 4, 4, ".npy") == 0) {
          cm::data::NpyHeader h = cm::data::read_npy_header(*s);
          (void)h.count();
        }
        for (int k = 0; k < 32 && s->read(buf.data(), buf.size()) == buf.size(); ++k) {
        }
      } catch (const std::runtime_error&) {
      }
    }
  } catch (const std::runtime_error&) {
  }
  return 0;
}
