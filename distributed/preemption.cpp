// Preemption signals and the agreement between ranks (see preemption.h).
#include "distributed/preemption.h"

#include <signal.h>
#include <unistd.h>

#include <atomic>
#include <cstring>
#include <torch/torch.h>
#include "distributed/communicator.h"

namespace cm {

namespace {

std::atomic<int> g_signal{0};  // lock-free, so async-signal-safe to store into
static_assert(std::atomic<int>::is_always_lock_free);

// Every stop request means the same thing, however often and whenever it comes: the checkpoint of the
// current step, then exit code 75. A repeated signal (a second Ctrl-C, SLURM's SIGTERM after its SIGUSR1,
// mpirun forwarding twice) must not turn a clean stop into a kill while that checkpoint is being written;
// a rank that truly hangs is ended by the watchdog, and SIGKILL remains for whoever insists.
void on_signal(int sig) {
  int expected = 0;
  if (!g_signal.compare_exchange_strong(expected, sig)) {
    static const char msg[] = "cm: already stopping: the checkpoint of the current step is being committed, then exit 75\n";
    ssize_t ignored = ::write(STDERR_FILENO, msg, sizeof msg - 1);  // async-signal-safe
    (void)ignored;
  }
}

}  // namespace

void install_preemption_handlers() {
  static bool installed = false;
  if (installed) return;
  installed = true;
  struct sigaction sa;
  std::memset(&sa, 0, sizeof sa);
  sa.sa_handler = on_signal;
  sigemptyset(&sa.sa_mask);
  sa.sa_flags = SA_RESTART;  // a signal must not make an in-flight write or MPI call fail with EINTR
  sigaction(SIGTERM, &sa, nullptr);
  sigaction(SIGUSR1, &sa, nullptr);
  sigaction(SIGINT, &sa, nullptr);  // Ctrl-C: the same clean stop
}

int preemption_signal() { return g_signal.load(); }

int agree_on_preemption(dist::Communicator* comm) {
  const int local = g_signal.load();
  if (!comm || comm->size() <= 1) return local;
  auto t = torch::tensor({static_cast<int64_t>(local != 0)}, torch::kInt64).to(comm->device());
  comm->all_reduce_async(t, dist::ReduceOp::Sum, "preemption flag")->wait();
  if (t.cpu().item<int64_t>() == 0) return 0;
  return local ? local : -1;
}

const char* signal_name(int sig) {
  switch (sig) {
    case SIGTERM: return "SIGTERM";
    case SIGUSR1: return "SIGUSR1";
    case SIGINT: return "SIGINT";
    case -1: return "a stop signal received by another rank";
    default: return "a signal";
  }
}

}  // namespace cm
