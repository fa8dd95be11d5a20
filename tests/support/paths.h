// Where tests find the shared fixtures, the source tree, the `cm` binary and mpiexec.
#pragma once
#include <cstdlib>
#include <string>

namespace cm::test {
inline std::string shared_dir() { return CM_SHARED_DIR; }
inline std::string source_dir() { return CM_SOURCE_DIR; }
inline std::string cm_binary() { return CM_BINARY; }
inline std::string mpiexec() { return CM_MPIEXEC; }
// A fresh temporary directory under $TMPDIR (or /tmp), removed by the caller if wanted.
std::string make_temp_dir(const std::string& prefix);
// Runs a shell command, returns its exit status and captures stdout+stderr into *output.
int run_command(const std::string& cmd, std::string* output);
}  // namespace cm::test
