// Engine processes: one nbdkit (with nbdkit-hci-engine-plugin.so) per attached volume, started as
// a daemon so that guest I/O survives a restart of the embedder, and found again through its pid
// file after one.
#include <signal.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <iterator>
#include <sstream>
#include <thread>

#include "process/process.h"
#include "replicated_internal.h"
#include "wire/replica_wire.h"

namespace hci::replicated::plugin {
namespace {

using Clock = std::chrono::steady_clock;
using std::chrono::milliseconds;

// sockaddr_un::sun_path holds 108 bytes, the terminating NUL included.
constexpr std::size_t kMaxSocketPath = sizeof(sockaddr_un::sun_path) - 1;

std::string ReadAll(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// FNV-1a, 64 bits, as 16 hex digits: a short stable name for a long directory.
std::string ShortHash(std::string_view s) {
  std::uint64_t h = 14695981039346656037ull;
  for (unsigned char c : s) {
    h ^= c;
    h *= 1099511628211ull;
  }
  char buf[17];
  std::snprintf(buf, sizeof(buf), "%016llx", static_cast<unsigned long long>(h));
  return buf;
}

// The fallback socket directory's parent must be ours and private: anyone could have created
// it in /tmp before us.
Status CheckPrivateDir(const std::string& dir) {
  struct stat st {};
  if (::lstat(dir.c_str(), &st) != 0) return ErrnoStatus(errno, "stat \"" + dir + "\"");
  if (!S_ISDIR(st.st_mode) || st.st_uid != ::geteuid() || (st.st_mode & 077) != 0) {
    return PermissionDenied("\"" + dir +
                            "\" is not a private directory of this user (mode 0700); remove it");
  }
  return Status();
}

std::string ConfigArg(const EnginePaths& paths) { return "config=" + paths.config; }

bool Alive(pid_t pid, const EnginePaths& paths) {
  return process::ProcessAlive(pid, ConfigArg(paths));
}

// Kills the engine `engine` (SIGKILL) and waits up to `timeout` until every one of its threads
// has exited; whether they have.
bool KillAndWait(const process::ProcessRef& engine, milliseconds timeout) {
  engine.Signal(SIGKILL);
  return engine.WaitExited(timeout);
}

void RemoveRuntimeFiles(const EnginePaths& paths) {
  ::unlink(paths.nbd_socket.c_str());
  ::unlink(paths.control_socket.c_str());
  ::unlink(paths.pid_file.c_str());
}

}  // namespace

EnginePaths EnginePathsFor(const std::string& state_dir, const std::string& volume) {
  EnginePaths p;
  p.dir = state_dir + "/run/" + volume;
  p.config = p.dir + "/engine.conf";
  p.pid_file = p.dir + "/engine.pid";
  p.log_file = p.dir + "/engine.log";
  p.socket_dir = p.dir;
  if (p.dir.size() + std::strlen("/control.sock") > kMaxSocketPath) {
    p.socket_dir = "/tmp/hci-replicated-" + std::to_string(::geteuid()) + "/" + ShortHash(p.dir);
  }
  p.nbd_socket = p.socket_dir + "/nbd.sock";
  p.control_socket = p.socket_dir + "/control.sock";
  return p;
}

google::protobuf::Struct EngineBlockdev(const EnginePaths& paths) {
  google::protobuf::Struct blockdev;
  auto& fields = *blockdev.mutable_fields();
  fields["driver"].set_string_value("nbd");
  auto& server = *fields["server"].mutable_struct_value()->mutable_fields();
  server["type"].set_string_value("unix");
  server["path"].set_string_value(paths.nbd_socket);
  return blockdev;
}

pid_t RunningEngine(const EnginePaths& paths) {
  std::string text = ReadAll(paths.pid_file);
  if (text.empty()) return -1;
  char* end = nullptr;
  const long pid = std::strtol(text.c_str(), &end, 10);
  if (pid <= 0 || end == text.c_str()) return -1;
  return Alive(static_cast<pid_t>(pid), paths) ? static_cast<pid_t>(pid) : -1;
}

Result<rpb::EngineResponse> CallEngine(const std::string& control_socket,
                                       const rpb::EngineRequest& request, milliseconds timeout) {
  return wire::CallEngine(control_socket, request, static_cast<int>(timeout.count()));
}

Result<rpb::EngineResponse> AskAttachedEngine(const std::string& state_dir,
                                              const std::string& volume,
                                              const rpb::EngineRequest& request,
                                              std::string_view what, milliseconds timeout,
                                              std::string_view field) {
  const std::string prefix =
      (field.empty() ? "" : std::string(field) + ": ") + "volume \"" + volume + "\"";
  auto answer = CallEngine(EnginePathsFor(state_dir, volume).control_socket, request, timeout);
  if (!answer.ok()) {
    return Unavailable(prefix + " is attached but its engine does not answer (" +
                       answer.status().message() + "); AttachVolume again restarts it, then retry");
  }
  if (answer->code() != 0) {
    return Status(
        static_cast<StatusCode>(answer->code()),
        prefix + ": " + (what.empty() ? "" : std::string(what) + ": ") + answer->message());
  }
  return answer;
}

Result<pid_t> StartEngine(const Options& options, const EnginePaths& paths,
                          const rpb::EngineConfig& config, milliseconds timeout) {
  HCI_RETURN_NOT_OK(MakeDirs(paths.dir));
  if (paths.socket_dir != paths.dir) {
    const std::string parent = paths.socket_dir.substr(0, paths.socket_dir.rfind('/'));
    HCI_RETURN_NOT_OK(MakeDirs(parent));
    HCI_RETURN_NOT_OK(CheckPrivateDir(parent));
    HCI_RETURN_NOT_OK(MakeDirs(paths.socket_dir));
  }
  HCI_RETURN_NOT_OK(WriteFileAtomically(paths.config, config.SerializeAsString()));
  RemoveRuntimeFiles(paths);
  // Keep the previous run's log (why did it stop?), but make the tail below this run's.
  std::rename(paths.log_file.c_str(), (paths.log_file + ".1").c_str());

  process::DaemonOptions daemon;
  daemon.argv = {options.nbdkit,        "--foreground",  "--unix",
                 paths.nbd_socket,      "--threads",     "16",
                 options.engine_plugin, ConfigArg(paths)};
  daemon.log_file = paths.log_file;
  daemon.pid_file = paths.pid_file;
  daemon.working_dir = paths.dir;
  HCI_ASSIGN_OR_RAISE(pid_t pid, process::SpawnDaemon(daemon));
  // Held by a pidfd from here on: the engine's exit is its whole exit (a zombie main thread is
  // not), and a kill never reaches a process that reused the pid.
  auto not_started = [&](const std::string& why) {
    RemoveRuntimeFiles(paths);
    return Unavailable("volume " + config.volume() + ": the engine did not start within " +
                       std::to_string(timeout.count()) + " ms (" + why + "); its log (" +
                       paths.log_file +
                       ") ends with: " + process::Tail(ReadAll(paths.log_file), 1500));
  };
  auto engine = process::ProcessRef::Open(pid);
  if (!engine.ok()) return not_started("the engine exited: " + engine.status().message());

  // nbdkit binds the NBD socket first; the control socket answers once the engine has started
  // (it reached a read quorum of replicas), or the process exits.
  rpb::EngineRequest status;
  status.set_status(true);
  const auto deadline = Clock::now() + timeout;
  std::string last;
  while (Clock::now() < deadline) {
    if (engine->WaitExited(milliseconds(0))) {
      last = "the engine exited";
      break;
    }
    if (::access(paths.control_socket.c_str(), F_OK) == 0 &&
        ::access(paths.nbd_socket.c_str(), F_OK) == 0) {
      auto answer = CallEngine(paths.control_socket, status, milliseconds(2000));
      if (answer.ok()) return pid;
      last = answer.status().message();
    }
    std::this_thread::sleep_for(milliseconds(20));
  }
  if (last.empty()) last = "no answer on its control socket";
  KillAndWait(*engine, milliseconds(5000));
  return not_started(last);
}

bool StopEngine(const EnginePaths& paths, milliseconds grace) {
  const pid_t pid = RunningEngine(paths);
  bool clean = false;
  if (pid > 0) {
    auto engine = process::ProcessRef::Open(pid);
    // Still the engine once held (the pid was not reused in between).
    if (engine.ok() && Alive(pid, paths)) {
      engine->Signal(SIGTERM);
      clean = engine->WaitExited(grace);
      if (!clean) KillAndWait(*engine, milliseconds(10000));
    }
  }
  RemoveRuntimeFiles(paths);
  return clean;
}

}  // namespace hci::replicated::plugin
