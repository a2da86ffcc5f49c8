// hci::process against real programs: Run() (exit codes, stdin, stdout/stderr capture,
// verbatim arguments, timeout, cancel, descriptor hygiene), SpawnDaemon()/ProcessAlive() and
// ProcessRef.
#include "process/process.h"

#include <fcntl.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <pthread.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

namespace hci::process {
namespace {

using std::chrono::milliseconds;
using std::chrono::seconds;
using ::testing::HasSubstr;
using ::testing::Not;

std::string ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// Digits unique to this test run, so that a process can be found by its command line (and
// "1000.<token>" is still a number of seconds for sleep).
std::string UniqueToken() {
  static std::atomic<int> counter{0};
  return std::to_string(::getpid()) + std::to_string(100 + ++counter);
}

// Pids of live (non-zombie) processes whose command line contains `needle`.
std::vector<pid_t> FindProcesses(const std::string& needle) {
  std::vector<pid_t> out;
  for (const auto& entry : std::filesystem::directory_iterator("/proc")) {
    const std::string name = entry.path().filename();
    if (name.find_first_not_of("0123456789") != std::string::npos) continue;
    pid_t pid = static_cast<pid_t>(std::stol(name));
    if (pid != ::getpid() && ProcessAlive(pid, needle)) out.push_back(pid);
  }
  return out;
}

// Field `index` (1-based, as in proc(5)) of /proc/<pid>/stat.
long StatField(pid_t pid, int index) {
  std::string stat = ReadFile("/proc/" + std::to_string(pid) + "/stat");
  auto close = stat.rfind(')');
  if (close == std::string::npos) return -1;
  std::istringstream rest(stat.substr(close + 2));
  std::string field;
  for (int i = 3; i <= index; ++i) rest >> field;  // field 3 is the state
  return std::stol(field);
}

std::string TempDir() {
  std::string pattern = ::testing::TempDir() + "hci-process-test-XXXXXX";
  EXPECT_NE(::mkdtemp(pattern.data()), nullptr);
  return pattern;
}

RunOptions Argv(std::vector<std::string> argv) {
  RunOptions o;
  o.argv = std::move(argv);
  return o;
}

TEST(RunTest, TrueSucceeds) {
  auto r = process::Run(Argv({"/bin/true"}));
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_TRUE(r->success());
  EXPECT_EQ(r->exit_code, 0);
  EXPECT_EQ(r->term_signal, 0);
  EXPECT_TRUE(CheckExit(*r, "true").ok());
}

TEST(RunTest, FalseExitsOneAndCheckExitSaysSo) {
  auto r = process::Run(Argv({"/bin/false"}));
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_FALSE(r->success());
  EXPECT_EQ(r->exit_code, 1);
  Status s = CheckExit(*r, "false");
  EXPECT_EQ(s.code(), StatusCode::kInternal);
  EXPECT_EQ(s.message(), "false failed (exit 1)");
}

TEST(RunTest, ProgramWithoutSlashIsFoundInPath) {
  auto r = process::Run(Argv({"true"}));
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_TRUE(r->success());
}

TEST(RunTest, MissingProgramIsNotFound) {
  auto r = process::Run(Argv({"hci-no-such-program-" + UniqueToken()}));
  EXPECT_EQ(r.status().code(), StatusCode::kNotFound) << r.status();
  EXPECT_THAT(r.status().message(), HasSubstr("not found in PATH"));
  auto abs = process::Run(Argv({"/nonexistent/hci-no-such-program"}));
  EXPECT_EQ(abs.status().code(), StatusCode::kNotFound) << abs.status();
}

TEST(RunTest, NonExecutableFileIsPermissionDenied) {
  std::string dir = TempDir();
  std::string path = dir + "/not-executable";
  std::ofstream(path) << "#!/bin/sh\nexit 0\n";
  ::chmod(path.c_str(), 0644);
  auto r = process::Run(Argv({path}));
  EXPECT_EQ(r.status().code(), StatusCode::kPermissionDenied) << r.status();
  std::filesystem::remove_all(dir);
}

TEST(RunTest, EmptyArgvIsInvalid) {
  EXPECT_EQ(process::Run(RunOptions()).status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(process::Run(Argv({"/bin/echo", std::string("a\0b", 3)})).status().code(),
            StatusCode::kInvalidArgument);
}

TEST(RunTest, CatCopiesStdinToStdout) {
  RunOptions o = Argv({"cat"});
  o.stdin_data = "hello\nworld\n";
  auto r = process::Run(o);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_TRUE(r->success());
  EXPECT_EQ(r->stdout_data, "hello\nworld\n");
  EXPECT_EQ(r->stderr_data, "");
}

TEST(RunTest, LargeStdinAndStdoutDoNotDeadlock) {
  // Far more than a pipe holds in either direction: Run() must write and read at once.
  std::string data(4 << 20, 'x');
  for (std::size_t i = 0; i < data.size(); i += 4096) data[i] = static_cast<char>('a' + i % 26);
  RunOptions o = Argv({"cat"});
  o.stdin_data = data;
  auto r = process::Run(o);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_TRUE(r->success());
  EXPECT_EQ(r->stdout_data.size(), data.size());
  EXPECT_TRUE(r->stdout_data == data);
}

TEST(RunTest, ChildThatIgnoresStdinDoesNotHurtTheCaller) {
  // /bin/true exits without reading: the writes fail with EPIPE, which must not raise SIGPIPE.
  RunOptions o = Argv({"/bin/true"});
  o.stdin_data = std::string(1 << 20, 'x');
  auto r = process::Run(o);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_TRUE(r->success());
}

TEST(RunTest, WithoutStdinDataStdinIsDevNull) {
  auto r = process::Run(Argv({"cat"}));
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_TRUE(r->success());
  EXPECT_EQ(r->stdout_data, "");
}

TEST(RunTest, ArgumentsArePassedVerbatimWithoutAShell) {
  const std::vector<std::string> args = {
      "a b  c", "\"double\"", "'single'", "x;echo pwned", "$(id)", "`id`", "*", "", "|&>"};
  std::vector<std::string> argv = {"printf", "[%s]\\n"};
  argv.insert(argv.end(), args.begin(), args.end());
  auto r = process::Run(Argv(argv));
  ASSERT_TRUE(r.ok()) << r.status();
  ASSERT_TRUE(r->success()) << r->stderr_data;
  std::string expected;
  for (const auto& a : args) expected += "[" + a + "]\n";
  EXPECT_EQ(r->stdout_data, expected);
}

TEST(RunTest, StderrIsCapturedAndCheckExitQuotesIt) {
  std::string missing = "/nonexistent-" + UniqueToken();
  auto r = process::Run(Argv({"ls", missing}));
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_FALSE(r->success());
  EXPECT_EQ(r->stdout_data, "");
  EXPECT_THAT(r->stderr_data, HasSubstr(missing));
  Status s = CheckExit(*r, "ls listing");
  EXPECT_EQ(s.code(), StatusCode::kInternal);
  EXPECT_THAT(s.message(), HasSubstr("ls listing failed (exit 2): "));
  EXPECT_THAT(s.message(), HasSubstr(missing));
}

TEST(RunTest, OutputBeyondTheCapIsDroppedAndNoted) {
  RunOptions o = Argv({"head", "-c", "1000000", "/dev/zero"});
  o.max_output_bytes = 1000;
  auto r = process::Run(o);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_TRUE(r->success());
  EXPECT_EQ(r->stdout_data.size(), 1000u);
  EXPECT_TRUE(r->stdout_truncated);
  EXPECT_FALSE(r->stderr_truncated);
}

TEST(RunTest, EnvironmentAdditionsAndWorkingDirectory) {
  std::string dir = TempDir();
  RunOptions o = Argv({"sh", "-c", "printf '%s|%s|' \"$HCI_PROCESS_TEST\" \"$HOME\"; pwd"});
  o.env = {{"HCI_PROCESS_TEST", "a value; with spaces"}, {"HOME", "/hci-home"}};
  o.working_dir = dir;
  auto r = process::Run(o);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->stdout_data, "a value; with spaces|/hci-home|" + dir + "\n");
  o.working_dir = dir + "/missing";
  EXPECT_EQ(process::Run(o).status().code(), StatusCode::kNotFound);
  std::filesystem::remove_all(dir);
}

TEST(RunTest, TimeoutKillsAndReapsTheChild) {
  std::string token = "1000." + UniqueToken();
  RunOptions o = Argv({"sleep", token});
  o.timeout = milliseconds(300);
  auto start = std::chrono::steady_clock::now();
  auto r = process::Run(o);
  auto elapsed = std::chrono::steady_clock::now() - start;
  EXPECT_EQ(r.status().code(), StatusCode::kDeadlineExceeded) << r.status();
  EXPECT_THAT(r.status().message(), HasSubstr("300 ms"));
  EXPECT_GE(elapsed, milliseconds(300));
  EXPECT_LT(elapsed, seconds(10));
  EXPECT_THAT(FindProcesses("sleep " + token), ::testing::IsEmpty());
}

TEST(RunTest, CancelKillsAndReapsTheChild) {
  std::string token = "1000." + UniqueToken();
  std::atomic<bool> cancel{false};
  RunOptions o = Argv({"sleep", token});
  o.cancel_requested = [&] { return cancel.load(); };
  std::thread canceller([&] {
    std::this_thread::sleep_for(milliseconds(200));
    cancel = true;
  });
  auto start = std::chrono::steady_clock::now();
  auto r = process::Run(o);
  auto elapsed = std::chrono::steady_clock::now() - start;
  canceller.join();
  EXPECT_EQ(r.status().code(), StatusCode::kCancelled) << r.status();
  EXPECT_LT(elapsed, seconds(10));
  EXPECT_THAT(FindProcesses("sleep " + token), ::testing::IsEmpty());
}

TEST(RunTest, SignalledChildIsReported) {
  auto r = process::Run(Argv({"sh", "-c", "kill -KILL $$"}));
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_FALSE(r->success());
  EXPECT_EQ(r->exit_code, -1);
  EXPECT_EQ(r->term_signal, SIGKILL);
  EXPECT_THAT(CheckExit(*r, "sh").message(), HasSubstr("sh failed (killed by SIGKILL)"));
}

TEST(RunTest, InheritedDescriptorsAreClosed) {
  // Opened without O_CLOEXEC, as careless code in an embedding process might.
  int leaked = ::open("/dev/null", O_RDONLY);
  ASSERT_GE(leaked, 0);
  int high = ::fcntl(leaked, F_DUPFD, 200);
  ASSERT_GE(high, 200);
  auto r = process::Run(Argv({"ls", "/proc/self/fd"}));
  ::close(leaked);
  ::close(high);
  ASSERT_TRUE(r.ok()) << r.status();
  std::istringstream lines(r->stdout_data);
  std::vector<int> fds;
  for (std::string line; std::getline(lines, line);) fds.push_back(std::stoi(line));
  // 0-2, plus the descriptor ls itself opened to read the directory.
  EXPECT_LE(fds.size(), 4u) << r->stdout_data;
  EXPECT_THAT(fds, Not(::testing::Contains(high)));
}

TEST(RunTest, ConcurrentRunsFromManyThreads) {
  std::vector<std::thread> threads;
  std::atomic<int> good{0};
  for (int i = 0; i < 8; ++i) {
    threads.emplace_back([&, i] {
      RunOptions o = Argv({"cat"});
      o.stdin_data = "thread " + std::to_string(i);
      auto r = process::Run(o);
      if (r.ok() && r->stdout_data == "thread " + std::to_string(i)) ++good;
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_EQ(good.load(), 8);
}

class DaemonTest : public ::testing::Test {
 protected:
  void SetUp() override { dir_ = TempDir(); }
  void TearDown() override {
    // Only while it still runs what we started: pids are reused, and other tests run alongside.
    for (const auto& [pid, cmdline] : started_) {
      if (ProcessAlive(pid, cmdline)) ::kill(pid, SIGKILL);
    }
    std::filesystem::remove_all(dir_);
  }

  std::string dir_;
  // (pid, part of its command line)
  std::vector<std::pair<pid_t, std::string>> started_;
};

TEST_F(DaemonTest, DaemonOutlivesItsThreadIsReparentedAndWritesItsPidfile) {
  std::string token = "1000." + UniqueToken();
  std::string log = dir_ + "/daemon.log";
  std::string pidfile = dir_ + "/daemon.pid";
  std::ofstream(log) << "previous line\n";
  DaemonOptions o;
  o.argv = {"sh", "-c", "echo to-stdout; echo to-stderr >&2; exec sleep " + token};
  o.log_file = log;
  o.pid_file = pidfile;
  o.working_dir = dir_;
  Result<pid_t> pid = Status(Internal("not run"));
  std::thread spawner([&] { pid = SpawnDaemon(o); });
  spawner.join();
  ASSERT_TRUE(pid.ok()) << pid.status();
  started_.emplace_back(*pid, "sleep " + token);

  EXPECT_EQ(ReadFile(pidfile), std::to_string(*pid) + "\n");
  EXPECT_FALSE(std::filesystem::exists(pidfile + ".tmp." + std::to_string(::getpid())));
  // Reparented: not our child, and in a session of its own making (not ours).
  long ppid = StatField(*pid, 4);
  EXPECT_NE(ppid, static_cast<long>(::getpid()));
  EXPECT_NE(static_cast<long>(::getsid(*pid)), static_cast<long>(::getsid(0)));
  // Output appended to the log, after what was there.
  std::string content;
  for (int i = 0; i < 100; ++i) {
    content = ReadFile(log);
    if (content.find("to-stderr") != std::string::npos &&
        content.find("to-stdout") != std::string::npos) {
      break;
    }
    std::this_thread::sleep_for(milliseconds(50));
  }
  EXPECT_EQ(content.rfind("previous line\n", 0), 0u) << content;
  EXPECT_THAT(content, HasSubstr("to-stdout"));
  EXPECT_THAT(content, HasSubstr("to-stderr"));
  // exec'd into sleep: the command line is now sleep's.
  bool alive = false;
  for (int i = 0; i < 100 && !alive; ++i) {
    alive = ProcessAlive(*pid, "sleep " + token);
    if (!alive) std::this_thread::sleep_for(milliseconds(50));
  }
  EXPECT_TRUE(alive);
  EXPECT_EQ(StatField(*pid, 5), static_cast<long>(::getsid(*pid)));  // pgrp
  EXPECT_EQ(ReadFile("/proc/" + std::to_string(*pid) + "/cwd/daemon.log"), content);

  ASSERT_EQ(::kill(*pid, SIGKILL), 0);
  bool gone = false;
  for (int i = 0; i < 200 && !gone; ++i) {
    gone = !ProcessAlive(*pid, "sleep " + token);
    if (!gone) std::this_thread::sleep_for(milliseconds(25));
  }
  EXPECT_TRUE(gone);
}

TEST_F(DaemonTest, DaemonHasOnlyStandardDescriptorsAndDevNullStdin) {
  int leaked = ::open("/dev/null", O_RDONLY);
  ASSERT_GE(leaked, 0);
  int high = ::fcntl(leaked, F_DUPFD, 200);
  DaemonOptions o;
  std::string token = "1000." + UniqueToken();
  o.argv = {"sleep", token};
  o.log_file = dir_ + "/log";
  auto pid = SpawnDaemon(o);
  ::close(leaked);
  ::close(high);
  ASSERT_TRUE(pid.ok()) << pid.status();
  started_.emplace_back(*pid, "sleep " + token);
  // The program itself may hold a file open for a moment while it starts (sleep reads the locale
  // archive), so look until only 0-2 are left; an inherited descriptor would stay forever.
  std::vector<int> fds;
  for (int attempt = 0; attempt < 100; ++attempt) {
    fds.clear();
    for (const auto& e :
         std::filesystem::directory_iterator("/proc/" + std::to_string(*pid) + "/fd")) {
      fds.push_back(std::stoi(e.path().filename()));
    }
    std::sort(fds.begin(), fds.end());
    if (fds == std::vector<int>{0, 1, 2}) break;
    std::this_thread::sleep_for(milliseconds(20));
  }
  EXPECT_EQ(fds, (std::vector<int>{0, 1, 2}));
  EXPECT_EQ(std::filesystem::read_symlink("/proc/" + std::to_string(*pid) + "/fd/0"), "/dev/null");
  EXPECT_EQ(std::filesystem::read_symlink("/proc/" + std::to_string(*pid) + "/fd/1"),
            dir_ + "/log");
}

// Slows the process that forks while `slow_fork_parent` is set: in SpawnDaemon that is the
// intermediate child, after it forked the daemon and before it exits.
std::atomic<bool> slow_fork_parent{false};
void SlowForkParent() {
  if (slow_fork_parent.load()) ::usleep(300 * 1000);
}

// nbdkit sets PR_SET_PDEATHSIG first thing: a daemon exec'd before the intermediate child's exit
// got that signal then, and died at birth. Here the intermediate child is held back (an atfork
// handler) until long after the program has set its parent-death signal.
TEST_F(DaemonTest, DaemonThatSetsAParentDeathSignalSurvivesTheIntermediateChild) {
  static const bool registered = ::pthread_atfork(nullptr, SlowForkParent, nullptr) == 0;
  ASSERT_TRUE(registered);
  std::string token = "1000." + UniqueToken();
  DaemonOptions o;
  o.argv = {"setpriv", "--pdeathsig", "TERM", "--", "sleep", token};
  o.log_file = dir_ + "/log";
  slow_fork_parent = true;
  auto pid = SpawnDaemon(o);
  slow_fork_parent = false;
  ASSERT_TRUE(pid.ok()) << pid.status();
  started_.emplace_back(*pid, "sleep " + token);
  bool running = false;
  for (int i = 0; i < 100 && !running; ++i) {
    running = ProcessAlive(*pid, "sleep " + token);
    if (!running) std::this_thread::sleep_for(milliseconds(20));
  }
  ASSERT_TRUE(running) << ReadFile(o.log_file);
  // The intermediate child has exited (SpawnDaemon reaped it); the daemon is still there.
  std::this_thread::sleep_for(milliseconds(200));
  EXPECT_TRUE(ProcessAlive(*pid, "sleep " + token)) << "killed by its parent-death signal";
}

TEST_F(DaemonTest, ExecFailureIsReported) {
  std::string path = dir_ + "/not-executable";
  std::ofstream(path) << "#!/bin/sh\n";
  ::chmod(path.c_str(), 0644);
  DaemonOptions o;
  o.argv = {path};
  o.log_file = dir_ + "/log";
  EXPECT_EQ(SpawnDaemon(o).status().code(), StatusCode::kPermissionDenied);
  o.argv = {"hci-no-such-daemon-" + UniqueToken()};
  EXPECT_EQ(SpawnDaemon(o).status().code(), StatusCode::kNotFound);
}

TEST_F(DaemonTest, BadOptionsAreRefused) {
  DaemonOptions o;
  o.argv = {"sleep", "1"};
  o.log_file = "relative.log";
  auto r = SpawnDaemon(o);
  EXPECT_EQ(r.status().code(), StatusCode::kInvalidArgument);
  EXPECT_THAT(r.status().message(), HasSubstr("log_file"));
  o.log_file = dir_ + "/missing-dir/log";
  r = SpawnDaemon(o);
  EXPECT_EQ(r.status().code(), StatusCode::kNotFound) << r.status();
  EXPECT_THAT(r.status().message(), HasSubstr("log_file"));
  o.log_file = dir_ + "/log";
  o.pid_file = "x.pid";
  EXPECT_EQ(SpawnDaemon(o).status().code(), StatusCode::kInvalidArgument);
}

TEST(ProcessAliveTest, MatchesOnTheCommandLine) {
  EXPECT_TRUE(ProcessAlive(::getpid(), ""));
  EXPECT_TRUE(ProcessAlive(::getpid(), "process_test"));
  EXPECT_FALSE(ProcessAlive(::getpid(), "qemu-system-x86_64 -name " + UniqueToken()));
  EXPECT_FALSE(ProcessAlive(0, ""));
  EXPECT_FALSE(ProcessAlive(-1, ""));
}

TEST(ProcessRefTest, AReapedPidIsNotFound) {
  pid_t child = ::fork();
  ASSERT_GE(child, 0);
  if (child == 0) ::_exit(0);
  ASSERT_EQ(::waitpid(child, nullptr, 0), child);
  EXPECT_EQ(ProcessRef::Open(child).status().code(), StatusCode::kNotFound);
  EXPECT_EQ(ProcessRef::Open(-1).status().code(), StatusCode::kInvalidArgument);
}

TEST(ProcessRefTest, SignalsAndWaitsForADaemonThatIsNotOurChild) {
  std::string token = "1000." + UniqueToken();
  DaemonOptions o;
  o.argv = {"sleep", token};
  o.log_file = "/dev/null";
  auto pid = SpawnDaemon(o);
  ASSERT_TRUE(pid.ok()) << pid.status();
  auto ref = ProcessRef::Open(*pid);
  ASSERT_TRUE(ref.ok()) << ref.status();
  ProcessRef held = std::move(*ref);
  EXPECT_EQ(held.pid(), *pid);
  EXPECT_FALSE(held.WaitExited(milliseconds(0)));
  EXPECT_FALSE(held.WaitExited(milliseconds(50)));
  held.Signal(SIGKILL);
  EXPECT_TRUE(held.WaitExited(seconds(10)));
  EXPECT_FALSE(ProcessAlive(*pid, "sleep " + token));
  held.Signal(SIGKILL);  // exited (and reaped by init): harmless
  EXPECT_TRUE(held.WaitExited(milliseconds(0)));
}

// The reason ProcessRef exists: a main thread that has exited shows 'Z' in /proc/<pid>/stat
// while the process's other threads still run (and hold its sockets open).
TEST(ProcessRefTest, AZombieMainThreadIsNotAnExitedProcess) {
  pid_t child = ::fork();
  ASSERT_GE(child, 0);
  if (child == 0) {
    pthread_t worker;
    ::pthread_create(
        &worker, nullptr,
        [](void*) -> void* {
          ::usleep(500 * 1000);
          ::_exit(0);
        },
        nullptr);
    // exit(2) of this thread alone: pthread_exit() would unwind through GoogleTest's catch.
    ::syscall(SYS_exit, 0);
  }
  auto ref = ProcessRef::Open(child);
  ASSERT_TRUE(ref.ok()) << ref.status();
  std::string state;
  for (int i = 0; i < 200 && state != "Z"; ++i) {
    const std::string stat = ReadFile("/proc/" + std::to_string(child) + "/stat");
    const auto close = stat.rfind(')');
    state = close == std::string::npos ? "" : stat.substr(close + 2, 1);
    if (state != "Z") std::this_thread::sleep_for(milliseconds(5));
  }
  EXPECT_EQ(state, "Z") << "the main thread did not exit first";
  EXPECT_FALSE(ref->WaitExited(milliseconds(0)));
  EXPECT_TRUE(ref->WaitExited(seconds(10)));
  int status = 0;
  ASSERT_EQ(::waitpid(child, &status, 0), child);
  EXPECT_TRUE(WIFEXITED(status));
}

TEST(FindProgramTest, SearchesEachPathEntry) {
  auto found = FindProgram("sh", "/nonexistent:/bin");
  ASSERT_TRUE(found.ok()) << found.status();
  EXPECT_EQ(*found, "/bin/sh");
  EXPECT_EQ(*FindProgram("./relative/x", "/bin"), "./relative/x");
  EXPECT_EQ(FindProgram("sh", "/nonexistent").status().code(), StatusCode::kNotFound);
}

TEST(WriteFileAtomicallyTest, ReplacesWholeFilesWithTheModeAskedAndLeavesNoTemporary) {
  char tmpl[] = "/tmp/hci-atomic-XXXXXX";
  ASSERT_NE(::mkdtemp(tmpl), nullptr);
  const std::string dir = tmpl;
  const std::string path = dir + "/record.json";
  ASSERT_TRUE(WriteFileAtomically(path, "first").ok());
  ASSERT_TRUE(WriteFileAtomically(path, std::string(100000, 'x'), 0640).ok());
  std::ifstream in(path);
  std::string content((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  EXPECT_EQ(content, std::string(100000, 'x'));
  struct stat st {};
  ASSERT_EQ(::stat(path.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0640u);
  int entries = 0;
  for ([[maybe_unused]] const auto& e : std::filesystem::directory_iterator(dir)) ++entries;
  EXPECT_EQ(entries, 1) << "a temporary file was left behind";

  // A directory that does not exist: the error names the file and nothing is created.
  Status missing = WriteFileAtomically(dir + "/no/such/file", "x");
  EXPECT_EQ(missing.code(), StatusCode::kNotFound) << missing;
  EXPECT_THAT(missing.message(), ::testing::HasSubstr("file.tmp"));
  std::filesystem::remove_all(dir);
}

}  // namespace
}  // namespace hci::process
