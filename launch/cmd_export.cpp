// `cm export`: the weights users sample with, out of a training checkpoint.
#include <fmt/format.h>
#include <torch/torch.h>
#include "core/ema.h"
#include "core/io/safetensors.h"
#include "launch/command.h"
#include "recipes/checkpoint.h"

namespace cm::cli {
namespace {

const char* kHelp = R"(Usage: cm export CKPT (--ema RATE | --student | --target) --out FILE

Writes one network's weights from a training checkpoint as a safetensors file that `cm sample --weights`
(and Python's safetensors) reads. CKPT is a checkpoint directory (run/checkpoints/step_00012000), or a
run or checkpoints/ directory, whose newest committed checkpoint is used. The checkpoint is verified
first (marker, sizes, CRC32s); one that does not verify is never exported.

  --ema RATE   a sampling EMA, e.g. --ema 0.9999 (what samples and FID use)
  --student    the raw student theta
  --target     the target network theta- (CT and CD with mu > 0)
  --out FILE   the file to write (atomically: temporary name, fsync, rename))";

int run(const std::vector<std::string>& argv) {
  if (wants_help(argv, kHelp)) return 0;
  Args args(argv, {"student", "target"});
  args.check_known({"ema", "out", "student", "target"});
  auto plain = args.plain();
  if (plain.size() != 1) throw std::invalid_argument("expected exactly one CKPT directory (see `cm export --help`)");
  auto out = args.opt("out");
  if (!out) throw std::invalid_argument("--out FILE is required");
  const int picks = (args.opt("ema") ? 1 : 0) + (args.flag("student") ? 1 : 0) + (args.flag("target") ? 1 : 0);
  if (picks != 1) throw std::invalid_argument("choose exactly one of --ema RATE, --student, --target");

  std::vector<std::string> skipped;
  CheckpointInfo c = find_checkpoint(plain[0], &skipped);
  for (auto& s : skipped) fmt::print(stderr, "warning: skipping a checkpoint that does not verify: {}\n", s);

  std::string file = "model.safetensors", what = "student";
  if (auto r = args.opt("ema")) {
    double rate = 0;
    try {
      size_t pos = 0;
      rate = std::stod(*r, &pos);
      if (pos != r->size()) throw std::invalid_argument("");
    } catch (...) {
      throw std::invalid_argument(fmt::format("--ema expects a rate such as 0.9999, got '{}'", *r));
    }
    file = ema_file_name(rate);
    what = "EMA " + SamplingEmas::rate_name(rate);
    if (!c.has(file)) {
      std::vector<std::string> emas;
      for (auto& f : c.files)
        if (f.name.rfind("ema_", 0) == 0) emas.push_back(f.name.substr(4, f.name.size() - 4 - std::string(".safetensors").size()));
      throw std::invalid_argument(fmt::format("{} has no sampling EMA {}; it has: {}", c.path, *r, emas.empty() ? std::string("none") : fmt::format("{}", fmt::join(emas, ", "))));
    }
  }
  TensorFile f;
  if (args.flag("target")) {
    what = "target";
    if (!c.has("objective.safetensors")) throw std::invalid_argument(fmt::format("{} has no target network (objective.safetensors)", c.path));
    TensorFile obj = read_checkpoint_tensors(c, "objective.safetensors");
    f.metadata = obj.metadata;
    for (auto& [n, t] : obj.tensors)
      if (n.rfind("target.", 0) == 0) f.tensors.emplace_back(n.substr(7), t);
    if (f.tensors.empty()) throw std::invalid_argument(fmt::format("{}: this objective has no separate target network", c.path));
  } else {
    f = read_checkpoint_tensors(c, file);
  }
  f.metadata["exported_from"] = c.path;
  f.metadata["exported"] = what;
  f.metadata["step"] = std::to_string(c.step);
  save_safetensors(*out, f.tensors, f.metadata);
  int64_t n = 0;
  for (auto& [name, t] : f.tensors) n += t.numel();
  fmt::print("exported the {} of {} (step {}): {} tensors, {} values -> {}\n", what, c.path, c.step, f.tensors.size(), n, *out);
  return 0;
}

CommandRegistration reg({"export", "write the sampling weights (an EMA, the student or the target) of a checkpoint", kHelp, run});

}  // namespace
}  // namespace cm::cli
