// Network weights by name: a module's state dict in PyTorch order, loading named tensors into a module
// with one complete error on mismatch, and reading weight files (.safetensors, or PyTorch .pt state dicts).
#pragma once
#include <stdexcept>
#include <string>
#include <vector>
#include <torch/nn/module.h>
#include "core/io/safetensors.h"

namespace cm {

// The parameters and buffers of `m` by dotted name, in the order PyTorch's state_dict() gives them (per
// module, its own parameters, then its own buffers, then its children depth-first): the order of the
// reference state dicts. The tensors are the module's own (not copies).
NamedTensors state_dict(const torch::nn::Module& m);

// A state dict that does not fit a module. what() lists every missing, unexpected and mis-shaped name.
struct WeightsMismatchError : std::runtime_error {
  WeightsMismatchError(const std::string& msg, std::vector<std::string> missing, std::vector<std::string> unexpected,
                       std::vector<std::string> mis_shaped)
      : std::runtime_error(msg), missing(std::move(missing)), unexpected(std::move(unexpected)),
        mis_shaped(std::move(mis_shaped)) {}
  std::vector<std::string> missing, unexpected, mis_shaped;
};

struct LoadWeightsOptions {
  // Use only the entries whose names start with this prefix, with the prefix removed (e.g. "model." for a
  // checkpoint saved as {"model": state_dict}); entries without it are ignored.
  std::string prefix;
  // Allow names of the module that the file lacks (they keep their current values). Unexpected and
  // mis-shaped entries are always errors.
  bool allow_missing = false;
};

// Copies each named tensor into the module's parameter or buffer of that name (converting dtype, onto the
// module's device). Nothing is copied unless everything fits; otherwise throws WeightsMismatchError naming
// `origin` and listing all missing, unexpected and mis-shaped names with their shapes, plus a hint when
// the names only differ by a common prefix.
void load_weights(torch::nn::Module& m, const NamedTensors& tensors, const std::string& origin,
                  const LoadWeightsOptions& opt = {});

// Reads a weight file: safetensors (by its header) or a PyTorch zip-format .pt state dict (by the zip
// signature); anything else is an error that says what the file looks like and how to convert it.
NamedTensors read_weights_file(const std::string& path);

// read_weights_file + load_weights.
void load_weights_file(torch::nn::Module& m, const std::string& path, const LoadWeightsOptions& opt = {});

// Writes the module's state dict as safetensors (with `metadata`).
void save_weights_file(const torch::nn::Module& m, const std::string& path,
                       const std::map<std::string, std::string>& metadata = {});

}  // namespace cm
