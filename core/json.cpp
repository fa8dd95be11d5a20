// Small JSON reader (see json.h).
#include "core/json.h"

#include <cctype>
#include <cerrno>
#include <climits>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <fmt/format.h>
#include <stdexcept>

namespace cm {

const Json* Json::get(const std::string& key) const {
  for (auto& [k, v] : obj)
    if (k == key) return &v;
  return nullptr;
}

const Json& Json::at(const std::string& key, const std::string& origin) const {
  const Json* j = get(key);
  if (!j) throw std::runtime_error(fmt::format("{}: missing key \"{}\"", origin, key));
  return *j;
}

std::string json_escape(const std::string& s) {
  std::string o;
  for (char c : s) {
    if (c == '"' || c == '\\') o += '\\', o += c;
    else if (c == '\n') o += "\\n";
    else if (static_cast<unsigned char>(c) < 0x20) o += fmt::format("\\u{:04x}", static_cast<int>(c));
    else o += c;
  }
  return o;
}

namespace {
class Parser {
 public:
  Parser(const std::string& s, const std::string& origin) : s_(s), origin_(origin) {}
  Json parse() {
    Json j = value();
    ws();
    if (i_ != s_.size()) fail("trailing characters");
    return j;
  }

 private:
  [[noreturn]] void fail(const std::string& what) {
    throw std::runtime_error(fmt::format("{}: malformed JSON at byte {}: {}", origin_, i_, what));
  }
  void ws() {
    while (i_ < s_.size() && std::isspace(static_cast<unsigned char>(s_[i_]))) ++i_;
  }
  char peek() {
    ws();
    if (i_ >= s_.size()) fail("unexpected end");
    return s_[i_];
  }
  void expect(char c) {
    if (peek() != c) fail(fmt::format("expected '{}'", c));
    ++i_;
  }
  bool literal(const char* w) {
    size_t n = std::char_traits<char>::length(w);
    if (s_.compare(i_, n, w) == 0) return i_ += n, true;
    return false;
  }
  std::string string() {
    expect('"');
    std::string out;
    while (true) {
      if (i_ >= s_.size()) fail("unterminated string");
      char c = s_[i_++];
      if (c == '"') break;
      if (c != '\\') {
        out += c;
        continue;
      }
      if (i_ >= s_.size()) fail("bad escape");
      char e = s_[i_++];
      switch (e) {
        case 'n': out += '\n'; break;
        case 't': out += '\t'; break;
        case 'r': out += '\r'; break;
        case 'b': out += '\b'; break;
        case 'f': out += '\f'; break;
        case 'u': {
          if (i_ + 4 > s_.size()) fail("bad \\u escape");
          unsigned cp = 0;
          for (int k = 0; k < 4; ++k) {
            const char h = s_[i_ + k];
            cp <<= 4;
            if (h >= '0' && h <= '9') cp |= static_cast<unsigned>(h - '0');
            else if (h >= 'a' && h <= 'f') cp |= static_cast<unsigned>(h - 'a' + 10);
            else if (h >= 'A' && h <= 'F') cp |= static_cast<unsigned>(h - 'A' + 10);
            else fail("bad \\u escape (4 hex digits expected)");
          }
          i_ += 4;
          if (cp < 0x80) out += static_cast<char>(cp);
          else if (cp < 0x800) out += static_cast<char>(0xC0 | (cp >> 6)), out += static_cast<char>(0x80 | (cp & 0x3F));
          else
            out += static_cast<char>(0xE0 | (cp >> 12)), out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F)),
                out += static_cast<char>(0x80 | (cp & 0x3F));
          break;
        }
        default: out += e;
      }
    }
    return out;
  }
  // Nesting limit: the parser recurses once per array/object level, so hostile input nested
  // thousands deep must be an error, not a stack overflow.
  static constexpr int kMaxDepth = 512;
  struct DepthGuard {
    int& d;
    explicit DepthGuard(int& depth) : d(depth) { ++d; }
    ~DepthGuard() { --d; }
  };
  Json value() {
    char c = peek();
    Json j;
    if (c == '{' || c == '[') {
      if (depth_ >= kMaxDepth) fail(fmt::format("nesting deeper than {} levels", kMaxDepth));
    }
    DepthGuard guard(depth_);
    if (c == '{') {
      j.kind = Json::Obj;
      ++i_;
      if (peek() == '}') return ++i_, j;
      while (true) {
        std::string k = string();
        expect(':');
        j.obj.emplace_back(k, value());
        if (peek() == ',') {
          ++i_;
          continue;
        }
        expect('}');
        return j;
      }
    }
    if (c == '[') {
      j.kind = Json::Arr;
      ++i_;
      if (peek() == ']') return ++i_, j;
      while (true) {
        j.arr.push_back(value());
        if (peek() == ',') {
          ++i_;
          continue;
        }
        expect(']');
        return j;
      }
    }
    if (c == '"') {
      j.kind = Json::Str;
      j.str = string();
      return j;
    }
    if (literal("true")) return j.kind = Json::Bool, j.b = true, j;
    if (literal("false")) return j.kind = Json::Bool, j;
    if (literal("null")) return j;
    if (c == '-' || std::isdigit(static_cast<unsigned char>(c))) {
      size_t start = i_;
      bool integral = true;
      while (i_ < s_.size() && (std::isdigit(static_cast<unsigned char>(s_[i_])) || std::strchr("+-.eE", s_[i_]))) {
        if (std::strchr(".eE", s_[i_])) integral = false;
        ++i_;
      }
      const std::string t = s_.substr(start, i_ - start);
      j.kind = Json::Num;
      // Parsed without exceptions (std::stod/stoll would report only "stod"/"stoll").
      char* end = nullptr;
      errno = 0;
      j.num = std::strtod(t.c_str(), &end);
      if (t.empty() || end != t.c_str() + t.size() || errno == ERANGE || !std::isfinite(j.num))
        fail("bad number '" + t.substr(0, 40) + "'");
      if (integral) {
        errno = 0;
        end = nullptr;
        long long v = std::strtoll(t.c_str(), &end, 10);
        if (end != t.c_str() + t.size() || errno == ERANGE) fail("integer out of range '" + t.substr(0, 40) + "'");
        j.integer = v;
      } else {
        // Saturate instead of an out-of-range (undefined) float-to-int conversion.
        j.integer = j.num >= 9.2e18 ? INT64_MAX : j.num <= -9.2e18 ? INT64_MIN : static_cast<int64_t>(j.num);
      }
      return j;
    }
    fail(fmt::format("unexpected character '{}'", c));
  }
  const std::string& s_;
  std::string origin_;
  size_t i_ = 0;
  int depth_ = 0;
};
}  // namespace

Json parse_json(const std::string& text, const std::string& origin) { return Parser(text, origin).parse(); }

}  // namespace cm
