// Cross-rank consistency checks (see rank_checksums.h).
#include "distributed/rank_checksums.h"

#include <cstring>
#include <map>
#include <sstream>
#include <fmt/format.h>
#include <fmt/ranges.h>
#include "distributed/check.h"
#include "distributed/world.h"

namespace cm::dist {
namespace {

constexpr uint64_t kMul1 = 0x9E3779B97F4A7C15ull;
constexpr uint64_t kMul2 = 0xC2B2AE3D27D4EB4Full;

inline uint64_t rotl(uint64_t x, int r) { return (x << r) | (x >> (64 - r)); }
inline uint64_t mix(uint64_t h, uint64_t w) { return rotl(h ^ (w * kMul2), 31) * kMul1; }

uint64_t hash_bytes(uint64_t h, const unsigned char* p, size_t n) {
  // Four independent lanes keep the multiplier pipeline busy; the lanes are folded at the end.
  uint64_t lane[4] = {h, h ^ kMul1, h ^ kMul2, h + 1};
  size_t i = 0;
  for (; i + 32 <= n; i += 32)
    for (int k = 0; k < 4; ++k) {
      uint64_t w;
      std::memcpy(&w, p + i + 8 * k, 8);
      lane[k] = mix(lane[k], w);
    }
  for (; i + 8 <= n; i += 8) {
    uint64_t w;
    std::memcpy(&w, p + i, 8);
    lane[0] = mix(lane[0], w);
  }
  uint64_t tail = 0;
  std::memcpy(&tail, p + i, n - i);
  lane[1] = mix(lane[1], tail ^ (static_cast<uint64_t>(n - i) << 56));
  uint64_t out = 0;
  for (int k = 0; k < 4; ++k) out = mix(out, lane[k]);
  return mix(out, n);
}

}  // namespace

uint64_t tensors_checksum(const std::vector<torch::Tensor>& tensors) {
  uint64_t h = 0x243F6A8885A308D3ull;
  for (const auto& t0 : tensors) {
    if (!t0.defined()) {
      h = mix(h, 0xDEADull);
      continue;
    }
    torch::Tensor t = t0.detach().to(torch::kCPU).contiguous();
    h = mix(h, static_cast<uint64_t>(t.scalar_type()));
    for (auto s : t.sizes()) h = mix(h, static_cast<uint64_t>(s));
    h = hash_bytes(h, static_cast<const unsigned char*>(t.data_ptr()), t.nbytes());
  }
  return h;
}

void check_same_on_all_ranks(const std::vector<NamedTensors>& sets, int64_t step) {
  std::string mine;
  for (auto& [name, tensors] : sets) mine += fmt::format("{:016x} ", tensors_checksum(tensors));
  const auto all = all_gather_strings(mine);
  std::vector<std::string> problems;
  for (size_t k = 0; k < sets.size(); ++k) {
    // Group ranks by checksum: "ranks 0, 1: 0x..; rank 2: 0x..".
    std::map<std::string, std::vector<size_t>> groups;
    for (size_t r = 0; r < all.size(); ++r) groups[all[r].substr(17 * k, 16)].push_back(r);
    if (groups.size() == 1) continue;
    std::vector<std::string> parts;
    for (auto& [sum, ranks] : groups)
      parts.push_back(fmt::format("{} {}: {}", ranks.size() == 1 ? "rank" : "ranks", fmt::join(ranks, ", "), sum));
    problems.push_back(fmt::format("'{}' differs across ranks at step {}: {}", sets[k].first, step,
                                   fmt::join(parts, "; ")));
  }
  if (!problems.empty())
    throw DistError(fmt::format(
        "{}: consistency check failed:\n  {}\nThese tensors must be bit-identical on every rank. Likely causes: a "
        "rank-dependent random number or data path in the update, a non-deterministic reduction, or an update "
        "skipped on some ranks (e.g. a loss-scale overflow seen by only some ranks).",
        rank_tag(), fmt::join(problems, "\n  ")));
}

bool ConsistencyCheck::maybe(int64_t step, const std::vector<NamedTensors>& sets) const {
  if (every_ <= 0 || step % every_ != 0) return false;
  check_same_on_all_ranks(sets, step);
  return true;
}

}  // namespace cm::dist
