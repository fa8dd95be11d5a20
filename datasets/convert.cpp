// The conversion driver: shards, parallel transform, progress, atomic commits, manifest (see convert.h).
#include "datasets/convert.h"

#include <algorithm>
#include <filesystem>
#include <fmt/format.h>
#include <map>
#include <stdexcept>
#include <optional>
#include <regex>
#include <thread>

#include "datasets/convert_formats.h"
#include "core/util/progress.h"
#include "core/util/thread_pool.h"

namespace fs = std::filesystem;

namespace cm::data {

void check_split(const std::string& split) {
  if (split != "train" && split != "test")
    throw std::invalid_argument(fmt::format("--split '{}': expected train or test", split));
}

void rethrow_with_record(const std::exception& e, const std::string& file, int64_t index) {
  throw std::runtime_error(fmt::format("{}: record {}: {}", file, index, e.what()));
}

namespace {
const std::map<std::string, Converter (*)(const ConvertOptions&)>& registry() {
  static const std::map<std::string, Converter (*)(const ConvertOptions&)> r = {
      {"cifar10", make_cifar10_converter},
      {"imagenet", make_imagenet_converter},
      {"imagenet64-npz", make_imagenet_npz_converter},
      {"lsun", make_lsun_converter},
      {"folder", make_folder_converter},
      {"fashion-mnist", make_idx_converter},
      {"fashion_mnist", make_idx_converter},
      {"mnist", make_idx_converter},
  };
  return r;
}
}  // namespace

std::vector<std::string> converter_formats() {
  std::vector<std::string> v;
  for (auto& [k, f] : registry()) v.push_back(k);
  return v;
}

Converter make_converter(const ConvertOptions& o) {
  auto it = registry().find(o.format);
  if (it == registry().end())
    throw std::invalid_argument(fmt::format("unknown format '{}'; the formats are: {}", o.format, fmt::join(converter_formats(), ", ")));
  return it->second(o);
}

namespace {

// Shards this process writes.
std::vector<int64_t> my_shards(const ConvertOptions& o) {
  std::vector<int64_t> v;
  for (int64_t s = o.worker; s < o.shards; s += o.workers) v.push_back(s);
  return v;
}

// A committed shard from an earlier, interrupted run of the same conversion (for --resume).
std::optional<ShardInfo> reusable_shard(const std::string& path, const DatasetInfo& info) {
  if (!fs::exists(path)) return std::nullopt;
  try {
    ShardReader r(path);
    if (r.dataset().difference(info).empty() && r.dataset().source == info.source) return r.shard();
  } catch (const std::exception&) {
  }
  return std::nullopt;
}

// Shards of this dataset name cut into a different number of shards can never belong to the new
// dataset; removing them keeps the directory unambiguous (same-count shards are replaced in place, so
// parallel workers never delete each other's output).
void remove_other_shardings(const std::string& dir, const std::string& name, int64_t count) {
  static const std::regex pat(R"((.+)-\d{5}-of-(\d{5})\.h5)");
  for (const auto& e : fs::directory_iterator(dir)) {
    const std::string f = e.path().filename().string();
    std::smatch m;
    if (std::regex_match(f, m, pat) && m[1] == name && std::stoll(m[2]) != count) fs::remove(e.path());
  }
}

ShardInfo write_shard(Converter& c, const DatasetInfo& info, const std::string& dir, int64_t shard, ThreadPool& pool,
                      Progress& progress) {
  ShardWriter w(dir, info, shard);
  auto [first, count] = shard_range(info.total_records, info.shard_count, shard);
  const int64_t img = info.image_bytes();
  // Blocks of ~8 MB of pixels and at least a few records per thread: bounded memory, busy threads.
  const int64_t block = std::clamp<int64_t>((8 << 20) / img, int64_t(pool.size() + 1) * 4, 4096);
  std::vector<RawRecord> raw(size_t(std::min(block, count)));
  std::vector<uint8_t> pixels(raw.size() * size_t(img));
  std::vector<int64_t> labels(raw.size());
  c.source->seek(first);
  for (int64_t done = 0; done < count;) {
    const int64_t n = std::min<int64_t>(int64_t(raw.size()), count - done);
    for (int64_t i = 0; i < n; ++i) {
      c.source->read(raw[size_t(i)]);
      labels[size_t(i)] = raw[size_t(i)].label;
      if (info.labelled() && labels[size_t(i)] < 0)
        throw std::runtime_error(fmt::format("{}: has no label in a labelled dataset", raw[size_t(i)].origin));
    }
    pool.parallel_for(n, [&](int64_t i) { c.transform(raw[size_t(i)], pixels.data() + i * img); });
    w.append(pixels.data(), info.labelled() ? labels.data() : nullptr, n);
    done += n;
    progress.add(n);
  }
  return w.commit();
}

}  // namespace

ConvertResult run_conversion(const ConvertOptions& o) {
  if (o.shards < 1) throw std::invalid_argument("--shards must be at least 1");
  if (o.workers < 1 || o.worker < 0 || o.worker >= o.workers)
    throw std::invalid_argument(fmt::format("--worker {}/{}: expected i/n with 0 <= i < n", o.worker, o.workers));
  Converter c = make_converter(o);
  DatasetInfo info = c.info;
  info.total_records = c.source->count();
  if (o.limit > 0) info.total_records = std::min(info.total_records, o.limit);
  info.shard_count = o.shards;
  if (info.total_records < o.shards)
    throw std::invalid_argument(fmt::format("{} records cannot fill {} shards", info.total_records, o.shards));

  fs::create_directories(o.out_dir);
  const fs::path manifest = fs::path(o.out_dir) / kManifestName;
  if (fs::exists(manifest)) {
    if (!o.overwrite && !o.resume)
      throw std::runtime_error(fmt::format("'{}' already holds a converted dataset ({} exists); pass --overwrite to "
                                           "replace it", o.out_dir, manifest.string()));
    // The shards are about to change: a stale manifest must not describe them meanwhile.
    fs::remove(manifest);
  }
  if (o.overwrite) remove_other_shardings(o.out_dir, info.name, info.shard_count);

  const int64_t threads = o.threads > 0 ? o.threads : std::max<int64_t>(1, std::thread::hardware_concurrency());
  ThreadPool pool(int(threads - 1));
  ConvertResult result;
  const auto shards = my_shards(o);
  int64_t todo = 0;
  for (int64_t s : shards) todo += shard_range(info.total_records, info.shard_count, s).second;
  Progress progress(fmt::format("convert {} ({} shard{})", info.name, shards.size(), shards.size() == 1 ? "" : "s"), todo,
                    o.progress);
  for (int64_t s : shards) {
    const std::string path = (fs::path(o.out_dir) / shard_file_name(info.name, s, info.shard_count)).string();
    std::optional<ShardInfo> kept = o.resume ? reusable_shard(path, info) : std::nullopt;
    result.shards.push_back(kept ? *kept : write_shard(c, info, o.out_dir, s, pool, progress));
    if (kept) progress.add(kept->records);
    result.records += result.shards.back().records;
  }
  progress.finish();
  if (o.workers == 1) {
    write_manifest(o.out_dir, Manifest{info, result.shards});
    result.manifest_written = true;
  }
  return result;
}

Manifest finalize_manifest(const std::string& dir, const std::string& name) {
  Manifest m = collect_manifest(dir, name);
  write_manifest(dir, m);
  return m;
}

}  // namespace cm::data
