// hci-replica-server: serves one storage node's replicas to engines over TCP.
//
//   hci-replica-server --node NAME --listen HOST:PORT --data-dir DIR --secret-file FILE
//                      [--ready-file FILE] [--log-level info]
//
// Exit status: 0 after SIGTERM/SIGINT (connections closed, every replica flushed); 2 for a bad
// command line or configuration (the message names the option); 1 when serving failed (cannot
// open the store, cannot listen, a flush failed at shutdown).
#include <signal.h>
#include <spdlog/sinks/stdout_sinks.h>
#include <spdlog/spdlog.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <array>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <string>
#include <string_view>

#include "hci/names.h"
#include "process/process.h"
#include "server/replica_server.h"

namespace {

constexpr std::string_view kProgram = "hci-replica-server";

int Usage(const std::string& message) {
  std::fprintf(stderr, "%s: %s\n", kProgram.data(), message.c_str());
  return 2;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"Serves one storage node's replicas (plugins/replicated) to engines over TCP.",
               std::string(kProgram)};
  std::string node;
  std::string listen;
  std::string data_dir;
  std::string secret_file;
  std::string ready_file;
  std::string log_level = "info";
  app.add_option("--node", node, "This storage node's name (an RFC 1123 label)")->required();
  app.add_option("--listen", listen, "HOST:PORT to listen on (port 0: any), or unix:/path")
      ->required();
  app.add_option("--data-dir", data_dir, "Directory of the replicas (created if missing)")
      ->required();
  app.add_option("--secret-file", secret_file,
                 "File holding the shared secret (mode 0600 or stricter)")
      ->required();
  app.add_option("--ready-file", ready_file,
                 "Once listening, the actual HOST:PORT is written here (atomically)");
  app.add_option("--log-level", log_level,
                 "trace, debug, info, warn, error, critical or off (default info)");
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    const int rc = app.exit(e);
    return rc == 0 ? 0 : 2;
  }

  static constexpr std::array<std::string_view, 7> kLevels = {"trace", "debug",    "info", "warn",
                                                              "error", "critical", "off"};
  bool known_level = false;
  for (std::string_view l : kLevels) known_level |= (l == log_level);
  if (!known_level) {
    return Usage("--log-level: \"" + log_level +
                 "\" is not one of trace, debug, info, warn, error, critical, off");
  }
  if (hci::Status s = hci::ValidateName("--node", node); !s.ok()) return Usage(s.message());
  hci::Result<std::string> secret = hci::replicated::ReadSecretFile("--secret-file", secret_file);
  if (!secret.ok()) return Usage(secret.status().message());

  auto logger = spdlog::stderr_logger_mt(std::string(kProgram));
  logger->set_pattern("%Y-%m-%dT%H:%M:%S.%e%z [%l] %v");
  logger->set_level(spdlog::level::from_str(log_level));
  logger->flush_on(spdlog::level::trace);
  spdlog::set_default_logger(logger);

  // Every thread started from here on inherits the blocked mask, so only sigwait() below sees
  // SIGTERM and SIGINT: shutdown runs in ordinary code, not in a signal handler.
  sigset_t stop_signals;
  sigemptyset(&stop_signals);
  sigaddset(&stop_signals, SIGTERM);
  sigaddset(&stop_signals, SIGINT);
  pthread_sigmask(SIG_BLOCK, &stop_signals, nullptr);
  ::signal(SIGPIPE, SIG_IGN);

  hci::replicated::ReplicaServerOptions options;
  options.node = node;
  options.listen = listen;
  options.data_dir = data_dir;
  options.secret = std::move(*secret);
  options.logger = logger;
  hci::Result<std::unique_ptr<hci::replicated::ReplicaServer>> server =
      hci::replicated::ReplicaServer::Create(std::move(options));
  if (!server.ok()) {
    logger->critical("cannot start: {}", server.status().ToString());
    return 1;
  }
  if (hci::Status s = (*server)->Start(); !s.ok()) {
    logger->critical("cannot start: {}", s.ToString());
    return 1;
  }
  const std::string address = (*server)->address();
  if (!ready_file.empty()) {
    if (hci::Status s = hci::process::WriteFileAtomically(ready_file, address, 0644)
                            .WithContext("--ready-file");
        !s.ok()) {
      logger->critical("cannot write the ready file: {}", s.message());
      (*server)->Stop().IgnoreError();
      return 1;
    }
  }
  logger->info("ready: serving node {} on {}", node, address);

  int signal_number = 0;
  while (sigwait(&stop_signals, &signal_number) != 0) {
  }
  logger->info("received {}: shutting down", signal_number == SIGTERM ? "SIGTERM" : "SIGINT");
  const hci::Status stopped = (*server)->Stop();
  if (!stopped.ok()) {
    logger->error("shutdown: {}", stopped.ToString());
    return 1;
  }
  logger->info("exiting");
  return 0;
}
