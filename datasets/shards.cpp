// HDF5 shards and manifests (see shards.h). Every HDF5 call is checked; errors name the file.
#include "datasets/shards.h"

#include <fmt/format.h>
#include <hdf5.h>
#include <zlib.h>

#include <cstdio>
#include <filesystem>
#include <stdexcept>
#include <torch/torch.h>
#include "core/json.h"
#include "core/safetensors.h"

namespace fs = std::filesystem;

#define CM_H5_CHECK(call, where)                                                                         \
  ([&] {                                                                                                 \
    auto cm_h5_rc_ = (call);                                                                             \
    if (cm_h5_rc_ < 0) throw std::runtime_error(fmt::format("{}: HDF5 call {} failed ({}:{})", where, #call, __FILE__, __LINE__)); \
    return cm_h5_rc_;                                                                                    \
  }())

namespace cm {

namespace {

void write_attr_i64(hid_t obj, const char* name, int64_t v, const std::string& where) {
  hid_t space = CM_H5_CHECK(H5Screate(H5S_SCALAR), where);
  hid_t a = CM_H5_CHECK(H5Acreate2(obj, name, H5T_NATIVE_INT64, space, H5P_DEFAULT, H5P_DEFAULT), where);
  CM_H5_CHECK(H5Awrite(a, H5T_NATIVE_INT64, &v), where);
  H5Aclose(a);
  H5Sclose(space);
}

void write_attr_str(hid_t obj, const char* name, const std::string& v, const std::string& where) {
  hid_t type = CM_H5_CHECK(H5Tcopy(H5T_C_S1), where);
  CM_H5_CHECK(H5Tset_size(type, std::max<size_t>(1, v.size())), where);
  hid_t space = CM_H5_CHECK(H5Screate(H5S_SCALAR), where);
  hid_t a = CM_H5_CHECK(H5Acreate2(obj, name, type, space, H5P_DEFAULT, H5P_DEFAULT), where);
  std::string padded = v.empty() ? std::string(1, '\0') : v;
  CM_H5_CHECK(H5Awrite(a, type, padded.data()), where);
  H5Aclose(a);
  H5Sclose(space);
  H5Tclose(type);
}

int64_t read_attr_i64(hid_t obj, const char* name, const std::string& where) {
  if (H5Aexists(obj, name) <= 0) throw std::runtime_error(fmt::format("{}: attribute '{}' is missing", where, name));
  hid_t a = CM_H5_CHECK(H5Aopen(obj, name, H5P_DEFAULT), where);
  int64_t v = 0;
  CM_H5_CHECK(H5Aread(a, H5T_NATIVE_INT64, &v), where);
  H5Aclose(a);
  return v;
}

std::string read_attr_str(hid_t obj, const char* name, const std::string& where) {
  if (H5Aexists(obj, name) <= 0) throw std::runtime_error(fmt::format("{}: attribute '{}' is missing", where, name));
  hid_t a = CM_H5_CHECK(H5Aopen(obj, name, H5P_DEFAULT), where);
  hid_t type = CM_H5_CHECK(H5Aget_type(a), where);
  size_t n = H5Tget_size(type);
  std::string v(n, '\0');
  CM_H5_CHECK(H5Aread(a, type, v.data()), where);
  H5Tclose(type);
  H5Aclose(a);
  while (!v.empty() && v.back() == '\0') v.pop_back();
  return v;
}

struct H5File {
  hid_t id = -1;
  ~H5File() {
    if (id >= 0) H5Fclose(id);
  }
};

}  // namespace

std::string shard_file_name(const std::string& name, int64_t index, int64_t count) {
  return fmt::format("{}-{:05d}-of-{:05d}.h5", name, index, count);
}

ShardWriter::ShardWriter(const std::string& dir, const std::string& file, const DatasetMeta& meta, int64_t first_index)
    : dir_(dir), file_(file), partial_(dir + "/" + file + ".partial"), meta_(meta), first_index_(first_index) {
  const int64_t image_bytes = meta.height * meta.width * meta.channels;
  // Chunks of whole images, about 256 KB: small images are not read one tiny chunk at a time.
  chunk_images_ = std::max<int64_t>(1, (256 << 10) / std::max<int64_t>(1, image_bytes));
  H5Eset_auto2(H5E_DEFAULT, nullptr, nullptr);  // our checks report errors; no HDF5 stack dumps
  h5file_ = CM_H5_CHECK(H5Fcreate(partial_.c_str(), H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT), partial_);
  hsize_t dims[4] = {0, static_cast<hsize_t>(meta.height), static_cast<hsize_t>(meta.width), static_cast<hsize_t>(meta.channels)};
  hsize_t maxd[4] = {H5S_UNLIMITED, dims[1], dims[2], dims[3]};
  hsize_t chunk[4] = {static_cast<hsize_t>(chunk_images_), dims[1], dims[2], dims[3]};
  hid_t space = CM_H5_CHECK(H5Screate_simple(4, dims, maxd), partial_);
  hid_t plist = CM_H5_CHECK(H5Pcreate(H5P_DATASET_CREATE), partial_);
  CM_H5_CHECK(H5Pset_chunk(plist, 4, chunk), partial_);
  images_ = CM_H5_CHECK(H5Dcreate2(h5file_, "images", H5T_NATIVE_UINT8, space, H5P_DEFAULT, plist, H5P_DEFAULT), partial_);
  H5Pclose(plist);
  H5Sclose(space);
  if (meta.num_classes > 0) {
    hsize_t d1[1] = {0}, m1[1] = {H5S_UNLIMITED}, c1[1] = {static_cast<hsize_t>(std::max<int64_t>(chunk_images_, 1024))};
    hid_t s1 = CM_H5_CHECK(H5Screate_simple(1, d1, m1), partial_);
    hid_t p1 = CM_H5_CHECK(H5Pcreate(H5P_DATASET_CREATE), partial_);
    CM_H5_CHECK(H5Pset_chunk(p1, 1, c1), partial_);
    labels_ds_ = CM_H5_CHECK(H5Dcreate2(h5file_, "labels", H5T_NATIVE_INT64, s1, H5P_DEFAULT, p1, H5P_DEFAULT), partial_);
    H5Pclose(p1);
    H5Sclose(s1);
  }
}

ShardWriter::~ShardWriter() {
  if (finished_) return;
  if (labels_ds_ >= 0) H5Dclose(labels_ds_);
  if (images_ >= 0) H5Dclose(images_);
  if (h5file_ >= 0) H5Fclose(h5file_);
  std::remove(partial_.c_str());
}

void ShardWriter::append(const uint8_t* hwc, int64_t label) {
  const int64_t image_bytes = meta_.height * meta_.width * meta_.channels;
  buf_.insert(buf_.end(), hwc, hwc + image_bytes);
  if (meta_.num_classes > 0) {
    if (label < 0 || label >= meta_.num_classes)
      throw std::runtime_error(fmt::format("{}: label {} of record {} is outside [0, {})", file_, label, first_index_ + count_ + labels_.size(),
                                           meta_.num_classes));
    labels_.push_back(label);
  }
  if (static_cast<int64_t>(buf_.size()) >= chunk_images_ * image_bytes) flush_chunk();
}

void ShardWriter::flush_chunk() {
  const int64_t image_bytes = meta_.height * meta_.width * meta_.channels;
  const int64_t n = static_cast<int64_t>(buf_.size()) / std::max<int64_t>(1, image_bytes);
  if (n == 0) return;
  hsize_t newd[4] = {static_cast<hsize_t>(count_ + n), static_cast<hsize_t>(meta_.height), static_cast<hsize_t>(meta_.width),
                     static_cast<hsize_t>(meta_.channels)};
  CM_H5_CHECK(H5Dset_extent(images_, newd), partial_);
  hid_t fspace = CM_H5_CHECK(H5Dget_space(images_), partial_);
  hsize_t start[4] = {static_cast<hsize_t>(count_), 0, 0, 0}, cnt[4] = {static_cast<hsize_t>(n), newd[1], newd[2], newd[3]};
  CM_H5_CHECK(H5Sselect_hyperslab(fspace, H5S_SELECT_SET, start, nullptr, cnt, nullptr), partial_);
  hid_t mspace = CM_H5_CHECK(H5Screate_simple(4, cnt, nullptr), partial_);
  CM_H5_CHECK(H5Dwrite(images_, H5T_NATIVE_UINT8, mspace, fspace, H5P_DEFAULT, buf_.data()), partial_);
  H5Sclose(mspace);
  H5Sclose(fspace);
  crc_images_ = crc32(crc_images_, buf_.data(), static_cast<uInt>(buf_.size()));
  if (labels_ds_ >= 0) {
    hsize_t nd[1] = {static_cast<hsize_t>(count_ + n)}, st[1] = {static_cast<hsize_t>(count_)}, c1[1] = {static_cast<hsize_t>(n)};
    CM_H5_CHECK(H5Dset_extent(labels_ds_, nd), partial_);
    hid_t fs1 = CM_H5_CHECK(H5Dget_space(labels_ds_), partial_);
    CM_H5_CHECK(H5Sselect_hyperslab(fs1, H5S_SELECT_SET, st, nullptr, c1, nullptr), partial_);
    hid_t ms1 = CM_H5_CHECK(H5Screate_simple(1, c1, nullptr), partial_);
    CM_H5_CHECK(H5Dwrite(labels_ds_, H5T_NATIVE_INT64, ms1, fs1, H5P_DEFAULT, labels_.data()), partial_);
    H5Sclose(ms1);
    H5Sclose(fs1);
    crc_labels_ = crc32(crc_labels_, reinterpret_cast<const Bytef*>(labels_.data()), static_cast<uInt>(labels_.size() * 8));
  }
  count_ += n;
  buf_.clear();
  labels_.clear();
}

ShardMeta ShardWriter::finish() {
  flush_chunk();
  const std::string& w = partial_;
  write_attr_str(h5file_, "format", kShardFormat, w);
  write_attr_i64(h5file_, "version", kShardVersion, w);
  write_attr_i64(h5file_, "count", count_, w);
  write_attr_i64(h5file_, "first_index", first_index_, w);
  write_attr_i64(h5file_, "height", meta_.height, w);
  write_attr_i64(h5file_, "width", meta_.width, w);
  write_attr_i64(h5file_, "resolution", meta_.height, w);
  write_attr_i64(h5file_, "channels", meta_.channels, w);
  write_attr_i64(h5file_, "num_classes", meta_.num_classes, w);
  write_attr_str(h5file_, "source", meta_.source, w);
  write_attr_str(h5file_, "preprocessing", meta_.preprocessing, w);
  if (labels_ds_ >= 0) H5Dclose(labels_ds_);
  H5Dclose(images_);
  CM_H5_CHECK(H5Fflush(h5file_, H5F_SCOPE_GLOBAL), w);
  CM_H5_CHECK(H5Fclose(h5file_), w);
  labels_ds_ = images_ = h5file_ = -1;
  // fsync then rename: the final name appears only for a complete shard.
  if (FILE* f = std::fopen(partial_.c_str(), "rb+")) {
    fflush(f);
    fsync(fileno(f));
    std::fclose(f);
  }
  const std::string final_path = dir_ + "/" + file_;
  if (std::rename(partial_.c_str(), final_path.c_str()) != 0)
    throw std::runtime_error(fmt::format("cannot rename {} to {}", partial_, final_path));
  fsync_directory(dir_);
  finished_ = true;
  ShardMeta m;
  m.file = file_;
  m.count = count_;
  m.first_index = first_index_;
  m.crc32 = static_cast<uint32_t>(crc32_combine(crc_images_, crc_labels_, static_cast<z_off_t>(count_ * (labels_ds_ >= 0 || meta_.num_classes > 0 ? 8 : 0))));
  return m;
}

void write_manifest(const std::string& dir, const DatasetMeta& m) {
  std::string s = fmt::format(
      "{{\n  \"format\": \"{}\",\n  \"version\": {},\n  \"name\": \"{}\",\n  \"split\": \"{}\",\n  \"source\": \"{}\",\n"
      "  \"preprocessing\": \"{}\",\n  \"height\": {},\n  \"width\": {},\n  \"channels\": {},\n  \"num_classes\": {},\n"
      "  \"total\": {},\n  \"shards\": [",
      kShardFormat, kShardVersion, json_escape(m.name), json_escape(m.split), json_escape(m.source), json_escape(m.preprocessing),
      m.height, m.width, m.channels, m.num_classes, m.total);
  for (size_t i = 0; i < m.shards.size(); ++i)
    s += fmt::format("{}\n    {{\"file\": \"{}\", \"count\": {}, \"first_index\": {}, \"crc32\": {}}}", i ? "," : "",
                     json_escape(m.shards[i].file), m.shards[i].count, m.shards[i].first_index, m.shards[i].crc32);
  s += "\n  ]\n}\n";
  write_file_atomic(dir + "/manifest.json", s);
}

DatasetMeta read_manifest(const std::string& dir) {
  const std::string path = dir + "/manifest.json";
  if (!fs::exists(path))
    throw std::runtime_error(fmt::format("{}: no manifest.json: not a converted dataset directory (make one with `cm data convert`), "
                                         "or its conversion did not finish", dir));
  Json j = parse_json(read_file(path), path);
  if (j.at("format", path).str != kShardFormat) throw std::runtime_error(fmt::format("{}: format is not {}", path, kShardFormat));
  if (j.at("version", path).integer > kShardVersion)
    throw std::runtime_error(fmt::format("{}: version {} is newer than this program's {}", path, j.at("version", path).integer, kShardVersion));
  DatasetMeta m;
  m.name = j.at("name", path).str;
  m.split = j.at("split", path).str;
  m.source = j.at("source", path).str;
  m.preprocessing = j.at("preprocessing", path).str;
  m.height = j.at("height", path).integer;
  m.width = j.at("width", path).integer;
  m.channels = j.at("channels", path).integer;
  m.num_classes = j.at("num_classes", path).integer;
  m.total = j.at("total", path).integer;
  int64_t expect_first = 0;
  for (auto& s : j.at("shards", path).arr) {
    ShardMeta sm;
    sm.file = s.at("file", path).str;
    sm.count = s.at("count", path).integer;
    sm.first_index = s.at("first_index", path).integer;
    sm.crc32 = static_cast<uint32_t>(s.at("crc32", path).integer);
    if (sm.first_index != expect_first)
      throw std::runtime_error(fmt::format("{}: shard {} starts at {}, expected {}", path, sm.file, sm.first_index, expect_first));
    expect_first += sm.count;
    m.shards.push_back(sm);
  }
  if (expect_first != m.total) throw std::runtime_error(fmt::format("{}: shard counts sum to {}, total says {}", path, expect_first, m.total));
  return m;
}

ShardBlock read_shard_block(const std::string& path, int64_t first, int64_t n) {
  H5Eset_auto2(H5E_DEFAULT, nullptr, nullptr);
  H5File f;
  f.id = H5Fopen(path.c_str(), H5F_ACC_RDONLY, H5P_DEFAULT);
  if (f.id < 0) throw std::runtime_error(fmt::format("{}: cannot open as HDF5 (missing, unreadable or corrupt)", path));
  hid_t ds = CM_H5_CHECK(H5Dopen2(f.id, "images", H5P_DEFAULT), path + " /images");
  hid_t fspace = CM_H5_CHECK(H5Dget_space(ds), path);
  hsize_t dims[4];
  if (H5Sget_simple_extent_ndims(fspace) != 4) throw std::runtime_error(path + ": /images is not 4-D [N, H, W, C]");
  H5Sget_simple_extent_dims(fspace, dims, nullptr);
  if (first < 0 || first + n > static_cast<int64_t>(dims[0]))
    throw std::runtime_error(fmt::format("{}: records [{}, {}) requested, the shard has {}", path, first, first + n, dims[0]));
  ShardBlock b;
  b.images = torch::empty({n, static_cast<int64_t>(dims[1]), static_cast<int64_t>(dims[2]), static_cast<int64_t>(dims[3])}, torch::kUInt8);
  hsize_t start[4] = {static_cast<hsize_t>(first), 0, 0, 0}, cnt[4] = {static_cast<hsize_t>(n), dims[1], dims[2], dims[3]};
  CM_H5_CHECK(H5Sselect_hyperslab(fspace, H5S_SELECT_SET, start, nullptr, cnt, nullptr), path);
  hid_t mspace = CM_H5_CHECK(H5Screate_simple(4, cnt, nullptr), path);
  if (n > 0) CM_H5_CHECK(H5Dread(ds, H5T_NATIVE_UINT8, mspace, fspace, H5P_DEFAULT, b.images.data_ptr()), path + " /images");
  H5Sclose(mspace);
  H5Sclose(fspace);
  H5Dclose(ds);
  if (H5Lexists(f.id, "labels", H5P_DEFAULT) > 0) {
    hid_t ld = CM_H5_CHECK(H5Dopen2(f.id, "labels", H5P_DEFAULT), path);
    hid_t ls = CM_H5_CHECK(H5Dget_space(ld), path);
    hsize_t s1[1] = {static_cast<hsize_t>(first)}, c1[1] = {static_cast<hsize_t>(n)};
    CM_H5_CHECK(H5Sselect_hyperslab(ls, H5S_SELECT_SET, s1, nullptr, c1, nullptr), path);
    hid_t ms = CM_H5_CHECK(H5Screate_simple(1, c1, nullptr), path);
    b.labels = torch::empty({n}, torch::kInt64);
    if (n > 0) CM_H5_CHECK(H5Dread(ld, H5T_NATIVE_INT64, ms, ls, H5P_DEFAULT, b.labels.data_ptr()), path + " /labels");
    H5Sclose(ms);
    H5Sclose(ls);
    H5Dclose(ld);
  }
  return b;
}

std::vector<std::string> verify_dataset(const std::string& dir, bool progress) {
  std::vector<std::string> problems;
  DatasetMeta m = read_manifest(dir);
  for (auto& s : m.shards) {
    const std::string path = dir + "/" + s.file;
    try {
      if (!fs::exists(path)) throw std::runtime_error(path + ": missing");
      H5Eset_auto2(H5E_DEFAULT, nullptr, nullptr);
      {
        H5File f;
        f.id = H5Fopen(path.c_str(), H5F_ACC_RDONLY, H5P_DEFAULT);
        if (f.id < 0) throw std::runtime_error(path + ": cannot open as HDF5");
        if (read_attr_str(f.id, "format", path) != kShardFormat) throw std::runtime_error(path + ": wrong format attribute");
        for (auto [attr, want] : {std::pair{"count", s.count}, {"first_index", s.first_index}, {"height", m.height}, {"width", m.width},
                                  {"channels", m.channels}, {"num_classes", m.num_classes}}) {
          int64_t got = read_attr_i64(f.id, attr, path);
          if (got != want) throw std::runtime_error(fmt::format("{}: attribute {} = {}, manifest says {}", path, attr, got, want));
        }
      }
      auto b = read_shard_block(path, 0, s.count);
      if (b.images.size(1) != m.height || b.images.size(2) != m.width || b.images.size(3) != m.channels)
        throw std::runtime_error(fmt::format("{}: images are {}, manifest says [*, {}, {}, {}]", path, c10::str(b.images.sizes()), m.height,
                                             m.width, m.channels));
      uint32_t ci = crc32(0, b.images.data_ptr<uint8_t>(), static_cast<uInt>(b.images.numel()));
      uint32_t cl = b.labels.defined() ? crc32(0, reinterpret_cast<const Bytef*>(b.labels.data_ptr()), static_cast<uInt>(b.labels.numel() * 8)) : 0;
      uint32_t c = static_cast<uint32_t>(crc32_combine(ci, cl, static_cast<z_off_t>(b.labels.defined() ? b.labels.numel() * 8 : 0)));
      if (c != s.crc32) throw std::runtime_error(fmt::format("{}: checksum {:08x}, manifest says {:08x}: the shard is corrupt", path, c, s.crc32));
      if (progress) fmt::print("ok  {} ({} images)\n", s.file, s.count);
    } catch (const std::exception& e) {
      problems.push_back(e.what());
      if (progress) fmt::print("BAD {}\n", e.what());
    }
  }
  return problems;
}

}  // namespace cm
