// Randomness of a training step, derived rather than carried: every random draw of step k comes from
// generators seeded with (seed, k[, rank]). Why: a resumed run, or one on a different number of ranks,
// then draws exactly what an uninterrupted run would have drawn, with no generator state to save.
//  - data noise z and noise indices n: drawn for the whole *global* batch from (seed, k), each rank
//    keeps its slice, so the loss does not depend on the world size;
//  - dropout: the device's default generator reseeded with (seed, k, rank) before the student forward,
//    and restored to that same state before the target forward, so both passes use identical masks
//    (the reference code restores only the CPU generator, which is wrong on GPU).
#pragma once
#include <cstdint>
#include <torch/types.h>

namespace cm {

// SplitMix64 (Steele, Lea and Flood 2014), the one copy: a tiny, well-mixed generator whose output is fixed by
// its definition, so what it drives (derive_seed, the loader's epoch permutations and flips) is the same on
// every platform and compiler (std:: distributions are not).
constexpr uint64_t kSplitMix64Gamma = 0x9E3779B97F4A7C15ull;
// The output for state `x`: the finalizer applied to x + gamma.
constexpr uint64_t splitmix64(uint64_t x) {
  x += kSplitMix64Gamma;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}
// The generator form: returns splitmix64(state) and advances `state` by gamma.
constexpr uint64_t splitmix64_next(uint64_t& state) {
  const uint64_t out = splitmix64(state);
  state += kSplitMix64Gamma;
  return out;
}

uint64_t derive_seed(uint64_t seed, uint64_t a, uint64_t b = 0, uint64_t c = 0);

// Seed the default generator of `device` (CPU, or the given CUDA device).
void seed_default_generator(const torch::Device& device, uint64_t seed);

// Snapshot of the default generator of a device, restorable any number of times.
class GeneratorSnapshot {
 public:
  explicit GeneratorSnapshot(const torch::Device& device);
  void restore() const;

 private:
  torch::Device device_;
  torch::Tensor state_;
};

// A CPU generator seeded with `seed` (for draws that must not touch the global generators).
torch::Generator cpu_generator(uint64_t seed);

// Rank `rank`'s rows [offset, offset + count) of a global draw.
struct Slice {
  int64_t offset = 0, count = 0, global = 0;
};

}  // namespace cm
