#include "server/replica_server.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <spdlog/spdlog.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <utility>
#include <vector>

#include "hci/names.h"
#include "wire/replica_wire.h"

namespace hci::replicated {
namespace {

using wire::Header;
using wire::MsgType;

std::string Quoted(std::string_view s) {
  std::string out = "\"";
  out.append(s);
  out += '"';
  return out;
}

void SetIoTimeout(int fd, std::chrono::milliseconds timeout) {
  timeval tv{};
  tv.tv_sec = static_cast<time_t>(timeout.count() / 1000);
  tv.tv_usec = static_cast<suseconds_t>(timeout.count() % 1000) * 1000;
  ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
  ::setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
}

// "1.2.3.4:5", "[::1]:5", "unix" for an AF_UNIX peer.
std::string FormatAddress(const sockaddr_storage& ss) {
  char buf[INET6_ADDRSTRLEN] = {};
  if (ss.ss_family == AF_INET) {
    const auto* sin = reinterpret_cast<const sockaddr_in*>(&ss);
    ::inet_ntop(AF_INET, &sin->sin_addr, buf, sizeof(buf));
    return std::string(buf) + ":" + std::to_string(ntohs(sin->sin_port));
  }
  if (ss.ss_family == AF_INET6) {
    const auto* sin6 = reinterpret_cast<const sockaddr_in6*>(&ss);
    ::inet_ntop(AF_INET6, &sin6->sin6_addr, buf, sizeof(buf));
    return "[" + std::string(buf) + "]:" + std::to_string(ntohs(sin6->sin6_port));
  }
  return "unix";
}

struct Listening {
  int fd = -1;
  std::string address;
  std::string unix_path;
};

Result<Listening> ListenUnix(const std::string& address) {
  const std::string path = address.substr(5);
  sockaddr_un sun{};
  sun.sun_family = AF_UNIX;
  if (path.empty() || path.size() >= sizeof(sun.sun_path)) {
    return InvalidArgument("listen: " + Quoted(address) + ": a unix socket path must be 1-" +
                           std::to_string(sizeof(sun.sun_path) - 1) + " bytes");
  }
  std::memcpy(sun.sun_path, path.data(), path.size());
  // A socket file left by a previous run would make bind fail; anything else is not ours.
  struct stat st {};
  if (::lstat(path.c_str(), &st) == 0 && S_ISSOCK(st.st_mode)) ::unlink(path.c_str());
  const int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return ErrnoStatus(errno, "listen: socket");
  if (::bind(fd, reinterpret_cast<const sockaddr*>(&sun), sizeof(sun)) != 0 ||
      ::listen(fd, 128) != 0) {
    const int err = errno;
    ::close(fd);
    return Unavailable("listen: cannot listen on " + Quoted(address) + ": " + std::strerror(err));
  }
  return Listening{fd, address, path};
}

Result<Listening> ListenTcp(const std::string& address) {
  const std::size_t colon = address.rfind(':');
  if (colon == std::string::npos || colon + 1 == address.size()) {
    return InvalidArgument("listen: " + Quoted(address) +
                           " is not \"HOST:PORT\" or \"unix:/path\"");
  }
  std::string host = address.substr(0, colon);
  const std::string port = address.substr(colon + 1);
  if (host.size() >= 2 && host.front() == '[' && host.back() == ']') {
    host = host.substr(1, host.size() - 2);
  }
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_PASSIVE | AI_NUMERICSERV;
  addrinfo* list = nullptr;
  const int gai = ::getaddrinfo(host.empty() ? nullptr : host.c_str(), port.c_str(), &hints, &list);
  if (gai != 0) {
    return InvalidArgument("listen: cannot resolve " + Quoted(address) + ": " +
                           ::gai_strerror(gai));
  }
  std::unique_ptr<addrinfo, decltype(&::freeaddrinfo)> guard(list, &::freeaddrinfo);
  std::string last_error = "no address";
  for (const addrinfo* ai = list; ai != nullptr; ai = ai->ai_next) {
    const int fd = ::socket(ai->ai_family, ai->ai_socktype | SOCK_CLOEXEC, ai->ai_protocol);
    if (fd < 0) {
      last_error = std::strerror(errno);
      continue;
    }
    // A restarted server must be able to take its port back while old connections linger.
    const int one = 1;
    ::setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    if (::bind(fd, ai->ai_addr, ai->ai_addrlen) != 0 || ::listen(fd, 128) != 0) {
      last_error = std::strerror(errno);
      ::close(fd);
      continue;
    }
    sockaddr_storage ss{};
    socklen_t len = sizeof(ss);
    ::getsockname(fd, reinterpret_cast<sockaddr*>(&ss), &len);
    return Listening{fd, FormatAddress(ss), ""};
  }
  return Unavailable("listen: cannot listen on " + Quoted(address) + ": " + last_error);
}

bool HasSnapshot(const v1::ReplicaMeta& meta, std::string_view name) {
  for (const v1::Layer& layer : meta.layers()) {
    if (layer.snapshot() == name && !layer.removed()) return true;
  }
  return false;
}

void FillInfo(Replica& replica, v1::ReplicaInfo* info) {
  *info->mutable_meta() = replica.Meta();
  info->set_actual_size_bytes(replica.ActualSizeBytes());
}

void FillExtents(const std::vector<Extent>& extents, v1::ExtentList* out) {
  for (const Extent& e : extents) {
    out->add_offsets(e.offset);
    out->add_lengths(e.length);
  }
}

std::span<const std::uint8_t> Bytes(const std::string& s) {
  return {reinterpret_cast<const std::uint8_t*>(s.data()), s.size()};
}

}  // namespace

struct ReplicaServer::Session {
  std::unique_ptr<wire::Connection> conn;
  std::thread thread;
  std::atomic<bool> done{false};
};

// One authenticated connection's requests: the replica it opened and the buffers it reuses.
class ReplicaServer::ConnectionHandler {
 public:
  ConnectionHandler(ReplicaServer& server, wire::Connection& conn, std::string client)
      : server_(server), conn_(conn), client_(std::move(client)), log_(*server.log_) {}

  // Answers requests until the peer leaves, the connection breaks or the server stops.
  void Run() {
    Header h;
    std::string payload;
    for (;;) {
      Status received = conn_.Receive(&h, &payload);
      if (!received.ok()) {
        if (received.code() == StatusCode::kUnavailable) {
          log_.debug("{} ({}) disconnected: {}", conn_.peer(), client_, received.message());
        } else {
          log_.warn("dropping {} ({}): {}", conn_.peer(), client_, received.message());
        }
        return;
      }
      if ((h.flags & wire::kFlagResponse) != 0) {
        log_.warn("dropping {} ({}): it sent a {} response, not a request", conn_.peer(), client_,
                  wire::MsgTypeName(h.type));
        return;
      }
      Status sent;
      switch (h.type) {
        case MsgType::kControl:
          sent = HandleControl(h, payload);
          break;
        case MsgType::kRead:
        case MsgType::kWrite:
        case MsgType::kFlush:
        case MsgType::kTrim:
        case MsgType::kWriteZeroes:
          sent = HandleData(h, payload);
          break;
        case MsgType::kHello:
        case MsgType::kAuth:
        case MsgType::kAuthOk:
          log_.warn("dropping {} ({}): unexpected {} after the handshake", conn_.peer(), client_,
                    wire::MsgTypeName(h.type));
          return;
      }
      if (!sent.ok()) {
        log_.debug("{} ({}): cannot answer: {}", conn_.peer(), client_, sent.message());
        return;
      }
    }
  }

 private:
  Status HandleControl(const Header& h, const std::string& payload) {
    v1::ControlRequest request;
    v1::ControlResponse response;
    Status status;
    if (!request.ParseFromString(payload)) {
      status = InvalidArgument("CONTROL payload is not a valid ControlRequest");
    } else {
      status = Dispatch(request, &response);
    }
    if (!status.ok()) {
      response.set_code(static_cast<int>(status.code()));
      response.set_message(status.message());
    }
    std::string out;
    if (!response.SerializeToString(&out)) return Internal("cannot serialize a ControlResponse");
    Header reply;
    reply.type = MsgType::kControl;
    reply.flags = wire::kFlagResponse;
    reply.handle = h.handle;
    return conn_.Send(reply, Bytes(out));
  }

  Result<std::shared_ptr<Replica>> Get(const std::string& name) {
    return server_.store_->Get(name);
  }

  Status Dispatch(const v1::ControlRequest& request, v1::ControlResponse* response) {
    ReplicaStore& store = *server_.store_;
    switch (request.request_case()) {
      case v1::ControlRequest::kCreate: {
        const v1::CreateReplica& c = request.create();
        HCI_ASSIGN_OR_RAISE(auto replica, store.Create(c));
        log_.info("{}: created replica {} of volume {} ({} bytes, generation {}{})", client_,
                  c.replica(), c.volume(), c.size_bytes(), c.generation(),
                  c.rebuilding() ? ", rebuilding" : "");
        FillInfo(*replica, response->mutable_info());
        return Status::OK();
      }
      case v1::ControlRequest::kDelete: {
        HCI_RETURN_NOT_OK(store.Delete(request.delete_().replica()));
        log_.info("{}: deleted replica {}", client_, request.delete_().replica());
        return Status::OK();
      }
      case v1::ControlRequest::kGet: {
        HCI_ASSIGN_OR_RAISE(auto replica, Get(request.get().replica()));
        FillInfo(*replica, response->mutable_info());
        return Status::OK();
      }
      case v1::ControlRequest::kOpen: {
        const v1::OpenReplica& o = request.open();
        HCI_ASSIGN_OR_RAISE(auto replica, Get(o.replica()));
        if (!o.snapshot().empty() && !HasSnapshot(replica->Meta(), o.snapshot())) {
          return NotFound("open.snapshot: replica " + o.replica() + " has no snapshot " +
                          Quoted(o.snapshot()));
        }
        if (o.layer_writes() && o.snapshot().empty()) {
          return InvalidArgument("open.layer_writes: needs open.snapshot");
        }
        replica_ = replica;
        replica_name_ = o.replica();
        snapshot_ = o.snapshot();
        layer_writes_ = o.layer_writes();
        stale_logged_ = false;
        log_.info("{} ({}) opened replica {}{}", conn_.peer(), client_, o.replica(),
                  snapshot_.empty() ? ""
                  : layer_writes_   ? " to fill the layer of snapshot " + snapshot_
                                    : " at snapshot " + snapshot_ + " (read-only)");
        FillInfo(*replica, response->mutable_info());
        return Status::OK();
      }
      case v1::ControlRequest::kList: {
        for (const std::shared_ptr<Replica>& replica : store.List()) {
          FillInfo(*replica, response->add_replicas());
        }
        return Status::OK();
      }
      case v1::ControlRequest::kSetGeneration: {
        const v1::SetGeneration& g = request.set_generation();
        HCI_ASSIGN_OR_RAISE(auto replica, Get(g.replica()));
        HCI_RETURN_NOT_OK(
            replica->SetGeneration(g.expected_generation(), g.generation(), g.rebuilding()));
        log_.info("{}: replica {} moved to generation {}{}", client_, g.replica(), g.generation(),
                  g.rebuilding() ? " (rebuilding)" : "");
        FillInfo(*replica, response->mutable_info());
        return Status::OK();
      }
      case v1::ControlRequest::kSnapshot: {
        const v1::TakeSnapshot& s = request.snapshot();
        HCI_ASSIGN_OR_RAISE(auto replica, Get(s.replica()));
        const std::int64_t created = s.created_unix_ms() != 0
                                         ? s.created_unix_ms()
                                         : std::chrono::duration_cast<std::chrono::milliseconds>(
                                               std::chrono::system_clock::now().time_since_epoch())
                                               .count();
        HCI_RETURN_NOT_OK(replica->TakeSnapshotAt(s.snapshot(), created, s.generation()));
        log_.info("{}: replica {}: took snapshot {}", client_, s.replica(), s.snapshot());
        FillInfo(*replica, response->mutable_info());
        return Status::OK();
      }
      case v1::ControlRequest::kDeleteSnapshot: {
        const v1::SnapshotRef& s = request.delete_snapshot();
        HCI_ASSIGN_OR_RAISE(auto replica, Get(s.replica()));
        HCI_RETURN_NOT_OK(replica->DeleteSnapshot(s.snapshot()));
        log_.info("{}: replica {}: deleted snapshot {}", client_, s.replica(), s.snapshot());
        FillInfo(*replica, response->mutable_info());
        return Status::OK();
      }
      case v1::ControlRequest::kRevert: {
        const v1::SnapshotRef& s = request.revert();
        HCI_ASSIGN_OR_RAISE(auto replica, Get(s.replica()));
        HCI_RETURN_NOT_OK(replica->Revert(s.snapshot()));
        log_.info("{}: replica {}: reverted to snapshot {}", client_, s.replica(), s.snapshot());
        FillInfo(*replica, response->mutable_info());
        return Status::OK();
      }
      case v1::ControlRequest::kExpand: {
        const v1::Expand& e = request.expand();
        HCI_ASSIGN_OR_RAISE(auto replica, Get(e.replica()));
        HCI_RETURN_NOT_OK(replica->Expand(e.size_bytes()));
        log_.info("{}: replica {}: expanded to {} bytes", client_, e.replica(), e.size_bytes());
        FillInfo(*replica, response->mutable_info());
        return Status::OK();
      }
      case v1::ControlRequest::kChangedSince: {
        const v1::ChangedSince& c = request.changed_since();
        HCI_ASSIGN_OR_RAISE(auto replica, Get(c.replica()));
        HCI_ASSIGN_OR_RAISE(auto extents, replica->ChangedSince(c.generation()));
        FillExtents(extents, response->mutable_extents());
        return Status::OK();
      }
      case v1::ControlRequest::kChangedBetween: {
        const v1::ChangedBetween& c = request.changed_between();
        HCI_ASSIGN_OR_RAISE(auto replica, Get(c.replica()));
        HCI_ASSIGN_OR_RAISE(auto extents,
                            replica->ChangedBetween(c.from_snapshot(), c.to_snapshot()));
        FillExtents(extents, response->mutable_extents());
        return Status::OK();
      }
      case v1::ControlRequest::kHashExtents: {
        const v1::HashExtents& x = request.hash_extents();
        HCI_ASSIGN_OR_RAISE(auto replica, Get(x.replica()));
        HCI_ASSIGN_OR_RAISE(auto hashes,
                            replica->HashExtents(x.offset(), x.length(), x.extent_bytes()));
        for (std::string& hash : hashes) response->add_hashes(std::move(hash));
        return Status::OK();
      }
      case v1::ControlRequest::REQUEST_NOT_SET:
        break;
    }
    return InvalidArgument("request: no request set (or one this server does not know)");
  }

  // Runs one data request; the status becomes the response's errno.
  Status Execute(const Header& h, const std::string& payload, std::span<const std::uint8_t>* out) {
    if (replica_ == nullptr) {
      return InvalidArgument(std::string(wire::MsgTypeName(h.type)) +
                             " before a ControlRequest.open on this connection");
    }
    // Held until the request is done: a SetGeneration waits for it, so a request of a stale
    // engine can never land after the generation moved on.
    auto hold = replica_->HoldGeneration(h.generation);
    if (!hold.ok()) {
      if (!stale_logged_) {
        stale_logged_ = true;
        log_.info(
            "{} ({}): replica {}: refusing requests at generation {} ({}); logged once "
            "per connection",
            conn_.peer(), client_, replica_name_, h.generation, hold.status().message());
      }
      return hold.status();
    }
    const bool fua = (h.flags & wire::kFlagFua) != 0;
    if (layer_writes_) {
      switch (h.type) {
        case MsgType::kWrite:
          return replica_->WriteLayer(snapshot_, h.offset, Bytes(payload));
        case MsgType::kTrim:
        case MsgType::kWriteZeroes:
          return replica_->ZeroLayer(snapshot_, h.offset, h.count);
        case MsgType::kFlush:
          return replica_->Flush();
        default:
          break;  // READ: the snapshot's view, below
      }
    }
    if (!snapshot_.empty() && h.type != MsgType::kRead && h.type != MsgType::kFlush) {
      return PermissionDenied("replica " + replica_name_ + " is open read-only at snapshot " +
                              snapshot_);
    }
    switch (h.type) {
      case MsgType::kRead: {
        if (h.count > wire::kMaxPayload) {
          return InvalidArgument("count: " + std::to_string(h.count) + " exceeds " +
                                 std::to_string(wire::kMaxPayload));
        }
        read_buf_.resize(h.count);
        std::span<std::uint8_t> buf(read_buf_.data(), h.count);
        HCI_RETURN_NOT_OK(snapshot_.empty() ? replica_->Read(h.offset, buf)
                                            : replica_->ReadSnapshot(snapshot_, h.offset, buf));
        *out = buf;
        return Status::OK();
      }
      case MsgType::kWrite:
        return replica_->Write(h.offset, Bytes(payload), fua);
      case MsgType::kFlush:
        return snapshot_.empty() ? replica_->Flush() : Status::OK();
      case MsgType::kTrim:
        return replica_->WriteZeroes(h.offset, h.count, /*punch=*/true, fua);
      case MsgType::kWriteZeroes:
        return replica_->WriteZeroes(h.offset, h.count, /*punch=*/false, fua);
      default:
        return Internal("not a data request");
    }
  }

  Status HandleData(const Header& h, const std::string& payload) {
    std::span<const std::uint8_t> data;
    const Status status = Execute(h, payload, &data);
    Header reply;
    reply.type = h.type;
    reply.flags = wire::kFlagResponse;
    reply.handle = h.handle;
    reply.offset = h.offset;
    reply.count = h.count;
    reply.generation = h.generation;
    if (!status.ok()) {
      reply.status = wire::StatusToErrno(status);
      data = {};
      if (status.code() == StatusCode::kFailedPrecondition) {
        // Logged once per connection above.
      } else if (reply.status == EIO) {
        log_.warn("{} ({}): replica {}: {} at offset {} failed: {}", conn_.peer(), client_,
                  replica_name_, wire::MsgTypeName(h.type), h.offset, status.message());
      } else {
        log_.debug("{} ({}): {} at offset {} refused: {}", conn_.peer(), client_,
                   wire::MsgTypeName(h.type), h.offset, status.message());
      }
    }
    return conn_.Send(reply, data);
  }

  ReplicaServer& server_;
  wire::Connection& conn_;
  const std::string client_;
  spdlog::logger& log_;
  std::shared_ptr<Replica> replica_;
  std::string replica_name_;
  std::string snapshot_;
  bool layer_writes_ = false;  // writes go into snapshot_'s own layer
  bool stale_logged_ = false;
  std::vector<std::uint8_t> read_buf_;
};

Result<std::unique_ptr<ReplicaServer>> ReplicaServer::Create(ReplicaServerOptions options) {
  HCI_RETURN_NOT_OK(ValidateName("node", options.node));
  if (options.listen.empty()) return InvalidArgument("listen: must not be empty");
  if (options.secret.empty()) return InvalidArgument("secret: must not be empty");
  if (options.data_dir.empty()) return InvalidArgument("data_dir: must not be empty");
  HCI_ASSIGN_OR_RAISE(auto store, ReplicaStore::Open(options.data_dir));
  std::shared_ptr<spdlog::logger> logger =
      options.logger ? options.logger : spdlog::default_logger();
  return std::unique_ptr<ReplicaServer>(
      new ReplicaServer(std::move(options), std::move(store), std::move(logger)));
}

ReplicaServer::ReplicaServer(ReplicaServerOptions options, std::unique_ptr<ReplicaStore> store,
                             std::shared_ptr<spdlog::logger> logger)
    : options_(std::move(options)), store_(std::move(store)), log_(std::move(logger)) {}

ReplicaServer::~ReplicaServer() { Stop().IgnoreError(); }

Status ReplicaServer::Start() {
  std::lock_guard lock(mu_);
  if (started_) return FailedPrecondition("the replica server was already started");
  Result<Listening> listening = options_.listen.starts_with("unix:") ? ListenUnix(options_.listen)
                                                                     : ListenTcp(options_.listen);
  HCI_RETURN_NOT_OK(listening);
  const int wake = ::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  if (wake < 0) {
    const int err = errno;
    ::close(listening->fd);
    return ErrnoStatus(err, "eventfd");
  }
  started_ = true;
  listen_fd_ = listening->fd;
  address_ = listening->address;
  unix_path_ = listening->unix_path;
  wake_fd_ = wake;
  log_->info("node {} listening on {} (data dir {}, {} replicas)", options_.node, address_,
             options_.data_dir, store_->List().size());
  accept_thread_ = std::thread([this] { AcceptLoop(); });
  return Status::OK();
}

std::string ReplicaServer::address() const {
  std::lock_guard lock(mu_);
  return address_;
}

std::size_t ReplicaServer::connection_count() const {
  std::lock_guard lock(mu_);
  std::size_t n = 0;
  for (const auto& [id, session] : sessions_) n += !session->done.load();
  return n;
}

void ReplicaServer::AcceptLoop() {
  while (!stopping_.load()) {
    pollfd fds[2] = {{listen_fd_, POLLIN, 0}, {wake_fd_, POLLIN, 0}};
    // The timeout only paces the reaping of finished sessions.
    const int ready = ::poll(fds, 2, 1000);
    Reap();
    if (stopping_.load() || (ready > 0 && fds[1].revents != 0)) break;
    if (ready <= 0 || (fds[0].revents & POLLIN) == 0) continue;
    sockaddr_storage ss{};
    socklen_t len = sizeof(ss);
    const int fd = ::accept4(listen_fd_, reinterpret_cast<sockaddr*>(&ss), &len, SOCK_CLOEXEC);
    if (fd < 0) {
      const int err = errno;
      if (err == EINTR || err == EAGAIN || err == ECONNABORTED) continue;
      log_->warn("accept on {} failed: {}", address_, std::strerror(err));
      // Out of descriptors or memory: give the sessions a moment to finish.
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
      continue;
    }
    auto session = std::make_unique<Session>();
    session->conn = std::make_unique<wire::Connection>(fd, FormatAddress(ss));
    Session* raw = session.get();
    std::lock_guard lock(mu_);
    sessions_.emplace(next_session_++, std::move(session));
    raw->thread = std::thread([this, raw] { Serve(raw); });
  }
}

void ReplicaServer::Serve(Session* session) {
  wire::Connection& conn = *session->conn;
  SetIoTimeout(conn.fd(), options_.handshake_timeout);
  std::string client;
  const Status shook = wire::ServerHandshake(conn, options_.secret, options_.node, &client);
  if (!shook.ok()) {
    log_->warn("refused {}: {}", conn.peer(), shook.message());
    conn.Shutdown();
    session->done.store(true);
    return;
  }
  // After the handshake nothing times out: a quiet engine is not a dead one.
  SetIoTimeout(conn.fd(), std::chrono::milliseconds(0));
  const int one = 1;
  ::setsockopt(conn.fd(), IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));  // fails on unix: fine
  log_->info("accepted {} ({})", conn.peer(), client);
  ConnectionHandler(*this, conn, client).Run();
  conn.Shutdown();
  session->done.store(true);
}

void ReplicaServer::Reap() {
  std::vector<std::unique_ptr<Session>> finished;
  {
    std::lock_guard lock(mu_);
    for (auto it = sessions_.begin(); it != sessions_.end();) {
      if (it->second->done.load()) {
        finished.push_back(std::move(it->second));
        it = sessions_.erase(it);
      } else {
        ++it;
      }
    }
  }
  for (auto& s : finished) s->thread.join();
}

Status ReplicaServer::Stop() {
  {
    std::lock_guard lock(mu_);
    if (!started_ || stopped_) return Status::OK();
    stopped_ = true;
  }
  stopping_.store(true);
  const std::uint64_t one = 1;
  if (::write(wake_fd_, &one, sizeof(one)) < 0) {
    // The loop still sees stopping_ within its poll timeout.
  }
  accept_thread_.join();
  ::close(listen_fd_);
  if (!unix_path_.empty()) ::unlink(unix_path_.c_str());

  std::map<std::uint64_t, std::unique_ptr<Session>> sessions;
  {
    std::lock_guard lock(mu_);
    sessions.swap(sessions_);
  }
  for (auto& [id, s] : sessions) s->conn->Shutdown();
  for (auto& [id, s] : sessions) s->thread.join();
  ::close(wake_fd_);

  Status first;
  for (const std::shared_ptr<Replica>& replica : store_->List()) {
    Status flushed = replica->Flush();
    if (!flushed.ok()) {
      const std::string name = replica->Meta().replica();
      log_->error("flushing replica {} on shutdown failed: {}", name, flushed.message());
      if (first.ok()) first = flushed.WithContext("replica " + name);
    }
  }
  log_->info("node {} stopped ({} connections closed, replicas flushed)", options_.node,
             sessions.size());
  return first;
}

}  // namespace hci::replicated
