// hci::process: posix_spawn for tools that run to completion, a double fork for daemons.
#include "process/process.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstdlib>
#include <thread>

extern char** environ;

namespace hci::process {
namespace {

using Clock = std::chrono::steady_clock;

constexpr std::size_t kReadChunk = 64 * 1024;
constexpr char kDefaultPath[] = "/usr/local/bin:/usr/bin:/bin";

// Closes a descriptor when it goes out of scope.
class Fd {
 public:
  Fd() = default;
  explicit Fd(int fd) : fd_(fd) {}
  Fd(Fd&& other) noexcept : fd_(std::exchange(other.fd_, -1)) {}
  Fd& operator=(Fd&& other) noexcept {
    if (this != &other) {
      Reset();
      fd_ = std::exchange(other.fd_, -1);
    }
    return *this;
  }
  Fd(const Fd&) = delete;
  Fd& operator=(const Fd&) = delete;
  ~Fd() { Reset(); }

  int get() const { return fd_; }
  bool valid() const { return fd_ >= 0; }
  void Reset(int fd = -1) {
    if (fd_ >= 0) ::close(fd_);
    fd_ = fd;
  }

 private:
  int fd_ = -1;
};

// Moves `fd` above the standard descriptors: when the caller runs with 0, 1 or 2 closed, a new
// pipe may land there, and the child's dup2 onto 0-2 would then clobber it.
Status LiftAboveStdio(Fd& fd) {
  if (fd.get() > 2) return Status();
  int lifted = ::fcntl(fd.get(), F_DUPFD_CLOEXEC, 3);
  if (lifted < 0) return ErrnoStatus(errno, "fcntl(F_DUPFD_CLOEXEC)");
  fd.Reset(lifted);
  return Status();
}

Status MakePipe(Fd& read_end, Fd& write_end) {
  int fds[2];
  if (::pipe2(fds, O_CLOEXEC) != 0) return ErrnoStatus(errno, "pipe2");
  read_end.Reset(fds[0]);
  write_end.Reset(fds[1]);
  HCI_RETURN_NOT_OK(LiftAboveStdio(read_end));
  return LiftAboveStdio(write_end);
}

Status SetNonBlocking(int fd) {
  int flags = ::fcntl(fd, F_GETFL);
  if (flags < 0 || ::fcntl(fd, F_SETFL, flags | O_NONBLOCK) < 0) {
    return ErrnoStatus(errno, "fcntl(O_NONBLOCK)");
  }
  return Status();
}

Status ValidateStrings(const std::vector<std::string>& argv,
                       const std::vector<std::pair<std::string, std::string>>& env) {
  if (argv.empty() || argv[0].empty()) return InvalidArgument("argv: the program is missing");
  for (std::size_t i = 0; i < argv.size(); ++i) {
    if (argv[i].find('\0') != std::string::npos) {
      return InvalidArgument("argv[" + std::to_string(i) + "]: contains a NUL byte");
    }
  }
  for (const auto& [name, value] : env) {
    if (name.empty() || name.find_first_of(std::string_view("=\0", 2)) != std::string::npos ||
        value.find('\0') != std::string::npos) {
      return InvalidArgument("env: \"" + name + "\" is not a valid environment variable");
    }
  }
  return Status();
}

// The caller's environment with `add` applied (later entries of `add` win).
std::vector<std::string> BuildEnv(const std::vector<std::pair<std::string, std::string>>& add) {
  std::vector<std::string> out;
  for (char** e = environ; e != nullptr && *e != nullptr; ++e) {
    std::string_view kv(*e);
    std::string_view name = kv.substr(0, kv.find('='));
    bool replaced =
        std::any_of(add.begin(), add.end(), [&](const auto& entry) { return entry.first == name; });
    if (!replaced) out.emplace_back(kv);
  }
  for (std::size_t i = 0; i < add.size(); ++i) {
    bool later = std::any_of(add.begin() + static_cast<std::ptrdiff_t>(i) + 1, add.end(),
                             [&](const auto& entry) { return entry.first == add[i].first; });
    if (!later) out.push_back(add[i].first + "=" + add[i].second);
  }
  return out;
}

std::string PathFor(const std::vector<std::pair<std::string, std::string>>& env) {
  for (auto it = env.rbegin(); it != env.rend(); ++it) {
    if (it->first == "PATH") return it->second;
  }
  const char* path = std::getenv("PATH");
  return path != nullptr ? path : kDefaultPath;
}

std::vector<char*> CStrings(std::vector<std::string>& strings) {
  std::vector<char*> out;
  out.reserve(strings.size() + 1);
  for (auto& s : strings) out.push_back(s.data());
  out.push_back(nullptr);
  return out;
}

// Maps an errno from spawning `program` to a Status.
Status SpawnError(int err, const std::string& program) {
  switch (err) {
    case ENOENT:
    case ENOTDIR:
      return NotFound("\"" + program + "\" does not exist");
    case EACCES:
    case EPERM:
      return PermissionDenied("\"" + program + "\" is not executable: " + ::strerror(err));
    default:
      return ErrnoStatus(err, "spawning \"" + program + "\"");
  }
}

struct Output {
  Fd fd;
  std::string* data;
  bool* truncated;
};

// Reads what is available on `out` (until EAGAIN); closes it at EOF or on an error.
void Drain(Output& out, std::size_t max_bytes) {
  char buf[kReadChunk];
  while (out.fd.valid()) {
    ssize_t n = ::read(out.fd.get(), buf, sizeof(buf));
    if (n > 0) {
      std::size_t room = max_bytes > out.data->size() ? max_bytes - out.data->size() : 0;
      std::size_t keep = std::min(room, static_cast<std::size_t>(n));
      out.data->append(buf, keep);
      if (keep < static_cast<std::size_t>(n)) *out.truncated = true;
      continue;
    }
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return;
    out.fd.Reset();  // EOF or a read error: nothing more will come
  }
}

// Reaps `pid`; returns its wait status.
int Reap(pid_t pid) {
  int wstatus = 0;
  while (::waitpid(pid, &wstatus, 0) < 0 && errno == EINTR) {
  }
  return wstatus;
}

void KillAndReap(pid_t pid) {
  // The child leads its own process group: this also stops the helpers it started.
  ::kill(-pid, SIGKILL);
  ::kill(pid, SIGKILL);
  Reap(pid);
}

void FillExit(int wstatus, RunResult& result) {
  if (WIFEXITED(wstatus)) {
    result.exit_code = WEXITSTATUS(wstatus);
    result.term_signal = 0;
  } else if (WIFSIGNALED(wstatus)) {
    result.exit_code = -1;
    result.term_signal = WTERMSIG(wstatus);
  }
}

std::string SignalName(int sig) {
  const char* abbrev = ::sigabbrev_np(sig);
  return abbrev != nullptr ? std::string("SIG") + abbrev : std::to_string(sig);
}

// Holds posix_spawn's attribute objects for the duration of one spawn.
struct SpawnAttrs {
  posix_spawn_file_actions_t actions;
  posix_spawnattr_t attr;
  SpawnAttrs() {
    ::posix_spawn_file_actions_init(&actions);
    ::posix_spawnattr_init(&attr);
  }
  ~SpawnAttrs() {
    ::posix_spawn_file_actions_destroy(&actions);
    ::posix_spawnattr_destroy(&attr);
  }
  SpawnAttrs(const SpawnAttrs&) = delete;
  SpawnAttrs& operator=(const SpawnAttrs&) = delete;
};

// Failure report from a daemon's forked children, written to the parent through a pipe.
struct ChildFailure {
  int stage;
  int err;
};
enum Stage : int { kSetsid = 1, kFork, kChdir, kOpenNull, kOpenLog, kDup2, kExec };

const char* StageName(int stage) {
  switch (stage) {
    case kSetsid:
      return "setsid";
    case kFork:
      return "fork";
    case kChdir:
      return "chdir to the working directory";
    case kOpenNull:
      return "open /dev/null";
    case kOpenLog:
      return "open the log file";
    case kDup2:
      return "dup2";
    case kExec:
      return "execve";
    default:
      return "an unknown step";
  }
}

// In a forked child of a possibly multi-threaded process: async-signal-safe calls only.
[[noreturn]] void ChildFail(int report_fd, int stage) {
  ChildFailure failure{stage, errno};
  ssize_t ignored = ::write(report_fd, &failure, sizeof(failure));
  (void)ignored;
  ::_exit(127);
}

// Reads exactly `size` bytes unless EOF comes first; returns the bytes read.
std::size_t ReadFully(int fd, void* buf, std::size_t size) {
  std::size_t got = 0;
  while (got < size) {
    ssize_t n = ::read(fd, static_cast<char*>(buf) + got, size - got);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    got += static_cast<std::size_t>(n);
  }
  return got;
}

}  // namespace

Status WriteFileAtomically(const std::string& path, std::string_view content, mode_t mode) {
  static std::atomic<std::uint64_t> counter{0};
  const std::size_t slash = path.rfind('/');
  const std::string dir = slash == std::string::npos ? "."
                          : slash == 0               ? "/"
                                                     : path.substr(0, slash);
  const std::string base = slash == std::string::npos ? path : path.substr(slash + 1);
  // Hidden and unique: concurrent writers of one path never share a temporary file, and a
  // directory listing never shows one as a record.
  const std::string tmp =
      dir + "/." + base + ".tmp." + std::to_string(::getpid()) + "." + std::to_string(++counter);
  const int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, mode);
  if (fd < 0) return ErrnoStatus(errno, "open \"" + tmp + "\"");
  Status status;
  std::size_t done = 0;
  while (status.ok() && done < content.size()) {
    const ssize_t n = ::write(fd, content.data() + done, content.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      status = ErrnoStatus(errno, "write \"" + tmp + "\"");
    } else {
      done += static_cast<std::size_t>(n);
    }
  }
  // open() applied the umask; the caller asked for exactly `mode`.
  if (status.ok() && ::fchmod(fd, mode) != 0) status = ErrnoStatus(errno, "chmod \"" + tmp + "\"");
  if (status.ok() && ::fsync(fd) != 0) status = ErrnoStatus(errno, "fsync \"" + tmp + "\"");
  if (::close(fd) != 0 && status.ok()) status = ErrnoStatus(errno, "close \"" + tmp + "\"");
  if (status.ok() && ::rename(tmp.c_str(), path.c_str()) != 0) {
    status = ErrnoStatus(errno, "rename \"" + tmp + "\" to \"" + path + "\"");
  }
  if (!status.ok()) {
    ::unlink(tmp.c_str());
    return status;
  }
  // The rename is durable only once the directory is.
  const int dir_fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dir_fd >= 0) {
    ::fsync(dir_fd);
    ::close(dir_fd);
  }
  return Status();
}

Result<std::string> FindProgram(std::string_view program, std::string_view path) {
  if (program.empty()) return InvalidArgument("argv: the program is missing");
  if (program.find('/') != std::string_view::npos) return std::string(program);
  bool found_unexecutable = false;
  std::size_t start = 0;
  while (start <= path.size()) {
    std::size_t end = path.find(':', start);
    if (end == std::string_view::npos) end = path.size();
    std::string dir(path.substr(start, end - start));
    if (dir.empty()) dir = ".";
    std::string candidate = dir + "/" + std::string(program);
    struct stat st;
    if (::stat(candidate.c_str(), &st) == 0 && S_ISREG(st.st_mode)) {
      if (::access(candidate.c_str(), X_OK) == 0) return candidate;
      found_unexecutable = true;
    }
    start = end + 1;
  }
  if (found_unexecutable) {
    return PermissionDenied("\"" + std::string(program) + "\" was found in PATH (" +
                            std::string(path) + ") but is not executable");
  }
  return NotFound("\"" + std::string(program) + "\" was not found in PATH (" + std::string(path) +
                  ")");
}

Result<RunResult> Run(const RunOptions& options) {
  HCI_RETURN_NOT_OK(ValidateStrings(options.argv, options.env));
  const std::string& program = options.argv[0];
  HCI_ASSIGN_OR_RAISE(std::string exe, FindProgram(program, PathFor(options.env)));
  std::vector<std::string> argv_strings = options.argv;
  std::vector<std::string> env_strings = BuildEnv(options.env);
  std::vector<char*> argv = CStrings(argv_strings);
  std::vector<char*> envp = CStrings(env_strings);

  RunResult result;
  Output out{Fd(), &result.stdout_data, &result.stdout_truncated};
  Output err{Fd(), &result.stderr_data, &result.stderr_truncated};
  Fd out_child, err_child, in_parent, in_child;
  HCI_RETURN_NOT_OK(MakePipe(out.fd, out_child));
  HCI_RETURN_NOT_OK(MakePipe(err.fd, err_child));
  if (options.stdin_data.has_value()) {
    // A socket rather than a pipe: send(MSG_NOSIGNAL) cannot raise SIGPIPE in the caller when
    // the child exits without reading its input.
    int sv[2];
    if (::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) != 0) {
      return ErrnoStatus(errno, "socketpair");
    }
    in_parent.Reset(sv[0]);
    in_child.Reset(sv[1]);
    HCI_RETURN_NOT_OK(LiftAboveStdio(in_parent));
    HCI_RETURN_NOT_OK(LiftAboveStdio(in_child));
    ::shutdown(in_parent.get(), SHUT_RD);
  }

  SpawnAttrs spawn;
  if (in_child.valid()) {
    ::posix_spawn_file_actions_adddup2(&spawn.actions, in_child.get(), 0);
  } else {
    ::posix_spawn_file_actions_addopen(&spawn.actions, 0, "/dev/null", O_RDONLY, 0);
  }
  ::posix_spawn_file_actions_adddup2(&spawn.actions, out_child.get(), 1);
  ::posix_spawn_file_actions_adddup2(&spawn.actions, err_child.get(), 2);
  if (!options.working_dir.empty()) {
    ::posix_spawn_file_actions_addchdir_np(&spawn.actions, options.working_dir.c_str());
  }
  // Every descriptor above stderr, including ones opened without O_CLOEXEC by other code.
  ::posix_spawn_file_actions_addclosefrom_np(&spawn.actions, 3);
  sigset_t empty, all;
  ::sigemptyset(&empty);
  ::sigfillset(&all);
  ::posix_spawnattr_setsigmask(&spawn.attr, &empty);
  ::posix_spawnattr_setsigdefault(&spawn.attr, &all);
  ::posix_spawnattr_setpgroup(&spawn.attr, 0);
  ::posix_spawnattr_setflags(
      &spawn.attr, POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF | POSIX_SPAWN_SETPGROUP);

  auto start = Clock::now();
  pid_t pid = -1;
  int rc = ::posix_spawn(&pid, exe.c_str(), &spawn.actions, &spawn.attr, argv.data(), envp.data());
  out_child.Reset();
  err_child.Reset();
  in_child.Reset();
  if (rc != 0) {
    if (rc == ENOENT && !options.working_dir.empty()) {
      struct stat st;
      if (::stat(options.working_dir.c_str(), &st) != 0) {
        return NotFound("working_dir: \"" + options.working_dir + "\" does not exist");
      }
    }
    return SpawnError(rc, exe);
  }

  // From here on the child exists: every return path below reaps it.
  Fd pidfd(static_cast<int>(::syscall(SYS_pidfd_open, pid, 0)));
  for (int fd : {out.fd.get(), err.fd.get(), in_parent.get()}) {
    if (fd >= 0) {
      Status s = SetNonBlocking(fd);
      if (!s.ok()) {
        KillAndReap(pid);
        return s;
      }
    }
  }
  std::string_view pending_in =
      options.stdin_data.has_value() ? std::string_view(*options.stdin_data) : std::string_view();
  if (pending_in.empty()) in_parent.Reset();

  const bool has_deadline = options.timeout.count() > 0;
  const auto deadline = start + options.timeout;
  const auto poll_interval = std::max(options.cancel_poll_interval, std::chrono::milliseconds(1));
  // Without a pidfd, exit is noticed by polling waitpid.
  constexpr auto kReapTick = std::chrono::milliseconds(20);

  bool exited = false;
  int wstatus = 0;
  while (!exited) {
    if (options.cancel_requested && options.cancel_requested()) {
      KillAndReap(pid);
      return Cancelled("\"" + program + "\" was cancelled and killed");
    }
    auto now = Clock::now();
    if (has_deadline && now >= deadline) {
      KillAndReap(pid);
      return DeadlineExceeded("\"" + program + "\" did not finish within " +
                              std::to_string(options.timeout.count()) + " ms and was killed");
    }
    std::chrono::milliseconds wait(-1);
    auto cap = [&](std::chrono::milliseconds limit) {
      if (wait.count() < 0 || limit < wait) wait = limit;
    };
    if (has_deadline) {
      cap(std::chrono::ceil<std::chrono::milliseconds>(deadline - now));
    }
    if (options.cancel_requested) cap(poll_interval);
    if (!pidfd.valid()) cap(kReapTick);

    pollfd fds[4];
    nfds_t n = 0;
    int out_i = -1, err_i = -1, in_i = -1, pid_i = -1;
    if (out.fd.valid()) {
      out_i = static_cast<int>(n);
      fds[n++] = {out.fd.get(), POLLIN, 0};
    }
    if (err.fd.valid()) {
      err_i = static_cast<int>(n);
      fds[n++] = {err.fd.get(), POLLIN, 0};
    }
    if (in_parent.valid()) {
      in_i = static_cast<int>(n);
      fds[n++] = {in_parent.get(), POLLOUT, 0};
    }
    if (pidfd.valid()) {
      pid_i = static_cast<int>(n);
      fds[n++] = {pidfd.get(), POLLIN, 0};
    }
    int ready = ::poll(fds, n, static_cast<int>(wait.count()));
    if (ready < 0 && errno != EINTR) {
      Status s = ErrnoStatus(errno, "poll");
      KillAndReap(pid);
      return s;
    }
    if (ready > 0) {
      if (out_i >= 0 && fds[out_i].revents != 0) Drain(out, options.max_output_bytes);
      if (err_i >= 0 && fds[err_i].revents != 0) Drain(err, options.max_output_bytes);
      if (in_i >= 0 && fds[in_i].revents != 0) {
        while (!pending_in.empty()) {
          ssize_t w = ::send(in_parent.get(), pending_in.data(), pending_in.size(),
                             MSG_NOSIGNAL | MSG_DONTWAIT);
          if (w > 0) {
            pending_in.remove_prefix(static_cast<std::size_t>(w));
            continue;
          }
          if (w < 0 && errno == EINTR) continue;
          if (w < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) break;
          pending_in = {};  // the child closed its stdin: it does not want the rest
        }
        if (pending_in.empty()) in_parent.Reset();
      }
    }
    bool check_exit = pidfd.valid() ? (pid_i >= 0 && ready > 0 && fds[pid_i].revents != 0) : true;
    if (check_exit) {
      pid_t got;
      do {
        got = ::waitpid(pid, &wstatus, WNOHANG);
      } while (got < 0 && errno == EINTR);
      if (got == pid) exited = true;
    }
  }
  // The child's last writes are in the pipes; helpers it left behind may keep them open, so take
  // what is there without waiting for EOF.
  Drain(out, options.max_output_bytes);
  Drain(err, options.max_output_bytes);
  FillExit(wstatus, result);
  result.duration = std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - start);
  return result;
}

std::string Tail(std::string_view text, std::size_t max_bytes) {
  auto is_space = [](char c) { return c == ' ' || c == '\n' || c == '\r' || c == '\t'; };
  while (!text.empty() && is_space(text.back())) text.remove_suffix(1);
  while (!text.empty() && is_space(text.front())) text.remove_prefix(1);
  if (text.size() <= max_bytes) return std::string(text);
  return "..." + std::string(text.substr(text.size() - max_bytes));
}

Status CheckExit(const RunResult& result, std::string_view what) {
  if (result.success()) return Status();
  std::string how = result.term_signal != 0 ? "killed by " + SignalName(result.term_signal)
                                            : "exit " + std::to_string(result.exit_code);
  std::string tail = Tail(result.stderr_data.empty() ? result.stdout_data : result.stderr_data);
  std::string message = std::string(what) + " failed (" + how + ")";
  if (!tail.empty()) message += ": " + tail;
  return Internal(std::move(message));
}

Result<pid_t> SpawnDaemon(const DaemonOptions& options) {
  HCI_RETURN_NOT_OK(ValidateStrings(options.argv, options.env));
  if (options.log_file.empty() || options.log_file.front() != '/') {
    return InvalidArgument("log_file: \"" + options.log_file + "\" is not an absolute path");
  }
  if (!options.pid_file.empty() && options.pid_file.front() != '/') {
    return InvalidArgument("pid_file: \"" + options.pid_file + "\" is not an absolute path");
  }
  HCI_ASSIGN_OR_RAISE(std::string exe, FindProgram(options.argv[0], PathFor(options.env)));
  // Everything the children need is prepared here: after fork they may only make
  // async-signal-safe calls.
  std::vector<std::string> argv_strings = options.argv;
  std::vector<std::string> env_strings = BuildEnv(options.env);
  std::vector<char*> argv = CStrings(argv_strings);
  std::vector<char*> envp = CStrings(env_strings);
  const std::string working_dir = options.working_dir.empty() ? "/" : options.working_dir;
  const char* log_file = options.log_file.c_str();

  Fd pid_read, pid_write, report_read, report_write;
  HCI_RETURN_NOT_OK(MakePipe(pid_read, pid_write));
  HCI_RETURN_NOT_OK(MakePipe(report_read, report_write));

  pid_t middle = ::fork();
  if (middle < 0) return ErrnoStatus(errno, "fork");
  if (middle == 0) {
    // The intermediate child: a new session, then the daemon, then exit so that the daemon is
    // reparented and never becomes the caller's zombie.
    int report = report_write.get();
    if (::setsid() < 0) ChildFail(report, kSetsid);
    const pid_t middle_pid = ::getpid();
    pid_t daemon = ::fork();
    if (daemon < 0) ChildFail(report, kFork);
    if (daemon == 0) {
      // Exec only once reparented. A program that asks for a parent-death signal as it starts
      // (nbdkit 1.32 sets PR_SET_PDEATHSIG to SIGTERM first thing in main, unconditionally)
      // would otherwise get it when its parent, the intermediate child, exits just below, if the
      // exec won the race: under load it sometimes does, and the daemon then dies silently at
      // birth. The intermediate child only writes a pid and exits; 5 s bounds the wait anyway.
      const struct timespec pause = {0, 100 * 1000};  // 100 us
      for (int i = 0; i < 50000 && ::getppid() == middle_pid; ++i) ::nanosleep(&pause, nullptr);
      sigset_t empty;
      ::sigemptyset(&empty);
      ::sigprocmask(SIG_SETMASK, &empty, nullptr);
      struct sigaction dfl;
      ::memset(&dfl, 0, sizeof(dfl));
      dfl.sa_handler = SIG_DFL;
      for (int sig = 1; sig < NSIG; ++sig) {
        if (sig != SIGKILL && sig != SIGSTOP) ::sigaction(sig, &dfl, nullptr);
      }
      if (::chdir(working_dir.c_str()) != 0) ChildFail(report, kChdir);
      int null_fd = ::open("/dev/null", O_RDONLY | O_CLOEXEC);
      if (null_fd < 0) ChildFail(report, kOpenNull);
      int log_fd = ::open(log_file, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0640);
      if (log_fd < 0) ChildFail(report, kOpenLog);
      if (::dup2(null_fd, 0) < 0 || ::dup2(log_fd, 1) < 0 || ::dup2(log_fd, 2) < 0) {
        ChildFail(report, kDup2);
      }
      // Every other descriptor closes at exec (the report pipe included, which tells the
      // parent that execve succeeded).
      if (::close_range(3, ~0U, CLOSE_RANGE_CLOEXEC) != 0) {
        long max = ::sysconf(_SC_OPEN_MAX);
        if (max < 0 || max > 65536) max = 65536;
        for (int fd = 3; fd < max; ++fd) ::fcntl(fd, F_SETFD, FD_CLOEXEC);
      }
      ::execve(exe.c_str(), argv.data(), envp.data());
      ChildFail(report, kExec);
    }
    ssize_t ignored = ::write(pid_write.get(), &daemon, sizeof(daemon));
    (void)ignored;
    ::_exit(0);
  }

  pid_write.Reset();
  report_write.Reset();
  Reap(middle);
  pid_t daemon = -1;
  bool have_pid = ReadFully(pid_read.get(), &daemon, sizeof(daemon)) == sizeof(daemon);
  // EOF without a report: execve succeeded (the report pipe closed on exec).
  ChildFailure failure{0, 0};
  bool failed = ReadFully(report_read.get(), &failure, sizeof(failure)) == sizeof(failure);
  if (failed) {
    if (failure.stage == kExec) return SpawnError(failure.err, exe);
    if (failure.stage == kOpenLog) {
      return ErrnoStatus(failure.err, "log_file: open \"" + options.log_file + "\"");
    }
    if (failure.stage == kChdir) {
      return ErrnoStatus(failure.err, "working_dir: chdir \"" + working_dir + "\"");
    }
    return ErrnoStatus(failure.err, std::string("daemon start: ") + StageName(failure.stage));
  }
  if (!have_pid) return Internal("daemon start: the intermediate child reported no pid");
  if (!options.pid_file.empty()) {
    Status written = WriteFileAtomically(options.pid_file, std::to_string(daemon) + "\n", 0644)
                         .WithContext("pid_file");
    if (!written.ok()) {
      // A daemon nobody can find again must not keep running.
      ::kill(daemon, SIGKILL);
      return written;
    }
  }
  return daemon;
}

bool ProcessAlive(pid_t pid, std::string_view expected_cmdline_substring) {
  if (pid <= 0) return false;
  auto read_file = [](const std::string& path, std::string& out) {
    Fd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
    if (!fd.valid()) return false;
    char buf[4096];
    for (;;) {
      ssize_t n = ::read(fd.get(), buf, sizeof(buf));
      if (n < 0 && errno == EINTR) continue;
      if (n < 0) return false;
      if (n == 0) return true;
      out.append(buf, static_cast<std::size_t>(n));
    }
  };
  std::string base = "/proc/" + std::to_string(pid);
  std::string cmdline;
  // A process in the middle of execve has installed its new memory but not yet its arguments, and
  // one on its way out has dropped its memory: both show an empty cmdline for a moment. The first
  // soon has its arguments, the second soon is a zombie; look again for up to 200 ms rather than
  // call a starting daemon dead (SpawnDaemon returns while the exec may still be finishing).
  for (int attempt = 0;; ++attempt) {
    std::string stat;
    if (!read_file(base + "/stat", stat)) return false;
    // "pid (comm) S ...": comm may itself contain ')' and spaces, so find the last ')'.
    auto close = stat.rfind(')');
    if (close == std::string::npos || close + 2 >= stat.size()) return false;
    char state = stat[close + 2];
    if (state == 'Z' || state == 'X' || state == 'x') return false;
    cmdline.clear();
    if (!read_file(base + "/cmdline", cmdline)) return false;
    if (!cmdline.empty()) break;
    if (attempt == 200) return false;  // a kernel thread
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  std::replace(cmdline.begin(), cmdline.end(), '\0', ' ');
  while (!cmdline.empty() && cmdline.back() == ' ') cmdline.pop_back();
  return cmdline.find(expected_cmdline_substring) != std::string::npos;
}

Result<ProcessRef> ProcessRef::Open(pid_t pid) {
  if (pid <= 0) return InvalidArgument("pid: " + std::to_string(pid) + " is not a process id");
  const int fd = static_cast<int>(::syscall(SYS_pidfd_open, pid, 0));
  if (fd < 0) {
    if (errno == ESRCH) return NotFound("no process " + std::to_string(pid));
    return ErrnoStatus(errno, "pidfd_open " + std::to_string(pid));
  }
  return ProcessRef(pid, fd);  // pidfds are close-on-exec
}

ProcessRef::ProcessRef(ProcessRef&& other) noexcept
    : pid_(std::exchange(other.pid_, -1)), pidfd_(std::exchange(other.pidfd_, -1)) {}

ProcessRef& ProcessRef::operator=(ProcessRef&& other) noexcept {
  if (this != &other) {
    if (pidfd_ >= 0) ::close(pidfd_);
    pid_ = std::exchange(other.pid_, -1);
    pidfd_ = std::exchange(other.pidfd_, -1);
  }
  return *this;
}

ProcessRef::~ProcessRef() {
  if (pidfd_ >= 0) ::close(pidfd_);
}

void ProcessRef::Signal(int signal) const {
  if (pidfd_ >= 0) ::syscall(SYS_pidfd_send_signal, pidfd_, signal, nullptr, 0);
}

bool ProcessRef::WaitExited(std::chrono::milliseconds timeout) const {
  if (pidfd_ < 0) return true;
  // The pidfd polls readable once the whole thread group has exited.
  const auto deadline = Clock::now() + timeout;
  for (;;) {
    pollfd p{pidfd_, POLLIN, 0};
    const auto left =
        std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now()).count();
    const int n = ::poll(&p, 1, static_cast<int>(std::clamp<long long>(left, 0, 60000)));
    if (n > 0) return true;
    if (n < 0 && errno != EINTR) return false;
    if (n == 0 && Clock::now() >= deadline) return false;
  }
}

}  // namespace hci::process
