// The sharded image loader: a DataSource over a converted dataset directory (manifest + HDF5 shards).
//
// The stream is defined in global batches, independent of the number of ranks:
//   - epoch e visits the records in the order epoch_permutation(N, seed, e) (the same on every rank);
//   - global batch b of epoch e is positions [b*B, (b+1)*B) of that order (the last partial batch is
//     dropped, as the reference loader's drop_last), and rank r of W takes its contiguous B/W slice;
//   - record i in epoch e is flipped horizontally iff flip_of(seed, e, i) (when random_flip is on).
// So every rank knows the whole stream from (seed, position) alone: the cursor is just a batch count, and
// restoring it continues exactly, on any world size.
//
// Threads (why): one I/O thread per loader reads the batch's images, because the serial HDF5 library
// serializes every call anyway. When HDF5 confirms at start-up that a shard's chunks lie at a fixed
// stride (ShardReader::direct_offset), the shard is memory-mapped instead and the I/O thread only brings
// the batch's pages into memory (and asks for the next batch's while data comes from disk): no HDF5 call
// and no system call per image on the hot path. A small pool converts uint8 HWC to float NCHW in
// [-1, 1] (and flips) off the I/O thread. Up to `prefetch` batches are in flight. On CUDA the batch is
// assembled in pinned memory and copied with non_blocking=true.
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include <torch/types.h>

#include "core/data.h"
#include "datasets/shards.h"

namespace cm {
class ConfigReader;
}

namespace cm::data {

struct LoaderOptions {
  std::string dir;           // dataset directory holding manifest.json
  int64_t global_batch = 0;  // must be a multiple of world
  int64_t rank = 0, world = 1;
  uint64_t seed = 0;
  bool random_flip = true;
  bool labels = false;      // return labels (class-conditional training; only if the dataset has them)
  int64_t threads = 2;      // conversion workers
  int64_t prefetch = 4;     // batches in flight
  std::string io = "auto";  // auto (direct where possible) | direct (required) | hdf5 (always through HDF5)
  bool check_records = true;  // verify each record's checksum as it is read (off only to measure its cost)
  torch::Device device = torch::kCPU;
};

// The record order of epoch `epoch`: a permutation of [0, n) from (seed, epoch), independent of anything else.
std::vector<int64_t> epoch_permutation(int64_t n, uint64_t seed, int64_t epoch);
// Whether record `index` is flipped in epoch `epoch`.
bool flip_of(uint64_t seed, int64_t epoch, int64_t index);
// uint8 -> float as the reference: x / 127.5 - 1 in float32.
float pixel_to_float(uint8_t v);

class ShardedLoader : public DataSource {
 public:
  explicit ShardedLoader(LoaderOptions o);
  ~ShardedLoader() override;
  ShardedLoader(const ShardedLoader&) = delete;
  ShardedLoader& operator=(const ShardedLoader&) = delete;

  Batch next() override;
  DataCursor cursor() const override;
  void restore(const DataCursor& c) override;
  ModelShape shape() const override;
  std::string describe() const override;

  const Manifest& manifest() const;
  int64_t batches_per_epoch() const;
  int64_t local_batch() const;
  bool direct_io() const;  // true when every shard is read from a memory mapping (no HDF5 calls)

  struct Impl;

 private:
  std::unique_ptr<Impl> impl_;
};

// The image source of a `dataset` config table (kind = "hdf5"): keys
//   path (required), class_cond (false: no labels, unconditional), resolution / channels / num_classes
//   (describe the data; checked against the manifest when given), random_flip (default false, as Recipe::bind),
//   loader_threads (2), prefetch (4), io ("auto"), name (free text).
// Reads every key it knows and calls finish(), so unknown keys are errors naming their path.
}  // namespace cm::data

namespace cm {
// The trainer's names for the loader (recipes/recipe.cpp builds it from LoaderOptions).
using data::LoaderOptions;
using data::ShardedLoader;

std::unique_ptr<DataSource> make_image_source(ConfigReader& dataset_cfg, int64_t rank, int64_t world, int64_t global_batch,
                                              uint64_t seed, torch::Device device = torch::kCPU);
}  // namespace cm
