// Helpers of the dataset tests: run Python (Debian's /usr/bin/python3 with PIL, numpy, lmdb) to make files
// in the published formats and the reference outputs, read raw files, read whole converted datasets, and
// write a small one.
#pragma once
#include <gtest/gtest.h>

#include <unistd.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include <torch/torch.h>

#include "core/rng.h"
#include "core/io/safetensors.h"  // read_file
#include "datasets/shards.h"
#include "support/files.h"
#include "support/paths.h"

namespace cm::test {

// The interpreter with python3-pil, python3-numpy and python3-lmdb (the python3 on PATH may be another).
inline std::string python() { return "/usr/bin/python3"; }

// Runs `script` (Python source) with `args` in `dir`; fails the test with the output when it fails.
inline std::string run_python(const std::string& dir, const std::string& script, const std::string& args = "") {
  const std::string path = dir + "/fixture.py";
  write_file(path, script);
  std::string out;
  int rc = run_command("cd '" + dir + "' && " + python() + " " + path + " " + args, &out);
  if (rc != 0) ADD_FAILURE() << "python fixture failed (rc " << rc << "):\n" << out;
  return out;
}

template <typename T>
std::vector<T> read_raw(const std::string& path) {
  std::string b = read_file(path);
  std::vector<T> v(b.size() / sizeof(T));
  std::memcpy(v.data(), b.data(), v.size() * sizeof(T));
  return v;
}

// All images (HWC, record order) and labels of a converted dataset, read through HDF5.
struct DatasetContents {
  data::Manifest manifest;
  std::vector<uint8_t> images;
  std::vector<int64_t> labels;
};
inline DatasetContents read_dataset(const std::string& dir) {
  DatasetContents c;
  c.manifest = data::read_manifest(dir);
  for (const auto& e : c.manifest.shards) {
    data::ShardReader r((std::filesystem::path(dir) / e.file).string());
    r.check_against(c.manifest);
    std::vector<uint8_t> px(size_t(e.records * c.manifest.info.image_bytes()));
    r.read_images(0, e.records, px.data());
    c.images.insert(c.images.end(), px.begin(), px.end());
    auto l = r.read_labels();
    c.labels.insert(c.labels.end(), l.begin(), l.end());
  }
  return c;
}

// N 28x28 grey labelled images (random contrast and brightness per image), 2 shards, in the layout
// `cm data convert` writes.
inline void write_grey_dataset(const std::string& dir, int64_t n) {
  std::filesystem::create_directories(dir);
  auto g = cpu_generator(31);
  auto scale = torch::rand({n, 1, 1, 1}, g), offset = torch::rand({n, 1, 1, 1}, g) * (1 - scale);
  auto imgs = ((torch::rand({n, 28, 28, 1}, g) * scale + offset) * 255).round().clamp(0, 255).to(torch::kUInt8).contiguous();
  auto labels = torch::randint(0, 10, {n}, g, torch::kInt64);
  data::Manifest m;
  m.info.name = "tiny";
  m.info.source_format = "test";
  m.info.height = 28, m.info.width = 28, m.info.channels = 1, m.info.num_classes = 10;
  m.info.total_records = n;
  m.info.shard_count = 2;
  for (int64_t s = 0; s < 2; ++s) {
    data::ShardWriter w(dir, m.info, s);
    const auto [first, count] = data::shard_range(n, 2, s);
    w.append(imgs.narrow(0, first, count).contiguous().data_ptr<uint8_t>(),
             labels.narrow(0, first, count).contiguous().data_ptr<int64_t>(), count);
    m.shards.push_back(w.commit());
  }
  data::write_manifest(dir, m);
}

// Largest absolute difference and the number of differing bytes.
inline std::pair<int, int64_t> max_diff(const std::vector<uint8_t>& a, const std::vector<uint8_t>& b) {
  int m = 0;
  int64_t n = 0;
  for (size_t i = 0; i < std::min(a.size(), b.size()); ++i) {
    int d = std::abs(int(a[i]) - int(b[i]));
    m = std::max(m, d);
    n += d != 0;
  }
  return {m, n};
}

}  // namespace cm::test
