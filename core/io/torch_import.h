// Reads PyTorch .pt files in the zip format (what torch.save writes since PyTorch 1.6, and what the
// released checkpoints of openai/consistency_models are) into named tensors, without Python.
//
// Why our own reader: LibTorch 1.13's torch::pickle_load rejects an OrderedDict that carries the
// `_metadata` attribute ("Expected GenericDict but got None"), and every state_dict() is such a dict.
//
// The file is a zip archive (entries stored, or deflated: both handled; zip64 records too) holding
//   <archive>/data.pkl   a pickle (protocols 2 to 5) of the object, tensors as persistent ids
//   <archive>/data/<key> the raw little-endian bytes of each storage
// The pickle is run on a small stack machine that knows the opcodes torch.save emits and the globals a
// state dict needs (collections.OrderedDict, torch._utils._rebuild_tensor_v2 / _rebuild_parameter,
// torch.*Storage); any other global becomes an opaque object, so non-tensor entries of a checkpoint
// (step counters, strings, numpy scalars) are skipped rather than fatal.
#pragma once
#include <string>
#include <vector>
#include "core/io/safetensors.h"

namespace cm {

struct TorchImport {
  NamedTensors tensors;               // every tensor, nested dicts/lists flattened to dotted names
  std::vector<std::string> skipped;   // dotted names of non-tensor leaves ("step (int)", "args (object)")
};

// Reads every tensor of a zip-format .pt file. Nested containers are flattened: {"model": {"w": T}} gives
// "model.w", lists give indices ("layers.0"). Throws std::runtime_error naming the file and, for a bad
// pickle, the byte offset and opcode.
TorchImport import_torch_file(const std::string& path);

// The tensors of a .pt file by dotted name. With `select` (a dotted path such as "model" or "ema.0") only the
// entries under it are returned, with "select." removed; an unknown path is an error naming the top-level
// keys. Without it, every tensor comes back (a plain state dict as it is; {"model": sd} as "model.*", which
// load_weights's mismatch error then recognises and suggests the prefix for).
NamedTensors load_torch_state_dict(const std::string& path, const std::string& select = "");

}  // namespace cm
