// MPI communicator (see communicator.h).
#include "distributed/communicator.h"

#include <fmt/format.h>
#include <mpi.h>

#include <stdexcept>
#include <torch/torch.h>
#include "distributed/world.h"

namespace cm {

namespace {

MPI_Datatype mpi_type(const torch::Tensor& t) {
  switch (t.scalar_type()) {
    case torch::kFloat32: return MPI_FLOAT;
    case torch::kFloat64: return MPI_DOUBLE;
    case torch::kInt64: return MPI_INT64_T;
    case torch::kInt32: return MPI_INT32_T;
    case torch::kUInt8: return MPI_UINT8_T;
    default:
      throw std::invalid_argument(fmt::format("MPI communicator: unsupported dtype {}", c10::toString(t.scalar_type())));
  }
}

void check_cpu_contiguous(const torch::Tensor& t, const char* what) {
  if (!t.device().is_cpu() || !t.is_contiguous())
    throw std::invalid_argument(fmt::format("MPI {}: needs a contiguous CPU tensor, got {} on {}", what,
                                            t.is_contiguous() ? "contiguous" : "non-contiguous", t.device().str()));
}

class SingleRank : public Communicator {
 public:
  int64_t rank() const override { return 0; }
  int64_t size() const override { return 1; }
  void all_reduce(torch::Tensor&, bool) override {}
  void broadcast(torch::Tensor&, int64_t) override {}
  void barrier() override {}
  std::vector<uint64_t> all_gather_u64(uint64_t v) override { return {v}; }
  std::string backend() const override { return "single"; }
};

class MpiCommunicator : public Communicator {
 public:
  int64_t rank() const override { return world().rank; }
  int64_t size() const override { return world().size; }
  void all_reduce(torch::Tensor& t, bool average) override {
    check_cpu_contiguous(t, "all_reduce");
    CM_MPI_CHECK(MPI_Allreduce(MPI_IN_PLACE, t.data_ptr(), static_cast<int>(t.numel()), mpi_type(t), MPI_SUM, MPI_COMM_WORLD));
    if (average) t.div_(static_cast<double>(size()));
  }
  void broadcast(torch::Tensor& t, int64_t root) override {
    check_cpu_contiguous(t, "broadcast");
    CM_MPI_CHECK(MPI_Bcast(t.data_ptr(), static_cast<int>(t.numel()), mpi_type(t), static_cast<int>(root), MPI_COMM_WORLD));
  }
  void barrier() override { CM_MPI_CHECK(MPI_Barrier(MPI_COMM_WORLD)); }
  std::vector<uint64_t> all_gather_u64(uint64_t v) override {
    std::vector<uint64_t> out(static_cast<size_t>(size()));
    CM_MPI_CHECK(MPI_Allgather(&v, 1, MPI_UINT64_T, out.data(), 1, MPI_UINT64_T, MPI_COMM_WORLD));
    return out;
  }
  std::string backend() const override { return "mpi"; }
};

}  // namespace

std::unique_ptr<Communicator> make_communicator() {
  if (world().mpi && world().size > 1) return std::make_unique<MpiCommunicator>();
  return std::make_unique<SingleRank>();
}

uint64_t tensor_hash(const std::vector<torch::Tensor>& ts) {
  uint64_t h = 1469598103934665603ull;
  for (auto& t : ts) {
    auto c = t.detach().to(torch::kCPU).contiguous();
    const auto* p = static_cast<const unsigned char*>(c.data_ptr());
    const size_t n = c.numel() * c.element_size();
    for (size_t i = 0; i < n; ++i) h = (h ^ p[i]) * 1099511628211ull;
  }
  return h;
}

}  // namespace cm
