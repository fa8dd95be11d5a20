// Preemption: SIGTERM, SIGUSR1 or SIGINT (Ctrl-C) asks a job to stop cleanly. The signal handler only sets a flag; the
// trainer asks at every step boundary whether any rank got it (an all-reduce of the flag, so all ranks
// stop after the same step even when the signal reached only some of them), writes a checkpoint and
// exits with kExitPreempted, which a batch script uses to requeue the job:
//
//   #SBATCH --signal=USR1@180          # SLURM: SIGUSR1 three minutes before the time limit
//   srun cm train RECIPE ...; [ $? -eq 75 ] && scontrol requeue $SLURM_JOB_ID
//
// Why 75: it is EX_TEMPFAIL of <sysexits.h> ("temporary failure; the user is invited to retry"), and it
// means nothing else to the shell (126/127, >128 = killed by a signal), to `timeout` (124), to mpirun or
// to SLURM, which report a rank's own exit status. Under mpirun, send SIGUSR1 to mpirun: it forwards
// SIGUSR1 to every rank (SIGTERM to mpirun makes it kill the ranks itself).
#pragma once
#include <cstdint>

namespace cm {

namespace dist {
class Communicator;
}

constexpr int kExitPreempted = 75;

// Installs the SIGTERM, SIGUSR1 and SIGINT handlers (idempotent; `cm train` does it first thing, so a
// signal during start-up is a stop request too). Every one of them, and any repeat, asks for the same
// clean stop: the checkpoint of the current step, then kExitPreempted.
void install_preemption_handlers();
// Number of the first signal received on this rank, 0 if none.
int preemption_signal();
// Collective when comm has more than one rank (every rank must call it at the same step): the first
// signal number this rank received, -1 when only other ranks received one, 0 when no rank did.
int agree_on_preemption(dist::Communicator* comm);
const char* signal_name(int sig);

}  // namespace cm
