// Chrome-trace timeline (see timeline.h).
#include "distributed/timeline.h"

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <fmt/format.h>
#include "core/io/json.h"  // json_escape
#include "distributed/check.h"

namespace cm::dist {

Timeline::Timeline(std::string path, int rank) : path_(std::move(path)), rank_(rank) {
  tid_locked();  // the constructing thread is tid 0, "main"
}

Timeline::~Timeline() {
  if (!enabled()) return;
  try {
    write();
  } catch (const std::exception& e) {
    std::fprintf(stderr, "cm: timeline: %s\n", e.what());
  }
}

int64_t Timeline::now_us() {
  return std::chrono::duration_cast<std::chrono::microseconds>(std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

int Timeline::tid_locked() {
  auto [it, inserted] = tids_.try_emplace(std::this_thread::get_id(), static_cast<int>(tids_.size()));
  if (inserted) thread_names_.try_emplace(it->second, it->second == 0 ? "main" : fmt::format("thread {}", it->second));
  return it->second;
}

void Timeline::add(const std::string& name, const std::string& category, int64_t start_us, int64_t end_us,
                   const std::string& args_json) {
  if (!enabled()) return;
  std::lock_guard<std::mutex> lk(mu_);
  events_.push_back(Event{name, category, args_json, start_us, end_us - start_us, tid_locked()});
}

void Timeline::name_thread(const std::string& name) {
  if (!enabled()) return;
  std::lock_guard<std::mutex> lk(mu_);
  thread_names_[tid_locked()] = name;
}

size_t Timeline::events() const {
  std::lock_guard<std::mutex> lk(mu_);
  return events_.size();
}

std::vector<Timeline::Event> Timeline::snapshot() const {
  std::lock_guard<std::mutex> lk(mu_);
  return events_;
}

void Timeline::write() const {
  if (!enabled()) return;
  std::string out = "{\"traceEvents\": [\n";
  {
    std::lock_guard<std::mutex> lk(mu_);
    out += fmt::format("{{\"name\": \"process_name\", \"ph\": \"M\", \"pid\": {0}, \"tid\": 0, "
                       "\"args\": {{\"name\": \"rank {0}\"}}}}", rank_);
    for (auto& [tid, name] : thread_names_)
      out += fmt::format(",\n{{\"name\": \"thread_name\", \"ph\": \"M\", \"pid\": {}, \"tid\": {}, "
                         "\"args\": {{\"name\": \"{}\"}}}}", rank_, tid, json_escape(name));
    for (auto& e : events_)
      out += fmt::format(",\n{{\"name\": \"{}\", \"cat\": \"{}\", \"ph\": \"X\", \"ts\": {}, \"dur\": {}, "
                         "\"pid\": {}, \"tid\": {}, \"args\": {{{}}}}}",
                         json_escape(e.name), json_escape(e.category), e.ts, e.dur, rank_, e.tid, e.args);
  }
  out += "\n]}\n";
  const std::string tmp = path_ + ".tmp";
  {
    std::ofstream f(tmp, std::ios::binary | std::ios::trunc);
    if (!f) throw DistError(fmt::format("{}: cannot write timeline '{}' (does the directory exist?)", rank_tag(), tmp));
    f << out;
    f.flush();
    if (!f) throw DistError(fmt::format("{}: writing timeline '{}' failed (disk full?)", rank_tag(), tmp));
  }
  std::error_code ec;
  std::filesystem::rename(tmp, path_, ec);
  if (ec) throw DistError(fmt::format("{}: renaming '{}' to '{}' failed: {}", rank_tag(), tmp, path_, ec.message()));
}

Timeline::Scope::Scope(Timeline* tl, std::string name, std::string category)
    : tl_(tl), name_(std::move(name)), category_(std::move(category)), start_(tl ? now_us() : 0) {}

Timeline::Scope::Scope(Scope&& o) noexcept
    : tl_(o.tl_), name_(std::move(o.name_)), category_(std::move(o.category_)), start_(o.start_) {
  o.tl_ = nullptr;
}

Timeline::Scope::~Scope() {
  if (tl_) tl_->add(name_, category_, start_, now_us());
}

}  // namespace cm::dist
