// Parts of the training state (see train_state.h).
#include "core/train_state.h"

#include <fmt/format.h>
#include <set>
#include <torch/torch.h>
#include "core/optim.h"
#include "core/precision.h"
#include "core/weights.h"

namespace cm {

void assign_named(const NamedTensors& dst, const TensorFile& src, const std::string& origin, const std::vector<std::string>& ignored) {
  std::vector<std::string> problems;
  std::set<std::string> names(ignored.begin(), ignored.end());
  for (auto& [n, t] : dst) {
    names.insert(n);
    const torch::Tensor* s = src.find(n);
    if (!s) problems.push_back("missing " + n);
    else if (s->sizes() != t.sizes() || s->scalar_type() != t.scalar_type())
      problems.push_back(fmt::format("{} is {} {} in the checkpoint, {} {} in this run", n, c10::toString(s->scalar_type()),
                                     c10::str(s->sizes()), c10::toString(t.scalar_type()), c10::str(t.sizes())));
  }
  for (auto& [n, t] : src.tensors)
    if (!names.count(n)) problems.push_back("unexpected " + n);
  if (!problems.empty())
    throw std::runtime_error(fmt::format("{} does not match this run's network: {}", origin, fmt::join(problems, "; ")));
  torch::NoGradGuard ng;
  for (auto& [n, t] : dst) t.copy_(*src.find(n));
}

std::string json_doubles(const std::vector<double>& v) {
  std::vector<std::string> s;
  for (double x : v) s.push_back(fmt::format("{:.17g}", x));
  return fmt::format("[{}]", fmt::join(s, ", "));
}

namespace {

class NetworkPart : public StatePart {
 public:
  NetworkPart(NetworkPtr net, std::string file) : net_(std::move(net)), file_(std::move(file)) {}
  std::vector<StateFile> files() const override { return {{file_, state_dict(*net_), {}}}; }
  void restore(const StateReader& r) override {
    assign_named(state_dict(*net_), r.read(file_), r.origin() + "/" + file_);
  }

 private:
  NetworkPtr net_;
  std::string file_;
};

class OptimizerPart : public StatePart {
 public:
  explicit OptimizerPart(Optimizer& o) : o_(o) {}
  std::vector<StateFile> files() const override { return {{"optimizer.safetensors", o_.state(), {}}}; }
  std::vector<std::pair<std::string, std::string>> json_members() const override {
    return {{"optimizer_steps", std::to_string(o_.steps_taken())}};
  }
  void restore(const StateReader& r) override { o_.load_state(r.read("optimizer.safetensors").tensors); }

 private:
  Optimizer& o_;
};

class CursorPart : public StatePart {
 public:
  explicit CursorPart(DataSource& d) : d_(d) {}
  std::vector<std::pair<std::string, std::string>> json_members() const override {
    const DataCursor c = d_.cursor();
    return {{"data_cursor", fmt::format("{{\"epoch\": {}, \"batch_in_epoch\": {}, \"batches_total\": {}}}", c.epoch,
                                        c.batch_in_epoch, c.batches_total)}};
  }
  void restore(const StateReader& r) override {
    const std::string where = r.origin() + "/state.json";
    const Json& cur = r.state().at("data_cursor", where);
    DataCursor dc;
    dc.epoch = cur.at("epoch", where).integer;
    dc.batch_in_epoch = cur.at("batch_in_epoch", where).integer;
    dc.batches_total = cur.at("batches_total", where).integer;
    d_.restore(dc);
  }

 private:
  DataSource& d_;
};

class LossScalerPart : public StatePart {
 public:
  explicit LossScalerPart(LossScaler& s) : s_(s) {}
  // The scale with all 17 digits: resume is exact.
  std::vector<std::pair<std::string, std::string>> json_members() const override {
    const auto s = s_.state();
    return {{"loss_scaler", fmt::format("{{\"scale\": {:.17g}, \"good_steps\": {}, \"skipped_steps\": {}, \"consecutive_skipped\": {}}}",
                                        s.scale, s.good_steps, s.skipped_steps, s.consecutive_skipped)}};
  }
  // Written since loss scaling exists; an older checkpoint (no entry) had no scaler and no skipped steps.
  void restore(const StateReader& r) override {
    const Json* ls = r.state().get("loss_scaler");
    if (!ls) return;
    const std::string where = r.origin() + "/state.json";
    LossScaler::State s;
    s.scale = ls->at("scale", where).num;
    s.good_steps = ls->at("good_steps", where).integer;
    s.skipped_steps = ls->at("skipped_steps", where).integer;
    s.consecutive_skipped = ls->at("consecutive_skipped", where).integer;
    s_.restore(s);
  }

 private:
  LossScaler& s_;
};

}  // namespace

std::shared_ptr<StatePart> network_part(NetworkPtr net, std::string file) { return std::make_shared<NetworkPart>(std::move(net), std::move(file)); }
std::shared_ptr<StatePart> optimizer_part(Optimizer& opt) { return std::make_shared<OptimizerPart>(opt); }
std::shared_ptr<StatePart> cursor_part(DataSource& data) { return std::make_shared<CursorPart>(data); }
std::shared_ptr<StatePart> loss_scaler_part(LossScaler& s) { return std::make_shared<LossScalerPart>(s); }

}  // namespace cm
