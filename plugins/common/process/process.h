// hci::process: runs external tools (qemu-img, qemu-system-x86_64, ...) with an argv, never a
// shell, for the plugins that link it statically.
//
// Not part of libhci's public API. Every function is thread-safe. Children never inherit a file
// descriptor of the embedding process other than the ones set up here (stdin, stdout, stderr).
#pragma once

#include <sys/types.h>

#include <chrono>
#include <cstddef>
#include <functional>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "hci/result.h"
#include "hci/status.h"

namespace hci::process {

/// Default cap on each of stdout and stderr kept by Run(), in bytes (16 MiB).
inline constexpr std::size_t kDefaultMaxOutputBytes = 16u << 20;

/// What Run() starts and how long it may take.
struct RunOptions {
  /// The program and its arguments, passed verbatim (no shell, no word splitting, no quoting).
  /// argv[0] is looked up in PATH (the PATH of `env` when set there, else the caller's) only when
  /// it contains no '/'; otherwise it is used as given. Must not be empty.
  std::vector<std::string> argv;
  /// Variables added to (or replacing those of) the caller's environment, as name/value pairs.
  std::vector<std::pair<std::string, std::string>> env;
  /// Working directory of the child; empty: the caller's.
  std::string working_dir;
  /// Bytes written to the child's stdin, which is then closed. nullopt: stdin is /dev/null.
  std::optional<std::string> stdin_data;
  /// Wall-clock limit; zero or negative: none. When it passes, the child's process group is
  /// killed with SIGKILL and reaped, and Run() returns DeadlineExceeded.
  std::chrono::milliseconds timeout{0};
  /// Polled at least every `cancel_poll_interval` while the child runs; when it returns true the
  /// child's process group is killed with SIGKILL and reaped, and Run() returns Cancelled.
  /// Must be cheap and thread-safe. Empty: not cancellable.
  std::function<bool()> cancel_requested;
  std::chrono::milliseconds cancel_poll_interval{50};
  /// The most bytes of each of stdout and stderr kept; the rest is read and dropped (so that
  /// the child never blocks on a full pipe) and the result says it was truncated.
  std::size_t max_output_bytes = kDefaultMaxOutputBytes;
};

/// How a child ended and what it printed.
struct RunResult {
  /// The exit status (0-255) when the child exited; -1 when a signal ended it.
  int exit_code = -1;
  /// The signal that ended the child; 0 when it exited.
  int term_signal = 0;
  /// The first RunOptions::max_output_bytes bytes of stdout and stderr.
  std::string stdout_data;
  std::string stderr_data;
  /// True when more was printed than was kept.
  bool stdout_truncated = false;
  bool stderr_truncated = false;
  /// Wall-clock time from start to reaping.
  std::chrono::milliseconds duration{0};

  /// True when the child exited with status 0.
  bool success() const { return term_signal == 0 && exit_code == 0; }
};

/// Runs `options.argv` to completion (posix_spawn, in its own process group, signal mask and
/// dispositions reset, every descriptor but 0-2 closed) and returns how it ended. A non-zero exit
/// is not an error here: the caller decides (see CheckExit).
///
/// Errors: InvalidArgument for an empty argv or an argument containing a NUL byte; NotFound when
/// argv[0] is not found in PATH or does not exist; PermissionDenied when it is not executable;
/// DeadlineExceeded after `timeout`; Cancelled when `cancel_requested` said so; Internal for a
/// failed system call. In the last three cases the child has been killed and reaped.
Result<RunResult> Run(const RunOptions& options);

/// OK when `result` is a successful exit; otherwise Internal naming `what` and how the child
/// ended, with the tail (at most 1000 bytes) of its stderr (or stdout when stderr is empty),
/// e.g. `qemu-img create failed (exit 1): qemu-img: ...: Image size must be ...`.
Status CheckExit(const RunResult& result, std::string_view what);

/// The last `max_bytes` bytes of `text` without surrounding whitespace, prefixed with "..." when
/// cut.
std::string Tail(std::string_view text, std::size_t max_bytes = 1000);

/// What SpawnDaemon() starts.
struct DaemonOptions {
  /// As RunOptions::argv (PATH lookup only for argv[0] without '/').
  std::vector<std::string> argv;
  /// As RunOptions::env.
  std::vector<std::pair<std::string, std::string>> env;
  /// Working directory of the daemon; empty: "/" (so that it pins no mount point).
  std::string working_dir;
  /// Absolute path of the file that receives the daemon's stdout and stderr, opened with
  /// O_APPEND and created with mode 0640 if missing. Required.
  std::string log_file;
  /// Absolute path of the pidfile to write (the pid in decimal and a newline, written to a
  /// temporary file in the same directory and renamed over it); empty: none.
  std::string pid_file;
};

/// Starts a long-lived daemon that outlives the calling process: it runs in a new session
/// (setsid), with stdin from /dev/null and stdout/stderr appended to `log_file`, and is
/// double-forked so that it is reparented (to init or a subreaper) and never becomes the
/// caller's zombie. The program is exec'd only after that reparenting, so one that sets a
/// parent-death signal (PR_SET_PDEATHSIG) as it starts keeps running. Returns the daemon's pid
/// once its execve succeeded.
///
/// Errors: InvalidArgument for an empty argv or a relative log_file/pid_file; NotFound when the
/// program does not exist; PermissionDenied when it is not executable; the errno status of a
/// failed open of `log_file` or of the pidfile write (the daemon is then killed); Internal for a
/// failed system call.
Result<pid_t> SpawnDaemon(const DaemonOptions& options);

/// True when a process `pid` exists, is not a zombie, and its command line (/proc/<pid>/cmdline,
/// arguments joined with spaces) contains `expected_cmdline_substring` (any when empty). A pid
/// recycled by an unrelated program is therefore not mistaken for the daemon.
bool ProcessAlive(pid_t pid, std::string_view expected_cmdline_substring);

/// A process held by a pidfd (pidfd_open(2), Linux 5.3), so that its signals and waits reach it
/// and never a later process that reuses its pid. Move-only.
class ProcessRef {
 public:
  /// Holds process `pid`. NotFound when there is no such process (it may have exited and been
  /// reaped already); the errno status of another failure. Checking that the process is the
  /// expected one (ProcessAlive) after Open() leaves no window for pid reuse.
  static Result<ProcessRef> Open(pid_t pid);

  ProcessRef(ProcessRef&& other) noexcept;
  ProcessRef& operator=(ProcessRef&& other) noexcept;
  ProcessRef(const ProcessRef&) = delete;
  ProcessRef& operator=(const ProcessRef&) = delete;
  ~ProcessRef();

  pid_t pid() const { return pid_; }

  /// Sends `signal` (pidfd_send_signal(2)). A process that has already exited is not an error.
  void Signal(int signal) const;

  /// Waits up to `timeout` (0: only looks) until every thread of the process has exited, and
  /// returns whether they have. Then its descriptors and sockets are closed, which a zombie
  /// state in /proc/<pid>/stat does not say: that is the main thread's alone, and the others
  /// can still be exiting.
  bool WaitExited(std::chrono::milliseconds timeout) const;

 private:
  ProcessRef(pid_t pid, int pidfd) : pid_(pid), pidfd_(pidfd) {}
  pid_t pid_ = -1;
  int pidfd_ = -1;
};

/// Replaces the file at `path` with `content` so that a reader sees the old content or the new
/// one, never a part, and a crash leaves one of them: a hidden temporary file in the same
/// directory is written, given `mode`, fsynced and renamed over `path`, then the directory is
/// fsynced. Errors: the errno status of the failing step, naming the file; the temporary file is
/// removed and `path` is unchanged.
Status WriteFileAtomically(const std::string& path, std::string_view content, mode_t mode = 0600);

/// Resolves `program` as Run() does: returned as is when it contains '/', else the first
/// executable regular file named so in the directories of `path` (colon-separated; empty entries
/// mean the current directory). NotFound when there is none.
Result<std::string> FindProgram(std::string_view program, std::string_view path);

}  // namespace hci::process
