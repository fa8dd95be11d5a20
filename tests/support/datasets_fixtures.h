// Helpers of the dataset tests: run Python (Debian's /usr/bin/python3 with PIL, numpy, lmdb) to make files
// in the published formats and the reference outputs, read raw files, and read whole converted datasets.
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

#include "datasets/shards.h"
#include "support/paths.h"

namespace cm::test {

// The interpreter with python3-pil, python3-numpy and python3-lmdb (the python3 on PATH may be another).
inline std::string python() { return "/usr/bin/python3"; }

inline void write_text(const std::string& path, const std::string& text) {
  std::ofstream f(path, std::ios::binary);
  f << text;
  if (!f) throw std::runtime_error("cannot write " + path);
}

inline std::string read_bytes(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  if (!f) throw std::runtime_error("cannot read " + path);
  std::stringstream s;
  s << f.rdbuf();
  return s.str();
}

// Runs `script` (Python source) with `args` in `dir`; fails the test with the output when it fails.
inline std::string run_python(const std::string& dir, const std::string& script, const std::string& args = "") {
  const std::string path = dir + "/fixture.py";
  write_text(path, script);
  std::string out;
  int rc = run_command("cd '" + dir + "' && " + python() + " " + path + " " + args, &out);
  if (rc != 0) ADD_FAILURE() << "python fixture failed (rc " << rc << "):\n" << out;
  return out;
}

template <typename T>
std::vector<T> read_raw(const std::string& path) {
  std::string b = read_bytes(path);
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

// `mpiexec` with the flags a test run needs (oversubscribe; root allowed when running as root). The vader
// BTL's single-copy mechanism needs ptrace rights that containers often lack, so it is turned off; the
// timeout keeps a hung job from hanging the test (as in test_distributed.cpp).
inline std::string mpirun(int np) {
  std::string cmd = "OMPI_MCA_btl_vader_single_copy_mechanism=none timeout 300 " + mpiexec() + " -np " + std::to_string(np) +
                    " --oversubscribe --bind-to none";
  if (::geteuid() == 0) cmd += " --allow-run-as-root";
  return cmd;
}

}  // namespace cm::test
