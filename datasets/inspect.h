// Looking at converted datasets: a labelled picture grid (`cm data show`), loader and raw-read throughput
// (`cm data bench`), and self-describing datasets whose pixels encode their own record index, used to
// prove the loader's ordering across ranks (`cm data selftest`, tests).
#pragma once
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "datasets/image_codec.h"

namespace cm::data {

// `count` random records (seeded) as a grid with `cols` columns; each cell has its label (or record index
// when unlabelled) drawn underneath. `captions` receives the same numbers in grid order.
Image dataset_grid(const std::string& dir, int64_t count, uint64_t seed, int64_t cols, std::vector<int64_t>* captions);

struct LoaderBench {
  int64_t images = 0;
  double seconds = 0, images_per_s = 0, bytes_per_s = 0;  // bytes = the uint8 pixels delivered
  double cpu_seconds = 0;  // CPU time of the whole process (all loader threads) while measuring
  bool direct = false;
};
// Runs a ShardedLoader (rank 0 of 1) for about `seconds` after two warm-up batches.
LoaderBench bench_loader(const std::string& dir, int64_t batch, double seconds, int64_t threads, const std::string& io,
                         bool flip, bool check_records = true);

struct ReadBench {
  int64_t bytes = 0;
  double seconds = 0, bytes_per_s = 0;
};
// Plain sequential read() of the shard files in 4 MiB blocks, for at most `max_seconds`; `repeat` reads
// them again until the time is up (a steadier figure for data sets in the page cache).
ReadBench bench_raw_read(const std::string& dir, double max_seconds, bool repeat);
// Asks the kernel to drop the shard files from the page cache (posix_fadvise DONTNEED), for cold-read figures.
void evict_page_cache(const std::string& dir);

// Self-describing images (3 channels, width >= 2): pixel (0, 0) holds the index in 24 bits, pixel
// (0, W-1) a marker, every other pixel a function of (index, y, x, c); a flipped image has the two swapped.
void encode_index_image(int64_t index, uint8_t* hwc, int64_t h, int64_t w);
// From a loader's float CHW image: {index, flipped}. Throws if any pixel differs from the encoding.
std::pair<int64_t, bool> decode_index_image(const float* chw, int64_t h, int64_t w);
// Writes such a dataset of `count` records (labels = index % classes) into `dir` as `shards` shards.
void write_index_dataset(const std::string& dir, int64_t count, int64_t shards, int64_t side, int64_t classes);

}  // namespace cm::data
