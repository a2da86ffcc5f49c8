// Storage nodes for the replicated plugin's tests: real hci-replica-server processes on
// 127.0.0.1 (each with its own data directory, port and log), and the plugin options that point
// at them.
//
// Not cluster.h: its helpers use the replica protocol's messages (hci.replicated.v1), which the
// plugin's shared object carries too, and protobuf aborts a process into which the same .proto
// is registered twice. These tests talk to the nodes only through the plugin and the file system.
#pragma once

#include <google/protobuf/struct.pb.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <memory>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "hci/result.h"
#include "hci/status.h"
#include "process/process.h"

namespace hci::replicated::plugin_testing {

struct TestNode {
  std::string name;
  std::string address;  // host:port, known once started (the port is kept across restarts)
  std::string data_dir;
  std::string log_file;
  pid_t pid = -1;
};

inline std::string ReadAll(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

/// True once `pid` is gone or a zombie (the servers are daemons: not our children to reap).
inline bool Exited(pid_t pid) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/stat");
  std::string stat((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  const auto close = stat.rfind(')');
  return close == std::string::npos || close + 2 >= stat.size() || stat[close + 2] == 'Z';
}

/// SIGKILLs `pid` while it still runs a program whose command line holds `cmdline_part` (pids
/// are reused, and other tests run alongside), and returns once every thread of it has exited:
/// its listening socket is closed then, which a zombie main thread does not promise.
inline void KillAndWait(pid_t pid, const std::string& cmdline_part) {
  if (pid <= 0) return;
  auto process = process::ProcessRef::Open(pid);
  if (!process.ok() || !process::ProcessAlive(pid, cmdline_part)) return;
  process->Signal(SIGCONT);  // a paused (SIGSTOP) node too
  process->Signal(SIGKILL);
  process->WaitExited(std::chrono::seconds(10));
}

class TestNodes {
 public:
  /// `count` nodes named node0, node1, ... with running servers; nullptr (printed) on failure.
  static std::unique_ptr<TestNodes> Start(int count) {
    std::unique_ptr<TestNodes> t(new TestNodes());
    char tmpl[] = "/tmp/hci-replicated-plugin-XXXXXX";
    if (::mkdtemp(tmpl) == nullptr) return nullptr;
    t->dir_ = tmpl;
    t->secret_file_ = t->dir_ + "/secret";
    {
      std::ofstream out(t->secret_file_);
      out << "plugin-test-secret-" << ::getpid() << "-" << ::time(nullptr);
    }
    ::chmod(t->secret_file_.c_str(), 0600);
#ifdef HCI_SANITIZER_PRELOAD
    // The plugin runs its engines in nbdkit, which is not instrumented while the engine plugin
    // it loads is: nbdkit needs the sanitizer runtimes preloaded. Only nbdkit: QEMU and qemu-img,
    // which the same tests start, hang under them. The `nbdkit` option names this wrapper.
    t->nbdkit_ = t->dir_ + "/nbdkit";
    {
      std::ofstream out(t->nbdkit_);
      out << "#!/bin/sh\nLD_PRELOAD='" << HCI_SANITIZER_PRELOAD
          << "' ASAN_OPTIONS=detect_leaks=0 exec nbdkit \"$@\"\n";
    }
    ::chmod(t->nbdkit_.c_str(), 0755);
#endif
    for (int i = 0; i < count; ++i) {
      TestNode n;
      n.name = "node" + std::to_string(i);
      n.address = "127.0.0.1:0";
      n.data_dir = t->dir_ + "/" + n.name;
      n.log_file = t->dir_ + "/" + n.name + ".log";
      std::filesystem::create_directories(n.data_dir);
      t->nodes_.push_back(n);
      if (Status st = t->StartServer(i); !st.ok()) {
        std::cerr << "test nodes: " << st << "\n";
        return nullptr;
      }
    }
    return t;
  }

  ~TestNodes() {
    for (auto& n : nodes_) {
      KillAndWait(n.pid, n.data_dir);
    }
    std::error_code ec;
    if (::getenv("HCI_KEEP_TEST_DIR") == nullptr) {
      std::filesystem::remove_all(dir_, ec);
    } else {
      std::cerr << "test nodes: kept " << dir_ << "\n";
    }
  }

  const std::string& dir() const { return dir_; }
  const std::string& secret_file() const { return secret_file_; }
  TestNode& node(int i) { return nodes_.at(static_cast<std::size_t>(i)); }
  int size() const { return static_cast<int>(nodes_.size()); }

  Status StartServer(int i) {
    TestNode& n = node(i);
    const std::string ready = dir_ + "/" + n.name + ".ready";
    std::filesystem::remove(ready);
    process::DaemonOptions d;
    d.argv = {HCI_REPLICA_SERVER, "--node",       n.name,     "--listen",
              n.address,          "--data-dir",   n.data_dir, "--secret-file",
              secret_file_,       "--ready-file", ready};
    d.log_file = n.log_file;
    d.pid_file = dir_ + "/" + n.name + ".pid";
    HCI_ASSIGN_OR_RAISE(n.pid, process::SpawnDaemon(d));
    for (int t = 0; t < 1000; ++t) {
      if (std::filesystem::exists(ready)) {
        std::string addr = ReadAll(ready);
        while (!addr.empty() && (addr.back() == '\n' || addr.back() == ' ')) addr.pop_back();
        if (!addr.empty()) {
          n.address = addr;
          return Status::OK();
        }
      }
      if (Exited(n.pid)) break;
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    return Unavailable("replica server " + n.name +
                       " did not start: " + process::Tail(ReadAll(n.log_file)));
  }

  /// SIGKILL; returns once the process is gone.
  void Kill(int i) {
    TestNode& n = node(i);
    KillAndWait(n.pid, n.data_dir);
    n.pid = -1;
  }

  /// Whether node `i` holds replica `replica` (its directory with a meta file).
  bool HasReplica(int i, const std::string& replica) {
    return std::filesystem::exists(node(i).data_dir + "/" + replica + "/meta");
  }

  /// The plugin options for these nodes: nodes, secret_file and io_timeout_ms.
  google::protobuf::Struct Options(int io_timeout_ms = 2000) const {
    google::protobuf::Struct options;
    auto& fields = *options.mutable_fields();
    auto* list = fields["nodes"].mutable_list_value();
    for (const auto& n : nodes_) {
      auto& node = *list->add_values()->mutable_struct_value()->mutable_fields();
      node["name"].set_string_value(n.name);
      node["address"].set_string_value(n.address);
    }
    fields["secret_file"].set_string_value(secret_file_);
    fields["io_timeout_ms"].set_number_value(io_timeout_ms);
    if (!nbdkit_.empty()) fields["nbdkit"].set_string_value(nbdkit_);
    return options;
  }

 private:
  TestNodes() = default;
  std::string dir_;
  std::string secret_file_;
  std::string nbdkit_;  // a wrapper preloading the sanitizer runtimes; empty: nbdkit from PATH
  std::vector<TestNode> nodes_;
};

}  // namespace hci::replicated::plugin_testing
