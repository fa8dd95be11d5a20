// The data contract of the training engine (core/engine.h): batches of x in [-1, 1] (images NCHW or
// vectors [B, D]) with optional labels, and a cursor that makes the stream resumable. The sources
// themselves (converted shards, toy mixtures, synthetic batches) live in datasets/ and distributed/.
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <torch/types.h>
#include "core/network.h"
#include "core/parameterization.h"  // DenoiserFn

namespace cm {

struct Batch {
  torch::Tensor x;       // float32, this rank's part of the global batch, in [-1, 1] for images
  torch::Tensor labels;  // int64 [B], undefined when the dataset is unlabelled
};

// Position in the data stream. A source restores from it to yield exactly the batches an uninterrupted
// run would have yielded next, on any world size (the stream is defined in global batches).
struct DataCursor {
  int64_t epoch = 0;
  int64_t batch_in_epoch = 0;   // global batches already taken in this epoch
  int64_t batches_total = 0;    // global batches taken since the start
};

class DataSource {
 public:
  virtual ~DataSource() = default;
  virtual Batch next() = 0;                       // this rank's slice of the next global batch
  virtual DataCursor cursor() const = 0;
  virtual void restore(const DataCursor& c) = 0;
  virtual ModelShape shape() const = 0;           // channels, resolution (0 for vectors), classes
  virtual std::string describe() const = 0;       // one line for logs
  // The data's exact denoiser, when it has one in closed form (the toy mixtures): CD with teacher =
  // "exact" distils it. Empty otherwise.
  virtual DenoiserFn exact_denoiser() const { return {}; }
  // n fresh points from the data distribution itself, when it is known in closed form (the toy mixtures:
  // their pictures and sliced Wasserstein figures). Undefined otherwise.
  virtual torch::Tensor fresh_points(int64_t n, torch::Generator& gen) const { return {}; }
};

}  // namespace cm
