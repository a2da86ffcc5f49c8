// The replicas one storage node keeps: each a chain of sparse layer files with block maps,
// snapshots, per-generation changed-block bitmaps and persisted metadata. Internal to
// plugins/replicated; hci-replica-server serves it, unit tests drive it directly.
//
// On disk, under the store's root directory:
//   <root>/<replica>/meta            ReplicaMeta (hci.replicated.v1), written to meta.tmp,
//                                    fsynced, renamed over, directory fsynced
//   <root>/<replica>/layer-<id>.img  sparse data file of one layer (head or snapshot)
//   <root>/<replica>/layer-<id>.map  which 4 KiB blocks the layer owns, a bitmap (bit i: block i)
//   <root>/<replica>/dirty-<gen>.map which 64 KiB chunks were written while at generation <gen>
// A block a layer owns reads from that layer's file (a hole reads zeros); a block no layer of
// the head's chain owns reads zeros.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <shared_mutex>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "hci/replicated/v1/replica.pb.h"
#include "hci/result.h"
#include "hci/status.h"

namespace hci::replicated {

/// Granularity of block ownership in layers (bytes); every offset and length given to a Replica
/// is a multiple of it.
inline constexpr std::uint64_t kStoreBlock = 4096;
/// Granularity of the per-generation changed-block bitmaps (bytes): what a delta rebuild copies.
inline constexpr std::uint64_t kDirtyChunk = 64 * 1024;
/// Generations of changed-block history a replica keeps; older bitmaps are dropped (a replica
/// further behind gets a full copy).
inline constexpr std::uint64_t kDirtyHistory = 256;

struct Extent {
  std::uint64_t offset = 0;  // bytes
  std::uint64_t length = 0;  // bytes
  bool operator==(const Extent&) const = default;
};

/// One replica. Thread-safe: data calls may run concurrently with each other (they take a shared
/// lock); metadata calls (snapshot, expand, generation...) take it exclusively.
class Replica {
 public:
  virtual ~Replica() = default;

  /// The persisted metadata as of now.
  virtual v1::ReplicaMeta Meta() const = 0;
  /// Bytes allocated on the filesystem by all of this replica's files.
  virtual std::uint64_t ActualSizeBytes() const = 0;

  /// Data path. `offset` and `length` are bytes, multiples of kStoreBlock, within size_bytes
  /// (InvalidArgument naming "offset"/"length" otherwise). Read fills `out` (length bytes).
  /// Writes record the touched chunks in the current generation's bitmap; before the first
  /// write after a flush the replica persists `unclean = true`. `fua`: fdatasync before
  /// returning. Errors from the filesystem come back as their errno status (IO errors: Internal
  /// with the errno text).
  virtual Status Read(std::uint64_t offset, std::span<std::uint8_t> out) = 0;
  virtual Status Write(std::uint64_t offset, std::span<const std::uint8_t> data, bool fua) = 0;
  /// Reads as zeros afterwards. `punch`: deallocate when possible (TRIM); either way the blocks
  /// are owned by the head afterwards, so older layers no longer show through.
  virtual Status WriteZeroes(std::uint64_t offset, std::uint64_t length, bool punch, bool fua) = 0;
  /// Makes every completed write durable: fdatasync of the head's file (and of snapshot layers
  /// written by WriteLayer/ZeroLayer), then the layer maps and the current bitmap persisted,
  /// then `unclean = false` persisted.
  virtual Status Flush() = 0;

  /// The current generation (cheap: no copy of the metadata).
  virtual std::uint64_t generation() const = 0;
  /// Fencing: FailedPrecondition unless the replica is at `generation`; otherwise a lock that
  /// keeps it there (SetGeneration waits) while the caller runs its data request, so a request
  /// of a stale engine can never land after the generation moved on. Take it before the data
  /// call, never while holding another replica's.
  virtual Result<std::shared_lock<std::shared_mutex>> HoldGeneration(std::uint64_t generation) = 0;

  /// Moves the replica to `generation` (and sets `rebuilding`), persisted before returning.
  /// FailedPrecondition unless the current generation is `expected_generation`. A new
  /// generation starts a new changed-block bitmap; the history beyond kDirtyHistory generations
  /// is dropped.
  virtual Status SetGeneration(std::uint64_t expected_generation, std::uint64_t generation,
                               bool rebuilding) = 0;

  /// Freezes the head as snapshot `name` and starts an empty head on top of it (persisted).
  /// Idempotent: an existing snapshot of that name is OK. InvalidArgument for a bad name.
  /// The layer records the replica's current generation (v1::Layer.generation).
  Status TakeSnapshot(std::string_view name, std::int64_t created_unix_ms) {
    return TakeSnapshotAt(name, created_unix_ms, 0);
  }
  /// As TakeSnapshot, recording `generation` as the layer's (0: the current one); a rebuild
  /// gives the source's so that every replica's layer names the same point.
  virtual Status TakeSnapshotAt(std::string_view name, std::int64_t created_unix_ms,
                                std::uint64_t generation) = 0;
  /// Writes `data` into snapshot `name`'s own layer, which then owns those blocks (a rebuild
  /// filling a layer the replica lacked; the layer's blocks must not change otherwise). Reads
  /// of the head see it only where no newer layer owns the block. Recorded in the current
  /// generation's changed-chunk bitmap; made durable by Flush(). NotFound for an unknown
  /// snapshot; InvalidArgument for a range beyond the snapshot's size.
  virtual Status WriteLayer(std::string_view name, std::uint64_t offset,
                            std::span<const std::uint8_t> data) = 0;
  /// As WriteLayer with `length` bytes of zeros (punched).
  virtual Status ZeroLayer(std::string_view name, std::uint64_t offset, std::uint64_t length) = 0;
  /// Removes a snapshot: its blocks that its child does not own move into the child (merge),
  /// then its files go. With several children (after a revert) it is only marked removed and
  /// merged once a single child is left. OK when there is no such snapshot.
  virtual Status DeleteSnapshot(std::string_view name) = 0;
  /// Drops the head and starts an empty head on top of snapshot `name` (the volume must be
  /// detached: the caller's duty). NotFound for an unknown snapshot.
  virtual Status Revert(std::string_view name) = 0;
  /// Grows the virtual size (bytes, multiple of kStoreBlock); new space reads zeros.
  /// InvalidArgument when smaller than the current size; OK when equal.
  virtual Status Expand(std::uint64_t size_bytes) = 0;

  /// Chunks (kDirtyChunk-aligned extents, merged) written at generations >= `generation`.
  /// FailedPrecondition when the history does not go back that far (`dirty_history_from`).
  virtual Result<std::vector<Extent>> ChangedSince(std::uint64_t generation) const = 0;
  /// Blocks (kStoreBlock-aligned, merged) owned by the layers strictly above `from_snapshot`
  /// up to and including `to_snapshot` in the head's chain ("" from: from the bottom; "" to:
  /// the head). NotFound for an unknown snapshot; InvalidArgument when `from` is not an ancestor
  /// of `to`.
  virtual Result<std::vector<Extent>> ChangedBetween(std::string_view from_snapshot,
                                                     std::string_view to_snapshot) const = 0;
  /// Reads the volume as it was at snapshot `name` (same rules as Read).
  virtual Status ReadSnapshot(std::string_view name, std::uint64_t offset,
                              std::span<std::uint8_t> out) = 0;
  /// SHA-256 (32 bytes) of the current content of each `extent_bytes` extent of
  /// [offset, offset + length) (the last one may be shorter).
  virtual Result<std::vector<std::string>> HashExtents(std::uint64_t offset, std::uint64_t length,
                                                       std::uint32_t extent_bytes) = 0;
};

/// All replicas of one node under one root directory.
class ReplicaStore {
 public:
  /// Opens (creating it 0700 if missing) `root` and every replica in it. A replica found
  /// `unclean` gets its head map rebuilt from the data file (SEEK_DATA) and its changed-block
  /// history restarted at its current generation. Errors: the errno status of the directory,
  /// DataLoss naming a replica whose meta does not parse.
  static Result<std::unique_ptr<ReplicaStore>> Open(std::string root);

  /// Closes every replica without flushing (what a crash would leave): for a clean shutdown,
  /// Flush() each replica first, or the next Open finds them unclean.
  ~ReplicaStore();

  /// Creates a replica, sparse, of `request.size_bytes` (multiple of kStoreBlock, > 0). Idempotent:
  /// the same volume and size return the existing one; otherwise AlreadyExists.
  /// InvalidArgument naming "replica" for a name that is not 1-253 characters of [a-z0-9-.].
  Result<std::shared_ptr<Replica>> Create(const v1::CreateReplica& request);
  /// NotFound when there is no such replica.
  Result<std::shared_ptr<Replica>> Get(std::string_view replica);
  /// Removes the replica's directory. OK when absent.
  Status Delete(std::string_view replica);
  std::vector<std::shared_ptr<Replica>> List();
  const std::string& root() const { return root_; }

 private:
  explicit ReplicaStore(std::string root);
  std::string root_;
  std::mutex mu_;
  std::map<std::string, std::shared_ptr<Replica>, std::less<>> replicas_;
};

}  // namespace hci::replicated
