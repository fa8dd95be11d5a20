// `cm data`: convert published datasets to HDF5 shards, write the manifest after parallel workers, verify,
// look at, and benchmark converted datasets; `selftest` drives the loader on self-describing data for the
// multi-rank tests.
#include <cstdlib>
#include <fstream>
#include <fmt/format.h>

#include "core/io/safetensors.h"
#include "datasets/convert.h"
#include "datasets/inspect.h"
#include "datasets/loader.h"
#include "launch/command.h"

namespace cm::cli {
namespace {

const char* kHelp = R"(Usage: cm data SUBCOMMAND ...

  convert FORMAT SRC OUT_DIR --shards N [options]
      Convert a published dataset into N shards OUT_DIR/NAME-00000-of-0000N.h5 plus OUT_DIR/manifest.json.
      FORMAT   SRC
      cifar10         cifar-10-binary.tar.gz, or the extracted cifar-10-batches-bin/ (--split train|test)
      fashion-mnist   folder with {train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz] (also: fashion_mnist,
                      mnist); --pad 32 (or --pad-to 32) zero-pads 28x28 to 32x32
      imagenet        ILSVRC2012 train folder (WNID subfolders or nXXXXXXXX_*.JPEG); center_crop_arr to
                      --resolution (64) as the paper's reference code
      imagenet64-npz  folder with train_data_batch_1..10.npz / val_data.npz (downsampled release; not the
                      paper's preprocessing)
      lsun            LMDB export (WebP or JPEG values); box resize + centre crop to --resolution (256)
      folder          PNG/JPEG/WebP images, class = first-level subfolder when all images are in one;
                      --resolution R with --resize adm|box, or --resize none (all images one size)
      Options: --split train|test   --name NAME   --resolution R   --channels C   --pad P
               --worker I/N  (this process writes shards I, I+N, ...; then run `cm data manifest OUT_DIR`)
               --threads T   --limit K (first K records)   --overwrite   --resume (keep finished shards)   --quiet
  manifest DIR [--name NAME]
      Write DIR/manifest.json from the shards' own attributes (after `convert --worker` processes).
  verify DIR
      Check every shard against the manifest: shapes, counts, sizes, CRC32 of images and labels.
  show DIR --out grid.png [--count 64] [--cols 8] [--seed 0]
      PNG grid of random images with their labels (record index when unlabelled).
  bench DIR [--batch 256] [--seconds 5] [--threads 2] [--io auto|direct|hdf5] [--cold] [--no-flip] [--no-checksums]
      Images/s of the loader alone and bytes/s of a plain sequential read of the same shards.
      --cold drops the shards from the page cache before each measurement; --no-checksums skips the
      per-record checksum check that training does (to measure its cost).
  selftest make DIR --count N [--shards S] [--side 8] [--classes 10]
  selftest run DIR --batch B --batches K --out PREFIX [--seed S] [--flip] [--restore FILE]
                   [--save-cursor FILE --save-at K]
      For tests: a dataset whose pixels encode their record index, and a loader run that writes the
      indices, flips and labels it saw to PREFIX.rank<R>.txt (rank and world size from mpirun/srun).)";

// Rank and world size from the launcher's environment (OpenMPI, MPICH/PMI, SLURM), else 0 of 1.
std::pair<int64_t, int64_t> launcher_rank() {
  for (auto [r, w] : {std::pair{"OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE"}, std::pair{"PMI_RANK", "PMI_SIZE"},
                      std::pair{"SLURM_PROCID", "SLURM_NTASKS"}}) {
    const char* rv = std::getenv(r);
    const char* wv = std::getenv(w);
    if (rv && wv) return {std::atoll(rv), std::atoll(wv)};
  }
  return {0, 1};
}

std::vector<std::string> need_positional(const Args& a, size_t n, const char* usage) {
  auto p = a.positional();  // not plain(): a path may contain '='
  if (p.size() != n) throw std::invalid_argument(fmt::format("expected: cm data {}", usage));
  return p;
}

int cmd_convert(const std::vector<std::string>& argv) {
  Args a(argv, {"overwrite", "resume", "quiet"});
  a.check_known({"shards", "split", "name", "resolution", "channels", "pad", "pad-to", "resize", "worker", "threads",
                 "limit", "overwrite", "resume", "quiet"});
  auto p = need_positional(a, 4, "convert FORMAT SRC OUT_DIR --shards N");
  data::ConvertOptions o;
  // main's spelling (README) names the same converter; one name keeps shard names and source_format stable.
  o.format = p[1] == "fashion_mnist" ? "fashion-mnist" : p[1];
  o.src = p[2];
  o.out_dir = p[3];
  if (!a.opt("shards")) throw std::invalid_argument("--shards N is required");
  o.shards = a.int_or("shards", 1);
  o.split = a.opt_or("split", "train");
  o.name = a.opt_or("name", "");
  o.resolution = a.int_or("resolution", 0);
  o.channels = a.int_or("channels", 0);
  o.pad_to = a.int_or("pad", a.int_or("pad-to", 0));
  o.resize = a.opt_or("resize", "");
  o.threads = a.int_or("threads", 0);
  o.limit = a.int_or("limit", 0);
  o.overwrite = a.flag("overwrite");
  o.resume = a.flag("resume");
  o.progress = !a.flag("quiet");
  if (auto w = a.opt("worker")) {
    auto slash = w->find('/');
    if (slash == std::string::npos) throw std::invalid_argument("--worker expects I/N, e.g. --worker 0/4");
    o.worker = std::stoll(w->substr(0, slash));
    o.workers = std::stoll(w->substr(slash + 1));
  }
  auto r = data::run_conversion(o);
  fmt::print("{}: {} records in {} shard(s) written to {}{}\n", o.format, r.records, r.shards.size(), o.out_dir,
             r.manifest_written ? " (manifest written)"
                                : fmt::format("; when all {} workers are done: cm data manifest {}", o.workers, o.out_dir));
  return 0;
}

int cmd_manifest(const std::vector<std::string>& argv) {
  Args a(argv, {});
  a.check_known({"name"});
  auto p = need_positional(a, 2, "manifest DIR [--name NAME]");
  auto m = data::finalize_manifest(p[1], a.opt_or("name", ""));
  fmt::print("{}: manifest of {} ({} records, {} shards) written\n", p[1], m.info.name, m.info.total_records, m.shards.size());
  return 0;
}

int cmd_verify(const std::vector<std::string>& argv) {
  Args a(argv, {"quiet"});
  a.check_known({"quiet"});
  auto p = need_positional(a, 2, "verify DIR");
  auto problems = data::verify_dataset(p[1], !a.flag("quiet"));
  auto m = data::read_manifest(p[1]);
  if (problems.empty()) {
    fmt::print("{}: OK ({}, {} records in {} shards, checksums match)\n", p[1], m.info.name, m.info.total_records, m.shards.size());
    return 0;
  }
  for (auto& s : problems) fmt::print(stderr, "{}\n", s);
  fmt::print(stderr, "{}: {} problem(s); convert the dataset again or restore the damaged shards\n", p[1], problems.size());
  return 1;
}

int cmd_show(const std::vector<std::string>& argv) {
  Args a(argv, {});
  a.check_known({"out", "count", "cols", "seed"});
  auto p = need_positional(a, 2, "show DIR --out grid.png");
  auto out = a.opt("out");
  if (!out) throw std::invalid_argument("--out grid.png is required");
  std::vector<int64_t> captions;
  const int64_t cols = a.int_or("cols", 8);
  auto grid = data::dataset_grid(p[1], a.int_or("count", 64), uint64_t(a.int_or("seed", 0)), cols, &captions);
  write_file_atomic(*out, data::encode_png(grid));
  fmt::print("{}: {} images written to {}; labels in grid order:\n", p[1], captions.size(), *out);
  for (size_t i = 0; i < captions.size(); i += size_t(cols))
    fmt::print("  {}\n", fmt::join(captions.begin() + long(i), captions.begin() + long(std::min(captions.size(), i + size_t(cols))), " "));
  return 0;
}

int cmd_bench(const std::vector<std::string>& argv) {
  Args a(argv, {"cold", "no-flip", "no-checksums"});
  a.check_known({"batch", "seconds", "threads", "io", "cold", "no-flip", "no-checksums"});
  auto p = need_positional(a, 2, "bench DIR");
  const std::string dir = p[1];
  const double seconds = a.double_or("seconds", 5);
  const bool cold = a.flag("cold");
  auto m = data::read_manifest(dir);
  if (cold) data::evict_page_cache(dir);
  auto raw = data::bench_raw_read(dir, seconds, /*repeat=*/!cold);
  if (cold) data::evict_page_cache(dir);
  auto l = data::bench_loader(dir, a.int_or("batch", 256), seconds, a.int_or("threads", 2), a.opt_or("io", "auto"),
                              !a.flag("no-flip"), !a.flag("no-checksums"));
  fmt::print("dataset      {} ({} images {}x{}x{}, {} bytes each){}\n", m.info.name, m.info.total_records, m.info.height,
             m.info.width, m.info.channels, m.info.image_bytes(), cold ? ", cold page cache" : "");
  fmt::print("raw read     {:.1f} MB/s  ({} MB in {:.2f} s, sequential read() of the shard files)\n", raw.bytes_per_s / 1e6,
             raw.bytes / 1000000, raw.seconds);
  fmt::print("loader       {:.0f} images/s = {:.1f} MB/s of pixels  ({} images in {:.2f} s, {} I/O, float NCHW output, {})\n",
             l.images_per_s, l.bytes_per_s / 1e6, l.images, l.seconds, l.direct ? "direct" : "HDF5",
             a.flag("no-checksums") ? "record checksums not checked" : "record checksums checked");
  fmt::print("loader CPU   {:.1f} us per image over all threads ({:.2f} cores busy)\n", 1e6 * l.cpu_seconds / double(l.images),
             l.cpu_seconds / l.seconds);
  fmt::print("ratio        loader / raw read = {:.1f} %\n", 100.0 * l.bytes_per_s / raw.bytes_per_s);
  return 0;
}

int cmd_selftest(const std::vector<std::string>& argv) {
  Args a(argv, {"flip"});
  a.check_known({"count", "shards", "side", "classes", "batch", "batches", "out", "seed", "flip", "restore",
                 "save-cursor", "save-at", "threads", "io"});
  auto p = a.positional();
  if (p.size() != 3 || (p[1] != "make" && p[1] != "run"))
    throw std::invalid_argument("expected: cm data selftest make|run DIR ...");
  if (p[1] == "make") {
    data::write_index_dataset(p[2], a.int_or("count", 1000), a.int_or("shards", 4), a.int_or("side", 8), a.int_or("classes", 10));
    return 0;
  }
  auto [rank, world] = launcher_rank();
  data::LoaderOptions o;
  o.dir = p[2];
  o.labels = true;
  o.rank = rank;
  o.world = world;
  o.global_batch = a.int_or("batch", 0);
  o.seed = uint64_t(a.int_or("seed", 0));
  o.random_flip = a.flag("flip");
  o.threads = a.int_or("threads", 2);
  o.io = a.opt_or("io", "auto");
  data::ShardedLoader loader(o);
  if (auto r = a.opt("restore")) {
    std::ifstream in(*r);
    DataCursor c;
    if (!(in >> c.epoch >> c.batch_in_epoch >> c.batches_total)) throw std::runtime_error("cannot read cursor file " + *r);
    loader.restore(c);
  }
  auto out_prefix = a.opt("out");
  if (!out_prefix) throw std::invalid_argument("--out PREFIX is required");
  const int64_t batches = a.int_or("batches", 1), save_at = a.int_or("save-at", -1);
  const auto save_path = a.opt("save-cursor");
  std::string text;
  const auto s = loader.shape();
  auto save_cursor = [&](int64_t k) {
    if (!save_path || k != save_at || rank != 0) return;
    auto c = loader.cursor();
    write_file_atomic(*save_path, fmt::format("{} {} {}\n", c.epoch, c.batch_in_epoch, c.batches_total));
  };
  for (int64_t k = 0; k < batches; ++k) {
    save_cursor(k);
    const int64_t seq = loader.cursor().batches_total;
    Batch b = loader.next();
    text += fmt::format("batch {}", seq);
    const float* x = b.x.data_ptr<float>();
    for (int64_t i = 0; i < b.x.size(0); ++i) {
      auto [index, flipped] = data::decode_index_image(x + i * 3 * s.resolution * s.resolution, s.resolution, s.resolution);
      text += fmt::format(" {}:{}:{}", index, flipped ? 1 : 0, b.labels.defined() ? b.labels[i].item<int64_t>() : -1);
    }
    text += "\n";
  }
  save_cursor(batches);
  write_file_atomic(fmt::format("{}.rank{}.txt", *out_prefix, rank), text);
  return 0;
}

int run(const std::vector<std::string>& argv) {
  if (argv.empty() || wants_help(argv, kHelp)) {
    if (argv.empty()) fmt::print("{}\n", kHelp);
    return argv.empty() ? 2 : 0;
  }
  const std::string& sub = argv[0];
  if (sub == "convert") return cmd_convert(argv);
  if (sub == "manifest") return cmd_manifest(argv);
  if (sub == "verify") return cmd_verify(argv);
  if (sub == "show") return cmd_show(argv);
  if (sub == "bench") return cmd_bench(argv);
  if (sub == "selftest") return cmd_selftest(argv);
  throw std::invalid_argument(fmt::format("unknown subcommand '{}' (convert, manifest, verify, show, bench, selftest)", sub));
}

CommandRegistration reg({"data", "convert, verify, show and benchmark datasets (HDF5 shards)", kHelp, run});

}  // namespace
}  // namespace cm::cli
