// (Fashion-)MNIST IDX files (datasets/convert_idx.cpp through make_converter). Input: 2 bytes giving the
// length L of the image file, then L bytes of train-images-idx3-ubyte, the rest train-labels-idx1-ubyte.
#include <stdexcept>
#include <vector>
#include "datasets/convert.h"
#include "fuzz_common.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 2) return 0;
  const size_t l = std::min<size_t>(size - 2, size_t(data[0]) | size_t(data[1]) << 8);
  cm::fuzz::write_scratch("train-images-idx3-ubyte", data + 2, l);
  cm::fuzz::write_scratch("train-labels-idx1-ubyte", data + 2 + l, size - 2 - l);
  try {
    cm::data::ConvertOptions o;
    o.format = "fashion-mnist";
    o.src = cm::fuzz::scratch_dir();
    o.progress = false;
    cm::data::Converter c = cm::data::make_converter(o);
    std::vector<uint8_t> out(size_t(c.info.height * c.info.width * c.info.channels));
    cm::data::RawRecord r;
    c.source->seek(0);  // the converter driver seeks before it reads
    for (int64_t i = 0; i < std::min<int64_t>(c.source->count(), 8); ++i) {
      c.source->read(r);
      c.transform(r, out.data());
    }
    if (c.source->count() > 2) c.source->seek(1), c.source->read(r);
  } catch (const std::runtime_error&) {
  }
  return 0;
}
