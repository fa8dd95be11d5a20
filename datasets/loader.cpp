// The sharded loader (see loader.h for the definition of the stream and the thread layout).
#include "datasets/loader.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <cstring>
#include <filesystem>
#include <fmt/format.h>
#include <mutex>
#include <numeric>
#include <thread>

#include "core/compat.h"
#include "core/config.h"
#include "core/rng.h"
#include "core/util/thread_pool.h"

namespace fs = std::filesystem;

namespace cm::data {

// ------------------------------------------------------------------------------------ the stream's RNG

namespace {

// SplitMix64 (core/rng.h) drives the permutation and the flips, so they are the same on every platform.
uint64_t mix(uint64_t a, uint64_t b) { return splitmix64(a ^ (b * 0xd1342543de82ef95ULL + 0x632be59bd9b4e019ULL)); }

// Unbiased integer in [0, n) (Lemire's multiply-and-reject).
uint64_t below(uint64_t& state, uint64_t n) {
  unsigned __int128 m = static_cast<unsigned __int128>(splitmix64_next(state)) * n;
  uint64_t low = uint64_t(m);
  if (low < n) {
    const uint64_t threshold = (0 - n) % n;
    while (low < threshold) {
      m = static_cast<unsigned __int128>(splitmix64_next(state)) * n;
      low = uint64_t(m);
    }
  }
  return uint64_t(m >> 64);
}

constexpr uint64_t kPermStream = 0x5045524d;  // "PERM"
constexpr uint64_t kFlipStream = 0x464c4950;  // "FLIP"

struct FloatTable {
  float v[256];
  FloatTable() {
    for (int i = 0; i < 256; ++i) v[i] = float(i) / 127.5f - 1.0f;
  }
};
const FloatTable kToFloat;

}  // namespace

std::vector<int64_t> epoch_permutation(int64_t n, uint64_t seed, int64_t epoch) {
  std::vector<int64_t> p(size_t(std::max<int64_t>(n, 0)));
  std::iota(p.begin(), p.end(), int64_t(0));
  uint64_t state = mix(mix(seed, kPermStream), uint64_t(epoch));
  for (int64_t i = n - 1; i > 0; --i) std::swap(p[size_t(i)], p[size_t(below(state, uint64_t(i) + 1))]);
  return p;
}

bool flip_of(uint64_t seed, int64_t epoch, int64_t index) {
  return (mix(mix(mix(seed, kFlipStream), uint64_t(epoch)), uint64_t(index)) >> 63) != 0;
}

float pixel_to_float(uint8_t v) { return kToFloat.v[v]; }

// ----------------------------------------------------------------------------------------------- impl

namespace {

// One batch in flight. Free -> filling (I/O thread) -> converting (pool) -> ready -> consumed (Free).
struct Slot {
  enum State { kFree, kFilling, kConverting, kReady } state = kFree;
  int64_t seq = -1;
  std::vector<uint8_t> raw;          // HDF5 I/O: the batch's pixels [b, H, W, C]
  std::vector<const uint8_t*> src;   // where image i's pixels are (in `raw`, or in a shard's mapping)
  std::vector<int64_t> index;        // image i's global record index (direct I/O: for its checksum)
  std::vector<uint8_t> flips;  // [b]
  torch::Tensor x, labels;
  int pending = 0;
  std::exception_ptr error;
};

// Converts one HWC uint8 image to CHW float in [-1, 1], mirrored left-right when `flip`. The table
// lookup gives exactly the reference's float32 x / 127.5 - 1. RGB has its own loop (all three planes
// written in one pass over the pixels, about 1.5x faster than plane by plane).
void to_chw_float(const uint8_t* src, float* dst, int64_t h, int64_t w, int64_t c, bool flip) {
  const float* table = kToFloat.v;
  const int64_t plane = h * w;
  if (c == 3) {
    float* d0 = dst;
    float* d1 = dst + plane;
    float* d2 = dst + 2 * plane;
    for (int64_t y = 0; y < h; ++y) {
      const uint8_t* s = src + y * w * 3;
      const int64_t row = y * w;
      if (flip) {
        for (int64_t x = 0; x < w; ++x) {
          const int64_t t = row + w - 1 - x;
          d0[t] = table[s[3 * x]];
          d1[t] = table[s[3 * x + 1]];
          d2[t] = table[s[3 * x + 2]];
        }
      } else {
        for (int64_t x = 0; x < w; ++x) {
          d0[row + x] = table[s[3 * x]];
          d1[row + x] = table[s[3 * x + 1]];
          d2[row + x] = table[s[3 * x + 2]];
        }
      }
    }
    return;
  }
  for (int64_t ch = 0; ch < c; ++ch) {
    for (int64_t y = 0; y < h; ++y) {
      const uint8_t* s = src + y * w * c + ch;
      float* d = dst + ch * plane + y * w;
      if (flip) {
        for (int64_t x = 0; x < w; ++x) d[w - 1 - x] = table[s[x * c]];
      } else {
        for (int64_t x = 0; x < w; ++x) d[x] = table[s[x * c]];
      }
    }
  }
}

void raise_fd_limit(size_t wanted) {
  rlimit rl{};
  if (getrlimit(RLIMIT_NOFILE, &rl) != 0) return;
  if (rl.rlim_cur >= wanted + 64) return;
  rl.rlim_cur = std::min<rlim_t>(rl.rlim_max, wanted + 64);
  setrlimit(RLIMIT_NOFILE, &rl);
}

}  // namespace

struct ShardedLoader::Impl {
  LoaderOptions o;
  Manifest man;
  std::vector<int64_t> shard_first;  // first record of each shard, then the total
  // Direct I/O: each shard mapped read-only; image i of shard s at maps[s] + offsets[s] + i * img.
  struct Mapping {
    const uint8_t* base = nullptr;
    size_t size = 0;
  };
  std::vector<Mapping> maps;
  std::vector<int64_t> offsets;
  std::vector<ShardReader> readers;  // HDF5 I/O
  std::vector<int64_t> labels;       // all labels (when returned)
  // Direct I/O: every record's checksum by global index (8 bytes a record), checked by the conversion
  // threads as they read the pixels; empty when a shard has none (format version 1). Through HDF5 the
  // ShardReader checks them itself.
  std::vector<uint64_t> checksums;
  bool direct = false, with_labels = false;
  int64_t n = 0, batch = 0, local = 0, per_epoch = 0, img = 0;
  std::unique_ptr<ThreadPool> pool;

  std::mutex mu;
  std::condition_variable cv;
  std::vector<Slot> slots;
  std::thread io;
  bool stop = false;
  int64_t next_seq = 0;   // the batch next() returns next (= global batches taken)
  int64_t io_seq = 0;     // the batch the I/O thread fills next
  int64_t tasks = 0;      // conversion tasks queued or running
  int64_t perm_epoch = -1;
  std::vector<int64_t> perm;
  bool can_populate = true;         // madvise(MADV_POPULATE_READ) works (Linux >= 5.14)
  int64_t hinted = -1;               // the batch whose records were last hinted to the kernel
  bool cold = true;                  // the last batch's records were not all in memory
  // Records already mapped into this process. Kept only for data sets that fit in a quarter of the
  // memory, which then stay cached: there a populate call per record (a system call, ~3 us in a VM)
  // would cost a quarter of the loader's time for nothing after the first epoch.
  std::vector<uint8_t> populated;
  std::vector<torch::Tensor> spare;  // CPU batch tensors for reuse once the trainer has let go of them

  ~Impl() {
    stop_pipeline();
    pool.reset();
    for (auto& m : maps) ::munmap(const_cast<uint8_t*>(m.base), m.size);
  }
  void open_dataset();
  void start(int64_t seq);
  void stop_pipeline();
  void io_loop();
  void fill(Slot& s, int64_t seq);
  void map_shard(size_t i, int64_t offset);
  std::pair<size_t, int64_t> locate(int64_t index) const;  // {shard, index in the shard}
  const uint8_t* mapped(int64_t index) const;
  void populate(int64_t index);
  bool hint_batch(int64_t seq);
  void convert_part(Slot& s, int64_t begin, int64_t end);
  void check_record(int64_t index, const uint8_t* bytes) const;
  torch::Tensor batch_tensor();
};

void ShardedLoader::Impl::open_dataset() {
  man = read_manifest(o.dir);
  const auto& d = man.info;
  with_labels = o.labels && d.labelled();
  n = d.total_records;
  img = d.image_bytes();
  raise_fd_limit(man.shards.size());
  shard_first.clear();
  // Every shard is opened and checked against the manifest now, so a missing, unreadable, truncated or
  // stale shard stops the run at start-up with its name, not hours later.
  bool all_direct = o.io != "hdf5";
  size_t unchecked_shards = 0;
  std::vector<std::optional<int64_t>> direct_offsets;
  for (const auto& e : man.shards) {
    const std::string path = (fs::path(o.dir) / e.file).string();
    ShardReader r(path);
    r.check_against(man);
    shard_first.push_back(e.first_record);
    const auto& sums = r.record_checksums();
    unchecked_shards += sums.empty() && o.check_records;
    checksums.insert(checksums.end(), sums.begin(), sums.end());
    if (with_labels) {
      auto l = r.read_labels();
      if (crc32_update(0, l.data(), l.size() * sizeof(int64_t)) != e.labels_crc32)
        throw std::runtime_error(fmt::format("{}: its labels do not match their CRC32 in the manifest (corrupt); `cm data verify {}` "
                                             "checks every shard", path, o.dir));
      for (int64_t v : l)
        if (v < 0 || v >= d.num_classes)
          throw std::runtime_error(fmt::format("{}: label {} outside 0..{}", path, v, d.num_classes - 1));
      labels.insert(labels.end(), l.begin(), l.end());
    }
    direct_offsets.push_back(o.io == "hdf5" ? std::nullopt : r.direct_offset());
    if (!direct_offsets.back()) {
      all_direct = false;
      if (o.io == "direct")
        throw std::runtime_error(fmt::format("{}: its images are not stored one unfiltered chunk per image in order, so "
                                             "io = \"direct\" cannot read it (use io = \"auto\" or \"hdf5\")", path));
    }
    readers.push_back(std::move(r));
  }
  shard_first.push_back(n);
  if (!o.check_records) checksums.clear();
  if (unchecked_shards > 0) {
    checksums.clear();  // some shards have none: check none
    if (o.rank == 0)
      fmt::print(stderr, "note: {} of the {} shards in {} have no per-record checksums (shard format version 1): a record "
                 "damaged on disk is not caught while training; `cm data verify` still checks whole shards, and converting "
                 "again adds them\n", unchecked_shards, man.shards.size(), o.dir);
  }
  direct = all_direct;
  if (direct) {
    readers.clear();  // HDF5 is not needed any more
    for (size_t i = 0; i < man.shards.size(); ++i) map_shard(i, *direct_offsets[i]);
    const double memory = double(::sysconf(_SC_PHYS_PAGES)) * double(::sysconf(_SC_PAGESIZE));
    if (double(n) * double(img) < 0.25 * memory) populated.assign(size_t(n), 0);
  }
}

// Why mmap and not pread: a 12 KB pread costs a system call (~8 us here), more than converting the
// image; from a mapping the conversion threads read the pixels in place, and madvise(WILLNEED) one
// batch ahead keeps cold reads in flight in parallel.
void ShardedLoader::Impl::map_shard(size_t i, int64_t offset) {
  const std::string path = (fs::path(o.dir) / man.shards[i].file).string();
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) throw std::runtime_error(fmt::format("cannot open shard '{}': {}", path, std::strerror(errno)));
  struct stat st {};
  ::fstat(fd, &st);
  const int64_t need = offset + man.shards[i].records * img;
  if (st.st_size < need) {
    ::close(fd);
    throw std::runtime_error(fmt::format("shard '{}' is {} bytes, its images end at byte {} (truncated)", path, st.st_size, need));
  }
  void* p = ::mmap(nullptr, size_t(st.st_size), PROT_READ, MAP_SHARED, fd, 0);
  const int err = errno;
  ::close(fd);
  if (p == MAP_FAILED) throw std::runtime_error(fmt::format("cannot map shard '{}': {}", path, std::strerror(err)));
  ::madvise(p, size_t(st.st_size), MADV_RANDOM);  // records are visited in random order: no readahead
  maps.push_back({static_cast<const uint8_t*>(p), size_t(st.st_size)});
  offsets.push_back(offset);
}

std::pair<size_t, int64_t> ShardedLoader::Impl::locate(int64_t index) const {
  const size_t s = size_t(std::upper_bound(shard_first.begin(), shard_first.end(), index) - shard_first.begin() - 1);
  return {s, index - shard_first[s]};
}

const uint8_t* ShardedLoader::Impl::mapped(int64_t index) const {
  auto [s, local_index] = locate(index);
  return maps[s].base + offsets[s] + local_index * img;
}

// Maps the record's pages into this process now, on the I/O thread (reading them from disk if needed):
// the first touch of each page of a fresh mapping is a page fault, which in a VM costs more than
// converting the pixels, and it belongs on this thread, not on the conversion threads.
void ShardedLoader::Impl::populate(int64_t index) {
  static const int64_t page = ::sysconf(_SC_PAGESIZE);
  auto [s, local_index] = locate(index);
  const int64_t start = offsets[s] + local_index * img;
  const int64_t aligned = start / page * page;
  uint8_t* p = const_cast<uint8_t*>(maps[s].base) + aligned;
  const size_t len = size_t(start + img - aligned);
  if (can_populate) {
    if (::madvise(p, len, MADV_POPULATE_READ) == 0) return;
    if (errno != EINVAL && errno != ENOMEM)  // EFAULT / EIO: the file is shorter than mapped or unreadable
      throw std::runtime_error(fmt::format("{}: reading record {} failed: {}", (fs::path(o.dir) / man.shards[s].file).string(),
                                           local_index, std::strerror(errno)));
    can_populate = false;  // kernel before 5.14: touch the pages instead
  }
  volatile uint8_t sink = 0;
  for (size_t off = 0; off < len; off += size_t(page)) sink = sink + p[off];
}

// Asks the kernel to start reading this rank's records of batch `seq` (cheap when they are cached), so
// the conversion threads find them in memory. False when `seq` is not in the current epoch's order.
bool ShardedLoader::Impl::hint_batch(int64_t seq) {
  if (!direct || seq / per_epoch != perm_epoch) return false;
  static const int64_t page = ::sysconf(_SC_PAGESIZE);
  const int64_t* idx = perm.data() + (seq % per_epoch) * batch + o.rank * local;
  for (int64_t i = 0; i < local; ++i) {
    auto [s, local_index] = locate(idx[i]);
    const int64_t start = offsets[s] + local_index * img;
    const int64_t aligned = start / page * page;
    ::madvise(const_cast<uint8_t*>(maps[s].base) + aligned, size_t(start + img - aligned), MADV_WILLNEED);
  }
  return true;
}

void ShardedLoader::Impl::fill(Slot& s, int64_t seq) {
  const int64_t epoch = seq / per_epoch, b = seq % per_epoch;
  if (perm_epoch != epoch) {
    perm = epoch_permutation(n, o.seed, epoch);
    perm_epoch = epoch;
  }
  const int64_t* idx = perm.data() + b * batch + o.rank * local;
  s.flips.resize(size_t(local));
  for (int64_t i = 0; i < local; ++i) s.flips[size_t(i)] = o.random_flip && flip_of(o.seed, epoch, idx[i]);
  s.src.resize(size_t(local));
  s.index.assign(idx, idx + local);
  if (direct) {
    // Zero-copy: the conversion threads read straight from the mappings; this thread maps this batch's
    // pages in and, while the data comes from disk, asks the kernel to read the next batch ahead. Warm
    // data (populating took under ~5 us per record) skips the read-ahead calls: they would only cost.
    if (cold && hinted != seq) hint_batch(seq);
    if (cold && hint_batch(seq + 1)) hinted = seq + 1;
    const auto t0 = std::chrono::steady_clock::now();
    for (int64_t i = 0; i < local; ++i) {
      s.src[size_t(i)] = mapped(idx[i]);
      if (populated.empty() || !populated[size_t(idx[i])]) populate(idx[i]);
      if (!populated.empty()) populated[size_t(idx[i])] = 1;
    }
    const double us = std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - t0).count();
    cold = us > 5.0 * double(local);
  } else {
    // Through HDF5, in file order (fewer seeks); each image still lands at its place in the batch.
    s.raw.resize(size_t(local * img));
    std::vector<int64_t> order(static_cast<size_t>(local));
    std::iota(order.begin(), order.end(), int64_t(0));
    std::sort(order.begin(), order.end(), [&](int64_t a, int64_t c) { return idx[a] < idx[c]; });
    for (int64_t k : order) {
      auto [sh, local_index] = locate(idx[k]);
      readers[sh].read_images(local_index, 1, s.raw.data() + k * img);
    }
    for (int64_t i = 0; i < local; ++i) s.src[size_t(i)] = s.raw.data() + i * img;
  }
  s.x = batch_tensor();
  if (with_labels) {
    const bool pinned = o.device.is_cuda() && compat::cuda_available();
    s.labels = torch::empty({local}, torch::TensorOptions().pinned_memory(pinned).dtype(torch::kLong));
    int64_t* l = s.labels.data_ptr<int64_t>();
    for (int64_t i = 0; i < local; ++i) l[i] = labels[size_t(idx[i])];
  } else {
    s.labels = torch::Tensor();
  }
}

// Why reuse: a fresh multi-megabyte tensor per batch comes back from the allocator as untouched pages,
// and faulting them in (zeroed by the kernel) cost more than the conversion itself (5x in a VM). A CPU
// tensor is reused only when nobody but this list refers to it or its storage. Pinned tensors (CUDA) are
// always fresh: the caching host allocator recycles them only after their non-blocking copies finished.
torch::Tensor ShardedLoader::Impl::batch_tensor() {
  const auto& d = man.info;
  const bool pinned = o.device.is_cuda() && compat::cuda_available();
  if (!pinned)
    for (auto& t : spare)
      if (t.use_count() == 1 && t.storage().use_count() == 1) return t;
  auto t = torch::empty({local, d.channels, d.height, d.width},
                        torch::TensorOptions().dtype(torch::kFloat).pinned_memory(pinned));
  if (!pinned && spare.size() < slots.size() + 2) spare.push_back(t);
  return t;
}

void ShardedLoader::Impl::convert_part(Slot& s, int64_t begin, int64_t end) {
  const auto& d = man.info;
  float* x = s.x.data_ptr<float>();
  const int64_t per = d.channels * d.height * d.width;
  for (int64_t i = begin; i < end; ++i) {
    if (direct && !checksums.empty()) check_record(s.index[size_t(i)], s.src[size_t(i)]);
    to_chw_float(s.src[size_t(i)], x + i * per, d.height, d.width, d.channels, s.flips[size_t(i)] != 0);
  }
}

// The bytes of record `index` as read from its shard's mapping against the checksum written with them.
void ShardedLoader::Impl::check_record(int64_t index, const uint8_t* bytes) const {
  if (record_checksum(bytes, size_t(img)) == checksums[size_t(index)]) return;
  auto [sh, local_index] = locate(index);
  throw std::runtime_error(fmt::format("shard '{}': record {} (global index {}) is corrupt: its bytes do not match their "
                                       "checksum; `cm data verify {}` lists every damaged record, reconvert or restore the shard",
                                       (fs::path(o.dir) / man.shards[sh].file).string(), local_index, index, o.dir));
}

void ShardedLoader::Impl::io_loop() {
  const int64_t parts = std::min<int64_t>(local, std::max<int64_t>(1, o.threads));
  for (;;) {
    Slot* s;
    int64_t seq;
    {
      std::unique_lock<std::mutex> lock(mu);
      cv.wait(lock, [&] { return stop || slots[size_t(io_seq % int64_t(slots.size()))].state == Slot::kFree; });
      if (stop) return;
      seq = io_seq++;
      s = &slots[size_t(seq % int64_t(slots.size()))];
      s->state = Slot::kFilling;
      s->seq = seq;
      s->error = nullptr;
    }
    try {
      fill(*s, seq);
    } catch (...) {
      // The consumer rethrows this when it reaches the batch; nothing after it is produced.
      std::lock_guard<std::mutex> lock(mu);
      s->error = std::current_exception();
      s->state = Slot::kReady;
      cv.notify_all();
      return;
    }
    {
      std::lock_guard<std::mutex> lock(mu);
      s->state = Slot::kConverting;
      s->pending = int(parts);
      tasks += parts;
    }
    for (int64_t p = 0; p < parts; ++p) {
      const int64_t begin = p * local / parts, end = (p + 1) * local / parts;
      pool->submit([this, s, begin, end] {
        std::exception_ptr err;
        try {
          convert_part(*s, begin, end);
        } catch (...) {
          err = std::current_exception();
        }
        std::lock_guard<std::mutex> lock(mu);
        if (err && !s->error) s->error = err;
        if (--s->pending == 0) s->state = Slot::kReady;
        --tasks;
        cv.notify_all();
      });
    }
  }
}

void ShardedLoader::Impl::start(int64_t seq) {
  next_seq = io_seq = seq;
  hinted = -1;
  cold = true;
  stop = false;
  for (auto& s : slots) s = Slot();
  io = std::thread([this] { io_loop(); });
}

void ShardedLoader::Impl::stop_pipeline() {
  {
    std::lock_guard<std::mutex> lock(mu);
    stop = true;
  }
  cv.notify_all();
  if (io.joinable()) io.join();
  // Conversion tasks write into slots: wait for them before the slots go away or are reused.
  std::unique_lock<std::mutex> lock(mu);
  cv.wait(lock, [&] { return tasks == 0; });
}

// ---------------------------------------------------------------------------------------------- loader

ShardedLoader::ShardedLoader(LoaderOptions o) : impl_(std::make_unique<Impl>()) {
  auto& m = *impl_;
  m.o = std::move(o);
  if (m.o.world < 1 || m.o.rank < 0 || m.o.rank >= m.o.world)
    throw std::invalid_argument(fmt::format("loader: rank {} of world {}", m.o.rank, m.o.world));
  if (m.o.global_batch <= 0 || m.o.global_batch % m.o.world != 0)
    throw std::invalid_argument(fmt::format("loader: global batch {} must be a positive multiple of the world size {}",
                                            m.o.global_batch, m.o.world));
  if (m.o.io != "auto" && m.o.io != "direct" && m.o.io != "hdf5")
    throw std::invalid_argument(fmt::format("loader: io '{}': expected auto, direct or hdf5", m.o.io));
  m.o.prefetch = std::max<int64_t>(1, m.o.prefetch);
  m.o.threads = std::max<int64_t>(1, m.o.threads);
  m.open_dataset();
  m.batch = m.o.global_batch;
  m.local = m.batch / m.o.world;
  m.per_epoch = m.n / m.batch;
  if (m.per_epoch < 1)
    throw std::invalid_argument(fmt::format("{}: {} records are fewer than one global batch of {}", m.o.dir, m.n, m.batch));
  m.pool = std::make_unique<ThreadPool>(int(m.o.threads));
  m.slots.resize(size_t(m.o.prefetch));
  m.start(0);
}

ShardedLoader::~ShardedLoader() = default;

Batch ShardedLoader::next() {
  auto& m = *impl_;
  torch::Tensor x, labels;
  {
    std::unique_lock<std::mutex> lock(m.mu);
    Slot& s = m.slots[size_t(m.next_seq % int64_t(m.slots.size()))];
    m.cv.wait(lock, [&] { return s.seq == m.next_seq && s.state == Slot::kReady; });
    if (s.error) std::rethrow_exception(s.error);  // stays in place: every later call reports it too
    x = std::move(s.x);
    labels = std::move(s.labels);
    s.state = Slot::kFree;  // its buffers stay allocated for the next batch in this slot
    s.seq = -1;
    ++m.next_seq;
  }
  m.cv.notify_all();
  Batch b;
  if (m.o.device.is_cuda()) {
    // From pinned memory: the copy overlaps with compute; the caching host allocator keeps the buffer
    // alive until the copy has finished.
    b.x = x.to(m.o.device, /*non_blocking=*/true);
    if (labels.defined()) b.labels = labels.to(m.o.device, /*non_blocking=*/true);
  } else {
    b.x = std::move(x);
    b.labels = std::move(labels);
  }
  return b;
}

DataCursor ShardedLoader::cursor() const {
  const auto& m = *impl_;
  DataCursor c;
  c.batches_total = m.next_seq;
  c.epoch = m.next_seq / m.per_epoch;
  c.batch_in_epoch = m.next_seq % m.per_epoch;
  return c;
}

void ShardedLoader::restore(const DataCursor& c) {
  auto& m = *impl_;
  if (c.batches_total < 0 || c.epoch * m.per_epoch + c.batch_in_epoch != c.batches_total)
    throw std::runtime_error(fmt::format(
        "data cursor (epoch {}, batch {}, total {}) does not fit {} batches per epoch of {}: the checkpoint was made with "
        "another dataset or global batch size",
        c.epoch, c.batch_in_epoch, c.batches_total, m.per_epoch, m.o.dir));
  m.stop_pipeline();
  m.start(c.batches_total);
}

ModelShape ShardedLoader::shape() const {
  const auto& d = impl_->man.info;
  ModelShape s;
  s.channels = d.channels;
  s.resolution = d.height;
  s.num_classes = impl_->with_labels ? d.num_classes : 0;
  return s;
}

std::string ShardedLoader::describe() const {
  const auto& m = *impl_;
  const auto& d = m.man.info;
  return fmt::format("hdf5 {} ({}): {} images {}x{}x{}, {} classes{}, {} shards, rank {}/{}, batch {} ({} per rank), "
                     "{} batches/epoch, {} I/O, flip {}",
                     d.name, m.o.dir, d.total_records, d.height, d.width, d.channels, d.num_classes,
                     m.with_labels ? "" : " (labels unused)", m.man.shards.size(), m.o.rank, m.o.world, m.batch, m.local,
                     m.per_epoch, m.direct ? "direct" : "HDF5", m.o.random_flip ? "on" : "off");
}

const Manifest& ShardedLoader::manifest() const { return impl_->man; }
int64_t ShardedLoader::batches_per_epoch() const { return impl_->per_epoch; }
int64_t ShardedLoader::local_batch() const { return impl_->local; }
bool ShardedLoader::direct_io() const { return impl_->direct; }

}  // namespace cm::data

// --------------------------------------------------------------------------------------------- factory

namespace cm {

std::unique_ptr<DataSource> make_image_source(ConfigReader& cfg, int64_t rank, int64_t world, int64_t global_batch,
                                              uint64_t seed, torch::Device device) {
  data::LoaderOptions o;
  cfg.allow({"kind", "name"});
  o.dir = cfg.require_string("path");
  o.labels = cfg.get_bool("class_cond", false);
  const int64_t resolution = cfg.get_int("resolution", 0);
  const int64_t channels = cfg.get_int("channels", 0);
  const int64_t num_classes = cfg.get_int("num_classes", 0);
  o.random_flip = cfg.get_bool("random_flip", false);  // as Recipe::bind; the paper configs set it
  o.threads = cfg.get_int("loader_threads", 2);
  o.prefetch = cfg.get_int("prefetch", 4);
  o.io = cfg.get_choice("io", "auto", {"auto", "direct", "hdf5"});
  cfg.finish();
  o.rank = rank;
  o.world = world;
  o.global_batch = global_batch;
  o.seed = seed;
  o.device = device;
  // The config's description of the data is a promise: check it before any shard is opened.
  const data::Manifest m = data::read_manifest(o.dir);
  auto mismatch = [&](const std::string& key, int64_t want, int64_t have) {
    return ConfigError(fmt::format("{}: the config says {} but the dataset in '{}' has {}{}", cfg.key_path(key), want,
                                   o.dir, have, " (fix the config or convert the dataset again)"));
  };
  if (resolution && (resolution != m.info.height || resolution != m.info.width))
    throw mismatch("resolution", resolution, m.info.height);
  if (channels && channels != m.info.channels) throw mismatch("channels", channels, m.info.channels);
  if (num_classes && num_classes != m.info.num_classes) throw mismatch("num_classes", num_classes, m.info.num_classes);
  if (o.labels && !m.info.labelled())
    throw ConfigError(fmt::format("{}: class-conditional training needs labels, and the dataset in '{}' has none",
                                  cfg.key_path("class_cond"), o.dir));
  return std::make_unique<data::ShardedLoader>(o);
}

}  // namespace cm
