// The serial console: the log file QEMU appends to, and its live unix socket.
#include <fcntl.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <mutex>
#include <string>

#include "kvm_internal.h"

namespace hci::kvm {
namespace {

constexpr std::uint32_t kDefaultConsoleRead = 64 * 1024;
constexpr std::size_t kReadChunk = 64 * 1024;

class SocketConsole final : public ConsoleStream {
 public:
  explicit SocketConsole(int fd) : fd_(fd) {}
  ~SocketConsole() override { ::close(fd_); }

  Result<std::string> Read(std::chrono::milliseconds timeout) override {
    std::lock_guard lock(read_mu_);
    if (closed_) return Closed();
    pollfd p{fd_, POLLIN, 0};
    int ms =
        timeout.count() < 0 ? 0 : static_cast<int>(std::min<long long>(timeout.count(), 1 << 30));
    int n;
    do {
      n = ::poll(&p, 1, ms);
    } while (n < 0 && errno == EINTR);
    if (n < 0) return ErrnoStatus(errno, "console: poll");
    if (n == 0) return std::string();
    std::string out(kReadChunk, '\0');
    ssize_t got;
    do {
      got = ::recv(fd_, out.data(), out.size(), MSG_DONTWAIT);
    } while (got < 0 && errno == EINTR);
    if (got < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return std::string();
    if (got < 0 && errno != ECONNRESET) return ErrnoStatus(errno, "console: recv");
    if (got <= 0) {
      closed_ = true;
      return Closed();
    }
    out.resize(static_cast<std::size_t>(got));
    return out;
  }

  Status Write(std::string_view data) override {
    std::lock_guard lock(write_mu_);
    while (!data.empty()) {
      ssize_t n = ::send(fd_, data.data(), data.size(), MSG_NOSIGNAL);
      if (n < 0 && errno == EINTR) continue;
      if (n < 0 && (errno == EPIPE || errno == ECONNRESET)) return Closed();
      if (n < 0) return ErrnoStatus(errno, "console: send");
      data.remove_prefix(static_cast<std::size_t>(n));
    }
    return Status();
  }

 private:
  static Status Closed() { return Unavailable("the console is closed: the VM stopped"); }

  const int fd_;
  std::mutex read_mu_;
  std::mutex write_mu_;
  bool closed_ = false;  // guarded by read_mu_
};

}  // namespace

Result<v1::ConsoleOutput> ReadConsoleLog(const std::string& path, std::uint64_t offset,
                                         std::uint32_t max_bytes) {
  v1::ConsoleOutput out;
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0 && errno == ENOENT) {
    if (offset > 0) {
      return OutOfRange("offset: " + std::to_string(offset) +
                        " is beyond the end of the console log (0 bytes)");
    }
    out.set_next_offset(0);
    return out;
  }
  if (fd < 0) return ErrnoStatus(errno, "open \"" + path + "\"");
  struct stat st {};
  if (::fstat(fd, &st) != 0) {
    int err = errno;
    ::close(fd);
    return ErrnoStatus(err, "stat \"" + path + "\"");
  }
  auto size = static_cast<std::uint64_t>(st.st_size);
  if (offset > size) {
    ::close(fd);
    return OutOfRange("offset: " + std::to_string(offset) +
                      " is beyond the end of the console log (" + std::to_string(size) + " bytes)");
  }
  std::uint64_t want =
      std::min<std::uint64_t>(size - offset, max_bytes == 0 ? kDefaultConsoleRead : max_bytes);
  std::string data(want, '\0');
  std::size_t got = 0;
  while (got < want) {
    ssize_t n = ::pread(fd, data.data() + got, want - got, static_cast<off_t>(offset + got));
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      int err = errno;
      ::close(fd);
      return ErrnoStatus(err, "read \"" + path + "\"");
    }
    if (n == 0) break;
    got += static_cast<std::size_t>(n);
  }
  ::close(fd);
  data.resize(got);
  out.set_data(std::move(data));
  out.set_next_offset(offset + got);
  return out;
}

Result<std::unique_ptr<ConsoleStream>> ConnectConsole(const std::string& socket_path) {
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  if (socket_path.size() >= sizeof(addr.sun_path)) {
    return InvalidArgument("console socket path \"" + socket_path + "\" is too long");
  }
  std::memcpy(addr.sun_path, socket_path.c_str(), socket_path.size() + 1);
  int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return ErrnoStatus(errno, "console: socket");
  if (::connect(fd, reinterpret_cast<const sockaddr*>(&addr), sizeof(addr)) != 0) {
    int err = errno;
    ::close(fd);
    return Unavailable("console: cannot connect to \"" + socket_path + "\": " + std::strerror(err));
  }
  return std::unique_ptr<ConsoleStream>(std::make_unique<SocketConsole>(fd));
}

}  // namespace hci::kvm
