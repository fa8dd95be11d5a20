// Safetensors read/write: the weights, checkpoint and export format (readable from Python without pickle).
// Layout: u64 little-endian header size N, N bytes of JSON {name: {dtype, shape, data_offsets}, __metadata__},
// then the raw little-endian tensor bytes.
#pragma once
#include <map>
#include <string>
#include <utility>
#include <vector>
#include <torch/types.h>

namespace cm {

using NamedTensors = std::vector<std::pair<std::string, torch::Tensor>>;

struct TensorFile {
  NamedTensors tensors;                         // in file order
  std::map<std::string, std::string> metadata;  // the __metadata__ string map
  const torch::Tensor* find(const std::string& name) const;
};

// Writes atomically: to PATH.tmp-<pid>, fsync, rename, fsync of the directory. Tensors are copied to
// contiguous CPU memory. Throws std::runtime_error naming the path on any I/O failure (disk full included).
void save_safetensors(const std::string& path, const NamedTensors& tensors,
                      const std::map<std::string, std::string>& metadata = {});
// Serializes to bytes (what save_safetensors writes).
std::string safetensors_bytes(const NamedTensors& tensors, const std::map<std::string, std::string>& metadata = {});
// The 8-byte size and the JSON header alone; the data section that follows is each tensor's raw bytes in
// order. For writers that stream large tensors to a file without building the whole file in memory;
// the tensors must already be contiguous (their sizes and dtypes are what the header describes).
std::string safetensors_header(const NamedTensors& tensors, const std::map<std::string, std::string>& metadata = {});

// Reads and validates (header bounds, dtypes, offsets inside the file, no overlap); throws naming the path.
TensorFile load_safetensors(const std::string& path);
TensorFile parse_safetensors(const std::string& bytes, const std::string& origin);

// Small file helpers shared by the writers of this project.
std::string read_file(const std::string& path);                      // throws naming the path
void write_file_atomic(const std::string& path, const std::string& bytes);  // temp + fsync + rename
void fsync_directory(const std::string& dir);

}  // namespace cm
