// `cm data`: convert published dataset formats to HDF5 shards, verify them, show them.
#include <filesystem>
#include <fmt/format.h>
#include <torch/torch.h>
#include "core/image.h"
#include "core/rng.h"
#include "datasets/convert.h"
#include "datasets/shards.h"
#include "launch/command.h"

namespace cm::cli {
namespace {

const char* kHelp = R"(Usage: cm data convert FORMAT SRC OUT_DIR [--split train|test] [--shards N] [--pad-to S] [--name NAME]
       cm data verify DIR
       cm data show DIR [--out grid.png] [--count N] [--seed S]

convert  FORMAT fashion_mnist | mnist: SRC is the folder with the IDX files (train-images-idx3-ubyte.gz,
         ...; Debian: /usr/share/datasets/fashion-mnist). Writes NAME-0000i-of-0000N.h5 shards and
         manifest.json (last) into OUT_DIR, with progress and ETA.
verify   checks every shard against the manifest (attributes, counts, shapes, CRC32); exit 1 on a problem.
show     writes a PNG grid of random images (labels printed in grid order).)";

int convert(const Args& args, const std::vector<std::string>& plain) {
  if (plain.size() != 4) throw std::invalid_argument("usage: cm data convert FORMAT SRC OUT_DIR (see --help)");
  const std::string format = plain[1], src = plain[2];
  ConvertOptions opt;
  opt.out_dir = plain[3];
  opt.shards = args.int_or("shards", 1);
  opt.pad_to = args.int_or("pad-to", 0);
  const std::string split = args.opt_or("split", "train");
  if (split != "train" && split != "test") throw std::invalid_argument("--split must be train or test");
  if (opt.shards < 1) throw std::invalid_argument("--shards must be >= 1");
  if (format == "fashion_mnist" || format == "mnist") {
    opt.name = args.opt_or("name", format + "_" + split);
    const std::string pre = split == "train" ? "train" : "t10k";
    auto pick = [&](const std::string& base) {
      for (auto f : {src + "/" + base + ".gz", src + "/" + base})
        if (std::filesystem::exists(f)) return f;
      throw std::invalid_argument(fmt::format("{}: no {} or {}.gz (is SRC the folder of the IDX files?)", src, base, base));
    };
    convert_idx(pick(pre + "-images-idx3-ubyte"), pick(pre + "-labels-idx1-ubyte"), split, opt);
  } else {
    throw std::invalid_argument(fmt::format("format '{}' is not supported yet (supported: fashion_mnist, mnist)", format));
  }
  auto m = read_manifest(opt.out_dir);
  fmt::print("wrote {} images ({}x{}x{}, {} classes) in {} shard(s) to {}\n", m.total, m.height, m.width, m.channels, m.num_classes,
             m.shards.size(), opt.out_dir);
  return 0;
}

int run(const std::vector<std::string>& argv) {
  if (wants_help(argv, kHelp) || argv.empty()) {
    if (argv.empty()) fmt::print("{}\n", kHelp);
    return argv.empty() ? 2 : 0;
  }
  Args args(argv, {});
  args.check_known({"split", "shards", "pad-to", "name", "out", "count", "seed"});
  auto plain = args.plain();
  const std::string sub = plain.empty() ? "" : plain[0];
  if (sub == "convert") return convert(args, plain);
  if (sub == "verify") {
    if (plain.size() != 2) throw std::invalid_argument("usage: cm data verify DIR");
    auto problems = verify_dataset(plain[1], true);
    if (!problems.empty()) {
      fmt::print(stderr, "{} problem(s) in {}\n", problems.size(), plain[1]);
      return 1;
    }
    fmt::print("{}: all shards match the manifest\n", plain[1]);
    return 0;
  }
  if (sub == "show") {
    if (plain.size() != 2) throw std::invalid_argument("usage: cm data show DIR [--out grid.png]");
    auto m = read_manifest(plain[1]);
    const int64_t count = std::min<int64_t>(args.int_or("count", 64), m.total);
    auto gen = cpu_generator(static_cast<uint64_t>(args.int_or("seed", 0)));
    auto idx = std::get<0>(torch::sort(torch::randperm(m.total, gen, torch::kInt64).narrow(0, 0, count)));
    std::vector<torch::Tensor> imgs;
    std::vector<int64_t> labels;
    for (int64_t k = 0; k < count; ++k) {
      const int64_t g = idx[k].item<int64_t>();
      for (auto& s : m.shards)
        if (g >= s.first_index && g < s.first_index + s.count) {
          auto b = read_shard_block(plain[1] + "/" + s.file, g - s.first_index, 1);
          imgs.push_back(b.images[0]);
          labels.push_back(b.labels.defined() ? b.labels[0].item<int64_t>() : -1);
        }
    }
    auto x = torch::stack(imgs).permute({0, 3, 1, 2}).to(torch::kFloat32) / 127.5 - 1.0;
    const std::string out = args.opt_or("out", plain[1] + "/show.png");
    write_png(out, image_grid(x, static_cast<int64_t>(std::ceil(std::sqrt(static_cast<double>(count))))));
    fmt::print("wrote {} ({} images); labels in grid order: {}\n", out, count, fmt::join(labels, " "));
    return 0;
  }
  throw std::invalid_argument(fmt::format("unknown `cm data` subcommand '{}' (convert, verify, show)", sub));
}

CommandRegistration reg({"data", "convert datasets to HDF5 shards, verify and show them", kHelp, run});

}  // namespace
}  // namespace cm::cli
