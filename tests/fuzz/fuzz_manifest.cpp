// Dataset manifests (datasets/shards.cpp read_manifest): the input is DIR/manifest.json.
#include <stdexcept>
#include "datasets/shards.h"
#include "fuzz_common.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  cm::fuzz::write_scratch("manifest.json", data, size);
  try {
    cm::data::Manifest m = cm::data::read_manifest(cm::fuzz::scratch_dir());
    (void)m;
  } catch (const std::runtime_error&) {
  }
  return 0;
}
