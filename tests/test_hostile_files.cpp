// Hostile input files (issue 16): each file here crashed `cm` (a stack overflow, an uncaught LibTorch
// error, a bare "stoul") before the parsers were hardened. Each test builds its crafted file, checks that
// the library call throws std::runtime_error naming the file, and, for the user-facing commands, that
// `cm` exits with a normal non-zero status (not a signal) and prints one clear line naming the file.
#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>
#include <zlib.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include "core/io/checkpoint_dir.h"
#include "core/io/json.h"
#include "core/io/safetensors.h"
#include "core/io/torch_import.h"
#include "datasets/archive.h"
#include "recipes/eval/image_sets.h"
#include "datasets/shards.h"
#include "support/files.h"
#include "support/paths.h"
#include "support/standin_inception.h"

using namespace cm;
using namespace std::string_literals;
namespace fs = std::filesystem;

namespace {

using test::contains;
using test::write_file;

// The call throws std::runtime_error whose message contains every one of `parts`.
void expect_error(const std::function<void()>& f, const std::vector<std::string>& parts) {
  try {
    f();
    ADD_FAILURE() << "no exception; expected one mentioning " << parts.at(0);
  } catch (const std::runtime_error& e) {
    for (auto& p : parts) EXPECT_TRUE(contains(e.what(), p)) << "'" << p << "' not in: " << e.what();
    EXPECT_LT(std::string(e.what()).size(), 1000u) << e.what();
  } catch (const std::exception& e) {
    ADD_FAILURE() << "not a std::runtime_error: " << e.what();
  }
}

struct Cm {
  int status = 0;  // raw wait status
  std::string out;
  bool exited() const { return WIFEXITED(status); }
  int code() const { return WIFEXITED(status) ? WEXITSTATUS(status) : -1; }
};

Cm run_cm(const std::string& args) {
  Cm r;
  const std::string cmd = fmt::format("OMP_NUM_THREADS=1 timeout 120 {} {}", test::cm_binary(), args);
  const std::string log = fmt::format("/tmp/cm-hostile-{}.out", ::getpid());
  r.status = std::system(fmt::format("{} > {} 2>&1", cmd, log).c_str());
  std::ifstream in(log);
  r.out = std::string(std::istreambuf_iterator<char>(in), {});
  fs::remove(log);
  r.out = cmd + "\n" + r.out;
  return r;
}

// `cm` failed cleanly: exit code 1 or 2 (no signal; `timeout` would give 124), a message naming `what`,
// no LibTorch stack trace.
void expect_clean_failure(const Cm& r, const std::string& what) {
  ASSERT_TRUE(r.exited()) << "killed by a signal:\n" << r.out;
  EXPECT_TRUE(r.code() == 1 || r.code() == 2) << "exit code " << r.code() << "\n" << r.out;
  EXPECT_TRUE(contains(r.out, what)) << r.out;
  EXPECT_FALSE(contains(r.out, "Exception raised from")) << r.out;
  EXPECT_FALSE(contains(r.out, "stoul") || contains(r.out, "stoll") || contains(r.out, "stod")) << r.out;
}

std::string nested_json(int depth) { return std::string(size_t(depth), '[') + std::string(size_t(depth), ']'); }

std::string le64(uint64_t v) {
  std::string s;
  for (int i = 0; i < 8; ++i) s += static_cast<char>((v >> (8 * i)) & 0xff);
  return s;
}
std::string safetensors_with_header(const std::string& header, const std::string& data = "") {
  return le64(header.size()) + header + data;
}

// A zip archive of stored entries (what torch.save and numpy.savez write).
std::string zip_of(const std::vector<std::pair<std::string, std::string>>& entries) {
  auto u16 = [](std::string& s, uint32_t v) { s += char(v & 0xff), s += char((v >> 8) & 0xff); };
  auto u32 = [&](std::string& s, uint32_t v) { u16(s, v & 0xffff), u16(s, v >> 16); };
  std::string out, cd;
  for (auto& [name, data] : entries) {
    const uint32_t crc = static_cast<uint32_t>(crc32(0, reinterpret_cast<const Bytef*>(data.data()), static_cast<uInt>(data.size())));
    const uint32_t off = static_cast<uint32_t>(out.size());
    u32(out, 0x04034b50), u16(out, 20), u16(out, 0), u16(out, 0), u16(out, 0), u16(out, 0x21), u32(out, crc);
    u32(out, uint32_t(data.size())), u32(out, uint32_t(data.size())), u16(out, uint32_t(name.size())), u16(out, 0);
    out += name + data;
    u32(cd, 0x02014b50), u16(cd, 20), u16(cd, 20), u16(cd, 0), u16(cd, 0), u16(cd, 0), u16(cd, 0x21), u32(cd, crc);
    u32(cd, uint32_t(data.size())), u32(cd, uint32_t(data.size())), u16(cd, uint32_t(name.size()));
    u16(cd, 0), u16(cd, 0), u16(cd, 0), u16(cd, 0), u32(cd, 0), u32(cd, off);
    cd += name;
  }
  const uint32_t cd_off = static_cast<uint32_t>(out.size());
  out += cd;
  u32(out, 0x06054b50), u16(out, 0), u16(out, 0), u16(out, uint32_t(entries.size())), u16(out, uint32_t(entries.size()));
  u32(out, uint32_t(cd.size())), u32(out, cd_off), u16(out, 0);
  return out;
}
std::string pt_of(const std::string& pickle, std::vector<std::pair<std::string, std::string>> storages = {}) {
  std::vector<std::pair<std::string, std::string>> e = {{"archive/data.pkl", pickle}};
  for (auto& [k, v] : storages) e.emplace_back("archive/data/" + k, v);
  return zip_of(e);
}
// A .npy with a version-2 header (4-byte length) of the given dict text.
std::string npy_of(const std::string& dict, const std::string& data = "") {
  std::string h = dict;
  while ((h.size() + 13) % 64) h += ' ';
  h += '\n';
  std::string s = "\x93NUMPY\x02";
  s += '\0';
  for (int i = 0; i < 4; ++i) s += static_cast<char>((h.size() >> (8 * i)) & 0xff);
  return s + h + data;
}

// Gzip of `data` (zlib, gzip wrapper).
std::string gzip(const std::string& data) {
  z_stream z{};
  deflateInit2(&z, 6, Z_DEFLATED, 15 + 16, 8, Z_DEFAULT_STRATEGY);
  std::string out(deflateBound(&z, static_cast<uLong>(data.size())) + 64, '\0');
  z.next_in = reinterpret_cast<Bytef*>(const_cast<char*>(data.data()));
  z.avail_in = static_cast<uInt>(data.size());
  z.next_out = reinterpret_cast<Bytef*>(out.data());
  z.avail_out = static_cast<uInt>(out.size());
  deflate(&z, Z_FINISH);
  out.resize(z.total_out);
  deflateEnd(&z);
  return out;
}
std::string tar_header(const std::string& name, uint64_t size, char type) {
  std::string h(512, '\0');
  std::memcpy(h.data(), name.data(), std::min<size_t>(name.size(), 99));
  std::snprintf(h.data() + 100, 8, "%07o", 0644);
  std::snprintf(h.data() + 108, 8, "%07o", 0);
  std::snprintf(h.data() + 116, 8, "%07o", 0);
  std::snprintf(h.data() + 124, 12, "%011llo", static_cast<unsigned long long>(size));
  std::snprintf(h.data() + 136, 12, "%011o", 0);
  h[156] = type;
  std::memcpy(h.data() + 257, "ustar\0" "00", 8);
  std::memset(h.data() + 148, ' ', 8);
  unsigned sum = 0;
  for (unsigned char c : h) sum += c;
  std::snprintf(h.data() + 148, 8, "%06o", sum);
  return h;
}
std::string tar_entry(const std::string& name, const std::string& data, char type = '0') {
  std::string s = tar_header(name, data.size(), type) + data;
  s.resize((s.size() + 511) / 512 * 512, '\0');
  return s;
}

class HostileFiles : public ::testing::Test {
 protected:
  void SetUp() override { dir_ = test::make_temp_dir("cm-hostile"); }
  void TearDown() override {
    std::error_code ec;
    if (!HasFailure()) fs::remove_all(dir_, ec);
  }
  std::string path(const std::string& name) const { return dir_ + "/" + name; }
  std::string dir_;
};

// ------------------------------------------------------------------------------------------------ JSON

TEST_F(HostileFiles, JsonNestingHasALimit) {
  expect_error([] { parse_json(nested_json(20000), "deep.json"); }, {"deep.json", "nesting deeper than 512"});
  expect_error([] { parse_json(std::string(100000, '{'), "obj.json"); }, {"obj.json", "malformed JSON"});
  EXPECT_NO_THROW(parse_json(nested_json(500), "ok.json"));
}

TEST_F(HostileFiles, JsonEscapesAndNumbersGiveParserMessages) {
  expect_error([] { parse_json(R"(["\uZZZZ"])", "esc.json"); }, {"esc.json", "\\u escape"});
  expect_error([] { parse_json(R"(["\u12"])", "short.json"); }, {"short.json", "byte"});
  expect_error([] { parse_json("[1e999]", "big.json"); }, {"big.json", "bad number"});
  expect_error([] { parse_json("[99999999999999999999]", "int.json"); }, {"int.json", "out of range"});
  expect_error([] { parse_json("[-]", "minus.json"); }, {"minus.json", "bad number"});
  expect_error([] { parse_json("[1-2]", "mid.json"); }, {"mid.json", "bad number"});
  Json j = parse_json(R"({"a": "\u00e9", "b": 1e300, "c": -12})", "ok.json");
  EXPECT_EQ(j.at("a", "ok").str, "\xc3\xa9");
  EXPECT_EQ(j.at("c", "ok").integer, -12);
}

// ---------------------------------------------------------------------------------------- safetensors

TEST_F(HostileFiles, DeeplyNestedSafetensorsHeader) {
  const std::string f = path("deep.safetensors");
  write_file(f, safetensors_with_header(nested_json(20000)));  // a 40 KB header
  expect_error([&] { load_safetensors(f); }, {f, "nesting"});
  expect_clean_failure(run_cm(fmt::format("model check toy_ct {}", f)), f);
  expect_clean_failure(run_cm(fmt::format("sample toy_ct --weights {} --count 4 --out {} --quiet", f, path("out"))), f);
}

TEST_F(HostileFiles, SafetensorsShapeOverflowAndBadFields) {
  const std::string f = path("overflow.safetensors");
  write_file(f, safetensors_with_header(R"({"w":{"dtype":"F32","shape":[4294967296,4294967296],"data_offsets":[0,0]}})"));
  expect_error([&] { load_safetensors(f); }, {f, "'w'", "shape"});
  expect_clean_failure(run_cm(fmt::format("model check toy_ct {}", f)), f);
  const std::string g = path("wrap.safetensors");  // numel * 4 wraps to 0 in 64 bits
  write_file(g, safetensors_with_header(R"({"w":{"dtype":"F32","shape":[4611686018427387904],"data_offsets":[0,0]}})"));
  expect_error([&] { load_safetensors(g); }, {g, "'w'", "shape"});
  const std::string h = path("neg.safetensors");
  write_file(h, safetensors_with_header(R"({"w":{"dtype":"F32","shape":[-1,-4],"data_offsets":[0,16]}})", std::string(16, '\0')));
  expect_error([&] { load_safetensors(h); }, {h, "'w'", "negative"});
  const std::string k = path("kind.safetensors");
  write_file(k, safetensors_with_header(R"({"w":{"dtype":"F32","shape":"2","data_offsets":[0,8]}})", std::string(8, '\0')));
  expect_error([&] { load_safetensors(k); }, {k, "'w'", "shape"});
  const std::string m = path("offs.safetensors");
  write_file(m, safetensors_with_header(R"({"w":{"dtype":"F32","shape":[2],"data_offsets":[0,1.5]}})", std::string(8, '\0')));
  expect_error([&] { load_safetensors(m); }, {m, "'w'", "data_offsets"});
}

// ------------------------------------------------------------------------------------------ .pt files

// Pickle protocol 2 prefix.
const std::string kProto = std::string("\x80\x02", 2);

TEST_F(HostileFiles, PtListContainingItself) {
  const std::string f = path("self_list.pt");
  write_file(f, pt_of(kProto + "]q\x00h\x00" "a."s));  // l = []; l.append(l)
  expect_error([&] { import_torch_file(f); }, {f, "contains itself"});
  expect_clean_failure(run_cm(fmt::format("model check toy_ct {}", f)), f);
}

TEST_F(HostileFiles, PtDictContainingItself) {
  const std::string f = path("self_dict.pt");
  write_file(f, pt_of(kProto + "}q\x00K\x01h\x00s."s));  // d = {}; d[1] = d
  expect_error([&] { import_torch_file(f); }, {f, "contains itself"});
}

TEST_F(HostileFiles, PtListsNested200000Deep) {
  const std::string f = path("deep_list.pt");
  const int n = 200000;
  write_file(f, pt_of(kProto + std::string(n, ']') + std::string(n - 1, 'a') + "."));
  expect_error([&] { import_torch_file(f); }, {f, "nested more than"});
  expect_clean_failure(run_cm(fmt::format("sample toy_ct --weights {} --count 4 --out {} --quiet", f, path("out"))), f);
}

TEST_F(HostileFiles, PtCyclicRebuildFromType) {
  // args = [fn, None, args, None]; fn(*args) with fn = torch._tensor._rebuild_from_type_v2 calls fn(*args[2]) ...
  const std::string f = path("cyclic_rebuild.pt");
  write_file(f, pt_of(kProto + "ctorch._tensor\n_rebuild_from_type_v2\nq\x00]q\x01(h\x00Nh\x01N" "eR."s));
  expect_error([&] { import_torch_file(f); }, {f, "_rebuild_from_type_v2"});
  expect_clean_failure(run_cm(fmt::format("model check toy_ct {}", f)), f);
}

TEST_F(HostileFiles, PtTextOperandsAndStorageSizes) {
  const std::string f = path("int.pt");
  write_file(f, pt_of(kProto + "Iabc\n."));
  expect_error([&] { import_torch_file(f); }, {f, "INT operand 'abc'"});
  const std::string g = path("get.pt");
  write_file(g, pt_of(kProto + "N" "g99999999999999999999999\n."));
  expect_error([&] { import_torch_file(g); }, {g, "GET"});
  const std::string h = path("float.pt");
  write_file(h, pt_of(kProto + "F1.5x\n."));
  expect_error([&] { import_torch_file(h); }, {h, "FLOAT"});
  // A storage whose element count times 4 bytes wraps to 0, and a view whose strides overflow.
  const std::string storage_pid = "(X\x07\x00\x00\x00storagectorch\nFloatStorage\nX\x01\x00\x00\x00" "0X\x03\x00\x00\x00" "cpu"s;
  const std::string s = path("storage.pt");
  write_file(s, pt_of(kProto + storage_pid + "\x8a\x08" + le64(uint64_t(1) << 62) + "tQ.", {{"0", ""}}));
  expect_error([&] { import_torch_file(s); }, {s, "storage '0'"});
  const std::string v = path("view.pt");
  const std::string rebuild = "ctorch._utils\n_rebuild_tensor_v2\n(" + storage_pid + "K\x04tQK\x00"s +
                              "(\x8a\x08" + le64(uint64_t(1) << 40) + "\x8a\x08" + le64(uint64_t(1) << 40) + "t" +
                              "(\x8a\x08" + le64(uint64_t(1) << 40) + "K\x01t" + "\x89}tR.";
  write_file(v, pt_of(kProto + rebuild, {{"0", std::string(16, '\0')}}));
  expect_error([&] { import_torch_file(v); }, {v, "overflows"});
  expect_clean_failure(run_cm(fmt::format("model check toy_ct {}", v)), v);
}

// -------------------------------------------------------------------------------------- npy / npz / tar

TEST_F(HostileFiles, LongNpyHeaderAndNegativeDimension) {
  const std::string f = path("long_header.npz");
  // 249 KB header: the regex over it overflowed the stack.
  write_file(f, zip_of({{"arr_0.npy", npy_of("{'descr': '" + std::string(249000, 'u') + "', 'fortran_order': False, 'shape': (1, 2, 2, 3), }")}}));
  expect_error([&] { data::open_image_set(f); }, {f, "descr"});
  const std::string net = test::save_standin_inception(path("inception.pt"), false);
  expect_clean_failure(run_cm(fmt::format("eval {} --inception {} --metrics is --quiet", f, net)), f);
  const std::string g = path("negative.npz");
  write_file(g, zip_of({{"arr_0.npy", npy_of("{'descr': '|u1', 'fortran_order': False, 'shape': (-1, 2, 2, 3), }")}}));
  expect_error([&] { data::open_image_set(g); }, {g, "negative dimension"});
  expect_clean_failure(run_cm(fmt::format("eval {} --inception {} --metrics is --quiet", g, net)), "negative dimension");
  const std::string h = path("toobig.npz");  // the shape needs more bytes than the member holds
  write_file(h, zip_of({{"arr_0.npy", npy_of("{'descr': '|u1', 'fortran_order': False, 'shape': (1000000000, 64, 64, 3), }")}}));
  expect_error([&] { data::open_image_set(h); }, {h, "bytes"});
}

TEST_F(HostileFiles, TarGzWithHugePaxPath) {
  const std::string src = path("pax.tar.gz");
  const std::string value = std::string(300000, 'a');
  std::string rec = " path=" + value + "\n";
  size_t len = rec.size() + 6;  // the length field counts itself: 6 digits
  rec = std::to_string(len) + rec;
  ASSERT_EQ(rec.size(), len);
  write_file(src, gzip(tar_entry("././@PaxHeader", rec, 'x') + tar_entry("x.bin", "abc") + std::string(1024, '\0')));
  EXPECT_LT(fs::file_size(src), 2000u);
  auto s = data::open_maybe_gzip(src);
  auto entries = data::list_tar(*s);
  ASSERT_EQ(entries.size(), 1u);
  EXPECT_EQ(entries[0].name, value);
  // A record whose length field lies.
  const std::string bad = path("badpax.tar");
  write_file(bad, tar_entry("././@PaxHeader", "999 path=x\n", 'x') + tar_entry("x.bin", "abc"));
  expect_error([&] {
    auto b = data::open_file(bad);
    data::list_tar(*b);
  }, {bad, "pax record"});
  expect_clean_failure(run_cm(fmt::format("data convert cifar10 {} {} --shards 1 --quiet", src, path("out"))), src);
}

// -------------------------------------------------------------------------- the program's own files

TEST_F(HostileFiles, DamagedManifest) {
  const std::string d = path("data");
  fs::create_directories(d);
  write_file(d + "/manifest.json", "{\"format\": " + nested_json(20000) + "}");
  expect_error([&] { data::read_manifest(d); }, {"manifest.json", "nesting"});
  expect_clean_failure(run_cm(fmt::format("data verify {}", d)), "manifest.json");
}

// A short training run leaves checkpoints at steps 10 and 20; then its newest COMMIT marker and one line
// of metrics.jsonl are damaged. Resume, export and report must all go on with what is intact.
TEST_F(HostileFiles, DamagedCommitMarkerAndMetricsLine) {
  const std::string run = path("run");
  const std::string recipe =
      "toy_ct train.batch=16 train.log_every=5 train.threads=1 sample.eval_count=16 sample.count=16 model.width=16 "
      "+method.curriculum_steps=40";
  Cm first = run_cm(fmt::format("train {} run.dir={} train.steps=20 checkpoint.every=10", recipe, run));
  ASSERT_EQ(first.code(), 0) << first.out;
  const std::string c10 = run + "/checkpoints/step_00000010", c20 = run + "/checkpoints/step_00000020";
  ASSERT_TRUE(fs::exists(c10 + "/COMMIT") && fs::exists(c20 + "/COMMIT")) << first.out;
  write_file(c20 + "/COMMIT", nested_json(20000));
  {
    std::ofstream m(run + "/metrics.jsonl", std::ios::app);
    m << "{\"step\": " << nested_json(20000) << "}\n";
  }
  expect_error([&] { verify_checkpoint(c20); }, {"COMMIT", "nesting"});

  Cm report = run_cm(fmt::format("report {}", run));
  ASSERT_TRUE(report.exited()) << report.out;
  EXPECT_EQ(report.code(), 0) << report.out;

  Cm exp = run_cm(fmt::format("export {} --student --out {}", run, path("student.safetensors")));
  ASSERT_TRUE(exp.exited()) << exp.out;
  EXPECT_EQ(exp.code(), 0) << exp.out;
  EXPECT_TRUE(contains(exp.out, "skipping a checkpoint")) << exp.out;
  EXPECT_TRUE(fs::exists(path("student.safetensors")));

  Cm resumed = run_cm(fmt::format("train {} run.dir={} train.steps=30 checkpoint.every=10", recipe, run));
  ASSERT_TRUE(resumed.exited()) << resumed.out;
  EXPECT_EQ(resumed.code(), 0) << resumed.out;
  EXPECT_TRUE(contains(resumed.out, "resuming from " + c10)) << resumed.out;
  EXPECT_TRUE(contains(resumed.out, "COMMIT")) << resumed.out;
}

}  // namespace
