// Checked HDF5 calls: every call goes through h5() which throws naming the file, the object and the
// library's own message; RAII handles close what was opened even when an exception unwinds.
#pragma once
#include <hdf5.h>
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

namespace cm::data {

// Why a thread-local switch: in the thread-safe HDF5 build (Debian's serial library is one) the automatic
// error printing is a per-thread setting, and we want errors as exceptions, not as stack dumps on stderr.
void h5_quiet_errors();

// The innermost message of the current thread's HDF5 error stack ("" when empty).
std::string h5_error_message();

// Throws std::runtime_error("HDF5: <where>: <HDF5 message>").
[[noreturn]] void h5_throw(const std::string& where);

// Checks the status of an HDF5 call: throws (as h5_throw) when it is negative, else returns it.
template <typename T>
T h5(T status, const std::string& where) {
  if (status < 0) h5_throw(where);
  return status;
}

// An owned hid_t, closed with the matching H5?close.
class H5Handle {
 public:
  using Closer = herr_t (*)(hid_t);
  H5Handle() = default;
  H5Handle(hid_t id, Closer close) : id_(id), close_(close) {}
  H5Handle(const H5Handle&) = delete;
  H5Handle& operator=(const H5Handle&) = delete;
  H5Handle(H5Handle&& o) noexcept : id_(std::exchange(o.id_, -1)), close_(o.close_) {}
  H5Handle& operator=(H5Handle&& o) noexcept {
    if (this != &o) {
      reset();
      id_ = std::exchange(o.id_, -1);
      close_ = o.close_;
    }
    return *this;
  }
  ~H5Handle() { reset(); }
  hid_t get() const { return id_; }
  operator hid_t() const { return id_; }
  bool valid() const { return id_ >= 0; }
  void reset() {
    if (id_ >= 0 && close_) close_(id_);
    id_ = -1;
  }
  // Close now and report a failure (closing a file flushes it, so this can fail for a full disk).
  void close_checked(const std::string& where) {
    if (id_ < 0) return;
    hid_t id = std::exchange(id_, -1);
    h5(close_(id), where);
  }

 private:
  hid_t id_ = -1;
  Closer close_ = nullptr;
};

// Attribute helpers on an object (file root group or dataset). Readers throw naming `where` and the
// attribute when it is missing or of the wrong class.
void h5_write_attr(hid_t obj, const std::string& name, int64_t value, const std::string& where);
void h5_write_attr(hid_t obj, const std::string& name, const std::string& value, const std::string& where);
bool h5_has_attr(hid_t obj, const std::string& name);
int64_t h5_read_int_attr(hid_t obj, const std::string& name, const std::string& where);
std::string h5_read_string_attr(hid_t obj, const std::string& name, const std::string& where);

// Dimensions of a dataset's dataspace.
std::vector<hsize_t> h5_dims(hid_t dataset, const std::string& where);

}  // namespace cm::data
