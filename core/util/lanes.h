// Lanes: pieces of CPU work run at once, one per thread, each with single-threaded kernels.
//
// On a CPU with few cores, intra-op parallelism splits every kernel of a training step across the threads;
// the small kernels of a 32x32 network (group norms, attention's 256x256 products, elementwise ops) gain
// little from that and pay a fork and a join each. Lanes cut the work instead: every lane trains its own
// part of the micro-batch from start to end on one thread (core/engine.h, train.lanes).
//
// A lane is a member of an OpenMP parallel region, so LibTorch's kernels (ATen's parallel_for and oneDNN,
// which share that OpenMP runtime) see a parallel region and run single-threaded inside it; OpenBLAS's own
// thread pool is set to one thread while lanes run. Each lane starts with the caller's thread-local state
// (grad mode, autocast, profiler observers). This file is compiled with OpenMP and without the shared
// precompiled header (the header's torch includes are built without OpenMP), and includes no torch header
// itself, so its users need none.
#pragma once
#include <cstdint>
#include <functional>

namespace cm {

// Whether run_lanes really runs lanes at once with single-threaded kernels: this build has OpenMP, and
// LibTorch uses the same OpenMP runtime (a LibTorch bundling its own libgomp would run the lanes' kernels
// multi-threaded again). Probed once, at the top level; false inside a lane (nested lanes run in turn).
bool lanes_run_concurrently();

// Runs f(0), ..., f(n - 1), at most `threads` at once (lane l on thread l % threads, in order), and returns
// when all have finished; the first exception any lane threw (lowest lane first) is rethrown then.
// Without concurrency (see above) the lanes run one after another on the calling thread.
void run_lanes(int64_t n, int threads, const std::function<void(int64_t)>& f);

// OpenBLAS's own thread pool (the pthread build Debian's LibTorch uses) at one thread for the guard's
// lifetime; nested guards keep it so until the outermost ends, which restores the count found at start-up.
// Its results for a matrix product can depend on its thread count, so work that must not (the same numbers
// on any number of threads) and concurrent lanes run under it. For a thread outside any parallel region;
// another BLAS is left alone (found at run time).
class SingleThreadedBlas {
 public:
  SingleThreadedBlas();
  ~SingleThreadedBlas();
  SingleThreadedBlas(const SingleThreadedBlas&) = delete;
  SingleThreadedBlas& operator=(const SingleThreadedBlas&) = delete;
};

}  // namespace cm
