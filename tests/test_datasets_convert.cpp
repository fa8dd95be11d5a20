// Converters end to end: small files in every published format made with Python (numpy, PIL, lmdb,
// gzip, tarfile), converted, and compared with what the reference preprocessing gives (exact for the
// lossless paths, Pillow's own result for resizing); corrupt and truncated inputs name file and record;
// parallel workers + manifest; verify, show and the overwrite guard through the `cm` program.
#include <gtest/gtest.h>

#include <filesystem>
#include <fmt/format.h>

#include "datasets/convert.h"
#include "datasets/image_codec.h"
#include "datasets/loader.h"
#include "support/datasets_fixtures.h"

namespace fs = std::filesystem;
using namespace cm::data;
using cm::test::DatasetContents;
using cm::test::read_dataset;
using cm::test::read_raw;

namespace {

class Convert : public ::testing::Test {
 protected:
  void SetUp() override { dir_ = cm::test::make_temp_dir("cm-convert"); }
  void TearDown() override {
    if (!HasFailure()) fs::remove_all(dir_);
  }
  std::string path(const std::string& p) const { return dir_ + "/" + p; }
  ConvertOptions options(const std::string& format, const std::string& src, const std::string& out, int64_t shards) {
    ConvertOptions o;
    o.format = format;
    o.src = path(src);
    o.out_dir = path(out);
    o.shards = shards;
    o.progress = false;
    o.threads = 2;
    return o;
  }
  // Runs the conversion and expects it to fail with a message containing every one of `needles`.
  void expect_failure(const ConvertOptions& o, const std::vector<std::string>& needles) {
    try {
      run_conversion(o);
      ADD_FAILURE() << "conversion of " << o.src << " succeeded";
    } catch (const std::exception& e) {
      for (const auto& n : needles) EXPECT_NE(std::string(e.what()).find(n), std::string::npos) << "'" << n << "' not in: " << e.what();
    }
    // Nothing that looks complete is left behind: no manifest, no temporary files.
    if (fs::exists(o.out_dir)) {
      EXPECT_FALSE(fs::exists(o.out_dir + "/manifest.json"));
      for (auto& e : fs::directory_iterator(o.out_dir))
        EXPECT_EQ(e.path().string().find(".tmp-"), std::string::npos) << e.path();
    }
  }
  std::string dir_;
};

void expect_images(const DatasetContents& got, const std::string& want_path, int tolerance, const std::string& what) {
  auto want = read_raw<uint8_t>(want_path);
  ASSERT_EQ(got.images.size(), want.size()) << what;
  auto [m, n] = cm::test::max_diff(got.images, want);
  EXPECT_LE(m, tolerance) << what << ": " << n << " values differ, by up to " << m;
}

// ---------------------------------------------------------------------------------------------- CIFAR

const char* kCifarScript = R"PY(
import numpy as np, os, tarfile
rng = np.random.default_rng(5)
os.makedirs("cifar-10-batches-bin")
def batch(name, n):
    lab = rng.integers(0, 10, n, dtype=np.uint8)
    px = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
    np.concatenate([lab[:, None], px], axis=1).tofile("cifar-10-batches-bin/" + name)
    return px.reshape(n, 3, 32, 32).transpose(0, 2, 3, 1), lab.astype(np.int64)
train = [batch(f"data_batch_{i}.bin", n) for i, n in zip(range(1, 6), (7, 5, 6, 4, 8))]
test = batch("test_batch.bin", 9)
open("cifar-10-batches-bin/batches.meta.txt", "w").write("airplane\nautomobile\n")
np.ascontiguousarray(np.concatenate([t[0] for t in train])).tofile("train_images.raw")
np.concatenate([t[1] for t in train]).tofile("train_labels.raw")
np.ascontiguousarray(test[0]).tofile("test_images.raw")
test[1].tofile("test_labels.raw")
with tarfile.open("cifar-10-binary.tar.gz", "w:gz") as t:
    # Members out of numeric order: the converter must order the batches by name, not by position.
    for f in ["batches.meta.txt", "test_batch.bin"] + [f"data_batch_{i}.bin" for i in (3, 1, 5, 2, 4)]:
        t.add("cifar-10-batches-bin/" + f)
raw = open("cifar-10-binary.tar.gz", "rb").read()
open("truncated.tar.gz", "wb").write(raw[: int(len(raw) * 0.6)])
)PY";

TEST_F(Convert, Cifar10FromFolderAndTarGzGivesTheRecordsInOrder) {
  cm::test::run_python(dir_, kCifarScript);
  auto r = run_conversion(options("cifar10", "cifar-10-batches-bin", "dir", 3));
  EXPECT_TRUE(r.manifest_written);
  auto got = read_dataset(path("dir"));
  EXPECT_EQ(got.manifest.info.total_records, 30);
  EXPECT_EQ(got.manifest.shards.size(), 3u);
  EXPECT_EQ(got.manifest.shards[1].first_record, 10);
  EXPECT_EQ(got.manifest.info.num_classes, 10);
  expect_images(got, path("train_images.raw"), 0, "cifar train");
  EXPECT_EQ(got.labels, read_raw<int64_t>(path("train_labels.raw")));

  auto r2 = run_conversion(options("cifar10", "cifar-10-binary.tar.gz", "tgz", 3));
  auto from_tar = read_dataset(path("tgz"));
  EXPECT_EQ(from_tar.images, got.images);
  EXPECT_EQ(from_tar.labels, got.labels);
  for (size_t i = 0; i < 3; ++i) EXPECT_EQ(r2.shards[i].images_crc32, r.shards[i].images_crc32);

  auto o = options("cifar10", "cifar-10-binary.tar.gz", "test", 2);
  o.split = "test";
  run_conversion(o);
  auto test = read_dataset(path("test"));
  EXPECT_EQ(test.manifest.info.name, "cifar10-test");
  expect_images(test, path("test_images.raw"), 0, "cifar test");
  EXPECT_EQ(test.labels, read_raw<int64_t>(path("test_labels.raw")));

  // The shard describes itself.
  ShardReader shard(path("dir/cifar10-train-00002-of-00003.h5"));
  EXPECT_EQ(shard.shard().first_record, 20);
  EXPECT_EQ(shard.shard().records, 10);
  EXPECT_EQ(shard.dataset().height, 32);
  EXPECT_EQ(shard.dataset().channels, 3);
  EXPECT_EQ(shard.dataset().source_format, "cifar10");
  EXPECT_TRUE(shard.direct_offset().has_value());
}

TEST_F(Convert, Cifar10CorruptInputNamesFileAndRecord) {
  cm::test::run_python(dir_, kCifarScript);
  const std::string b3 = path("cifar-10-batches-bin/data_batch_3.bin");
  const std::string b2 = path("cifar-10-batches-bin/data_batch_2.bin");
  std::string bytes = cm::read_file(b2);
  bytes[3 * 3073] = char(200);  // label byte of record 3
  cm::test::write_file(b2, bytes);
  expect_failure(options("cifar10", "cifar-10-batches-bin", "bad_label", 2), {"data_batch_2.bin", "record 3", "200"});

  cm::test::write_file(b2, bytes.replace(3 * 3073, 1, 1, char(4)));
  fs::resize_file(b3, fs::file_size(b3) - 100);
  expect_failure(options("cifar10", "cifar-10-batches-bin", "short", 2), {"data_batch_3.bin", "truncated"});

  expect_failure(options("cifar10", "truncated.tar.gz", "tgz", 2), {"truncated.tar.gz", "record"});
}

// --------------------------------------------------------------------------------------------- IDX

const char* kIdxScript = R"PY(
import gzip, struct, numpy as np
rng = np.random.default_rng(11)
for split, n in (("train", 50), ("t10k", 20)):
    img = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
    lab = rng.integers(0, 10, n, dtype=np.uint8)
    with gzip.open(f"idx/{split}-images-idx3-ubyte.gz", "wb") as f:
        f.write(struct.pack(">IIII", 0x803, n, 28, 28) + img.tobytes())
    with gzip.open(f"idx/{split}-labels-idx1-ubyte.gz", "wb") as f:
        f.write(struct.pack(">II", 0x801, n) + lab.tobytes())
    img.tofile(f"{split}_images.raw")
    np.pad(img, ((0, 0), (2, 2), (2, 2))).tofile(f"{split}_images32.raw")
    lab.astype(np.int64).tofile(f"{split}_labels.raw")
raw = open("idx/train-images-idx3-ubyte.gz", "rb").read()
import os; os.makedirs("short")
open("short/train-images-idx3-ubyte.gz", "wb").write(raw[: len(raw) * 3 // 4])
open("short/train-labels-idx1-ubyte.gz", "wb").write(open("idx/train-labels-idx1-ubyte.gz", "rb").read())
)PY";

TEST_F(Convert, IdxGzipTrainTestAndPadding) {
  fs::create_directories(path("idx"));
  cm::test::run_python(dir_, kIdxScript);
  run_conversion(options("fashion-mnist", "idx", "train", 2));
  auto train = read_dataset(path("train"));
  EXPECT_EQ(train.manifest.info.channels, 1);
  EXPECT_EQ(train.manifest.info.height, 28);
  expect_images(train, path("train_images.raw"), 0, "idx train");
  EXPECT_EQ(train.labels, read_raw<int64_t>(path("train_labels.raw")));

  auto o = options("fashion-mnist", "idx", "test32", 1);
  o.split = "test";
  o.pad_to = 32;
  run_conversion(o);
  auto test = read_dataset(path("test32"));
  EXPECT_EQ(test.manifest.info.height, 32);
  expect_images(test, path("t10k_images32.raw"), 0, "idx test padded");
  EXPECT_EQ(test.labels, read_raw<int64_t>(path("t10k_labels.raw")));

  expect_failure(options("fashion-mnist", "short", "short_out", 1), {"train-images-idx3-ubyte.gz", "record"});
}

// ------------------------------------------------------------------------------------------------ npz

const char* kNpzScript = R"PY(
import numpy as np
rng = np.random.default_rng(3)
imgs, labs = [], []
def make(name, n, compressed, label_dtype):
    data = rng.integers(0, 256, (n, 3 * 64 * 64), dtype=np.uint8)
    labels = rng.integers(1, 1001, n).astype(label_dtype)
    (np.savez_compressed if compressed else np.savez)(name, data=data, labels=labels, mean=np.zeros(12288))
    return data.reshape(n, 3, 64, 64).transpose(0, 2, 3, 1), labels.astype(np.int64) - 1
parts = [make("npz/train_data_batch_1.npz", 6, False, np.int64), make("npz/train_data_batch_2.npz", 5, True, np.int32)]
np.ascontiguousarray(np.concatenate([p[0] for p in parts])).tofile("train_images.raw")
np.concatenate([p[1] for p in parts]).tofile("train_labels.raw")
v = make("npz/val_data.npz", 4, True, np.int64)
np.ascontiguousarray(v[0]).tofile("val_images.raw")
v[1].tofile("val_labels.raw")
import os; os.makedirs("badnpz")
data = rng.integers(0, 256, (3, 12288), dtype=np.uint8)
np.savez("badnpz/train_data_batch_1.npz", data=data, labels=np.array([5, 0, 7]))
)PY";

TEST_F(Convert, DownsampledImagenetNpzStoredAndDeflated) {
  fs::create_directories(path("npz"));
  cm::test::run_python(dir_, kNpzScript);
  run_conversion(options("imagenet64-npz", "npz", "train", 2));
  auto train = read_dataset(path("train"));
  EXPECT_EQ(train.manifest.info.height, 64);
  EXPECT_EQ(train.manifest.info.num_classes, 1000);
  EXPECT_FALSE(train.manifest.info.paper_preprocessing);
  EXPECT_NE(train.manifest.info.preprocessing.find("NOT the paper"), std::string::npos);
  expect_images(train, path("train_images.raw"), 0, "npz train");
  EXPECT_EQ(train.labels, read_raw<int64_t>(path("train_labels.raw")));

  auto o = options("imagenet64-npz", "npz", "val", 1);
  o.split = "test";
  run_conversion(o);
  auto val = read_dataset(path("val"));
  expect_images(val, path("val_images.raw"), 0, "npz val");
  EXPECT_EQ(val.labels, read_raw<int64_t>(path("val_labels.raw")));

  expect_failure(options("imagenet64-npz", "badnpz", "bad", 1), {"train_data_batch_1.npz", "record 1", "label 0"});
}

// ----------------------------------------------------------------------------------------------- LSUN

const char* kLsunScript = R"PY(
import io, lmdb, numpy as np
from PIL import Image
rng = np.random.default_rng(17)
def picture(w, h):
    base = rng.integers(0, 256, size=(h // 8 + 2, w // 8 + 2, 3)).astype(np.uint8)
    arr = np.array(Image.fromarray(base).resize((w, h), Image.BILINEAR)).astype(np.int16)
    return Image.fromarray(np.clip(arr + rng.integers(-30, 30, size=(h, w, 3)), 0, 255).astype(np.uint8))
def lsun(img, size):   # datasets/lsun_bedroom.py, written out again
    w, h = img.size
    s = size / min(w, h)
    arr = np.array(img.resize((int(round(s * w)), int(round(s * h))), resample=Image.BOX))
    y = (arr.shape[0] - size) // 2
    x = (arr.shape[1] - size) // 2
    return arr[y:y + size, x:x + size]
records = {}
for i, (w, h) in enumerate([(300, 225), (256, 341), (150, 100), (401, 267), (97, 130), (640, 480), (200, 200)]):
    buf = io.BytesIO()
    picture(w, h).save(buf, format="JPEG" if i in (2, 5) else "WEBP", quality=85)   # older exports hold JPEG
    records[("%040x" % int(rng.integers(0, 2**62))).encode()] = buf.getvalue()
def write(path, recs):
    env = lmdb.open(path, map_size=1 << 26)
    with env.begin(write=True) as t:
        for k, v in recs.items(): t.put(k, v)
    env.close()
write("bedroom_train_lmdb", records)
out = []
env = lmdb.open("bedroom_train_lmdb", readonly=True, lock=False)
with env.begin() as t:
    for _, v in t.cursor():   # the reference iterates in key order
        out.append(lsun(Image.open(io.BytesIO(v)), 64))
np.ascontiguousarray(np.stack(out)).tofile("lsun64.raw")
bad = dict(records)
bad[sorted(bad)[3]] = b"this is not an image"
write("bad_lmdb", bad)
print(sorted(bad)[3].decode())
)PY";

TEST_F(Convert, LsunLmdbWebpAndJpegMatchTheReferenceScript) {
  const std::string bad_key = cm::test::run_python(dir_, kLsunScript);
  auto o = options("lsun", "bedroom_train_lmdb", "lsun", 2);
  o.resolution = 64;
  run_conversion(o);
  auto got = read_dataset(path("lsun"));
  EXPECT_EQ(got.manifest.info.total_records, 7);
  EXPECT_EQ(got.manifest.info.num_classes, 0);
  EXPECT_TRUE(got.labels.empty());
  expect_images(got, path("lsun64.raw"), 1, "lsun");

  auto b = options("lsun", "bad_lmdb", "bad", 1);
  b.resolution = 64;
  expect_failure(b, {"bad_lmdb", "record 3", bad_key.substr(0, 40)});
}

// -------------------------------------------------------------------------------------------- ImageNet

const char* kImagenetScript = R"PY(
import os, shutil, numpy as np
from PIL import Image
rng = np.random.default_rng(23)
def picture(w, h, mode="RGB"):
    base = rng.integers(0, 256, size=(h // 8 + 2, w // 8 + 2, 3)).astype(np.uint8)
    arr = np.array(Image.fromarray(base).resize((w, h), Image.BILINEAR)).astype(np.int16)
    return Image.fromarray(np.clip(arr + rng.integers(-30, 30, size=(h, w, 3)), 0, 255).astype(np.uint8)).convert(mode)
def center_crop_arr(pil_image, image_size):   # cm/image_datasets.py, written out again
    while min(*pil_image.size) >= 2 * image_size:
        pil_image = pil_image.resize(tuple(x // 2 for x in pil_image.size), resample=Image.BOX)
    scale = image_size / min(*pil_image.size)
    pil_image = pil_image.resize(tuple(round(x * scale) for x in pil_image.size), resample=Image.BICUBIC)
    arr = np.array(pil_image)
    y = (arr.shape[0] - image_size) // 2
    x = (arr.shape[1] - image_size) // 2
    return arr[y:y + image_size, x:x + image_size]
files = [
    ("n01443537", "n01443537_10.JPEG", (500, 375), "RGB", "JPEG"),
    ("n01443537", "n01443537_2.JPEG", (64, 80), "RGB", "JPEG"),
    ("n01440764", "n01440764_7.JPEG", (333, 129), "RGB", "JPEG"),
    ("n01440764", "n01440764_8.JPEG", (129, 333), "L", "JPEG"),        # greyscale JPEG
    ("n01484850", "n01484850_1.JPEG", (1000, 700), "RGB", "JPEG"),
    ("n01484850", "n01484850_3.JPEG", (260, 195), "CMYK", "JPEG"),     # ImageNet has CMYK JPEGs
    ("n01484850", "n01484850_4.JPEG", (211, 158), "RGB", "PNG"),       # and a PNG named .JPEG
]
for wnid, name, size, mode, fmt in files:
    os.makedirs(f"train/{wnid}", exist_ok=True)
    os.makedirs("flat", exist_ok=True)
    picture(*size, mode).save(f"train/{wnid}/{name}", format=fmt, quality=90)
    shutil.copy(f"train/{wnid}/{name}", f"flat/{name}")
# The reference lists files sorted, depth first, and takes the class from the name prefix.
order = sorted(files, key=lambda f: (f[0], f[1]))
wnids = sorted({f[0] for f in files})
out = [center_crop_arr(Image.open(f"train/{w}/{n}").convert("RGB"), 64) for w, n, *_ in order]
np.ascontiguousarray(np.stack(out)).tofile("imagenet64.raw")
np.array([wnids.index(w) for w, *_ in order], np.int64).tofile("labels.raw")
os.makedirs("broken/n01440764")
raw = open("train/n01440764/n01440764_7.JPEG", "rb").read()
open("broken/n01440764/n01440764_7.JPEG", "wb").write(raw[: len(raw) // 3])
)PY";

TEST_F(Convert, ImagenetFolderAsThePaperPreprocessedIt) {
  cm::test::run_python(dir_, kImagenetScript);
  run_conversion(options("imagenet", "train", "in64", 2));
  auto got = read_dataset(path("in64"));
  EXPECT_EQ(got.manifest.info.height, 64);
  EXPECT_EQ(got.manifest.info.num_classes, 3);
  EXPECT_TRUE(got.manifest.info.paper_preprocessing);
  expect_images(got, path("imagenet64.raw"), 1, "imagenet");
  EXPECT_EQ(got.labels, read_raw<int64_t>(path("labels.raw")));

  // Class from the file-name prefix when the files are not in WNID folders: the same dataset.
  run_conversion(options("imagenet", "flat", "flat64", 1));
  auto flat = read_dataset(path("flat64"));
  EXPECT_EQ(flat.images, got.images);
  EXPECT_EQ(flat.labels, got.labels);

  expect_failure(options("imagenet", "broken", "bad", 1), {"n01440764_7.JPEG"});
}

TEST_F(Convert, FolderWithClassSubfoldersOrFlat) {
  cm::test::run_python(dir_, R"PY(
import os, numpy as np
from PIL import Image
rng = np.random.default_rng(2)
px = []
for cls in ("dog", "cat"):
    os.makedirs(f"folder/{cls}")
    for i in range(3):
        a = rng.integers(0, 256, (16, 20, 3), dtype=np.uint8)
        Image.fromarray(a).save(f"folder/{cls}/{i}.png")
os.makedirs("flat")
for i in range(4):
    Image.fromarray(rng.integers(0, 256, (16, 20, 3), dtype=np.uint8)).save(f"flat/img{i}.png")
order = [f"folder/{c}/{i}.png" for c in ("cat", "dog") for i in range(3)]
np.stack([np.array(Image.open(f)) for f in order]).tofile("folder.raw")
np.stack([np.array(Image.open(f"flat/img{i}.png")) for i in range(4)]).tofile("flat.raw")
)PY");
  run_conversion(options("folder", "folder", "f", 2));
  auto got = read_dataset(path("f"));
  EXPECT_EQ(got.manifest.info.height, 16);
  EXPECT_EQ(got.manifest.info.width, 20);
  EXPECT_EQ(got.manifest.info.num_classes, 2);
  expect_images(got, path("folder.raw"), 0, "folder");
  EXPECT_EQ(got.labels, (std::vector<int64_t>{0, 0, 0, 1, 1, 1}));
  run_conversion(options("folder", "flat", "flat_out", 1));
  auto flat = read_dataset(path("flat_out"));
  EXPECT_EQ(flat.manifest.info.num_classes, 0);
  EXPECT_TRUE(flat.labels.empty());
  expect_images(flat, path("flat.raw"), 0, "flat folder");
}

// ------------------------------------------------------------------------------- the `cm data` program

std::string cm_data(const std::string& args, int* rc) {
  std::string out;
  *rc = cm::test::run_command(cm::test::cm_binary() + " data " + args, &out);
  return out;
}

TEST_F(Convert, ParallelWorkersThenManifestEqualOneProcess) {
  cm::test::run_python(dir_, kCifarScript);
  int rc;
  const std::string src = path("cifar-10-batches-bin");
  std::string out = cm_data(fmt::format("convert cifar10 {} {} --shards 5 --quiet", src, path("one")), &rc);
  ASSERT_EQ(rc, 0) << out;
  // Two workers at once, each writing its shards; the manifest comes from a final step.
  std::string both;
  rc = cm::test::run_command(fmt::format("{0} data convert cifar10 {1} {2} --shards 5 --worker 0/2 --quiet & "
                                         "{0} data convert cifar10 {1} {2} --shards 5 --worker 1/2 --quiet; wait",
                                         cm::test::cm_binary(), src, path("two")),
                             &both);
  ASSERT_EQ(rc, 0) << both;
  try {
    read_manifest(path("two"));
    ADD_FAILURE() << "a manifest exists before the manifest step";
  } catch (const std::runtime_error& e) {
    EXPECT_NE(std::string(e.what()).find("cm data manifest"), std::string::npos) << e.what();
  }
  out = cm_data("manifest " + path("two"), &rc);
  ASSERT_EQ(rc, 0) << out;
  auto one = read_manifest(path("one")), two = read_manifest(path("two"));
  ASSERT_EQ(one.shards.size(), two.shards.size());
  for (size_t i = 0; i < one.shards.size(); ++i) {
    EXPECT_EQ(one.shards[i].images_crc32, two.shards[i].images_crc32);
    EXPECT_EQ(one.shards[i].labels_crc32, two.shards[i].labels_crc32);
    EXPECT_EQ(one.shards[i].records, two.shards[i].records);
  }
  out = cm_data("verify " + path("two"), &rc);
  EXPECT_EQ(rc, 0) << out;
  EXPECT_NE(out.find("OK"), std::string::npos) << out;
}

TEST_F(Convert, VerifyFindsDamagedShards) {
  cm::test::run_python(dir_, kCifarScript);
  int rc;
  std::string out = cm_data(fmt::format("convert cifar10 {} {} --shards 3", path("cifar-10-batches-bin"), path("d")), &rc);
  ASSERT_EQ(rc, 0) << out;
  EXPECT_NE(out.find("records in"), std::string::npos) << "no progress summary on stderr:\n" << out;
  out = cm_data("verify " + path("d"), &rc);
  ASSERT_EQ(rc, 0) << out;
  // Flip one pixel byte inside shard 1 (the image bytes start at the direct offset).
  const std::string victim = path("d/cifar10-train-00001-of-00003.h5");
  const int64_t off = *ShardReader(victim).direct_offset() + 5 * 3072 + 100;
  std::string bytes = cm::read_file(victim);
  bytes[size_t(off)] = char(bytes[size_t(off)] ^ 0x40);
  cm::test::write_file(victim, bytes);
  out = cm_data("verify " + path("d"), &rc);
  EXPECT_EQ(rc, 1) << out;
  EXPECT_NE(out.find("cifar10-train-00001-of-00003.h5"), std::string::npos) << out;
  EXPECT_NE(out.find("CRC32"), std::string::npos) << out;
  EXPECT_EQ(out.find("cifar10-train-00000-of-00003.h5: image"), std::string::npos) << out;
  // A truncated shard is named too.
  fs::resize_file(path("d/cifar10-train-00002-of-00003.h5"), 3000);
  out = cm_data("verify " + path("d"), &rc);
  EXPECT_EQ(rc, 1);
  EXPECT_NE(out.find("cifar10-train-00002-of-00003.h5"), std::string::npos) << out;
}

// An interrupted writer (destroyed before commit) leaves no file behind; commit() refuses a short shard.
TEST_F(Convert, UnfinishedShardLeavesNothing) {
  DatasetInfo info;
  info.name = "x";
  info.height = info.width = 2;
  info.channels = 1;
  info.total_records = 2;
  info.shard_count = 1;
  fs::create_directories(path("w"));
  const uint8_t px[4] = {1, 2, 3, 4};
  {
    ShardWriter w(path("w"), info, 0);
    w.append(px, nullptr, 1);
  }
  EXPECT_TRUE(fs::is_empty(path("w")));
  {
    ShardWriter w(path("w"), info, 0);
    w.append(px, nullptr, 1);
    EXPECT_ANY_THROW(w.commit());  // one record of two
  }
  EXPECT_TRUE(fs::is_empty(path("w")));
}

TEST_F(Convert, ShowWritesAGridAndOverwriteIsGuarded) {
  cm::test::run_python(dir_, kCifarScript);
  int rc;
  const std::string src = path("cifar-10-batches-bin");
  std::string out = cm_data(fmt::format("convert cifar10 {} {} --shards 2 --quiet", src, path("s")), &rc);
  ASSERT_EQ(rc, 0) << out;
  out = cm_data(fmt::format("show {} --out {} --count 12 --cols 4", path("s"), path("grid.png")), &rc);
  ASSERT_EQ(rc, 0) << out;
  std::string png = cm::read_file(path("grid.png"));
  Image grid = decode_image(reinterpret_cast<const uint8_t*>(png.data()), png.size(), 3, "grid.png");
  // 4 x 3 cells of 64 x (64 + caption) pixels (32x32 images enlarged twice) with 2-pixel gaps.
  EXPECT_EQ(grid.width, 4 * (64 + 2) + 2);
  EXPECT_EQ(grid.height, 3 * (64 + 14 + 2) + 2);
  // The printed labels are the dataset's labels of the shown records (the first 12 of a seeded order).
  auto labels = read_raw<int64_t>(path("train_labels.raw"));
  auto order = epoch_permutation(30, 0, 0);
  std::istringstream lines(out.substr(out.find("grid order:") + 11));
  int64_t v, count = 0;
  while (lines >> v) {
    ASSERT_LT(count, 12);
    EXPECT_EQ(v, labels[size_t(order[size_t(count)])]) << "cell " << count;
    ++count;
  }
  EXPECT_EQ(count, 12);

  out = cm_data(fmt::format("convert cifar10 {} {} --shards 2 --quiet", src, path("s")), &rc);
  EXPECT_NE(rc, 0);
  EXPECT_NE(out.find("--overwrite"), std::string::npos) << out;
  out = cm_data(fmt::format("convert cifar10 {} {} --shards 3 --quiet --overwrite", src, path("s")), &rc);
  EXPECT_EQ(rc, 0) << out;
  EXPECT_EQ(read_manifest(path("s")).shards.size(), 3u);
}

}  // namespace
