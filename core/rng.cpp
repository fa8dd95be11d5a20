// Derived randomness (see rng.h).
#include "core/rng.h"

#include <mutex>
#include <torch/torch.h>

namespace cm {

uint64_t derive_seed(uint64_t seed, uint64_t a, uint64_t b, uint64_t c) {
  uint64_t h = splitmix64(seed);
  h = splitmix64(h ^ a);
  h = splitmix64(h ^ (b + 0x632BE59BD9B4E019ull));
  h = splitmix64(h ^ (c + 0x85157AF5ull));
  return h >> 1;  // keep it positive where int64 seeds are expected
}

static at::Generator default_gen(const torch::Device& device) {
  return at::globalContext().defaultGenerator(device);
}

void seed_default_generator(const torch::Device& device, uint64_t seed) {
  auto gen = default_gen(device);
  std::lock_guard<std::mutex> lock(gen.mutex());
  gen.set_current_seed(seed);
}

GeneratorSnapshot::GeneratorSnapshot(const torch::Device& device) : device_(device) {
  auto gen = default_gen(device);
  std::lock_guard<std::mutex> lock(gen.mutex());
  state_ = gen.get_state();
}

void GeneratorSnapshot::restore() const {
  auto gen = default_gen(device_);
  std::lock_guard<std::mutex> lock(gen.mutex());
  gen.set_state(state_);
}

torch::Generator cpu_generator(uint64_t seed) { return at::make_generator<at::CPUGeneratorImpl>(seed); }

}  // namespace cm
