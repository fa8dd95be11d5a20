// Weights by name (see weights.h).
#include "core/weights.h"

#include <fmt/format.h>
#include <cerrno>
#include <cstring>
#include <fstream>
#include <map>
#include <set>
#include <torch/torch.h>
#include "core/io/torch_import.h"

namespace cm {

namespace {

void collect(const torch::nn::Module& m, const std::string& prefix, NamedTensors& out) {
  for (auto& p : m.named_parameters(/*recurse=*/false))
    if (p.value().defined()) out.emplace_back(prefix + p.key(), p.value());
  for (auto& b : m.named_buffers(/*recurse=*/false))
    if (b.value().defined()) out.emplace_back(prefix + b.key(), b.value());
  for (auto& c : m.named_children()) collect(*c.value(), prefix + c.key() + ".", out);
}

std::string shape_str(const torch::Tensor& t) { return fmt::format("[{}]", fmt::join(t.sizes(), ", ")); }

// If every unexpected name is "<p><module name>" for one prefix p, or every module name is "<p><file
// name>", say so: the usual cause is a checkpoint saved as {"model": state_dict} or a DDP "module." wrapper.
std::string prefix_hint(const std::vector<std::string>& unexpected, const std::vector<std::string>& missing,
                        const std::set<std::string>& module_names) {
  auto common_first = [](const std::vector<std::string>& names) -> std::string {
    std::string p;
    for (auto& n : names) {
      auto dot = n.find('.');
      if (dot == std::string::npos) return "";
      std::string q = n.substr(0, dot + 1);
      if (p.empty()) p = q;
      else if (p != q) return "";
    }
    return p;
  };
  if (!unexpected.empty()) {
    std::string p = common_first(unexpected);
    if (!p.empty()) {
      size_t fits = 0;
      for (auto& n : unexpected) fits += module_names.count(n.substr(p.size()));
      if (fits == unexpected.size())
        return fmt::format("\n  hint: the file's names carry the prefix '{}' (e.g. a checkpoint saved as {{'{}': "
                           "state_dict}}): load with prefix \"{}\" (LoadWeightsOptions::prefix, or `--prefix {}`)",
                           p, p.substr(0, p.size() - 1), p, p);
    }
  }
  if (!missing.empty()) {
    std::string p = common_first(missing);
    if (!p.empty())
      return fmt::format("\n  hint: every missing name starts with '{}': is this the state dict of a part of the "
                         "network, or of a different architecture?", p);
  }
  return "";
}

}  // namespace

NamedTensors state_dict(const torch::nn::Module& m) {
  NamedTensors out;
  collect(m, "", out);
  return out;
}

void load_weights(torch::nn::Module& m, const NamedTensors& tensors, const std::string& origin,
                  const LoadWeightsOptions& opt) {
  const NamedTensors own = state_dict(m);
  std::map<std::string, torch::Tensor> own_by_name;
  std::set<std::string> own_names;
  for (auto& [n, t] : own) own_by_name.emplace(n, t), own_names.insert(n);

  std::map<std::string, torch::Tensor> given;
  std::vector<std::string> duplicates, unexpected, mis_shaped, missing;
  std::vector<std::string> unexpected_lines, mis_shaped_lines, missing_lines, mis_typed, mis_typed_lines;
  for (auto& [full, t] : tensors) {
    if (!opt.prefix.empty() && full.rfind(opt.prefix, 0) != 0) continue;
    const std::string n = full.substr(opt.prefix.size());
    if (!given.emplace(n, t).second) duplicates.push_back(n);
    auto it = own_by_name.find(n);
    if (it == own_by_name.end()) {
      unexpected.push_back(n);
      unexpected_lines.push_back(fmt::format("    {} {}", n, shape_str(t)));
    } else if (!t.defined() || it->second.sizes() != t.sizes()) {
      mis_shaped.push_back(n);
      mis_shaped_lines.push_back(fmt::format("    {}: file {}, network {}", n, t.defined() ? shape_str(t) : "undefined",
                                             shape_str(it->second)));
    } else if (t.scalar_type() != it->second.scalar_type() &&
               !(c10::isFloatingType(t.scalar_type()) && c10::isFloatingType(it->second.scalar_type()))) {
      // Floating kinds convert (an fp16 or bf16 export loads into fp32 parameters, as torch's
      // load_state_dict does); anything else (I32 into a float parameter, a float into an integer
      // buffer) is not these weights, and a value conversion would load garbage without a word.
      mis_typed.push_back(n);
      mis_typed_lines.push_back(fmt::format("    {}: file {}, network {}", n, c10::toString(t.scalar_type()),
                                            c10::toString(it->second.scalar_type())));
    }
  }
  for (auto& [n, t] : own)
    if (!given.count(n)) {
      missing.push_back(n);
      missing_lines.push_back(fmt::format("    {} {}", n, shape_str(t)));
    }

  const bool bad_missing = !missing.empty() && !opt.allow_missing;
  if (bad_missing || !unexpected.empty() || !mis_shaped.empty() || !mis_typed.empty() || !duplicates.empty()) {
    std::string msg = fmt::format("{}{}: the weights do not fit the network ({} missing, {} unexpected, {} mis-shaped{}; "
                                  "the file has {} entries{}, the network {})",
                                  origin, opt.prefix.empty() ? "" : fmt::format(" (prefix '{}')", opt.prefix),
                                  bad_missing ? missing.size() : 0, unexpected.size(), mis_shaped.size(),
                                  mis_typed.empty() ? "" : fmt::format(", {} of another dtype", mis_typed.size()), given.size(),
                                  opt.prefix.empty() ? "" : " under the prefix", own.size());
    if (bad_missing) msg += "\n  missing (in the network, not in the file):\n" + fmt::format("{}", fmt::join(missing_lines, "\n"));
    if (!unexpected.empty())
      msg += "\n  unexpected (in the file, not in the network):\n" + fmt::format("{}", fmt::join(unexpected_lines, "\n"));
    if (!mis_shaped.empty()) msg += "\n  mis-shaped:\n" + fmt::format("{}", fmt::join(mis_shaped_lines, "\n"));
    if (!mis_typed.empty())
      msg += "\n  of another dtype (only floating kinds convert):\n" + fmt::format("{}", fmt::join(mis_typed_lines, "\n"));
    if (!duplicates.empty()) msg += fmt::format("\n  duplicated in the file: {}", fmt::join(duplicates, ", "));
    msg += prefix_hint(unexpected, bad_missing ? missing : std::vector<std::string>{}, own_names);
    if (!bad_missing) missing.clear();
    throw WeightsMismatchError(msg, missing, unexpected, mis_shaped);
  }

  torch::NoGradGuard no_grad;
  for (auto& [n, dst] : own_by_name) {
    auto it = given.find(n);
    if (it != given.end()) const_cast<torch::Tensor&>(dst).copy_(it->second);
  }
}

NamedTensors read_weights_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw std::runtime_error(fmt::format("cannot open weights file '{}': {}", path, std::strerror(errno)));
  char head[16] = {};
  in.read(head, sizeof head);
  const auto got = in.gcount();
  in.close();
  if (got >= 4 && head[0] == 'P' && head[1] == 'K' && head[2] == 3 && head[3] == 4) return load_torch_state_dict(path);
  if (got >= 9 && head[8] == '{') return load_safetensors(path).tensors;
  if (got >= 2 && static_cast<unsigned char>(head[0]) == 0x80 && head[1] >= 2 && head[1] <= 5)
    throw std::runtime_error(fmt::format(
        "{}: this is a bare Python pickle, not a weights file this program reads. If it is an EDM network snapshot "
        "(network-snapshot-*.pkl), convert it with tools/edm_pickle_to_safetensors.py; if it is an old torch.save file, "
        "re-save it with torch.save(state_dict, path) from PyTorch >= 1.6 (zip format).", path));
  throw std::runtime_error(fmt::format("{}: neither safetensors nor a PyTorch zip-format .pt file (first bytes do not "
                                       "match either format)", path));
}

void load_weights_file(torch::nn::Module& m, const std::string& path, const LoadWeightsOptions& opt) {
  load_weights(m, read_weights_file(path), path, opt);
}

void save_weights_file(const torch::nn::Module& m, const std::string& path,
                       const std::map<std::string, std::string>& metadata) {
  save_safetensors(path, state_dict(m), metadata);
}

}  // namespace cm
