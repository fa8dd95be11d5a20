// Zip reading on libzip (see zip.h). Written here: the checks of untrusted sizes before allocation and the
// end-of-member check (libzip checks the CRC32 only when a read finds the end, so one more read is made).
#include "core/io/zip.h"

#include <sys/stat.h>
#include <zip.h>

#include <cerrno>
#include <cstring>
#include <fmt/format.h>
#include <stdexcept>

namespace cm {

struct ZipReader::Handle {
  zip_t* za = nullptr;
  ~Handle() {
    if (za) zip_discard(za);
  }
};

struct ZipMemberReader::File {
  zip_file_t* f = nullptr;
  ~File() {
    if (f) zip_fclose(f);
  }
};

namespace {

std::string libzip_message(int code) {
  zip_error_t e;
  zip_error_init_with_code(&e, code);
  std::string s = zip_error_strerror(&e);
  zip_error_fini(&e);
  return s;
}

std::shared_ptr<ZipReader::Handle> open_archive(const std::string& path, const std::string& prefix) {
  int code = 0;
  auto h = std::make_shared<ZipReader::Handle>();
  h->za = zip_open(path.c_str(), ZIP_RDONLY, &code);
  if (h->za) return h;
  if (code == ZIP_ER_NOZIP)
    throw std::runtime_error(prefix + "no zip end-of-central-directory record (not a zip archive, or truncated)");
  throw std::runtime_error(fmt::format("{}not a readable zip archive: {}", prefix, libzip_message(code)));
}

}  // namespace

ZipReader::ZipReader(const std::string& path, std::string prefix) : path_(path), prefix_(std::move(prefix)) {
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0) throw std::runtime_error(fmt::format("cannot open '{}': {}", path, std::strerror(errno)));
  file_size_ = uint64_t(st.st_size);
  // libzip takes an empty file for an empty archive; we do not.
  if (file_size_ < 22) fail("file too short for a zip archive (no end-of-central-directory record)");
  handle_ = open_archive(path, prefix_);
  const zip_int64_t n = zip_get_num_entries(handle_->za, 0);
  for (zip_int64_t i = 0; i < n; ++i) {
    zip_stat_t s;
    zip_stat_init(&s);
    if (zip_stat_index(handle_->za, zip_uint64_t(i), ZIP_FL_ENC_RAW, &s) != 0)
      fail(fmt::format("central directory entry {}: {}", i, zip_strerror(handle_->za)));
    const zip_uint64_t need = ZIP_STAT_NAME | ZIP_STAT_SIZE | ZIP_STAT_COMP_SIZE | ZIP_STAT_COMP_METHOD | ZIP_STAT_CRC;
    if ((s.valid & need) != need) fail(fmt::format("central directory entry {} is incomplete", i));
    ZipMember m;
    m.name = s.name;
    m.method = s.comp_method;
    m.compressed_size = s.comp_size, m.size = s.size;
    m.crc32 = s.crc;
    m.index = uint64_t(i);
    if ((s.valid & ZIP_STAT_ENCRYPTION_METHOD) && s.encryption_method != ZIP_EM_NONE) m.method = 0xffff;  // refused by check()
    members_.push_back(std::move(m));
  }
}

ZipReader::~ZipReader() = default;
ZipReader::ZipReader(ZipReader&&) noexcept = default;
ZipReader& ZipReader::operator=(ZipReader&&) noexcept = default;

void ZipReader::fail(const std::string& what) const { throw std::runtime_error(prefix_ + what); }

const ZipMember* ZipReader::find(const std::string& name) const {
  for (auto& m : members_)
    if (m.name == name) return &m;
  return nullptr;
}

void ZipReader::check(const ZipMember& m) const {
  if (m.method == 0xffff) fail(fmt::format("member '{}' is encrypted (not supported)", m.name));
  if (m.method != 0 && m.method != 8)  // before its sizes are trusted for anything
    fail(fmt::format("member '{}' uses compression method {} (only stored and deflate are supported)", m.name, m.method));
  // Sizes a member cannot have: more compressed bytes than the file, a stored member whose sizes differ,
  // a deflated one expanding beyond deflate's maximum ratio (about 1032:1).
  if (m.compressed_size > file_size_ || (m.method == 0 && m.size != m.compressed_size) ||
      (m.method == 8 && m.size / 1032 > m.compressed_size + 1))
    fail(fmt::format("member '{}' has impossible sizes ({} bytes from {} compressed bytes in a {}-byte file)", m.name, m.size,
                     m.compressed_size, file_size_));
}

ZipMemberReader ZipReader::open(const ZipMember& m, bool own_handle) const {
  check(m);
  if (!own_handle) return ZipMemberReader(handle_, m, prefix_);
  auto h = open_archive(path_, prefix_);
  zip_stat_t s;
  zip_stat_init(&s);
  if (zip_stat_index(h->za, m.index, ZIP_FL_ENC_RAW, &s) != 0 || !(s.valid & ZIP_STAT_NAME) || m.name != s.name ||
      s.size != m.size)
    fail(fmt::format("member '{}' changed while the archive was read", m.name));
  return ZipMemberReader(std::move(h), m, prefix_);
}

ZipMemberReader::ZipMemberReader(std::shared_ptr<ZipReader::Handle> handle, const ZipMember& m, std::string prefix)
    : handle_(std::move(handle)), m_(m), prefix_(std::move(prefix)), file_(std::make_unique<File>()) {
  file_->f = zip_fopen_index(handle_->za, m_.index, 0);
  if (!file_->f) fail(fmt::format("cannot read it: {}", zip_strerror(handle_->za)));
}

ZipMemberReader::~ZipMemberReader() { file_.reset(); }  // before the archive handle it reads from
ZipMemberReader::ZipMemberReader(ZipMemberReader&&) noexcept = default;

void ZipMemberReader::fail(const std::string& what) const {
  throw std::runtime_error(fmt::format("{}member '{}': {}", prefix_, m_.name, what));
}

size_t ZipMemberReader::read(void* buf, size_t n) {
  n = size_t(std::min<uint64_t>(n, m_.size - pos_));
  size_t done = 0;
  while (done < n) {
    const zip_int64_t got = zip_fread(file_->f, static_cast<char*>(buf) + done, n - done);
    if (got < 0) {
      const bool crc = zip_error_code_zip(zip_file_get_error(file_->f)) == ZIP_ER_CRC;
      fail(fmt::format("{} near uncompressed byte {} ({})", crc ? "CRC32 mismatch (corrupt archive member)" : "corrupt data",
                       pos_ + done, zip_file_strerror(file_->f)));
    }
    if (got == 0) fail(fmt::format("data ends at uncompressed byte {} of {} (truncated or corrupt)", pos_ + done, m_.size));
    done += size_t(got);
  }
  pos_ += done;
  if (pos_ == m_.size && !end_checked_) check_end();
  return done;
}

// One more read: libzip checks the CRC32 and the size when it finds the end of the data.
void ZipMemberReader::check_end() {
  end_checked_ = true;
  char extra;
  const zip_int64_t got = zip_fread(file_->f, &extra, 1);
  if (got > 0) fail(fmt::format("holds more than its {} bytes (corrupt archive member)", m_.size));
  if (got < 0) {
    if (zip_error_code_zip(zip_file_get_error(file_->f)) == ZIP_ER_CRC) fail("CRC32 mismatch (corrupt archive member)");
    fail(fmt::format("corrupt data at its end ({})", zip_file_strerror(file_->f)));
  }
}

}  // namespace cm
