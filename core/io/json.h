// JSON of the project's metadata files (safetensors headers, dataset manifests, checkpoint markers):
// read with nlohmann/json into this small tree (objects keep their members in file order), and escaped
// for writing with it too (core/io/json.cpp).
#pragma once
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

namespace cm {

struct Json {
  enum Kind { Null, Bool, Num, Str, Arr, Obj } kind = Null;
  bool b = false;
  double num = 0;      // numbers as double ...
  int64_t integer = 0; // ... and, when integral, exactly as int64
  std::string str;
  std::vector<Json> arr;
  std::vector<std::pair<std::string, Json>> obj;

  const Json* get(const std::string& key) const;  // object member or nullptr
  // Typed access to a member; throws naming `origin` and the key when absent or of another kind.
  const Json& at(const std::string& key, const std::string& origin) const;
};

// Throws std::runtime_error naming `origin` and the byte offset on malformed input.
Json parse_json(const std::string& text, const std::string& origin);
std::string json_escape(const std::string& s);

}  // namespace cm
