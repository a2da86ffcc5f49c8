// Scrub: compares the healthy members' content extent by extent (SHA-256 through the replicas'
// hash_extents) and rewrites an extent on a member that differs from the majority. The engine
// (engine.cc) gives the scrubber one extent at a time with writes to it held off; the loop,
// the majority rule and the bookkeeping are here (engine_scrub.cc). Internal to the engine.
#pragma once

#include <condition_variable>
#include <cstdint>
#include <functional>
#include <mutex>
#include <optional>
#include <span>
#include <string>
#include <thread>
#include <vector>

#include "hci/replicated/v1/replica.pb.h"
#include "hci/result.h"
#include "hci/status.h"

namespace hci::replicated {

/// The healthy members of the engine for one extent, while no write to the extent is in flight
/// and the generation cannot change. Member indexes are 0..size()-1.
class ScrubExtent {
 public:
  virtual ~ScrubExtent() = default;
  virtual std::size_t size() const = 0;
  /// The member's replica name.
  virtual const std::string& name(std::size_t member) const = 0;
  /// SHA-256 of the extent on each member, asked of all of them in parallel; an error for a
  /// member that did not answer (the engine fails it once the extent is released).
  virtual std::vector<Result<std::string>> Hash() = 0;
  virtual Result<std::string> HashOne(std::size_t member) = 0;
  /// Reads the extent from a member (`out` is the extent's length).
  virtual Status Read(std::size_t member, std::span<std::uint8_t> out) = 0;
  /// Writes the extent on a member, durable (FUA) before it returns.
  virtual Status Write(std::size_t member, std::span<const std::uint8_t> data) = 0;
};

/// What the scrubber needs of the engine.
class ScrubEngine {
 public:
  virtual ~ScrubEngine() = default;
  /// The volume's current size in bytes.
  virtual std::uint64_t VolumeBytes() const = 0;
  /// Healthy members now.
  virtual int HealthyMembers() = 0;
  /// From here until EndScrub(), guest writes take the per-chunk stripe locks (as during a
  /// rebuild); waits until no request that started without them is in flight.
  virtual void BeginScrub() = 0;
  virtual void EndScrub() = 0;
  /// Runs `fn` over the healthy members with writes to [offset, offset + length) held off
  /// (the stripe locks) and membership fixed (the shared gate). Members that failed a request
  /// made through the ScrubExtent are failed by the engine afterwards.
  virtual Status WithExtent(std::uint64_t offset, std::uint64_t length,
                            const std::function<Status(ScrubExtent&)>& fn) = 0;
};

/// The verdict on one extent, given each compared member's hash (nullopt: not compared).
struct ScrubVerdict {
  /// Members that answered.
  std::size_t compared = 0;
  /// The hash more than half of the compared members hold, when there is one.
  std::optional<std::string> majority;
  /// Compared members whose hash differs from the majority's; with no majority, every compared
  /// member when they do not all agree (`unresolved`).
  std::vector<std::size_t> differing;
  bool unresolved = false;
};

/// Majority rule: a hash held by more than half of the compared members is the extent's content;
/// with fewer than two compared members nothing is judged (compared < 2, no differing).
ScrubVerdict JudgeExtent(const std::vector<std::optional<std::string>>& hashes);

/// The mismatches a ScrubStatus lists (the rest are counted in mismatch_count).
inline constexpr int kScrubMismatchesListed = 64;
/// Bytes compared at a time when the request does not say.
inline constexpr std::uint32_t kScrubExtentBytes = 1u << 20;

/// Runs one scrub at a time on its own thread. Thread-safe.
class Scrubber {
 public:
  /// `rate_bytes_per_second`: limit of bytes compared per second (0: none).
  Scrubber(ScrubEngine* engine, std::string volume, std::uint64_t rate_bytes_per_second);
  /// Cancels and joins a running scrub.
  ~Scrubber();
  Scrubber(const Scrubber&) = delete;
  Scrubber& operator=(const Scrubber&) = delete;

  /// Starts a scrub (request.cancel: cancels the running one; OK when none runs).
  /// Aborted while one runs; FailedPrecondition with fewer than two healthy members;
  /// InvalidArgument naming `extent_bytes` unless it is a multiple of 4096 up to 32 MiB.
  Status Start(const v1::EngineScrub& request);
  /// Cancels the running scrub and waits for its thread.
  void Stop();
  /// The newest scrub's status; id 0 before the first.
  v1::ScrubStatus GetStatus() const;

 private:
  void Run(bool report_only, std::uint64_t extent_bytes);
  // One extent: compare and, unless report_only, repair. Adds to `status_`.
  Status ScrubOne(std::uint64_t offset, std::uint64_t length, bool report_only);
  void AddMismatch(const std::string& replica, std::uint64_t offset, std::uint64_t length,
                   bool repaired, bool unresolved);

  ScrubEngine* engine_;
  const std::string volume_;
  const std::uint64_t rate_;
  mutable std::mutex mu_;
  std::condition_variable cv_;
  bool cancel_ = false;
  v1::ScrubStatus status_;
  std::thread thread_;
};

}  // namespace hci::replicated
