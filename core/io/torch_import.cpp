// PyTorch zip-format .pt reader (see torch_import.h): the zip container through libzip (core/io/zip.h), a
// pickle stack machine, and the storage files. The unpickler is written here because LibTorch 1.13's
// torch::pickle_load aborts on what torch.save writes for a state dict (an OrderedDict), and a hostile
// pickle needs the limits below (stack size, nesting, cycles, storage sizes) anyway.
#include "core/io/torch_import.h"

#include <fmt/format.h>

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <map>
#include <memory>
#include <stdexcept>
#include <unordered_map>
#include <torch/torch.h>
#include "core/io/zip.h"

namespace cm {

namespace {

// ---------------------------------------------------------------------------------------------------
// Zip container: libzip (core/io/zip.h), which checks sizes before allocating and the CRC32 after reading.

uint64_t le(const unsigned char* p, int n) {
  uint64_t v = 0;
  for (int i = n - 1; i >= 0; --i) v = (v << 8) | p[i];
  return v;
}

std::string read_member(const ZipReader& zip, const ZipMember& m) {
  zip.check(m);
  std::string s(m.size, '\0');
  if (!s.empty()) zip.open(m).read(s.data(), s.size());
  return s;
}

// ---------------------------------------------------------------------------------------------------
// Pickle objects

struct PyObj;
using Obj = std::shared_ptr<PyObj>;
struct PyObj {
  enum Kind { None, Bool, Int, Float, Str, Bytes, Tuple, List, Dict, Global, Tensor, Storage, Opaque } kind = None;
  int64_t i = 0;
  double f = 0;
  std::string s;  // Str, Bytes, Global ("module.name"), Opaque (its class), Storage (its key)
  std::vector<Obj> items;                    // Tuple, List
  std::vector<std::pair<Obj, Obj>> entries;  // Dict (in insertion order)
  torch::Tensor tensor;                      // Tensor; Storage (flat, loaded)
};

Obj make(PyObj::Kind k) {
  auto o = std::make_shared<PyObj>();
  o->kind = k;
  return o;
}
Obj make_int(int64_t v) { auto o = make(PyObj::Int); o->i = v; return o; }
Obj make_str(PyObj::Kind k, std::string s) { auto o = make(k); o->s = std::move(s); return o; }

const char* kind_name(PyObj::Kind k) {
  static const char* names[] = {"None", "bool", "int", "float", "str", "bytes", "tuple", "list", "dict",
                                "global", "tensor", "storage", "object"};
  return names[k];
}

struct StorageType {
  const char* name;
  torch::ScalarType dtype;
};
const StorageType kStorageTypes[] = {
    {"FloatStorage", torch::kFloat32}, {"DoubleStorage", torch::kFloat64}, {"HalfStorage", torch::kFloat16},
    {"BFloat16Storage", torch::kBFloat16}, {"LongStorage", torch::kInt64}, {"IntStorage", torch::kInt32},
    {"ShortStorage", torch::kInt16}, {"CharStorage", torch::kInt8}, {"ByteStorage", torch::kUInt8},
    {"BoolStorage", torch::kBool},
};

// ---------------------------------------------------------------------------------------------------
// Pickle machine

class Unpickler {
 public:
  Unpickler(const std::string& data, const ZipReader& zip, std::string archive, std::string origin)
      : d_(data), zip_(zip), archive_(std::move(archive)), origin_(std::move(origin)) {}

  // Containers may reference each other in cycles (a list appended to itself) and nest arbitrarily deep;
  // every one made is kept here so that the destructor can empty them one by one: no shared_ptr cycle
  // leaks and no destructor recursion runs as deep as the nesting.
  ~Unpickler() {
    stack_.clear();
    memo_.clear();
    for (auto& c : containers_) {
      std::vector<Obj> items = std::move(c->items);
      std::vector<std::pair<Obj, Obj>> entries = std::move(c->entries);
      c->items.clear(), c->entries.clear();
    }
  }
  Unpickler(const Unpickler&) = delete;
  Unpickler& operator=(const Unpickler&) = delete;

  Obj run() {
    while (true) {
      if (p_ >= d_.size()) fail("the pickle ends without a STOP opcode");
      op_pos_ = p_;
      op_ = static_cast<unsigned char>(d_[p_++]);
      if (op_ == '.') break;
      step();
    }
    if (stack_.size() != 1) fail(fmt::format("STOP with {} objects on the stack", stack_.size()));
    return stack_.back();
  }

 private:
  [[noreturn]] void fail(const std::string& what) const {
    throw std::runtime_error(fmt::format("{}: cannot read the pickle (data.pkl) at byte {} (opcode 0x{:02x}): {}",
                                         origin_, op_pos_, op_, what));
  }
  const unsigned char* take(size_t n) {
    if (p_ + n > d_.size()) fail("truncated operand");
    auto r = reinterpret_cast<const unsigned char*>(d_.data() + p_);
    p_ += n;
    return r;
  }
  uint64_t take_le(int n) { return le(take(n), n); }
  std::string take_bytes(uint64_t n) {
    if (n > d_.size() - p_) fail("string longer than the pickle");
    std::string s = d_.substr(p_, n);
    p_ += n;
    return s;
  }
  std::string take_line() {
    auto nl = d_.find('\n', p_);
    if (nl == std::string::npos) fail("unterminated text operand");
    std::string s = d_.substr(p_, nl - p_);
    p_ = nl + 1;
    return s;
  }
  Obj pop() {
    if (stack_.empty() || (!marks_.empty() && stack_.size() <= marks_.back())) fail("stack underflow");
    Obj o = stack_.back();
    stack_.pop_back();
    return o;
  }
  Obj& top() {
    if (stack_.empty()) fail("stack underflow");
    return stack_.back();
  }
  std::vector<Obj> pop_mark() {
    if (marks_.empty()) fail("no MARK on the stack");
    const size_t m = marks_.back();
    marks_.pop_back();
    std::vector<Obj> items(stack_.begin() + static_cast<std::ptrdiff_t>(m), stack_.end());
    stack_.resize(m);
    return items;
  }
  void push(Obj o) {
    if (stack_.size() >= kMaxStack) fail(fmt::format("more than {} objects on the stack", kMaxStack));
    stack_.push_back(std::move(o));
  }
  Obj make(PyObj::Kind k) {
    Obj o = cm::make(k);
    if (k == PyObj::Tuple || k == PyObj::List || k == PyObj::Dict) containers_.push_back(o);
    return o;
  }
  // Text operands (INT, LONG, FLOAT, PUT, GET): parsed here so that a bad one is an error naming the file,
  // the byte and the opcode rather than "stoll".
  int64_t text_int(const std::string& s, const char* what) {
    errno = 0;
    char* end = nullptr;
    const long long v = std::strtoll(s.c_str(), &end, 10);
    if (s.empty() || end != s.c_str() + s.size() || errno == ERANGE)
      fail(fmt::format("{} operand '{}' is not a 64-bit integer", what, s.substr(0, 40)));
    return v;
  }
  double text_float(const std::string& s) {
    errno = 0;
    char* end = nullptr;
    const double v = std::strtod(s.c_str(), &end);
    if (s.empty() || end != s.c_str() + s.size()) fail(fmt::format("FLOAT operand '{}' is not a number", s.substr(0, 40)));
    return v;
  }
  uint64_t text_index(const std::string& s, const char* what) {
    const int64_t v = text_int(s, what);
    if (v < 0) fail(fmt::format("{} memo index {} is negative", what, v));
    return static_cast<uint64_t>(v);
  }
  Obj tuple(std::vector<Obj> items) {
    auto t = make(PyObj::Tuple);
    t->items = std::move(items);
    return t;
  }
  void memo_put(uint64_t idx) { memo_[idx] = top(); }
  Obj memo_get(uint64_t idx) {
    auto it = memo_.find(idx);
    if (it == memo_.end()) fail(fmt::format("memo entry {} is not set", idx));
    return it->second;
  }
  void set_items(Obj& dict, const std::vector<Obj>& kv) {
    if (dict->kind != PyObj::Dict) fail(fmt::format("SETITEM(S) on a {}", kind_name(dict->kind)));
    if (kv.size() % 2) fail("SETITEMS with an odd number of items");
    for (size_t i = 0; i < kv.size(); i += 2) {
      bool replaced = false;
      if (kv[i]->kind == PyObj::Str)
        for (auto& e : dict->entries)
          if (e.first->kind == PyObj::Str && e.first->s == kv[i]->s) e.second = kv[i + 1], replaced = true;
      if (!replaced) dict->entries.emplace_back(kv[i], kv[i + 1]);
    }
  }
  void append(Obj& list, const std::vector<Obj>& items) {
    if (list->kind != PyObj::List) fail(fmt::format("APPEND(S) on a {}", kind_name(list->kind)));
    list->items.insert(list->items.end(), items.begin(), items.end());
  }

  // One opcode, dispatched by group; each group says whether the opcode was one of its own.
  void step() {
    if (!step_frame_memo_stack() && !step_number() && !step_string() && !step_container() && !step_object())
      fail("unsupported pickle opcode (the file was not written by torch.save, or by a newer protocol)");
  }

  bool step_frame_memo_stack() {
    switch (op_) {
      case 0x80: take(1); break;  // PROTO
      case 0x95: take(8); break;  // FRAME
      case '(': marks_.push_back(stack_.size()); break;
      case 'q': memo_put(take_le(1)); break;
      case 'r': memo_put(take_le(4)); break;
      case 'p': memo_put(text_index(take_line(), "PUT")); break;
      case 0x94: memo_put(memo_.size()); break;  // MEMOIZE
      case 'h': push(memo_get(take_le(1))); break;
      case 'j': push(memo_get(take_le(4))); break;
      case 'g': push(memo_get(text_index(take_line(), "GET"))); break;
      case '0': pop(); break;
      case '1': pop_mark(); break;
      case '2': push(top()); break;
      default: return false;
    }
    return true;
  }

  bool step_number() {
    switch (op_) {
      case 'N': push(make(PyObj::None)); break;
      case 0x88: case 0x89: { auto b = make(PyObj::Bool); b->i = op_ == 0x88; push(b); break; }
      case 'J': push(make_int(static_cast<int32_t>(take_le(4)))); break;
      case 'K': push(make_int(static_cast<int64_t>(take_le(1)))); break;
      case 'M': push(make_int(static_cast<int64_t>(take_le(2)))); break;
      case 0x8a: case 0x8b: push(long_int(op_ == 0x8a ? take_le(1) : take_le(4))); break;  // LONG1 / LONG4
      case 'I': {                                // INT (text); "00"/"01" are False/True
        std::string s = take_line();
        if (s == "00" || s == "01") { auto b = make(PyObj::Bool); b->i = s == "01"; push(b); break; }
        push(make_int(text_int(s, "INT")));
        break;
      }
      case 'L': { std::string s = take_line(); if (!s.empty() && s.back() == 'L') s.pop_back(); push(make_int(text_int(s, "LONG"))); break; }
      case 'G': {                                // BINFLOAT: big-endian IEEE double
        const unsigned char* b = take(8);
        uint64_t v = 0;
        for (int k = 0; k < 8; ++k) v = (v << 8) | b[k];
        auto o = make(PyObj::Float);
        std::memcpy(&o->f, &v, 8);
        push(o);
        break;
      }
      case 'F': { auto o = make(PyObj::Float); o->f = text_float(take_line()); push(o); break; }
      default: return false;
    }
    return true;
  }

  // LONG1 / LONG4 operand of n bytes: little-endian two's complement.
  Obj long_int(uint64_t n) {
    if (n > 8) {
      take_bytes(n);
      return make_str(PyObj::Opaque, "int (more than 64 bits)");
    }
    const unsigned char* b = take(n);
    uint64_t v = le(b, static_cast<int>(n));
    if (n > 0 && n < 8 && (b[n - 1] & 0x80)) v |= ~uint64_t(0) << (8 * n);
    return make_int(static_cast<int64_t>(v));
  }

  bool step_string() {
    switch (op_) {
      case 'X': push(make_str(PyObj::Str, take_bytes(take_le(4)))); break;
      case 0x8c: push(make_str(PyObj::Str, take_bytes(take_le(1)))); break;
      case 0x8d: push(make_str(PyObj::Str, take_bytes(take_le(8)))); break;
      case 'T': push(make_str(PyObj::Str, take_bytes(take_le(4)))); break;   // BINSTRING (py2 str)
      case 'U': push(make_str(PyObj::Str, take_bytes(take_le(1)))); break;   // SHORT_BINSTRING
      case 'B': push(make_str(PyObj::Bytes, take_bytes(take_le(4)))); break;
      case 'C': push(make_str(PyObj::Bytes, take_bytes(take_le(1)))); break;
      case 0x8e: case 0x96: push(make_str(PyObj::Bytes, take_bytes(take_le(8)))); break;
      default: return false;
    }
    return true;
  }

  bool step_container() {
    switch (op_) {
      case ')': push(make(PyObj::Tuple)); break;
      case 't': push(tuple(pop_mark())); break;
      case 0x85: { auto a = pop(); push(tuple({a})); break; }
      case 0x86: { auto b = pop(), a = pop(); push(tuple({a, b})); break; }
      case 0x87: { auto c = pop(), b = pop(), a = pop(); push(tuple({a, b, c})); break; }
      case ']': case 0x8f: push(make(PyObj::List)); break;                   // EMPTY_LIST, EMPTY_SET
      case 'l': case 0x91: { auto l = make(PyObj::List); l->items = pop_mark(); push(l); break; }  // LIST, FROZENSET
      case 'a': { auto v = pop(); append(top(), {v}); break; }
      case 'e': case 0x90: { auto items = pop_mark(); append(top(), items); break; }  // APPENDS, ADDITEMS
      case '}': push(make(PyObj::Dict)); break;
      case 'd': { auto kv = pop_mark(); auto dict = make(PyObj::Dict); set_items(dict, kv); push(dict); break; }
      case 's': { auto v = pop(), k = pop(); set_items(top(), {k, v}); break; }
      case 'u': { auto kv = pop_mark(); set_items(top(), kv); break; }
      default: return false;
    }
    return true;
  }

  bool step_object() {
    switch (op_) {
      case 'c': {                                                            // GLOBAL "module\nname\n"
        std::string mod = take_line(), name = take_line();
        push(make_str(PyObj::Global, mod + "." + name));
        break;
      }
      case 0x93: {                                                           // STACK_GLOBAL
        auto name = pop(), mod = pop();
        if (name->kind != PyObj::Str || mod->kind != PyObj::Str) fail("STACK_GLOBAL needs two strings");
        push(make_str(PyObj::Global, mod->s + "." + name->s));
        break;
      }
      case 'R': case 0x81: { auto args = pop(), fn = pop(); push(call(fn, args)); break; }  // REDUCE, NEWOBJ
      case 0x92: { pop(); auto args = pop(), fn = pop(); push(call(fn, args)); break; }     // NEWOBJ_EX
      case 'b': pop(); break;  // BUILD: state (e.g. an OrderedDict's _metadata) is not needed for tensors
      case 'Q': { auto pid = pop(); push(persistent_load(pid)); break; }
      case 'P': fail("text persistent ids (PERSID) are not used by torch.save and are not supported");
      default: return false;
    }
    return true;
  }

  Obj call(const Obj& fn, const Obj& args, int depth = 0) {
    if (depth > 8) fail("_rebuild_from_type_v2 nested more than 8 deep (a cyclic or hostile pickle)");
    if (fn->kind != PyObj::Global) return make_str(PyObj::Opaque, fmt::format("result of calling a {}", kind_name(fn->kind)));
    const std::string& g = fn->s;
    const auto& a = args->items;
    if (g == "collections.OrderedDict" || g == "builtins.dict" || g == "__builtin__.dict") {
      auto d = make(PyObj::Dict);
      if (!a.empty() && a[0]->kind == PyObj::List)
        for (auto& kv : a[0]->items)
          if (kv->kind == PyObj::Tuple && kv->items.size() == 2) set_items(d, kv->items);
      return d;
    }
    if (g == "torch._utils._rebuild_tensor_v2" || g == "torch._utils._rebuild_tensor") return rebuild_tensor(a);
    if (g == "torch._utils._rebuild_parameter" || g == "torch._utils._rebuild_parameter_with_state") {
      if (a.empty() || a[0]->kind != PyObj::Tensor) fail(fmt::format("{} without a tensor", g));
      return a[0];
    }
    if (g == "torch._tensor._rebuild_from_type_v2" || g == "torch._tensor._rebuild_from_type") {
      // (func, type, args, state): rebuild with func(*args); the subclass type is dropped.
      if (a.size() < 3) fail(fmt::format("{} with {} arguments", g, a.size()));
      return call(a[0], a[2], depth + 1);
    }
    if (g == "_codecs.encode" && !a.empty() && a[0]->kind == PyObj::Str) return make_str(PyObj::Bytes, latin1(a[0]->s));
    if (g == "builtins.set" || g == "builtins.frozenset" || g == "builtins.list") {
      auto l = make(PyObj::List);
      if (!a.empty()) l->items = a[0]->items;
      return l;
    }
    return make_str(PyObj::Opaque, g);
  }

  // Python str -> bytes via latin-1 (how protocol 2 pickles bytes objects: _codecs.encode(s, "latin1")).
  std::string latin1(const std::string& utf8) {
    std::string out;
    for (size_t i = 0; i < utf8.size();) {
      unsigned char c = utf8[i];
      if (c < 0x80) out += static_cast<char>(c), i += 1;
      else if ((c & 0xE0) == 0xC0 && i + 1 < utf8.size())
        out += static_cast<char>(((c & 0x1F) << 6) | (utf8[i + 1] & 0x3F)), i += 2;
      else fail("bytes object with characters outside latin-1");
    }
    return out;
  }

  // ('storage', <storage type>, key, location, numel) -> the storage's flat tensor, read from data/<key>.
  Obj persistent_load(const Obj& pid) {
    if (pid->kind != PyObj::Tuple || pid->items.size() < 5 || pid->items[0]->kind != PyObj::Str ||
        pid->items[0]->s != "storage")
      fail("persistent id is not a ('storage', type, key, location, numel) tuple");
    const auto& it = pid->items;
    if (it[1]->kind != PyObj::Global || it[2]->kind != PyObj::Str || it[4]->kind != PyObj::Int)
      fail("malformed storage persistent id");
    const std::string& key = it[2]->s;
    auto cached = storages_.find(key);
    if (cached != storages_.end()) return cached->second;
    const std::string type = it[1]->s.substr(it[1]->s.rfind('.') + 1);
    const StorageType* st = nullptr;
    for (auto& s : kStorageTypes)
      if (type == s.name) st = &s;
    if (!st) fail(fmt::format("storage type {} is not supported (supported: float, double, half, bfloat16 and integer "
                              "storages)", it[1]->s));
    const int64_t numel = it[4]->i;
    const ZipMember* e = zip_.find(archive_ + "data/" + key);
    if (!e) fail(fmt::format("storage '{}' has no entry {}data/{} in the archive", key, archive_, key));
    uint64_t bytes = 0;
    if (numel < 0 || __builtin_mul_overflow(static_cast<uint64_t>(numel), c10::elementSize(st->dtype), &bytes))
      fail(fmt::format("storage '{}' has an impossible element count {}", key, numel));
    if (e->size != bytes)
      fail(fmt::format("storage '{}' holds {} bytes but {} {} elements need {}", key, e->size, numel, type, bytes));
    zip_.check(*e);
    auto t = torch::empty({numel}, torch::TensorOptions().dtype(st->dtype));
    if (bytes) zip_.open(*e).read(t.data_ptr(), bytes);
    auto o = make_str(PyObj::Storage, key);
    o->tensor = t;
    storages_[key] = o;
    return o;
  }

  static bool int_tuple(const Obj& o, std::vector<int64_t>* out) {
    if (o->kind != PyObj::Tuple) return false;
    for (auto& x : o->items) {
      if (x->kind != PyObj::Int) return false;
      out->push_back(x->i);
    }
    return true;
  }

  // _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad, backward_hooks[, metadata])
  Obj rebuild_tensor(const std::vector<Obj>& a) {
    std::vector<int64_t> size, stride;
    if (a.size() < 4 || a[0]->kind != PyObj::Storage || a[1]->kind != PyObj::Int || !int_tuple(a[2], &size) ||
        !int_tuple(a[3], &stride) || size.size() != stride.size())
      fail("_rebuild_tensor_v2 with unexpected arguments");
    const torch::Tensor& storage = a[0]->tensor;
    const int64_t offset = a[1]->i;
    if (size.size() > 64) fail(fmt::format("tensor with {} dimensions", size.size()));
    int64_t last = offset;  // highest element index the view touches
    int64_t numel = 1;
    bool empty = false, overflow = false;
    for (size_t k = 0; k < size.size(); ++k) {
      if (size[k] < 0 || stride[k] < 0)
        fail(fmt::format("negative size or stride (size {}, stride {})", fmt::join(size, "x"), fmt::join(stride, ",")));
      if (size[k] == 0) empty = true;
      int64_t span = 0;
      overflow |= __builtin_mul_overflow(size[k], stride[k], &span) || __builtin_mul_overflow(numel, size[k], &numel);
      if (size[k] > 0) overflow |= __builtin_add_overflow(last, (size[k] - 1) * (span / size[k]), &last);
    }
    if (overflow) fail(fmt::format("tensor size {} / stride {} overflows 64 bits", fmt::join(size, "x"), fmt::join(stride, ",")));
    if (!empty && (offset < 0 || last >= storage.numel()))
      fail(fmt::format("tensor view (offset {}, size {}, stride {}) exceeds its storage '{}' of {} elements", offset,
                       fmt::join(size, "x"), fmt::join(stride, ","), a[0]->s, storage.numel()));
    auto t = make(PyObj::Tensor);
    t->tensor = empty ? torch::empty(size, storage.options()) : storage.as_strided(size, stride, offset);
    return t;
  }

  const std::string& d_;
  const ZipReader& zip_;
  std::string archive_, origin_;
  size_t p_ = 0, op_pos_ = 0;
  unsigned op_ = 0;
  std::vector<Obj> stack_;
  std::vector<size_t> marks_;
  std::unordered_map<uint64_t, Obj> memo_;
  std::map<std::string, Obj> storages_;
  std::vector<Obj> containers_;
  static constexpr size_t kMaxStack = size_t(1) << 24;
};

std::string key_string(const Obj& k) {
  switch (k->kind) {
    case PyObj::Str: return k->s;
    case PyObj::Int: return std::to_string(k->i);
    case PyObj::Bool: return k->i ? "True" : "False";
    case PyObj::None: return "None";
    default: return fmt::format("<{}>", kind_name(k->kind));
  }
}

// Walk limits: a checkpoint nests a few levels and holds thousands of entries; a hostile pickle can nest
// containers thousands deep, put a list inside itself, or share one list under exponentially many names.
struct FlattenState {
  const std::string& path;
  std::vector<const PyObj*> open;  // containers on the current path (cycle check)
  uint64_t visits = 0, name_bytes = 0;
  static constexpr size_t kMaxDepth = 200;
  static constexpr uint64_t kMaxVisits = 4'000'000, kMaxNameBytes = uint64_t(256) << 20;
};

void flatten(const Obj& o, const std::string& name, TorchImport& out, FlattenState& st) {
  auto child = [&](const std::string& k) { return name.empty() ? k : name + "." + k; };
  auto fail = [&](const std::string& what) {
    throw std::runtime_error(fmt::format("{}: cannot read the pickle (data.pkl): {} (at '{}')", st.path, what,
                                         name.substr(0, 200)));
  };
  st.name_bytes += name.size();
  if (++st.visits > FlattenState::kMaxVisits || st.name_bytes > FlattenState::kMaxNameBytes)
    fail(fmt::format("more than {} entries (shared containers repeated under many names?)", st.visits - 1));
  const bool container = o->kind == PyObj::Dict || o->kind == PyObj::List || o->kind == PyObj::Tuple;
  if (container) {
    if (std::find(st.open.begin(), st.open.end(), o.get()) != st.open.end()) fail("a container contains itself");
    if (st.open.size() >= FlattenState::kMaxDepth)
      fail(fmt::format("containers nested more than {} levels deep", FlattenState::kMaxDepth));
    st.open.push_back(o.get());
  }
  switch (o->kind) {
    case PyObj::Tensor: out.tensors.emplace_back(name.empty() ? "tensor" : name, o->tensor); break;
    case PyObj::Dict:
      for (auto& [k, v] : o->entries) flatten(v, child(key_string(k)), out, st);
      break;
    case PyObj::List:
    case PyObj::Tuple:
      for (size_t i = 0; i < o->items.size(); ++i) flatten(o->items[i], child(std::to_string(i)), out, st);
      break;
    default:
      out.skipped.push_back(fmt::format("{} ({})", name.empty() ? "<root>" : name,
                                        o->kind == PyObj::Opaque ? o->s : kind_name(o->kind)));
  }
  if (container) st.open.pop_back();
}

}  // namespace

TorchImport import_torch_file(const std::string& path) {
  const ZipReader zip(path, fmt::format("{}: not a readable PyTorch zip file: ", path));
  // The pickle is <archive>/data.pkl; the archive folder name is the file's stem when it was written.
  const ZipMember* pkl = nullptr;
  for (auto& e : zip.members()) {
    const std::string& n = e.name;
    if (n == "data.pkl" || (n.size() > 9 && n.compare(n.size() - 9, 9, "/data.pkl") == 0 &&
                            n.find('/') == n.size() - 9)) {
      pkl = &e;
      break;
    }
  }
  if (!pkl) {
    const bool torchscript = zip.find("constants.pkl") || std::any_of(zip.members().begin(), zip.members().end(), [](auto& e) {
                               return e.name.find("/code/") != std::string::npos;
                             });
    zip.fail(torchscript ? "no data.pkl found; this looks like a TorchScript archive (load it with torch::jit::load)"
                         : "no <archive>/data.pkl entry: not written by torch.save");
  }
  const std::string archive = pkl->name.substr(0, pkl->name.size() - 8);
  if (const ZipMember* bo = zip.find(archive + "byteorder")) {
    std::string order = read_member(zip, *bo);
    if (order != "little")
      zip.fail(fmt::format("the tensors are stored {}-endian; only little-endian files are supported", order));
  }
  const std::string data = read_member(zip, *pkl);
  Unpickler unpickler(data, zip, archive, path);  // owns every container: flatten before it goes
  Obj root = unpickler.run();
  TorchImport out;
  FlattenState st{path, {}};
  flatten(root, "", out, st);
  return out;
}

NamedTensors load_torch_state_dict(const std::string& path, const std::string& select) {
  TorchImport imp = import_torch_file(path);
  if (select.empty()) return std::move(imp.tensors);
  const std::string prefix = select + ".";
  NamedTensors out;
  std::vector<std::string> tops;
  for (auto& [n, t] : imp.tensors) {
    if (n.rfind(prefix, 0) == 0) out.emplace_back(n.substr(prefix.size()), t);
    const std::string top = n.substr(0, n.find('.'));
    if (std::find(tops.begin(), tops.end(), top) == tops.end()) tops.push_back(top);
  }
  if (out.empty())
    throw std::runtime_error(fmt::format("{}: no tensors under '{}'; the file's top-level keys holding tensors are: {}",
                                         path, select, fmt::join(tops, ", ")));
  return out;
}

}  // namespace cm
