// `cm`: a small front program that blocks the stop signals and then runs the real program, `cm-main`,
// which lies beside it.
//
// Why: cm-main links LibTorch, whose loading and static initialisation take 0.3-1 s before main() can
// install a signal handler. A SIGTERM, SIGINT or SIGUSR1 in that window would kill it (exit 143 / 130)
// instead of asking for the clean stop that `cm train` promises (the checkpoint of the current step,
// then exit 75). A blocked signal stays pending across execve, and cm-main unblocks the signals as soon
// as its handlers are in place (at once, for commands without handlers, which then end as before), so a
// stop request during start-up is delivered then: neither lost nor fatal. execve keeps the process id,
// so a signal sent to this pid (kill, SLURM, mpirun) reaches the real program. Plain C, no libraries:
// it starts in about a millisecond.
#include <errno.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

int main(int argc, char** argv) {
  (void)argc;
  sigset_t stop;
  sigemptyset(&stop);
  sigaddset(&stop, SIGTERM);
  sigaddset(&stop, SIGINT);
  sigaddset(&stop, SIGUSR1);
  sigprocmask(SIG_BLOCK, &stop, NULL);

  char path[PATH_MAX];
  const ssize_t n = readlink("/proc/self/exe", path, sizeof path - 16);
  if (n <= 0) {
    fprintf(stderr, "cm: cannot find this program's own path (/proc/self/exe): %s\n", strerror(errno));
    return 127;
  }
  path[n] = '\0';
  char* slash = strrchr(path, '/');
  strcpy(slash ? slash + 1 : path, "cm-main");
  execv(path, argv);
  fprintf(stderr, "cm: cannot run %s: %s (it is built beside cm; rebuild with `bash launch/setup.sh`)\n", path, strerror(errno));
  return 127;
}
