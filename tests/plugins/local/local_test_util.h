// Helpers shared by the local plugin's unit and integration tests: running qemu-img/qemu-io,
// listing directories, an event log and a local HTTP server.
#pragma once

#include <arpa/inet.h>
#include <fcntl.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <signal.h>
#include <spawn.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <boost/json/parse.hpp>
#include <boost/json/serialize.hpp>
#include <boost/json/value.hpp>
#include <chrono>
#include <condition_variable>
#include <filesystem>
#include <fstream>
#include <functional>
#include <mutex>
#include <optional>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "hci/hci.h"
#include "process/process.h"

extern char** environ;

namespace hci::local::testing {

inline constexpr std::uint64_t kMiB = 1 << 20;

/// A fresh temporary directory.
inline std::string MakeTempDir(const std::string& prefix) {
  std::string pattern = ::testing::TempDir() + prefix + "-XXXXXX";
  char* made = ::mkdtemp(pattern.data());
  EXPECT_NE(made, nullptr);
  return pattern;
}

/// Runs a program (argv, no shell); fails the test when it cannot be started.
inline process::RunResult RunTool(std::vector<std::string> argv) {
  process::RunOptions o;
  o.argv = std::move(argv);
  o.timeout = std::chrono::minutes(2);
  auto r = process::Run(o);
  EXPECT_TRUE(r.ok()) << r.status();
  return r.ok() ? *r : process::RunResult();
}

/// `qemu-img info --output=json -U path` parsed; null on failure (with a test failure).
inline boost::json::object QemuImgInfo(const std::string& path) {
  auto r = RunTool({"qemu-img", "info", "--output=json", "-U", path});
  EXPECT_TRUE(r.success()) << r.stderr_data;
  boost::system::error_code ec;
  auto v = boost::json::parse(r.stdout_data, ec);
  if (ec || !v.is_object()) {
    ADD_FAILURE() << "qemu-img info printed no JSON object: " << r.stdout_data;
    return {};
  }
  return v.as_object();
}

inline std::uint64_t VirtualSize(const std::string& path) {
  auto info = QemuImgInfo(path);
  const auto* v = info.if_contains("virtual-size");
  return v != nullptr && v->is_int64() ? static_cast<std::uint64_t>(v->as_int64()) : 0;
}

/// Writes `pattern` (a byte) at `offset` for `length` bytes with qemu-io.
inline void QemuIoWrite(const std::string& image, int pattern, std::uint64_t offset,
                        const std::string& length, const std::string& format = "qcow2") {
  char command[96];
  std::snprintf(command, sizeof(command), "write -P 0x%02x %llu %s", pattern,
                static_cast<unsigned long long>(offset), length.c_str());
  auto r = RunTool({"qemu-io", "-f", format, "-c", command, image});
  EXPECT_TRUE(r.success()) << r.stdout_data << r.stderr_data;
  EXPECT_NE(r.stdout_data.find("wrote "), std::string::npos) << r.stdout_data;
}

/// Success when qemu-io, opening `image` read-only, reads `pattern` at `offset` for `length`
/// bytes; `image` is a path or a "json:{...}" filename (then `format` is empty). The failure
/// message carries qemu-io's output.
inline ::testing::AssertionResult QemuIoReads(const std::string& image, int pattern,
                                              std::uint64_t offset, const std::string& length,
                                              const std::string& format = "qcow2") {
  char command[96];
  std::snprintf(command, sizeof(command), "read -P 0x%02x %llu %s", pattern,
                static_cast<unsigned long long>(offset), length.c_str());
  std::vector<std::string> argv = {"qemu-io"};
  if (!format.empty()) argv.insert(argv.end(), {"-f", format});
  argv.insert(argv.end(), {"-r", "-U", "-c", command, image});
  auto r = RunTool(argv);
  // qemu-io prints "read N/N bytes at offset O" after a successful read and "Pattern
  // verification failed at offset ..." when the data differs.
  bool read_ok =
      r.stdout_data.find("read ") != std::string::npos &&
      r.stdout_data.find(" bytes at offset " + std::to_string(offset)) != std::string::npos;
  bool pattern_ok = r.stdout_data.find("Pattern verification failed") == std::string::npos;
  if (r.success() && read_ok && pattern_ok) {
    return ::testing::AssertionSuccess() << "qemu-io " << command << ": " << r.stdout_data;
  }
  return ::testing::AssertionFailure()
         << "qemu-io " << command << " " << image << ": " << r.stdout_data << r.stderr_data;
}

/// Every path under `dir` (relative), with the size of regular files, sorted: compared before and
/// after a refused call to show that nothing on disk changed.
inline std::set<std::string> Listing(const std::string& dir) {
  std::set<std::string> out;
  std::error_code ec;
  for (auto it = std::filesystem::recursive_directory_iterator(dir, ec);
       !ec && it != std::filesystem::recursive_directory_iterator(); it.increment(ec)) {
    std::string rel = std::filesystem::relative(it->path(), dir).string();
    if (it->is_regular_file()) rel += " " + std::to_string(it->file_size());
    out.insert(rel);
  }
  return out;
}

/// Names of the entries of `dir` (empty when it does not exist).
inline std::vector<std::string> Entries(const std::string& dir) {
  std::vector<std::string> out;
  std::error_code ec;
  for (auto it = std::filesystem::directory_iterator(dir, ec);
       !ec && it != std::filesystem::directory_iterator(); it.increment(ec)) {
    out.push_back(it->path().filename());
  }
  std::sort(out.begin(), out.end());
  return out;
}

/// `sha256sum`'s digest of a file.
inline std::string Sha256Of(const std::string& path) {
  auto r = RunTool({"sha256sum", path});
  EXPECT_TRUE(r.success()) << r.stderr_data;
  return r.stdout_data.substr(0, 64);
}

/// Collects events and waits for them.
class EventLog final : public EventSink {
 public:
  void Publish(const v1::Event& event) override {
    {
      std::lock_guard lock(mu_);
      events_.push_back(event);
    }
    cv_.notify_all();
  }
  EventCallback Callback() {
    return [this](const v1::Event& e) { Publish(e); };
  }
  std::vector<v1::Event> events() const {
    std::lock_guard lock(mu_);
    return events_;
  }
  /// Waits up to 10 s for an event with `reason` about `name`.
  std::optional<v1::Event> WaitFor(const std::string& reason, const std::string& name) {
    std::unique_lock lock(mu_);
    std::optional<v1::Event> found;
    cv_.wait_for(lock, std::chrono::seconds(10), [&] {
      for (const auto& e : events_) {
        if (e.reason() == reason && e.object().name() == name) {
          found = e;
          return true;
        }
      }
      return false;
    });
    return found;
  }

 private:
  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::vector<v1::Event> events_;
};

/// `python3 -m http.server` on 127.0.0.1 serving `dir`, started with an argv and killed (and
/// reaped) on destruction.
class HttpServer {
 public:
  explicit HttpServer(const std::string& dir) {
    port_ = FreePort();
    std::vector<std::string> args = {"/usr/bin/python3", "-m",        "http.server",
                                     "--bind",           "127.0.0.1", std::to_string(port_),
                                     "--directory",      dir};
    std::vector<char*> argv;
    for (auto& a : args) argv.push_back(a.data());
    argv.push_back(nullptr);
    posix_spawn_file_actions_t actions;
    posix_spawn_file_actions_init(&actions);
    posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0);
    posix_spawn_file_actions_addopen(&actions, 1, "/dev/null", O_WRONLY, 0);
    posix_spawn_file_actions_addopen(&actions, 2, "/dev/null", O_WRONLY, 0);
    int rc = posix_spawn(&pid_, argv[0], &actions, nullptr, argv.data(), environ);
    posix_spawn_file_actions_destroy(&actions);
    if (rc != 0) {
      ADD_FAILURE() << "cannot start /usr/bin/python3 -m http.server: " << strerror(rc);
      pid_ = -1;
      return;
    }
    // Ready once it accepts connections.
    for (int i = 0; i < 200; ++i) {
      if (CanConnect()) return;
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
    ADD_FAILURE() << "python3 -m http.server did not listen on port " << port_ << " in 10 s";
  }
  HttpServer(const HttpServer&) = delete;
  HttpServer& operator=(const HttpServer&) = delete;
  ~HttpServer() {
    if (pid_ > 0) {
      ::kill(pid_, SIGKILL);
      int status;
      ::waitpid(pid_, &status, 0);
    }
  }

  bool running() const { return pid_ > 0; }
  std::string Url(const std::string& file) const {
    return "http://127.0.0.1:" + std::to_string(port_) + "/" + file;
  }

 private:
  static int FreePort() {
    int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    addr.sin_port = 0;
    ::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr));
    socklen_t len = sizeof(addr);
    ::getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len);
    ::close(fd);
    return ntohs(addr.sin_port);
  }
  bool CanConnect() const {
    int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    addr.sin_port = htons(static_cast<std::uint16_t>(port_));
    bool ok = ::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0;
    ::close(fd);
    return ok;
  }

  int port_ = 0;
  pid_t pid_ = -1;
};

inline v1::CreateVolumeRequest VolumeRequest(const std::string& name, std::uint64_t size) {
  v1::CreateVolumeRequest r;
  r.mutable_metadata()->set_name(name);
  r.mutable_spec()->set_size_bytes(size);
  return r;
}

inline v1::ImportImageRequest FileImageRequest(const std::string& name, const std::string& file,
                                               const std::string& sha256 = {}) {
  v1::ImportImageRequest r;
  r.mutable_metadata()->set_name(name);
  r.mutable_spec()->set_file(file);
  r.mutable_spec()->set_sha256(sha256);
  return r;
}

template <typename Req>
Req Named(const std::string& name) {
  Req r;
  r.set_name(name);
  return r;
}

}  // namespace hci::local::testing
