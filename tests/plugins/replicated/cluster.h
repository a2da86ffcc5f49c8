// Test harness: storage nodes as real hci-replica-server processes, each in its own network
// namespace with its own address (a veth pair per node), so that cutting a node's link is a real
// partition; an engine as a real nbdkit process; a libnbd client.
#pragma once

#include <libnbd.h>
#include <sys/types.h>

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "hci/replicated/v1/replica.pb.h"
#include "hci/result.h"
#include "hci/status.h"

namespace hci::replicated::testing {

struct Node {
  std::string name;
  std::string netns;    // empty without namespaces (loopback)
  std::string host_if;  // the root namespace's end of the veth pair
  std::string address;  // host:port the server listens on
  std::string data_dir;
  std::string log_file;
  pid_t pid = -1;
  bool stopped = false;  // SIGSTOPped
};

class Cluster {
 public:
  /// `nodes` storage nodes with running servers. Without CAP_NET_ADMIN (or without `ip`), nodes
  /// run on 127.0.0.1 and `partitions()` is false; `note` says why.
  static std::unique_ptr<Cluster> Create(int nodes);
  ~Cluster();

  bool partitions() const { return partitions_; }
  const std::string& note() const { return note_; }
  const std::string& dir() const { return dir_; }
  const std::string& secret_file() const { return secret_file_; }
  Node& node(int i) { return nodes_.at(i); }
  int size() const { return static_cast<int>(nodes_.size()); }

  Status StartServer(int i);
  void Kill(int i);    // SIGKILL, waits until the process is gone
  void Pause(int i);   // SIGSTOP
  void Resume(int i);  // SIGCONT
  void Cut(int i);     // link down: packets to and from the node are dropped
  void Heal(int i);

  /// An EngineConfig for `volume` with one replica per node named "<volume>-r<i>".
  v1::EngineConfig EngineConfigFor(const std::string& volume, std::uint64_t size_bytes,
                                   std::uint32_t write_quorum = 0);
  /// Creates the replicas of `config` on their nodes (generation 1).
  Status CreateReplicas(const v1::EngineConfig& config);
  /// SHA-256 of each 1 MiB extent of the replica's content, through its node's server.
  Result<std::vector<std::string>> Hashes(int node, const std::string& replica,
                                          std::uint64_t size_bytes);
  Result<v1::ReplicaMeta> Meta(int node, const std::string& replica);
  /// One control request to the node's server; the response's status.
  Status Control(int node, const v1::ControlRequest& request, v1::ControlResponse* response);
  /// SHA-256 of each 1 MiB extent of the replica's view at `snapshot`, read through a
  /// connection opened at that snapshot (generation: the replica's current one).
  Result<std::vector<std::string>> SnapshotHashes(int node, const std::string& replica,
                                                  const std::string& snapshot);
  /// The node whose name is `name`, or -1.
  int NodeIndex(const std::string& name) const;

 private:
  Cluster() = default;
  std::string dir_;
  std::string secret_file_;
  std::string secret_;
  std::vector<Node> nodes_;
  bool partitions_ = false;
  std::string note_;
  int subnet_ = 0;
  int subnet_lock_fd_ = -1;
};

/// A running engine: an nbdkit process serving `config` on a unix socket.
class EngineProcess {
 public:
  static Result<std::unique_ptr<EngineProcess>> Start(Cluster& cluster, v1::EngineConfig config);
  ~EngineProcess();
  void Kill();
  Status Restart();
  const std::string& socket() const { return socket_; }
  pid_t pid() const { return pid_; }
  /// The engine's status through its control socket.
  Result<v1::EngineStatus> GetStatus();
  /// Waits until every member is healthy (or `timeout_ms` passes).
  hci::Status WaitHealthy(int timeout_ms);
  /// Any EngineRequest through the control socket; the response's code as a Status.
  hci::Status Request(const v1::EngineRequest& request, v1::EngineResponse* response = nullptr);
  const std::string& config_file() const { return config_file_; }

 private:
  Cluster* cluster_ = nullptr;
  v1::EngineConfig config_;
  std::string config_file_;
  std::string socket_;
  std::string log_file_;
  pid_t pid_ = -1;
};

/// A libnbd connection (closed on destruction).
class NbdClient {
 public:
  static Result<std::unique_ptr<NbdClient>> Connect(const std::string& socket, int timeout_ms);
  ~NbdClient();
  nbd_handle* get() { return h_; }

 private:
  nbd_handle* h_ = nullptr;
};

}  // namespace hci::replicated::testing
