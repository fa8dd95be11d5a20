// Converters from published formats to the shard format (shards.h). Implemented here: IDX (MNIST,
// Fashion-MNIST) as shipped gzip-compressed by Debian's dataset-fashion-mnist.
#pragma once
#include <cstdint>
#include <string>

namespace cm {

struct ConvertOptions {
  std::string out_dir;
  std::string name;          // shard name prefix
  int64_t shards = 1;
  int64_t pad_to = 0;        // pad images with black to this size (e.g. 28 -> 32), 0 = keep
  bool progress = true;
};

// Fashion-MNIST / MNIST IDX pair (images idx3-ubyte, labels idx1-ubyte; .gz or plain). Streams records,
// validates magic numbers and counts, and names file and record on truncated input.
void convert_idx(const std::string& images_path, const std::string& labels_path, const std::string& split,
                 const ConvertOptions& opt);

}  // namespace cm
