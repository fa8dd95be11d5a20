// JSON reader (core/io/json.cpp): safetensors headers, manifests, COMMIT markers, metrics lines.
#include <stdexcept>
#include "core/io/json.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  try {
    cm::Json j = cm::parse_json(std::string(reinterpret_cast<const char*>(data), size), "fuzz.json");
    (void)j.get("a");
  } catch (const std::runtime_error&) {
  }
  return 0;
}
