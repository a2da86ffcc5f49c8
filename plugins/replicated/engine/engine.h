// The engine of one replicated volume: fans every write out to the volume's replicas, acknowledges
// it once the write quorum has it, fails replicas that miss a write (with a generation bump
// persisted before the acknowledgement), reads from a healthy replica, and rebuilds replicas that
// fell behind. nbdkit_engine.cc exposes it as an nbdkit plugin; tests drive it directly.
// Internal to plugins/replicated. The rules are in docs/replicated-design.md.
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <string>

#include "hci/replicated/v1/replica.pb.h"
#include "hci/result.h"
#include "hci/status.h"

namespace hci::replicated {

class EngineImpl;

class Engine {
 public:
  /// Connects to the replicas of `config` (authenticating with `secret`), waits up to
  /// config.start_timeout_ms until a read quorum (replicas - write_quorum + 1) answers, picks the
  /// replicas of the highest generation (never a rebuilding one; ties broken by replica name),
  /// brings the others of that generation in line with the chosen source (the blocks written
  /// since that generation began), moves them to a new generation, and starts rebuilding the
  /// stale ones in the background. Errors: InvalidArgument naming a config field;
  /// Unavailable when no read quorum answered in time; DataLoss when every reachable replica is a
  /// rebuild target.
  static Result<std::unique_ptr<Engine>> Start(const v1::EngineConfig& config, std::string secret);
  ~Engine();

  std::uint64_t size_bytes() const;
  /// Data path; offsets and lengths in bytes, multiples of 4096 (InvalidArgument otherwise).
  /// IoError-like failures come back as Unavailable ("below write quorum", "no healthy
  /// replica") — the NBD layer maps every error to EIO except InvalidArgument (EINVAL).
  Status Read(std::uint64_t offset, std::span<std::uint8_t> out);
  Status Write(std::uint64_t offset, std::span<const std::uint8_t> data, bool fua);
  Status WriteZeroes(std::uint64_t offset, std::uint64_t length, bool punch, bool fua);
  Status Flush();

  v1::EngineStatus GetStatus() const;
  /// Crash-consistent snapshot: new writes wait while every serving replica takes it (a
  /// rebuilding one too: its rebuild then fills the snapshot's layer).
  Status Snapshot(const std::string& name);
  /// Grows the volume to `size_bytes` (a multiple of 4096): with no request in flight, every
  /// serving replica grows at the current generation, then the engine's size. A replica that
  /// fails to grow is failed (generation bump) and grown when it is rebuilt. New NBD
  /// connections see the new size; existing ones keep the size they were told at connect.
  /// OK when already that size. Errors: InvalidArgument naming `expand` (not a multiple of 4096,
  /// smaller than the current size); Unavailable when fewer than the write quorum of healthy
  /// replicas are (or stay) there to grow — the replicas that grew keep their size, and the
  /// engine serves it; retrying finishes the job.
  Status Expand(std::uint64_t size_bytes);
  /// Starts a scrub of the healthy replicas in the background (or cancels the running one):
  /// docs/replicated-design.md, "Scrub". Progress and outcome in GetStatus().scrub. Aborted
  /// while one runs; FailedPrecondition with fewer than two healthy replicas; InvalidArgument
  /// naming `extent_bytes`.
  Status Scrub(const v1::EngineScrub& request);

 private:
  explicit Engine(std::unique_ptr<EngineImpl> impl);
  std::unique_ptr<EngineImpl> impl_;
};

/// Serves EngineRequest frames (kControl, see wire/replica_wire.h; no authentication: the socket
/// is mode 0600 in a 0700 directory) on the unix socket `path` until Stop().
class ControlServer {
 public:
  static Result<std::unique_ptr<ControlServer>> Start(Engine* engine, const std::string& path);
  ~ControlServer();

 private:
  struct State;
  explicit ControlServer(std::unique_ptr<State> state);
  std::unique_ptr<State> state_;
};

}  // namespace hci::replicated
