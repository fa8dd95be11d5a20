// Checked HDF5 calls and attribute helpers (see h5util.h).
#include "datasets/h5util.h"

#include <fmt/format.h>
#include <stdexcept>
#include <vector>

namespace cm::data {

void h5_quiet_errors() {
  thread_local bool done = false;
  if (!done) {
    H5Eset_auto2(H5E_DEFAULT, nullptr, nullptr);
    done = true;
  }
}

std::string h5_error_message() {
  // The stack runs from the API call (what was attempted) down to the innermost cause; name both.
  std::vector<std::string> descs;
  auto walk = [](unsigned, const H5E_error2_t* e, void* data) -> herr_t {
    static_cast<std::vector<std::string>*>(data)->push_back(e->desc ? e->desc : (e->func_name ? e->func_name : "?"));
    return 0;
  };
  H5Ewalk2(H5E_DEFAULT, H5E_WALK_DOWNWARD, walk, &descs);
  if (descs.empty()) return "";
  if (descs.size() == 1 || descs.front() == descs.back()) return descs.front();
  return descs.front() + " (" + descs.back() + ")";
}

void h5_throw(const std::string& where) {
  std::string msg = h5_error_message();
  H5Eclear2(H5E_DEFAULT);
  throw std::runtime_error(fmt::format("HDF5: {}{}", where, msg.empty() ? "" : ": " + msg));
}

void h5_write_attr(hid_t obj, const std::string& name, int64_t value, const std::string& where) {
  h5_quiet_errors();
  const std::string w = fmt::format("{}: writing attribute '{}'", where, name);
  H5Handle space(h5(H5Screate(H5S_SCALAR), w), H5Sclose);
  H5Handle attr(h5(H5Acreate2(obj, name.c_str(), H5T_STD_I64LE, space, H5P_DEFAULT, H5P_DEFAULT), w), H5Aclose);
  h5(H5Awrite(attr, H5T_NATIVE_INT64, &value), w);
}

// Strings are variable-length UTF-8 so h5py reads them as str.
static H5Handle vlen_string_type(const std::string& where) {
  H5Handle t(h5(H5Tcopy(H5T_C_S1), where), H5Tclose);
  h5(H5Tset_size(t, H5T_VARIABLE), where);
  h5(H5Tset_cset(t, H5T_CSET_UTF8), where);
  return t;
}

void h5_write_attr(hid_t obj, const std::string& name, const std::string& value, const std::string& where) {
  h5_quiet_errors();
  const std::string w = fmt::format("{}: writing attribute '{}'", where, name);
  H5Handle type = vlen_string_type(w);
  H5Handle space(h5(H5Screate(H5S_SCALAR), w), H5Sclose);
  H5Handle attr(h5(H5Acreate2(obj, name.c_str(), type, space, H5P_DEFAULT, H5P_DEFAULT), w), H5Aclose);
  const char* p = value.c_str();
  h5(H5Awrite(attr, type, &p), w);
}

bool h5_has_attr(hid_t obj, const std::string& name) {
  h5_quiet_errors();
  return H5Aexists(obj, name.c_str()) > 0;
}

static H5Handle open_attr(hid_t obj, const std::string& name, const std::string& where) {
  h5_quiet_errors();
  if (!h5_has_attr(obj, name))
    throw std::runtime_error(fmt::format("{}: attribute '{}' is missing (not a shard written by `cm data convert`?)",
                                         where, name));
  return H5Handle(h5(H5Aopen(obj, name.c_str(), H5P_DEFAULT), where + ": opening attribute " + name), H5Aclose);
}

int64_t h5_read_int_attr(hid_t obj, const std::string& name, const std::string& where) {
  H5Handle attr = open_attr(obj, name, where);
  H5Handle type(h5(H5Aget_type(attr), where), H5Tclose);
  if (H5Tget_class(type) != H5T_INTEGER)
    throw std::runtime_error(fmt::format("{}: attribute '{}' should be an integer", where, name));
  int64_t v = 0;
  h5(H5Aread(attr, H5T_NATIVE_INT64, &v), where + ": reading attribute " + name);
  return v;
}

std::string h5_read_string_attr(hid_t obj, const std::string& name, const std::string& where) {
  H5Handle attr = open_attr(obj, name, where);
  const std::string w = where + ": reading attribute " + name;
  H5Handle type(h5(H5Aget_type(attr), w), H5Tclose);
  if (H5Tget_class(type) != H5T_STRING)
    throw std::runtime_error(fmt::format("{}: attribute '{}' should be a string", where, name));
  if (H5Tis_variable_str(type) > 0) {
    H5Handle mem = vlen_string_type(w);
    char* p = nullptr;
    h5(H5Aread(attr, mem, &p), w);
    std::string s = p ? p : "";
    H5free_memory(p);
    return s;
  }
  // Fixed-length strings (written by other tools): read the bytes and trim the padding.
  size_t n = H5Tget_size(type);
  std::string s(n, '\0');
  h5(H5Aread(attr, type, s.data()), w);
  s.resize(s.find('\0') == std::string::npos ? n : s.find('\0'));
  return s;
}

std::vector<hsize_t> h5_dims(hid_t dataset, const std::string& where) {
  H5Handle space(h5(H5Dget_space(dataset), where), H5Sclose);
  int rank = h5(H5Sget_simple_extent_ndims(space), where);
  std::vector<hsize_t> dims(rank);
  h5(H5Sget_simple_extent_dims(space, dims.data(), nullptr), where);
  return dims;
}

}  // namespace cm::data
