// The table of network architectures and the model factory (see network.h).
#include "core/network.h"

#include <fmt/format.h>
#include "core/config.h"
#include "core/nets/adm_unet.h"
#include "core/nets/mlp.h"
#include "core/nets/ncsnpp.h"

namespace cm {

// Explicit table rather than static self-registration: a static library would drop unreferenced
// registration objects. Add a line here when adding an architecture.
static const std::vector<std::pair<std::string, NetworkBuilder>>& table() {
  static const std::vector<std::pair<std::string, NetworkBuilder>> t = {
      {"mlp", build_mlp},
      {"adm", build_adm},
      {"ncsnpp", build_ncsnpp},
  };
  return t;
}

std::vector<std::string> registered_networks() {
  std::vector<std::string> names;
  for (auto& [n, b] : table()) names.push_back(n);
  return names;
}

NetworkPtr make_network(ConfigReader& cfg, const ModelShape& shape) {
  std::string arch = cfg.require_string("arch");
  for (auto& [n, b] : table())
    if (n == arch) return b(cfg, shape);
  std::string near = nearest(arch, registered_networks());
  throw ConfigError(fmt::format("'{}' = \"{}\" is not a known architecture{}; known: {}", cfg.key_path("arch"), arch,
                                near.empty() ? "" : fmt::format(" (did you mean \"{}\"?)", near),
                                fmt::join(registered_networks(), ", ")));
}

int64_t count_parameters(torch::nn::Module& m) {
  int64_t n = 0;
  for (auto& p : m.parameters()) n += p.numel();
  return n;
}

int64_t to_channels_last(torch::nn::Module& m) {
  torch::NoGradGuard ng;
  int64_t changed = 0;
  auto convert = [&](torch::Tensor& t) {
    if (!t.defined() || t.dim() != 4 || t.is_contiguous(torch::MemoryFormat::ChannelsLast)) return;
    t.set_data(t.contiguous(torch::MemoryFormat::ChannelsLast));
    ++changed;
  };
  for (auto& p : m.parameters()) convert(p);
  for (auto& b : m.buffers()) convert(b);
  return changed;
}

bool has_4d_parameters(torch::nn::Module& m) {
  for (const auto& p : m.parameters())
    if (p.dim() == 4) return true;
  return false;
}

}  // namespace cm
