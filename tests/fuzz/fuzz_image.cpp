// Image decoders (datasets/image_codec.cpp decode_image: JPEG, PNG, WebP), to RGB and to grey.
#include <stdexcept>
#include "datasets/image_codec.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  for (int64_t channels : {3, 1}) {
    try {
      cm::data::Image img = cm::data::decode_image(data, size, channels, "fuzz-image");
      (void)img;
    } catch (const std::runtime_error&) {
    }
  }
  return 0;
}
