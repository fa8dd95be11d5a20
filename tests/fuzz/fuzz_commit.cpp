// Checkpoint COMMIT markers (core/io/checkpoint_dir.cpp verify_checkpoint): the input is the marker of
// run/checkpoints/step_00000001, a directory that also holds one small file "a.bin".
#include <filesystem>
#include <stdexcept>
#include "core/io/checkpoint_dir.h"
#include "fuzz_common.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const std::string dir = [] {
    const std::string d = cm::fuzz::scratch_dir() + "/step_00000001";
    std::filesystem::create_directories(d);
    std::ofstream(d + "/a.bin") << "abc";
    return d;
  }();
  std::ofstream(dir + "/COMMIT", std::ios::binary | std::ios::trunc).write(reinterpret_cast<const char*>(data), std::streamsize(size));
  try {
    cm::CheckpointInfo info = cm::verify_checkpoint(dir);
    (void)info;
  } catch (const std::runtime_error&) {
  }
  return 0;
}
