// QmpClient against a real QEMU: qemu-system-x86_64 -machine none (no guest, starts in well under
// a second). Without QEMU installed these tests fail and say how to install it.
#include "qmp/qmp_client.h"

#include <fcntl.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <boost/json/parse.hpp>
#include <boost/json/serialize.hpp>
#include <chrono>
#include <condition_variable>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <future>
#include <mutex>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

extern char** environ;

namespace hci::qmp {
namespace {

using std::chrono::milliseconds;
using std::chrono::seconds;
using ::testing::HasSubstr;
namespace json = boost::json;

constexpr char kQemuBinary[] = "qemu-system-x86_64";

// The absolute path of `name` on PATH, or "" when it is not there.
std::string FindOnPath(const std::string& name) {
  const char* path = std::getenv("PATH");
  std::stringstream dirs(path != nullptr ? path : "/usr/bin:/bin");
  std::string dir;
  while (std::getline(dirs, dir, ':')) {
    if (dir.empty()) continue;
    std::string candidate = dir + "/" + name;
    if (::access(candidate.c_str(), X_OK) == 0) return candidate;
  }
  return "";
}

// One QEMU process with its QMP socket, killed (SIGKILL) and reaped on destruction.
class Qemu {
 public:
  Qemu(std::string binary, std::string socket_path, std::string log_path)
      : binary_(std::move(binary)),
        socket_path_(std::move(socket_path)),
        log_path_(std::move(log_path)) {}
  ~Qemu() { Kill(); }

  // Starts QEMU through posix_spawn with an argv (never a shell).
  ::testing::AssertionResult Start() {
    std::vector<std::string> args = {binary_,
                                     "-machine",
                                     "none",
                                     "-nodefaults",
                                     "-no-user-config",
                                     "-display",
                                     "none",
                                     "-accel",
                                     "tcg",
                                     "-qmp",
                                     "unix:" + socket_path_ + ",server=on,wait=off"};
    std::vector<char*> argv;
    for (std::string& a : args) argv.push_back(a.data());
    argv.push_back(nullptr);
    posix_spawn_file_actions_t actions;
    posix_spawn_file_actions_init(&actions);
    posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0);
    posix_spawn_file_actions_addopen(&actions, 1, log_path_.c_str(), O_WRONLY | O_CREAT | O_APPEND,
                                     0644);
    posix_spawn_file_actions_adddup2(&actions, 1, 2);
    int rc = posix_spawn(&pid_, binary_.c_str(), &actions, nullptr, argv.data(), environ);
    posix_spawn_file_actions_destroy(&actions);
    if (rc != 0) {
      pid_ = -1;
      return ::testing::AssertionFailure() << "posix_spawn " << binary_ << ": " << strerror(rc);
    }
    return ::testing::AssertionSuccess();
  }

  pid_t pid() const { return pid_; }
  void Signal(int sig) const {
    if (pid_ > 0) ::kill(pid_, sig);
  }

  // Waits for QEMU to exit on its own; returns its wait status, or -1 on timeout.
  int WaitForExit(milliseconds timeout) {
    const auto deadline = std::chrono::steady_clock::now() + timeout;
    while (pid_ > 0) {
      int status = 0;
      pid_t r = ::waitpid(pid_, &status, WNOHANG);
      if (r == pid_) {
        pid_ = -1;
        return status;
      }
      if (std::chrono::steady_clock::now() >= deadline) return -1;
      std::this_thread::sleep_for(milliseconds(10));
    }
    return -1;
  }

  void Kill() {
    if (pid_ <= 0) return;
    ::kill(pid_, SIGKILL);
    int status = 0;
    ::waitpid(pid_, &status, 0);
    pid_ = -1;
  }

 private:
  std::string binary_;
  std::string socket_path_;
  std::string log_path_;
  pid_t pid_ = -1;
};

// Records the events and disconnects a client reports, for assertions from the test thread.
struct Recorder {
  std::mutex mu;
  std::condition_variable cv;
  std::vector<std::string> events;
  std::vector<Status> disconnects;

  void OnEvent(const QmpEvent& e) {
    std::lock_guard lock(mu);
    events.push_back(e.name);
    cv.notify_all();
  }
  void OnDisconnect(const Status& s) {
    std::lock_guard lock(mu);
    disconnects.push_back(s);
    cv.notify_all();
  }
  // Waits until `done()` holds (called with the lock held), for at most `timeout`.
  template <typename Pred>
  bool WaitFor(Pred done, milliseconds timeout = seconds(10)) {
    std::unique_lock lock(mu);
    return cv.wait_for(lock, timeout, done);
  }
};

class QmpClientTest : public ::testing::Test {
 protected:
  void SetUp() override {
    qemu_binary_ = FindOnPath(kQemuBinary);
    ASSERT_FALSE(qemu_binary_.empty())
        << kQemuBinary << " is not on PATH: these tests need a real QEMU. Install it with "
        << "tools/install-deps (Debian packages qemu-system-x86 and qemu-utils).";
    char dir_template[] = "/tmp/hci-qmp-XXXXXX";
    ASSERT_NE(::mkdtemp(dir_template), nullptr) << "mkdtemp: " << strerror(errno);
    dir_ = dir_template;
    socket_path_ = dir_ + "/qmp.sock";
    qemu_ = std::make_unique<Qemu>(qemu_binary_, socket_path_, dir_ + "/qemu.log");
  }

  void TearDown() override {
    qemu_.reset();
    if (!dir_.empty()) {
      if (HasFailure()) {
        std::ifstream log(dir_ + "/qemu.log");
        std::stringstream text;
        text << log.rdbuf();
        if (!text.str().empty()) std::cerr << "QEMU output:\n" << text.str() << "\n";
      }
      std::error_code ec;
      std::filesystem::remove_all(dir_, ec);
    }
  }

  ConnectOptions Options() {
    ConnectOptions options;
    options.socket_path = socket_path_;
    options.connect_timeout = seconds(20);
    options.on_event = [this](const QmpEvent& e) { recorder_.OnEvent(e); };
    options.on_disconnect = [this](const Status& s) { recorder_.OnDisconnect(s); };
    return options;
  }

  // Starts QEMU and connects a client to it.
  std::unique_ptr<QmpClient> StartAndConnect(ConnectOptions options) {
    EXPECT_TRUE(qemu_->Start());
    Result<std::unique_ptr<QmpClient>> client = QmpClient::Connect(options);
    EXPECT_TRUE(client.ok()) << client.status();
    return client.ok() ? std::move(client).ValueOrDie() : nullptr;
  }
  std::unique_ptr<QmpClient> StartAndConnect() { return StartAndConnect(Options()); }

  std::string qemu_binary_;
  std::string dir_;
  std::string socket_path_;
  std::unique_ptr<Qemu> qemu_;
  Recorder recorder_;
};

TEST_F(QmpClientTest, GreetingAndVersion) {
  auto client = StartAndConnect();
  ASSERT_NE(client, nullptr);
  EXPECT_TRUE(client->connected());
  // QEMU 7.2 is what Debian 12 ships; anything from 6 on speaks the same QMP.
  EXPECT_GE(client->version().major, 6);
  EXPECT_THAT(client->greeting().capabilities, ::testing::Contains("oob"));

  Result<json::value> version = client->Execute("query-version");
  ASSERT_TRUE(version.ok()) << version.status();
  const json::value& qemu = version->at("qemu");
  EXPECT_EQ(qemu.at("major").to_number<int64_t>(), client->version().major);
  EXPECT_EQ(qemu.at("minor").to_number<int64_t>(), client->version().minor);
  EXPECT_EQ(qemu.at("micro").to_number<int64_t>(), client->version().micro);
  // qmp_capabilities plus query-version.
  EXPECT_EQ(client->stats().commands_sent, 2u);
}

TEST_F(QmpClientTest, QueryStatus) {
  auto client = StartAndConnect();
  ASSERT_NE(client, nullptr);
  Result<json::value> status = client->Execute("query-status");
  ASSERT_TRUE(status.ok()) << status.status();
  EXPECT_EQ(status->at("status"), "running");
  EXPECT_EQ(status->at("running"), true);
}

TEST_F(QmpClientTest, UnknownCommandIsUnimplemented) {
  auto client = StartAndConnect();
  ASSERT_NE(client, nullptr);
  Result<json::value> r = client->Execute("no-such-command");
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), StatusCode::kUnimplemented) << r.status();
  EXPECT_THAT(r.status().message(), ::testing::StartsWith("no-such-command: "));
  EXPECT_THAT(r.status().message(), HasSubstr("has not been found"));
}

TEST_F(QmpClientTest, GenericErrorKeepsQemuMessage) {
  auto client = StartAndConnect();
  ASSERT_NE(client, nullptr);
  Result<json::value> r = client->Execute("query-status", {{"bogus", 1}});
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), StatusCode::kFailedPrecondition) << r.status();
  EXPECT_EQ(r.status().message(), "query-status: Parameter 'bogus' is unexpected");

  Result<json::value> missing = client->Execute("device_del", {{"id", "no-such-device"}});
  ASSERT_FALSE(missing.ok());
  EXPECT_EQ(missing.status().code(), StatusCode::kNotFound) << missing.status();
  EXPECT_THAT(missing.status().message(), HasSubstr("no-such-device"));
  // The connection is fine after errors.
  EXPECT_TRUE(client->Execute("query-status").ok());
}

TEST_F(QmpClientTest, RejectsBadArguments) {
  auto client = StartAndConnect();
  ASSERT_NE(client, nullptr);
  EXPECT_EQ(client->Execute("").status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(client->Execute("query-status", {}, milliseconds(-5)).status().code(),
            StatusCode::kInvalidArgument);
  Result<json::value> inf =
      client->Execute("qom-get", {{"x", std::numeric_limits<double>::infinity()}});
  EXPECT_EQ(inf.status().code(), StatusCode::kInvalidArgument) << inf.status();
}

TEST_F(QmpClientTest, StopAndContDeliverEvents) {
  std::mutex mu;
  std::string status_seen_in_handler;
  ConnectOptions options = Options();
  std::atomic<QmpClient*> raw{nullptr};
  options.on_event = [&](const QmpEvent& e) {
    // Calling Execute from the handler is allowed: replies are read on another thread.
    if (e.name == "STOP") {
      Result<json::value> status = raw.load()->Execute("query-status");
      std::lock_guard lock(mu);
      status_seen_in_handler =
          status.ok() ? std::string(status->at("status").as_string()) : status.status().ToString();
    }
    recorder_.OnEvent(e);
  };
  auto client = StartAndConnect(options);
  ASSERT_NE(client, nullptr);
  raw = client.get();

  const uint64_t before_stop = client->NextEventSequence();
  ASSERT_TRUE(client->Execute("stop").ok());
  // QEMU sends STOP before the reply to `stop`: waiting from a sequence taken before the command
  // must still find it.
  Result<QmpEvent> stop = client->WaitForEvent("STOP", nullptr, seconds(10), before_stop);
  ASSERT_TRUE(stop.ok()) << stop.status();
  EXPECT_GE(stop->sequence, before_stop);
  EXPECT_GT(stop->seconds, 0);
  EXPECT_GE(stop->microseconds, 0);

  // The handler's own query-status must run before `cont` for it to see "paused".
  ASSERT_TRUE(recorder_.WaitFor([&] { return !recorder_.events.empty(); }));

  const uint64_t before_cont = client->NextEventSequence();
  ASSERT_TRUE(client->Execute("cont").ok());
  Result<QmpEvent> resume = client->WaitForEvent("RESUME", nullptr, seconds(10), before_cont);
  ASSERT_TRUE(resume.ok()) << resume.status();
  EXPECT_GT(resume->sequence, stop->sequence);

  ASSERT_TRUE(recorder_.WaitFor([&] { return recorder_.events.size() >= 2; }));
  {
    std::lock_guard lock(recorder_.mu);
    EXPECT_THAT(recorder_.events, ::testing::ElementsAre("STOP", "RESUME"));
  }
  {
    std::lock_guard lock(mu);
    EXPECT_EQ(status_seen_in_handler, "paused");
  }
  EXPECT_EQ(client->stats().events_received, 2u);

  // A predicate that never matches: the wait ends at its deadline.
  Result<QmpEvent> never = client->WaitForEvent(
      "RESUME", [](const QmpEvent&) { return false; }, milliseconds(200), before_cont);
  EXPECT_EQ(never.status().code(), StatusCode::kDeadlineExceeded) << never.status();
  // Without a sequence only future events count.
  Result<QmpEvent> future_only = client->WaitForEvent("RESUME", nullptr, milliseconds(200));
  EXPECT_EQ(future_only.status().code(), StatusCode::kDeadlineExceeded) << future_only.status();
}

TEST_F(QmpClientTest, SetEventHandlerReplacesHandler) {
  ConnectOptions options = Options();
  options.on_event = nullptr;
  auto client = StartAndConnect(options);
  ASSERT_NE(client, nullptr);
  client->SetEventHandler([this](const QmpEvent& e) { recorder_.OnEvent(e); });
  ASSERT_TRUE(client->Execute("stop").ok());
  ASSERT_TRUE(recorder_.WaitFor([&] { return !recorder_.events.empty(); }));
  client->SetEventHandler(nullptr);
  const uint64_t since = client->NextEventSequence();
  ASSERT_TRUE(client->Execute("cont").ok());
  ASSERT_TRUE(client->WaitForEvent("RESUME", nullptr, seconds(10), since).ok());
  std::lock_guard lock(recorder_.mu);
  EXPECT_THAT(recorder_.events, ::testing::ElementsAre("STOP"));
}

TEST_F(QmpClientTest, EventLogOverflowIsReported) {
  ConnectOptions options = Options();
  options.event_log_capacity = 2;
  auto client = StartAndConnect(options);
  ASSERT_NE(client, nullptr);
  const uint64_t since = client->NextEventSequence();
  for (const char* command : {"stop", "cont", "stop", "cont"}) {
    ASSERT_TRUE(client->Execute(command).ok()) << command;
  }
  // Events 3 and 4 are retained: a retained match is still found ...
  Result<QmpEvent> stop = client->WaitForEvent("STOP", nullptr, seconds(10), since + 2);
  ASSERT_TRUE(stop.ok()) << stop.status();
  EXPECT_EQ(stop->sequence, since + 2);
  // ... but when events that might have matched were dropped, the wait says so.
  Result<QmpEvent> lost = client->WaitForEvent("SHUTDOWN", nullptr, seconds(10), since);
  EXPECT_EQ(lost.status().code(), StatusCode::kOutOfRange) << lost.status();
}

TEST_F(QmpClientTest, ConcurrentCallsAreMatchedById) {
  auto client = StartAndConnect();
  ASSERT_NE(client, nullptr);
  constexpr int kObjects = 8;
  // Objects whose property value tells which one a reply is about.
  for (int k = 0; k < kObjects; ++k) {
    Result<json::value> added = client->Execute(
        "object-add",
        {{"qom-type", "iothread"}, {"id", "io" + std::to_string(k)}, {"poll-max-ns", 1000 + k}});
    ASSERT_TRUE(added.ok()) << added.status();
  }
  const uint64_t sent_before = client->stats().commands_sent;

  constexpr int kThreads = 8;
  constexpr int kCallsPerThread = 50;
  std::atomic<int> correct{0};
  std::mutex mu;
  std::vector<std::string> failures;
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < kCallsPerThread; ++i) {
        const int k = (t * 3 + i) % kObjects;
        std::string failure;
        switch (i % 3) {
          case 0: {
            Result<json::value> r = client->Execute(
                "qom-get",
                {{"path", "/objects/io" + std::to_string(k)}, {"property", "poll-max-ns"}});
            if (!r.ok()) {
              failure = r.status().ToString();
            } else if (*r != json::value(1000 + k)) {
              failure = "io" + std::to_string(k) + " got " + json::serialize(*r);
            }
            break;
          }
          case 1: {
            Result<json::value> r = client->Execute("query-status");
            if (!r.ok() || !r->is_object() || !r->as_object().contains("status")) {
              failure =
                  "query-status got " + (r.ok() ? json::serialize(*r) : r.status().ToString());
            }
            break;
          }
          default: {
            Result<json::value> r = client->Execute("query-version");
            if (!r.ok() || !r->is_object() || !r->as_object().contains("qemu")) {
              failure =
                  "query-version got " + (r.ok() ? json::serialize(*r) : r.status().ToString());
            }
            break;
          }
        }
        if (failure.empty()) {
          ++correct;
        } else {
          std::lock_guard lock(mu);
          failures.push_back(failure);
        }
      }
    });
  }
  for (std::thread& t : threads) t.join();
  EXPECT_EQ(correct.load(), kThreads * kCallsPerThread);
  EXPECT_THAT(failures, ::testing::IsEmpty());
  EXPECT_EQ(client->stats().commands_sent - sent_before,
            static_cast<uint64_t>(kThreads * kCallsPerThread));
  EXPECT_EQ(client->stats().replies_discarded, 0u);
}

TEST_F(QmpClientTest, TimeoutThenLateReplyIsDiscarded) {
  auto client = StartAndConnect();
  ASSERT_NE(client, nullptr);
  // A stopped QEMU reads nothing and answers nothing: the call must time out.
  qemu_->Signal(SIGSTOP);
  const auto start = std::chrono::steady_clock::now();
  Result<json::value> r = client->Execute("query-status", {}, milliseconds(300));
  const auto waited = std::chrono::steady_clock::now() - start;
  qemu_->Signal(SIGCONT);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), StatusCode::kDeadlineExceeded) << r.status();
  EXPECT_THAT(r.status().message(), HasSubstr("query-status: no reply from QEMU within 300 ms"));
  EXPECT_GE(waited, milliseconds(300));
  EXPECT_LT(waited, seconds(10));

  // QEMU now answers the abandoned request first, then this one: the late reply must not be
  // taken for this call's.
  Result<json::value> version = client->Execute("query-version", {}, seconds(10));
  ASSERT_TRUE(version.ok()) << version.status();
  EXPECT_TRUE(version->as_object().contains("qemu")) << json::serialize(*version);
  EXPECT_EQ(client->stats().replies_discarded, 1u);
  EXPECT_TRUE(client->connected());
}

TEST_F(QmpClientTest, KilledQemuFailsCallsAndReportsDisconnect) {
  auto client = StartAndConnect();
  ASSERT_NE(client, nullptr);
  // Freeze QEMU so that a call is certainly pending when it dies.
  qemu_->Signal(SIGSTOP);
  const uint64_t sent = client->stats().commands_sent;
  auto pending = std::async(std::launch::async,
                            [&] { return client->Execute("query-status", {}, seconds(60)); });
  while (client->stats().commands_sent == sent) std::this_thread::sleep_for(milliseconds(5));
  qemu_->Signal(SIGKILL);

  ASSERT_EQ(pending.wait_for(seconds(20)), std::future_status::ready);
  Result<json::value> r = pending.get();
  EXPECT_EQ(r.status().code(), StatusCode::kUnavailable) << r.status();
  EXPECT_THAT(r.status().message(), HasSubstr("QEMU closed the connection"));

  ASSERT_TRUE(recorder_.WaitFor([&] { return !recorder_.disconnects.empty(); }));
  EXPECT_FALSE(client->connected());
  Result<json::value> next = client->Execute("query-status");
  EXPECT_EQ(next.status().code(), StatusCode::kUnavailable) << next.status();
  Result<QmpEvent> wait = client->WaitForEvent("STOP", nullptr, seconds(5));
  EXPECT_EQ(wait.status().code(), StatusCode::kUnavailable) << wait.status();
  // Give a second notification the chance to show up: there must be none.
  std::this_thread::sleep_for(milliseconds(100));
  std::lock_guard lock(recorder_.mu);
  ASSERT_EQ(recorder_.disconnects.size(), 1u);
  EXPECT_EQ(recorder_.disconnects[0].code(), StatusCode::kUnavailable);
}

TEST_F(QmpClientTest, QuitDisconnectsCleanly) {
  auto client = StartAndConnect();
  ASSERT_NE(client, nullptr);
  Result<json::value> r = client->Execute("quit");
  ASSERT_TRUE(r.ok()) << r.status();
  ASSERT_TRUE(recorder_.WaitFor([&] { return !recorder_.disconnects.empty(); }));
  EXPECT_FALSE(client->connected());
  {
    std::lock_guard lock(recorder_.mu);
    // QEMU announces its shutdown before closing the socket.
    EXPECT_THAT(recorder_.events, ::testing::Contains("SHUTDOWN"));
    EXPECT_THAT(recorder_.disconnects[0].message(), HasSubstr("QEMU closed the connection"));
  }
  EXPECT_EQ(client->Execute("query-status").status().code(), StatusCode::kUnavailable);
  const int status = qemu_->WaitForExit(seconds(10));
  ASSERT_NE(status, -1) << "QEMU did not exit after quit";
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << "wait status " << status;
}

TEST_F(QmpClientTest, ConnectRetriesUntilSocketAppears) {
  ASSERT_FALSE(std::filesystem::exists(socket_path_));
  ConnectOptions options = Options();
  options.connect_timeout = seconds(30);
  auto connecting = std::async(std::launch::async, [&] { return QmpClient::Connect(options); });
  // Connect is already retrying against a path that does not exist.
  ASSERT_EQ(connecting.wait_for(milliseconds(500)), std::future_status::timeout);
  ASSERT_TRUE(qemu_->Start());
  ASSERT_EQ(connecting.wait_for(seconds(30)), std::future_status::ready);
  Result<std::unique_ptr<QmpClient>> client = connecting.get();
  ASSERT_TRUE(client.ok()) << client.status();
  EXPECT_TRUE((*client)->Execute("query-status").ok());
}

TEST_F(QmpClientTest, ConnectGivesUpAtDeadline) {
  ConnectOptions options = Options();
  options.connect_timeout = milliseconds(300);
  const auto start = std::chrono::steady_clock::now();
  Result<std::unique_ptr<QmpClient>> client = QmpClient::Connect(options);
  EXPECT_LT(std::chrono::steady_clock::now() - start, seconds(10));
  ASSERT_FALSE(client.ok());
  EXPECT_EQ(client.status().code(), StatusCode::kDeadlineExceeded) << client.status();
  EXPECT_THAT(client.status().message(), HasSubstr("socket_path: could not connect to"));
  {
    std::lock_guard lock(recorder_.mu);
    EXPECT_TRUE(recorder_.disconnects.empty());
  }

  options.socket_path = "relative/" + std::string(200, 'x');
  EXPECT_EQ(QmpClient::Connect(options).status().code(), StatusCode::kInvalidArgument);
  options.socket_path = "";
  EXPECT_EQ(QmpClient::Connect(options).status().code(), StatusCode::kInvalidArgument);
}

TEST_F(QmpClientTest, SecondClientTimesOutWaitingForGreeting) {
  auto first = StartAndConnect();
  ASSERT_NE(first, nullptr);
  // QEMU serves one QMP client per socket; the second one is accepted by the kernel but not
  // greeted until the first leaves.
  ConnectOptions options = Options();
  options.connect_timeout = milliseconds(500);
  Result<std::unique_ptr<QmpClient>> second = QmpClient::Connect(options);
  ASSERT_FALSE(second.ok());
  EXPECT_EQ(second.status().code(), StatusCode::kDeadlineExceeded) << second.status();
  EXPECT_THAT(second.status().message(), HasSubstr("no QMP greeting"));
  EXPECT_TRUE(first->Execute("query-status").ok());
}

TEST_F(QmpClientTest, HandlerMayDestroyTheClient) {
  std::mutex mu;
  std::condition_variable cv;
  std::unique_ptr<QmpClient> client;
  bool execute_returned = false;
  bool destroyed = false;
  ConnectOptions options = Options();
  options.on_event = [&](const QmpEvent& e) {
    if (e.name != "STOP") return;
    std::unique_lock lock(mu);
    // QEMU sends STOP before the reply to `stop`; destroying a client while a call is running
    // is a caller bug, so wait for that call to finish first.
    cv.wait(lock, [&] { return execute_returned; });
    std::unique_ptr<QmpClient> doomed = std::move(client);
    lock.unlock();
    doomed.reset();  // joins the I/O thread; must not wait for this (the dispatch) thread
    lock.lock();
    destroyed = true;
    cv.notify_all();
  };
  auto connected = StartAndConnect(options);
  ASSERT_NE(connected, nullptr);
  QmpClient* raw = connected.get();
  {
    std::lock_guard lock(mu);
    client = std::move(connected);
  }
  Result<json::value> r = raw->Execute("stop");
  EXPECT_TRUE(r.ok()) << r.status();
  std::unique_lock lock(mu);
  execute_returned = true;
  cv.notify_all();
  ASSERT_TRUE(cv.wait_for(lock, seconds(10), [&] { return destroyed; }));
  lock.unlock();
  // The monitor was released: a new client gets in.
  ConnectOptions again;
  again.socket_path = socket_path_;
  again.connect_timeout = seconds(10);
  Result<std::unique_ptr<QmpClient>> second = QmpClient::Connect(again);
  ASSERT_TRUE(second.ok()) << second.status();
  Result<json::value> status = (*second)->Execute("query-status");
  ASSERT_TRUE(status.ok()) << status.status();
  EXPECT_EQ(status->at("status"), "paused");
}

// ---------------------------------------------------------------------------------------------
// A scripted QMP server, for what a real QEMU does not do on demand: garbage, over-long lines,
// errors without id, closing without replying to `quit`.

class FakeConnection {
 public:
  explicit FakeConnection(int fd) : fd_(fd) {}
  // The next line without its ending; "" at EOF.
  std::string ReadLine() {
    for (;;) {
      if (auto nl = buf_.find('\n'); nl != std::string::npos) {
        std::string line = buf_.substr(0, nl);
        buf_.erase(0, nl + 1);
        return line;
      }
      char chunk[4096];
      ssize_t n = ::recv(fd_, chunk, sizeof(chunk), 0);
      if (n <= 0) return "";
      buf_.append(chunk, static_cast<std::size_t>(n));
    }
  }
  void Write(std::string_view data) {
    while (!data.empty()) {
      ssize_t n = ::send(fd_, data.data(), data.size(), MSG_NOSIGNAL);
      if (n <= 0) return;
      data.remove_prefix(static_cast<std::size_t>(n));
    }
  }
  // Reads a request and returns its id as JSON text.
  std::string ReadRequestId(std::string* command = nullptr) {
    std::string line = ReadLine();
    if (line.empty()) return "null";
    json::value request = json::parse(line);
    if (command != nullptr) *command = std::string(request.at("execute").as_string());
    return json::serialize(request.at("id"));
  }
  // Greeting and qmp_capabilities.
  void Handshake() {
    Write(R"({"QMP": {"version": {"qemu": {"micro": 0, "minor": 2, "major": 7}, )"
          R"("package": ""}, "capabilities": []}})"
          "\r\n");
    Write(R"({"return": {}, "id": )" + ReadRequestId() + "}\r\n");
  }

 private:
  int fd_;
  std::string buf_;
};

// Listens on `path`, accepts one client (waiting up to 20 s) and runs `script` on it in a thread.
class FakeQmpServer {
 public:
  FakeQmpServer(const std::string& path, std::function<void(FakeConnection&)> script) {
    listen_fd_ = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    path.copy(addr.sun_path, sizeof(addr.sun_path) - 1);
    EXPECT_EQ(::bind(listen_fd_, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)), 0)
        << strerror(errno);
    EXPECT_EQ(::listen(listen_fd_, 4), 0) << strerror(errno);
    thread_ = std::thread([this, script = std::move(script)] {
      pollfd pfd{listen_fd_, POLLIN, 0};
      if (::poll(&pfd, 1, 20'000) != 1) return;
      int fd = ::accept4(listen_fd_, nullptr, nullptr, SOCK_CLOEXEC);
      if (fd < 0) return;
      FakeConnection connection(fd);
      script(connection);
      ::close(fd);
    });
  }
  ~FakeQmpServer() {
    thread_.join();
    ::close(listen_fd_);
  }

 private:
  int listen_fd_ = -1;
  std::thread thread_;
};

class QmpFakeServerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char dir_template[] = "/tmp/hci-qmp-fake-XXXXXX";
    ASSERT_NE(::mkdtemp(dir_template), nullptr) << "mkdtemp: " << strerror(errno);
    dir_ = dir_template;
    options_.socket_path = dir_ + "/qmp.sock";
    options_.connect_timeout = seconds(20);
    options_.on_disconnect = [this](const Status& s) { recorder_.OnDisconnect(s); };
  }
  void TearDown() override {
    std::error_code ec;
    std::filesystem::remove_all(dir_, ec);
  }

  std::string dir_;
  ConnectOptions options_;
  Recorder recorder_;
};

TEST_F(QmpFakeServerTest, QuitSucceedsWhenQemuClosesBeforeReplying) {
  FakeQmpServer server(options_.socket_path, [](FakeConnection& c) {
    c.Handshake();
    c.ReadRequestId();  // quit: close without a reply
  });
  Result<std::unique_ptr<QmpClient>> client = QmpClient::Connect(options_);
  ASSERT_TRUE(client.ok()) << client.status();
  Result<json::value> r = (*client)->Execute("quit", {}, seconds(20));
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(*r, json::value(json::object()));
  ASSERT_TRUE(recorder_.WaitFor([&] { return !recorder_.disconnects.empty(); }));
}

TEST_F(QmpFakeServerTest, OtherCommandsFailWhenQemuClosesBeforeReplying) {
  FakeQmpServer server(options_.socket_path, [](FakeConnection& c) {
    c.Handshake();
    c.ReadRequestId();
  });
  Result<std::unique_ptr<QmpClient>> client = QmpClient::Connect(options_);
  ASSERT_TRUE(client.ok()) << client.status();
  Result<json::value> r = (*client)->Execute("system_powerdown", {}, seconds(20));
  EXPECT_EQ(r.status().code(), StatusCode::kUnavailable) << r.status();
}

TEST_F(QmpFakeServerTest, ErrorWithoutIdGoesToTheOldestRequest) {
  FakeQmpServer server(options_.socket_path, [](FakeConnection& c) {
    c.Handshake();
    c.ReadRequestId();
    // What QEMU answers when it cannot parse a request far enough to find its id.
    c.Write(R"({"error": {"class": "GenericError", "desc": "JSON parse error, expecting value"}})"
            "\r\n");
    std::string id = c.ReadRequestId();
    c.Write(R"({"return": {"ok": true}, "id": )" + id + "}\r\n");
  });
  Result<std::unique_ptr<QmpClient>> client = QmpClient::Connect(options_);
  ASSERT_TRUE(client.ok()) << client.status();
  Result<json::value> first = (*client)->Execute("query-status", {}, seconds(20));
  EXPECT_EQ(first.status().code(), StatusCode::kFailedPrecondition) << first.status();
  EXPECT_EQ(first.status().message(), "query-status: JSON parse error, expecting value");
  Result<json::value> second = (*client)->Execute("query-status", {}, seconds(20));
  ASSERT_TRUE(second.ok()) << second.status();
  EXPECT_EQ(second->at("ok"), true);
}

TEST_F(QmpFakeServerTest, UnknownIdsAreDiscarded) {
  FakeQmpServer server(options_.socket_path, [](FakeConnection& c) {
    c.Handshake();
    std::string id = c.ReadRequestId();
    c.Write("{\"return\": 1, \"id\": \"not-ours\"}\r\n{\"return\": 2, \"id\": 999999}\r\n");
    c.Write(R"({"return": 3, "id": )" + id + "}\r\n");
    c.ReadLine();
  });
  Result<std::unique_ptr<QmpClient>> client = QmpClient::Connect(options_);
  ASSERT_TRUE(client.ok()) << client.status();
  Result<json::value> r = (*client)->Execute("query-status", {}, seconds(20));
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(*r, json::value(3));
  EXPECT_EQ((*client)->stats().replies_discarded, 2u);
}

TEST_F(QmpFakeServerTest, MalformedMessageDropsTheConnection) {
  FakeQmpServer server(options_.socket_path, [](FakeConnection& c) {
    c.Handshake();
    c.ReadRequestId();
    c.Write("this is not JSON\r\n");
    c.ReadLine();  // until the client hangs up
  });
  Result<std::unique_ptr<QmpClient>> client = QmpClient::Connect(options_);
  ASSERT_TRUE(client.ok()) << client.status();
  Result<json::value> r = (*client)->Execute("query-status", {}, seconds(20));
  EXPECT_EQ(r.status().code(), StatusCode::kUnavailable) << r.status();
  EXPECT_THAT(r.status().message(), HasSubstr("QEMU sent a malformed message"));
  EXPECT_THAT(r.status().message(), HasSubstr("not valid JSON"));
  ASSERT_TRUE(recorder_.WaitFor([&] { return !recorder_.disconnects.empty(); }));
  EXPECT_FALSE((*client)->connected());
}

TEST_F(QmpFakeServerTest, OverlongLineDropsTheConnection) {
  FakeQmpServer server(options_.socket_path, [](FakeConnection& c) {
    c.Handshake();
    c.ReadRequestId();
    c.Write(R"({"return": ")");
    c.Write(std::string(kMaxMessageBytes + 16, 'x'));
    c.ReadLine();
  });
  Result<std::unique_ptr<QmpClient>> client = QmpClient::Connect(options_);
  ASSERT_TRUE(client.ok()) << client.status();
  Result<json::value> r = (*client)->Execute("query-status", {}, seconds(20));
  EXPECT_EQ(r.status().code(), StatusCode::kUnavailable) << r.status();
  EXPECT_THAT(r.status().message(), HasSubstr("line longer than 16777216 bytes"));
}

TEST_F(QmpFakeServerTest, FirstMessageMustBeTheGreeting) {
  FakeQmpServer server(options_.socket_path, [](FakeConnection& c) {
    c.Write(R"({"return": {}})"
            "\r\n");
    c.ReadLine();
  });
  Result<std::unique_ptr<QmpClient>> client = QmpClient::Connect(options_);
  ASSERT_FALSE(client.ok());
  EXPECT_EQ(client.status().code(), StatusCode::kUnavailable) << client.status();
  EXPECT_THAT(client.status().message(), HasSubstr("not the QMP greeting"));
  // A failed Connect never reports a disconnect.
  std::lock_guard lock(recorder_.mu);
  EXPECT_TRUE(recorder_.disconnects.empty());
}

}  // namespace
}  // namespace hci::qmp
