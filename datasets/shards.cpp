// HDF5 shard writer/reader and the manifest (see shards.h for the format and the reasons behind it).
#include "datasets/shards.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>
#include <xxhash.h>
#include <zlib.h>

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <fmt/format.h>
#include <map>
#include <regex>
#include <stdexcept>

#include "core/io/json.h"
#include "core/io/safetensors.h"
#include "datasets/h5util.h"

namespace fs = std::filesystem;

namespace cm::data {

// ---------------------------------------------------------------------------------------------- basics

std::string shard_file_name(const std::string& name, int64_t index, int64_t count) {
  return fmt::format("{}-{:05d}-of-{:05d}.h5", name, index, count);
}

std::pair<int64_t, int64_t> shard_range(int64_t total, int64_t shards, int64_t index) {
  const int64_t base = total / shards, extra = total % shards;
  const int64_t first = index * base + std::min(index, extra);
  return {first, base + (index < extra ? 1 : 0)};
}

uint32_t crc32_update(uint32_t crc, const void* data, size_t n) {
  return static_cast<uint32_t>(::crc32_z(crc, static_cast<const Bytef*>(data), n));
}

std::string crc_hex(uint32_t crc) { return fmt::format("{:08x}", crc); }

uint64_t record_checksum(const void* data, size_t n) { return XXH3_64bits(data, n); }

std::string DatasetInfo::difference(const DatasetInfo& o) const {
  auto cmp = [](const char* what, const auto& a, const auto& b) -> std::string {
    return a == b ? "" : fmt::format("{}: '{}' vs '{}'", what, a, b);
  };
  for (const std::string& d :
       {cmp("name", name, o.name), cmp("source_format", source_format, o.source_format),
        cmp("preprocessing", preprocessing, o.preprocessing), cmp("height", height, o.height),
        cmp("width", width, o.width), cmp("channels", channels, o.channels),
        cmp("num_classes", num_classes, o.num_classes), cmp("total_records", total_records, o.total_records),
        cmp("shard_count", shard_count, o.shard_count)})
    if (!d.empty()) return d;
  return "";
}

static int64_t file_size(const std::string& path) {
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0) return -1;
  return st.st_size;
}

static void fsync_file(const std::string& path) {
  int fd = ::open(path.c_str(), O_RDONLY);
  if (fd < 0) throw std::runtime_error(fmt::format("cannot reopen '{}' to fsync it: {}", path, std::strerror(errno)));
  int rc = ::fsync(fd);
  int err = errno;
  ::close(fd);
  if (rc != 0) throw std::runtime_error(fmt::format("fsync of '{}' failed: {}", path, std::strerror(err)));
}

// Shard attributes: the root group of every shard carries these.
static void write_header(hid_t file, const DatasetInfo& d, const ShardInfo& s, const std::string& where) {
  h5_write_attr(file, "format", std::string(kShardFormat), where);
  h5_write_attr(file, "format_version", kShardFormatVersion, where);
  h5_write_attr(file, "name", d.name, where);
  h5_write_attr(file, "source_format", d.source_format, where);
  h5_write_attr(file, "source", d.source, where);
  h5_write_attr(file, "preprocessing", d.preprocessing, where);
  h5_write_attr(file, "paper_preprocessing", int64_t(d.paper_preprocessing ? 1 : 0), where);
  h5_write_attr(file, "resolution", d.height == d.width ? d.height : 0, where);
  h5_write_attr(file, "height", d.height, where);
  h5_write_attr(file, "width", d.width, where);
  h5_write_attr(file, "channels", d.channels, where);
  h5_write_attr(file, "num_classes", d.num_classes, where);
  h5_write_attr(file, "total_records", d.total_records, where);
  h5_write_attr(file, "shard_count", d.shard_count, where);
  h5_write_attr(file, "shard_index", s.index, where);
  h5_write_attr(file, "first_record", s.first_record, where);
  h5_write_attr(file, "record_count", s.records, where);
  h5_write_attr(file, "images_crc32", int64_t(s.images_crc32), where);
  h5_write_attr(file, "labels_crc32", int64_t(s.labels_crc32), where);
}

static void read_header(hid_t file, const std::string& where, DatasetInfo& d, ShardInfo& s) {
  const std::string format = h5_read_string_attr(file, "format", where);
  if (format != kShardFormat)
    throw std::runtime_error(fmt::format("{}: attribute format is '{}', expected '{}'", where, format, kShardFormat));
  const int64_t version = h5_read_int_attr(file, "format_version", where);
  if (version < kShardFormatOldestReadable || version > kShardFormatVersion)
    throw std::runtime_error(fmt::format("{}: shard format version {} is not supported (this build reads {} to {}); "
                                         "convert the dataset again with this build",
                                         where, version, kShardFormatOldestReadable, kShardFormatVersion));
  s.format_version = version;
  d.name = h5_read_string_attr(file, "name", where);
  d.source_format = h5_read_string_attr(file, "source_format", where);
  d.source = h5_read_string_attr(file, "source", where);
  d.preprocessing = h5_read_string_attr(file, "preprocessing", where);
  d.paper_preprocessing = h5_read_int_attr(file, "paper_preprocessing", where) != 0;
  d.height = h5_read_int_attr(file, "height", where);
  d.width = h5_read_int_attr(file, "width", where);
  d.channels = h5_read_int_attr(file, "channels", where);
  d.num_classes = h5_read_int_attr(file, "num_classes", where);
  d.total_records = h5_read_int_attr(file, "total_records", where);
  d.shard_count = h5_read_int_attr(file, "shard_count", where);
  s.index = h5_read_int_attr(file, "shard_index", where);
  s.first_record = h5_read_int_attr(file, "first_record", where);
  s.records = h5_read_int_attr(file, "record_count", where);
  s.images_crc32 = static_cast<uint32_t>(h5_read_int_attr(file, "images_crc32", where));
  s.labels_crc32 = static_cast<uint32_t>(h5_read_int_attr(file, "labels_crc32", where));
}

// -------------------------------------------------------------------------------------------- writer

struct ShardWriter::Impl {
  DatasetInfo info;
  ShardInfo shard;
  std::string final_path, tmp_path;
  H5Handle file, images, labels;
  std::vector<uint64_t> checksums;  // per record, written at commit
  int64_t pos = 0;
  bool committed = false;
};

ShardWriter::ShardWriter(const std::string& dir, const DatasetInfo& info, int64_t shard_index)
    : impl_(std::make_unique<Impl>()) {
  h5_quiet_errors();
  auto& m = *impl_;
  m.info = info;
  if (info.shard_count <= 0 || shard_index < 0 || shard_index >= info.shard_count)
    throw std::invalid_argument(fmt::format("shard index {} outside 0..{}", shard_index, info.shard_count - 1));
  auto [first, count] = shard_range(info.total_records, info.shard_count, shard_index);
  if (count <= 0)
    throw std::invalid_argument(fmt::format("{} records cannot fill {} shards; use fewer shards",
                                            info.total_records, info.shard_count));
  m.shard.index = shard_index;
  m.shard.first_record = first;
  m.shard.records = count;
  m.shard.file = shard_file_name(info.name, shard_index, info.shard_count);
  m.final_path = (fs::path(dir) / m.shard.file).string();
  m.tmp_path = fmt::format("{}.tmp-{}", m.final_path, ::getpid());
  const std::string& w = m.tmp_path;

  H5Handle fapl(h5(H5Pcreate(H5P_FILE_ACCESS), w), H5Pclose);
  // 1.10 format: fixed-array chunk index, so early-allocated chunks lie in record order (see shards.h).
  h5(H5Pset_libver_bounds(fapl, H5F_LIBVER_V110, H5F_LIBVER_V110), w);
  m.file = H5Handle(h5(H5Fcreate(w.c_str(), H5F_ACC_TRUNC, H5P_DEFAULT, fapl), "creating " + w), H5Fclose);

  const hsize_t dims[4] = {hsize_t(count), hsize_t(info.height), hsize_t(info.width), hsize_t(info.channels)};
  const hsize_t chunk[4] = {1, dims[1], dims[2], dims[3]};
  H5Handle space(h5(H5Screate_simple(4, dims, nullptr), w), H5Sclose);
  H5Handle dcpl(h5(H5Pcreate(H5P_DATASET_CREATE), w), H5Pclose);
  h5(H5Pset_chunk(dcpl, 4, chunk), w);
  h5(H5Pset_alloc_time(dcpl, H5D_ALLOC_TIME_EARLY), w);
  h5(H5Pset_fill_time(dcpl, H5D_FILL_TIME_NEVER), w);
  m.images = H5Handle(h5(H5Dcreate2(m.file, "images", H5T_STD_U8LE, space, H5P_DEFAULT, dcpl, H5P_DEFAULT),
                         w + ": creating /images"),
                      H5Dclose);
  if (info.labelled()) {
    const hsize_t ldims[1] = {hsize_t(count)};
    H5Handle lspace(h5(H5Screate_simple(1, ldims, nullptr), w), H5Sclose);
    m.labels = H5Handle(h5(H5Dcreate2(m.file, "labels", H5T_STD_I64LE, lspace, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT),
                           w + ": creating /labels"),
                        H5Dclose);
  }
}

ShardWriter::~ShardWriter() {
  if (!impl_ || impl_->committed) return;
  impl_->labels.reset();
  impl_->images.reset();
  impl_->file.reset();
  ::unlink(impl_->tmp_path.c_str());
}

int64_t ShardWriter::written() const { return impl_->pos; }
const std::string& ShardWriter::final_path() const { return impl_->final_path; }

static void write_rows(hid_t ds, hid_t mem_type, int rank, const hsize_t* full, int64_t pos, int64_t n,
                       const void* data, const std::string& where) {
  H5Handle fspace(h5(H5Dget_space(ds), where), H5Sclose);
  hsize_t start[4] = {hsize_t(pos), 0, 0, 0};
  hsize_t count[4] = {hsize_t(n), full[1], full[2], full[3]};
  h5(H5Sselect_hyperslab(fspace, H5S_SELECT_SET, start, nullptr, count, nullptr), where);
  H5Handle mspace(h5(H5Screate_simple(rank, count, nullptr), where), H5Sclose);
  h5(H5Dwrite(ds, mem_type, mspace, fspace, H5P_DEFAULT, data), where);
}

void ShardWriter::append(const uint8_t* images, const int64_t* labels, int64_t n) {
  auto& m = *impl_;
  if (n <= 0) return;
  if (m.pos + n > m.shard.records)
    throw std::logic_error(fmt::format("{}: {} records appended to a shard of {}", m.tmp_path, m.pos + n, m.shard.records));
  if (m.info.labelled() != (labels != nullptr))
    throw std::logic_error(fmt::format("{}: labels given for an unlabelled dataset or missing", m.tmp_path));
  const std::string where = fmt::format("{}: writing records {}..{}", m.tmp_path, m.pos, m.pos + n - 1);
  const hsize_t full[4] = {0, hsize_t(m.info.height), hsize_t(m.info.width), hsize_t(m.info.channels)};
  write_rows(m.images, H5T_NATIVE_UINT8, 4, full, m.pos, n, images, where);
  m.shard.images_crc32 = crc32_update(m.shard.images_crc32, images, size_t(n) * m.info.image_bytes());
  for (int64_t i = 0; i < n; ++i)
    m.checksums.push_back(record_checksum(images + i * m.info.image_bytes(), size_t(m.info.image_bytes())));
  if (labels) {
    for (int64_t i = 0; i < n; ++i)
      if (labels[i] < 0 || labels[i] >= m.info.num_classes)
        throw std::runtime_error(fmt::format("{}: record {} has label {} outside 0..{}", m.tmp_path,
                                             m.shard.first_record + m.pos + i, labels[i], m.info.num_classes - 1));
    const hsize_t lfull[4] = {0, 1, 1, 1};
    write_rows(m.labels, H5T_NATIVE_INT64, 1, lfull, m.pos, n, labels, where);
    // Little-endian int64 bytes: this machine's order (x86-64, aarch64).
    m.shard.labels_crc32 = crc32_update(m.shard.labels_crc32, labels, size_t(n) * sizeof(int64_t));
  }
  m.pos += n;
}

ShardInfo ShardWriter::commit() {
  auto& m = *impl_;
  if (m.pos != m.shard.records)
    throw std::logic_error(fmt::format("{}: commit after {} of {} records", m.tmp_path, m.pos, m.shard.records));
  {
    const hsize_t cdims[1] = {hsize_t(m.shard.records)};
    H5Handle cspace(h5(H5Screate_simple(1, cdims, nullptr), m.tmp_path), H5Sclose);
    H5Handle cs(h5(H5Dcreate2(m.file, "record_xxh3", H5T_STD_U64LE, cspace, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT),
                   m.tmp_path + ": creating /record_xxh3"),
                H5Dclose);
    h5(H5Dwrite(cs, H5T_NATIVE_UINT64, H5S_ALL, H5S_ALL, H5P_DEFAULT, m.checksums.data()), m.tmp_path + ": writing /record_xxh3");
    cs.close_checked(m.tmp_path + ": closing /record_xxh3");
  }
  write_header(m.file, m.info, m.shard, m.tmp_path);
  m.labels.close_checked(m.tmp_path + ": closing /labels");
  m.images.close_checked(m.tmp_path + ": closing /images");
  m.file.close_checked(m.tmp_path + ": closing (flush)");
  // Order matters: data durable under the temporary name first, then the rename, then the directory
  // entry, so a crash leaves either no shard or a complete one under the final name.
  fsync_file(m.tmp_path);
  if (::rename(m.tmp_path.c_str(), m.final_path.c_str()) != 0)
    throw std::runtime_error(fmt::format("renaming '{}' to '{}' failed: {}", m.tmp_path, m.final_path, std::strerror(errno)));
  fsync_directory(fs::path(m.final_path).parent_path().string());
  m.committed = true;
  m.shard.file_bytes = file_size(m.final_path);
  return m.shard;
}

// -------------------------------------------------------------------------------------------- reader

struct ShardReader::Impl {
  std::string path;
  DatasetInfo info;
  ShardInfo shard;
  H5Handle file, images, labels;
  std::vector<uint64_t> checksums;  // per record (version >= 2)
};

ShardReader::ShardReader(const std::string& path) : impl_(std::make_unique<Impl>()) {
  h5_quiet_errors();
  auto& m = *impl_;
  m.path = path;
  if (::access(path.c_str(), R_OK) != 0)
    throw std::runtime_error(fmt::format("shard '{}' cannot be read: {}", path, std::strerror(errno)));
  if (H5Fis_hdf5(path.c_str()) <= 0)
    throw std::runtime_error(fmt::format("shard '{}' is not an HDF5 file (truncated or overwritten?)", path));
  m.file = H5Handle(h5(H5Fopen(path.c_str(), H5F_ACC_RDONLY, H5P_DEFAULT), "opening " + path), H5Fclose);
  read_header(m.file, path, m.info, m.shard);
  m.shard.file = fs::path(path).filename().string();
  m.shard.file_bytes = file_size(path);
  m.images = H5Handle(h5(H5Dopen2(m.file, "images", H5P_DEFAULT), path + ": opening /images"), H5Dclose);
  auto dims = h5_dims(m.images, path + ": /images");
  const std::vector<hsize_t> want = {hsize_t(m.shard.records), hsize_t(m.info.height), hsize_t(m.info.width),
                                     hsize_t(m.info.channels)};
  if (dims != want)
    throw std::runtime_error(fmt::format("{}: /images has shape [{}], attributes say [{}]", path, fmt::join(dims, ", "),
                                         fmt::join(want, ", ")));
  H5Handle type(h5(H5Dget_type(m.images), path), H5Tclose);
  if (H5Tget_class(type) != H5T_INTEGER || H5Tget_size(type) != 1 || H5Tget_sign(type) != H5T_SGN_NONE)
    throw std::runtime_error(fmt::format("{}: /images must be uint8", path));
  if (m.info.labelled()) {
    m.labels = H5Handle(h5(H5Dopen2(m.file, "labels", H5P_DEFAULT), path + ": opening /labels"), H5Dclose);
    auto ldims = h5_dims(m.labels, path + ": /labels");
    if (ldims != std::vector<hsize_t>{hsize_t(m.shard.records)})
      throw std::runtime_error(fmt::format("{}: /labels has shape [{}], expected [{}]", path, fmt::join(ldims, ", "),
                                           m.shard.records));
  }
  if (m.shard.format_version >= 2) {
    H5Handle cs(h5(H5Dopen2(m.file, "record_xxh3", H5P_DEFAULT), path + ": opening /record_xxh3"), H5Dclose);
    if (h5_dims(cs, path + ": /record_xxh3") != std::vector<hsize_t>{hsize_t(m.shard.records)})
      throw std::runtime_error(fmt::format("{}: /record_xxh3 does not have one entry per record ({})", path, m.shard.records));
    m.checksums.resize(size_t(m.shard.records));
    h5(H5Dread(cs, H5T_NATIVE_UINT64, H5S_ALL, H5S_ALL, H5P_DEFAULT, m.checksums.data()), path + ": reading /record_xxh3");
  }
}

const std::vector<uint64_t>& ShardReader::record_checksums() const { return impl_->checksums; }

void ShardReader::check_record(int64_t local_index, const uint8_t* bytes) const {
  const auto& m = *impl_;
  if (m.checksums.empty()) return;
  const uint64_t have = record_checksum(bytes, size_t(m.info.image_bytes()));
  if (have != m.checksums[size_t(local_index)])
    throw std::runtime_error(fmt::format("shard '{}': record {} (global index {}) is corrupt: its bytes do not match their "
                                         "checksum; `cm data verify` lists every damaged record, reconvert or restore the shard",
                                         m.path, local_index, m.shard.first_record + local_index));
}

ShardReader::~ShardReader() = default;
ShardReader::ShardReader(ShardReader&&) noexcept = default;
ShardReader& ShardReader::operator=(ShardReader&&) noexcept = default;

const std::string& ShardReader::path() const { return impl_->path; }
const DatasetInfo& ShardReader::dataset() const { return impl_->info; }
const ShardInfo& ShardReader::shard() const { return impl_->shard; }

void ShardReader::check_against(const Manifest& man) const {
  const auto& m = *impl_;
  const std::string hint = "; the shard does not belong to this manifest (re-run the conversion or `cm data manifest`)";
  std::string diff = man.info.difference(m.info);
  if (!diff.empty()) throw std::runtime_error(fmt::format("{}: manifest and shard differ in {}{}", m.path, diff, hint));
  if (m.shard.index < 0 || m.shard.index >= int64_t(man.shards.size()))
    throw std::runtime_error(fmt::format("{}: shard index {} is not in the manifest{}", m.path, m.shard.index, hint));
  const ShardInfo& e = man.shards[m.shard.index];
  auto check = [&](const char* what, auto have, auto want) {
    if (have != want)
      throw std::runtime_error(fmt::format("{}: {} is {} in the shard but {} in the manifest{}", m.path, what, have, want, hint));
  };
  check("file name", m.shard.file, e.file);
  check("first_record", m.shard.first_record, e.first_record);
  check("record_count", m.shard.records, e.records);
  check("images_crc32", crc_hex(m.shard.images_crc32), crc_hex(e.images_crc32));
  check("labels_crc32", crc_hex(m.shard.labels_crc32), crc_hex(e.labels_crc32));
  check("file size", m.shard.file_bytes, e.file_bytes);
}

std::vector<int64_t> ShardReader::read_labels() const {
  const auto& m = *impl_;
  if (!m.info.labelled()) return {};
  std::vector<int64_t> out(m.shard.records);
  h5(H5Dread(m.labels, H5T_NATIVE_INT64, H5S_ALL, H5S_ALL, H5P_DEFAULT, out.data()), m.path + ": reading /labels");
  return out;
}

void ShardReader::read_images(int64_t first, int64_t n, uint8_t* out) const {
  read_unchecked(first, n, out);
  for (int64_t i = 0; i < n && !impl_->checksums.empty(); ++i) check_record(first + i, out + i * impl_->info.image_bytes());
}

void ShardReader::read_unchecked(int64_t first, int64_t n, uint8_t* out) const {
  const auto& m = *impl_;
  if (first < 0 || n < 0 || first + n > m.shard.records)
    throw std::out_of_range(fmt::format("{}: records {}..{} outside 0..{}", m.path, first, first + n - 1, m.shard.records - 1));
  if (n == 0) return;
  const std::string where = fmt::format("{}: reading /images records {}..{}", m.path, first, first + n - 1);
  H5Handle fspace(h5(H5Dget_space(m.images), where), H5Sclose);
  hsize_t start[4] = {hsize_t(first), 0, 0, 0};
  hsize_t count[4] = {hsize_t(n), hsize_t(m.info.height), hsize_t(m.info.width), hsize_t(m.info.channels)};
  h5(H5Sselect_hyperslab(fspace, H5S_SELECT_SET, start, nullptr, count, nullptr), where);
  H5Handle mspace(h5(H5Screate_simple(4, count, nullptr), where), H5Sclose);
  h5(H5Dread(m.images, H5T_NATIVE_UINT8, mspace, fspace, H5P_DEFAULT, out), where);
}

std::optional<int64_t> ShardReader::direct_offset() const {
  const auto& m = *impl_;
  const std::string& w = m.path;
  const int64_t img = m.info.image_bytes(), n = m.shard.records;
  H5Handle dcpl(h5(H5Dget_create_plist(m.images), w), H5Pclose);
  if (h5(H5Pget_nfilters(dcpl), w) != 0) return std::nullopt;
  const H5D_layout_t layout = H5Pget_layout(dcpl);
  if (layout == H5D_CONTIGUOUS) {
    haddr_t a = H5Dget_offset(m.images);
    if (a == HADDR_UNDEF) return std::nullopt;
    return int64_t(a);
  }
  if (layout != H5D_CHUNKED) return std::nullopt;
  hsize_t chunk[4] = {0, 0, 0, 0};
  if (H5Pget_chunk(dcpl, 4, chunk) != 4 || chunk[0] != 1 || int64_t(chunk[1]) != m.info.height ||
      int64_t(chunk[2]) != m.info.width || int64_t(chunk[3]) != m.info.channels)
    return std::nullopt;
  if (int64_t(H5Dget_storage_size(m.images)) != n * img) return std::nullopt;
  // N chunks of `img` bytes filling exactly N * img bytes from the first to the last address can only tile
  // that range; sampled chunks in between confirm the order (H5Dget_chunk_info_by_coord is too slow in
  // HDF5 1.10 to ask for every chunk).
  auto address = [&](int64_t i) -> std::optional<int64_t> {
    hsize_t off[4] = {hsize_t(i), 0, 0, 0};
    unsigned mask = 0;
    haddr_t addr = 0;
    hsize_t size = 0;
    if (H5Dget_chunk_info_by_coord(m.images, off, &mask, &addr, &size) < 0 || addr == HADDR_UNDEF ||
        int64_t(size) != img || mask != 0) {
      H5Eclear2(H5E_DEFAULT);
      return std::nullopt;
    }
    return int64_t(addr);
  };
  auto a0 = address(0);
  if (!a0) return std::nullopt;
  const int64_t samples = std::min<int64_t>(n - 1, 16);
  for (int64_t k = 1; k <= samples; ++k) {
    const int64_t i = k == samples ? n - 1 : k * (n - 1) / samples;
    auto a = address(i);
    if (!a || *a != *a0 + i * img) return std::nullopt;
  }
  return a0;
}

std::pair<uint32_t, uint32_t> ShardReader::compute_checksums(std::vector<int64_t>* bad_records) const {
  const auto& m = *impl_;
  const int64_t img = m.info.image_bytes();
  const int64_t block = std::max<int64_t>(1, (8 << 20) / std::max<int64_t>(img, 1));
  std::vector<uint8_t> buf(size_t(block * img));
  uint32_t ic = 0;
  for (int64_t i = 0; i < m.shard.records; i += block) {
    const int64_t n = std::min(block, m.shard.records - i);
    read_unchecked(i, n, buf.data());
    ic = crc32_update(ic, buf.data(), size_t(n * img));
    for (int64_t k = 0; k < n && bad_records && !m.checksums.empty(); ++k)
      if (record_checksum(buf.data() + k * img, size_t(img)) != m.checksums[size_t(i + k)]) bad_records->push_back(i + k);
  }
  uint32_t lc = 0;
  if (m.info.labelled()) {
    auto labels = read_labels();
    lc = crc32_update(lc, labels.data(), labels.size() * sizeof(int64_t));
  }
  return {ic, lc};
}

// ------------------------------------------------------------------------------------------ manifest

void write_manifest(const std::string& dir, const Manifest& man) {
  const auto& d = man.info;
  auto q = [](const std::string& v) { return "\"" + json_escape(v) + "\""; };
  std::string t = "{\n";
  t += fmt::format("  \"format\": {},\n  \"format_version\": {},\n", q(kShardFormat), kShardFormatVersion);
  t += fmt::format("  \"name\": {},\n  \"source_format\": {},\n  \"source\": {},\n  \"preprocessing\": {},\n"
                   "  \"paper_preprocessing\": {},\n",
                   q(d.name), q(d.source_format), q(d.source), q(d.preprocessing), d.paper_preprocessing);
  t += fmt::format("  \"height\": {},\n  \"width\": {},\n  \"channels\": {},\n  \"num_classes\": {},\n"
                   "  \"total_records\": {},\n  \"shard_count\": {},\n  \"checksum\": \"crc32\",\n  \"shards\": [\n",
                   d.height, d.width, d.channels, d.num_classes, d.total_records, d.shard_count);
  for (size_t i = 0; i < man.shards.size(); ++i) {
    const auto& s = man.shards[i];
    t += fmt::format("    {{\"file\": {}, \"first_record\": {}, \"records\": {}, \"images_crc32\": \"{}\", "
                     "\"labels_crc32\": \"{}\", \"file_bytes\": {}}}{}\n",
                     q(s.file), s.first_record, s.records, crc_hex(s.images_crc32), crc_hex(s.labels_crc32), s.file_bytes,
                     i + 1 < man.shards.size() ? "," : "");
  }
  t += "  ]\n}\n";
  write_file_atomic((fs::path(dir) / kManifestName).string(), t);
}

namespace {

// Typed members of a manifest's JSON, each failure naming the file and the key.
struct ManifestFields {
  const std::string& path;
  std::string str(const Json& o, const char* key) const {
    const Json& v = o.at(key, path);
    if (v.kind != Json::Str) throw std::runtime_error(fmt::format("{}: '{}' must be a string", path, key));
    return v.str;
  }
  int64_t num(const Json& o, const char* key) const {
    const Json& v = o.at(key, path);
    if (v.kind != Json::Num || double(v.integer) != v.num)
      throw std::runtime_error(fmt::format("{}: '{}' must be an integer", path, key));
    return v.integer;
  }
  uint32_t crc(const Json& o, const char* key) const {
    const std::string h = str(o, key);
    char* end = nullptr;
    const unsigned long v = std::strtoul(h.c_str(), &end, 16);
    if (h.size() != 8 || *end) throw std::runtime_error(fmt::format("{}: '{}' must be 8 hex digits", path, key));
    return uint32_t(v);
  }
};

DatasetInfo read_manifest_info(const Json& j, const ManifestFields& f) {
  const std::string& path = f.path;
  if (f.str(j, "format") != kShardFormat || f.num(j, "format_version") < kShardFormatOldestReadable ||
      f.num(j, "format_version") > kShardFormatVersion)
    throw std::runtime_error(fmt::format("{}: format '{}' version {} is not '{}' version {} to {} (convert the dataset again)", path,
                                         f.str(j, "format"), f.num(j, "format_version"), kShardFormat, kShardFormatOldestReadable,
                                         kShardFormatVersion));
  DatasetInfo d;
  d.name = f.str(j, "name");
  d.source_format = f.str(j, "source_format");
  d.source = f.str(j, "source");
  d.preprocessing = f.str(j, "preprocessing");
  const Json& paper = j.at("paper_preprocessing", path);
  if (paper.kind != Json::Bool) throw std::runtime_error(fmt::format("{}: 'paper_preprocessing' must be true or false", path));
  d.paper_preprocessing = paper.b;
  d.height = f.num(j, "height");
  d.width = f.num(j, "width");
  d.channels = f.num(j, "channels");
  d.num_classes = f.num(j, "num_classes");
  d.total_records = f.num(j, "total_records");
  d.shard_count = f.num(j, "shard_count");
  // Bounds a damaged manifest cannot pass: image sizes that products of them (a record's bytes, a batch's)
  // stay far from 64-bit overflow, and non-negative counts.
  if (d.height < 1 || d.height > 65536 || d.width < 1 || d.width > 65536 || d.channels < 1 || d.channels > 64)
    throw std::runtime_error(fmt::format("{}: image size {}x{}x{} is out of range (1..65536 x 1..65536 x 1..64)", path,
                                         d.height, d.width, d.channels));
  if (d.num_classes < 0 || d.total_records < 0 || d.shard_count < 0)
    throw std::runtime_error(fmt::format("{}: negative num_classes, total_records or shard_count", path));
  return d;
}

std::vector<ShardInfo> read_manifest_shards(const Json& j, const ManifestFields& f, const DatasetInfo& d) {
  const std::string& path = f.path;
  const Json& arr = j.at("shards", path);
  if (arr.kind != Json::Arr || int64_t(arr.arr.size()) != d.shard_count)
    throw std::runtime_error(fmt::format("{}: expected {} shard entries, found {}", path, d.shard_count, arr.arr.size()));
  std::vector<ShardInfo> shards;
  int64_t next = 0;
  for (size_t i = 0; i < arr.arr.size(); ++i) {
    const Json& e = arr.arr[i];
    ShardInfo s;
    s.index = int64_t(i);
    s.file = f.str(e, "file");
    s.first_record = f.num(e, "first_record");
    s.records = f.num(e, "records");
    s.images_crc32 = f.crc(e, "images_crc32");
    s.labels_crc32 = f.crc(e, "labels_crc32");
    s.file_bytes = f.num(e, "file_bytes");
    if (s.first_record != next || s.records <= 0)
      throw std::runtime_error(fmt::format("{}: shards[{}] first_record {} / records {} do not follow the previous shard "
                                           "(next record {})", path, i, s.first_record, s.records, next));
    if (s.file_bytes < 0 || __builtin_add_overflow(next, s.records, &next))
      throw std::runtime_error(fmt::format("{}: shards[{}] has out-of-range records {} / file_bytes {}", path, i, s.records,
                                           s.file_bytes));
    shards.push_back(s);
  }
  if (next != d.total_records)
    throw std::runtime_error(fmt::format("{}: shards hold {} records, total_records says {}", path, next, d.total_records));
  return shards;
}

}  // namespace

Manifest read_manifest(const std::string& dir) {
  const std::string path = (fs::path(dir) / kManifestName).string();
  if (!fs::exists(path))
    throw std::runtime_error(fmt::format("'{}' has no {}: not a converted dataset, or its conversion did not finish "
                                         "(run `cm data convert`, or `cm data manifest {}` after parallel workers)",
                                         dir, kManifestName, dir));
  const Json j = parse_json(read_file(path), path);
  const ManifestFields f{path};
  Manifest m;
  m.info = read_manifest_info(j, f);
  m.shards = read_manifest_shards(j, f, m.info);
  return m;
}

Manifest collect_manifest(const std::string& dir, const std::string& name) {
  static const std::regex pat(R"((.+)-(\d{5})-of-(\d{5})\.h5)");
  std::map<std::string, std::vector<std::string>> by_name;
  if (!fs::is_directory(dir)) throw std::runtime_error(fmt::format("'{}' is not a directory", dir));
  for (const auto& e : fs::directory_iterator(dir)) {
    std::smatch mt;
    const std::string f = e.path().filename().string();
    if (std::regex_match(f, mt, pat)) by_name[mt[1]].push_back(e.path().string());
  }
  if (by_name.empty()) throw std::runtime_error(fmt::format("'{}' holds no shard files NAME-00000-of-NNNNN.h5", dir));
  std::string chosen = name;
  if (chosen.empty()) {
    if (by_name.size() > 1) {
      std::vector<std::string> names;
      for (auto& [n, v] : by_name) names.push_back(n);
      throw std::runtime_error(fmt::format("'{}' holds shards of several datasets ({}); pick one with --name", dir,
                                           fmt::join(names, ", ")));
    }
    chosen = by_name.begin()->first;
  }
  if (!by_name.count(chosen)) throw std::runtime_error(fmt::format("'{}' holds no shards named {}-*.h5", dir, chosen));
  Manifest m;
  std::vector<std::optional<ShardInfo>> found;
  for (const auto& path : by_name[chosen]) {
    ShardReader r(path);
    if (found.empty()) {
      m.info = r.dataset();
      found.resize(size_t(m.info.shard_count));
    }
    std::string diff = m.info.difference(r.dataset());
    if (!diff.empty())
      throw std::runtime_error(fmt::format("{}: differs from the other shards in {} (left over from another conversion?)",
                                           path, diff));
    const ShardInfo& s = r.shard();
    if (r.shard().file != shard_file_name(m.info.name, s.index, m.info.shard_count))
      throw std::runtime_error(fmt::format("{}: its attributes say shard {} of {}", path, s.index, m.info.shard_count));
    found[size_t(s.index)] = s;
  }
  std::vector<std::string> missing;
  for (size_t i = 0; i < found.size(); ++i) {
    if (!found[i]) {
      missing.push_back(shard_file_name(chosen, int64_t(i), int64_t(found.size())));
      continue;
    }
    auto [first, count] = shard_range(m.info.total_records, m.info.shard_count, int64_t(i));
    if (found[i]->first_record != first || found[i]->records != count)
      throw std::runtime_error(fmt::format("{}: holds records {}+{}, expected {}+{}", found[i]->file, found[i]->first_record,
                                           found[i]->records, first, count));
    m.shards.push_back(*found[i]);
  }
  if (!missing.empty())
    throw std::runtime_error(fmt::format("'{}': {} of {} shards are missing ({}{}); finish the workers that write them",
                                         dir, missing.size(), found.size(), missing.front(),
                                         missing.size() > 1 ? ", ..." : ""));
  return m;
}

std::vector<std::string> verify_dataset(const std::string& dir, bool progress) {
  std::vector<std::string> problems;
  Manifest m = read_manifest(dir);
  for (const auto& e : m.shards) {
    const std::string path = (fs::path(dir) / e.file).string();
    const size_t before = problems.size();
    try {
      ShardReader r(path);
      r.check_against(m);
      std::vector<int64_t> bad;
      auto [ic, lc] = r.compute_checksums(&bad);
      if (!bad.empty()) {
        std::vector<std::string> first;
        for (size_t k = 0; k < std::min<size_t>(bad.size(), 10); ++k) first.push_back(std::to_string(bad[k]));
        problems.push_back(fmt::format("{}: {} record(s) fail their checksum (local indices {}{})", path, bad.size(),
                                       fmt::join(first, ", "), bad.size() > first.size() ? ", ..." : ""));
      }
      if (r.record_checksums().empty() && progress)
        fmt::print(stderr, "note: {} is of format version 1, without per-record checksums (training cannot catch a damaged "
                   "record as it reads it; convert again to get them)\n", path);
      if (ic != e.images_crc32)
        problems.push_back(fmt::format("{}: image bytes have CRC32 {}, the manifest says {} (data corrupted)", path,
                                       crc_hex(ic), crc_hex(e.images_crc32)));
      if (lc != e.labels_crc32)
        problems.push_back(fmt::format("{}: label bytes have CRC32 {}, the manifest says {} (data corrupted)", path,
                                       crc_hex(lc), crc_hex(e.labels_crc32)));
      auto labels = r.read_labels();
      for (size_t i = 0; i < labels.size(); ++i)
        if (labels[i] < 0 || labels[i] >= m.info.num_classes) {
          problems.push_back(fmt::format("{}: record {} has label {} outside 0..{}", path, e.first_record + int64_t(i),
                                         labels[i], m.info.num_classes - 1));
          break;
        }
    } catch (const std::exception& ex) {
      problems.push_back(ex.what());
    }
    if (progress) fmt::print(stderr, "verify {}: {}\n", e.file, problems.size() == before ? "ok" : "FAILED");
  }
  return problems;
}

}  // namespace cm::data
