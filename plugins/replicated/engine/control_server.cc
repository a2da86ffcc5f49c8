// The engine's control socket: EngineRequest/EngineResponse in kControl frames, one client at a
// time (the plugin asks for status, snapshots and expansions; none of them is frequent).
#include <spdlog/spdlog.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstring>
#include <thread>

#include "engine/engine.h"
#include "wire/replica_wire.h"

namespace hci::replicated {

struct ControlServer::State {
  Engine* engine = nullptr;
  std::string path;
  int listen_fd = -1;
  std::atomic<bool> stopping{false};
  std::atomic<int> client_fd{-1};
  std::thread thread;

  void Serve(wire::Connection& conn) {
    for (;;) {
      wire::Header h;
      std::string payload;
      if (!conn.Receive(&h, &payload).ok()) return;
      v1::EngineResponse response;
      v1::EngineRequest request;
      if (h.type != wire::MsgType::kControl || !request.ParseFromString(payload)) {
        response.set_code(static_cast<int>(StatusCode::kInvalidArgument));
        response.set_message("request: not an EngineRequest");
      } else {
        Status st;
        switch (request.request_case()) {
          case v1::EngineRequest::kStatus:
            break;
          case v1::EngineRequest::kSnapshot:
            st = engine->Snapshot(request.snapshot());
            break;
          case v1::EngineRequest::kExpand:
            st = engine->Expand(request.expand());
            break;
          case v1::EngineRequest::kScrub:
            st = engine->Scrub(request.scrub());
            break;
          default:
            st = Unimplemented("request: not implemented by this engine");
        }
        response.set_code(static_cast<int>(st.code()));
        response.set_message(st.message());
        *response.mutable_status() = engine->GetStatus();
      }
      wire::Header reply;
      reply.type = wire::MsgType::kControl;
      reply.flags = wire::kFlagResponse;
      reply.handle = h.handle;
      const std::string out = response.SerializeAsString();
      if (!conn.Send(reply, {reinterpret_cast<const std::uint8_t*>(out.data()), out.size()}).ok()) {
        return;
      }
    }
  }

  void Loop() {
    while (!stopping) {
      int fd = accept4(listen_fd, nullptr, nullptr, SOCK_CLOEXEC);
      if (fd < 0) {
        if (errno == EINTR) continue;
        return;  // shut down
      }
      client_fd = fd;
      wire::Connection conn(fd, "control client");
      if (!stopping) Serve(conn);
      client_fd = -1;
    }
  }
};

Result<std::unique_ptr<ControlServer>> ControlServer::Start(Engine* engine,
                                                            const std::string& path) {
  sockaddr_un addr{};
  if (path.empty() || path.size() >= sizeof(addr.sun_path)) {
    return InvalidArgument("control_socket: \"" + path + "\" must be 1-107 bytes");
  }
  auto state = std::make_unique<State>();
  state->engine = engine;
  state->path = path;
  state->listen_fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (state->listen_fd < 0) return ErrnoStatus(errno, "control socket");
  addr.sun_family = AF_UNIX;
  std::memcpy(addr.sun_path, path.c_str(), path.size());
  unlink(path.c_str());
  const mode_t old = umask(0077);
  const int rc = bind(state->listen_fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr));
  umask(old);
  if (rc != 0 || listen(state->listen_fd, 8) != 0) {
    const int err = errno;
    close(state->listen_fd);
    return ErrnoStatus(err, "control socket " + path);
  }
  State* raw = state.get();
  state->thread = std::thread([raw] { raw->Loop(); });
  return std::unique_ptr<ControlServer>(new ControlServer(std::move(state)));
}

ControlServer::ControlServer(std::unique_ptr<State> state) : state_(std::move(state)) {}

ControlServer::~ControlServer() {
  state_->stopping = true;
  shutdown(state_->listen_fd, SHUT_RDWR);
  const int client = state_->client_fd.load();
  if (client >= 0) shutdown(client, SHUT_RDWR);
  state_->thread.join();
  close(state_->listen_fd);
  unlink(state_->path.c_str());
}

}  // namespace hci::replicated
