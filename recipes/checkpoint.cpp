// The checkpoint coordinator (see checkpoint.h).
#include "recipes/checkpoint.h"

#include <fmt/format.h>
#include <signal.h>

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <set>
#include <torch/torch.h>
#include "source_revision.h"  // generated: git describe of the build
#include "core/ema.h"
#include "core/io/json.h"
#include "core/optim.h"
#include "core/precision.h"
#include "distributed/communicator.h"
#include "distributed/preemption.h"
#include "distributed/world.h"  // broadcast_string
#include "recipes/objectives.h"


namespace fs = std::filesystem;

namespace cm {

namespace {

constexpr const char* kStateFormat = "cm-train-state";
constexpr int64_t kStateVersion = 1;

using Clock = std::chrono::steady_clock;
double seconds_since(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }

// A CPU copy that the training thread may not change any more: cloned when the tensor lives on the CPU
// (training goes on updating the original in place), copied when it lives on a GPU.
torch::Tensor cpu_copy(const torch::Tensor& t) {
  auto d = t.detach();
  if (d.device().is_cpu()) return d.clone(at::MemoryFormat::Contiguous);
  return d.to(torch::kCPU).contiguous();
}



// Keeps the lines of metrics.jsonl up to `step` (later ones belong to the interrupted run's lost future;
// a line cut short by a kill is dropped too).
void trim_metrics(const std::string& path, int64_t step) {
  std::error_code ec;
  if (!fs::exists(path, ec)) return;
  std::string text = read_file(path), kept;
  size_t pos = 0;
  while (pos < text.size()) {
    size_t end = text.find('\n', pos);
    if (end == std::string::npos) break;  // unterminated last line
    std::string line = text.substr(pos, end - pos);
    pos = end + 1;
    try {
      Json j = parse_json(line, path);
      const Json* s = j.get("step");
      if (s && s->integer <= step) kept += line + "\n";
    } catch (const std::exception&) {
    }
  }
  write_file_atomic(path, kept);
}

// A name beside `dir` that does not exist yet: DIR.skipped, DIR.skipped-2, ...
std::string aside_name(const std::string& dir) {
  std::error_code ec;
  for (int i = 1;; ++i) {
    std::string p = i == 1 ? dir + ".skipped" : fmt::format("{}.skipped-{}", dir, i);
    if (!fs::exists(p, ec)) return p;
  }
}

}  // namespace

struct CheckpointCoordinator::Snapshot {
  int64_t step = 0;
  std::vector<PendingFile> files;
};

// ---------------------------------------------------------------------------------------------------
// Config compatibility

const std::vector<std::string>& resume_mutable_keys() {
  // Where to checkpoint and log, how often, on what hardware: none of it changes the training state.
  static const std::vector<std::string> k = {"checkpoint",        "resume",           "run",
                                             "debug",             "sample",           "eval",    "train.steps",
                                             "train.log_every",   "train.sample_every", "train.check_every",
                                             "train.watchdog_s",  "train.threads",    "train.lanes", "train.channels_last",   "train.device",
                                             "train.max_nonfinite_steps",
                                             "method.curriculum_steps", "dist",  // communication layout only
                                             "dataset.loader_threads", "dataset.prefetch", "dataset.io",
                                             "dataset.path"};  // the same data moved to another disk
  return k;
}

void check_resume_config(const Recipe& now, const Config& saved, const std::string& origin) {
  auto diff = now.config.diff_keys(saved, resume_mutable_keys());
  if (!diff.empty())
    throw ConfigError(fmt::format("cannot resume from {}: the config differs from the one it was trained with in {} ({}). Only {} "
                                  "may change on resume; start a new run.dir to train with another config, or set those keys "
                                  "back (the saved config is {}/config.toml)",
                                  origin, diff.size() == 1 ? "key" : "keys", fmt::join(diff, ", "), fmt::join(resume_mutable_keys(), ", "),
                                  origin));
  // train.steps may change only when it does not move the curriculum, which is spread over it by default.
  Recipe old;
  try {
    old = Recipe::bind(saved, now.name);
  } catch (const std::exception& e) {
    throw ConfigError(fmt::format("cannot resume from {}: its config.toml does not bind in this version: {}", origin, e.what()));
  }
  const auto& m = now.method;
  const int64_t was = old.method.curriculum.total_steps(), is = m.curriculum.total_steps();
  if (m.is_consistency() && m.curriculum.kind != CurriculumKind::Fixed && was != is)
    throw ConfigError(fmt::format("cannot resume from {}: the {} curriculum N(k) was spread over {} steps and would now be spread "
                                  "over {} (train.steps changed from {} to {}); add +method.curriculum_steps={} to keep it",
                                  origin, m.curriculum.kind == CurriculumKind::Ct ? "CT" : "iCT", was, is, old.train.steps, now.train.steps, was));
}

// ---------------------------------------------------------------------------------------------------
// Reading

TensorFile read_checkpoint_tensors(const CheckpointInfo& c, const std::string& name) {
  return parse_safetensors(read_checkpoint_file(c, name), c.path + "/" + name);
}

std::optional<CheckpointInfo> newest_valid_checkpoint(const std::string& parent, std::vector<std::string>* skipped) {
  auto dirs = list_checkpoint_dirs(parent);
  for (auto it = dirs.rbegin(); it != dirs.rend(); ++it) {
    try {
      return verify_checkpoint(it->second);
    } catch (const std::exception& e) {
      if (skipped) skipped->push_back(e.what());
    }
  }
  return std::nullopt;
}

CheckpointInfo find_checkpoint(const std::string& given, std::vector<std::string>* skipped) {
  std::error_code ec;
  std::string path = fs::path(given).lexically_normal().string();
  while (path.size() > 1 && path.back() == '/') path.pop_back();
  if (!fs::is_directory(path, ec)) throw std::runtime_error(fmt::format("'{}' is not a directory", path));
  const std::string leaf = fs::path(path).filename().string();
  if (fs::exists(fs::path(path) / kCommitMarker, ec) || parse_checkpoint_dir_name(leaf) || leaf.rfind(".tmp-", 0) == 0)
    return verify_checkpoint(path);
  const std::string parent = fs::is_directory(fs::path(path) / "checkpoints", ec) ? path + "/checkpoints" : path;
  if (auto c = newest_valid_checkpoint(parent, skipped)) return *c;
  throw std::runtime_error(fmt::format("no committed checkpoint in '{}'{}", parent,
                                       skipped && !skipped->empty() ? fmt::format(" ({} skipped: {})", skipped->size(), fmt::join(*skipped, "; ")) : ""));
}

// ---------------------------------------------------------------------------------------------------
// Coordinator

CheckpointCoordinator::CheckpointCoordinator(const Recipe& recipe, const TrainState& state, Options opt)
    : recipe_(recipe), state_(state), opt_(opt), dir_(recipe.run.dir + "/checkpoints") {
  if (opt_.world > 1 && !opt_.comm) throw std::logic_error("CheckpointCoordinator: world > 1 needs a communicator");
  install_preemption_handlers();
}

CheckpointCoordinator::~CheckpointCoordinator() {
  try {
    wait();
  } catch (const std::exception& e) {
    std::fprintf(stderr, "cm: %s\n", e.what());
  }
}

std::vector<CheckpointTimes> CheckpointCoordinator::history() const {
  std::lock_guard<std::mutex> lock(mu_);
  return history_;
}

torch::Tensor CheckpointCoordinator::copy_to_buffer(const torch::Tensor& t) {
  const size_t i = next_buffer_++;
  if (i < buffers_.size() && buffers_[i].sizes() == t.sizes() && buffers_[i].scalar_type() == t.scalar_type()) {
    buffers_[i].copy_(t.detach());
    return buffers_[i];
  }
  auto c = cpu_copy(t);
  if (i < buffers_.size()) buffers_[i] = c;
  else buffers_.push_back(c);
  return c;
}

CheckpointCoordinator::Snapshot CheckpointCoordinator::capture(int64_t step) {
  torch::NoGradGuard ng;
  next_buffer_ = 0;
  auto copy = [this](const NamedTensors& ts) {
    NamedTensors out;
    out.reserve(ts.size());
    for (auto& [n, t] : ts) out.emplace_back(n, copy_to_buffer(t));
    return out;
  };
  const std::map<std::string, std::string> meta = {
      {"recipe", recipe_.name}, {"config_hash", recipe_.config.hash()}, {"step", std::to_string(step)}};
  Snapshot s;
  s.step = step;
  for (auto& [name, part] : state_.parts())
    for (auto& f : part->files()) {
      auto m = meta;
      m.insert(f.meta.begin(), f.meta.end());
      s.files.push_back(PendingFile::of_tensors(f.name, copy(f.tensors), m));
    }
  s.files.push_back(PendingFile::of_text("state.json", state_json(step)));
  s.files.push_back(PendingFile::of_text("config.toml", recipe_.config.to_toml() + "\n"));
  return s;
}

// state.json: the run's figures at `step`, then every part's members (data cursor, EMA rates, optimizer
// steps, loss scaler), then where it came from.
std::string CheckpointCoordinator::state_json(int64_t step) const {
  const auto& tc = recipe_.train;
  std::string parts;
  for (auto& [name, part] : state_.parts())
    for (auto& [key, value] : part->json_members()) parts += fmt::format("  \"{}\": {},\n", key, value);
  return fmt::format("{{\n  \"format\": \"{}\",\n  \"version\": {},\n  \"step\": {},\n  \"images_seen\": {},\n  \"global_batch\": {},\n"
                     "  \"micro_batches\": {},\n  \"world_size\": {},\n{}  \"config_hash\": \"{}\",\n  \"recipe\": \"{}\",\n"
                     "  \"source_revision\": \"{}\",\n"
                     "  \"rng\": \"none saved: every draw of step k is derived from (seed, k[, rank]) (core/rng.h)\"\n}}\n",
                     kStateFormat, kStateVersion, step, step * tc.batch, tc.batch, tc.micro_batches, opt_.world, parts,
                     recipe_.config.hash(), json_escape(recipe_.name), source_revision());
}

void CheckpointCoordinator::save(int64_t step, bool wait_for_it) {
  last_saved_ = step;
  if (!is_main()) return;
  CheckpointTimes t;
  t.step = step;
  t.async = recipe_.checkpoint.async && !wait_for_it;
  auto t0 = Clock::now();
  wait();  // a second save waits for the first
  t.wait_s = seconds_since(t0);
  auto t1 = Clock::now();
  auto snap = std::make_shared<Snapshot>(capture(step));
  t.snapshot_s = seconds_since(t1);
  if (t.async) {
    pending_ = std::async(std::launch::async, [this, snap, t] { write(*snap, t); });
  } else {
    write(*snap, t);
  }
}

void CheckpointCoordinator::write(Snapshot& s, CheckpointTimes t) {
  const auto t0 = Clock::now();
  const auto& dbg = recipe_.debug;
  CommitFaults faults;
  if (dbg.ckpt_fault_step < 0 || dbg.ckpt_fault_step == s.step) {
    faults.crash_at = dbg.ckpt_crash_at;
    faults.fail_after_bytes = dbg.ckpt_fail_after_bytes;
  }
  CommitResult res;
  try {
    std::error_code ec;
    fs::create_directories(dir_, ec);
    if (ec) throw std::runtime_error(fmt::format("cannot create '{}': {}", dir_, ec.message()));
    res = commit_checkpoint(dir_, s.step, s.files, faults);
  } catch (const std::exception& e) {
    auto dirs = list_checkpoint_dirs(dir_);
    throw std::runtime_error(fmt::format("checkpoint {} could not be written, so training stops: {}. Nothing committed before it "
                                         "was touched (newest: {})",
                                         checkpoint_dir_name(s.step), e.what(), dirs.empty() ? "none" : dirs.back().second));
  }
  apply_retention(s.step);
  t.write_s = seconds_since(t0);
  t.bytes = res.bytes;
  if (!opt_.quiet)
    fmt::print("checkpoint {}: {:.1f} MB committed in {:.2f} s{} (training waited {:.3f} s)\n", res.path, res.bytes / 1e6, t.write_s,
               t.async ? " in the background" : "", t.step_blocked_s());
  std::fflush(stdout);
  std::lock_guard<std::mutex> lock(mu_);
  history_.push_back(t);
}

void CheckpointCoordinator::apply_retention(int64_t newest) {
  const auto& c = recipe_.checkpoint;
  auto dirs = list_checkpoint_dirs(dir_);
  std::vector<std::pair<int64_t, std::string>> older;
  for (auto& d : dirs)
    if (d.first <= newest) older.push_back(d);
  const size_t n = older.size();
  for (size_t i = 0; i < n; ++i) {
    const int64_t step = older[i].first;
    const bool recent = i + static_cast<size_t>(c.keep_last) >= n;
    const bool milestone = c.keep_every > 0 && step % c.keep_every == 0;
    if (recent || milestone) continue;
    try {
      remove_checkpoint(older[i].second);
    } catch (const std::exception& e) {
      fmt::print(stderr, "warning: {} (old checkpoint kept)\n", e.what());
    }
  }
}

bool CheckpointCoordinator::busy() const {
  return pending_.valid() && pending_.wait_for(std::chrono::seconds(0)) != std::future_status::ready;
}

void CheckpointCoordinator::wait() {
  if (!pending_.valid()) return;
  pending_.get();
}

int CheckpointCoordinator::step_end(int64_t done) {
  if (is_main() && pending_.valid() && pending_.wait_for(std::chrono::seconds(0)) == std::future_status::ready) pending_.get();
  const auto& dbg = recipe_.debug;
  if (dbg.signal_rank == opt_.rank && dbg.signal_step == done) ::raise(SIGUSR1);  // through the real handler
  if (int sig = stop_if_requested(done)) return sig;
  const int64_t every = recipe_.checkpoint.every;
  if (every > 0 && done % every == 0) save(done, !recipe_.checkpoint.async);
  return 0;
}

int CheckpointCoordinator::stop_if_requested(int64_t done) {
  const int sig = agree_on_preemption(opt_.comm);
  if (sig == 0) return 0;
  // A fresh run asked to stop before its first step has nothing to save: the same command starts it again.
  if (done > 0 && last_saved_ != done) save(done, /*wait=*/true);
  else wait();
  if (!is_main()) return sig;
  if (done == 0)
    fmt::print(stderr, "cm train: stopping before the first step on {}: nothing to checkpoint yet; exiting with code {} (run the same "
               "command to start)\n", signal_name(sig), kExitPreempted);
  else
    fmt::print(stderr, "cm train: stopping after step {} on {}: checkpoint {}/{} is committed; exiting with code {} (run the "
               "same command to continue)\n", done, signal_name(sig), dir_, checkpoint_dir_name(done), kExitPreempted);
  return sig;
}

void CheckpointCoordinator::finish(int64_t done) {
  if (last_saved_ != done) save(done, /*wait=*/false);
}

// ---------------------------------------------------------------------------------------------------
// Resume

// Rank 0: the checkpoint `resume` selects ("" = a fresh start), its config checked; newer checkpoints of
// this run directory moved aside.
std::string CheckpointCoordinator::choose_checkpoint() {
  const std::string& mode = recipe_.resume;
  for (auto& t : remove_stale_temporaries(dir_))
    fmt::print(stderr, "note: removed {}/{}, left by a checkpoint write that was interrupted\n", dir_, t);
  std::vector<std::string> skipped;
  std::optional<CheckpointInfo> info;
  if (mode == "never") {
    auto dirs = list_checkpoint_dirs(dir_);
    if (!dirs.empty())
      throw ConfigError(fmt::format("resume = \"never\", but {} already holds checkpoints (up to {}); use another run.dir, or "
                                    "resume=auto to continue", dir_, dirs.back().second));
  } else if (mode == "auto") {
    info = newest_valid_checkpoint(dir_, &skipped);
    // Checkpoints exist and none verifies: starting from step 0 over them would quietly throw away the
    // run (and later overwrite its step numbers); the user decides.
    if (!info && !skipped.empty())
      throw std::runtime_error(fmt::format(
          "resume = \"auto\", but no checkpoint in {} verifies ({} skipped: {}). To start this run over, move {} aside "
          "(or use another run.dir); to continue from a checkpoint elsewhere, give resume=PATH",
          dir_, skipped.size(), fmt::join(skipped, "; "), dir_));
  } else {
    info = find_checkpoint(mode, &skipped);
  }
  for (auto& s : skipped) fmt::print(stderr, "warning: skipping a checkpoint that does not verify: {}\n", s);
  if (info && info->step > recipe_.train.steps)
    throw ConfigError(fmt::format("{} is at step {}, beyond train.steps = {}: raise train.steps (with +method.curriculum_steps "
                                  "for CT/iCT) or resume from an earlier checkpoint", info->path, info->step, recipe_.train.steps));
  if (info) check_resume_config(recipe_, Config::parse(read_checkpoint_file(*info, "config.toml"), info->path + "/config.toml"), info->path);
  move_newer_aside(info ? info->step : -1);
  return info ? info->path : "";
}

// Checkpoints of this run directory newer than the one resumed from (unverifiable ones, or a future
// abandoned by resume=PATH) are moved aside, never deleted, so that this run can commit those steps.
void CheckpointCoordinator::move_newer_aside(int64_t from) {
  for (auto& [step, path] : list_checkpoint_dirs(dir_)) {
    if (step <= from) continue;
    const std::string aside = aside_name(path);
    std::error_code ec;
    fs::rename(path, aside, ec);
    if (ec) throw std::runtime_error(fmt::format("cannot move '{}' aside to '{}': {}", path, aside, ec.message()));
    fmt::print(stderr, "note: moved {} (newer than the checkpoint resumed from) to {}\n", path, aside);
  }
}

int64_t CheckpointCoordinator::resume() {
  std::string chosen = is_main() ? choose_checkpoint() : "";
  if (opt_.world > 1) chosen = dist::broadcast_string(chosen);  // MPI's control communicator (distributed/world.h)
  if (chosen.empty()) return 0;
  CheckpointInfo info;
  try {
    info = verify_checkpoint(chosen);
  } catch (const std::exception& e) {
    throw std::runtime_error(fmt::format("rank {} cannot read the checkpoint rank 0 chose: {} (is run.dir on a file system that "
                                         "every rank sees?)", opt_.rank, e.what()));
  }
  if (!is_main()) check_resume_config(recipe_, Config::parse(read_checkpoint_file(info, "config.toml"), chosen + "/config.toml"), chosen);
  restore(info);
  last_saved_ = info.step;
  if (is_main()) trim_metrics(recipe_.run.dir + "/metrics.jsonl", info.step);
  return info.step;
}

void CheckpointCoordinator::restore(const CheckpointInfo& c) {
  const std::string state_path = c.path + "/state.json";
  Json st = parse_json(read_checkpoint_file(c, "state.json"), state_path);
  if (!st.get("format") || st.get("format")->str != kStateFormat || st.at("version", state_path).integer != kStateVersion)
    throw std::runtime_error(fmt::format("{}: not a {} file of version {}", state_path, kStateFormat, kStateVersion));
  const int64_t step = st.at("step", state_path).integer;
  if (step != c.step) throw std::runtime_error(fmt::format("{}: step {} but the checkpoint is of step {}", state_path, step, c.step));
  if (st.at("global_batch", state_path).integer != recipe_.train.batch)
    throw std::runtime_error(fmt::format("{}: global batch {}, this run {}", state_path, st.at("global_batch", state_path).integer,
                                         recipe_.train.batch));
  const int64_t saved_world = st.at("world_size", state_path).integer;

  // Every part restores itself, in the order they were added (model, EMAs, optimizer, data, loss scaler).
  class Reader : public StateReader {
   public:
    Reader(const CheckpointInfo& c, const Json& st) : c_(c), st_(st) {}
    bool has(const std::string& file) const override { return c_.has(file); }
    TensorFile read(const std::string& file) const override { return read_checkpoint_tensors(c_, file); }
    const Json& state() const override { return st_; }
    const std::string& origin() const override { return c_.path; }

   private:
    const CheckpointInfo& c_;
    const Json& st_;
  } reader(c, st);
  for (auto& [name, part] : state_.parts()) part->restore(reader);

  if (is_main() && !opt_.quiet) {
    fmt::print("resuming from {} (step {}, {} images seen)\n", c.path, step, st.at("images_seen", state_path).integer);
    if (saved_world != opt_.world)
      fmt::print("note: the checkpoint was written by {} rank(s), this run has {}; the global batch ({}) is unchanged, so the data "
                 "stream, noise and curriculum continue exactly, while per-rank dropout is re-derived from (seed, step, rank): the "
                 "continuation equals a {}-rank run, not bitwise the {}-rank one\n",
                 saved_world, opt_.world, recipe_.train.batch, opt_.world, saved_world);
    std::fflush(stdout);
  }
}

}  // namespace cm
