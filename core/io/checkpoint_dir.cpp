// Checkpoint directories: commit protocol and verification (see checkpoint_dir.h).
#include "core/io/checkpoint_dir.h"

#include <fcntl.h>
#include <fmt/format.h>
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zlib.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <stdexcept>
#include <torch/torch.h>
#include "core/io/json.h"

namespace fs = std::filesystem;

namespace cm {

std::string checkpoint_dir_name(int64_t step) { return fmt::format("step_{:08d}", step); }

std::optional<int64_t> parse_checkpoint_dir_name(const std::string& name) {
  if (name.size() <= 5 || name.rfind("step_", 0) != 0 || name.size() > 5 + 18) return std::nullopt;
  for (size_t i = 5; i < name.size(); ++i)
    if (name[i] < '0' || name[i] > '9') return std::nullopt;
  return std::stoll(name.substr(5));
}

PendingFile PendingFile::of_text(std::string name, std::string text) {
  PendingFile f;
  f.name = std::move(name);
  f.text = std::move(text);
  f.is_text = true;
  return f;
}

PendingFile PendingFile::of_tensors(std::string name, NamedTensors tensors, std::map<std::string, std::string> metadata) {
  PendingFile f;
  f.name = std::move(name);
  f.tensors = std::move(tensors);
  f.metadata = std::move(metadata);
  return f;
}

bool CheckpointInfo::has(const std::string& name) const {
  return std::any_of(files.begin(), files.end(), [&](const CheckpointFileInfo& f) { return f.name == name; });
}

const std::vector<std::string>& commit_crash_phases() {
  static const std::vector<std::string> p = {"mid_file", "before_marker", "after_marker", "after_rename"};
  return p;
}

static uint32_t crc_update(uint32_t crc, const void* data, size_t n) {
  const auto* p = static_cast<const Bytef*>(data);
  while (n > 0) {  // zlib takes uInt lengths
    const uInt chunk = static_cast<uInt>(std::min<size_t>(n, 1u << 30));
    crc = static_cast<uint32_t>(crc32(crc, p, chunk));
    p += chunk;
    n -= chunk;
  }
  return crc;
}

static std::string disk_full_hint(int err) {
  return err == ENOSPC || err == EDQUOT ? " (the disk is full or over quota: free space, or lower checkpoint.keep_last, and run "
                                          "the same command again; the checkpoints already committed are intact)"
                                        : "";
}

void write_all_fd(int fd, const void* data, size_t n, const std::string& what) {
  const char* p = static_cast<const char*>(data);
  while (n > 0) {
    const ssize_t w = ::write(fd, p, std::min<size_t>(n, 1u << 30));
    if (w < 0) {
      if (errno == EINTR) continue;
      const int err = errno;
      throw std::runtime_error(fmt::format("writing '{}' failed: {}{}", what, std::strerror(err), disk_full_hint(err)));
    }
    p += w;
    n -= static_cast<size_t>(w);
  }
}

void fsync_directory_checked(const std::string& dir) {
  const int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY);
  if (fd < 0) throw std::runtime_error(fmt::format("cannot open directory '{}' to fsync it: {}", dir, std::strerror(errno)));
  const int rc = ::fsync(fd), err = errno;
  ::close(fd);
  if (rc != 0) throw std::runtime_error(fmt::format("fsync of directory '{}' failed: {}", dir, std::strerror(err)));
}

namespace {

[[noreturn]] void crash_now(const std::string& phase) {
  std::fprintf(stderr, "debug.ckpt_crash_at = %s: killing this process with SIGKILL during a checkpoint commit\n", phase.c_str());
  std::fflush(stderr);
  ::kill(::getpid(), SIGKILL);
  for (;;) ::pause();
}

// One commit in progress: the byte budget of the fault injection and the crash phase.
struct Commit {
  const CommitFaults& faults;
  int64_t written = 0;
  void phase(const char* name) const {
    if (faults.crash_at == name) crash_now(name);
  }
};

// Streams one file: counts bytes, keeps the CRC32, applies the injected faults.
struct FileSink {
  Commit& commit;
  int fd;
  std::string path;
  int64_t bytes = 0;
  int64_t crash_at_byte = -1;  // mid_file: die after this many bytes of this file
  uint32_t crc = static_cast<uint32_t>(crc32(0, nullptr, 0));

  void put(const void* data, size_t n) {
    const char* p = static_cast<const char*>(data);
    if (crash_at_byte >= 0 && bytes + static_cast<int64_t>(n) >= crash_at_byte) {
      const size_t part = static_cast<size_t>(crash_at_byte - bytes);
      write_all_fd(fd, p, part, path);
      ::fdatasync(fd);  // make the half-written file really reach the disk before dying
      crash_now("mid_file");
    }
    const int64_t budget = commit.faults.fail_after_bytes;
    if (budget >= 0 && commit.written + static_cast<int64_t>(n) > budget) {
      const size_t part = static_cast<size_t>(std::max<int64_t>(0, budget - commit.written));
      write_all_fd(fd, p, part, path);
      commit.written += static_cast<int64_t>(part);
      throw std::runtime_error(fmt::format("writing '{}' failed: {} [injected by debug.ckpt_fail_after_bytes]{}", path,
                                           std::strerror(ENOSPC), disk_full_hint(ENOSPC)));
    }
    write_all_fd(fd, p, n, path);
    crc = crc_update(crc, p, n);
    bytes += static_cast<int64_t>(n);
    commit.written += static_cast<int64_t>(n);
  }
};

int64_t file_size(const PendingFile& f, std::string* header) {
  if (f.is_text) return static_cast<int64_t>(f.text.size());
  *header = safetensors_header(f.tensors, f.metadata);
  int64_t n = static_cast<int64_t>(header->size());
  for (auto& [name, t] : f.tensors) n += t.numel() * static_cast<int64_t>(t.element_size());
  return n;
}

CheckpointFileInfo write_one(Commit& c, const std::string& dir, const PendingFile& f, bool first) {
  const std::string path = dir + "/" + f.name;
  std::string header;
  const int64_t total = file_size(f, &header);
  const int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
  if (fd < 0) {
    const int err = errno;
    throw std::runtime_error(fmt::format("cannot create '{}': {}{}", path, std::strerror(err), disk_full_hint(err)));
  }
  FileSink sink{c, fd, path};
  if (first && c.faults.crash_at == "mid_file") sink.crash_at_byte = total / 2;
  try {
    if (f.is_text) {
      sink.put(f.text.data(), f.text.size());
    } else {
      sink.put(header.data(), header.size());
      for (auto& [name, t] : f.tensors) {
        if (!t.device().is_cpu() || !t.is_contiguous())
          throw std::logic_error(fmt::format("checkpoint file {}: tensor '{}' is not a contiguous CPU tensor", f.name, name));
        sink.put(t.data_ptr(), static_cast<size_t>(t.numel()) * t.element_size());
      }
    }
    if (::fsync(fd) != 0) {
      const int err = errno;
      throw std::runtime_error(fmt::format("flushing '{}' to disk failed: {}{}", path, std::strerror(err), disk_full_hint(err)));
    }
  } catch (...) {
    ::close(fd);
    throw;
  }
  if (::close(fd) != 0) {
    const int err = errno;
    throw std::runtime_error(fmt::format("closing '{}' failed: {}{}", path, std::strerror(err), disk_full_hint(err)));
  }
  return CheckpointFileInfo{f.name, sink.bytes, sink.crc};
}

std::string marker_json(int64_t step, const std::vector<CheckpointFileInfo>& files) {
  std::string s = fmt::format("{{\n  \"format\": \"{}\",\n  \"version\": {},\n  \"step\": {},\n  \"files\": [", kCheckpointFormat,
                              kCheckpointVersion, step);
  for (size_t i = 0; i < files.size(); ++i)
    s += fmt::format("{}\n    {{\"name\": \"{}\", \"bytes\": {}, \"crc32\": {}}}", i ? "," : "", json_escape(files[i].name),
                     files[i].bytes, files[i].crc32);
  return s + "\n  ]\n}\n";
}

std::atomic<int64_t> g_commit_counter{0};

}  // namespace

CommitResult commit_checkpoint(const std::string& parent, int64_t step, const std::vector<PendingFile>& files,
                               const CommitFaults& faults) {
  const std::string name = checkpoint_dir_name(step);
  const std::string final_dir = parent + "/" + name;
  std::error_code ec;
  if (fs::exists(final_dir, ec))
    throw std::runtime_error(fmt::format("checkpoint directory '{}' already exists; it is never overwritten (move it away "
                                         "if it is not needed)", final_dir));
  const std::string tmp = fmt::format("{}/.tmp-{}-{}-{}", parent, name, ::getpid(), g_commit_counter++);
  if (::mkdir(tmp.c_str(), 0755) != 0) {
    const int err = errno;
    throw std::runtime_error(fmt::format("cannot create '{}': {}{}", tmp, std::strerror(err), disk_full_hint(err)));
  }
  Commit c{faults};
  CommitResult res;
  try {
    std::vector<CheckpointFileInfo> infos;
    for (size_t i = 0; i < files.size(); ++i) {
      if (files[i].name == kCommitMarker || files[i].name.find('/') != std::string::npos)
        throw std::logic_error(fmt::format("checkpoint file name '{}' is not allowed", files[i].name));
      infos.push_back(write_one(c, tmp, files[i], i == 0));
    }
    c.phase("before_marker");
    // The marker goes last: its presence means every file before it is complete and on disk.
    infos.push_back(write_one(c, tmp, PendingFile::of_text(kCommitMarker, marker_json(step, infos)), false));
    fsync_directory_checked(tmp);
    c.phase("after_marker");
    if (::rename(tmp.c_str(), final_dir.c_str()) != 0) {
      const int err = errno;
      throw std::runtime_error(fmt::format("renaming '{}' to '{}' failed: {}", tmp, final_dir, std::strerror(err)));
    }
  } catch (...) {
    fs::remove_all(tmp, ec);  // best effort: a leftover .tmp-* is ignored by readers and removed at the next start
    throw;
  }
  c.phase("after_rename");
  fsync_directory_checked(parent);  // makes the rename durable
  res.path = final_dir;
  res.bytes = c.written;
  return res;
}

namespace {

// Size and CRC32 of a file, streamed.
std::pair<int64_t, uint32_t> size_and_crc(const std::string& path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) throw std::runtime_error(fmt::format("cannot open '{}': {}", path, std::strerror(errno)));
  std::vector<char> buf(4 << 20);
  uint32_t crc = static_cast<uint32_t>(crc32(0, nullptr, 0));
  int64_t n = 0;
  for (;;) {
    const ssize_t r = ::read(fd, buf.data(), buf.size());
    if (r < 0) {
      if (errno == EINTR) continue;
      const int err = errno;
      ::close(fd);
      throw std::runtime_error(fmt::format("reading '{}' failed: {}", path, std::strerror(err)));
    }
    if (r == 0) break;
    crc = crc_update(crc, buf.data(), static_cast<size_t>(r));
    n += r;
  }
  ::close(fd);
  return {n, crc};
}

}  // namespace

CheckpointInfo verify_checkpoint(const std::string& dir) {
  CheckpointInfo info;
  info.path = dir;
  const std::string marker = dir + "/" + kCommitMarker;
  std::error_code ec;
  if (!fs::is_directory(dir, ec)) throw std::runtime_error(fmt::format("checkpoint '{}' is not a directory", dir));
  // Even with all its files and a marker, a temporary was never renamed into place: it is not committed.
  if (fs::path(dir).filename().string().rfind(".tmp-", 0) == 0)
    throw std::runtime_error(fmt::format("'{}' is the temporary directory of a checkpoint write that did not complete; it is never "
                                         "loaded", dir));
  if (!fs::exists(marker, ec))
    throw std::runtime_error(fmt::format("checkpoint '{}' has no {} marker: its write did not complete", dir, kCommitMarker));
  Json m;
  try {
    m = parse_json(read_file(marker), marker);
  } catch (const std::exception& e) {
    throw std::runtime_error(fmt::format("checkpoint '{}': unreadable {} marker: {}", dir, kCommitMarker, e.what()));
  }
  if (m.kind != Json::Obj || !m.get("format") || m.get("format")->str != kCheckpointFormat)
    throw std::runtime_error(fmt::format("checkpoint '{}': {} is not a {} marker", dir, kCommitMarker, kCheckpointFormat));
  const int64_t version = m.at("version", marker).integer;
  if (version != kCheckpointVersion)
    throw std::runtime_error(fmt::format("checkpoint '{}' has format version {}; this build reads version {}", dir, version,
                                         kCheckpointVersion));
  info.step = m.at("step", marker).integer;
  if (auto s = parse_checkpoint_dir_name(fs::path(dir).filename().string()); s && *s != info.step)
    throw std::runtime_error(fmt::format("checkpoint '{}': the marker says step {}, the directory name step {}", dir, info.step, *s));
  for (auto& f : m.at("files", marker).arr) {
    CheckpointFileInfo fi;
    fi.name = f.at("name", marker).str;
    fi.bytes = f.at("bytes", marker).integer;
    fi.crc32 = static_cast<uint32_t>(f.at("crc32", marker).integer);
    if (fi.name.empty() || fi.name.find('/') != std::string::npos || fi.name == "." || fi.name == ".." ||
        fi.name.find('\0') != std::string::npos)
      throw std::runtime_error(fmt::format("checkpoint '{}': bad file name '{}' in the marker", dir, fi.name));
    auto [n, crc] = size_and_crc(dir + "/" + fi.name);
    if (n != fi.bytes)
      throw std::runtime_error(fmt::format("checkpoint '{}': {} has {} bytes, the marker recorded {}: the file is truncated or "
                                           "was changed", dir, fi.name, n, fi.bytes));
    if (crc != fi.crc32)
      throw std::runtime_error(fmt::format("checkpoint '{}': {} has CRC32 {:08x}, the marker recorded {:08x}: the file is corrupt",
                                           dir, fi.name, crc, fi.crc32));
    info.files.push_back(fi);
  }
  return info;
}

std::string read_checkpoint_file(const CheckpointInfo& ckpt, const std::string& name) {
  auto it = std::find_if(ckpt.files.begin(), ckpt.files.end(), [&](const CheckpointFileInfo& f) { return f.name == name; });
  if (it == ckpt.files.end()) throw std::runtime_error(fmt::format("checkpoint '{}' has no file '{}'", ckpt.path, name));
  const std::string path = ckpt.path + "/" + name;
  std::string bytes = read_file(path);
  if (static_cast<int64_t>(bytes.size()) != it->bytes || crc_update(static_cast<uint32_t>(crc32(0, nullptr, 0)), bytes.data(), bytes.size()) != it->crc32)
    throw std::runtime_error(fmt::format("checkpoint '{}': {} changed after it was verified (size or CRC32 differs)", ckpt.path, name));
  return bytes;
}

std::vector<std::pair<int64_t, std::string>> list_checkpoint_dirs(const std::string& parent) {
  std::vector<std::pair<int64_t, std::string>> out;
  std::error_code ec;
  if (!fs::is_directory(parent, ec)) return out;
  for (auto it = fs::directory_iterator(parent, ec); !ec && it != fs::directory_iterator(); it.increment(ec)) {
    if (!it->is_directory(ec)) continue;
    if (auto s = parse_checkpoint_dir_name(it->path().filename().string())) out.emplace_back(*s, it->path().string());
  }
  std::sort(out.begin(), out.end());
  return out;
}

void remove_checkpoint(const std::string& dir) {
  const std::string marker = dir + "/" + kCommitMarker;
  if (::unlink(marker.c_str()) != 0 && errno != ENOENT)
    throw std::runtime_error(fmt::format("cannot delete '{}': {}", marker, std::strerror(errno)));
  fsync_directory_checked(dir);
  std::error_code ec;
  fs::remove_all(dir, ec);
  if (ec) throw std::runtime_error(fmt::format("cannot delete '{}': {}", dir, ec.message()));
}

std::vector<std::string> remove_stale_temporaries(const std::string& parent) {
  std::vector<std::string> removed;
  std::error_code ec;
  if (!fs::is_directory(parent, ec)) return removed;
  std::vector<fs::path> stale;
  for (auto it = fs::directory_iterator(parent, ec); !ec && it != fs::directory_iterator(); it.increment(ec))
    if (it->path().filename().string().rfind(".tmp-", 0) == 0) stale.push_back(it->path());
  for (auto& p : stale) {
    fs::remove_all(p, ec);
    if (!ec) removed.push_back(p.filename().string());
  }
  return removed;
}

}  // namespace cm
