// Weights by name: the complete mismatch error, the PyTorch .pt importer (against files written by real
// torch.save, in several shapes), and safetensors interchange with an independent numpy reader/writer.
#include <gtest/gtest.h>
#include <fmt/format.h>

#include <filesystem>
#include <fstream>
#include "core/config.h"
#include "core/network.h"
#include "core/io/safetensors.h"
#include "core/io/torch_import.h"
#include "core/weights.h"
#include "support/files.h"
#include "support/paths.h"

namespace {

namespace fs = std::filesystem;

std::string fixture(const std::string& name) { return cm::test::shared_dir() + "/fixtures/reference-nets/" + name; }
const char* kPython = "/usr/bin/python3";  // Debian's python3 with torch and numpy

cm::NetworkPtr small_ncsnpp() {
  auto cfg = cm::Config::load_file(cm::test::source_dir() + "/recipes/configs/model/ncsnpp_small.toml");
  cm::ConfigReader r(cfg, "");
  return cm::make_network(r, {3, 16, 0});
}

bool has_python_torch() {
  static int ok = -1;
  // find_spec answers without importing torch (which takes seconds).
  if (ok < 0)
    ok = fs::exists(kPython) &&
         cm::test::run_command(std::string(kPython) + " -c 'import importlib.util as u, sys; "
                               "sys.exit(not (u.find_spec(\"torch\") and u.find_spec(\"numpy\")))'", nullptr) == 0;
  return ok == 1;
}

// Writes `script` to DIR/name and runs it with Debian's python3; fails the test with its output on error.
void run_python(const std::string& dir, const std::string& name, const std::string& script, const std::string& args = "") {
  const std::string path = dir + "/" + name;
  std::ofstream(path) << script;
  std::string out;
  int rc = cm::test::run_command(fmt::format("{} {} {}", kPython, path, args), &out);
  ASSERT_EQ(rc, 0) << name << " failed:\n" << out;
}

using cm::test::contains;

TEST(Weights, StateDictOrderIsPyTorchOrder) {
  auto net = small_ncsnpp();
  auto sd = cm::state_dict(*net);
  auto ref = cm::load_safetensors(fixture("ncsnpp_small.weights.safetensors")).tensors;
  ASSERT_EQ(sd.size(), ref.size());
  for (size_t i = 0; i < sd.size(); ++i) EXPECT_EQ(sd[i].first, ref[i].first) << i;
}

TEST(Weights, MismatchListsMissingUnexpectedAndMisShaped) {
  auto net = small_ncsnpp();
  auto sd = cm::load_safetensors(fixture("ncsnpp_small.weights.safetensors")).tensors;
  const std::string dropped = "enc.8x8_block0.qkv.weight", reshaped = "dec.16x16_aux_conv.weight";
  cm::NamedTensors bad;
  for (auto& [n, t] : sd) {
    if (n == dropped) continue;
    bad.emplace_back(n, n == reshaped ? torch::zeros({4, 16, 3, 3}) : t);
  }
  bad.emplace_back("enc.8x8_block0.extra_gain", torch::ones({7}));
  const auto before = cm::state_dict(*net)[1].second.clone();  // map_layer0.weight
  try {
    cm::load_weights(*net, bad, "bad.safetensors");
    FAIL() << "no error";
  } catch (const cm::WeightsMismatchError& e) {
    const std::string msg = e.what();
    EXPECT_TRUE(contains(msg, "bad.safetensors")) << msg;
    EXPECT_TRUE(contains(msg, dropped + " [96, 32, 1, 1]")) << msg;
    EXPECT_TRUE(contains(msg, "enc.8x8_block0.extra_gain [7]")) << msg;
    EXPECT_TRUE(contains(msg, reshaped + ": file [4, 16, 3, 3], network [3, 16, 3, 3]")) << msg;
    EXPECT_EQ(e.missing, std::vector<std::string>{dropped});
    EXPECT_EQ(e.unexpected, std::vector<std::string>{"enc.8x8_block0.extra_gain"});
    EXPECT_EQ(e.mis_shaped, std::vector<std::string>{reshaped});
  }
  // Nothing was copied: a failed load leaves the network as it was.
  EXPECT_TRUE(torch::equal(cm::state_dict(*net)[1].second, before));
  // allow_missing tolerates only the missing entry.
  cm::NamedTensors only_missing;
  for (auto& [n, t] : sd)
    if (n != dropped) only_missing.emplace_back(n, t);
  cm::LoadWeightsOptions opt;
  opt.allow_missing = true;
  EXPECT_NO_THROW(cm::load_weights(*net, only_missing, "partial", opt));
  EXPECT_THROW(cm::load_weights(*net, only_missing, "partial"), cm::WeightsMismatchError);
}

TEST(Weights, PrefixedStateDictGetsAHintAndLoadsWithPrefix) {
  auto net = small_ncsnpp();
  auto sd = cm::load_safetensors(fixture("ncsnpp_small.weights.safetensors")).tensors;
  cm::NamedTensors wrapped;
  for (auto& [n, t] : sd) wrapped.emplace_back("model." + n, t);
  wrapped.emplace_back("opt.step", torch::zeros({1}));
  try {
    cm::load_weights(*net, wrapped, "ckpt.pt");
    FAIL() << "no error";
  } catch (const cm::WeightsMismatchError& e) {
    EXPECT_EQ(e.unexpected.size(), sd.size() + 1);
    EXPECT_EQ(e.missing.size(), sd.size());
  }
  cm::NamedTensors only_model(wrapped.begin(), wrapped.end() - 1);
  try {
    cm::load_weights(*net, only_model, "ckpt.pt");
    FAIL() << "no error";
  } catch (const cm::WeightsMismatchError& e) {
    EXPECT_TRUE(contains(e.what(), "prefix 'model.'")) << e.what();
  }
  cm::LoadWeightsOptions opt;
  opt.prefix = "model.";
  cm::load_weights(*net, wrapped, "ckpt.pt", opt);
  EXPECT_TRUE(torch::equal(cm::state_dict(*net)[0].second, sd[0].second));
}

TEST(TorchImport, FixtureStateDictEqualsSafetensors) {
  for (const char* name : {"adm_small_cond", "ncsnpp_small"}) {
    auto pt = cm::load_torch_state_dict(fixture(std::string(name) + ".state_dict.pt"));
    auto st = cm::load_safetensors(fixture(std::string(name) + ".weights.safetensors")).tensors;
    ASSERT_EQ(pt.size(), st.size()) << name;
    for (size_t i = 0; i < pt.size(); ++i) {
      EXPECT_EQ(pt[i].first, st[i].first);
      EXPECT_EQ(pt[i].second.scalar_type(), st[i].second.scalar_type());
      EXPECT_TRUE(torch::equal(pt[i].second, st[i].second)) << pt[i].first;
    }
  }
}

// Files written by real torch.save in the shapes checkpoints come in: nested dicts with non-tensor entries,
// shared storages and strided views, several dtypes, pickle protocol 4, deflated zip entries. Also the
// failures: the legacy (non-zip) format, a truncated file.
TEST(TorchImport, ReadsWhatTorchSaveWrites) {
  if (!has_python_torch()) GTEST_SKIP() << kPython << " with torch is not available";
  const std::string dir = cm::test::make_temp_dir("cm-torch-import");
  run_python(dir, "make.py", R"PY(
import collections, sys, zipfile, torch
d = sys.argv[1]
base = torch.arange(24, dtype=torch.float32).reshape(4, 6)
sd = collections.OrderedDict()
sd["w"] = base                        # shares one storage with the next three
sd["w_t"] = base.t()                  # strided view
sd["w_rows"] = base[1:3]              # storage offset
sd["w_col"] = base[:, 2]              # stride 6
sd["h"] = torch.tensor([1.5, -2.25, 65504.0], dtype=torch.float16)
sd["bf"] = torch.tensor([1.0, -3.5], dtype=torch.bfloat16)
sd["i64"] = torch.tensor([-(2**40), 3, 7])
sd["u8"] = torch.tensor([0, 255, 9], dtype=torch.uint8)
sd["flag"] = torch.tensor([True, False])
sd["d"] = torch.tensor([3.141592653589793], dtype=torch.float64)
sd["scalar"] = torch.tensor(2.5)
sd["empty"] = torch.zeros(0, 3)
sd["p"] = torch.nn.Parameter(torch.ones(2, 2))
sd._metadata = collections.OrderedDict({"": {"version": 1}})
torch.save(sd, d + "/plain.pt")
torch.save({"model": sd, "step": 1234, "lr": 1e-4, "name": "ema", "raw": b"\x00\xff", "ema": [sd["h"], sd["i64"]]},
           d + "/nested.pt")
torch.save(sd, d + "/proto4.pt", pickle_protocol=4)
torch.save(sd, d + "/legacy.pt", _use_new_zipfile_serialization=False)
with zipfile.ZipFile(d + "/plain.pt") as zin, zipfile.ZipFile(d + "/deflated.pt", "w", zipfile.ZIP_DEFLATED) as zout:
    for i in zin.infolist():
        zout.writestr(i.filename, zin.read(i.filename))
data = open(d + "/plain.pt", "rb").read()
open(d + "/truncated.pt", "wb").write(data[: len(data) // 2])
)PY", dir);

  auto check_plain = [](const cm::NamedTensors& t, const std::string& prefix, const std::string& what) {
    std::map<std::string, torch::Tensor> m;
    for (auto& [n, v] : t) m[n] = v;
    auto get = [&](const std::string& n) {
      EXPECT_TRUE(m.count(prefix + n)) << what << ": no " << prefix + n;
      return m.count(prefix + n) ? m[prefix + n] : torch::zeros({0});
    };
    auto base = torch::arange(24, torch::kFloat).reshape({4, 6});
    EXPECT_TRUE(torch::equal(get("w"), base)) << what;
    EXPECT_TRUE(torch::equal(get("w_t"), base.t())) << what;
    EXPECT_TRUE(torch::equal(get("w_rows"), base.slice(0, 1, 3))) << what;
    EXPECT_TRUE(torch::equal(get("w_col"), base.select(1, 2))) << what;
    EXPECT_TRUE(torch::equal(get("h"), torch::tensor({1.5, -2.25, 65504.0}).to(torch::kHalf))) << what;
    EXPECT_TRUE(torch::equal(get("bf"), torch::tensor({1.0, -3.5}).to(torch::kBFloat16))) << what;
    EXPECT_TRUE(torch::equal(get("i64"), torch::tensor({-(int64_t(1) << 40), int64_t(3), int64_t(7)}))) << what;
    EXPECT_TRUE(torch::equal(get("u8"), torch::tensor({0, 255, 9}).to(torch::kUInt8))) << what;
    EXPECT_TRUE(torch::equal(get("flag"), torch::tensor({true, false}))) << what;
    EXPECT_EQ(get("d").item<double>(), 3.141592653589793) << what;
    EXPECT_EQ(get("scalar").dim(), 0) << what;
    EXPECT_EQ(get("scalar").item<float>(), 2.5f) << what;
    EXPECT_EQ(get("empty").sizes(), (std::vector<int64_t>{0, 3})) << what;
    EXPECT_TRUE(torch::equal(get("p"), torch::ones({2, 2}))) << what;
  };
  for (const char* f : {"plain.pt", "proto4.pt", "deflated.pt"}) {
    auto t = cm::load_torch_state_dict(dir + "/" + f);
    EXPECT_EQ(t.size(), 13u) << f;
    EXPECT_EQ(t.front().first, "w") << f;  // file order kept
    check_plain(t, "", f);
  }

  // Nested: everything flattened with dotted names, non-tensors reported as skipped; `select` picks a subtree.
  auto nested = cm::import_torch_file(dir + "/nested.pt");
  check_plain(nested.tensors, "model.", "nested");
  EXPECT_EQ(nested.tensors.size(), 15u);
  EXPECT_EQ(nested.tensors[13].first, "ema.0");
  std::string skipped = fmt::format("{}", fmt::join(nested.skipped, "; "));
  for (const char* s : {"step (int)", "lr (float)", "name (str)", "raw (bytes)"}) EXPECT_TRUE(contains(skipped, s)) << skipped;
  check_plain(cm::load_torch_state_dict(dir + "/nested.pt", "model"), "", "select");
  try {
    cm::load_torch_state_dict(dir + "/nested.pt", "modle");
    ADD_FAILURE() << "no error for an unknown select";
  } catch (const std::runtime_error& e) {
    EXPECT_TRUE(contains(e.what(), "model, ema")) << e.what();
  }

  for (const char* f : {"legacy.pt", "truncated.pt"}) {
    try {
      cm::read_weights_file(dir + "/" + f);
      ADD_FAILURE() << "no error for " << f;
    } catch (const std::runtime_error& e) {
      EXPECT_TRUE(contains(e.what(), f)) << e.what();
    }
  }
  fs::remove_all(dir);
}

// C++ writes, an independent numpy reader (tools/safetensors_np.py) checks every value and writes a file
// back, which C++ reads.
TEST(Safetensors, InterchangeWithNumpyReader) {
  if (!has_python_torch()) GTEST_SKIP() << kPython << " with numpy is not available";
  const std::string dir = cm::test::make_temp_dir("cm-safetensors");
  cm::NamedTensors t = {
      {"f32", torch::arange(12, torch::kFloat).reshape({3, 4}) * 0.5},
      {"f16", torch::tensor({1.5, -2.0, 65504.0}).to(torch::kHalf)},
      {"bf16", torch::tensor({1.0, -3.5, 256.0}).to(torch::kBFloat16)},
      {"f64", torch::tensor({3.141592653589793}, torch::kDouble)},
      {"i64", torch::tensor({-(int64_t(1) << 40), int64_t(3), int64_t(7)})},
      {"i32", torch::tensor({-5, 6}, torch::kInt)},
      {"u8", torch::tensor({0, 255, 1}).to(torch::kUInt8)},
      {"flag", torch::tensor({true, false, true})},
      {"empty", torch::zeros({0, 3})},
      {"strided", torch::arange(6, torch::kFloat).reshape({2, 3}).t()},  // written contiguous
  };
  cm::save_safetensors(dir + "/from_cpp.safetensors", t, {{"origin", "c++"}, {"quote", "a \"b\" \\ c"}});
  run_python(dir, "check.py", R"PY(
import sys
import numpy as np
sys.path.insert(0, sys.argv[1])
import safetensors_np as st
t, meta = st.load(sys.argv[2] + "/from_cpp.safetensors")
assert list(t) == ["f32", "f16", "bf16", "f64", "i64", "i32", "u8", "flag", "empty", "strided"], list(t)
assert meta == {"origin": "c++", "quote": 'a "b" \\ c'}, meta
assert t["f32"].dtype == np.float32 and (t["f32"] == np.arange(12, dtype=np.float32).reshape(3, 4) * 0.5).all()
assert t["f16"].dtype == np.float16 and (t["f16"] == np.array([1.5, -2.0, 65504.0], np.float16)).all()
assert (t["bf16"] == np.array([1.0, -3.5, 256.0], np.float32)).all()
assert t["f64"].dtype == np.float64 and t["f64"][0] == np.pi
assert t["i64"].dtype == np.int64 and t["i64"].tolist() == [-(2**40), 3, 7]
assert t["i32"].dtype == np.int32 and t["i32"].tolist() == [-5, 6]
assert t["u8"].dtype == np.uint8 and t["u8"].tolist() == [0, 255, 1]
assert t["flag"].dtype == np.bool_ and t["flag"].tolist() == [True, False, True]
assert t["empty"].shape == (0, 3)
assert (t["strided"] == np.arange(6, dtype=np.float32).reshape(2, 3).T).all()
st.save(sys.argv[2] + "/from_numpy.safetensors",
        {"w": (np.arange(24, dtype=np.float32) / 3).reshape(2, 3, 4), "i16": np.array([-7, 8], np.int16),
         "h": np.array([0.5, -1.25], np.float16), "b": np.array([[True], [False]])},
        {"origin": "numpy"})
)PY", fmt::format("{}/tools {}", cm::test::source_dir(), dir));
  auto f = cm::load_safetensors(dir + "/from_numpy.safetensors");
  ASSERT_EQ(f.tensors.size(), 4u);
  EXPECT_EQ(f.metadata.at("origin"), "numpy");
  EXPECT_TRUE(torch::equal(*f.find("w"), (torch::arange(24, torch::kFloat) / 3).reshape({2, 3, 4})));
  EXPECT_TRUE(torch::equal(*f.find("i16"), torch::tensor({-7, 8}).to(torch::kShort)));
  EXPECT_TRUE(torch::equal(*f.find("h"), torch::tensor({0.5, -1.25}).to(torch::kHalf)));
  EXPECT_TRUE(torch::equal(*f.find("b"), torch::tensor({true, false}).reshape({2, 1})));
  fs::remove_all(dir);
}

// The reader rejects overlapping tensors (two names over the same bytes), which its header promises.
TEST(Safetensors, RejectsOverlappingTensors) {
  std::string header = R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}})";
  std::string bytes(8, '\0');
  uint64_t n = header.size();
  for (int i = 0; i < 8; ++i) bytes[i] = static_cast<char>((n >> (8 * i)) & 0xFF);
  bytes += header + std::string(12, '\0');
  EXPECT_THROW(cm::parse_safetensors(bytes, "overlap"), std::runtime_error);
}

}  // namespace
