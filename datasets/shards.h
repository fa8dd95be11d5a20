// The dataset shard format: NAME-00003-of-00016.h5 files with /images uint8 [N, H, W, C] (chunks of whole
// images) and /labels int64 [N] when labelled, attributes describing them, and manifest.json beside the
// shards (counts, first indices, CRC32 checksums), written last. A shard is written under a ".partial"
// name and renamed when complete, so a half-written shard never looks complete.
#pragma once
#include <cstdint>
#include <string>
#include <vector>
#include <torch/types.h>

namespace cm {

constexpr const char* kShardFormat = "cm-image-shard";
constexpr int64_t kShardVersion = 1;

struct ShardMeta {
  std::string file;          // file name inside the dataset directory
  int64_t count = 0;         // images in this shard
  int64_t first_index = 0;   // global index of its first image
  uint32_t crc32 = 0;        // CRC32 of the image bytes, then of the label bytes
};

struct DatasetMeta {
  std::string name, split, source, preprocessing;
  int64_t height = 0, width = 0, channels = 0, num_classes = 0;  // num_classes 0 = unlabelled
  int64_t total = 0;
  std::vector<ShardMeta> shards;
};

std::string shard_file_name(const std::string& name, int64_t index, int64_t count);

// Streams images into one shard. Images are uint8 [H, W, C]; labels are ignored when unlabelled.
class ShardWriter {
 public:
  ShardWriter(const std::string& dir, const std::string& file, const DatasetMeta& meta, int64_t first_index);
  ~ShardWriter();  // an unfinished shard's partial file is removed
  void append(const uint8_t* hwc, int64_t label);
  ShardMeta finish();  // flush, write attributes, close, fsync, rename into place

 private:
  void flush_chunk();
  std::string dir_, file_, partial_;
  DatasetMeta meta_;
  int64_t first_index_, count_ = 0, chunk_images_;
  std::vector<uint8_t> buf_;
  std::vector<int64_t> labels_;
  uint32_t crc_images_ = 0, crc_labels_ = 0;
  int64_t h5file_ = -1, images_ = -1, labels_ds_ = -1;
  bool finished_ = false;
};

void write_manifest(const std::string& dir, const DatasetMeta& meta);
DatasetMeta read_manifest(const std::string& dir);  // throws naming the file on any problem

// Reads images [first, first + n) of one shard (uint8 [n, H, W, C]) and their labels.
struct ShardBlock {
  torch::Tensor images, labels;
};
ShardBlock read_shard_block(const std::string& path, int64_t first, int64_t n);

// Checks every shard against the manifest (attributes, counts, shapes, checksums). Returns the problems
// found (empty = all good); `progress` prints one line per shard.
std::vector<std::string> verify_dataset(const std::string& dir, bool progress);

}  // namespace cm
