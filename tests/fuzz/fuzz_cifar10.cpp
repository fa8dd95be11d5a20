// CIFAR-10 binary release (datasets/convert_cifar10.cpp through make_converter): the input is the
// cifar-10-binary.tar.gz (or plain tar) holding cifar-10-batches-bin/data_batch_N.bin.
#include <stdexcept>
#include <vector>
#include "datasets/convert.h"
#include "fuzz_common.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string path = cm::fuzz::write_scratch("cifar-10-binary.tar.gz", data, size);
  try {
    cm::data::ConvertOptions o;
    o.format = "cifar10";
    o.src = path;
    o.progress = false;
    cm::data::Converter c = cm::data::make_converter(o);
    std::vector<uint8_t> out(size_t(c.info.height * c.info.width * c.info.channels));
    cm::data::RawRecord r;
    c.source->seek(0);  // the converter driver seeks before it reads
    for (int64_t i = 0; i < std::min<int64_t>(c.source->count(), 8); ++i) {
      c.source->read(r);
      c.transform(r, out.data());
    }
  } catch (const std::runtime_error&) {
  }
  return 0;
}
