// Safetensors reader/writer (see safetensors.h). The JSON header is written and read with nlohmann/json
// (core/io/json.h); the file layout around it (8-byte length, data section) is written here, as there is no
// Debian package of a safetensors library for C++.
#include "core/io/safetensors.h"

#include <fcntl.h>
#include <fmt/format.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <functional>
#include <fstream>
#include <sstream>
#include <tuple>
#include <stdexcept>
#include <nlohmann/json.hpp>
#include <torch/torch.h>
#include "core/io/json.h"

namespace cm {

const torch::Tensor* TensorFile::find(const std::string& name) const {
  for (auto& [n, t] : tensors)
    if (n == name) return &t;
  return nullptr;
}

namespace {

struct DtypeName {
  const char* name;
  torch::ScalarType type;
};
const DtypeName kDtypes[] = {
    {"F64", torch::kFloat64}, {"F32", torch::kFloat32}, {"F16", torch::kFloat16}, {"BF16", torch::kBFloat16},
    {"I64", torch::kInt64},   {"I32", torch::kInt32},   {"I16", torch::kInt16},   {"I8", torch::kInt8},
    {"U8", torch::kUInt8},    {"BOOL", torch::kBool},
};

const char* dtype_name(torch::ScalarType t) {
  for (auto& d : kDtypes)
    if (d.type == t) return d.name;
  throw std::runtime_error(fmt::format("safetensors: unsupported dtype {}", c10::toString(t)));
}

}  // namespace

std::string safetensors_header(const NamedTensors& tensors, const std::map<std::string, std::string>& metadata) {
  // One member at a time, in the order given (a name given twice is written twice, as before).
  auto dump = [](const nlohmann::ordered_json& j) { return j.dump(-1, ' ', false, nlohmann::ordered_json::error_handler_t::replace); };
  std::string header = "{";
  auto member = [&](const std::string& key, const nlohmann::ordered_json& value) {
    if (header.size() > 1) header += ',';
    header += dump(key) + ':' + dump(value);
  };
  if (!metadata.empty()) member("__metadata__", nlohmann::ordered_json(metadata));
  size_t offset = 0;
  for (auto& [name, t] : tensors) {
    if (!t.defined()) throw std::runtime_error(fmt::format("safetensors: tensor '{}' is undefined", name));
    const size_t nbytes = t.numel() * t.element_size();
    nlohmann::ordered_json entry;
    entry["dtype"] = dtype_name(t.scalar_type());
    entry["shape"] = t.sizes().vec();
    entry["data_offsets"] = {offset, offset + nbytes};
    member(name, entry);
    offset += nbytes;
  }
  header += "}";
  while (header.size() % 8) header += ' ';  // align the data section to 8 bytes, as the reference writer does
  std::string out;
  uint64_t n = header.size();
  for (int b = 0; b < 8; ++b) out += static_cast<char>((n >> (8 * b)) & 0xFF);
  return out + header;
}

std::string safetensors_bytes(const NamedTensors& tensors, const std::map<std::string, std::string>& metadata) {
  NamedTensors cpu;
  size_t total = 0;
  for (auto& [name, t] : tensors) {
    if (!t.defined()) throw std::runtime_error(fmt::format("safetensors: tensor '{}' is undefined", name));
    cpu.emplace_back(name, t.detach().to(torch::kCPU).contiguous());
    total += cpu.back().second.numel() * cpu.back().second.element_size();
  }
  std::string out = safetensors_header(cpu, metadata);
  out.reserve(out.size() + total);
  for (auto& [name, c] : cpu) out.append(static_cast<const char*>(c.data_ptr()), c.numel() * c.element_size());
  return out;
}

namespace {

// One tensor's entry {dtype, shape, data_offsets}, its fields checked one by one.
struct TensorSpec {
  const DtypeName* dtype = nullptr;
  std::vector<int64_t> shape;
  int64_t begin = -1, end = -1, bytes = 0;
};

bool is_int(const Json& v) { return v.kind == Json::Num && static_cast<double>(v.integer) == v.num; }

std::vector<int64_t> read_shape(const Json& v, const std::function<std::runtime_error(const std::string&)>& bad) {
  if (v.kind != Json::Arr) throw bad("is not an array");
  if (v.arr.size() > 64) throw bad(fmt::format("has {} dimensions (at most 64)", v.arr.size()));
  std::vector<int64_t> shape;
  for (auto& d : v.arr) {
    if (!is_int(d)) throw bad("holds something other than an integer");
    if (d.integer < 0) throw bad(fmt::format("has a negative dimension {}", d.integer));
    shape.push_back(d.integer);
  }
  return shape;
}

TensorSpec read_entry(const std::string& origin, const std::string& name, const Json& e) {
  auto bad = [&](const std::string& field, const std::string& what) {
    return std::runtime_error(fmt::format("{}: tensor '{}': field '{}' {}", origin, name, field, what));
  };
  if (e.kind != Json::Obj) throw bad("(entry)", "is not an object {dtype, shape, data_offsets}");
  TensorSpec t;
  std::string dtype;
  bool have_shape = false, have_offsets = false;
  for (auto& [k, v] : e.obj) {
    if (k == "dtype") {
      if (v.kind != Json::Str) throw bad("dtype", "is not a string");
      dtype = v.str;
    } else if (k == "shape") {
      t.shape = read_shape(v, [&](const std::string& what) { return bad("shape", what); });
      have_shape = true;
    } else if (k == "data_offsets") {
      if (v.kind != Json::Arr || v.arr.size() != 2 || !is_int(v.arr[0]) || !is_int(v.arr[1]))
        throw bad("data_offsets", "is not an array of two integers");
      t.begin = v.arr[0].integer, t.end = v.arr[1].integer;
      have_offsets = true;
    }
  }
  if (!have_shape) throw bad("shape", "is missing");
  if (!have_offsets) throw bad("data_offsets", "is missing");
  auto it = std::find_if(std::begin(kDtypes), std::end(kDtypes), [&](auto& d) { return dtype == d.name; });
  if (it == std::end(kDtypes)) throw std::runtime_error(fmt::format("{}: tensor '{}' has unsupported dtype '{}'", origin, name, dtype));
  t.dtype = it;
  int64_t numel = 1;
  bool overflow = false;
  for (auto d : t.shape) overflow |= __builtin_mul_overflow(numel, d, &numel);
  overflow |= __builtin_mul_overflow(numel, static_cast<int64_t>(c10::elementSize(it->type)), &t.bytes);
  if (overflow)
    throw bad("shape", fmt::format("[{}] of {} has more bytes than 64 bits can count", fmt::join(t.shape, ","), dtype));
  return t;
}

// The header's JSON, after its length was checked against the file.
Json read_header(const std::string& bytes, const std::string& origin, uint64_t* header_size) {
  if (bytes.size() < 8) throw std::runtime_error(fmt::format("{}: not a safetensors file (shorter than 8 bytes)", origin));
  uint64_t n = 0;
  for (int b = 0; b < 8; ++b) n |= static_cast<uint64_t>(static_cast<unsigned char>(bytes[b])) << (8 * b);
  if (n > bytes.size() - 8 || n > (100ull << 20))
    throw std::runtime_error(fmt::format("{}: safetensors header size {} exceeds the file ({} bytes): truncated or not "
                                         "a safetensors file", origin, n, bytes.size()));
  Json root = parse_json(bytes.substr(8, n), origin);
  if (root.kind != Json::Obj) throw std::runtime_error(fmt::format("{}: safetensors header is not an object", origin));
  *header_size = n;
  return root;
}

void check_no_overlap(std::vector<std::tuple<int64_t, int64_t, std::string>> spans, const std::string& origin) {
  std::sort(spans.begin(), spans.end());
  for (size_t i = 1; i < spans.size(); ++i)
    if (std::get<0>(spans[i]) < std::get<1>(spans[i - 1]))
      throw std::runtime_error(fmt::format("{}: tensors '{}' and '{}' overlap in the data section: the file is corrupt",
                                           origin, std::get<2>(spans[i - 1]), std::get<2>(spans[i])));
}

}  // namespace

TensorFile parse_safetensors(const std::string& bytes, const std::string& origin) {
  uint64_t n = 0;
  const Json root = read_header(bytes, origin, &n);
  const size_t data_start = 8 + n, data_size = bytes.size() - data_start;
  TensorFile f;
  std::vector<std::tuple<int64_t, int64_t, std::string>> spans;  // for the overlap check
  for (auto& [name, e] : root.obj) {
    if (name == "__metadata__") {
      for (auto& [k, v] : e.obj) f.metadata[k] = v.str;
      continue;
    }
    const TensorSpec t = read_entry(origin, name, e);
    if (t.begin < 0 || t.end < t.begin || t.end - t.begin != t.bytes || static_cast<size_t>(t.end) > data_size)
      throw std::runtime_error(fmt::format("{}: tensor '{}' has data offsets [{}, {}] that do not fit its shape ({} bytes) "
                                           "or the file's data section ({} bytes): the file is truncated or corrupt",
                                           origin, name, t.begin, t.end, t.bytes, data_size));
    spans.emplace_back(t.begin, t.end, name);
    auto tensor = torch::empty(t.shape, torch::TensorOptions().dtype(t.dtype->type));
    if (t.bytes) std::memcpy(tensor.data_ptr(), bytes.data() + data_start + t.begin, t.bytes);
    f.tensors.emplace_back(name, tensor);
  }
  check_no_overlap(std::move(spans), origin);
  return f;
}

std::string read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw std::runtime_error(fmt::format("cannot open '{}': {}", path, std::strerror(errno)));
  std::ostringstream ss;
  ss << in.rdbuf();
  if (in.bad()) throw std::runtime_error(fmt::format("error reading '{}'", path));
  return ss.str();
}

void fsync_directory(const std::string& dir) {
  int fd = ::open(dir.empty() ? "." : dir.c_str(), O_RDONLY | O_DIRECTORY);
  if (fd < 0) return;
  ::fsync(fd);
  ::close(fd);
}

void write_file_atomic(const std::string& path, const std::string& bytes) {
  const std::string tmp = fmt::format("{}.tmp-{}", path, ::getpid());
  int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  if (fd < 0) throw std::runtime_error(fmt::format("cannot create '{}': {}", tmp, std::strerror(errno)));
  size_t done = 0;
  while (done < bytes.size()) {
    ssize_t w = ::write(fd, bytes.data() + done, bytes.size() - done);
    if (w < 0) {
      if (errno == EINTR) continue;
      int err = errno;
      ::close(fd);
      ::unlink(tmp.c_str());
      throw std::runtime_error(fmt::format("writing '{}' failed: {}{}", tmp, std::strerror(err),
                                           err == ENOSPC ? " (the disk is full: free space and run again)" : ""));
    }
    done += static_cast<size_t>(w);
  }
  if (::fsync(fd) != 0 || ::close(fd) != 0) {
    int err = errno;
    ::unlink(tmp.c_str());
    throw std::runtime_error(fmt::format("flushing '{}' failed: {}", tmp, std::strerror(err)));
  }
  if (::rename(tmp.c_str(), path.c_str()) != 0) {
    int err = errno;
    ::unlink(tmp.c_str());
    throw std::runtime_error(fmt::format("renaming '{}' to '{}' failed: {}", tmp, path, std::strerror(err)));
  }
  fsync_directory(std::filesystem::path(path).parent_path().string());
}

void save_safetensors(const std::string& path, const NamedTensors& tensors, const std::map<std::string, std::string>& metadata) {
  write_file_atomic(path, safetensors_bytes(tensors, metadata));
}

TensorFile load_safetensors(const std::string& path) { return parse_safetensors(read_file(path), path); }

}  // namespace cm
