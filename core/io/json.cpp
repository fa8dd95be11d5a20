// JSON reading and escaping (see json.h) on nlohmann/json (Debian nlohmann-json3-dev). Its SAX parser
// builds cm::Json directly: the parser is iterative, so the nesting limit below is ours, counted in the
// handler, and a hostile file nested thousands deep is a clean error, not a stack overflow. What stays
// here is only the mapping of nlohmann's events and errors to cm::Json and to this project's messages.
#include "core/io/json.h"

#include <cmath>
#include <cstdint>
#include <fmt/format.h>
#include <iterator>
#include <nlohmann/json.hpp>
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
  // nlohmann writes "\"...\"": drop the quotes. Bytes that are not UTF-8 become U+FFFD, so that what we
  // write is always JSON that a strict reader (ours included) reads back.
  const std::string quoted = nlohmann::json(s).dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
  return quoted.substr(1, quoted.size() - 2);
}

namespace {

// A char iterator that records how far the parser has read, so that errors found in the handler (nesting,
// integer range) name their byte offset like nlohmann's own errors do.
struct CountingIter {
  using iterator_category = std::input_iterator_tag;
  using value_type = char;
  using difference_type = std::ptrdiff_t;
  using pointer = const char*;
  using reference = const char&;
  const char* p = nullptr;
  const char** seen = nullptr;
  reference operator*() const { return *p; }
  CountingIter& operator++() {
    *seen = ++p;
    return *this;
  }
  bool operator==(const CountingIter& o) const { return p == o.p; }
  bool operator!=(const CountingIter& o) const { return p != o.p; }
};

// Text of the number the parser stopped in or just after ("1-2", "-", "1e999"), or "" when it stopped
// elsewhere: such errors keep the reader's old wording, "bad number '...'".
std::string number_around(const std::string& s, size_t at) {
  auto numeric = [](char c) { return (c >= '0' && c <= '9') || c == '-' || c == '+' || c == '.' || c == 'e' || c == 'E'; };
  at = std::min(at, s.size());
  size_t b = at, e = at;
  while (b > 0 && numeric(s[b - 1])) --b;
  while (e < s.size() && numeric(s[e])) ++e;
  if (b == e || !(s[b] == '-' || (s[b] >= '0' && s[b] <= '9'))) return "";
  return s.substr(b, std::min<size_t>(e - b, 40));
}

class Builder : public nlohmann::json_sax<nlohmann::json> {
 public:
  static constexpr int kMaxDepth = 512;

  Builder(const std::string& text, const std::string& origin) : s_(text), origin_(origin), seen_(text.data()) {}

  Json parse() {
    CountingIter first{s_.data(), &seen_}, last{s_.data() + s_.size(), &seen_};
    if (!nlohmann::json::sax_parse(first, last, this, nlohmann::json::input_format_t::json, /*strict=*/true))
      throw std::runtime_error(error_.empty() ? message(offset(), "malformed input") : error_);
    return std::move(root_);
  }

  bool null() override { return put(Json{}); }
  bool boolean(bool v) override {
    Json j;
    j.kind = Json::Bool, j.b = v;
    return put(std::move(j));
  }
  bool number_integer(number_integer_t v) override { return put(integral(v)); }
  bool number_unsigned(number_unsigned_t v) override {
    if (v > uint64_t(INT64_MAX)) return fail(offset(), fmt::format("integer out of range '{}'", v));
    return put(integral(int64_t(v)));
  }
  bool number_float(number_float_t v, const string_t& text) override {
    // nlohmann hands integers beyond 64 bits over as floats: the old reader refused those.
    if (text.find_first_of(".eE") == std::string::npos)
      return fail(offset(), "integer out of range '" + text.substr(0, 40) + "'");
    if (!std::isfinite(v)) return fail(offset(), "bad number '" + text.substr(0, 40) + "'");
    Json j;
    j.kind = Json::Num, j.num = v;
    // Saturate instead of an out-of-range (undefined) float-to-int conversion.
    j.integer = v >= 9.2e18 ? INT64_MAX : v <= -9.2e18 ? INT64_MIN : static_cast<int64_t>(v);
    return put(std::move(j));
  }
  bool string(string_t& v) override {
    Json j;
    j.kind = Json::Str, j.str = std::move(v);
    return put(std::move(j));
  }
  bool binary(binary_t&) override { return fail(offset(), "binary value"); }
  bool start_object(std::size_t) override { return open(Json::Obj); }
  bool key(string_t& k) override {
    open_.back()->obj.emplace_back(std::move(k), Json{});
    return true;
  }
  bool end_object() override { return close(); }
  bool start_array(std::size_t) override { return open(Json::Arr); }
  bool end_array() override { return close(); }
  bool parse_error(std::size_t byte, const std::string& token, const nlohmann::detail::exception& ex) override {
    const size_t at = byte ? byte - 1 : 0;  // nlohmann counts the characters read, the failing one included
    std::string what = ex.what();
    const size_t col = what.find("column ");
    const size_t colon = col == std::string::npos ? std::string::npos : what.find(": ", col);
    if (colon != std::string::npos) what = what.substr(colon + 2);  // drop "[json.exception...] ... column N: "
    else if (what.rfind("[json.exception.", 0) == 0 && what.find("] ") != std::string::npos) what = what.substr(what.find("] ") + 2);
    const size_t tok_start = at >= token.size() ? at + 1 - token.size() : 0;
    std::string number = number_around(s_, tok_start);
    if (what.find("'\\u' must be followed by 4 hex digits") != std::string::npos)
      what = "bad \\u escape (4 hex digits expected)";
    else if (!number.empty() && (ex.id == 406 || what.find("invalid number") != std::string::npos ||
                                 (tok_start > 0 && number.size() > token.size())))
      what = "bad number '" + number + "'";
    if (what.size() > 200) what = what.substr(0, 200) + "...";
    return fail(at, what);
  }

 private:
  std::string message(size_t at, const std::string& what) const {
    return fmt::format("{}: malformed JSON at byte {}: {}", origin_, at, what);
  }
  bool fail(size_t at, const std::string& what) {
    if (error_.empty()) error_ = message(at, what);
    return false;
  }
  // Offset of the last character the parser read: the one it is looking at.
  size_t offset() const { return seen_ > s_.data() ? size_t(seen_ - s_.data()) - 1 : 0; }
  static Json integral(int64_t v) {
    Json j;
    j.kind = Json::Num, j.num = static_cast<double>(v), j.integer = v;
    return j;
  }
  // Where the next value goes: the root, the open array's new element, or the open object's last key.
  Json* slot() {
    if (open_.empty()) return &root_;
    Json* c = open_.back();
    if (c->kind == Json::Arr) return &c->arr.emplace_back();
    return &c->obj.back().second;
  }
  bool put(Json&& v) {
    *slot() = std::move(v);
    return true;
  }
  bool open(Json::Kind k) {
    if (int(open_.size()) >= kMaxDepth) return fail(offset(), fmt::format("nesting deeper than {} levels", kMaxDepth));
    Json* j = slot();
    j->kind = k;
    open_.push_back(j);
    return true;
  }
  bool close() {
    open_.pop_back();
    return true;
  }

  const std::string& s_;
  const std::string& origin_;
  const char* seen_;
  Json root_;
  std::vector<Json*> open_;  // the containers being filled, outermost first
  std::string error_;
};

}  // namespace

Json parse_json(const std::string& text, const std::string& origin) { return Builder(text, origin).parse(); }

}  // namespace cm
