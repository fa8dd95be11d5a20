// `cm`: the command-line program of the framework. Dispatches to the registered subcommands.
#include <fmt/format.h>
#include <signal.h>

#include <exception>
#include "core/config.h"
#include "distributed/preemption.h"  // `cm train` handles the stop signals
#include "launch/command.h"

static void print_usage() {
  fmt::print("cm - train, sample and evaluate consistency models\n\nUsage: cm COMMAND [ARGS...]\n\nCommands:\n");
  for (auto& [name, c] : cm::cli::commands()) fmt::print("  {:<10} {}\n", name, c.summary);
  fmt::print("\nRun `cm COMMAND --help` for the arguments of a command.\n");
}

int main(int argc, char** argv) {
  if (argc < 2 || std::string(argv[1]) == "--help" || std::string(argv[1]) == "-h" || std::string(argv[1]) == "help") {
    print_usage();
    return argc < 2 ? 2 : 0;
  }
  const std::string name = argv[1];
  auto& cmds = cm::cli::commands();
  auto it = cmds.find(name);
  if (it == cmds.end()) {
    std::vector<std::string> names;
    for (auto& [n, c] : cmds) names.push_back(n);
    std::string near = cm::nearest(name, names);
    fmt::print(stderr, "cm: unknown command '{}'{}. Run `cm --help` for the list.\n", name,
               near.empty() ? "" : fmt::format(" (did you mean '{}'?)", near));
    return 2;
  }
  std::vector<std::string> rest(argv + 2, argv + argc);
  // The `cm` front (cm_launcher.c) started this program with SIGTERM, SIGINT and SIGUSR1 blocked: `cm train`
  // installs its stop handlers first, then a signal that came during start-up is delivered to them; every
  // other command gets the default actions back at once.
  if (name == "train") cm::install_preemption_handlers();
  sigset_t stop;
  sigemptyset(&stop);
  for (int s : {SIGTERM, SIGINT, SIGUSR1}) sigaddset(&stop, s);
  sigprocmask(SIG_UNBLOCK, &stop, nullptr);
  try {
    return it->second.run(rest);
  } catch (const cm::ConfigError& e) {
    fmt::print(stderr, "cm {}: config error: {}\n", name, e.what());
    return 2;
  } catch (const std::invalid_argument& e) {
    fmt::print(stderr, "cm {}: {}\n", name, e.what());
    return 2;
  } catch (const std::exception& e) {
    fmt::print(stderr, "cm {}: error: {}\n", name, e.what());
    return 1;
  }
}
