// TOML recipes (core/config.cpp Config::parse and the resolved-config writers).
#include <stdexcept>
#include "core/config.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  try {
    cm::Config c = cm::Config::parse(std::string(reinterpret_cast<const char*>(data), size), "fuzz.toml");
    (void)c.to_toml(), (void)c.to_json(), (void)c.hash();
    if (c.has("train.lr")) c.set("train.lr", "0.5");
  } catch (const std::runtime_error&) {
  }
  return 0;
}
