// hci-replica-server's core: serves one node's ReplicaStore over the replica protocol
// (wire/replica_wire.h). Internal to plugins/replicated; replica_server_main.cc wraps it in a
// process, tests run it in-process on its own threads.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <thread>

#include "hci/result.h"
#include "hci/status.h"
#include "store/replica_store.h"
#include "wire/replica_wire.h"

namespace spdlog {
class logger;
}  // namespace spdlog

namespace hci::replicated {

// The shared secret is read the same way by every side (wire/replica_wire.h).
using wire::kMaxSecretBytes;
using wire::ReadSecretFile;

/// What a ReplicaServer serves and how.
struct ReplicaServerOptions {
  /// This storage node's name (an RFC 1123 label), sent in every Hello.
  std::string node;
  /// Where to listen: "HOST:PORT" (IPv4, "[IPv6]" or a resolvable name; port 0 lets the kernel
  /// choose) or "unix:/path" (an existing socket file there is replaced).
  std::string listen;
  /// The ReplicaStore's root directory (created 0700 if missing).
  std::string data_dir;
  /// The shared secret clients must prove they know; must not be empty.
  std::string secret;
  /// A client that has not finished the handshake by then is dropped.
  std::chrono::milliseconds handshake_timeout{10000};
  /// Where log lines go; null: spdlog's default logger.
  std::shared_ptr<spdlog::logger> logger;
};

/// Serves a ReplicaStore: one thread accepts, one thread per connection authenticates the peer
/// (HMAC handshake) and then answers its requests in order. Control requests map onto
/// ReplicaStore/Replica calls; data requests go to the replica the connection opened and are
/// fenced by generation (ESTALE unless the header's generation is the replica's current one).
///
/// Thread-safe: Stop() may be called from any thread (and runs from the destructor).
class ReplicaServer {
 public:
  /// Checks the options and opens the store (ReplicaStore::Open). InvalidArgument naming
  /// "node", "listen" or "secret"; the store's errors.
  static Result<std::unique_ptr<ReplicaServer>> Create(ReplicaServerOptions options);
  ~ReplicaServer();
  ReplicaServer(const ReplicaServer&) = delete;
  ReplicaServer& operator=(const ReplicaServer&) = delete;

  /// Binds, listens and starts accepting. Unavailable (naming the address) when it cannot bind,
  /// InvalidArgument for an address that does not parse, FailedPrecondition when called twice.
  Status Start();
  /// The address actually listened on, "HOST:PORT" (the kernel's port when 0 was asked) or
  /// "unix:/path"; empty before Start().
  std::string address() const;
  /// Stops accepting, shuts every connection down and waits for their threads, then flushes
  /// every replica. Idempotent. Returns the first flush error (all replicas are tried).
  Status Stop();

  /// The store served (for tests and the process's start-up log).
  ReplicaStore& store() { return *store_; }
  /// Connections currently open (authenticated or not).
  std::size_t connection_count() const;

 private:
  struct Session;
  class ConnectionHandler;

  ReplicaServer(ReplicaServerOptions options, std::unique_ptr<ReplicaStore> store,
                std::shared_ptr<spdlog::logger> logger);
  void AcceptLoop();
  void Serve(Session* session);
  // Joins the threads of finished sessions and forgets them.
  void Reap();

  const ReplicaServerOptions options_;
  std::unique_ptr<ReplicaStore> store_;
  std::shared_ptr<spdlog::logger> log_;

  mutable std::mutex mu_;
  bool started_ = false;
  bool stopped_ = false;
  std::string address_;
  std::string unix_path_;  // removed on Stop()
  int listen_fd_ = -1;
  int wake_fd_ = -1;  // eventfd: Stop() wakes the accept loop
  std::atomic<bool> stopping_{false};
  std::thread accept_thread_;
  std::uint64_t next_session_ = 1;
  std::map<std::uint64_t, std::unique_ptr<Session>> sessions_;
};

}  // namespace hci::replicated
