// Lanes (see lanes.h). Compiled with -fopenmp and without the precompiled header (core/CMakeLists.txt).
#include "core/util/lanes.h"

#include <ATen/Parallel.h>
#include <ATen/ThreadLocalState.h>
#include <atomic>
#include <dlfcn.h>
#include <exception>
#include <vector>
#ifdef _OPENMP
#include <omp.h>
#endif

namespace cm {

namespace {

// OpenBLAS's thread count: 1, or back to the count found first (0).
void set_blas_threads(int n) {
  using Set = void (*)(int);
  using Get = int (*)();
  static const Set set = reinterpret_cast<Set>(dlsym(RTLD_DEFAULT, "openblas_set_num_threads"));
  static const Get get = reinterpret_cast<Get>(dlsym(RTLD_DEFAULT, "openblas_get_num_threads"));
  static const int initial = get ? get() : 0;
  if (set && (n > 0 || initial > 0)) set(n > 0 ? n : initial);
}

std::atomic<int> g_blas_guards{0};

}  // namespace

bool lanes_run_concurrently() {
#ifdef _OPENMP
  if (omp_in_parallel()) return false;  // inside a lane: nested lanes run in turn (and the probe below needs the top level)
  static const bool ok = [] {
    int team = 0;
    bool aten_sees_region = false;
#pragma omp parallel num_threads(2)
    {
#pragma omp master
      {
        team = omp_get_num_threads();
        aten_sees_region = at::in_parallel_region();
      }
    }
    return team == 2 && aten_sees_region;
  }();
  return ok;
#else
  return false;
#endif
}

void run_lanes(int64_t n, int threads, const std::function<void(int64_t)>& f) {
  if (n <= 0) return;
  std::vector<std::exception_ptr> errors(static_cast<size_t>(n));
  const at::ThreadLocalState state;  // the caller's, for every lane
  auto lane = [&](int64_t l) {
    try {
      at::ThreadLocalStateGuard guard(state);
#ifdef _OPENMP
      // Inside the region oneDNN runs its kernels on one thread; its primitives must then also be made for
      // one thread (it sizes them by omp_get_max_threads(): a convolution's weight-gradient kernel made
      // for two would wait at its barrier for a second thread that never comes). This lane's own setting,
      // made after ATen's once-per-thread initialisation, which would set it back to the intra-op count.
      if (omp_in_parallel()) {
        (void)at::get_num_threads();
        omp_set_num_threads(1);
      }
#endif
      f(l);
    } catch (...) {
      errors[static_cast<size_t>(l)] = std::current_exception();
    }
  };
  const int team = static_cast<int>(std::min<int64_t>(n, std::max(1, threads)));
  if (team > 1 && lanes_run_concurrently()) {
    SingleThreadedBlas blas;
#ifdef _OPENMP
#pragma omp parallel for num_threads(team) schedule(static, 1)
    for (int64_t l = 0; l < n; ++l) lane(l);
#endif
  } else {
    for (int64_t l = 0; l < n; ++l) lane(l);
  }
  for (auto& e : errors)
    if (e) std::rethrow_exception(e);
}

SingleThreadedBlas::SingleThreadedBlas() {
  if (g_blas_guards++ == 0) set_blas_threads(1);
}

SingleThreadedBlas::~SingleThreadedBlas() {
  if (--g_blas_guards == 0) set_blas_threads(0);
}

}  // namespace cm
