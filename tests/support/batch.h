// Batch arithmetic of data parallelism for the distributed tests: the configured batch is the global batch,
// each of W ranks takes global / W samples per step, optionally split into `accum` micro-batches; a batch that
// does not divide is an error, never rounded. (It lived in distributed/ but only tests used it: `cm train`
// checks train.batch against the world itself.)
#pragma once
#include <cstdint>
#include <string>
#include <fmt/format.h>
#include "distributed/check.h"  // DistError

namespace cm::test {

namespace detail {
inline std::string batch_suggestion(int64_t global, int64_t parts) {
  const int64_t down = global / parts * parts, up = down + parts;
  return down > 0 ? fmt::format("{} or {}", down, up) : fmt::format("{}", up);
}
}  // namespace detail

// global / world_size; throws DistError naming both numbers and the nearest batches that divide.
inline int64_t per_rank_batch(int64_t global_batch, int64_t world_size) {
  using dist::DistError;
  if (world_size <= 0) throw DistError(fmt::format("per_rank_batch: world size {} must be positive", world_size));
  if (global_batch <= 0) throw DistError(fmt::format("batch size {} must be positive", global_batch));
  if (global_batch % world_size != 0)
    throw DistError(fmt::format(
        "global batch {} does not divide across {} ranks: each rank takes batch / ranks samples. Use a batch that "
        "is a multiple of {} (e.g. {}), or a number of ranks that divides {}.",
        global_batch, world_size, world_size, detail::batch_suggestion(global_batch, world_size), global_batch));
  return global_batch / world_size;
}

// global / (world_size * accum): the samples of one forward/backward on one rank.
inline int64_t micro_batch(int64_t global_batch, int64_t world_size, int64_t accum) {
  using dist::DistError;
  if (accum <= 0) throw DistError(fmt::format("gradient accumulation steps {} must be positive", accum));
  const int64_t per_rank = per_rank_batch(global_batch, world_size);
  if (per_rank % accum != 0)
    throw DistError(fmt::format(
        "global batch {} over {} ranks gives {} samples per rank, which does not split into {} micro-batches. Use "
        "a global batch that is a multiple of ranks x micro-batches = {} (e.g. {}).",
        global_batch, world_size, per_rank, accum, world_size * accum,
        detail::batch_suggestion(global_batch, world_size * accum)));
  return per_rank / accum;
}

}  // namespace cm::test
