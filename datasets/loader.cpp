// The sharded loader (see loader.h).
#include "datasets/loader.h"

#include <fmt/format.h>
#include <hdf5.h>

#include <algorithm>
#include <filesystem>
#include <stdexcept>
#include <torch/torch.h>
#include "core/rng.h"

namespace cm {

// An open shard: HDF5 file and dataset handles kept for the loader's lifetime.
struct ShardedLoader::Open {
  std::string path;
  ShardMeta meta;
  hid_t file = -1, images = -1, labels = -1;
  ~Open() {
    if (labels >= 0) H5Dclose(labels);
    if (images >= 0) H5Dclose(images);
    if (file >= 0) H5Fclose(file);
  }
  void read(int64_t i, uint8_t* dst, int64_t* label, int64_t h, int64_t w, int64_t c) {
    hid_t fs = H5Dget_space(images);
    hsize_t start[4] = {static_cast<hsize_t>(i), 0, 0, 0}, cnt[4] = {1, static_cast<hsize_t>(h), static_cast<hsize_t>(w), static_cast<hsize_t>(c)};
    H5Sselect_hyperslab(fs, H5S_SELECT_SET, start, nullptr, cnt, nullptr);
    hid_t ms = H5Screate_simple(4, cnt, nullptr);
    herr_t rc = H5Dread(images, H5T_NATIVE_UINT8, ms, fs, H5P_DEFAULT, dst);
    H5Sclose(ms);
    H5Sclose(fs);
    if (rc < 0) throw std::runtime_error(fmt::format("{}: reading image {} failed: the shard is unreadable or corrupt", path, i));
    if (labels >= 0 && label) {
      hid_t ls = H5Dget_space(labels);
      hsize_t s1[1] = {static_cast<hsize_t>(i)}, c1[1] = {1};
      H5Sselect_hyperslab(ls, H5S_SELECT_SET, s1, nullptr, c1, nullptr);
      hid_t m1 = H5Screate_simple(1, c1, nullptr);
      rc = H5Dread(labels, H5T_NATIVE_INT64, m1, ls, H5P_DEFAULT, label);
      H5Sclose(m1);
      H5Sclose(ls);
      if (rc < 0) throw std::runtime_error(fmt::format("{}: reading label {} failed", path, i));
    }
  }
};

ShardedLoader::ShardedLoader(LoaderOptions opt) : opt_(std::move(opt)) {
  meta_ = read_manifest(opt_.dir);
  if (opt_.global_batch % opt_.world != 0)
    throw std::invalid_argument(fmt::format("global batch {} does not divide over {} ranks", opt_.global_batch, opt_.world));
  if (meta_.total < opt_.global_batch)
    throw std::invalid_argument(fmt::format("{}: {} images, fewer than one global batch of {}", opt_.dir, meta_.total, opt_.global_batch));
  // Open and check every shard now: a missing or mismatched shard is an error at start-up, not mid-epoch.
  H5Eset_auto2(H5E_DEFAULT, nullptr, nullptr);
  for (auto& s : meta_.shards) {
    auto o = std::make_unique<Open>();
    o->path = opt_.dir + "/" + s.file;
    o->meta = s;
    o->file = H5Fopen(o->path.c_str(), H5F_ACC_RDONLY, H5P_DEFAULT);
    if (o->file < 0) throw std::runtime_error(fmt::format("{}: missing or not a readable HDF5 shard (listed in {}/manifest.json)", o->path, opt_.dir));
    o->images = H5Dopen2(o->file, "images", H5P_DEFAULT);
    if (o->images < 0) throw std::runtime_error(o->path + ": no /images dataset");
    hid_t sp = H5Dget_space(o->images);
    hsize_t dims[4] = {0, 0, 0, 0};
    const int nd = H5Sget_simple_extent_ndims(sp);
    H5Sget_simple_extent_dims(sp, dims, nullptr);
    H5Sclose(sp);
    if (nd != 4 || static_cast<int64_t>(dims[0]) != s.count || static_cast<int64_t>(dims[1]) != meta_.height ||
        static_cast<int64_t>(dims[2]) != meta_.width || static_cast<int64_t>(dims[3]) != meta_.channels)
      throw std::runtime_error(fmt::format("{}: /images is [{}, {}, {}, {}], the manifest says [{}, {}, {}, {}]: the shard does not belong "
                                           "to this dataset (re-run `cm data verify`)", o->path, dims[0], dims[1], dims[2], dims[3], s.count,
                                           meta_.height, meta_.width, meta_.channels));
    if (meta_.num_classes > 0) {
      o->labels = H5Dopen2(o->file, "labels", H5P_DEFAULT);
      if (o->labels < 0) throw std::runtime_error(o->path + ": no /labels dataset although the manifest says the data is labelled");
    }
    shards_.push_back(std::move(o));
  }
}

ShardedLoader::~ShardedLoader() = default;

void ShardedLoader::ensure_epoch() {
  if (cursor_.batch_in_epoch >= batches_per_epoch()) {
    ++cursor_.epoch;
    cursor_.batch_in_epoch = 0;
  }
  if (perm_epoch_ != cursor_.epoch) {
    auto gen = cpu_generator(derive_seed(opt_.seed, /*stream: permutation*/ 41, static_cast<uint64_t>(cursor_.epoch)));
    perm_ = torch::randperm(meta_.total, gen, torch::kInt64);
    perm_epoch_ = cursor_.epoch;
  }
}

std::vector<int64_t> ShardedLoader::rank_indices() {
  ensure_epoch();
  const int64_t per = opt_.global_batch / opt_.world;
  const int64_t start = cursor_.batch_in_epoch * opt_.global_batch + opt_.rank * per;
  auto sl = perm_.narrow(0, start, per);
  return std::vector<int64_t>(sl.data_ptr<int64_t>(), sl.data_ptr<int64_t>() + per);
}

std::vector<int64_t> ShardedLoader::peek_indices() { return rank_indices(); }

Batch ShardedLoader::next() {
  auto idx = rank_indices();
  const int64_t n = static_cast<int64_t>(idx.size()), h = meta_.height, w = meta_.width, c = meta_.channels;
  auto raw = torch::empty({n, h, w, c}, torch::kUInt8);
  auto labels = torch::zeros({n}, torch::kInt64);
  for (int64_t k = 0; k < n; ++k) {
    const int64_t g = idx[k];
    auto it = std::upper_bound(shards_.begin(), shards_.end(), g, [](int64_t v, const auto& s) { return v < s->meta.first_index; });
    auto& s = *std::prev(it);
    s->read(g - s->meta.first_index, raw.data_ptr<uint8_t>() + k * h * w * c, labels.data_ptr<int64_t>() + k, h, w, c);
  }
  auto x = raw.permute({0, 3, 1, 2}).to(torch::kFloat32).div_(127.5).sub_(1.0);
  if (opt_.random_flip) {
    for (int64_t k = 0; k < n; ++k)
      if (derive_seed(opt_.seed, 42, static_cast<uint64_t>(cursor_.epoch), static_cast<uint64_t>(idx[k])) & 1) x[k] = x[k].flip({2});
  }
  ++cursor_.batch_in_epoch;
  ++cursor_.batches_total;
  return Batch{x.contiguous(), meta_.num_classes > 0 ? labels : torch::Tensor()};
}

void ShardedLoader::restore(const DataCursor& c) {
  cursor_ = c;
  perm_epoch_ = -1;
}

ModelShape ShardedLoader::shape() const {
  ModelShape s;
  s.channels = meta_.channels;
  s.resolution = meta_.height;
  s.num_classes = meta_.num_classes;
  return s;
}

std::string ShardedLoader::describe() const {
  return fmt::format("{} ({} {}x{}x{} images in {} shards), global batch {}", opt_.dir, meta_.total, meta_.height, meta_.width,
                     meta_.channels, meta_.shards.size(), opt_.global_batch);
}

}  // namespace cm
