#include "qmp/qmp_client.h"

#include <fcntl.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/local/stream_protocol.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/read_until.hpp>
#include <boost/asio/write.hpp>
#include <boost/json/parse.hpp>
#include <boost/json/serialize.hpp>
#include <cerrno>
#include <cmath>
#include <condition_variable>
#include <deque>
#include <exception>
#include <future>
#include <limits>
#include <mutex>
#include <new>
#include <system_error>
#include <thread>
#include <unordered_map>
#include <utility>

namespace hci::qmp {
namespace {

namespace asio = boost::asio;
namespace json = boost::json;
using std::chrono::milliseconds;
using Clock = std::chrono::steady_clock;

std::string Ms(milliseconds d) { return std::to_string(d.count()) + " ms"; }

std::string Quoted(std::string_view s) {
  std::string out = "\"";
  out.append(s);
  out += '"';
  return out;
}

std::string_view StripLineEnding(std::string_view line) {
  if (!line.empty() && line.back() == '\n') line.remove_suffix(1);
  if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
  return line;
}

// Why a socket read or write failed, in words that say whether QEMU went away.
std::string DescribeIoError(const boost::system::error_code& ec, std::string_view operation) {
  if (ec == asio::error::eof) return "QEMU closed the connection";
  // What a QEMU that dies with requests unread, or before our write, leaves behind.
  if (ec == asio::error::connection_reset || ec == asio::error::broken_pipe) {
    return "QEMU closed the connection abruptly (" + ec.message() + " while " +
           std::string(operation) + ")";
  }
  return std::string(operation) + " failed: " + ec.message();
}

bool IsBlank(std::string_view line) {
  return line.find_first_not_of(" \t\r\n") == std::string_view::npos;
}

std::string_view KindName(json::kind k) {
  switch (k) {
    case json::kind::null:
      return "null";
    case json::kind::bool_:
      return "a boolean";
    case json::kind::int64:
    case json::kind::uint64:
    case json::kind::double_:
      return "a number";
    case json::kind::string:
      return "a string";
    case json::kind::array:
      return "an array";
    case json::kind::object:
      return "an object";
  }
  return "an unknown kind";
}

Status WrongType(std::string_view member, std::string_view expected, const json::value& got) {
  std::string msg = "QMP message: ";
  msg.append(member);
  msg += ": must be ";
  msg.append(expected);
  msg += ", got ";
  msg.append(KindName(got.kind()));
  return InvalidArgument(std::move(msg));
}

// Boost.JSON turns out-of-range numbers into +-infinity, which it would serialize as the
// non-JSON token "Infinity"; reject them so every accepted value round-trips. Iterative: a
// recursive walk would let nesting depth decide stack use.
bool AllNumbersFinite(const json::value& root) {
  std::vector<const json::value*> stack{&root};
  while (!stack.empty()) {
    const json::value* v = stack.back();
    stack.pop_back();
    if (const double* d = v->if_double()) {
      if (!std::isfinite(*d)) return false;
    } else if (const json::array* a = v->if_array()) {
      for (const json::value& e : *a) stack.push_back(&e);
    } else if (const json::object* o = v->if_object()) {
      for (const auto& kv : *o) stack.push_back(&kv.value());
    }
  }
  return true;
}

// An integer that fits int64; doubles such as 1.0 are refused (QEMU never sends them).
bool GetInt64(const json::value& v, int64_t* out) {
  if (const int64_t* i = v.if_int64()) {
    *out = *i;
    return true;
  }
  if (const uint64_t* u = v.if_uint64()) {
    if (*u > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) return false;
    *out = static_cast<int64_t>(*u);
    return true;
  }
  return false;
}

// Request ids are unsigned counters; QEMU echoes them back unchanged.
bool GetRequestId(const json::value& v, uint64_t* out) {
  if (const uint64_t* u = v.if_uint64()) {
    *out = *u;
    return true;
  }
  if (const int64_t* i = v.if_int64(); i != nullptr && *i >= 0) {
    *out = static_cast<uint64_t>(*i);
    return true;
  }
  return false;
}

Result<QmpMessage> ParseGreeting(json::object& top) {
  json::object* qmp = top["QMP"].if_object();
  if (qmp == nullptr) return WrongType("QMP", "an object", top["QMP"]);
  QmpGreeting greeting;

  json::value* version = qmp->if_contains("version");
  if (version == nullptr) return InvalidArgument("QMP message: QMP.version: missing");
  if (!version->is_object()) return WrongType("QMP.version", "an object", *version);
  json::value* qemu = version->get_object().if_contains("qemu");
  if (qemu == nullptr) return InvalidArgument("QMP message: QMP.version.qemu: missing");
  if (!qemu->is_object()) return WrongType("QMP.version.qemu", "an object", *qemu);
  struct Part {
    const char* name;
    int64_t* out;
  };
  for (const Part& part :
       {Part{"major", &greeting.version.major}, Part{"minor", &greeting.version.minor},
        Part{"micro", &greeting.version.micro}}) {
    std::string member = std::string("QMP.version.qemu.") + part.name;
    json::value* v = qemu->get_object().if_contains(part.name);
    if (v == nullptr) return InvalidArgument("QMP message: " + member + ": missing");
    if (!GetInt64(*v, part.out) || *part.out < 0) {
      return InvalidArgument("QMP message: " + member + ": must be a non-negative integer, got " +
                             json::serialize(*v));
    }
  }
  if (json::value* package = version->get_object().if_contains("package")) {
    if (!package->is_string()) return WrongType("QMP.version.package", "a string", *package);
    greeting.version.package = std::string(package->get_string());
  }

  json::value* caps = qmp->if_contains("capabilities");
  if (caps == nullptr) return InvalidArgument("QMP message: QMP.capabilities: missing");
  if (!caps->is_array()) return WrongType("QMP.capabilities", "an array", *caps);
  for (std::size_t i = 0; i < caps->get_array().size(); ++i) {
    const json::value& cap = caps->get_array()[i];
    if (!cap.is_string()) {
      return WrongType("QMP.capabilities[" + std::to_string(i) + "]", "a string", cap);
    }
    greeting.capabilities.emplace_back(cap.get_string());
  }
  return QmpMessage(std::move(greeting));
}

Result<QmpMessage> ParseReturn(json::object& top) {
  QmpReturn reply;
  reply.value = std::move(top["return"]);
  if (json::value* id = top.if_contains("id")) reply.id = std::move(*id);
  return QmpMessage(std::move(reply));
}

Result<QmpMessage> ParseError(json::object& top) {
  json::object* error = top["error"].if_object();
  if (error == nullptr) return WrongType("error", "an object", top["error"]);
  QmpErrorReply reply;
  for (auto [name, out] :
       {std::pair{"class", &reply.error_class}, std::pair{"desc", &reply.desc}}) {
    json::value* v = error->if_contains(name);
    if (v == nullptr)
      return InvalidArgument(std::string("QMP message: error.") + name + ": missing");
    if (!v->is_string()) return WrongType(std::string("error.") + name, "a string", *v);
    *out = std::string(v->get_string());
  }
  if (json::value* id = top.if_contains("id")) reply.id = std::move(*id);
  return QmpMessage(std::move(reply));
}

Result<QmpMessage> ParseEvent(json::object& top) {
  json::string* name = top["event"].if_string();
  if (name == nullptr) return WrongType("event", "a string", top["event"]);
  if (name->empty()) return InvalidArgument("QMP message: event: must not be empty");
  QmpEvent event;
  event.name = std::string(*name);
  if (json::value* data = top.if_contains("data")) {
    if (!data->is_object()) return WrongType("data", "an object", *data);
    event.data = std::move(data->get_object());
  }
  // Like libvirt, tolerate a missing timestamp (events are best-effort), but not a wrong one.
  if (json::value* ts = top.if_contains("timestamp")) {
    if (!ts->is_object()) return WrongType("timestamp", "an object", *ts);
    for (auto [part, out] :
         {std::pair{"seconds", &event.seconds}, std::pair{"microseconds", &event.microseconds}}) {
      json::value* v = ts->get_object().if_contains(part);
      if (v == nullptr) {
        return InvalidArgument(std::string("QMP message: timestamp.") + part + ": missing");
      }
      if (!GetInt64(*v, out)) {
        return InvalidArgument(std::string("QMP message: timestamp.") + part +
                               ": must be an integer, got " + json::serialize(*v));
      }
    }
  }
  return QmpMessage(std::move(event));
}

Result<QmpMessage> ParseUnchecked(std::string_view line) {
  line = StripLineEnding(line);
  if (line.size() > kMaxMessageBytes) {
    return InvalidArgument("QMP message: the line is " + std::to_string(line.size()) +
                           " bytes long, more than the limit of " +
                           std::to_string(kMaxMessageBytes) + " bytes");
  }
  json::parse_options options;
  options.max_depth = kMaxJsonDepth;
  json::error_code ec;
  json::value root = json::parse(line, ec, json::storage_ptr(), options);
  if (ec == json::error::too_deep) {
    return InvalidArgument("QMP message: JSON nested deeper than " + std::to_string(kMaxJsonDepth) +
                           " levels");
  }
  if (ec) return InvalidArgument("QMP message: not valid JSON: " + ec.message());
  if (!AllNumbersFinite(root)) {
    return InvalidArgument("QMP message: contains a number too large to represent");
  }
  json::object* top = root.if_object();
  if (top == nullptr) {
    return InvalidArgument(std::string("QMP message: must be a JSON object, got ") +
                           std::string(KindName(root.kind())));
  }
  const int kinds =
      static_cast<int>(top->contains("QMP")) + static_cast<int>(top->contains("return")) +
      static_cast<int>(top->contains("error")) + static_cast<int>(top->contains("event"));
  if (kinds != 1) {
    return InvalidArgument(std::string("QMP message: must have exactly one of the members QMP, "
                                       "return, error, event; it has ") +
                           std::to_string(kinds));
  }
  if (top->contains("QMP")) return ParseGreeting(*top);
  if (top->contains("return")) return ParseReturn(*top);
  if (top->contains("error")) return ParseError(*top);
  return ParseEvent(*top);
}

}  // namespace

std::string QmpVersion::ToString() const {
  std::string s = std::to_string(major) + "." + std::to_string(minor) + "." + std::to_string(micro);
  if (!package.empty()) s += " (" + package + ")";
  return s;
}

Result<QmpMessage> ParseQmpMessage(std::string_view line) {
  // Boost.JSON reports syntax through error codes; only allocation can throw.
  try {
    return ParseUnchecked(line);
  } catch (const std::bad_alloc&) {
    return ResourceExhausted("QMP message: out of memory while parsing " +
                             std::to_string(line.size()) + " bytes");
  }
}

Status QmpErrorToStatus(std::string_view command, const QmpErrorReply& error) {
  std::string message(command);
  message += ": ";
  message += error.desc.empty() ? "QMP error " + error.error_class : error.desc;
  const std::string& c = error.error_class;
  if (c == "CommandNotFound" || c == "KVMMissingCap") return Unimplemented(std::move(message));
  if (c == "DeviceNotFound") return NotFound(std::move(message));
  if (c == "DeviceNotActive" || c == "GenericError") return FailedPrecondition(std::move(message));
  return UnknownError(message + " (QMP error class " + c + ")");
}

std::chrono::milliseconds DefaultTimeoutFor(std::string_view command) {
  using std::chrono::hours;
  using std::chrono::minutes;
  using std::chrono::seconds;
  // Slow because they open images or wait for a medium (Proxmox: "cdrom mount command is slow").
  static constexpr std::string_view kOneMinute[] = {"device_add", "blockdev-add", "eject", "change",
                                                    "blockdev-change-medium"};
  // Block jobs and internal snapshots do I/O inside QEMU's main loop before replying.
  static constexpr std::string_view kTenMinutes[] = {"drive-mirror",
                                                     "blockdev-mirror",
                                                     "query-block-jobs",
                                                     "block-job-cancel",
                                                     "block-job-complete",
                                                     "blockdev-snapshot-internal-sync",
                                                     "blockdev-snapshot-delete-internal-sync"};
  if (command == "query-migrate") return hours(1);
  for (std::string_view c : kOneMinute) {
    if (command == c) return seconds(60);
  }
  for (std::string_view c : kTenMinutes) {
    if (command == c) return minutes(10);
  }
  return seconds(5);
}

// ---------------------------------------------------------------------------------------------

class QmpClient::Impl : public std::enable_shared_from_this<QmpClient::Impl> {
 public:
  explicit Impl(const ConnectOptions& options)
      : options_(options),
        log_kind_("qmp"),
        log_name_(options.log_object_name.empty() ? options.socket_path : options.log_object_name),
        work_(asio::make_work_guard(io_)),
        socket_(io_) {
    auto handler = options.on_event;
    if (handler) handler_ = std::make_shared<const EventHandler>(std::move(handler));
  }

  ~Impl() { Shutdown(); }

  Status ConnectSocket(Clock::time_point deadline);
  Status Start();
  Status AwaitGreeting(Clock::time_point deadline);
  // Called when Connect succeeds: from then on a lost connection is reported to on_disconnect.
  // Fails if the connection was lost already, so that Connect fails instead.
  Status MarkEstablished();
  void Shutdown();

  Result<json::value> Execute(std::string_view command, const json::object& args,
                              milliseconds timeout);
  void SetEventHandler(std::function<void(const QmpEvent&)> handler);
  uint64_t NextEventSequence() const;
  Result<QmpEvent> WaitForEvent(std::string_view name,
                                const std::function<bool(const QmpEvent&)>& predicate,
                                milliseconds timeout, uint64_t since);
  bool connected() const {
    std::lock_guard lock(mu_);
    return connected_;
  }
  QmpClient::Stats stats() const {
    return {commands_sent_.load(), replies_discarded_.load(), events_received_.load()};
  }

  // Immutable once Connect has returned.
  QmpGreeting greeting_;

 private:
  using EventHandler = std::function<void(const QmpEvent&)>;
  struct PendingCall {
    std::string command;
    std::promise<Result<json::value>> promise;
  };
  struct Outgoing {
    uint64_t id;
    std::string line;
  };
  // What the dispatch thread delivers: an event, or the disconnect notification.
  using DispatchItem = std::variant<std::shared_ptr<const QmpEvent>, Status>;

  std::string Where() const { return "QMP connection to " + Quoted(options_.socket_path); }

  // I/O thread.
  void IoMain();
  void StartRead();
  void OnRead(const boost::system::error_code& ec, std::size_t n);
  Status HandleLine(std::string_view line);
  void CompleteCall(const json::value& id, bool fifo_fallback, QmpMessage&& reply);
  void HandleEvent(QmpEvent&& event);
  void EnqueueWrite(uint64_t id, std::string line);
  void WriteNext();
  void HandleDisconnect(const Status& cause);
  void SetGreetingStatus(const Status& status);

  // Dispatch thread.
  void DispatchMain();

  const ConnectOptions options_;
  const std::string log_kind_;
  const std::string log_name_;

  asio::io_context io_;
  asio::executor_work_guard<asio::io_context::executor_type> work_;
  asio::local::stream_protocol::socket socket_;
  std::thread io_thread_;
  std::thread dispatch_thread_;
  bool shut_down_ = false;

  // Touched only by the I/O thread once it runs.
  std::string read_buf_;
  std::deque<Outgoing> write_queue_;
  bool writing_ = false;
  // Ids written to the socket whose reply has not arrived, in wire order. Without out-of-band
  // execution QEMU answers in that order, so an error without id belongs to the front entry.
  std::deque<uint64_t> in_flight_;
  bool greeted_ = false;

  // Calls and connection state.
  mutable std::mutex mu_;
  bool connected_ = true;
  bool established_ = false;
  bool closing_ = false;
  Status disconnect_cause_;
  uint64_t next_id_ = 1;
  std::unordered_map<uint64_t, std::shared_ptr<PendingCall>> pending_;
  std::promise<Status> greeting_promise_;
  bool greeting_status_set_ = false;

  // Events and dispatch.
  mutable std::mutex ev_mu_;
  std::condition_variable event_cv_;     // WaitForEvent: a new event or the end.
  std::condition_variable dispatch_cv_;  // DispatchMain: work or stop.
  std::deque<std::shared_ptr<const QmpEvent>> event_log_;
  uint64_t next_sequence_ = 1;
  std::deque<DispatchItem> dispatch_queue_;
  std::shared_ptr<const EventHandler> handler_;
  bool events_ended_ = false;  // no more events will come
  Status events_end_cause_;
  bool stop_dispatch_ = false;

  std::atomic<uint64_t> commands_sent_{0};
  std::atomic<uint64_t> replies_discarded_{0};
  std::atomic<uint64_t> events_received_{0};
};

Status QmpClient::Impl::ConnectSocket(Clock::time_point deadline) {
  const std::string& path = options_.socket_path;
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  path.copy(addr.sun_path, sizeof(addr.sun_path) - 1);
  const auto start = Clock::now();
  for (int attempt = 1;; ++attempt) {
    // Non-blocking so that connect() cannot wait on a full listen backlog past the deadline.
    int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (fd < 0) return ErrnoStatus(errno, "socket_path: socket() for " + Quoted(path));
    int rc = ::connect(fd, reinterpret_cast<const sockaddr*>(&addr), sizeof(addr));
    int err = rc == 0 ? 0 : errno;
    if (rc == 0) {
      boost::system::error_code ec;
      socket_.assign(asio::local::stream_protocol(), fd, ec);
      if (ec) {
        ::close(fd);
        return Internal("socket_path: adopting the socket for " + Quoted(path) + ": " +
                        ec.message());
      }
      return Status::OK();
    }
    ::close(fd);
    // The socket does not exist yet, QEMU is not listening yet, or its backlog is full.
    const bool transient = err == ENOENT || err == ECONNREFUSED || err == EAGAIN || err == EINTR;
    if (!transient) return ErrnoStatus(err, "socket_path: connecting to " + Quoted(path));
    const auto now = Clock::now();
    if (now >= deadline) {
      return DeadlineExceeded("socket_path: could not connect to " + Quoted(path) + " within " +
                              Ms(std::chrono::duration_cast<milliseconds>(now - start)) + " (" +
                              std::to_string(attempt) + " attempts): " +
                              std::error_code(err, std::generic_category()).message());
    }
    std::this_thread::sleep_for(std::min<Clock::duration>(options_.retry_interval, deadline - now));
  }
}

Status QmpClient::Impl::Start() {
  try {
    asio::post(io_, [this] { StartRead(); });
    io_thread_ = std::thread([this] { IoMain(); });
    dispatch_thread_ = std::thread([self = shared_from_this()] { self->DispatchMain(); });
  } catch (const std::system_error& e) {
    return ResourceExhausted(Where() + ": cannot start threads: " + e.what());
  }
  return Status::OK();
}

Status QmpClient::Impl::AwaitGreeting(Clock::time_point deadline) {
  std::future<Status> greeting = greeting_promise_.get_future();
  if (greeting.wait_until(deadline) != std::future_status::ready) {
    return DeadlineExceeded("socket_path: no QMP greeting from " + Quoted(options_.socket_path) +
                            " before the connect deadline of " + Ms(options_.connect_timeout) +
                            "; another client may be holding the monitor");
  }
  return greeting.get();
}

Status QmpClient::Impl::MarkEstablished() {
  std::lock_guard lock(mu_);
  if (!connected_) return disconnect_cause_;
  established_ = true;
  return Status::OK();
}

void QmpClient::Impl::Shutdown() {
  if (shut_down_) return;
  shut_down_ = true;
  {
    std::lock_guard lock(mu_);
    closing_ = true;
  }
  // Abandons outstanding reads and writes; none of their handlers run afterwards.
  io_.stop();
  if (io_thread_.joinable()) io_thread_.join();
  boost::system::error_code ec;
  socket_.close(ec);
  // Nothing should be waiting (destroying a client in use is a bug), but never leave a caller
  // blocked forever.
  std::unordered_map<uint64_t, std::shared_ptr<PendingCall>> orphans;
  {
    std::lock_guard lock(mu_);
    connected_ = false;
    if (disconnect_cause_.ok()) disconnect_cause_ = Unavailable(Where() + " was closed");
    orphans.swap(pending_);
    if (!greeting_status_set_) {
      greeting_status_set_ = true;
      greeting_promise_.set_value(disconnect_cause_);
    }
  }
  for (auto& [id, call] : orphans) {
    call->promise.set_value(Unavailable(call->command + ": " + Where() + " was closed"));
  }
  {
    std::lock_guard lock(ev_mu_);
    stop_dispatch_ = true;
    if (!events_ended_) {
      events_ended_ = true;
      events_end_cause_ = Unavailable(Where() + " was closed");
    }
  }
  dispatch_cv_.notify_all();
  event_cv_.notify_all();
  if (dispatch_thread_.joinable()) {
    // Destroyed from an event handler: that thread holds a reference to this Impl and exits
    // as soon as the handler returns.
    if (dispatch_thread_.get_id() == std::this_thread::get_id()) {
      dispatch_thread_.detach();
    } else {
      dispatch_thread_.join();
    }
  }
}

void QmpClient::Impl::IoMain() {
  try {
    io_.run();
  } catch (const std::exception& e) {
    // Only allocation failures can get here; without a reader the connection is useless.
    HandleDisconnect(Unavailable(Where() + " failed: " + e.what()));
  }
}

void QmpClient::Impl::StartRead() {
  // One byte more than the limit plus CR LF, so that an over-long line is reported as such.
  asio::async_read_until(
      socket_, asio::dynamic_buffer(read_buf_, kMaxMessageBytes + 3), '\n',
      [this](const boost::system::error_code& ec, std::size_t n) { OnRead(ec, n); });
}

void QmpClient::Impl::OnRead(const boost::system::error_code& ec, std::size_t n) {
  if (ec == asio::error::operation_aborted) return;
  if (ec == asio::error::not_found) {
    HandleDisconnect(Unavailable(Where() + " dropped: QEMU sent a line longer than " +
                                 std::to_string(kMaxMessageBytes) + " bytes"));
    return;
  }
  if (ec) {
    HandleDisconnect(Unavailable(Where() + " lost: " + DescribeIoError(ec, "reading")));
    return;
  }
  Status status = HandleLine(std::string_view(read_buf_.data(), n));
  read_buf_.erase(0, n);
  if (!status.ok()) {
    // Like libvirt, treat a malformed message as fatal: a reply we cannot parse leaves some
    // caller waiting for nothing, and the stream can no longer be trusted.
    HandleDisconnect(
        Unavailable(Where() + " dropped: QEMU sent a malformed message: " + status.message()));
    return;
  }
  StartRead();
}

Status QmpClient::Impl::HandleLine(std::string_view line) {
  if (IsBlank(line)) return Status::OK();
  HCI_ASSIGN_OR_RAISE(QmpMessage message, ParseQmpMessage(line));
  if (auto* greeting = std::get_if<QmpGreeting>(&message)) {
    if (greeted_) return InvalidArgument("a second QMP greeting");
    greeting_ = std::move(*greeting);
    greeted_ = true;
    SetGreetingStatus(Status::OK());
    return Status::OK();
  }
  if (!greeted_) return InvalidArgument("the first message is not the QMP greeting");
  if (auto* event = std::get_if<QmpEvent>(&message)) {
    HandleEvent(std::move(*event));
  } else if (auto* ret = std::get_if<QmpReturn>(&message)) {
    json::value id = std::move(ret->id);
    CompleteCall(id, /*fifo_fallback=*/false, std::move(message));
  } else {
    json::value id = std::move(std::get<QmpErrorReply>(message).id);
    CompleteCall(id, /*fifo_fallback=*/true, std::move(message));
  }
  return Status::OK();
}

void QmpClient::Impl::CompleteCall(const json::value& id, bool fifo_fallback, QmpMessage&& reply) {
  uint64_t key = 0;
  bool have_key = GetRequestId(id, &key);
  if (!have_key && id.is_null() && fifo_fallback && !in_flight_.empty()) {
    // QEMU could not read the request's id (the spec's "Parsing error" case).
    key = in_flight_.front();
    have_key = true;
  }
  if (!have_key) {
    ++replies_discarded_;
    options_.logger.Warn(log_kind_, log_name_,
                         "dropped a QMP reply with an unusable id " + json::serialize(id));
    return;
  }
  if (auto it = std::find(in_flight_.begin(), in_flight_.end(), key); it != in_flight_.end()) {
    in_flight_.erase(it);
  }
  std::shared_ptr<PendingCall> call;
  {
    std::lock_guard lock(mu_);
    if (auto it = pending_.find(key); it != pending_.end()) {
      call = std::move(it->second);
      pending_.erase(it);
    }
  }
  if (call == nullptr) {
    // Its caller timed out: the reply is of no use to anyone.
    ++replies_discarded_;
    options_.logger.Debug(log_kind_, log_name_,
                          "discarded the late reply to QMP request " + std::to_string(key));
    return;
  }
  if (auto* ret = std::get_if<QmpReturn>(&reply)) {
    call->promise.set_value(std::move(ret->value));
  } else {
    call->promise.set_value(QmpErrorToStatus(call->command, std::get<QmpErrorReply>(reply)));
  }
}

void QmpClient::Impl::HandleEvent(QmpEvent&& event) {
  auto shared = std::make_shared<QmpEvent>(std::move(event));
  {
    std::lock_guard lock(ev_mu_);
    shared->sequence = next_sequence_++;
    event_log_.push_back(shared);
    while (event_log_.size() > options_.event_log_capacity) event_log_.pop_front();
    dispatch_queue_.emplace_back(std::shared_ptr<const QmpEvent>(std::move(shared)));
  }
  ++events_received_;
  event_cv_.notify_all();
  dispatch_cv_.notify_one();
}

void QmpClient::Impl::EnqueueWrite(uint64_t id, std::string line) {
  write_queue_.push_back({id, std::move(line)});
  if (!writing_) WriteNext();
}

void QmpClient::Impl::WriteNext() {
  // A command whose caller gave up before it reached the socket is not sent at all.
  {
    std::lock_guard lock(mu_);
    while (!write_queue_.empty() && !pending_.contains(write_queue_.front().id)) {
      write_queue_.pop_front();
    }
  }
  if (write_queue_.empty()) {
    writing_ = false;
    return;
  }
  writing_ = true;
  in_flight_.push_back(write_queue_.front().id);
  asio::async_write(
      socket_, asio::buffer(write_queue_.front().line),
      [this](const boost::system::error_code& ec, std::size_t) {
        if (ec == asio::error::operation_aborted) return;
        if (ec) {
          HandleDisconnect(Unavailable(Where() + " lost: " + DescribeIoError(ec, "writing")));
          return;
        }
        write_queue_.pop_front();
        WriteNext();
      });
}

void QmpClient::Impl::HandleDisconnect(const Status& cause) {
  std::unordered_map<uint64_t, std::shared_ptr<PendingCall>> failed;
  bool notify = false;
  {
    std::lock_guard lock(mu_);
    if (!connected_) return;
    connected_ = false;
    disconnect_cause_ = cause;
    failed.swap(pending_);
    notify = established_ && !closing_;
  }
  options_.logger.Info(log_kind_, log_name_, cause.message());
  boost::system::error_code ec;
  socket_.close(ec);
  write_queue_.clear();
  SetGreetingStatus(cause);
  for (auto& [id, call] : failed) {
    // QEMU may exit before the reply to `quit` is flushed (Proxmox makes the same allowance
    // for QGA's guest-shutdown). Once the command was sent, the lost connection is its effect.
    const bool sent = std::find(in_flight_.begin(), in_flight_.end(), id) != in_flight_.end();
    if (call->command == "quit" && sent) {
      call->promise.set_value(json::value(json::object()));
    } else {
      call->promise.set_value(Unavailable(call->command + ": " + cause.message()));
    }
  }
  in_flight_.clear();
  {
    std::lock_guard lock(ev_mu_);
    events_ended_ = true;
    events_end_cause_ = cause;
    if (notify) dispatch_queue_.emplace_back(cause);
  }
  event_cv_.notify_all();
  dispatch_cv_.notify_one();
}

void QmpClient::Impl::SetGreetingStatus(const Status& status) {
  std::lock_guard lock(mu_);
  if (greeting_status_set_) return;
  greeting_status_set_ = true;
  greeting_promise_.set_value(status);
}

void QmpClient::Impl::DispatchMain() {
  std::unique_lock lock(ev_mu_);
  for (;;) {
    dispatch_cv_.wait(lock, [this] { return stop_dispatch_ || !dispatch_queue_.empty(); });
    if (stop_dispatch_) return;
    DispatchItem item = std::move(dispatch_queue_.front());
    dispatch_queue_.pop_front();
    std::shared_ptr<const EventHandler> handler = handler_;
    lock.unlock();
    if (auto* event = std::get_if<std::shared_ptr<const QmpEvent>>(&item)) {
      if (handler != nullptr) (*handler)(**event);
    } else if (options_.on_disconnect) {
      options_.on_disconnect(std::get<Status>(item));
    }
    // Drop our references before waiting, so that nothing outlives its use needlessly.
    item = DispatchItem();
    handler.reset();
    lock.lock();
  }
}

Result<json::value> QmpClient::Impl::Execute(std::string_view command, const json::object& args,
                                             milliseconds timeout) {
  if (command.empty()) return InvalidArgument("command: must not be empty");
  if (timeout == kDefaultTimeout) {
    timeout = DefaultTimeoutFor(command);
  } else if (timeout < milliseconds::zero()) {
    return InvalidArgument("timeout: must not be negative, got " + Ms(timeout));
  }
  json::value args_value(args);
  if (!AllNumbersFinite(args_value)) {
    return InvalidArgument(std::string(command) +
                           ": args: contains a non-finite number, which JSON cannot carry");
  }

  auto call = std::make_shared<PendingCall>();
  call->command = std::string(command);
  std::future<Result<json::value>> reply = call->promise.get_future();
  uint64_t id = 0;
  {
    std::lock_guard lock(mu_);
    if (!connected_) {
      return Unavailable(call->command + ": " + disconnect_cause_.message());
    }
    id = next_id_++;
    pending_.emplace(id, call);
  }
  ++commands_sent_;

  json::object request;
  request["execute"] = command;
  if (!args.empty()) request["arguments"] = std::move(args_value);
  request["id"] = id;
  std::string line = json::serialize(request);
  line += '\n';
  asio::post(io_,
             [this, id, line = std::move(line)]() mutable { EnqueueWrite(id, std::move(line)); });

  if (reply.wait_for(timeout) != std::future_status::ready) {
    bool abandoned = false;
    {
      std::lock_guard lock(mu_);
      abandoned = pending_.erase(id) > 0;
    }
    // Otherwise the reader took the call at the last moment and the result is on its way.
    if (abandoned) {
      return DeadlineExceeded(call->command + ": no reply from QEMU within " + Ms(timeout) +
                              "; the command may still take effect");
    }
  }
  return reply.get();
}

void QmpClient::Impl::SetEventHandler(std::function<void(const QmpEvent&)> handler) {
  std::shared_ptr<const EventHandler> h;
  if (handler) h = std::make_shared<const EventHandler>(std::move(handler));
  std::lock_guard lock(ev_mu_);
  handler_.swap(h);
  // `h` (the old handler) is released after the lock, in case its captures do work on release.
}

uint64_t QmpClient::Impl::NextEventSequence() const {
  std::lock_guard lock(ev_mu_);
  return next_sequence_;
}

Result<QmpEvent> QmpClient::Impl::WaitForEvent(
    std::string_view name, const std::function<bool(const QmpEvent&)>& predicate,
    milliseconds timeout, uint64_t since) {
  if (timeout < milliseconds::zero()) {
    return InvalidArgument("timeout: must not be negative, got " + Ms(timeout));
  }
  const auto deadline = Clock::now() + timeout;
  uint64_t next = std::max<uint64_t>(since, 1);
  std::unique_lock lock(ev_mu_);
  for (;;) {
    // Copy the candidates out so that the predicate runs without the lock.
    std::vector<std::shared_ptr<const QmpEvent>> candidates;
    const uint64_t first_retained =
        event_log_.empty() ? next_sequence_ : event_log_.front()->sequence;
    const bool dropped = next < first_retained;
    for (const auto& event : event_log_) {
      if (event->sequence >= next && event->name == name) candidates.push_back(event);
    }
    const uint64_t examined_until = next_sequence_;
    const bool ended = events_ended_;
    const Status end_cause = events_end_cause_;
    lock.unlock();

    for (const auto& event : candidates) {
      if (!predicate || predicate(*event)) return QmpEvent(*event);
    }
    std::string what = "waiting for QMP event " + std::string(name);
    if (dropped) {
      return OutOfRange(what + ": events " + std::to_string(next) + " to " +
                        std::to_string(first_retained - 1) +
                        " were dropped from the event log (capacity " +
                        std::to_string(options_.event_log_capacity) + ") before they were seen");
    }
    if (ended) return Unavailable(what + ": " + end_cause.message());
    next = examined_until;

    lock.lock();
    if (!event_cv_.wait_until(lock, deadline,
                              [&] { return next_sequence_ > next || events_ended_; })) {
      return DeadlineExceeded(what + ": none arrived within " + Ms(timeout));
    }
  }
}

// ---------------------------------------------------------------------------------------------

QmpClient::QmpClient(std::shared_ptr<Impl> impl) : impl_(std::move(impl)) {}

QmpClient::~QmpClient() { impl_->Shutdown(); }

Result<std::unique_ptr<QmpClient>> QmpClient::Connect(const ConnectOptions& options) {
  if (options.socket_path.empty()) return InvalidArgument("socket_path: must not be empty");
  if (options.socket_path.size() >= sizeof(sockaddr_un::sun_path)) {
    return InvalidArgument("socket_path: " + Quoted(options.socket_path) + " is " +
                           std::to_string(options.socket_path.size()) +
                           " bytes long; a unix socket path must be shorter than " +
                           std::to_string(sizeof(sockaddr_un::sun_path)) + " bytes");
  }
  if (options.socket_path.find('\0') != std::string::npos) {
    return InvalidArgument("socket_path: must not contain a NUL byte");
  }
  if (options.connect_timeout < milliseconds::zero()) {
    return InvalidArgument("connect_timeout: must not be negative, got " +
                           Ms(options.connect_timeout));
  }
  if (options.retry_interval <= milliseconds::zero()) {
    return InvalidArgument("retry_interval: must be positive, got " + Ms(options.retry_interval));
  }
  if (options.event_log_capacity == 0) {
    return InvalidArgument("event_log_capacity: must be at least 1");
  }

  const auto deadline = Clock::now() + options.connect_timeout;
  auto impl = std::make_shared<Impl>(options);
  HCI_RETURN_NOT_OK(impl->ConnectSocket(deadline));
  // From here on the client's destructor cleans up whatever fails.
  std::unique_ptr<QmpClient> client(new QmpClient(impl));
  HCI_RETURN_NOT_OK(impl->Start());
  HCI_RETURN_NOT_OK(impl->AwaitGreeting(deadline));
  const auto remaining = std::chrono::duration_cast<milliseconds>(deadline - Clock::now());
  Result<json::value> negotiated =
      client->Execute("qmp_capabilities", {}, std::max(remaining, milliseconds(1)));
  if (!negotiated.ok()) {
    return negotiated.status().WithContext("socket_path: capabilities negotiation with " +
                                           Quoted(options.socket_path));
  }
  HCI_RETURN_NOT_OK(impl->MarkEstablished());
  return client;
}

const QmpGreeting& QmpClient::greeting() const { return impl_->greeting_; }

const QmpVersion& QmpClient::version() const { return impl_->greeting_.version; }

bool QmpClient::connected() const { return impl_->connected(); }

Result<boost::json::value> QmpClient::Execute(std::string_view command,
                                              const boost::json::object& args,
                                              std::chrono::milliseconds timeout) {
  return impl_->Execute(command, args, timeout);
}

void QmpClient::SetEventHandler(std::function<void(const QmpEvent&)> handler) {
  impl_->SetEventHandler(std::move(handler));
}

uint64_t QmpClient::NextEventSequence() const { return impl_->NextEventSequence(); }

Result<QmpEvent> QmpClient::WaitForEvent(std::string_view name,
                                         const std::function<bool(const QmpEvent&)>& predicate,
                                         std::chrono::milliseconds timeout,
                                         uint64_t since_sequence) {
  return impl_->WaitForEvent(name, predicate, timeout, since_sequence);
}

Result<QmpEvent> QmpClient::WaitForEvent(std::string_view name,
                                         const std::function<bool(const QmpEvent&)>& predicate,
                                         std::chrono::milliseconds timeout) {
  return impl_->WaitForEvent(name, predicate, timeout, impl_->NextEventSequence());
}

QmpClient::Stats QmpClient::stats() const { return impl_->stats(); }

}  // namespace hci::qmp
