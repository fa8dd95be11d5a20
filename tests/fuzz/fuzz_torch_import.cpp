// PyTorch zip-format .pt importer (core/io/torch_import.cpp): zip directory, pickle machine, storages.
#include <stdexcept>
#include <torch/torch.h>
#include "core/io/torch_import.h"
#include "fuzz_common.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string path = cm::fuzz::write_scratch("input.pt", data, size);
  try {
    cm::TorchImport imp = cm::import_torch_file(path);
    for (auto& [n, t] : imp.tensors) (void)t.sum();
  } catch (const std::runtime_error&) {
  }
  return 0;
}
