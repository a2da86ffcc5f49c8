// hci::qmp: a QMP (QEMU Machine Protocol) client that plugins link statically.
//
// Not part of libhci's public API: it exposes Boost.JSON values, which the public headers must
// not. Protocol: QEMU docs/interop/qmp-spec.rst.
#pragma once

#include <boost/json/object.hpp>
#include <boost/json/value.hpp>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <variant>
#include <vector>

#include "hci/logging.h"
#include "hci/result.h"
#include "hci/status.h"

namespace hci::qmp {

/// The longest message line accepted from QEMU, in bytes, not counting its CR LF. The largest
/// real replies (query-qmp-schema, query-block on long backing chains) are well below 1 MiB.
inline constexpr std::size_t kMaxMessageBytes = 16 * 1024 * 1024;

/// The deepest JSON nesting accepted (arrays and objects). Boost.JSON's default of 32 is too low
/// for query-block on a long backing chain, where every backing image nests one level deeper.
inline constexpr std::size_t kMaxJsonDepth = 256;

/// QEMU's version as announced in the greeting (the shape of `query-version`).
struct QmpVersion {
  int64_t major = 0;
  int64_t minor = 0;
  int64_t micro = 0;
  /// Distribution package string, e.g. "Debian 1:7.2+dfsg-7"; empty when absent.
  std::string package;

  /// "7.2.0", or "7.2.0 (Debian 1:7.2+dfsg-7)" when a package string is present.
  std::string ToString() const;
};

/// `{"QMP": {"version": ..., "capabilities": [...]}}`: the first line QEMU sends.
struct QmpGreeting {
  QmpVersion version;
  /// Capabilities QEMU offers, e.g. "oob". This client enables none of them.
  std::vector<std::string> capabilities;
};

/// `{"return": VALUE, "id": ID}`: a command's successful reply.
struct QmpReturn {
  /// The request's id as sent back; null when the reply carries none.
  boost::json::value id;
  /// The command's result; `{}` for commands that return nothing.
  boost::json::value value;
};

/// `{"error": {"class": CLASS, "desc": DESC}, "id": ID}`: a command's failure.
struct QmpErrorReply {
  /// The request's id; null when QEMU failed before it could read it (e.g. a JSON syntax error).
  boost::json::value id;
  /// "GenericError", "CommandNotFound", "DeviceNotFound", "DeviceNotActive", "KVMMissingCap".
  std::string error_class;
  /// Human-readable message; not meant to be parsed.
  std::string desc;
};

/// `{"event": NAME, "data": {...}, "timestamp": {"seconds": S, "microseconds": US}}`.
struct QmpEvent {
  /// "STOP", "RESUME", "SHUTDOWN", "DEVICE_DELETED", ...
  std::string name;
  /// Event-specific members; empty when the event carries no `data`.
  boost::json::object data;
  /// When QEMU emitted the event, relative to the Unix epoch; both -1 when QEMU could not read
  /// the host clock or the event carried no timestamp.
  int64_t seconds = -1;
  int64_t microseconds = -1;
  /// Position in the client's event log, from 1 upwards (see QmpClient::NextEventSequence);
  /// 0 for events that did not come through a client (ParseQmpMessage).
  uint64_t sequence = 0;
};

/// One line from a QMP server.
using QmpMessage = std::variant<QmpGreeting, QmpReturn, QmpErrorReply, QmpEvent>;

/// Parses and validates one line received from QEMU. A trailing "\n" or "\r\n" is allowed.
/// Performs no I/O and keeps no state, so it can be fuzzed on its own.
///
/// Errors (all InvalidArgument, message naming the offending member): the line is longer than
/// kMaxMessageBytes; it is not valid JSON (including invalid UTF-8, trailing garbage, nesting
/// deeper than kMaxJsonDepth, or a number too large to be finite); it is not an object; it is not
/// exactly one of greeting / return / error / event; or a member has the wrong type (e.g.
/// `error.class` not a string, `timestamp.seconds` not an integer, `version.qemu.major`
/// negative). ResourceExhausted when memory runs out while parsing.
Result<QmpMessage> ParseQmpMessage(std::string_view line);

/// Maps a QMP error reply to a Status whose message is "<command>: <desc>":
/// CommandNotFound -> Unimplemented, DeviceNotFound -> NotFound, DeviceNotActive ->
/// FailedPrecondition, KVMMissingCap -> Unimplemented, GenericError -> FailedPrecondition, any
/// other class -> Unknown (with the class named in the message).
Status QmpErrorToStatus(std::string_view command, const QmpErrorReply& error);

/// How long Execute waits for `command` when the caller passes kDefaultTimeout. Follows Proxmox
/// (PVE/QMPClient.pm): 5 s by default; 60 s for device_add, blockdev-add, eject, change and
/// blockdev-change-medium; 10 min for block-job and internal-snapshot commands; 1 h for
/// query-migrate, which QEMU may hold while migration saturates its main loop.
std::chrono::milliseconds DefaultTimeoutFor(std::string_view command);

/// Passed as Execute's timeout to use DefaultTimeoutFor(command).
inline constexpr std::chrono::milliseconds kDefaultTimeout{-1};

/// How QmpClient::Connect reaches QEMU.
struct ConnectOptions {
  /// The path QEMU listens on (`-qmp unix:PATH,server=on,wait=off`). At most 107 bytes.
  std::string socket_path;
  /// Deadline for the whole handshake: the socket appearing and accepting, the greeting and
  /// `qmp_capabilities`. While the path does not exist yet or refuses connections (QEMU creates
  /// it shortly after it starts), Connect retries every `retry_interval`.
  std::chrono::milliseconds connect_timeout{10'000};
  std::chrono::milliseconds retry_interval{50};
  /// Called for every event, in order, on the client's dispatch thread (see QmpClient). Set here
  /// rather than through SetEventHandler to see events QEMU sends right after the handshake.
  std::function<void(const QmpEvent&)> on_event;
  /// Called once, on the dispatch thread after every event received before it, when the
  /// connection is lost (QEMU exited, closed the socket, or sent a malformed message). The
  /// argument is Unavailable and names the cause. Not called when the client is destroyed
  /// while still connected, nor when Connect fails.
  std::function<void(const Status&)> on_disconnect;
  /// How many recent events the client keeps for WaitForEvent. At least 1.
  std::size_t event_log_capacity = 1024;
  /// Where protocol oddities (late replies, dropped lines) are logged; drops them by default.
  Logger logger;
  /// The object named in log lines (kind "qmp"), e.g. the VM's name; defaults to the socket path.
  std::string log_object_name;
};

/// A connection to one QEMU monitor.
///
/// Threads: the client owns two threads. The I/O thread runs a Boost.Asio io_context that reads
/// lines, parses them, completes waiting Execute calls and writes queued commands. It never runs
/// caller code, so no handler can stall replies. The dispatch thread runs the event handler and
/// on_disconnect, one at a time, in the order the messages arrived. Because of that split, a
/// handler MAY call Execute and WaitForEvent (it only delays later events) and may even destroy
/// the client. The destructor stops and joins both threads (when called from a handler it does
/// not wait for the dispatch thread, which exits once the handler returns); it never waits for
/// QEMU, only for a handler that is running on another thread to return.
///
/// All methods are thread-safe.
class QmpClient {
 public:
  /// Connects to `options.socket_path`, reads the greeting and negotiates capabilities.
  ///
  /// Errors: InvalidArgument (socket_path empty or too long, event_log_capacity 0, negative
  /// durations); DeadlineExceeded (no socket, no greeting or no capabilities reply before
  /// connect_timeout; a second client waiting while another holds the monitor sees this);
  /// PermissionDenied and others via ErrnoStatus (connect failed for another reason);
  /// Unavailable (QEMU closed the connection during the handshake or sent a malformed message).
  static Result<std::unique_ptr<QmpClient>> Connect(const ConnectOptions& options);

  /// Closes the connection, fails no call (none may be running: destroying the client while
  /// another thread uses it is a bug), and joins both threads.
  ~QmpClient();

  QmpClient(const QmpClient&) = delete;
  QmpClient& operator=(const QmpClient&) = delete;

  /// The greeting QEMU sent.
  const QmpGreeting& greeting() const;
  /// Shorthand for greeting().version.
  const QmpVersion& version() const;

  /// False once the connection is lost. Never becomes true again: connect anew.
  bool connected() const;

  /// Runs `command` with `args` and waits up to `timeout` (kDefaultTimeout:
  /// DefaultTimeoutFor(command)) for its reply. Any number of threads may call it at once; each
  /// request carries a unique numeric id and replies are matched by id.
  ///
  /// Returns the reply's `return` member. Errors: the QMP error mapped by QmpErrorToStatus;
  /// DeadlineExceeded when no reply came in time (the command may still run in QEMU; its late
  /// reply is discarded); Unavailable when the connection is or gets lost; InvalidArgument for an
  /// empty command, a negative timeout other than kDefaultTimeout, or a non-finite number in
  /// `args`. `quit` succeeds (returning `{}`) when QEMU closes the connection after receiving it
  /// without its reply getting through.
  Result<boost::json::value> Execute(std::string_view command, const boost::json::object& args = {},
                                     std::chrono::milliseconds timeout = kDefaultTimeout);

  /// Replaces the event handler (ConnectOptions::on_event); an empty function removes it.
  /// Applies to events dispatched after the call; earlier ones are not replayed (they are in the
  /// event log, see WaitForEvent).
  void SetEventHandler(std::function<void(const QmpEvent&)> handler);

  /// The sequence number the next event will get. Read it BEFORE executing a command whose event
  /// you will wait for, and pass it to WaitForEvent, so that an event arriving between the reply
  /// and the wait is not missed:
  ///
  ///     uint64_t since = client->NextEventSequence();
  ///     HCI_RETURN_NOT_OK(client->Execute("device_del", {{"id", "nic1"}}));
  ///     HCI_ASSIGN_OR_RAISE(auto ev, client->WaitForEvent("DEVICE_DELETED", is_nic1, 30s, since));
  uint64_t NextEventSequence() const;

  /// Returns the first event named `name` with sequence >= `since_sequence` for which
  /// `predicate` (may be empty: any) returns true, waiting up to `timeout` for it. The predicate
  /// runs on the calling thread, without client locks held.
  ///
  /// Errors: DeadlineExceeded (no such event in time); Unavailable (the connection was lost and
  /// no retained event matched); OutOfRange (events at or after `since_sequence` were already
  /// dropped from the bounded event log and none of the retained ones matched); InvalidArgument
  /// (negative timeout).
  Result<QmpEvent> WaitForEvent(std::string_view name,
                                const std::function<bool(const QmpEvent&)>& predicate,
                                std::chrono::milliseconds timeout, uint64_t since_sequence);
  /// As above, for events arriving after this call (since_sequence = NextEventSequence()). Racy
  /// for events a command of yours triggers: prefer the overload taking a sequence for those.
  Result<QmpEvent> WaitForEvent(std::string_view name,
                                const std::function<bool(const QmpEvent&)>& predicate,
                                std::chrono::milliseconds timeout);

  /// Counters since Connect, for metrics and tests.
  struct Stats {
    /// Execute calls that got an id (including qmp_capabilities).
    uint64_t commands_sent = 0;
    /// Replies that matched no waiting call: their caller had timed out, or the id was unknown.
    uint64_t replies_discarded = 0;
    uint64_t events_received = 0;
  };
  Stats stats() const;

 private:
  class Impl;
  explicit QmpClient(std::shared_ptr<Impl> impl);
  // Shared with the dispatch thread so that the client may be destroyed from its own handler.
  std::shared_ptr<Impl> impl_;
};

}  // namespace hci::qmp
