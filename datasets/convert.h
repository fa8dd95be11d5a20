// Converters from the published dataset formats to HDF5 shards (`cm data convert`).
//
// A converter is a RecordSource (reads raw records of one format in the dataset's canonical order, with
// random access by record index so parallel workers can start at their shards) plus a transform (raw
// record -> HWC pixels of the target geometry, thread-safe, run in parallel). The driver splits the
// records into shards, streams each shard in blocks (bounded memory), shows progress, and commits each
// shard atomically; the manifest is written last (by the single process, or by `cm data manifest` after
// parallel workers).
#pragma once
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "datasets/shards.h"

namespace cm::data {

struct ConvertOptions {
  std::string format;       // cifar10, imagenet, imagenet64-npz, lsun, folder, fashion-mnist (mnist)
  std::string src;          // file or directory of the published release
  std::string out_dir;
  int64_t shards = 1;
  std::string split = "train";  // train | test (formats that have both)
  std::string name;             // shard name stem; "" = derived from format and split
  int64_t resolution = 0;       // target side for resizing formats; 0 = the format's default
  int64_t channels = 0;         // 0 = the format's default (1 for MNIST, else 3)
  int64_t pad_to = 0;           // fashion-mnist: zero-pad 28x28 to this size (e.g. 32)
  std::string resize;           // folder: "adm" (center_crop_arr), "box" (LSUN script) or "none"
  int64_t worker = 0, workers = 1;  // this process writes shards s with s % workers == worker
  int64_t threads = 0;          // decode threads; 0 = hardware threads
  int64_t limit = 0;            // convert only the first `limit` records (0 = all)
  bool overwrite = false;       // allow replacing an existing dataset in out_dir
  bool resume = false;          // keep committed shards that match (after an interrupted run)
  bool progress = true;
};

// One raw record: the bytes of the published format, its label (-1 if none) and where it came from.
struct RawRecord {
  std::string bytes;
  int64_t label = -1;
  std::string origin;  // "file: record 123" for error messages
};

class RecordSource {
 public:
  virtual ~RecordSource() = default;
  virtual int64_t count() const = 0;       // records in the source (known before reading)
  virtual void seek(int64_t index) = 0;    // the next read() returns record `index`
  virtual void read(RawRecord& r) = 0;     // throws naming the file and record on bad input
};

struct Converter {
  std::unique_ptr<RecordSource> source;
  DatasetInfo info;  // geometry, classes, source, preprocessing (total_records/shard_count set by the driver)
  // raw -> image_bytes() pixels (HWC) at `out`; must be thread-safe; throws naming r.origin on bad input.
  std::function<void(const RawRecord& r, uint8_t* out)> transform;
};

std::vector<std::string> converter_formats();
Converter make_converter(const ConvertOptions& o);

struct ConvertResult {
  std::vector<ShardInfo> shards;  // written (or kept) by this process
  bool manifest_written = false;
  int64_t records = 0;
};
ConvertResult run_conversion(const ConvertOptions& o);

// Writes the manifest of `dir` from its shards' attributes (after parallel workers). Returns it.
Manifest finalize_manifest(const std::string& dir, const std::string& name = "");

}  // namespace cm::data
