// LSUN from its LMDB export (key = image id, value = WebP bytes; older exports hold JPEG): records in
// key order, decoded by their magic bytes, then datasets/lsun_bedroom.py's preprocessing: one BOX resize
// so the short side is the resolution (256), centre crop.
#include <lmdb.h>

#include <filesystem>
#include <fmt/format.h>
#include <stdexcept>

#include "datasets/convert_formats.h"
#include "datasets/image_codec.h"
#include "datasets/resample.h"

namespace fs = std::filesystem;

namespace cm::data {

namespace {

void mdb_check(int rc, const std::string& where) {
  if (rc != MDB_SUCCESS) throw std::runtime_error(fmt::format("LMDB {}: {}", where, mdb_strerror(rc)));
}

std::string printable_key(const MDB_val& k) {
  std::string s(static_cast<const char*>(k.mv_data), std::min<size_t>(k.mv_size, 64));
  for (char& c : s)
    if (c < 32 || c > 126) c = '?';
  return s;
}

class LmdbSource : public RecordSource {
 public:
  explicit LmdbSource(const std::string& path) : path_(path) {
    mdb_check(mdb_env_create(&env_), path_);
    mdb_env_set_maxreaders(env_, 16);
    // Read-only, no lock file (the export may sit on a read-only file system), a directory or a file.
    unsigned flags = MDB_RDONLY | MDB_NOLOCK | MDB_NOTLS | MDB_NORDAHEAD;
    if (!fs::is_directory(path_)) flags |= MDB_NOSUBDIR;
    int rc = mdb_env_open(env_, path_.c_str(), flags, 0444);
    if (rc != MDB_SUCCESS) {
      mdb_env_close(env_);
      env_ = nullptr;
      mdb_check(rc, "opening " + path_);
    }
    mdb_check(mdb_txn_begin(env_, nullptr, MDB_RDONLY, &txn_), path_ + ": begin read transaction");
    mdb_check(mdb_dbi_open(txn_, nullptr, 0, &dbi_), path_ + ": open database");
    MDB_stat st;
    mdb_check(mdb_stat(txn_, dbi_, &st), path_ + ": stat");
    count_ = int64_t(st.ms_entries);
    mdb_check(mdb_cursor_open(txn_, dbi_, &cur_), path_ + ": cursor");
  }
  ~LmdbSource() override {
    if (cur_) mdb_cursor_close(cur_);
    if (txn_) mdb_txn_abort(txn_);
    if (env_) mdb_env_close(env_);
  }
  int64_t count() const override { return count_; }
  // LMDB has no positional seek: walk the keys (values are not touched, so this is cheap).
  void seek(int64_t index) override {
    MDB_val k, v;
    mdb_check(mdb_cursor_get(cur_, &k, &v, MDB_FIRST), path_ + ": first record");
    for (int64_t i = 0; i < index; ++i) mdb_check(mdb_cursor_get(cur_, &k, &v, MDB_NEXT), fmt::format("{}: record {}", path_, i + 1));
    next_ = index;
    positioned_ = true;
    first_read_done_ = false;
  }
  void read(RawRecord& r) override {
    if (!positioned_) seek(0);
    MDB_val k, v;
    int rc = mdb_cursor_get(cur_, &k, &v, first_read_done_ ? MDB_NEXT : MDB_GET_CURRENT);
    mdb_check(rc, fmt::format("{}: record {}", path_, next_));
    first_read_done_ = true;
    r.bytes.assign(static_cast<const char*>(v.mv_data), v.mv_size);
    r.origin = fmt::format("{}: record {} (key '{}')", path_, next_, printable_key(k));
    r.label = -1;
    ++next_;
  }

 private:
  std::string path_;
  MDB_env* env_ = nullptr;
  MDB_txn* txn_ = nullptr;
  MDB_dbi dbi_ = 0;
  MDB_cursor* cur_ = nullptr;
  int64_t count_ = 0, next_ = 0;
  bool positioned_ = false, first_read_done_ = false;
};

}  // namespace

Converter make_lsun_converter(const ConvertOptions& o) {
  if (!fs::exists(o.src)) throw std::runtime_error(fmt::format("LMDB '{}' does not exist", o.src));
  const int64_t res = o.resolution ? o.resolution : 256;
  if (o.channels && o.channels != 3) throw std::invalid_argument("lsun: --channels must be 3");
  Converter c;
  c.source = std::make_unique<LmdbSource>(o.src);
  c.info.source_format = "lsun";
  c.info.source = fs::absolute(o.src).string();
  c.info.preprocessing = fmt::format(
      "datasets/lsun_bedroom.py: BOX resize to short side {} (sides int(round(scale * side))), centre crop {}x{}", res, res, res);
  c.info.height = c.info.width = res;
  c.info.channels = 3;
  c.info.num_classes = 0;
  c.info.name = o.name.empty() ? fmt::format("lsun{}", res) : o.name;
  c.transform = [res](const RawRecord& r, uint8_t* out) {
    Image img = decode_image(reinterpret_cast<const uint8_t*>(r.bytes.data()), r.bytes.size(), 3, r.origin);
    Image cropped = lsun_resize_crop(img, res);
    std::copy(cropped.pixels.begin(), cropped.pixels.end(), out);
  };
  return c;
}

}  // namespace cm::data
