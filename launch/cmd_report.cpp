// `cm report RUN_DIR`: one self-contained HTML page of a run - what was trained, its loss, FID and
// throughput curves, and its sample pictures over time - viewable with no network and no other files.
#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fmt/format.h>
#include <fstream>
#include <map>
#include <set>
#include "core/io/json.h"
#include "core/io/safetensors.h"  // read_file, write_file_atomic
#include "launch/command.h"

namespace fs = std::filesystem;

namespace cm::cli {
namespace {

const char* kHelp = R"(Usage: cm report RUN_DIR [--out FILE] [--max-pictures N]

Writes RUN_DIR/report.html (or FILE): one page with everything inside it - charts are inline SVG, pictures
are embedded PNGs, no scripts or fonts are fetched - so it can be copied off the cluster and opened anywhere:
  - the run: recipe, status (finished, or the last logged step), final figures (final.json), source
    revision, world size, device, host, committed checkpoints
  - curves from metrics.jsonl: training loss, FID against training images (when [eval] was on; the recipe's
    sampling and one step),
    throughput in images/s, the schedule's quantities (N, mu, ...), and with mixed precision the loss scale
    and the skipped (non-finite) steps
  - sample pictures over time (samples/step_*.png; at most --max-pictures, default 12, evenly spaced,
    always with the last) and the final samples.png
  - the resolved config.toml and the command-line overrides
It reads the run directory only, so it works on a run in progress (rerun it to refresh).)";

std::string html_escape(const std::string& s) {
  std::string o;
  o.reserve(s.size());
  for (char c : s) {
    switch (c) {
      case '&': o += "&amp;"; break;
      case '<': o += "&lt;"; break;
      case '>': o += "&gt;"; break;
      case '"': o += "&quot;"; break;
      default: o += c;
    }
  }
  return o;
}

std::string base64(const std::string& in) {
  static const char* t = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
  std::string out;
  out.reserve((in.size() + 2) / 3 * 4);
  size_t i = 0;
  for (; i + 2 < in.size(); i += 3) {
    const uint32_t v = (uint8_t(in[i]) << 16) | (uint8_t(in[i + 1]) << 8) | uint8_t(in[i + 2]);
    out += t[v >> 18], out += t[(v >> 12) & 63], out += t[(v >> 6) & 63], out += t[v & 63];
  }
  if (i + 1 == in.size()) {
    const uint32_t v = uint8_t(in[i]) << 16;
    out += t[v >> 18], out += t[(v >> 12) & 63], out += "==";
  } else if (i + 2 == in.size()) {
    const uint32_t v = (uint8_t(in[i]) << 16) | (uint8_t(in[i + 1]) << 8);
    out += t[v >> 18], out += t[(v >> 12) & 63], out += t[(v >> 6) & 63], out += '=';
  }
  return out;
}

std::string fmt_num(double v) {
  if (v == 0) return "0";
  const double a = std::abs(v);
  if (a >= 1e5 || a < 1e-3) return fmt::format("{:.3g}", v);
  return fmt::format("{:.6g}", v);
}

// Axis ticks at 1, 2, 5 x 10^k covering [lo, hi].
std::vector<double> nice_ticks(double lo, double hi, int target = 5) {
  if (!(hi > lo)) return {lo};
  const double raw = (hi - lo) / target, mag = std::pow(10.0, std::floor(std::log10(raw)));
  double step = mag;
  for (double m : {1.0, 2.0, 5.0, 10.0})
    if (m * mag >= raw) {
      step = m * mag;
      break;
    }
  std::vector<double> t;
  for (double v = std::ceil(lo / step) * step; v <= hi + step * 1e-9; v += step) t.push_back(std::abs(v) < step * 1e-9 ? 0 : v);
  return t;
}

using Series = std::vector<std::pair<double, double>>;

// A line chart as inline SVG; log_y when the values span more than a decade and are all positive.
std::string svg_chart(const std::string& title, const std::string& xlabel, const Series& pts, bool allow_log) {
  const int W = 640, H = 300, L = 70, R = 20, T = 30, B = 45;
  std::string s = fmt::format("<svg class=\"chart\" xmlns=\"http://www.w3.org/2000/svg\" width=\"{}\" height=\"{}\" viewBox=\"0 0 {} {}\" "
                              "data-points=\"{}\" role=\"img\" aria-label=\"{}\">",
                              W, H, W, H, pts.size(), html_escape(title));
  s += fmt::format("<rect x=\"0\" y=\"0\" width=\"{}\" height=\"{}\" fill=\"#fff\"/>", W, H);
  s += fmt::format("<text x=\"{}\" y=\"18\" font-size=\"14\" font-weight=\"bold\">{}</text>", L, html_escape(title));
  double x0 = 1e300, x1 = -1e300, y0 = 1e300, y1 = -1e300;
  for (auto& [x, y] : pts) x0 = std::min(x0, x), x1 = std::max(x1, x), y0 = std::min(y0, y), y1 = std::max(y1, y);
  const bool logy = allow_log && y0 > 0 && y1 / y0 > 10;
  auto fy = [&](double y) { return logy ? std::log10(y) : y; };
  double ly0 = fy(y0), ly1 = fy(y1);
  if (ly1 - ly0 < 1e-12) {  // a constant: centred in a range of its own size (or +-1 around 0)
    const double half = std::max(0.5 * std::abs(ly0), logy ? 0.5 : 1.0);
    ly0 -= half, ly1 += half;
  }
  if (x1 - x0 < 1e-12) x0 -= 0.5, x1 += 0.5;
  const double pad = (ly1 - ly0) * 0.05;
  ly0 -= pad, ly1 += pad;
  auto px = [&](double x) { return L + (x - x0) / (x1 - x0) * (W - L - R); };
  auto py = [&](double y) { return T + (ly1 - fy(y)) / (ly1 - ly0) * (H - T - B); };
  // Grid and ticks.
  std::vector<double> yt;
  if (logy) {
    for (double e = std::floor(ly0); e <= std::ceil(ly1); e += 1)
      if (e >= ly0 && e <= ly1) yt.push_back(std::pow(10.0, e));
    if (yt.size() < 2)
      for (double v : nice_ticks(y0, y1)) yt.push_back(v);
  } else {
    yt = nice_ticks(ly0, ly1);
  }
  for (double v : yt) {
    if (v <= 0 && logy) continue;
    const double y = py(v);
    if (y < T - 1 || y > H - B + 1) continue;
    s += fmt::format("<line x1=\"{}\" y1=\"{:.1f}\" x2=\"{}\" y2=\"{:.1f}\" stroke=\"#e3e3e3\"/>", L, y, W - R, y);
    s += fmt::format("<text x=\"{}\" y=\"{:.1f}\" font-size=\"11\" text-anchor=\"end\">{}</text>", L - 6, y + 4, fmt_num(v));
  }
  for (double v : nice_ticks(x0, x1, 6)) {
    const double x = px(v);
    s += fmt::format("<line x1=\"{:.1f}\" y1=\"{}\" x2=\"{:.1f}\" y2=\"{}\" stroke=\"#e3e3e3\"/>", x, T, x, H - B);
    s += fmt::format("<text x=\"{:.1f}\" y=\"{}\" font-size=\"11\" text-anchor=\"middle\">{}</text>", x, H - B + 16, fmt_num(v));
  }
  s += fmt::format("<rect x=\"{}\" y=\"{}\" width=\"{}\" height=\"{}\" fill=\"none\" stroke=\"#888\"/>", L, T, W - L - R, H - T - B);
  s += fmt::format("<text x=\"{}\" y=\"{}\" font-size=\"12\" text-anchor=\"middle\">{}{}</text>", (L + W - R) / 2, H - 8, html_escape(xlabel),
                   logy ? " (log scale values)" : "");
  std::string poly;
  for (auto& [x, y] : pts) poly += fmt::format("{:.1f},{:.1f} ", px(x), py(y));
  s += fmt::format("<polyline fill=\"none\" stroke=\"#1f5fbf\" stroke-width=\"1.8\" points=\"{}\"/>", poly);
  if (pts.size() <= 60)
    for (auto& [x, y] : pts) s += fmt::format("<circle cx=\"{:.1f}\" cy=\"{:.1f}\" r=\"2.5\" fill=\"#1f5fbf\"><title>{}: {}</title></circle>", px(x), py(y), fmt_num(x), fmt_num(y));
  s += "</svg>";
  return s;
}

struct Metrics {
  std::map<std::string, Series> by_step;  // key -> (step, value) from the loss lines
  Series fid, fid_1step;                   // (images seen, FID) with sample.ts, and one step
  std::string fid_name = "FID";            // or FD_fmnist (eval.feature_net = "fmnist": key fd_fmnist)
  int64_t last_step = 0;
  int skipped = 0;  // lines that do not parse (a run killed mid-write)
};

Metrics read_metrics(const std::string& path) {
  Metrics m;
  std::ifstream in(path);
  for (std::string line; std::getline(in, line);) {
    if (line.empty()) continue;
    Json j;
    try {
      j = parse_json(line, path);
    } catch (const std::exception&) {
      ++m.skipped;
      continue;
    }
    const Json* step = j.get("step");
    if (!step || step->kind != Json::Num) continue;
    m.last_step = std::max(m.last_step, step->integer);
    const bool fd = j.get("fd_fmnist") != nullptr;
    if (const Json* f = j.get(fd ? "fd_fmnist" : "fid"); f && f->kind == Json::Num) {
      const Json* seen = j.get("images_seen");
      const double x = seen && seen->kind == Json::Num ? seen->num : step->num;
      m.fid.emplace_back(x, f->num);
      if (fd) m.fid_name = "FD_fmnist";
      if (const Json* f1 = j.get(fd ? "fd_fmnist_1step" : "fid_1step"); f1 && f1->kind == Json::Num) m.fid_1step.emplace_back(x, f1->num);
      continue;
    }
    for (auto& [k, v] : j.obj)
      if (k != "step" && k != "images_seen" && k != "elapsed_s" && v.kind == Json::Num) m.by_step[k].emplace_back(step->num, v.num);
  }
  return m;
}

std::string kv_table(const Json& j) {
  std::string s = "<table class=\"kv\">";
  for (auto& [k, v] : j.obj) {
    std::string val;
    switch (v.kind) {
      case Json::Num: val = v.num == static_cast<double>(v.integer) ? std::to_string(v.integer) : fmt_num(v.num); break;
      case Json::Str: val = v.str; break;
      case Json::Bool: val = v.b ? "true" : "false"; break;
      case Json::Null: val = "null"; break;
      default: val = "..."; break;
    }
    s += fmt::format("<tr><th>{}</th><td>{}</td></tr>", html_escape(k), html_escape(val));
  }
  return s + "</table>";
}

Json read_json_or_empty(const std::string& path) {
  if (!fs::exists(path)) return Json{};
  try {
    return parse_json(read_file(path), path);
  } catch (const std::exception&) {
    return Json{};
  }
}

std::string picture(const fs::path& png, const std::string& caption) {
  return fmt::format("<figure><img alt=\"{0}\" title=\"{0}\" src=\"data:image/png;base64,{1}\"><figcaption>{0}</figcaption></figure>",
                     html_escape(caption), base64(read_file(png.string())));
}

// The title, the status line, the final figures, meta.json and the committed checkpoints.
std::string run_section(const fs::path& dir, const std::string& recipe, const Json& meta, const Json& final_json, const Metrics& m) {
  std::string body;
  body += fmt::format("<h1>cm run: {}</h1>", html_escape(recipe));
  const bool finished = final_json.kind == Json::Obj;
  body += fmt::format("<p class=\"status\">{} &middot; directory <code>{}</code></p>",
                      finished ? "finished" : fmt::format("in progress or stopped: last logged step {}", m.last_step),
                      html_escape(fs::absolute(dir).string()));
  body += "<div class=\"cols\">";
  if (finished) body += "<div><h2>Result</h2>" + kv_table(final_json) + "</div>";
  if (meta.kind == Json::Obj) body += "<div><h2>Run</h2>" + kv_table(meta) + "</div>";
  std::vector<std::string> ckpts;
  if (fs::is_directory(dir / "checkpoints"))
    for (auto& e : fs::directory_iterator(dir / "checkpoints"))
      if (e.is_directory() && e.path().filename().string().rfind("step_", 0) == 0) ckpts.push_back(e.path().filename().string());
  std::sort(ckpts.begin(), ckpts.end());
  if (!ckpts.empty()) {
    body += "<div><h2>Checkpoints</h2><ul>";
    for (auto& c : ckpts) body += "<li><code>" + html_escape(c) + "</code></li>";
    body += "</ul></div>";
  }
  body += "</div>";
  return body;
}

// The charts of metrics.jsonl; `charts` counts them.
std::string curves_section(const Metrics& m, int& charts) {
  std::string body = "<h2>Curves</h2><div class=\"charts\">";
  charts = 0;
  auto chart = [&](const std::string& title, const std::string& xlabel, const Series& s, bool log) {
    if (s.empty()) return;
    body += svg_chart(title, xlabel, s, log);
    ++charts;
  };
  if (auto it = m.by_step.find("loss"); it != m.by_step.end()) chart("training loss", "step", it->second, true);
  if (!m.fid.empty()) chart(m.fid_name + " (in-training, [eval], sample.ts)", "training images seen", m.fid, true);
  if (!m.fid_1step.empty()) chart(m.fid_name + ", one step (in-training)", "training images seen", m.fid_1step, true);
  if (auto it = m.by_step.find("images_per_sec"); it != m.by_step.end()) chart("throughput (images/s)", "step", it->second, false);
  // Mixed precision and non-finite steps (core/precision.h): the loss scale (log axis) and the skipped-step count.
  if (auto it = m.by_step.find("loss_scale"); it != m.by_step.end()) chart("loss scale (fp16)", "step", it->second, true);
  if (auto it = m.by_step.find("skipped_steps"); it != m.by_step.end()) chart("skipped steps (non-finite), total", "step", it->second, false);
  for (auto& [k, s] : m.by_step)
    if (k != "loss" && k != "images_per_sec" && k != "loss_scale" && k != "skipped_steps") chart("schedule: " + k, "step", s, false);
  body += "</div>";
  if (charts == 0) body += "<p>No metrics logged yet (metrics.jsonl is empty or missing).</p>";
  if (m.fid.empty()) body += "<p class=\"note\">No FID during training: set <code>eval.every_images</code> (see <code>cm eval --help</code>).</p>";
  if (m.skipped) body += fmt::format("<p class=\"note\">{} line(s) of metrics.jsonl did not parse and were skipped.</p>", m.skipped);
  return body;
}

using Pictures = std::vector<std::pair<int64_t, fs::path>>;  // (step, samples/step_*.png)

Pictures sample_pictures(const fs::path& dir) {
  Pictures pics;
  if (fs::is_directory(dir / "samples"))
    for (auto& e : fs::directory_iterator(dir / "samples")) {
      const std::string n = e.path().filename().string();
      if (n.rfind("step_", 0) == 0 && e.path().extension() == ".png") {
        try {
          pics.emplace_back(std::stoll(n.substr(5)), e.path());
        } catch (...) {
        }
      }
    }
  std::sort(pics.begin(), pics.end());
  return pics;
}

// At most `max_pictures`, evenly spaced, always with the first and the last.
Pictures evenly_spaced(const Pictures& pics, int64_t max_pictures) {
  if (static_cast<int64_t>(pics.size()) <= max_pictures) return pics;
  std::set<size_t> idx;
  for (int64_t i = 0; i < max_pictures; ++i)
    idx.insert(static_cast<size_t>(std::llround(static_cast<double>(i) * (pics.size() - 1) / std::max<int64_t>(1, max_pictures - 1))));
  Pictures shown;
  for (size_t i : idx) shown.push_back(pics[i]);
  return shown;
}

// The sample pictures over time and the final samples.png; `pictures` counts those shown.
std::string pictures_section(const fs::path& dir, int64_t max_pictures, size_t& pictures) {
  const Pictures pics = sample_pictures(dir);
  const Pictures shown = evenly_spaced(pics, max_pictures);
  const bool final_png = fs::exists(dir / "samples.png");
  std::string body = "<h2>Samples over time</h2>";
  if (shown.empty() && !final_png) body += "<p>No sample pictures yet.</p>";
  body += "<p class=\"note\">Fixed noise for every picture; one step on the left, the recipe's multistep sampling on the right.</p><div class=\"pics\">";
  for (auto& [step, path] : shown) body += picture(path, fmt::format("step {}", step));
  if (final_png) body += picture(dir / "samples.png", "final samples.png");
  body += "</div>";
  if (pics.size() > shown.size()) body += fmt::format("<p class=\"note\">{} of {} pictures shown.</p>", shown.size(), pics.size());
  pictures = shown.size() + (final_png ? 1 : 0);
  return body;
}

std::string config_section(const fs::path& dir) {
  std::string body;
  if (fs::exists(dir / "config.toml")) body += "<h2>Config</h2><pre>" + html_escape(read_file((dir / "config.toml").string())) + "</pre>";
  if (fs::exists(dir / "overrides.txt")) {
    const std::string ov = read_file((dir / "overrides.txt").string());
    body += "<h2>Overrides</h2><pre>" + (ov.empty() ? std::string("(none)") : html_escape(ov)) + "</pre>";
  }
  return body;
}

// The whole page around `body`: its style and the script that counts what rendered.
std::string html_page(const std::string& recipe, const std::string& body) {
  const std::string css =
      "body{font-family:sans-serif;margin:24px;color:#222;max-width:1400px}h1{font-size:22px}h2{font-size:17px;margin-top:28px}"
      ".cols{display:flex;gap:32px;flex-wrap:wrap}.kv th{text-align:left;padding-right:14px;font-weight:normal;color:#555}"
      ".charts{display:flex;flex-wrap:wrap;gap:12px}.chart{border:1px solid #ddd}.pics{display:flex;flex-wrap:wrap;gap:14px}"
      "figure{margin:0}figure img{image-rendering:pixelated;max-width:640px;border:1px solid #ddd}figcaption{font-size:12px;color:#555}"
      "pre{background:#f6f6f6;padding:10px;overflow:auto;font-size:12px}.note{color:#666;font-size:13px}";
  // After load: any picture that did not decode is reported on the console; the counts go on <body> for tests.
  const std::string js =
      "window.addEventListener('load',function(){var ok=0;for(var i=0;i<document.images.length;i++){var im=document.images[i];"
      "if(im.complete&&im.naturalWidth>0)ok++;else console.error('picture did not decode: '+im.alt);}"
      "document.body.setAttribute('data-pictures',ok);"
      "document.body.setAttribute('data-charts',document.querySelectorAll('svg.chart polyline').length);});";
  return fmt::format(
      "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>cm run {}</title><style>{}</style></head>\n<body>{}\n"
      "<script>{}</script></body></html>\n",
      html_escape(recipe), css, body, js);
}

int run(const std::vector<std::string>& argv) {
  if (wants_help(argv, kHelp)) return 0;
  Args args(argv, {});
  args.check_known({"out", "max-pictures"});
  const auto plain = args.plain();
  if (plain.size() != 1) throw std::invalid_argument("expected exactly one RUN_DIR (see `cm report --help`)");
  const fs::path dir = plain[0];
  if (!fs::is_directory(dir)) throw std::invalid_argument(fmt::format("{}: not a directory", dir.string()));
  if (!fs::exists(dir / "config.toml") && !fs::exists(dir / "metrics.jsonl"))
    throw std::invalid_argument(fmt::format("{}: no config.toml or metrics.jsonl; not a run directory of cm train", dir.string()));
  const int64_t max_pictures = std::max<int64_t>(1, args.int_or("max-pictures", 12));

  const Json meta = read_json_or_empty((dir / "meta.json").string());
  const Json final_json = read_json_or_empty((dir / "final.json").string());
  const Metrics m = fs::exists(dir / "metrics.jsonl") ? read_metrics((dir / "metrics.jsonl").string()) : Metrics{};
  std::string recipe = dir.filename().string();
  if (const Json* r = meta.get("recipe"); r && r->kind == Json::Str) recipe = r->str;

  int charts = 0;
  size_t pictures = 0;
  std::string body = run_section(dir, recipe, meta, final_json, m);
  body += curves_section(m, charts);
  body += pictures_section(dir, max_pictures, pictures);
  body += config_section(dir);
  const std::string html = html_page(recipe, body);
  const std::string out = args.opt_or("out", (dir / "report.html").string());
  write_file_atomic(out, html);
  fmt::print("wrote {} ({} charts, {} pictures, {:.1f} MB)\n", out, charts, pictures, static_cast<double>(html.size()) / 1e6);
  return 0;
}

CommandRegistration reg({"report", "one self-contained HTML page of a run (curves, pictures, config)", kHelp, run});

}  // namespace
}  // namespace cm::cli
