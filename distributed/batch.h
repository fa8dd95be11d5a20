// Batch semantics of data parallelism: the configured batch size is the global batch (what the paper's
// hyperparameters mean, spec section 10); each of W ranks takes global / W samples per step, optionally split
// into `accum` micro-batches. A batch that does not divide is an error, never silently rounded: rounding
// would change the effective batch size and with it the meaning of the learning rate and EMA schedule.
#pragma once
#include <cstdint>

namespace cm::dist {

// global / world_size; throws DistError naming both numbers and the nearest batches that divide.
int64_t per_rank_batch(int64_t global_batch, int64_t world_size);
// global / (world_size * accum): the samples of one forward/backward on one rank.
int64_t micro_batch(int64_t global_batch, int64_t world_size, int64_t accum);

}  // namespace cm::dist
