// Control requests to the storage nodes' hci-replica-servers, over pooled authenticated
// connections.
#include <sys/socket.h>
#include <sys/time.h>

#include <cerrno>

#include "replicated_internal.h"
#include "wire/replica_wire.h"

namespace hci::replicated::plugin {
namespace {

// Idle connections kept per node: each holds a thread of the server.
constexpr std::size_t kMaxIdle = 2;

void SetTimeouts(int fd, std::chrono::milliseconds timeout) {
  timeval tv{};
  if (timeout.count() > 0) {
    tv.tv_sec = static_cast<time_t>(timeout.count() / 1000);
    tv.tv_usec = static_cast<suseconds_t>(timeout.count() % 1000) * 1000;
  }
  ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
  ::setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
}

// An idle connection whose server went away (restarted, killed) has its end of file queued: a
// peek sees it without blocking.
bool StillOpen(int fd) {
  char c;
  const ssize_t n = ::recv(fd, &c, 1, MSG_PEEK | MSG_DONTWAIT);
  return n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK);
}

}  // namespace

NodeClient::NodeClient(std::string node, std::string address, std::string secret,
                       std::chrono::milliseconds dial_timeout)
    : node_(std::move(node)),
      address_(std::move(address)),
      secret_(std::move(secret)),
      dial_timeout_(dial_timeout) {}

NodeClient::~NodeClient() = default;

Status NodeClient::Call(const rpb::ControlRequest& request, rpb::ControlResponse* response,
                        std::chrono::milliseconds timeout) {
  const std::string who = "node " + node_ + " (" + address_ + ")";
  std::unique_ptr<wire::Connection> conn;
  {
    std::lock_guard lock(mu_);
    while (!idle_.empty() && conn == nullptr) {
      conn = std::move(idle_.back());
      idle_.pop_back();
      if (!StillOpen(conn->fd())) conn.reset();
    }
  }
  if (conn == nullptr) {
    auto dialed = wire::Dial(address_, secret_, "plugin", static_cast<int>(dial_timeout_.count()));
    if (!dialed.ok()) {
      const Status& st = dialed.status();
      if (st.code() == StatusCode::kPermissionDenied) return st.WithContext(who);
      return Unavailable(who + " is unreachable: " + st.message());
    }
    conn = std::move(dialed).MoveValueUnsafe();
  }
  SetTimeouts(conn->fd(), timeout);
  response->Clear();
  Status st = wire::Call(*conn, request, response);
  // A status the server answered leaves the stream in step; a transport failure does not.
  const bool answered = st.ok() || response->code() != 0;
  if (!answered) {
    return Unavailable(who + " did not answer: " + st.message());
  }
  SetTimeouts(conn->fd(), std::chrono::milliseconds(0));
  std::lock_guard lock(mu_);
  if (idle_.size() < kMaxIdle) idle_.push_back(std::move(conn));
  return st;
}

}  // namespace hci::replicated::plugin
