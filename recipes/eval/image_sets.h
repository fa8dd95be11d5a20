// Image collections read in order, as uint8 NHWC batches, for evaluation (`cm eval`):
//  - an .npz with 'arr_0' uint8 [N, H, W, C] (what `cm sample` and the reference image_sample.py write,
//    and the images of a VIRTUAL_*.npz reference batch), streamed without loading the whole array;
//  - a converted dataset directory (manifest.json + HDF5 shards, datasets/shards.h), in record order;
//  - a folder of PNG/JPEG/WebP files (searched depth first, names sorted), all of one size, or one such file.
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <torch/types.h>

namespace cm::data {

class ImageSet {
 public:
  virtual ~ImageSet() = default;
  int64_t size() const { return count_; }
  int64_t height() const { return h_; }
  int64_t width() const { return w_; }
  int64_t channels() const { return c_; }
  // The next up to `n` images as uint8 [n', H, W, C]; n' = 0 at the end.
  virtual torch::Tensor read(int64_t n) = 0;
  // Passes over the next `n` images (a rank's shard starts there); reads and drops them unless a set can seek.
  virtual void skip(int64_t n);
  virtual std::string describe() const = 0;  // "npz FILE (arr_0: 50000 x 64x64x3)"

 protected:
  int64_t count_ = 0, h_ = 0, w_ = 0, c_ = 0;
};

// Opens `path` by what it is: *.npz (array `array`), a directory with manifest.json, or a folder of images.
// Throws naming the path and what was expected.
std::unique_ptr<ImageSet> open_image_set(const std::string& path, const std::string& array = "arr_0");

// True when the .npz at `path` holds an array named `name`.
bool npz_has(const std::string& path, const std::string& name);
// A whole numeric array of an .npz as a CPU tensor of its dtype (|u1, <i8, <f4, <f8), e.g. stored features.
torch::Tensor read_npz_tensor(const std::string& path, const std::string& name);

}  // namespace cm::data
