// The sharded loader: one global permutation per epoch from (seed, epoch), the same on every rank; rank r
// of W takes rows [r B/W, (r+1) B/W) of each global batch of B, so the sequence of global batches does
// not depend on W. Random horizontal flips are drawn from (seed, epoch, global index), also independent
// of W. The cursor (epoch, batch in epoch) restores the stream exactly, on any world size.
// Not yet: the background HDF5 I/O thread, decode workers and prefetch queue (reads are synchronous).
#pragma once
#include <memory>
#include <string>
#include <vector>
#include "datasets/dataset.h"
#include "datasets/shards.h"

namespace cm {

struct LoaderOptions {
  std::string dir;
  int64_t global_batch = 64;
  int64_t rank = 0, world = 1;
  uint64_t seed = 0;
  bool random_flip = false;
};

class ShardedLoader : public DataSource {
 public:
  explicit ShardedLoader(LoaderOptions opt);
  ~ShardedLoader() override;
  Batch next() override;
  DataCursor cursor() const override { return cursor_; }
  void restore(const DataCursor& c) override;
  ModelShape shape() const override;
  std::string describe() const override;
  // Global indices of this rank's part of the next batch (what next() will return), for tests.
  std::vector<int64_t> peek_indices();
  int64_t batches_per_epoch() const { return meta_.total / opt_.global_batch; }
  const DatasetMeta& meta() const { return meta_; }

 private:
  void ensure_epoch();
  std::vector<int64_t> rank_indices();
  LoaderOptions opt_;
  DatasetMeta meta_;
  DataCursor cursor_;
  int64_t perm_epoch_ = -1;
  torch::Tensor perm_;
  struct Open;
  std::vector<std::unique_ptr<Open>> shards_;
};

}  // namespace cm
