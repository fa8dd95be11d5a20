// Writing numpy .npz archives (the layout the reference evaluator and numpy.load read): a zip of stored
// (uncompressed) entries NAME.npy, each a .npy version 1.0 file (magic, header dict padded to 64 bytes,
// raw little-endian C-order data), with zip64 records where an entry or offset passes 4 GiB (256 px
// sample sets). Reading is in datasets/archive.h (ZipArchive, read_npy_header).
#pragma once
#include <string>
#include <utility>
#include <vector>
#include <torch/types.h>

namespace cm::data {

// The .npy dtype string of a tensor's dtype ("|u1", "<i8", "<f4", "<f8", ...); throws for others.
std::string npy_descr(torch::ScalarType t);
// The .npy v1.0 header (magic, version, length, dict, padding) for an array of this dtype and shape.
std::string npy_header(torch::ScalarType t, const std::vector<int64_t>& shape);

// Writes `arrays` (name without ".npy", CPU or GPU tensors of any layout) to `path` atomically: into
// PATH.tmp-<pid>, fsync, rename, fsync of the directory, so an interrupted write never leaves a
// truncated .npz under the final name. Throws naming the file (and the disk being full) on failure.
// `force_zip64` writes the zip64 records even for small files (for tests of the > 4 GiB layout).
void write_npz(const std::string& path, const std::vector<std::pair<std::string, torch::Tensor>>& arrays,
               bool force_zip64 = false);

}  // namespace cm::data
