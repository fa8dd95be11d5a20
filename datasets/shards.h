// The on-disk dataset: HDF5 shards NAME-00003-of-00016.h5 and a manifest.json beside them.
//
// A shard holds /images uint8 [N, H, W, C] (one chunk per image, unfiltered) and, when labelled,
// /labels int64 [N]. Its root group carries the attributes below (format name + version, the record
// range it covers, the image geometry, class count, source, preprocessing and CRC32 checksums of its
// image and label bytes), so a shard describes itself even without the manifest. Since format version 2,
// /record_xxh3 uint64 [N] holds the XXH3-64 of every image's bytes, so that a record corrupted on disk
// is caught when it is read (ShardReader::read_images, the loader), naming shard and record, not only
// by `cm data verify`; XXH3 runs at memory speed, CRC32 would cost a third of the loader's rate.
// Version 1 shards (no per-record checksums) are still read. The manifest lists every
// shard with its record count, checksums and file size; it is written last, so a directory with a
// manifest is complete. Shards are written to a temporary name and renamed when done.
//
// Why one chunk per image and no compression: the loader reads single images in a random global order;
// a bigger chunk would be read whole for each of its images, and pixels barely compress losslessly.
// Why the file format is pinned to HDF5 1.10 (fixed-array chunk index, early allocation): the chunks then
// lie in record order at fixed stride, so the loader can read image i from a memory mapping at
// offset + i * image_bytes once HDF5 has confirmed that layout (ShardReader::direct_offset).
#pragma once
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

namespace cm::data {

inline constexpr const char* kShardFormat = "cm-image-shards";
inline constexpr int64_t kShardFormatVersion = 2;
inline constexpr int64_t kShardFormatOldestReadable = 1;  // version 1: no /record_xxh3
inline constexpr const char* kManifestName = "manifest.json";

// What the whole dataset is; the same in every shard and in the manifest.
struct DatasetInfo {
  std::string name;           // file stem of the shards, e.g. "cifar10-train"
  std::string source_format;  // converter that made it, e.g. "cifar10", "imagenet", "lsun"
  std::string source;         // the input it was made from (path)
  std::string preprocessing;  // what was done to the pixels, in words
  bool paper_preprocessing = true;  // false where it differs from what the paper trained on
  int64_t height = 0, width = 0, channels = 0;
  int64_t num_classes = 0;  // 0 = unlabelled (no /labels dataset)
  int64_t total_records = 0;
  int64_t shard_count = 0;

  bool labelled() const { return num_classes > 0; }
  int64_t image_bytes() const { return height * width * channels; }
  // "" when equal, else the first difference in words ("height: 32 vs 64").
  std::string difference(const DatasetInfo& other) const;
};

// One shard, as its attributes and the manifest describe it.
struct ShardInfo {
  int64_t index = 0;
  int64_t first_record = 0;  // global index of its first record
  int64_t records = 0;
  uint32_t images_crc32 = 0;  // CRC32 of the /images bytes in record order
  uint32_t labels_crc32 = 0;  // CRC32 of the /labels int64 little-endian bytes (0 when unlabelled)
  int64_t file_bytes = 0;     // size of the committed file
  std::string file;           // file name inside the dataset directory
  int64_t format_version = kShardFormatVersion;  // of the shard file (the manifest does not say)
};

struct Manifest {
  DatasetInfo info;
  std::vector<ShardInfo> shards;  // by index
};

std::string shard_file_name(const std::string& name, int64_t index, int64_t count);
// Records [first, first + count) of shard `index` when `total` records go into `shards` shards whose
// sizes differ by at most one (the first total % shards shards are one larger).
std::pair<int64_t, int64_t> shard_range(int64_t total, int64_t shards, int64_t index);

uint32_t crc32_update(uint32_t crc, const void* data, size_t n);
uint64_t record_checksum(const void* data, size_t n);  // XXH3-64, as /record_xxh3 stores it
std::string crc_hex(uint32_t crc);

// Writes one shard: records are appended in order, commit() writes the attributes, flushes, fsyncs and
// renames the temporary file to its final name. A writer destroyed without commit() removes its file.
class ShardWriter {
 public:
  ShardWriter(const std::string& dir, const DatasetInfo& info, int64_t shard_index);
  ~ShardWriter();
  ShardWriter(const ShardWriter&) = delete;
  ShardWriter& operator=(const ShardWriter&) = delete;

  // `n` images of image_bytes() each, HWC, and their labels (nullptr when unlabelled).
  void append(const uint8_t* images, const int64_t* labels, int64_t n);
  ShardInfo commit();
  int64_t written() const;
  const std::string& final_path() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// Opens a shard read-only and validates its structure against its own attributes.
class ShardReader {
 public:
  explicit ShardReader(const std::string& path);
  ~ShardReader();
  ShardReader(ShardReader&&) noexcept;
  ShardReader& operator=(ShardReader&&) noexcept;

  const std::string& path() const;
  const DatasetInfo& dataset() const;
  const ShardInfo& shard() const;
  // Throws naming the file when this shard disagrees with the manifest (geometry, counts, checksums,
  // size), so a stale or foreign shard is caught when a loader starts.
  void check_against(const Manifest& m) const;

  std::vector<int64_t> read_labels() const;                          // [records] (empty when unlabelled)
  // Via HDF5, records local to the shard; each record is checked against its checksum (version >= 2).
  void read_images(int64_t first, int64_t n, uint8_t* out) const;
  // The per-record checksums (empty for a version 1 shard) and the check of one record's bytes, which
  // throws naming the shard, the record (local and global index) and how to find the extent of damage.
  const std::vector<uint64_t>& record_checksums() const;
  void check_record(int64_t local_index, const uint8_t* bytes) const;
  // Byte offset of image 0 in the file when image i lies at offset + i * image_bytes (one unfiltered
  // chunk per image in record order, or a contiguous dataset), checked through HDF5; nullopt otherwise.
  std::optional<int64_t> direct_offset() const;
  void read_unchecked(int64_t first, int64_t n, uint8_t* out) const;
  // CRC32 of all image bytes and of all label bytes, read through HDF5 (what `cm data verify` checks);
  // the local indices of records that fail their own checksum go to *bad_records.
  std::pair<uint32_t, uint32_t> compute_checksums(std::vector<int64_t>* bad_records = nullptr) const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// The manifest file of a dataset directory.
void write_manifest(const std::string& dir, const Manifest& m);
Manifest read_manifest(const std::string& dir);
// Builds the manifest from the shard files' attributes in `dir` (after parallel workers have written
// their shards). Throws when a shard is missing or they disagree. `name` picks one dataset when the
// directory holds several ("" = the only one).
Manifest collect_manifest(const std::string& dir, const std::string& name = "");

// Checks every shard against the manifest (attributes, shapes, sizes, recomputed checksums, label range).
// Returns the problems found, one line each (empty = all good); `progress` lines go to stderr.
std::vector<std::string> verify_dataset(const std::string& dir, bool progress = true);

}  // namespace cm::data
