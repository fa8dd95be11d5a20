// Safetensors header and data (core/io/safetensors.cpp parse_safetensors): the weights and checkpoint format.
#include <stdexcept>
#include <torch/torch.h>
#include "core/io/safetensors.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  try {
    cm::TensorFile f = cm::parse_safetensors(std::string(reinterpret_cast<const char*>(data), size), "fuzz.safetensors");
    for (auto& [n, t] : f.tensors) (void)t.numel();
  } catch (const std::runtime_error&) {
  }
  return 0;
}
