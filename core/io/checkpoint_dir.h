// Checkpoint directories on disk: how one is committed, and how a committed one is recognised.
//
// A checkpoint is a directory PARENT/step_00000123/ holding its files and a marker file COMMIT. The
// commit (commit_checkpoint) is, in this order, and the order is the point:
//   1. every file is written into a temporary directory PARENT/.tmp-step_00000123-<pid>-<n>/ and fsync'ed;
//   2. COMMIT is written last: JSON with the format, version, step and every file's size and CRC32
//      (zlib's, the same as Python's zlib.crc32), then fsync'ed, then the temporary directory is fsync'ed;
//   3. the temporary directory is renamed to step_00000123 and PARENT is fsync'ed.
// A process killed anywhere before 3 leaves only a .tmp-* directory, which no reader lists; killed after
// 3 it leaves a complete checkpoint. A reader (verify_checkpoint) accepts a directory only when COMMIT
// parses and every file it lists has exactly the recorded size and CRC32, so a truncated or bit-flipped
// file, a missing marker or a marker without its files is never loaded.
#pragma once
#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <utility>
#include <vector>
#include "core/io/safetensors.h"

namespace cm {

constexpr const char* kCommitMarker = "COMMIT";
constexpr const char* kCheckpointFormat = "cm-checkpoint";
constexpr int64_t kCheckpointVersion = 1;

std::string checkpoint_dir_name(int64_t step);                             // "step_00000123"
std::optional<int64_t> parse_checkpoint_dir_name(const std::string& name);  // exactly step_<digits>

// One file of a checkpoint to write: a safetensors file of CPU tensors (contiguous; streamed to disk
// without building the file in memory), or a text file.
struct PendingFile {
  std::string name;
  NamedTensors tensors;
  std::map<std::string, std::string> metadata;
  std::string text;
  bool is_text = false;
  static PendingFile of_text(std::string name, std::string text);
  static PendingFile of_tensors(std::string name, NamedTensors tensors, std::map<std::string, std::string> metadata = {});
};

// Fault injection for the tests of the commit protocol (debug.ckpt_* keys).
struct CommitFaults {
  // Phase at which the process kills itself with SIGKILL, as `kill -9` would: "mid_file" (half of the
  // first file written), "before_marker" (all files, no COMMIT), "after_marker" (COMMIT written, not yet
  // renamed), "after_rename" (renamed, parent not yet fsync'ed). Empty = never.
  std::string crash_at;
  // Behave as if the disk were full after this many bytes of this commit (write fails with ENOSPC); < 0 = never.
  int64_t fail_after_bytes = -1;
};
const std::vector<std::string>& commit_crash_phases();

struct CommitResult {
  std::string path;   // the committed directory
  int64_t bytes = 0;  // file bytes written (marker included)
};

// Commits `files` as PARENT/step_<step> (see the top of this file). PARENT must exist; a directory of that
// name must not (it is an error, never overwritten). On any failure the temporary directory is removed,
// nothing else is touched, and the error names the file and says what to do (disk full included).
CommitResult commit_checkpoint(const std::string& parent, int64_t step, const std::vector<PendingFile>& files,
                               const CommitFaults& faults = {});

struct CheckpointFileInfo {
  std::string name;
  int64_t bytes = 0;
  uint32_t crc32 = 0;
};
struct CheckpointInfo {
  std::string path;
  int64_t step = 0;
  std::vector<CheckpointFileInfo> files;
  bool has(const std::string& name) const;
};

// Reads COMMIT and checks every listed file's size and CRC32 (reads them all). Throws std::runtime_error
// naming the directory and what is wrong (no marker: an interrupted write; size or checksum mismatch:
// truncated or corrupt).
CheckpointInfo verify_checkpoint(const std::string& dir);
// A file of a verified checkpoint, read whole; its size and CRC32 are checked again.
std::string read_checkpoint_file(const CheckpointInfo& ckpt, const std::string& name);

// The step_<digits> directories directly under PARENT, by ascending step (not verified); empty when
// PARENT does not exist.
std::vector<std::pair<int64_t, std::string>> list_checkpoint_dirs(const std::string& parent);
// Deletes a checkpoint: COMMIT first (fsync'ed), so a deletion cut short never leaves a directory that
// looks committed, then the rest.
void remove_checkpoint(const std::string& dir);
// Removes PARENT/.tmp-* directories left by interrupted commits; returns their names.
std::vector<std::string> remove_stale_temporaries(const std::string& parent);

// write(2) until done, retrying on EINTR; throws naming `what` (ENOSPC says the disk is full).
void write_all_fd(int fd, const void* data, size_t n, const std::string& what);
// fsync of a directory, checked (throws naming it).
void fsync_directory_checked(const std::string& dir);

}  // namespace cm
