// Image decoding and resampling against Pillow itself, and the container readers (gzip, tar, zip/npz, npy)
// against files made by Python's own gzip/tarfile/numpy.
#include <gtest/gtest.h>

#include <filesystem>
#include <fmt/format.h>

#include "datasets/archive.h"
#include "datasets/image_codec.h"
#include "datasets/resample.h"
#include "support/datasets_fixtures.h"

namespace fs = std::filesystem;
using namespace cm::data;
using cm::read_file;

namespace {

// Makes images in every mode the converters meet, and what Pillow makes of them (the reference code's
// exact calls: Image.open(f).convert("RGB"), resize(BOX / BICUBIC), center_crop_arr, the LSUN script).
const char* kImagesScript = R"PY(
import io, sys, numpy as np
from PIL import Image
rng = np.random.default_rng(1234)

def picture(w, h, mode="RGB"):
    base = rng.integers(0, 256, size=(h // 8 + 2, w // 8 + 2, 3)).astype(np.uint8)
    img = Image.fromarray(base).resize((w, h), Image.BILINEAR)
    arr = np.array(img).astype(np.int16) + rng.integers(-40, 40, size=(h, w, 3))
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8)).convert(mode)

def center_crop_arr(pil_image, image_size):   # cm/image_datasets.py, written out again
    while min(*pil_image.size) >= 2 * image_size:
        pil_image = pil_image.resize(tuple(x // 2 for x in pil_image.size), resample=Image.BOX)
    scale = image_size / min(*pil_image.size)
    pil_image = pil_image.resize(tuple(round(x * scale) for x in pil_image.size), resample=Image.BICUBIC)
    arr = np.array(pil_image)
    y = (arr.shape[0] - image_size) // 2
    x = (arr.shape[1] - image_size) // 2
    return arr[y:y + image_size, x:x + image_size]

def lsun(img, size):                          # datasets/lsun_bedroom.py, written out again
    w, h = img.size
    s = size / min(w, h)
    img = img.resize((int(round(s * w)), int(round(s * h))), resample=Image.BOX)
    arr = np.array(img)
    y = (arr.shape[0] - size) // 2
    x = (arr.shape[1] - size) // 2
    return arr[y:y + size, x:x + size]

cases = []
def expect(kind, src, arr, *extra):
    name = f"exp{len(cases)}.raw"
    arr = np.ascontiguousarray(arr)
    arr.tofile(name)
    shape = arr.shape + ((1,) if arr.ndim == 2 else ())
    cases.append(" ".join(map(str, (kind, src, name) + shape + extra)))

def save(img, name, **kw):
    img.save(name, **kw)
    return name

# Decoding: every mode convert("RGB") meets.
for name, img, kw in [
    ("rgb.png", picture(37, 29), {}),
    ("rgb.jpg", picture(64, 48), {"quality": 90}),
    ("rgb420.jpg", picture(53, 41), {"quality": 75, "subsampling": 2}),
    ("rgb.webp", picture(50, 34), {"quality": 80}),
    ("lossless.webp", picture(31, 22), {"lossless": True}),
    ("gray.png", picture(30, 20, "L"), {}),
    ("gray.jpg", picture(40, 33, "L"), {"quality": 85}),
    ("palette.png", picture(24, 24).convert("P", palette=Image.ADAPTIVE, colors=37), {"transparency": 3}),
    ("rgba.png", picture(26, 19, "RGBA"), {}),
    ("la.png", picture(21, 17, "LA"), {}),
    ("bilevel.png", picture(35, 9, "1"), {}),
    ("cmyk.jpg", picture(33, 27, "CMYK"), {"quality": 90}),
    ("progressive.jpg", picture(45, 39), {"quality": 90, "progressive": True}),
]:
    save(img, name, **kw)
    expect("decode3", name, np.array(Image.open(name).convert("RGB")))
    expect("decode1", name, np.array(Image.open(name).convert("L")))

# Resampling: the same lossless pixels go to Pillow and to us.
for i in range(12):
    w, h = int(rng.integers(3, 420)), int(rng.integers(3, 420))
    src = save(picture(w, h), f"src{i}.png")
    img = Image.open(src).convert("RGB")
    for kind, flt in (("box", Image.BOX), ("bicubic", Image.BICUBIC)):
        ow, oh = int(rng.integers(1, 200)), int(rng.integers(1, 200))
        expect(kind, src, np.array(img.resize((ow, oh), flt)), ow, oh)
    size = int(rng.choice([16, 32, 64]))
    expect("adm", src, center_crop_arr(img, size), size)
    expect("lsun", src, lsun(img, size), size)

open("cases.txt", "w").write("\n".join(cases) + "\n")
)PY";

struct Case {
  std::string kind, src, expected;
  int64_t h = 0, w = 0, c = 0, a = 0, b = 0;
};

std::vector<Case> load_cases(const std::string& dir) {
  std::vector<Case> v;
  std::istringstream in(read_file(dir + "/cases.txt"));
  std::string line;
  while (std::getline(in, line)) {
    std::istringstream l(line);
    Case c;
    l >> c.kind >> c.src >> c.expected >> c.h >> c.w >> c.c;
    l >> c.a >> c.b;
    v.push_back(c);
  }
  return v;
}

Image decode_file(const std::string& path, int64_t channels) {
  std::string b = read_file(path);
  return decode_image(reinterpret_cast<const uint8_t*>(b.data()), b.size(), channels, path);
}

class Codecs : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = cm::test::make_temp_dir("cm-codecs");
    cm::test::run_python(dir_, kImagesScript);
    cases_ = load_cases(dir_);
  }
  static void TearDownTestSuite() { fs::remove_all(dir_); }
  static std::string dir_;
  static std::vector<Case> cases_;
};
std::string Codecs::dir_;
std::vector<Case> Codecs::cases_;

TEST_F(Codecs, DecodingMatchesPillowConvert) {
  int checked = 0;
  for (const auto& c : cases_) {
    if (c.kind != "decode3" && c.kind != "decode1") continue;
    Image img = decode_file(dir_ + "/" + c.src, c.kind == "decode3" ? 3 : 1);
    auto want = cm::test::read_raw<uint8_t>(dir_ + "/" + c.expected);
    ASSERT_EQ(img.height, c.h) << c.src;
    ASSERT_EQ(img.width, c.w) << c.src;
    ASSERT_EQ(img.channels, c.c) << c.src;
    auto [m, n] = cm::test::max_diff(img.pixels, want);
    // Same libjpeg / libpng / libwebp and the same conversions as Pillow: identical pixels.
    EXPECT_EQ(m, 0) << c.kind << " " << c.src << ": " << n << " pixels differ, by up to " << m;
    ++checked;
  }
  EXPECT_EQ(checked, 26);
}

TEST_F(Codecs, ResizeAndReferenceCropsMatchPillow) {
  int checked = 0;
  for (const auto& c : cases_) {
    if (c.kind.rfind("decode", 0) == 0) continue;
    Image src = decode_file(dir_ + "/" + c.src, 3);
    Image out;
    if (c.kind == "box") out = pillow_resize(src, c.a, c.b, ResampleFilter::box);
    if (c.kind == "bicubic") out = pillow_resize(src, c.a, c.b, ResampleFilter::bicubic);
    if (c.kind == "adm") out = center_crop_arr(src, c.a);
    if (c.kind == "lsun") out = lsun_resize_crop(src, c.a);
    auto want = cm::test::read_raw<uint8_t>(dir_ + "/" + c.expected);
    ASSERT_EQ(out.height, c.h) << c.kind << " " << c.src;
    ASSERT_EQ(out.width, c.w) << c.kind << " " << c.src;
    auto [m, n] = cm::test::max_diff(out.pixels, want);
    EXPECT_EQ(m, 0) << c.kind << " " << c.src << " " << src.width << "x" << src.height << " -> " << c.w << "x" << c.h
                    << ": " << n << " values differ, by up to " << m;
    ++checked;
  }
  EXPECT_EQ(checked, 48);
}

TEST(Resample, PythonRoundingAndIdentity) {
  EXPECT_EQ(py_round(2.5), 2);
  EXPECT_EQ(py_round(3.5), 4);
  EXPECT_EQ(py_round(-0.5), 0);
  EXPECT_EQ(py_round(63.99999), 64);
  Image img(5, 7, 3);
  for (size_t i = 0; i < img.pixels.size(); ++i) img.pixels[i] = uint8_t(i * 37);
  Image same = pillow_resize(img, 7, 5, ResampleFilter::bicubic);
  EXPECT_EQ(same.pixels, img.pixels);
  // A constant image stays constant under any filter (weights sum to one).
  Image flat(40, 30, 1);
  std::fill(flat.pixels.begin(), flat.pixels.end(), uint8_t(200));
  for (auto f : {ResampleFilter::box, ResampleFilter::bicubic})
    for (auto [w, h] : {std::pair{7, 11}, {64, 80}, {13, 13}}) {
      Image r = pillow_resize(flat, w, h, f);
      EXPECT_TRUE(std::all_of(r.pixels.begin(), r.pixels.end(), [](uint8_t v) { return v == 200; }));
    }
}

TEST(ImageCodec, CorruptAndUnknownDataNameTheOrigin) {
  const std::string dir = cm::test::make_temp_dir("cm-codec-bad");
  cm::test::run_python(dir, R"PY(
from PIL import Image
import numpy as np
Image.fromarray(np.full((40, 50, 3), 128, np.uint8)).save("ok.jpg", quality=90)
Image.fromarray(np.full((40, 50, 3), 128, np.uint8)).save("ok.png")
Image.fromarray(np.full((40, 50, 3), 128, np.uint8)).save("ok.webp")
)PY");
  for (const char* f : {"ok.jpg", "ok.png", "ok.webp"}) {
    std::string b = read_file(dir + "/" + f);
    b.resize(b.size() / 2);
    try {
      decode_image(reinterpret_cast<const uint8_t*>(b.data()), b.size(), 3, std::string("record 17 of ") + f);
      ADD_FAILURE() << f << ": truncated data decoded without error";
    } catch (const std::runtime_error& e) {
      EXPECT_NE(std::string(e.what()).find(std::string("record 17 of ") + f), std::string::npos) << e.what();
    }
  }
  std::string gif = "GIF89a....";
  EXPECT_THROW(decode_image(reinterpret_cast<const uint8_t*>(gif.data()), gif.size(), 3, "x.gif"), std::runtime_error);
  // PNG round trip through our encoder.
  Image img(9, 11, 3);
  for (size_t i = 0; i < img.pixels.size(); ++i) img.pixels[i] = uint8_t(i * 13 + 5);
  std::string png = encode_png(img);
  Image back = decode_image(reinterpret_cast<const uint8_t*>(png.data()), png.size(), 3, "roundtrip");
  EXPECT_EQ(back.pixels, img.pixels);
  fs::remove_all(dir);
}

// ------------------------------------------------------------------------------------------ containers

const char* kArchivesScript = R"PY(
import gzip, io, tarfile, numpy as np
rng = np.random.default_rng(7)
a = rng.integers(0, 256, size=100000, dtype=np.uint8).tobytes()
b = rng.integers(0, 256, size=3000, dtype=np.uint8).tobytes()
open("a.bin", "wb").write(a)
open("b.bin", "wb").write(b)
with gzip.open("a.gz", "wb") as f: f.write(a)
open("ab_members.gz", "wb").write(gzip.compress(a) + gzip.compress(b))   # two gzip members
with tarfile.open("t.tar.gz", "w:gz") as t:
    t.add("a.bin", arcname="dir/a.bin")
    t.add("b.bin", arcname="dir/" + "long" * 40 + ".bin")   # beyond 100 chars: pax/GNU long name
data = rng.integers(0, 256, size=(5, 12), dtype=np.uint8)
labels = np.arange(1, 6, dtype=np.int64) * 3
np.savez("stored.npz", data=data, labels=labels)
np.savez_compressed("deflated.npz", data=data, labels=labels.astype(np.int32))
data.tofile("data.raw")
raw = open("a.gz", "rb").read()
open("a_truncated.gz", "wb").write(raw[: len(raw) // 2])
bad = bytearray(raw); bad[len(raw) // 2] ^= 0xFF; bad[len(raw) // 2 + 1] ^= 0x55
open("a_corrupt.gz", "wb").write(bytes(bad))
z = bytearray(open("deflated.npz", "rb").read()); z[60] ^= 0xFF
open("deflated_corrupt.npz", "wb").write(bytes(z))
)PY";

std::string read_all(ByteStream& s) {
  std::string out, buf(4096, '\0');
  size_t n;
  while ((n = s.read(buf.data(), buf.size())) > 0) out.append(buf.data(), n);
  return out;
}

TEST(Archives, GzipTarZipNpyReadAsPythonWroteThem) {
  const std::string dir = cm::test::make_temp_dir("cm-archives");
  cm::test::run_python(dir, kArchivesScript);
  const std::string a = read_file(dir + "/a.bin"), b = read_file(dir + "/b.bin");
  auto gz = open_maybe_gzip(dir + "/a.gz");
  EXPECT_EQ(read_all(*gz), a);
  auto two = open_maybe_gzip(dir + "/ab_members.gz");
  EXPECT_EQ(read_all(*two), a + b);
  auto plain = open_maybe_gzip(dir + "/a.bin");
  EXPECT_EQ(read_all(*plain), a);
  // Skipping lands where reading would have.
  auto sk = open_maybe_gzip(dir + "/a.gz");
  sk->skip_exact(54321, "test");
  std::string tail(100, '\0');
  sk->read_exact(tail.data(), tail.size(), "test");
  EXPECT_EQ(tail, a.substr(54321, 100));

  auto tgz = open_maybe_gzip(dir + "/t.tar.gz");
  auto entries = list_tar(*tgz);
  ASSERT_EQ(entries.size(), 2u);
  EXPECT_EQ(entries[0].name, "dir/a.bin");
  std::string long_name = "dir/";
  for (int i = 0; i < 40; ++i) long_name += "long";
  EXPECT_EQ(entries[1].name, long_name + ".bin");
  EXPECT_EQ(entries[1].size, b.size());
  auto again = open_maybe_gzip(dir + "/t.tar.gz");
  again->skip_exact(entries[1].data_offset, "test");
  std::string got(b.size(), '\0');
  again->read_exact(got.data(), got.size(), "test");
  EXPECT_EQ(got, b);

  const std::string data = read_file(dir + "/data.raw");
  for (const char* npz : {"stored.npz", "deflated.npz"}) {
    ZipArchive zip(dir + "/" + npz);
    ASSERT_NE(zip.find("data.npy"), nullptr) << npz;
    ASSERT_NE(zip.find("labels.npy"), nullptr) << npz;
    auto s = zip.open(*zip.find("data.npy"));
    NpyHeader h = read_npy_header(*s);
    EXPECT_EQ(h.descr, "|u1");
    EXPECT_EQ(h.shape, (std::vector<int64_t>{5, 12}));
    EXPECT_EQ(read_all(*s), data) << npz;
    auto l = zip.open(*zip.find("labels.npy"));
    NpyHeader lh = read_npy_header(*l);
    EXPECT_EQ(lh.shape, (std::vector<int64_t>{5}));
    EXPECT_EQ(lh.item_size(), std::string(npz) == "stored.npz" ? 8u : 4u);
  }
  fs::remove_all(dir);
}

TEST(Archives, TruncatedOrCorruptInputNamesTheFile) {
  const std::string dir = cm::test::make_temp_dir("cm-archives-bad");
  cm::test::run_python(dir, kArchivesScript);
  for (const char* f : {"a_truncated.gz", "a_corrupt.gz"}) {
    auto s = open_maybe_gzip(dir + "/" + f);
    try {
      read_all(*s);
      ADD_FAILURE() << f << " read without error";
    } catch (const std::runtime_error& e) {
      EXPECT_NE(std::string(e.what()).find(f), std::string::npos) << e.what();
    }
  }
  try {
    ZipArchive zip(dir + "/deflated_corrupt.npz");
    auto s = zip.open(*zip.find("data.npy"));
    read_all(*s);
    ADD_FAILURE() << "corrupt npz member read without error";
  } catch (const std::runtime_error& e) {
    EXPECT_NE(std::string(e.what()).find("deflated_corrupt.npz"), std::string::npos) << e.what();
  }
  EXPECT_THROW(ZipArchive(dir + "/a.bin"), std::runtime_error);
  fs::remove_all(dir);
}

}  // namespace
