// The training state a checkpoint holds, as named parts produced by their owners: the student ("model"),
// the EMA set (target theta- and the sampling EMAs, core/ema.h), the optimizer, the data cursor and the
// loss scaler. Each part says which tensor files and which state.json members it writes and restores
// itself from a checkpoint; the checkpoint coordinator (recipes/checkpoint.h) only writes, commits and
// reads them, so it knows nothing about methods, networks or optimizers. Method-agnostic, so in core.
#pragma once
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>
#include "core/data.h"
#include "core/io/json.h"
#include "core/network.h"
#include "core/io/safetensors.h"

namespace cm {

class Optimizer;
class LossScaler;

// One safetensors file of a part.
struct StateFile {
  std::string name;  // e.g. "model.safetensors"
  NamedTensors tensors;
  std::map<std::string, std::string> meta;  // added to the checkpoint's common metadata
};

// What a part sees of the checkpoint it is restored from.
class StateReader {
 public:
  virtual ~StateReader() = default;
  virtual bool has(const std::string& file) const = 0;
  virtual TensorFile read(const std::string& file) const = 0;  // verified; throws naming the checkpoint
  virtual const Json& state() const = 0;                       // state.json
  virtual const std::string& origin() const = 0;               // the checkpoint's path, for messages
};

class StatePart {
 public:
  virtual ~StatePart() = default;
  virtual std::vector<StateFile> files() const { return {}; }
  // Members of state.json: key and JSON value text.
  virtual std::vector<std::pair<std::string, std::string>> json_members() const { return {}; }
  virtual void restore(const StateReader& r) = 0;
};

// The parts in the order they are written and restored.
class TrainState {
 public:
  void add(std::string name, std::shared_ptr<StatePart> part) { parts_.emplace_back(std::move(name), std::move(part)); }
  const std::vector<std::pair<std::string, std::shared_ptr<StatePart>>>& parts() const { return parts_; }

 private:
  std::vector<std::pair<std::string, std::shared_ptr<StatePart>>> parts_;
};

// The parts of the owners that are not parts themselves.
std::shared_ptr<StatePart> network_part(NetworkPtr net, std::string file = "model.safetensors");
std::shared_ptr<StatePart> optimizer_part(Optimizer& opt);   // optimizer.safetensors, "optimizer_steps"
std::shared_ptr<StatePart> cursor_part(DataSource& data);    // "data_cursor"
std::shared_ptr<StatePart> loss_scaler_part(LossScaler& s);  // "loss_scaler" (absent in older checkpoints: none)

// Copies a file's tensors into `dst` by name; every name, shape and dtype must match. Names of `src` in
// `ignored` may be absent from dst (an EMA file repeats the student's buffers).
void assign_named(const NamedTensors& dst, const TensorFile& src, const std::string& origin,
                  const std::vector<std::string>& ignored = {});
std::string json_doubles(const std::vector<double>& v);  // "[0.9999, 0.99]" with all 17 digits

}  // namespace cm
