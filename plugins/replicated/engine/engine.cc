// The replicated volume's engine. Concurrency model:
// - `gate_` (shared_mutex): every data request holds it shared from sending until all of its
//   replicas answered; membership changes (a replica failed, a generation bump, a rebuild
//   joining or finishing, a snapshot) hold it exclusively, so they never interleave with a
//   request in flight and a request never straddles two generations.
// - Member states and generation_ change only under the exclusive gate and `state_mu_`;
//   readers under the shared gate see them stable, GetStatus() takes state_mu_ alone.
// - While a rebuild copies, data writes and the copier lock the stripes of the chunks they touch,
//   so that a copy of an old block never lands after a newer write of the same block.
#include "engine/engine.h"

#include <fcntl.h>
#include <spdlog/spdlog.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <cerrno>
#include <charconv>
#include <chrono>
#include <condition_variable>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <optional>
#include <set>
#include <shared_mutex>
#include <thread>
#include <unordered_map>
#include <vector>

#include "engine/scrub_internal.h"
#include "process/process.h"
#include "store/replica_store.h"
#include "wire/replica_wire.h"

namespace hci::replicated {
namespace {

using Clock = std::chrono::steady_clock;
constexpr std::uint64_t kBlock = wire::kBlockSize;
// Stripes of the rebuild lock, each covering whole copy chunks.
constexpr std::size_t kStripes = 1024;
// What a rebuild copies at a time (bytes); a multiple of the replicas' 64 KiB dirty chunk.
constexpr std::uint64_t kCopyChunk = 1u << 20;

int64_t NowUnixMs() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

// Completion count of one fan-out.
struct Batch {
  std::mutex mu;
  std::condition_variable cv;
  int outstanding = 0;
  void Done() {
    std::lock_guard lock(mu);
    if (--outstanding == 0) cv.notify_all();
  }
  void Wait() {
    std::unique_lock lock(mu);
    cv.wait(lock, [&] { return outstanding == 0; });
  }
};

struct Waiter {
  Batch* batch = nullptr;
  Status status;
  std::span<std::uint8_t> read_into;
  Clock::time_point sent;
};

// One pipelined connection to a replica, with the thread that matches answers to requests.
class Link {
 public:
  explicit Link(std::unique_ptr<wire::Connection> conn) : conn_(std::move(conn)) {
    reader_ = std::thread([this] { ReaderLoop(); });
  }
  ~Link() {
    Shutdown(Unavailable(conn_->peer() + ": connection closed by the engine"));
    reader_.join();
  }

  // Sends a request; `w` completes (batch->Done()) exactly once, with the answer or an error.
  void Submit(wire::Header header, std::span<const std::uint8_t> payload, Waiter* w) {
    {
      std::lock_guard lock(mu_);
      if (dead_) {
        w->status = dead_status_;
        w->batch->Done();
        return;
      }
      header.handle = next_handle_++;
      w->sent = Clock::now();
      pending_.emplace(header.handle, w);
    }
    Status st = conn_->Send(header, payload);
    if (!st.ok()) Shutdown(st);
  }

  // Fails every pending request with `why` and closes the socket (the reader then exits).
  void Shutdown(const Status& why) {
    FailAll(why);
    conn_->Shutdown();
  }

  std::optional<Clock::time_point> OldestPending() {
    std::lock_guard lock(mu_);
    std::optional<Clock::time_point> oldest;
    for (const auto& [handle, w] : pending_) {
      if (!oldest || w->sent < *oldest) oldest = w->sent;
    }
    return oldest;
  }

 private:
  void FailAll(const Status& why) {
    std::unordered_map<std::uint64_t, Waiter*> pending;
    {
      std::lock_guard lock(mu_);
      if (!dead_) {
        dead_ = true;
        dead_status_ = why;
      }
      pending.swap(pending_);
    }
    for (auto& [handle, w] : pending) {
      w->status = dead_status_;
      w->batch->Done();
    }
  }

  void ReaderLoop() {
    std::string payload;
    for (;;) {
      wire::Header h;
      Status st = conn_->Receive(&h, &payload);
      if (!st.ok()) {
        FailAll(Unavailable(conn_->peer() + ": " + st.message()));
        return;
      }
      Waiter* w = nullptr;
      {
        std::lock_guard lock(mu_);
        auto it = pending_.find(h.handle);
        if (it != pending_.end()) {
          w = it->second;
          pending_.erase(it);
        }
      }
      if (w == nullptr) {
        Shutdown(
            Internal(conn_->peer() + ": answer to unknown request " + std::to_string(h.handle)));
        return;
      }
      if (h.status != 0) {
        w->status = wire::ErrnoToStatus(h.status, conn_->peer());
      } else if (!w->read_into.empty()) {
        if (payload.size() != w->read_into.size()) {
          w->status = Internal(conn_->peer() + ": READ answered " + std::to_string(payload.size()) +
                               " bytes, expected " + std::to_string(w->read_into.size()));
        } else {
          std::memcpy(w->read_into.data(), payload.data(), payload.size());
        }
      }
      w->batch->Done();
    }
  }

  std::unique_ptr<wire::Connection> conn_;
  std::mutex mu_;
  std::unordered_map<std::uint64_t, Waiter*> pending_;
  std::uint64_t next_handle_ = 1;
  bool dead_ = false;
  Status dead_status_;
  std::thread reader_;
};

struct Member {
  v1::EngineReplica config;
  v1::MemberState state = v1::MEMBER_STATE_OFFLINE;
  std::uint64_t generation = 0;
  std::string message;
  // Control calls (generation, snapshot, changed blocks); has send/receive timeouts.
  std::mutex control_mu;
  std::unique_ptr<wire::Connection> control;
  std::vector<std::unique_ptr<Link>> links;
  std::atomic<std::uint64_t> next_link{0};
  std::atomic<std::uint64_t> rebuild_done{0};
  std::atomic<std::uint64_t> rebuild_total{0};
  // The first snapshot taken while this member rebuilds (it takes it too): what the rebuild
  // still copies into the head from then on goes into that snapshot's layer instead. Changed
  // under the exclusive gate.
  std::string rebuild_into;
  // Not serving since this time (Unix ms; 0 while serving): replenishment waits on it.
  std::int64_t failed_since_ms = 0;

  Link* PickLink() { return links[next_link++ % links.size()].get(); }
  bool Serving() const {
    return state == v1::MEMBER_STATE_HEALTHY || state == v1::MEMBER_STATE_REBUILDING;
  }
};

std::vector<Extent> ToExtents(const v1::ExtentList& list) {
  std::vector<Extent> out;
  const int n = std::min(list.offsets_size(), list.lengths_size());
  out.reserve(n);
  for (int i = 0; i < n; ++i) out.push_back({list.offsets(i), list.lengths(i)});
  return out;
}

// Sorted, merged intersection of two sorted, merged extent lists.
std::vector<Extent> Intersect(const std::vector<Extent>& a, const std::vector<Extent>& b) {
  std::vector<Extent> out;
  std::size_t i = 0, j = 0;
  while (i < a.size() && j < b.size()) {
    const std::uint64_t lo = std::max(a[i].offset, b[j].offset);
    const std::uint64_t hi = std::min(a[i].offset + a[i].length, b[j].offset + b[j].length);
    if (lo < hi) out.push_back({lo, hi - lo});
    if (a[i].offset + a[i].length < b[j].offset + b[j].length) {
      ++i;
    } else {
      ++j;
    }
  }
  return out;
}

// A snapshot layer of a replica's head chain.
struct ChainSnapshot {
  std::string name;
  std::uint64_t generation = 0;
  std::int64_t created_unix_ms = 0;
};

// The named (not removed) snapshots of the head's chain, oldest first.
std::vector<ChainSnapshot> SnapshotChain(const v1::ReplicaMeta& meta) {
  std::vector<ChainSnapshot> out;
  std::uint64_t id = meta.head_layer();
  for (int guard = 0; id != 0 && guard <= meta.layers_size(); ++guard) {
    const v1::Layer* layer = nullptr;
    for (const auto& l : meta.layers()) {
      if (l.id() == id) layer = &l;
    }
    if (layer == nullptr) break;
    if (id != meta.head_layer() && !layer->snapshot().empty() && !layer->removed()) {
      out.push_back({layer->snapshot(), layer->generation(), layer->created_unix_ms()});
    }
    id = layer->parent();
  }
  std::reverse(out.begin(), out.end());
  return out;
}

std::vector<std::string> Names(const std::vector<ChainSnapshot>& chain) {
  std::vector<std::string> out;
  for (const auto& c : chain) out.push_back(c.name);
  return out;
}

// What a rebuild copies into one layer of the target: a snapshot's own layer, or ("") the head.
struct LayerCopy {
  std::string snapshot;
  std::vector<Extent> extents;
};

// How the target's snapshot chain was brought in line with the source's (EngineImpl::
// AlignLayers): `chain` is the source's, oldest first; the target's layers from `first_new` on
// were created by this rebuild. `freeze`: the first of them is the target's old head (it fell
// behind before every one of them was taken), so only its changed chunks need copying.
struct LayerPlan {
  std::vector<std::string> chain;
  std::size_t first_new = 0;
  bool freeze = false;
};

// Connections a rebuild opens to read a snapshot's view or fill a snapshot's layer.
struct LayerConns {
  struct Entry {
    std::string key;  // member name, snapshot, "w" for layer writes
    std::unique_ptr<wire::Connection> conn;
  };
  std::vector<Entry> entries;
  wire::Connection* Find(const std::string& key) {
    for (auto& e : entries) {
      if (e.key == key) return e.conn.get();
    }
    return nullptr;
  }
  void Drop(const std::string& key) {
    std::erase_if(entries, [&](const Entry& e) { return e.key == key; });
  }
};

// Sorted, merged union of two extent lists.
std::vector<Extent> Union(std::vector<Extent> a, const std::vector<Extent>& b) {
  a.insert(a.end(), b.begin(), b.end());
  std::sort(a.begin(), a.end(),
            [](const Extent& x, const Extent& y) { return x.offset < y.offset; });
  std::vector<Extent> out;
  for (const Extent& e : a) {
    if (e.length == 0) continue;
    if (!out.empty() && e.offset <= out.back().offset + out.back().length) {
      out.back().length =
          std::max(out.back().offset + out.back().length, e.offset + e.length) - out.back().offset;
    } else {
      out.push_back(e);
    }
  }
  return out;
}

}  // namespace

class EngineImpl : public ScrubEngine {
 public:
  EngineImpl(v1::EngineConfig config, std::string secret)
      : config_(std::move(config)), secret_(std::move(secret)) {}
  ~EngineImpl() { Stop(); }

  Status Init();
  void Stop();

  std::uint64_t size_bytes() const { return size_bytes_.load(); }
  Status Read(std::uint64_t offset, std::span<std::uint8_t> out);
  Status Mutate(wire::MsgType type, std::uint64_t offset, std::uint64_t count,
                std::span<const std::uint8_t> payload, bool fua);
  v1::EngineStatus GetStatus() const;
  Status Snapshot(const std::string& name);
  Status Scrub(const v1::EngineScrub& request);
  Status Expand(std::uint64_t size_bytes);

  // ScrubEngine (engine/scrub_internal.h).
  std::uint64_t VolumeBytes() const override { return size_bytes_.load(); }
  int HealthyMembers() override;
  void BeginScrub() override;
  void EndScrub() override { --scrubs_active_; }
  Status WithExtent(std::uint64_t offset, std::uint64_t length,
                    const std::function<Status(ScrubExtent&)>& fn) override;

 private:
  class ScrubAccess;

  Status CheckRange(std::uint64_t offset, std::uint64_t count) const;
  // Dials the member's control connection and `links` data connections; returns its meta.
  Result<v1::ReplicaMeta> Connect(Member& m);
  Status ControlCall(Member& m, const v1::ControlRequest& request, v1::ControlResponse* response);
  // Marks members failed (if still serving) and bumps the generation; takes the exclusive gate.
  void FailMembers(const std::vector<std::pair<Member*, Status>>& failures);
  // Under the exclusive gate: moves every serving member to generation_ + 1 until all of them
  // persisted it (a member that fails to is failed itself and the bump repeated).
  void BumpGenerationLocked();
  void MarkFailedLocked(Member& m, const Status& why);
  // Under the exclusive gate: grows one replica (control `expand`; OK when it is that size).
  Status GrowLocked(Member& m, std::uint64_t size_bytes);
  // Under the exclusive gate: grows every serving member to `size_bytes` (those that fail are
  // failed, with a generation bump), then the engine's size when a healthy member grew.
  void ExpandServingLocked(std::uint64_t size_bytes);
  // Under the exclusive gate, for a member about to serve whose replica is `have` bytes: grows
  // it to the volume's size, or, when it is larger (it took an expand that the others missed),
  // grows the volume to its size: the volume's size is the largest any replica has.
  Status MatchSizeLocked(Member& m, std::uint64_t have);
  void SetStateLocked(Member& m, v1::MemberState state, std::string message);
  // Copies into `target` from a healthy member what it lacks since generation `since` (a full
  // copy when `full` or when either side's history does not go back that far).
  Status Rebuild(Member& target, std::uint64_t since, bool full);
  // Before a rebuild joins: makes the target's snapshot chain the source's (snapshots the
  // source lacks are deleted on the target, missing ones created in order, the target marked
  // rebuilding first) and says what the layers need.
  Status AlignLayers(Member& source, Member& target, std::uint64_t since, bool full,
                     LayerPlan* plan);
  // What to copy into each of the target's layers, oldest first, the head last.
  Result<std::vector<LayerCopy>> PlanCopy(Member& source, Member& target, std::uint64_t since,
                                          bool full, const LayerPlan& plan);
  Result<std::vector<Extent>> Owned(Member& m, const std::string& from, const std::string& to);
  // Copies one chunk of snapshot `snapshot`'s view from a healthy member into the target's
  // layer of that snapshot (frozen on both: no stripe lock needed).
  Status CopyLayerExtent(Member& target, const std::string& snapshot, std::uint64_t offset,
                         std::uint64_t length, LayerConns* conns);
  Result<wire::Connection*> LayerConn(Member& m, const std::string& snapshot, bool writes,
                                      LayerConns* conns);
  // Replica replenishment: replaces member `m` (failed longer than the replenish wait) by a new
  // replica on a spare node. False when no spare could take it (the member stays as it is).
  // `*note` says why not when no spare could be used.
  bool Replenish(Member& m, std::string* note);
  std::string NewReplicaNameLocked() const;
  void DeleteRetired();
  // Writes config_ to its file atomically (membership changes). Under the exclusive gate.
  Status PersistConfigLocked();
  Result<std::vector<Extent>> ExtentsToCopy(Member& source, Member& target, std::uint64_t since,
                                            bool full);
  // `*into` is set instead of copying once the target took a snapshot during the rebuild
  // (Member::rebuild_into): the caller copies into that layer.
  Status CopyExtent(Member& target, std::uint64_t offset, std::uint64_t length, std::string* into);
  Member* HealthySource();
  void LockStripes(std::uint64_t offset, std::uint64_t count, std::vector<std::size_t>* locked);
  void UnlockStripes(const std::vector<std::size_t>& locked);
  void WatchdogLoop();
  void MaintenanceLoop();
  // With no healthy member left: chooses one again among the reachable members, as start-up does.
  Status Reelect();
  int HealthyCountLocked() const;
  // After a flush, at most every epoch_: a new generation, so that a replica failing later needs
  // only the chunks written since this point (its generation's history), not everything since
  // the engine started.
  void MaybeStartEpoch();

  v1::EngineConfig config_;
  std::string secret_;
  std::uint32_t write_quorum_ = 0;
  std::uint32_t read_quorum_ = 0;
  std::chrono::milliseconds io_timeout_{5000};
  std::uint32_t links_per_member_ = 2;
  std::atomic<std::uint64_t> size_bytes_{0};

  std::vector<std::unique_ptr<Member>> members_;
  mutable std::shared_mutex gate_;
  mutable std::mutex state_mu_;
  std::uint64_t generation_ = 0;
  // The generation this engine's run began with: a member that fell behind at or after it
  // missed nothing the healthy members did not get, so its own history is not needed.
  std::uint64_t start_generation_ = 0;
  std::atomic<int> rebuilds_active_{0};
  // While non-zero, writes take the stripe locks so that a scrub can hold off one extent.
  std::atomic<int> scrubs_active_{0};
  std::unique_ptr<Scrubber> scrubber_;
  std::chrono::milliseconds epoch_{1000};
  std::atomic<std::int64_t> epoch_began_ns_{0};
  std::array<std::mutex, kStripes> stripes_;
  std::atomic<std::uint64_t> next_read_{0};

  std::atomic<std::uint64_t> read_ops_{0}, write_ops_{0}, read_bytes_{0}, write_bytes_{0},
      flush_ops_{0}, failed_ops_{0};
  std::int64_t started_unix_ms_ = 0;

  std::mutex stop_mu_;
  std::condition_variable stop_cv_;
  bool stopping_ = false;
  std::thread watchdog_;
  std::thread maintenance_;

  // Replenishment (under state_mu_; changed by the maintenance thread under the exclusive gate).
  std::uint64_t membership_version_ = 0;
  std::vector<v1::EngineReplica> retired_;
  Clock::time_point next_retired_attempt_{};  // maintenance thread only
};

Status EngineImpl::CheckRange(std::uint64_t offset, std::uint64_t count) const {
  if (offset % kBlock != 0) {
    return InvalidArgument("offset: " + std::to_string(offset) + " is not a multiple of 4096");
  }
  if (count % kBlock != 0) {
    return InvalidArgument("length: " + std::to_string(count) + " is not a multiple of 4096");
  }
  const std::uint64_t size = size_bytes_.load();
  if (offset > size || count > size - offset) {
    return InvalidArgument("offset: [" + std::to_string(offset) + ", +" + std::to_string(count) +
                           ") is beyond the volume's size " + std::to_string(size));
  }
  return Status::OK();
}

Result<v1::ReplicaMeta> EngineImpl::Connect(Member& m) {
  const int dial_ms = 3000;
  const std::string who = "engine " + config_.volume();
  HCI_ASSIGN_OR_RAISE(auto control, wire::Dial(m.config.address(), secret_, who, dial_ms));
  // A replica that stops answering must not hang a generation bump: control calls time out.
  timeval tv{};
  tv.tv_sec = io_timeout_.count() / 1000;
  tv.tv_usec = (io_timeout_.count() % 1000) * 1000;
  setsockopt(control->fd(), SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
  setsockopt(control->fd(), SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
  v1::ControlRequest get;
  get.mutable_get()->set_replica(m.config.name());
  v1::ControlResponse response;
  HCI_RETURN_NOT_OK(wire::Call(*control, get, &response));
  std::vector<std::unique_ptr<Link>> links;
  for (std::uint32_t i = 0; i < links_per_member_; ++i) {
    HCI_ASSIGN_OR_RAISE(auto conn, wire::Dial(m.config.address(), secret_, who, dial_ms));
    v1::ControlRequest open;
    open.mutable_open()->set_replica(m.config.name());
    v1::ControlResponse opened;
    HCI_RETURN_NOT_OK(wire::Call(*conn, open, &opened));
    links.push_back(std::make_unique<Link>(std::move(conn)));
  }
  {
    std::lock_guard lock(m.control_mu);
    m.control = std::move(control);
  }
  m.links = std::move(links);
  return response.info().meta();
}

Status EngineImpl::ControlCall(Member& m, const v1::ControlRequest& request,
                               v1::ControlResponse* response) {
  std::lock_guard lock(m.control_mu);
  if (m.control == nullptr) return Unavailable("replica " + m.config.name() + " is not connected");
  Status st = wire::Call(*m.control, request, response);
  if (!st.ok() && (st.code() == StatusCode::kUnavailable || st.code() == StatusCode::kInternal)) {
    // The exchange broke halfway: the connection cannot be trusted for the next call.
    m.control->Shutdown();
  }
  return st.WithContext("replica " + m.config.name() + " on " + m.config.node());
}

Status EngineImpl::Init() {
  if (config_.volume().empty()) return InvalidArgument("volume: must not be empty");
  if (config_.size_bytes() == 0 || config_.size_bytes() % kBlock != 0) {
    return InvalidArgument("size_bytes: " + std::to_string(config_.size_bytes()) +
                           " is not a positive multiple of 4096");
  }
  const auto n = static_cast<std::uint32_t>(config_.replicas_size());
  if (n == 0) return InvalidArgument("replicas: at least one replica is required");
  write_quorum_ = config_.write_quorum() == 0 ? n / 2 + 1 : config_.write_quorum();
  if (write_quorum_ > n) {
    return InvalidArgument("write_quorum: " + std::to_string(write_quorum_) + " is more than the " +
                           std::to_string(n) + " replicas");
  }
  read_quorum_ = n - write_quorum_ + 1;
  if (config_.io_timeout_ms() != 0)
    io_timeout_ = std::chrono::milliseconds(config_.io_timeout_ms());
  if (config_.connections_per_replica() != 0) links_per_member_ = config_.connections_per_replica();
  if (config_.epoch_ms() != 0) epoch_ = std::chrono::milliseconds(config_.epoch_ms());
  epoch_began_ns_ = Clock::now().time_since_epoch().count();
  size_bytes_ = config_.size_bytes();
  started_unix_ms_ = NowUnixMs();
  membership_version_ = config_.membership_version();
  retired_.assign(config_.retired().begin(), config_.retired().end());
  for (const auto& r : config_.replicas()) {
    auto m = std::make_unique<Member>();
    m->config = r;
    m->failed_since_ms = started_unix_ms_;
    members_.push_back(std::move(m));
  }

  // Wait for a read quorum: any read quorum intersects every write quorum, so the highest
  // generation it holds is the volume's latest.
  const auto start_timeout = std::chrono::milliseconds(
      config_.start_timeout_ms() == 0 ? 30000 : config_.start_timeout_ms());
  const auto deadline = Clock::now() + start_timeout;
  std::vector<std::optional<v1::ReplicaMeta>> metas(n);
  std::string last_errors;
  for (;;) {
    std::uint32_t reachable = 0;
    last_errors.clear();
    for (std::uint32_t i = 0; i < n; ++i) {
      if (!metas[i]) {
        auto meta = Connect(*members_[i]);
        if (meta.ok()) {
          metas[i] = *meta;
        } else {
          last_errors += "; " + members_[i]->config.name() + ": " + meta.status().message();
        }
      }
      if (metas[i]) ++reachable;
    }
    if (reachable >= read_quorum_) break;
    if (Clock::now() >= deadline) {
      return Unavailable("volume " + config_.volume() + ": only " + std::to_string(reachable) +
                         " of " + std::to_string(n) + " replicas answered within " +
                         std::to_string(start_timeout.count()) + " ms; " +
                         std::to_string(read_quorum_) + " are needed" + last_errors);
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(500));
  }

  // The source: highest generation, never a rebuild target, ties broken by replica name.
  std::optional<std::uint32_t> source;
  std::uint64_t top = 0;
  for (std::uint32_t i = 0; i < n; ++i) {
    if (!metas[i] || metas[i]->rebuilding()) continue;
    const auto g = metas[i]->generation();
    if (!source || g > top ||
        (g == top && members_[i]->config.name() < members_[*source]->config.name())) {
      source = i;
      top = g;
    }
  }
  if (!source) {
    return DataLoss("volume " + config_.volume() +
                    ": every reachable replica is an unfinished rebuild target");
  }
  for (std::uint32_t i = 0; i < n; ++i) {
    if (metas[i]) members_[i]->generation = metas[i]->generation();
    if (metas[i] && metas[i]->size_bytes() > size_bytes_) size_bytes_ = metas[i]->size_bytes();
  }
  Member& src = *members_[*source];
  {
    std::unique_lock gate(gate_);
    generation_ = top;
    // An expand that reached some replicas only: the source grows to the largest size too.
    if (Status st = MatchSizeLocked(src, metas[*source]->size_bytes()); !st.ok()) {
      return st.WithContext("volume " + config_.volume() + ": source replica " + src.config.name());
    }
    SetStateLocked(src, v1::MEMBER_STATE_HEALTHY, "source of generation " + std::to_string(top));
    // The last engine stopped cleanly: the other members of the newest generation hold the same
    // writes and serve at once, without a resynchronisation from the source.
    for (std::uint32_t i = 0; i < n && config_.clean_start(); ++i) {
      if (i != *source && metas[i] && !metas[i]->rebuilding() && metas[i]->generation() == top &&
          metas[i]->size_bytes() == size_bytes_.load()) {
        SetStateLocked(*members_[i], v1::MEMBER_STATE_HEALTHY,
                       "in step with the source at generation " + std::to_string(top) +
                           " (the last engine stopped cleanly)");
      }
    }
    // A new generation for this engine's run: replicas left behind by it stay distinguishable.
    BumpGenerationLocked();
    start_generation_ = generation_;
  }
  if (src.state != v1::MEMBER_STATE_HEALTHY) {
    return Unavailable("volume " + config_.volume() + ": source replica " + src.config.name() +
                       " failed while starting: " + src.message);
  }
  spdlog::info("volume {}: generation {} from replica {} on {}", config_.volume(), generation_,
               src.config.name(), src.config.node());

  // Replicas of the same generation may differ in the writes in flight when the last engine
  // stopped (never acknowledged, but they must agree): bring them in line before serving.
  for (std::uint32_t i = 0; i < n; ++i) {
    if (i == *source || !metas[i] || metas[i]->rebuilding() || metas[i]->generation() != top ||
        members_[i]->state == v1::MEMBER_STATE_HEALTHY) {
      continue;
    }
    Status st = Rebuild(*members_[i], top, false);
    if (!st.ok()) {
      spdlog::warn("volume {}: replica {} could not be resynchronised: {}", config_.volume(),
                   members_[i]->config.name(), st.ToString());
    }
  }
  // Members of older generations and unfinished rebuild targets rejoin through the
  // maintenance thread's rebuilds, which also reconnects the unreachable ones.
  for (std::uint32_t i = 0; i < n; ++i) {
    Member& m = *members_[i];
    if (metas[i] && m.state == v1::MEMBER_STATE_OFFLINE) {
      std::unique_lock gate(gate_);
      SetStateLocked(m, v1::MEMBER_STATE_FAILED,
                     metas[i]->rebuilding()
                         ? "unfinished rebuild target"
                         : "generation " + std::to_string(metas[i]->generation()) + " is behind " +
                               std::to_string(top));
    }
  }
  scrubber_ =
      std::make_unique<Scrubber>(this, config_.volume(), config_.rebuild_bytes_per_second());
  watchdog_ = std::thread([this] { WatchdogLoop(); });
  maintenance_ = std::thread([this] { MaintenanceLoop(); });
  return Status::OK();
}

void EngineImpl::Stop() {
  {
    std::lock_guard lock(stop_mu_);
    if (stopping_) return;
    stopping_ = true;
  }
  stop_cv_.notify_all();
  if (scrubber_ != nullptr) scrubber_->Stop();
  if (watchdog_.joinable()) watchdog_.join();
  if (maintenance_.joinable()) maintenance_.join();
  for (auto& m : members_) {
    m->links.clear();
    std::lock_guard lock(m->control_mu);
    m->control.reset();
  }
}

void EngineImpl::SetStateLocked(Member& m, v1::MemberState state, std::string message) {
  std::lock_guard lock(state_mu_);
  m.state = state;
  m.message = std::move(message);
  if (m.Serving()) {
    m.failed_since_ms = 0;
  } else if (m.failed_since_ms == 0) {
    m.failed_since_ms = NowUnixMs();
  }
  if (state != v1::MEMBER_STATE_REBUILDING) m.rebuild_into.clear();
}

void EngineImpl::MarkFailedLocked(Member& m, const Status& why) {
  spdlog::warn("volume {}: replica {} on {} failed: {}", config_.volume(), m.config.name(),
               m.config.node(), why.ToString());
  SetStateLocked(m, v1::MEMBER_STATE_FAILED, why.message());
  for (auto& link : m.links) link->Shutdown(Unavailable("replica " + m.config.name() + " failed"));
}

int EngineImpl::HealthyCountLocked() const {
  int healthy = 0;
  for (const auto& m : members_) healthy += m->state == v1::MEMBER_STATE_HEALTHY;
  return healthy;
}

void EngineImpl::BumpGenerationLocked() {
  for (;;) {
    const std::uint64_t next = generation_ + 1;
    std::vector<std::pair<Member*, Status>> failed;
    for (auto& m : members_) {
      if (!m->Serving()) continue;
      v1::ControlRequest request;
      auto* set = request.mutable_set_generation();
      set->set_replica(m->config.name());
      set->set_expected_generation(generation_);
      set->set_generation(next);
      set->set_rebuilding(m->state == v1::MEMBER_STATE_REBUILDING);
      v1::ControlResponse response;
      Status st = ControlCall(*m, request, &response);
      if (st.ok()) {
        std::lock_guard lock(state_mu_);
        m->generation = next;
      } else {
        failed.emplace_back(m.get(), st);
      }
    }
    {
      std::lock_guard lock(state_mu_);
      generation_ = next;
    }
    if (failed.empty()) return;
    // A member that may or may not have persisted `next` must not tie with the survivors.
    for (auto& [m, st] : failed) MarkFailedLocked(*m, st);
  }
}

void EngineImpl::MaybeStartEpoch() {
  const std::int64_t now = Clock::now().time_since_epoch().count();
  std::int64_t began = epoch_began_ns_.load();
  if (now - began < std::chrono::nanoseconds(epoch_).count()) return;
  // One flusher starts the epoch; the others go on.
  if (!epoch_began_ns_.compare_exchange_strong(began, now)) return;
  std::unique_lock gate(gate_);
  if (HealthyCountLocked() >= static_cast<int>(write_quorum_)) BumpGenerationLocked();
}

void EngineImpl::FailMembers(const std::vector<std::pair<Member*, Status>>& failures) {
  std::unique_lock gate(gate_);
  bool changed = false;
  for (const auto& [m, st] : failures) {
    if (!m->Serving()) continue;  // another request already failed it
    MarkFailedLocked(*m, st);
    changed = true;
  }
  if (changed) BumpGenerationLocked();
  stop_cv_.notify_all();  // the maintenance thread retries failed members
}

void EngineImpl::LockStripes(std::uint64_t offset, std::uint64_t count,
                             std::vector<std::size_t>* locked) {
  const std::uint64_t first = offset / kCopyChunk;
  const std::uint64_t last = (offset + std::max<std::uint64_t>(count, 1) - 1) / kCopyChunk;
  for (std::uint64_t c = first; c <= last && locked->size() < kStripes; ++c) {
    locked->push_back(c % kStripes);
  }
  std::sort(locked->begin(), locked->end());
  locked->erase(std::unique(locked->begin(), locked->end()), locked->end());
  for (std::size_t s : *locked) stripes_[s].lock();
}

void EngineImpl::UnlockStripes(const std::vector<std::size_t>& locked) {
  for (auto it = locked.rbegin(); it != locked.rend(); ++it) stripes_[*it].unlock();
}

Status EngineImpl::Mutate(wire::MsgType type, std::uint64_t offset, std::uint64_t count,
                          std::span<const std::uint8_t> payload, bool fua) {
  if (type != wire::MsgType::kFlush) HCI_RETURN_NOT_OK(CheckRange(offset, count));
  if (count > wire::kMaxPayload && type == wire::MsgType::kWrite) {
    return InvalidArgument("length: " + std::to_string(count) + " is more than 32 MiB");
  }
  // Zeroing a large range goes out in frame-sized pieces.
  if (type != wire::MsgType::kWrite && count > wire::kMaxPayload) {
    for (std::uint64_t done = 0; done < count; done += wire::kMaxPayload) {
      HCI_RETURN_NOT_OK(Mutate(type, offset + done,
                               std::min<std::uint64_t>(wire::kMaxPayload, count - done), payload,
                               fua));
    }
    return Status::OK();
  }
  std::vector<Member*> targets;
  std::vector<Waiter> waiters;
  Batch batch;
  {
    std::shared_lock gate(gate_);
    int healthy = 0;
    for (auto& m : members_) {
      if (!m->Serving()) continue;
      targets.push_back(m.get());
      healthy += m->state == v1::MEMBER_STATE_HEALTHY;
    }
    if (healthy < static_cast<int>(write_quorum_)) {
      ++failed_ops_;
      return Unavailable("volume " + config_.volume() + ": " + std::to_string(healthy) + " of " +
                         std::to_string(members_.size()) +
                         " replicas healthy, below the write quorum of " +
                         std::to_string(write_quorum_));
    }
    std::vector<std::size_t> stripes;
    if ((rebuilds_active_.load() > 0 || scrubs_active_.load() > 0) &&
        type != wire::MsgType::kFlush) {
      LockStripes(offset, count, &stripes);
    }
    waiters.resize(targets.size());
    batch.outstanding = static_cast<int>(targets.size());
    wire::Header h;
    h.type = type;
    h.flags = fua ? static_cast<std::uint32_t>(wire::kFlagFua) : 0u;
    h.offset = offset;
    h.count = static_cast<std::uint32_t>(count);
    h.generation = generation_;
    for (std::size_t i = 0; i < targets.size(); ++i) {
      waiters[i].batch = &batch;
      targets[i]->PickLink()->Submit(h, payload, &waiters[i]);
    }
    batch.Wait();
    UnlockStripes(stripes);
  }
  std::vector<std::pair<Member*, Status>> failures;
  for (std::size_t i = 0; i < targets.size(); ++i) {
    if (!waiters[i].status.ok()) failures.emplace_back(targets[i], waiters[i].status);
  }
  if (!failures.empty()) {
    // The replicas that missed this request are failed and the survivors moved to a new
    // generation before the request is acknowledged: a restart can never pick a replica
    // without it.
    FailMembers(failures);
    std::shared_lock gate(gate_);
    int have = 0;
    for (std::size_t i = 0; i < targets.size(); ++i) {
      have += waiters[i].status.ok() && targets[i]->state == v1::MEMBER_STATE_HEALTHY;
    }
    if (have < static_cast<int>(write_quorum_)) {
      ++failed_ops_;
      return Unavailable("volume " + config_.volume() + ": only " + std::to_string(have) +
                         " replicas took the request, below the write quorum of " +
                         std::to_string(write_quorum_) + " (" + failures[0].second.message() + ")");
    }
  }
  if (type == wire::MsgType::kFlush) {
    ++flush_ops_;
    MaybeStartEpoch();
  } else {
    ++write_ops_;
    write_bytes_ += count;
  }
  return Status::OK();
}

Status EngineImpl::Read(std::uint64_t offset, std::span<std::uint8_t> out) {
  HCI_RETURN_NOT_OK(CheckRange(offset, out.size()));
  if (out.size() > wire::kMaxPayload) {
    return InvalidArgument("length: " + std::to_string(out.size()) + " is more than 32 MiB");
  }
  for (;;) {
    Member* member = nullptr;
    Waiter w;
    Batch batch;
    {
      std::shared_lock gate(gate_);
      std::vector<Member*> healthy;
      for (auto& m : members_) {
        if (m->state == v1::MEMBER_STATE_HEALTHY) healthy.push_back(m.get());
      }
      if (healthy.empty()) {
        ++failed_ops_;
        return Unavailable("volume " + config_.volume() + ": no healthy replica to read from");
      }
      member = healthy[next_read_++ % healthy.size()];
      batch.outstanding = 1;
      w.batch = &batch;
      w.read_into = out;
      wire::Header h;
      h.type = wire::MsgType::kRead;
      h.offset = offset;
      h.count = static_cast<std::uint32_t>(out.size());
      h.generation = generation_;
      member->PickLink()->Submit(h, {}, &w);
      batch.Wait();
    }
    if (w.status.ok()) {
      ++read_ops_;
      read_bytes_ += out.size();
      return Status::OK();
    }
    FailMembers({{member, w.status}});
  }
}

Status EngineImpl::Snapshot(const std::string& name) {
  std::unique_lock gate(gate_);
  if (HealthyCountLocked() < static_cast<int>(write_quorum_)) {
    return Unavailable("volume " + config_.volume() + ": below the write quorum");
  }
  // No write is in flight (the gate is held exclusively): every replica freezes the same point
  // of the write stream. A rebuilding member takes it too: its rebuild then copies what its
  // head still lacks into this snapshot's layer (Member::rebuild_into), which its new head and
  // every later snapshot read through.
  std::vector<std::pair<Member*, Status>> failed;
  const std::int64_t created = NowUnixMs();
  for (auto& m : members_) {
    if (!m->Serving()) continue;
    // Snapshots are idempotent by name: an old snapshot of that name must not become the layer
    // the rebuild fills.
    bool fresh = false;
    if (m->state == v1::MEMBER_STATE_REBUILDING && m->rebuild_into.empty()) {
      v1::ControlRequest get;
      get.mutable_get()->set_replica(m->config.name());
      v1::ControlResponse got;
      if (Status st = ControlCall(*m, get, &got); !st.ok()) {
        failed.emplace_back(m.get(), st);
        continue;
      }
      fresh =
          std::none_of(got.info().meta().layers().begin(), got.info().meta().layers().end(),
                       [&](const v1::Layer& l) { return l.snapshot() == name && !l.removed(); });
    }
    v1::ControlRequest request;
    request.mutable_snapshot()->set_replica(m->config.name());
    request.mutable_snapshot()->set_snapshot(name);
    request.mutable_snapshot()->set_created_unix_ms(created);
    request.mutable_snapshot()->set_generation(generation_);
    v1::ControlResponse response;
    Status st = ControlCall(*m, request, &response);
    if (!st.ok()) {
      failed.emplace_back(m.get(), st);
    } else if (fresh) {
      std::lock_guard lock(state_mu_);
      m->rebuild_into = name;
    }
  }
  if (!failed.empty()) {
    for (auto& [m, st] : failed) MarkFailedLocked(*m, st);
    BumpGenerationLocked();
  }
  if (HealthyCountLocked() < static_cast<int>(write_quorum_)) {
    return Unavailable("volume " + config_.volume() + ": snapshot " + name +
                       " reached fewer replicas than the write quorum");
  }
  return Status::OK();
}

Status EngineImpl::GrowLocked(Member& m, std::uint64_t size_bytes) {
  v1::ControlRequest request;
  request.mutable_expand()->set_replica(m.config.name());
  request.mutable_expand()->set_size_bytes(size_bytes);
  v1::ControlResponse response;
  return ControlCall(m, request, &response);
}

void EngineImpl::ExpandServingLocked(std::uint64_t size_bytes) {
  std::vector<std::pair<Member*, Status>> failed;
  bool grew = false;
  for (auto& m : members_) {
    if (!m->Serving()) continue;
    Status st = GrowLocked(*m, size_bytes);
    if (st.ok()) {
      grew = grew || m->state == v1::MEMBER_STATE_HEALTHY;
    } else {
      failed.emplace_back(m.get(), st);
    }
  }
  if (!failed.empty()) {
    // Not the volume's size: it must not serve (a write beyond its end would fail) until a
    // rebuild grows it.
    for (auto& [m, st] : failed) MarkFailedLocked(*m, st);
    BumpGenerationLocked();
  }
  if (grew && size_bytes > size_bytes_.load()) size_bytes_ = size_bytes;
}

Status EngineImpl::MatchSizeLocked(Member& m, std::uint64_t have) {
  const std::uint64_t size = size_bytes_.load();
  if (have < size) {
    return GrowLocked(m, size).WithContext("growing it to the volume's " + std::to_string(size) +
                                           " bytes");
  }
  if (have > size) {
    spdlog::warn(
        "volume {}: replica {} has {} bytes, more than the volume's {} (an expand it took did "
        "not reach the others): the volume grows to its size",
        config_.volume(), m.config.name(), have, size);
    ExpandServingLocked(have);
    size_bytes_ = std::max(size_bytes_.load(), have);
  }
  return Status::OK();
}

Status EngineImpl::Expand(std::uint64_t size_bytes) {
  if (size_bytes == 0 || size_bytes % kBlock != 0) {
    return InvalidArgument("expand: " + std::to_string(size_bytes) +
                           " is not a positive multiple of 4096");
  }
  // Exclusively: no request is in flight while the replicas and the engine change size, so none
  // reaches a replica beyond its old end before it grew.
  std::unique_lock gate(gate_);
  const std::uint64_t current = size_bytes_.load();
  if (size_bytes < current) {
    return InvalidArgument("expand: " + std::to_string(size_bytes) +
                           " is smaller than the volume's size " + std::to_string(current) +
                           " (volumes only grow)");
  }
  if (size_bytes == current) return Status::OK();
  if (HealthyCountLocked() < static_cast<int>(write_quorum_)) {
    return Unavailable("volume " + config_.volume() +
                       ": below the write quorum, it cannot be expanded now");
  }
  ExpandServingLocked(size_bytes);
  if (HealthyCountLocked() < static_cast<int>(write_quorum_)) {
    return Unavailable("volume " + config_.volume() +
                       ": fewer replicas than the write quorum grew to " +
                       std::to_string(size_bytes) + " bytes; retry the expand");
  }
  spdlog::info("volume {}: expanded from {} to {} bytes", config_.volume(), current, size_bytes);
  return Status::OK();
}

Member* EngineImpl::HealthySource() {
  Member* best = nullptr;
  for (auto& m : members_) {
    if (m->state == v1::MEMBER_STATE_HEALTHY &&
        (best == nullptr || m->config.name() < best->config.name())) {
      best = m.get();
    }
  }
  return best;
}

Result<std::vector<Extent>> EngineImpl::ExtentsToCopy(Member& source, Member& target,
                                                      std::uint64_t since, bool full) {
  auto ask = [&](Member& m, bool whole) -> Result<std::vector<Extent>> {
    v1::ControlRequest request;
    if (whole) {
      request.mutable_changed_between()->set_replica(m.config.name());
    } else {
      request.mutable_changed_since()->set_replica(m.config.name());
      request.mutable_changed_since()->set_generation(since);
    }
    v1::ControlResponse response;
    HCI_RETURN_NOT_OK(ControlCall(m, request, &response));
    return ToExtents(response.extents());
  };
  if (!full) {
    auto a = ask(source, false);
    auto b = ask(target, false);
    if (a.ok() && b.ok()) return Union(*a, *b);
    // Every write this engine sent the target went to the healthy members too, so what the
    // target holds beyond the source is covered by the source's history; only a target left
    // behind by an earlier engine can hold writes (in flight when it died) that nobody else has.
    if (a.ok() && b.status().code() == StatusCode::kFailedPrecondition &&
        since >= start_generation_) {
      spdlog::info("volume {}: {}; copying the source's changes alone", config_.volume(),
                   b.status().message());
      return *a;
    }
    // FailedPrecondition (a history does not go back that far): the caller copies everything.
    return a.ok() ? b.status() : a.status();
  }
  // Everything either side holds: what only the target holds must be zeroed.
  HCI_ASSIGN_OR_RAISE(auto a, ask(source, true));
  HCI_ASSIGN_OR_RAISE(auto b, ask(target, true));
  return Union(a, b);
}

Result<std::vector<Extent>> EngineImpl::Owned(Member& m, const std::string& from,
                                              const std::string& to) {
  v1::ControlRequest request;
  auto* changed = request.mutable_changed_between();
  changed->set_replica(m.config.name());
  changed->set_from_snapshot(from);
  changed->set_to_snapshot(to);
  v1::ControlResponse response;
  HCI_RETURN_NOT_OK(ControlCall(m, request, &response));
  return ToExtents(response.extents());
}

Status EngineImpl::AlignLayers(Member& source, Member& target, std::uint64_t since, bool full,
                               LayerPlan* plan) {
  auto meta_of = [&](Member& m) -> Result<v1::ReplicaMeta> {
    v1::ControlRequest get;
    get.mutable_get()->set_replica(m.config.name());
    v1::ControlResponse response;
    HCI_RETURN_NOT_OK(ControlCall(m, get, &response));
    return response.info().meta();
  };
  HCI_ASSIGN_OR_RAISE(const v1::ReplicaMeta src_meta, meta_of(source));
  HCI_ASSIGN_OR_RAISE(const v1::ReplicaMeta tgt_meta, meta_of(target));
  const std::vector<ChainSnapshot> src = SnapshotChain(src_meta);
  const std::vector<ChainSnapshot> tgt = SnapshotChain(tgt_meta);
  auto in = [](const std::vector<ChainSnapshot>& chain, const std::string& name) {
    return std::any_of(chain.begin(), chain.end(),
                       [&](const ChainSnapshot& c) { return c.name == name; });
  };
  // The target's snapshots the source lacks (deleted while the target was away) go; of the
  // rest, those in the source's order from the bottom are kept, and everything above the first
  // one missing is deleted (merged) and created again in the source's order.
  std::vector<std::string> drop;
  std::vector<std::string> kept;
  for (const ChainSnapshot& t : tgt) {
    if (!in(src, t.name)) {
      drop.push_back(t.name);
    } else {
      kept.push_back(t.name);
    }
  }
  std::size_t common = 0;
  while (common < src.size() && common < kept.size() && src[common].name == kept[common]) {
    ++common;
  }
  const bool diverged = common < kept.size();
  for (std::size_t i = common; i < kept.size(); ++i) drop.push_back(kept[i]);
  plan->chain = Names(src);
  plan->first_new = common;
  // The target fell behind before every missing snapshot was taken: its head then held the
  // oldest one's data (up to what changed since), so the head becomes that snapshot.
  plan->freeze = !full && !diverged;
  for (std::size_t i = common; i < src.size(); ++i) {
    if (src[i].generation == 0 || src[i].generation < since) plan->freeze = false;
  }
  if (drop.empty() && common == src.size()) return Status::OK();

  // From here on the target's layers are half made: should this rebuild not finish, the next
  // one is a full copy.
  {
    v1::ControlRequest request;
    auto* set = request.mutable_set_generation();
    set->set_replica(target.config.name());
    set->set_expected_generation(tgt_meta.generation());
    set->set_generation(tgt_meta.generation());
    set->set_rebuilding(true);
    v1::ControlResponse response;
    HCI_RETURN_NOT_OK(ControlCall(target, request, &response));
  }
  for (const std::string& name : drop) {
    v1::ControlRequest request;
    request.mutable_delete_snapshot()->set_replica(target.config.name());
    request.mutable_delete_snapshot()->set_snapshot(name);
    v1::ControlResponse response;
    HCI_RETURN_NOT_OK(ControlCall(target, request, &response));
    spdlog::info(
        "volume {}: replica {}: deleted snapshot {} (the source {} has no such snapshot "
        "in that place)",
        config_.volume(), target.config.name(), name, source.config.name());
  }
  for (std::size_t i = common; i < src.size(); ++i) {
    v1::ControlRequest request;
    auto* snap = request.mutable_snapshot();
    snap->set_replica(target.config.name());
    snap->set_snapshot(src[i].name);
    snap->set_created_unix_ms(src[i].created_unix_ms);
    snap->set_generation(src[i].generation);
    v1::ControlResponse response;
    HCI_RETURN_NOT_OK(ControlCall(target, request, &response));
    spdlog::info("volume {}: replica {}: created snapshot {} to rebuild it", config_.volume(),
                 target.config.name(), src[i].name);
  }
  return Status::OK();
}

Result<std::vector<LayerCopy>> EngineImpl::PlanCopy(Member& source, Member& target,
                                                    std::uint64_t since, bool full,
                                                    const LayerPlan& plan) {
  std::vector<Extent> changed;
  if (!full) {
    auto delta = ExtentsToCopy(source, target, since, false);
    if (delta.ok()) {
      changed = *std::move(delta);
    } else if (delta.status().code() == StatusCode::kFailedPrecondition) {
      spdlog::info("volume {}: full copy into {}: {}", config_.volume(), target.config.name(),
                   delta.status().message());
      full = true;
    } else {
      return delta.status();
    }
  }
  const auto& chain = plan.chain;
  std::vector<LayerCopy> out;
  // Snapshot layers, oldest first: a full copy fills every layer with what either side's layer
  // owns (read through the source's view of that snapshot), a delta only the layers created
  // for this rebuild.
  for (std::size_t i = full ? 0 : plan.first_new; i < chain.size(); ++i) {
    const std::string from = i == 0 ? "" : chain[i - 1];
    HCI_ASSIGN_OR_RAISE(auto a, Owned(source, from, chain[i]));
    HCI_ASSIGN_OR_RAISE(auto b, Owned(target, from, chain[i]));
    std::vector<Extent> extents = Union(std::move(a), b);
    if (!full && plan.freeze && i == plan.first_new) extents = Intersect(extents, changed);
    out.push_back({chain[i], std::move(extents)});
  }
  const std::string top = chain.empty() ? "" : chain.back();
  if (full) {
    HCI_ASSIGN_OR_RAISE(auto a, Owned(source, top, ""));
    HCI_ASSIGN_OR_RAISE(auto b, Owned(target, top, ""));
    out.push_back({"", Union(std::move(a), b)});
  } else if (plan.first_new < chain.size()) {
    // The target's head is new (empty but for the writes since it joined): the source's.
    HCI_ASSIGN_OR_RAISE(auto a, Owned(source, top, ""));
    out.push_back({"", std::move(a)});
  } else {
    // The changed chunks, clipped to the blocks either head owns: what is not owned above the
    // newest snapshot reads from the layers both share, and the target's head ends up owning
    // what the source's does.
    HCI_ASSIGN_OR_RAISE(auto a, Owned(source, top, ""));
    HCI_ASSIGN_OR_RAISE(auto b, Owned(target, top, ""));
    out.push_back({"", Intersect(changed, Union(std::move(a), b))});
  }
  return out;
}

Result<wire::Connection*> EngineImpl::LayerConn(Member& m, const std::string& snapshot, bool writes,
                                                LayerConns* conns) {
  const std::string key =
      m.config.name() + "@" + m.config.address() + "/" + snapshot + (writes ? "/w" : "/r");
  if (wire::Connection* conn = conns->Find(key)) return conn;
  HCI_ASSIGN_OR_RAISE(auto conn,
                      wire::Dial(m.config.address(), secret_, "engine " + config_.volume(), 3000));
  timeval tv{};
  tv.tv_sec = io_timeout_.count() / 1000;
  tv.tv_usec = (io_timeout_.count() % 1000) * 1000;
  setsockopt(conn->fd(), SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
  setsockopt(conn->fd(), SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
  v1::ControlRequest open;
  open.mutable_open()->set_replica(m.config.name());
  open.mutable_open()->set_snapshot(snapshot);
  open.mutable_open()->set_layer_writes(writes);
  v1::ControlResponse opened;
  HCI_RETURN_NOT_OK(wire::Call(*conn, open, &opened)
                        .WithContext("replica " + m.config.name() + " on " + m.config.node()));
  conns->entries.push_back({key, std::move(conn)});
  return conns->entries.back().conn.get();
}

namespace {

// One data request and its answer on a connection nothing else uses.
Status DataCall(wire::Connection& conn, wire::Header h, std::span<const std::uint8_t> payload,
                std::span<std::uint8_t> read_into) {
  h.handle = 1;
  HCI_RETURN_NOT_OK(conn.Send(h, payload));
  wire::Header answer;
  std::string data;
  HCI_RETURN_NOT_OK(conn.Receive(&answer, &data));
  if (answer.status != 0) return wire::ErrnoToStatus(answer.status, conn.peer());
  if (!read_into.empty()) {
    if (data.size() != read_into.size()) {
      return Internal(conn.peer() + ": READ answered " + std::to_string(data.size()) +
                      " bytes, expected " + std::to_string(read_into.size()));
    }
    std::memcpy(read_into.data(), data.data(), data.size());
  }
  return Status::OK();
}

}  // namespace

Status EngineImpl::CopyLayerExtent(Member& target, const std::string& snapshot,
                                   std::uint64_t offset, std::uint64_t length, LayerConns* conns) {
  std::vector<std::uint8_t> buffer(length);
  for (int attempt = 0;; ++attempt) {
    Member* source = nullptr;
    {
      std::shared_lock gate(gate_);
      if (target.state != v1::MEMBER_STATE_REBUILDING) {
        return Aborted("replica " + target.config.name() +
                       " stopped rebuilding: " + target.message);
      }
      source = HealthySource();
      if (source == nullptr) return Unavailable("no healthy replica to copy from");
    }
    // Dialled outside the gate; the members' configs only change while they do not serve.
    HCI_ASSIGN_OR_RAISE(wire::Connection * from, LayerConn(*source, snapshot, false, conns));
    HCI_ASSIGN_OR_RAISE(wire::Connection * to, LayerConn(target, snapshot, true, conns));
    Status read, written;
    {
      // Shared: the generation the requests carry stays the replicas' own.
      std::shared_lock gate(gate_);
      if (target.state != v1::MEMBER_STATE_REBUILDING) continue;
      if (source->state != v1::MEMBER_STATE_HEALTHY) continue;
      wire::Header h;
      h.type = wire::MsgType::kRead;
      h.offset = offset;
      h.count = static_cast<std::uint32_t>(length);
      h.generation = generation_;
      read = DataCall(*from, h, {}, buffer);
      if (read.ok()) {
        const bool zero =
            std::all_of(buffer.begin(), buffer.end(), [](std::uint8_t b) { return b == 0; });
        h.type = zero ? wire::MsgType::kTrim : wire::MsgType::kWrite;
        written = DataCall(*to, h, zero ? std::span<const std::uint8_t>() : buffer, {});
      }
    }
    if (!read.ok()) {
      conns->entries.clear();
      // A snapshot the source lost meanwhile (deleted) or a source that broke: give up this
      // rebuild after a few tries (the next one is a full copy).
      if (attempt < 2 && read.code() == StatusCode::kUnavailable) continue;
      return read.WithContext("reading snapshot " + snapshot + " of replica " +
                              source->config.name());
    }
    if (!written.ok()) {
      conns->entries.clear();
      FailMembers({{&target, written}});
      return written.WithContext("filling snapshot " + snapshot + " of replica " +
                                 target.config.name());
    }
    return Status::OK();
  }
}

Status EngineImpl::CopyExtent(Member& target, std::uint64_t offset, std::uint64_t length,
                              std::string* into) {
  std::vector<std::uint8_t> buffer(length);
  for (;;) {
    Member* source = nullptr;
    Waiter rw, ww;
    {
      std::shared_lock gate(gate_);
      if (target.state != v1::MEMBER_STATE_REBUILDING) {
        return Aborted("replica " + target.config.name() +
                       " stopped rebuilding: " + target.message);
      }
      if (!target.rebuild_into.empty()) {
        *into = target.rebuild_into;
        return Status::OK();
      }
      source = HealthySource();
      if (source == nullptr) return Unavailable("no healthy replica to copy from");
      std::vector<std::size_t> stripes;
      LockStripes(offset, length, &stripes);
      Batch read_batch;
      read_batch.outstanding = 1;
      rw.batch = &read_batch;
      rw.read_into = buffer;
      wire::Header h;
      h.type = wire::MsgType::kRead;
      h.offset = offset;
      h.count = static_cast<std::uint32_t>(length);
      h.generation = generation_;
      source->PickLink()->Submit(h, {}, &rw);
      read_batch.Wait();
      if (rw.status.ok()) {
        const bool zero =
            std::all_of(buffer.begin(), buffer.end(), [](std::uint8_t b) { return b == 0; });
        Batch write_batch;
        write_batch.outstanding = 1;
        ww.batch = &write_batch;
        h.type = zero ? wire::MsgType::kTrim : wire::MsgType::kWrite;
        target.PickLink()->Submit(h, zero ? std::span<const std::uint8_t>() : buffer, &ww);
        write_batch.Wait();
      }
      UnlockStripes(stripes);
    }
    if (!rw.status.ok()) {
      FailMembers({{source, rw.status}});
      continue;
    }
    if (!ww.status.ok()) {
      FailMembers({{&target, ww.status}});
      return ww.status;
    }
    return Status::OK();
  }
}

Status EngineImpl::Rebuild(Member& target, std::uint64_t since, bool full) {
  Member* source = nullptr;
  LayerPlan plan;
  for (int attempt = 0;; ++attempt) {
    {
      std::shared_lock gate(gate_);
      source = HealthySource();
      if (source == nullptr) return Unavailable("no healthy replica to rebuild from");
    }
    if (Status st = AlignLayers(*source, target, since, full, &plan); !st.ok()) {
      std::unique_lock gate(gate_);
      if (!target.Serving()) SetStateLocked(target, target.state, st.message());
      return st.WithContext("aligning the snapshots of replica " + target.config.name());
    }
    // Join as a write-only member at the current generation: from here on it gets every write
    // and takes every snapshot.
    std::unique_lock gate(gate_);
    source = HealthySource();
    if (source == nullptr) return Unavailable("no healthy replica to rebuild from");
    // A snapshot taken (or deleted) since the chains were aligned: align again.
    v1::ControlRequest get;
    get.mutable_get()->set_replica(source->config.name());
    v1::ControlResponse got;
    Status st = ControlCall(*source, get, &got);
    if (st.ok() && Names(SnapshotChain(got.info().meta())) != plan.chain) {
      if (attempt < 5) continue;
      st = Aborted("the snapshots of " + source->config.name() + " kept changing");
    }
    if (!st.ok()) return st.WithContext("rebuild of replica " + target.config.name());
    v1::ControlRequest request;
    auto* set = request.mutable_set_generation();
    set->set_replica(target.config.name());
    set->set_expected_generation(target.generation);
    set->set_generation(generation_);
    set->set_rebuilding(true);
    v1::ControlResponse response;
    st = ControlCall(target, request, &response);
    // A replica that missed an expand grows before it takes writes beyond its old end.
    if (st.ok()) st = MatchSizeLocked(target, response.info().meta().size_bytes());
    if (!st.ok()) {
      MarkFailedLocked(target, st);
      return st;
    }
    {
      std::lock_guard lock(state_mu_);
      target.generation = generation_;
    }
    SetStateLocked(
        target, v1::MEMBER_STATE_REBUILDING,
        "rebuilding from " + source->config.name() + " since generation " + std::to_string(since));
    ++rebuilds_active_;
    break;
  }
  spdlog::info("volume {}: rebuilding replica {} on {} from {} (since generation {}{})",
               config_.volume(), target.config.name(), target.config.node(), source->config.name(),
               since, full ? ", full copy" : "");
  struct ActiveGuard {
    std::atomic<int>& n;
    ~ActiveGuard() { --n; }
  } guard{rebuilds_active_};

  auto layers = PlanCopy(*source, target, since, full, plan);
  if (!layers.ok()) {
    FailMembers({{&target, layers.status()}});
    return layers.status();
  }
  std::uint64_t total = 0;
  std::string per_layer;
  for (const LayerCopy& layer : *layers) {
    std::uint64_t bytes = 0;
    for (const Extent& e : layer.extents) bytes += e.length;
    total += bytes;
    per_layer += (per_layer.empty() ? "" : ", ") +
                 (layer.snapshot.empty() ? std::string("head") : "snapshot " + layer.snapshot) +
                 " " + std::to_string(bytes);
  }
  spdlog::info("volume {}: rebuild of {} copies {} bytes ({})", config_.volume(),
               target.config.name(), total, per_layer);
  target.rebuild_total = total;
  target.rebuild_done = 0;
  const auto began = Clock::now();
  const std::uint64_t rate = config_.rebuild_bytes_per_second();
  LayerConns conns;
  for (const LayerCopy& layer : *layers) {
    for (const Extent& e : layer.extents) {
      for (std::uint64_t off = e.offset; off < e.offset + e.length; off += kCopyChunk) {
        {
          std::lock_guard lock(stop_mu_);
          if (stopping_) return Cancelled("engine stopping");
        }
        const std::uint64_t end = std::min(e.offset + e.length, size_bytes_.load());
        if (off >= end) break;
        const std::uint64_t len = std::min(kCopyChunk, end - off);
        std::string into = layer.snapshot;
        if (into.empty()) HCI_RETURN_NOT_OK(CopyExtent(target, off, len, &into));
        if (!into.empty()) {
          Status st = CopyLayerExtent(target, into, off, len, &conns);
          if (!st.ok()) {
            FailMembers({{&target, st}});
            return st;
          }
        }
        target.rebuild_done += len;
        if (rate > 0) {
          const auto due = began + std::chrono::microseconds(target.rebuild_done * 1000000 / rate);
          std::unique_lock lock(stop_mu_);
          stop_cv_.wait_until(lock, due, [&] { return stopping_; });
        }
      }
    }
  }
  conns.entries.clear();
  // Durable on the target (the head and the snapshot layers it filled) before it counts.
  {
    Waiter w;
    Batch batch;
    std::shared_lock gate(gate_);
    if (target.state != v1::MEMBER_STATE_REBUILDING) return Aborted("rebuild interrupted");
    batch.outstanding = 1;
    w.batch = &batch;
    wire::Header h;
    h.type = wire::MsgType::kFlush;
    h.generation = generation_;
    target.PickLink()->Submit(h, {}, &w);
    batch.Wait();
    if (!w.status.ok()) {
      gate.unlock();
      FailMembers({{&target, w.status}});
      return w.status;
    }
  }
  std::unique_lock gate(gate_);
  if (target.state != v1::MEMBER_STATE_REBUILDING) return Aborted("rebuild interrupted");
  v1::ControlRequest request;
  auto* set = request.mutable_set_generation();
  set->set_replica(target.config.name());
  set->set_expected_generation(generation_);
  set->set_generation(generation_);
  set->set_rebuilding(false);
  v1::ControlResponse response;
  Status st = ControlCall(target, request, &response);
  if (!st.ok()) {
    MarkFailedLocked(target, st);
    BumpGenerationLocked();
    return st;
  }
  SetStateLocked(
      target, v1::MEMBER_STATE_HEALTHY,
      "rebuilt " + std::to_string(total) + " bytes in " +
          std::to_string(
              std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - began).count()) +
          " ms");
  spdlog::info("volume {}: replica {} is healthy again ({} bytes copied)", config_.volume(),
               target.config.name(), total);
  return Status::OK();
}

void EngineImpl::WatchdogLoop() {
  // A replica that stops answering is failed after io_timeout_, but only while enough others
  // (the write quorum) still answer in time: when every replica is slow at once (a busy disk
  // behind a long fsync), ejecting them would turn slowness into an outage. Past four times the
  // timeout a replica is failed regardless, so that writes below quorum end in EIO, not a hang.
  const auto hard_timeout = io_timeout_ * 4;
  std::unique_lock lock(stop_mu_);
  while (!stopping_) {
    stop_cv_.wait_for(lock, std::chrono::milliseconds(100));
    if (stopping_) break;
    lock.unlock();
    {
      // Links are replaced only while a member is not serving (by the maintenance thread); the
      // shared gate keeps them in place while we look.
      std::shared_lock gate(gate_, std::try_to_lock);
      if (gate.owns_lock()) {
        const auto now = Clock::now();
        std::vector<Clock::duration> late(members_.size(), Clock::duration::zero());
        int healthy_on_time = 0;
        for (std::size_t i = 0; i < members_.size(); ++i) {
          Member& m = *members_[i];
          if (!m.Serving()) continue;
          for (auto& link : m.links) {
            if (auto oldest = link->OldestPending(); oldest)
              late[i] = std::max(late[i], now - *oldest);
          }
          healthy_on_time += m.state == v1::MEMBER_STATE_HEALTHY && late[i] <= io_timeout_;
        }
        for (std::size_t i = 0; i < members_.size(); ++i) {
          Member& m = *members_[i];
          if (!m.Serving() || late[i] <= io_timeout_) continue;
          const bool others_answer = m.state == v1::MEMBER_STATE_REBUILDING ||
                                     healthy_on_time >= static_cast<int>(write_quorum_);
          if (!others_answer && late[i] <= hard_timeout) continue;
          const auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(late[i]).count();
          const auto why = Unavailable("replica " + m.config.name() + " did not answer within " +
                                       std::to_string(ms) + " ms");
          for (auto& l : m.links) l->Shutdown(why);
        }
      }
    }
    lock.lock();
  }
}

Status EngineImpl::Reelect() {
  // Every member is failed or unreachable: no write has been acknowledged since the last one
  // failed, so the members of the highest persisted generation hold every acknowledged write.
  // Pick one as start-up does; the others rejoin through rebuilds.
  std::vector<std::optional<v1::ReplicaMeta>> metas(members_.size());
  std::uint32_t reachable = 0;
  for (std::size_t i = 0; i < members_.size(); ++i) {
    {
      std::shared_lock gate(gate_);
      if (members_[i]->Serving()) return Status::OK();  // someone else brought one back
    }
    auto meta = Connect(*members_[i]);
    if (meta.ok()) {
      metas[i] = *meta;
      ++reachable;
    }
  }
  if (reachable < read_quorum_) {
    return Unavailable("no healthy replica, and only " + std::to_string(reachable) + " of " +
                       std::to_string(members_.size()) + " answer (" +
                       std::to_string(read_quorum_) + " are needed to choose one)");
  }
  std::optional<std::size_t> source;
  for (std::size_t i = 0; i < members_.size(); ++i) {
    if (!metas[i] || metas[i]->rebuilding()) continue;
    if (!source || metas[i]->generation() > metas[*source]->generation() ||
        (metas[i]->generation() == metas[*source]->generation() &&
         members_[i]->config.name() < members_[*source]->config.name())) {
      source = i;
    }
  }
  if (!source) return DataLoss("every reachable replica is an unfinished rebuild target");
  std::unique_lock gate(gate_);
  for (std::size_t i = 0; i < members_.size(); ++i) {
    if (metas[i]) {
      std::lock_guard state(state_mu_);
      members_[i]->generation = metas[i]->generation();
    }
  }
  Member& src = *members_[*source];
  HCI_RETURN_NOT_OK(MatchSizeLocked(src, metas[*source]->size_bytes()));
  const std::uint64_t next = std::max(generation_, src.generation) + 1;
  v1::ControlRequest request;
  auto* set = request.mutable_set_generation();
  set->set_replica(src.config.name());
  set->set_expected_generation(src.generation);
  set->set_generation(next);
  set->set_rebuilding(false);
  v1::ControlResponse response;
  HCI_RETURN_NOT_OK(ControlCall(src, request, &response));
  {
    std::lock_guard state(state_mu_);
    generation_ = next;
    src.generation = next;
  }
  // Like a new engine run: members of the old generation may hold writes in flight when they
  // failed, so their rebuilds need both sides' histories.
  start_generation_ = next;
  SetStateLocked(
      src, v1::MEMBER_STATE_HEALTHY,
      "chosen again after every replica had failed (generation " + std::to_string(next) + ")");
  spdlog::warn(
      "volume {}: every replica had failed; replica {} on {} serves again at generation {}",
      config_.volume(), src.config.name(), src.config.node(), next);
  return Status::OK();
}

void EngineImpl::MaintenanceLoop() {
  std::unique_lock lock(stop_mu_);
  while (!stopping_) {
    stop_cv_.wait_for(lock, std::chrono::seconds(1));
    if (stopping_) break;
    lock.unlock();
    bool any_healthy = false;
    {
      std::shared_lock gate(gate_);
      any_healthy = HealthyCountLocked() > 0;
    }
    if (!any_healthy) {
      if (Status st = Reelect(); !st.ok()) {
        spdlog::warn("volume {}: {}", config_.volume(), st.ToString());
        lock.lock();
        continue;
      }
    }
    DeleteRetired();
    for (auto& mp : members_) {
      Member& m = *mp;
      std::int64_t failed_since = 0;
      {
        std::shared_lock gate(gate_);
        if (m.Serving()) continue;
        std::lock_guard state(state_mu_);
        failed_since = m.failed_since_ms;
      }
      // Longhorn's replica-replenishment-wait-interval: a member away for longer is replaced by
      // a new replica on a spare node (full rebuild below); the old one is deleted later.
      const std::uint64_t wait = config_.replica_replenish_wait_ms();
      std::string note;
      if (wait > 0 && failed_since != 0 &&
          NowUnixMs() - failed_since >= static_cast<std::int64_t>(wait)) {
        Replenish(m, &note);
      }
      // Not serving: nothing else touches its connections.
      auto meta = Connect(m);
      if (!meta.ok()) {
        std::unique_lock gate(gate_);
        if (!m.Serving()) {
          std::lock_guard state(state_mu_);
          if (m.state == v1::MEMBER_STATE_FAILED) {
            m.message = "unreachable: " + meta.status().message();
          } else {
            m.message = meta.status().message();
          }
          if (!note.empty()) m.message += "; " + note;
        }
        continue;
      }
      {
        std::lock_guard state(state_mu_);
        m.generation = meta->generation();
      }
      const bool full = meta->rebuilding();
      Status st = Rebuild(m, meta->generation(), full);
      if (!st.ok()) {
        spdlog::warn("volume {}: rebuild of replica {} failed: {}", config_.volume(),
                     m.config.name(), st.ToString());
      }
      {
        std::lock_guard stop(stop_mu_);
        if (stopping_) return;
      }
    }
    lock.lock();
  }
}

std::string EngineImpl::NewReplicaNameLocked() const {
  // "<volume>-r<k>", k one more than any member's or retired replica's.
  const std::string prefix = config_.volume() + "-r";
  std::uint64_t next = 0;
  auto consider = [&](const std::string& name) {
    if (!name.starts_with(prefix)) return;
    std::uint64_t k = 0;
    const char* begin = name.data() + prefix.size();
    const char* end = name.data() + name.size();
    auto [ptr, ec] = std::from_chars(begin, end, k);
    if (ec == std::errc() && ptr == end) next = std::max(next, k + 1);
  };
  for (const auto& m : members_) consider(m->config.name());
  for (const auto& r : retired_) consider(r.name());
  return prefix + std::to_string(next);
}

bool EngineImpl::Replenish(Member& m, std::string* note) {
  std::set<std::string> used;
  std::string name;
  v1::EngineReplica old;
  {
    std::shared_lock gate(gate_);
    if (m.Serving() || HealthySource() == nullptr) return false;
    for (const auto& o : members_) used.insert(o->config.node());
    name = NewReplicaNameLocked();
    old = m.config;
  }
  std::string why;
  for (const v1::EngineReplica& spare : config_.spares()) {
    if (spare.node().empty() || used.count(spare.node()) > 0) continue;
    auto conn = wire::Dial(spare.address(), secret_, "engine " + config_.volume(), 3000);
    if (!conn.ok()) {
      why += "; " + spare.node() + ": " + conn.status().message();
      continue;
    }
    timeval tv{};
    tv.tv_sec = io_timeout_.count() / 1000;
    tv.tv_usec = (io_timeout_.count() % 1000) * 1000;
    setsockopt((*conn)->fd(), SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    setsockopt((*conn)->fd(), SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
    v1::ControlRequest create;
    create.mutable_create()->set_replica(name);
    create.mutable_create()->set_volume(config_.volume());
    create.mutable_create()->set_volume_uid(config_.volume_uid());
    create.mutable_create()->set_size_bytes(size_bytes_.load());
    create.mutable_create()->set_generation(1);
    create.mutable_create()->set_rebuilding(true);
    v1::ControlResponse created;
    Status st = wire::Call(**conn, create, &created);
    if (st.code() == StatusCode::kAlreadyExists) {
      // A replica of that name that is not this volume's (a leftover of a deleted volume of the
      // same name): its data must not be mistaken for a copy, so it goes.
      spdlog::warn("volume {}: removing replica {} left on {}: {}", config_.volume(), name,
                   spare.node(), st.message());
      v1::ControlRequest del;
      del.mutable_delete_()->set_replica(name);
      v1::ControlResponse deleted;
      st = wire::Call(**conn, del, &deleted);
      if (st.ok()) st = wire::Call(**conn, create, &created);
    }
    if (!st.ok()) {
      why += "; " + spare.node() + ": " + st.message();
      continue;
    }
    v1::EngineReplica fresh;
    fresh.set_name(name);
    fresh.set_node(spare.node());
    fresh.set_address(spare.address());
    std::unique_lock gate(gate_);
    if (m.Serving()) return false;
    const v1::EngineReplica previous = m.config;
    {
      std::lock_guard state(state_mu_);
      m.config = fresh;
      m.generation = created.info().meta().generation();
      retired_.push_back(old);
      ++membership_version_;
    }
    // The membership must be on disk before the new replica is used: an engine started later
    // from the old one would never rebuild it.
    if (Status st = PersistConfigLocked(); !st.ok()) {
      std::lock_guard state(state_mu_);
      m.config = previous;
      retired_.pop_back();
      --membership_version_;
      spdlog::error("volume {}: replica {} not replaced: {}", config_.volume(), old.name(),
                    st.ToString());
      *note = "replacing it failed: " + st.message();
      return false;
    }
    {
      std::lock_guard lock(m.control_mu);
      m.control.reset();
    }
    m.links.clear();
    {
      std::lock_guard state(state_mu_);
      m.failed_since_ms = NowUnixMs();
      m.message = "new replica on spare node " + spare.node() + ", replacing " + old.name() +
                  " on node " + old.node();
    }
    spdlog::warn(
        "volume {}: replica {} on {} failed for longer than {} ms: replaced by {} on "
        "spare node {} (membership version {})",
        config_.volume(), old.name(), old.node(), config_.replica_replenish_wait_ms(), name,
        spare.node(), membership_version_);
    return true;
  }
  *note = "failed for longer than the replenish wait (" +
          std::to_string(config_.replica_replenish_wait_ms()) +
          " ms) and no spare storage node can take its place (" +
          (config_.spares_size() == 0 ? std::string("none is configured")
                                      : "every spare holds a replica of this volume or did "
                                        "not answer" +
                                            why) +
          "); the volume stays degraded until " + old.node() + " is back";
  return false;
}

void EngineImpl::DeleteRetired() {
  const auto now = Clock::now();
  if (now < next_retired_attempt_) return;
  next_retired_attempt_ = now + std::chrono::seconds(5);
  std::vector<v1::EngineReplica> retired;
  {
    std::lock_guard state(state_mu_);
    retired = retired_;
  }
  std::vector<std::string> gone;
  for (const v1::EngineReplica& r : retired) {
    auto conn = wire::Dial(r.address(), secret_, "engine " + config_.volume(), 1000);
    if (!conn.ok()) continue;
    timeval tv{2, 0};
    setsockopt((*conn)->fd(), SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    v1::ControlRequest del;
    del.mutable_delete_()->set_replica(r.name());
    v1::ControlResponse response;
    if (wire::Call(**conn, del, &response).ok()) {
      spdlog::info("volume {}: deleted replaced replica {} on {}", config_.volume(), r.name(),
                   r.node());
      gone.push_back(r.name() + "@" + r.node());
    }
  }
  if (gone.empty()) return;
  std::unique_lock gate(gate_);
  {
    std::lock_guard state(state_mu_);
    std::erase_if(retired_, [&](const v1::EngineReplica& r) {
      return std::find(gone.begin(), gone.end(), r.name() + "@" + r.node()) != gone.end();
    });
    ++membership_version_;
  }
  if (Status st = PersistConfigLocked(); !st.ok()) {
    spdlog::warn("volume {}: {}", config_.volume(), st.ToString());
  }
}

Status EngineImpl::PersistConfigLocked() {
  const std::string& path = config_.config_file();
  if (path.empty()) return Status::OK();  // an engine without a file (tests): nothing to keep
  v1::EngineConfig next = config_;
  // Whoever starts an engine from this file later does so after this one stopped, cleanly or
  // not: that start resynchronises the members instead of trusting them.
  next.set_clean_start(false);
  next.clear_replicas();
  next.clear_retired();
  {
    std::lock_guard state(state_mu_);
    for (const auto& m : members_) *next.add_replicas() = m->config;
    for (const auto& r : retired_) *next.add_retired() = r;
    next.set_membership_version(membership_version_);
  }
  std::string data;
  if (!next.SerializeToString(&data)) return Internal("the EngineConfig does not serialize");
  return process::WriteFileAtomically(path, data).WithContext("config_file");
}

v1::EngineStatus EngineImpl::GetStatus() const {
  v1::EngineStatus s;
  s.set_volume(config_.volume());
  s.set_size_bytes(size_bytes_.load());
  s.set_write_quorum(write_quorum_);
  s.set_started_unix_ms(started_unix_ms_);
  s.set_read_ops(read_ops_);
  s.set_write_ops(write_ops_);
  s.set_read_bytes(read_bytes_);
  s.set_write_bytes(write_bytes_);
  s.set_flush_ops(flush_ops_);
  s.set_failed_ops(failed_ops_);
  if (scrubber_ != nullptr) {
    if (v1::ScrubStatus scrub = scrubber_->GetStatus(); scrub.id() != 0) *s.mutable_scrub() = scrub;
  }
  std::lock_guard lock(state_mu_);
  s.set_generation(generation_);
  s.set_membership_version(membership_version_);
  for (const auto& r : retired_) *s.add_retired() = r;
  int healthy = 0;
  for (const auto& m : members_) {
    auto* ms = s.add_members();
    ms->set_name(m->config.name());
    ms->set_node(m->config.node());
    ms->set_address(m->config.address());
    ms->set_state(m->state);
    ms->set_generation(m->generation);
    ms->set_message(m->message);
    ms->set_failed_since_unix_ms(m->failed_since_ms);
    if (m->state == v1::MEMBER_STATE_REBUILDING) {
      ms->set_rebuild_done_bytes(m->rebuild_done);
      ms->set_rebuild_total_bytes(m->rebuild_total);
    }
    healthy += m->state == v1::MEMBER_STATE_HEALTHY;
  }
  s.set_writable(healthy >= static_cast<int>(write_quorum_));
  return s;
}

// ---- Scrub (the loop is in engine_scrub.cc) ----

// One extent's healthy members for the scrubber; built and used under the shared gate and the
// extent's stripe lock.
class EngineImpl::ScrubAccess final : public ScrubExtent {
 public:
  ScrubAccess(EngineImpl* engine, std::vector<Member*> members, std::uint64_t offset,
              std::uint64_t length)
      : engine_(engine), members_(std::move(members)), offset_(offset), length_(length) {}

  std::size_t size() const override { return members_.size(); }
  const std::string& name(std::size_t i) const override { return members_[i]->config.name(); }

  std::vector<Result<std::string>> Hash() override {
    std::vector<Result<std::string>> out(members_.size(), Result<std::string>(Internal("")));
    std::vector<std::thread> threads;
    for (std::size_t i = 0; i < members_.size(); ++i) {
      threads.emplace_back([this, i, &out] { out[i] = HashOne(i); });
    }
    for (auto& t : threads) t.join();
    return out;
  }

  Result<std::string> HashOne(std::size_t i) override {
    v1::ControlRequest request;
    auto* hash = request.mutable_hash_extents();
    hash->set_replica(members_[i]->config.name());
    hash->set_offset(offset_);
    hash->set_length(length_);
    hash->set_extent_bytes(static_cast<std::uint32_t>(length_));
    v1::ControlResponse response;
    Status st = engine_->ControlCall(*members_[i], request, &response);
    if (st.ok() && response.hashes_size() != 1) {
      st = Internal("replica " + members_[i]->config.name() + " answered " +
                    std::to_string(response.hashes_size()) + " hashes for one extent");
    }
    if (!st.ok()) {
      Fail(i, st);
      return st;
    }
    return response.hashes(0);
  }

  Status Read(std::size_t i, std::span<std::uint8_t> out) override {
    return Data(i, wire::MsgType::kRead, {}, out);
  }

  Status Write(std::size_t i, std::span<const std::uint8_t> data) override {
    // All zeros: punched, as a rebuild copies them (the store then owns the blocks as zeros).
    const bool zero = std::all_of(data.begin(), data.end(), [](std::uint8_t b) { return b == 0; });
    return zero ? Data(i, wire::MsgType::kTrim, {}, {}) : Data(i, wire::MsgType::kWrite, data, {});
  }

  std::vector<std::pair<Member*, Status>> TakeFailures() {
    std::lock_guard lock(mu_);
    return std::move(failures_);
  }

 private:
  Status Data(std::size_t i, wire::MsgType type, std::span<const std::uint8_t> payload,
              std::span<std::uint8_t> read_into) {
    Batch batch;
    batch.outstanding = 1;
    Waiter w;
    w.batch = &batch;
    w.read_into = read_into;
    wire::Header h;
    h.type = type;
    h.flags = type == wire::MsgType::kRead ? 0u : static_cast<std::uint32_t>(wire::kFlagFua);
    h.offset = offset_;
    h.count = static_cast<std::uint32_t>(length_);
    h.generation = engine_->generation_;
    members_[i]->PickLink()->Submit(h, payload, &w);
    batch.Wait();
    if (!w.status.ok()) Fail(i, w.status);
    return w.status;
  }

  void Fail(std::size_t i, const Status& why) {
    std::lock_guard lock(mu_);
    failures_.emplace_back(members_[i], why);
  }

  EngineImpl* engine_;
  std::vector<Member*> members_;
  std::uint64_t offset_;
  std::uint64_t length_;
  std::mutex mu_;
  std::vector<std::pair<Member*, Status>> failures_;
};

int EngineImpl::HealthyMembers() {
  std::shared_lock gate(gate_);
  return HealthyCountLocked();
}

void EngineImpl::BeginScrub() {
  // Under the exclusive gate: no write that skipped the stripe locks is still in flight.
  std::unique_lock gate(gate_);
  ++scrubs_active_;
}

Status EngineImpl::WithExtent(std::uint64_t offset, std::uint64_t length,
                              const std::function<Status(ScrubExtent&)>& fn) {
  Status result;
  std::vector<std::pair<Member*, Status>> failures;
  {
    std::shared_lock gate(gate_);
    std::vector<Member*> healthy;
    for (auto& m : members_) {
      if (m->state == v1::MEMBER_STATE_HEALTHY) healthy.push_back(m.get());
    }
    std::vector<std::size_t> stripes;
    LockStripes(offset, length, &stripes);
    ScrubAccess access(this, std::move(healthy), offset, length);
    result = fn(access);
    UnlockStripes(stripes);
    failures = access.TakeFailures();
  }
  if (!failures.empty()) FailMembers(failures);
  return result;
}

Status EngineImpl::Scrub(const v1::EngineScrub& request) {
  {
    std::lock_guard lock(stop_mu_);
    if (stopping_) return Unavailable("volume " + config_.volume() + ": the engine is stopping");
  }
  return scrubber_->Start(request);
}

// ---- Engine ----

Result<std::unique_ptr<Engine>> Engine::Start(const v1::EngineConfig& config, std::string secret) {
  auto impl = std::make_unique<EngineImpl>(config, std::move(secret));
  HCI_RETURN_NOT_OK(impl->Init());
  return std::unique_ptr<Engine>(new Engine(std::move(impl)));
}

Engine::Engine(std::unique_ptr<EngineImpl> impl) : impl_(std::move(impl)) {}
Engine::~Engine() = default;

std::uint64_t Engine::size_bytes() const { return impl_->size_bytes(); }

Status Engine::Read(std::uint64_t offset, std::span<std::uint8_t> out) {
  return impl_->Read(offset, out);
}

Status Engine::Write(std::uint64_t offset, std::span<const std::uint8_t> data, bool fua) {
  return impl_->Mutate(wire::MsgType::kWrite, offset, data.size(), data, fua);
}

Status Engine::WriteZeroes(std::uint64_t offset, std::uint64_t length, bool punch, bool fua) {
  return impl_->Mutate(punch ? wire::MsgType::kTrim : wire::MsgType::kWriteZeroes, offset, length,
                       {}, fua);
}

Status Engine::Flush() { return impl_->Mutate(wire::MsgType::kFlush, 0, 0, {}, false); }

v1::EngineStatus Engine::GetStatus() const { return impl_->GetStatus(); }

Status Engine::Snapshot(const std::string& name) { return impl_->Snapshot(name); }

Status Engine::Expand(std::uint64_t size_bytes) { return impl_->Expand(size_bytes); }

Status Engine::Scrub(const v1::EngineScrub& request) { return impl_->Scrub(request); }

}  // namespace hci::replicated
