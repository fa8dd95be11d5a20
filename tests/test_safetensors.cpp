// Safetensors: round trip, atomic writes, truncation detection, and interchange with an independent
// Python reader/writer of the format (python3 + numpy only, no safetensors package).
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <filesystem>
#include <fstream>
#include "core/image.h"
#include "core/io/safetensors.h"
#include "support/paths.h"

using namespace cm;

TEST(Safetensors, RoundTripKeepsDtypesShapesValuesAndMetadata) {
  auto dir = test::make_temp_dir("st");
  NamedTensors t = {{"a.weight", torch::randn({3, 4})},
                    {"b", torch::arange(10, torch::kInt64)},
                    {"c", torch::randn({2, 2}, torch::kFloat64)},
                    {"h", torch::randn({5}).to(torch::kFloat16)},
                    {"u", torch::tensor({1, 2, 255}, torch::kUInt8)},
                    {"empty", torch::zeros({0, 3})}};
  save_safetensors(dir + "/x.safetensors", t, {{"recipe", "toy \"ct\""}});
  auto f = load_safetensors(dir + "/x.safetensors");
  ASSERT_EQ(f.tensors.size(), t.size());
  for (size_t i = 0; i < t.size(); ++i) {
    EXPECT_EQ(f.tensors[i].first, t[i].first);
    EXPECT_TRUE(torch::equal(f.tensors[i].second, t[i].second)) << t[i].first;
  }
  EXPECT_EQ(f.metadata.at("recipe"), "toy \"ct\"");
  for (auto& e : std::filesystem::directory_iterator(dir)) EXPECT_EQ(e.path().filename(), "x.safetensors");  // no temp left
  std::filesystem::remove_all(dir);
}

TEST(Safetensors, TruncatedFileIsAClearError) {
  auto dir = test::make_temp_dir("st");
  save_safetensors(dir + "/x.safetensors", {{"w", torch::randn({100})}});
  auto bytes = read_file(dir + "/x.safetensors");
  std::ofstream(dir + "/cut.safetensors", std::ios::binary) << bytes.substr(0, bytes.size() - 10);
  try {
    load_safetensors(dir + "/cut.safetensors");
    FAIL() << "no error";
  } catch (const std::runtime_error& e) {
    std::string m = e.what();
    EXPECT_NE(m.find("cut.safetensors"), std::string::npos) << m;
    EXPECT_NE(m.find("'w'"), std::string::npos) << m;
    EXPECT_NE(m.find("truncated"), std::string::npos) << m;
  }
  std::filesystem::remove_all(dir);
}

TEST(Safetensors, InterchangeWithPythonNumpyReaderAndWriter) {
  auto dir = test::make_temp_dir("st");
  save_safetensors(dir + "/cpp.safetensors", {{"x", torch::arange(6, torch::kFloat32).reshape({2, 3})}, {"n", torch::tensor({7, -8}, torch::kInt64)}});
  const std::string py = R"PY(
import json, struct, sys, numpy as np
d = sys.argv[1]
raw = open(d + "/cpp.safetensors", "rb").read()
n = struct.unpack("<Q", raw[:8])[0]
h = json.loads(raw[8:8 + n])
base = 8 + n
def get(name, dt):
    e = h[name]; a, b = e["data_offsets"]
    return np.frombuffer(raw[base + a:base + b], dtype=dt).reshape(e["shape"])
assert h["x"]["dtype"] == "F32" and h["n"]["dtype"] == "I64"
assert (get("x", "<f4") == np.arange(6, dtype=np.float32).reshape(2, 3)).all()
assert (get("n", "<i8") == np.array([7, -8])).all()
# write one for C++ to read
t = {"y": np.linspace(0, 1, 5).astype("<f8"), "z": np.array([[1, 2], [3, 4]], dtype="<i4")}
hdr, off, blobs = {}, 0, []
for k, v in t.items():
    b = v.tobytes(); hdr[k] = {"dtype": {"float64": "F64", "int32": "I32"}[str(v.dtype)], "shape": list(v.shape), "data_offsets": [off, off + len(b)]}
    off += len(b); blobs.append(b)
hdr["__metadata__"] = {"from": "python"}
hb = json.dumps(hdr).encode()
open(d + "/py.safetensors", "wb").write(struct.pack("<Q", len(hb)) + hb + b"".join(blobs))
print("python ok")
)PY";
  std::ofstream(dir + "/t.py") << py;
  std::string out;
  ASSERT_EQ(test::run_command("/usr/bin/python3 " + dir + "/t.py " + dir, &out), 0) << out;
  auto f = load_safetensors(dir + "/py.safetensors");
  EXPECT_TRUE(torch::allclose(*f.find("y"), torch::linspace(0, 1, 5, torch::kFloat64)));
  EXPECT_TRUE(torch::equal(*f.find("z"), torch::tensor({{1, 2}, {3, 4}}, torch::kInt32)));
  EXPECT_EQ(f.metadata.at("from"), "python");
  std::filesystem::remove_all(dir);
}

TEST(Png, WriteReadRoundTrip) {
  auto dir = test::make_temp_dir("png");
  auto img = torch::randint(0, 256, {17, 23, 3}, torch::kUInt8);
  write_png(dir + "/a.png", img);
  EXPECT_TRUE(torch::equal(read_png(dir + "/a.png"), img));
  auto grid = image_grid(torch::rand({5, 1, 8, 8}) * 2 - 1, 3);
  EXPECT_EQ(grid.size(0), 2 * 10 + 2);
  EXPECT_EQ(grid.size(1), 3 * 10 + 2);
  std::filesystem::remove_all(dir);
}
