// Clones: a new volume's replicas filled from another volume's snapshot or current content
// (docs/replicated-plugin.md, "Clones"). The copy runs in the plugin process over the replica
// protocol: one source replica, opened read-only at a snapshot (or its head when the source is
// detached), is read extent by extent and every non-zero chunk is written to each new replica.
#include <sys/socket.h>
#include <sys/time.h>

#include <algorithm>
#include <boost/scope_exit.hpp>
#include <future>
#include <random>
#include <set>
#include <span>
#include <tuple>
#include <utility>

#include "replicated_internal.h"
#include "wire/replica_wire.h"

namespace hci::replicated::plugin {
namespace {

using std::chrono::milliseconds;
using wire::MsgType;

constexpr char kVolumeKind[] = "Volume";
// Bytes per read of the source: large enough that a round trip is small next to the transfer,
// well under the protocol's 32 MiB frame limit.
constexpr std::uint64_t kCopyChunk = 4ull << 20;
// Bytes per TRIM of a target's leftovers (a frame's count is 32 bits).
constexpr std::uint64_t kTrimChunk = 1ull << 30;
// Granularity of the targets' hash comparison (HashExtents.extent_bytes).
constexpr std::uint32_t kHashExtent = 64u << 20;
// Control requests that write metadata or read much data on a node; also the deadline of one
// data request.
constexpr milliseconds kSlowCall{60000};
// A read of the source refused as stale (the attached source's engine moved to a new
// generation) is retried after re-opening the replica, at most this many times in a row.
constexpr int kStaleRetries = 50;

// A byte range of the volume.
struct Extent {
  std::uint64_t offset = 0;
  std::uint64_t length = 0;
};

std::string Describe(const CloneSource& source) {
  const std::string volume = "volume " + Quote(source.volume.obj.metadata().name());
  return source.snapshot.empty() ? volume : "snapshot " + Quote(source.snapshot) + " of " + volume;
}

const rpb::Layer* SnapshotLayer(const rpb::ReplicaMeta& meta, std::string_view name) {
  for (const auto& layer : meta.layers()) {
    if (!layer.removed() && layer.snapshot() == name) return &layer;
  }
  return nullptr;
}

void SetTimeouts(int fd, milliseconds timeout) {
  timeval tv{};
  tv.tv_sec = static_cast<time_t>(timeout.count() / 1000);
  tv.tv_usec = static_cast<suseconds_t>(timeout.count() % 1000) * 1000;
  ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
  ::setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
}

// One authenticated connection bound to one replica (ControlRequest.open) for data requests,
// answered in order. Not for sharing between threads.
class ReplicaLink {
 public:
  static Result<std::unique_ptr<ReplicaLink>> Open(const Options& options, NodeClient& node,
                                                   const std::string& client,
                                                   const std::string& replica,
                                                   const std::string& snapshot) {
    const std::string who = "replica " + replica + " on node " + node.node();
    auto dialed = wire::Dial(node.address(), options.secret, client,
                             static_cast<int>(options.io_timeout.count()));
    if (!dialed.ok()) {
      if (dialed.status().code() == StatusCode::kPermissionDenied) {
        return dialed.status().WithContext(who);
      }
      return Unavailable(who + ": node " + node.node() + " (" + node.address() +
                         ") is unreachable: " + dialed.status().message());
    }
    std::unique_ptr<ReplicaLink> link(
        new ReplicaLink(std::move(dialed).MoveValueUnsafe(), who, replica, snapshot));
    SetTimeouts(link->conn_->fd(), kSlowCall);
    HCI_RETURN_NOT_OK(link->Reopen());
    return link;
  }

  const std::string& who() const { return who_; }
  std::uint64_t generation() const { return generation_; }
  const rpb::ReplicaMeta& meta() const { return meta_; }

  // (Re-)binds the connection to the replica and learns its current generation. Only with no
  // data request in flight.
  Status Reopen() {
    rpb::ControlRequest open;
    open.mutable_open()->set_replica(replica_);
    open.mutable_open()->set_snapshot(snapshot_);
    rpb::ControlResponse response;
    Status st = wire::Call(*conn_, open, &response);
    if (!st.ok()) {
      return response.code() != 0 ? st.WithContext(who_)
                                  : Unavailable(who_ + ": opening it failed: " + st.message());
    }
    meta_ = response.info().meta();
    generation_ = meta_.generation();
    return Status::OK();
  }

  // Sends one data request at the replica's generation.
  Status Send(MsgType type, std::uint64_t offset, std::uint64_t count,
              std::span<const std::uint8_t> payload = {}) {
    wire::Header h;
    h.type = type;
    h.handle = next_handle_++;
    h.offset = offset;
    h.count = static_cast<std::uint32_t>(count);
    h.generation = generation_;
    Status st = conn_->Send(h, payload);
    if (!st.ok()) return Unavailable(who_ + ": " + st.message());
    pending_.push_back(h.handle);
    return Status::OK();
  }

  // Receives the answer to the oldest request in flight (a READ's data into `into`) and returns
  // its status.
  Status Await(std::span<std::uint8_t> into = {}) {
    wire::Header h;
    Status st = conn_->ReceiveInto(&h, into);
    if (!st.ok()) return Unavailable(who_ + ": " + st.message());
    if (pending_.empty() || h.handle != pending_.front() || (h.flags & wire::kFlagResponse) == 0) {
      conn_->Shutdown();
      return Internal(who_ + ": answer to handle " + std::to_string(h.handle) + " out of order");
    }
    pending_.erase(pending_.begin());
    if (h.status != 0) {
      return wire::ErrnoToStatus(h.status, who_ + ": " + std::string(wire::MsgTypeName(h.type)) +
                                               " at offset " + std::to_string(h.offset));
    }
    if (h.type == MsgType::kRead && h.length != into.size()) {
      conn_->Shutdown();
      return Internal(who_ + ": READ answered " + std::to_string(h.length) + " bytes, not " +
                      std::to_string(into.size()));
    }
    return Status::OK();
  }

 private:
  ReplicaLink(std::unique_ptr<wire::Connection> conn, std::string who, std::string replica,
              std::string snapshot)
      : conn_(std::move(conn)),
        who_(std::move(who)),
        replica_(std::move(replica)),
        snapshot_(std::move(snapshot)) {}

  std::unique_ptr<wire::Connection> conn_;
  std::string who_;
  std::string replica_;
  std::string snapshot_;
  rpb::ReplicaMeta meta_;
  std::uint64_t generation_ = 0;
  std::uint64_t next_handle_ = 1;
  std::vector<std::uint64_t> pending_;
};

// One member's `get`.
struct View {
  Member member;
  Status status;
  rpb::ReplicaMeta meta;
};

std::vector<View> InspectAll(const Options& options, const NodeLookup& node,
                             const std::vector<Member>& members) {
  std::vector<std::future<View>> pending;
  for (const Member& m : members) {
    pending.push_back(std::async(std::launch::async, [&options, &node, m] {
      View v{m, Status(), {}};
      rpb::ControlRequest get;
      get.mutable_get()->set_replica(m.name);
      rpb::ControlResponse response;
      v.status = node(m).Call(get, &response, options.io_timeout);
      if (v.status.ok()) v.meta = response.info().meta();
      return v;
    }));
  }
  std::vector<View> out;
  for (auto& p : pending) out.push_back(p.get());
  return out;
}

// The replica to read `snapshot` (or, when empty, the current content) of `rec` from: one that
// has it and is not a rebuild target; a healthy member of the running engine first (when the
// volume is attached), then the highest generation, ties by name. A snapshot layer never
// changes, so any replica holding it will do; the head is only read while the volume is
// detached, where the highest generation holds every acknowledged write.
Result<View> ChooseSource(const Options& options, const NodeLookup& node, const VolumeRecord& rec,
                          const std::string& snapshot, const std::string& field) {
  const std::string& name = rec.obj.metadata().name();
  std::set<std::string> healthy;
  if (!rec.obj.status().attached_to().empty()) {
    rpb::EngineRequest request;
    request.set_status(true);
    auto answer = CallEngine(EnginePathsFor(options.state_dir, name).control_socket, request,
                             options.io_timeout);
    if (answer.ok()) {
      for (const auto& m : answer->status().members()) {
        if (m.state() == rpb::MEMBER_STATE_HEALTHY) healthy.insert(m.name());
      }
    }
  }
  std::vector<View> views = InspectAll(options, node, rec.members);
  const View* best = nullptr;
  auto rank = [&](const View& v) {
    return std::make_tuple(healthy.count(v.member.name) > 0, v.meta.generation());
  };
  std::string why;
  bool all_answered = true;
  for (const View& v : views) {
    if (!v.status.ok()) {
      all_answered = false;
      why += (why.empty() ? "" : "; ") + v.member.name + ": " + v.status.message();
      continue;
    }
    if (v.meta.rebuilding()) continue;
    if (!snapshot.empty() && SnapshotLayer(v.meta, snapshot) == nullptr) continue;
    if (best == nullptr || rank(v) > rank(*best) ||
        (rank(v) == rank(*best) && v.member.name < best->member.name)) {
      best = &v;
    }
  }
  if (best != nullptr) return *best;
  if (!snapshot.empty() && all_answered) {
    return NotFound(field + ": snapshot " + Quote(snapshot) + " of volume " + Quote(name) +
                    " does not exist");
  }
  return Unavailable(field + ": no up-to-date replica of volume " + Quote(name) +
                     (snapshot.empty() ? "" : " holding snapshot " + Quote(snapshot)) + " answers" +
                     (why.empty() ? "" : " (" + why + ")"));
}

std::uint64_t SizeOf(const View& view, const std::string& snapshot) {
  if (!snapshot.empty()) {
    const rpb::Layer* layer = SnapshotLayer(view.meta, snapshot);
    if (layer != nullptr && layer->size_bytes() != 0) return layer->size_bytes();
  }
  return view.meta.size_bytes();
}

// Random, so that clones of the same attached volume never share their temporary snapshot.
std::string TemporarySnapshotName() {
  std::random_device random;
  std::uniform_int_distribution<std::uint32_t> digit(0, 15);
  std::string name = "hci-clone-";
  for (int i = 0; i < 16; ++i) name += "0123456789abcdef"[digit(random)];
  return name;
}

bool AllZero(std::span<const std::uint8_t> data) {
  return std::all_of(data.begin(), data.end(), [](std::uint8_t b) { return b == 0; });
}

// `extents` cut into pieces of at most `chunk` bytes, clipped to `limit`.
std::vector<Extent> Split(const rpb::ExtentList& extents, std::uint64_t limit,
                          std::uint64_t chunk) {
  std::vector<Extent> out;
  for (int i = 0; i < extents.offsets_size() && i < extents.lengths_size(); ++i) {
    const std::uint64_t end = std::min(extents.offsets(i) + extents.lengths(i), limit);
    for (std::uint64_t off = extents.offsets(i); off < end; off += chunk) {
      out.push_back(Extent{off, std::min(chunk, end - off)});
    }
  }
  return out;
}

Result<rpb::ExtentList> Allocated(NodeClient& node, const std::string& replica,
                                  const std::string& snapshot) {
  rpb::ControlRequest changed;
  changed.mutable_changed_between()->set_replica(replica);
  changed.mutable_changed_between()->set_to_snapshot(snapshot);
  rpb::ControlResponse response;
  HCI_RETURN_NOT_OK(node.Call(changed, &response, kSlowCall)
                        .WithContext("replica " + replica + " on node " + node.node()));
  return response.extents();
}

// The SHA-256 of every kHashExtent piece of `extents` on `replica`, in order.
Result<std::vector<std::string>> HashesOf(NodeClient& node, const std::string& replica,
                                          const std::vector<Extent>& extents) {
  std::vector<std::string> out;
  for (const Extent& e : extents) {
    rpb::ControlRequest hash;
    hash.mutable_hash_extents()->set_replica(replica);
    hash.mutable_hash_extents()->set_offset(e.offset);
    hash.mutable_hash_extents()->set_length(e.length);
    hash.mutable_hash_extents()->set_extent_bytes(kHashExtent);
    rpb::ControlResponse response;
    HCI_RETURN_NOT_OK(node.Call(hash, &response, kSlowCall)
                          .WithContext("replica " + replica + " on node " + node.node()));
    for (const auto& h : response.hashes()) out.push_back(h);
  }
  return out;
}

class Cloner {
 public:
  Cloner(PluginContext& context, const Options& options, const NodeLookup& node,
         const CloneSource& source, const std::string& volume, std::uint64_t size_bytes,
         const std::vector<Member>& targets, OperationControl& op)
      : ctx_(context),
        options_(options),
        node_(node),
        source_(source),
        volume_(volume),
        size_bytes_(size_bytes),
        targets_(targets),
        op_(op) {}

  Status Run() {
    const VolumeRecord& rec = source_.volume;
    const std::string& source_name = rec.obj.metadata().name();
    std::string snapshot = source_.snapshot;
    std::string temporary;
    if (snapshot.empty() && !rec.obj.status().attached_to().empty()) {
      // The guest keeps writing: freeze one point of its write stream on every healthy replica.
      temporary = TemporarySnapshotName();
      rpb::EngineRequest take;
      take.set_snapshot(temporary);
      op_.SetProgress(0, 0, "taking a temporary snapshot of the attached source");
      HCI_RETURN_NOT_OK(AskAttachedEngine(options_.state_dir, source_name, take,
                                          "the temporary snapshot for the clone was refused",
                                          kSlowCall, source_.field)
                            .status());
      snapshot = temporary;
    }
    BOOST_SCOPE_EXIT_ALL(&) {
      if (!temporary.empty()) DropTemporary(temporary);
    };
    HCI_ASSIGN_OR_RAISE(View from, ChooseSource(options_, node_, rec, snapshot, source_.field));
    return Copy(from, snapshot);
  }

  std::uint64_t copied() const { return copied_; }
  std::uint64_t allocated() const { return allocated_; }
  const std::string& from() const { return from_; }
  // How long the copy (reads, writes, flushes) and the hash comparison took.
  std::int64_t copy_ms() const { return copy_ms_; }
  std::int64_t verify_ms() const { return verify_ms_; }

 private:
  // Deletes the temporary snapshot from every replica (merging its layer back), whatever
  // happened to the copy. A replica that does not answer keeps it (logged; it shows in
  // ListSnapshots and DeleteSnapshot removes it).
  void DropTemporary(const std::string& temporary) {
    for (const Member& m : source_.volume.members) {
      rpb::ControlRequest del;
      del.mutable_delete_snapshot()->set_replica(m.name);
      del.mutable_delete_snapshot()->set_snapshot(temporary);
      rpb::ControlResponse response;
      Status st = node_(m).Call(del, &response, kSlowCall);
      if (!st.ok() && st.code() != StatusCode::kNotFound) {
        ctx_.logger().Warn(kVolumeKind, source_.volume.obj.metadata().name(),
                           "temporary snapshot " + Quote(temporary) + " of the clone " +
                               Quote(volume_) + " is left on replica " + m.name + ": " +
                               st.message() + "; DeleteSnapshot removes it");
      }
    }
  }

  Status Copy(const View& from, const std::string& snapshot) {
    from_ = from.member.name + " on node " + from.member.node;
    const std::uint64_t source_size = SizeOf(from, snapshot);
    if (source_size > size_bytes_) {
      // The record said less than the replica holds (an expansion in progress).
      return FailedPrecondition(source_.field + ": " + Describe(source_) + " is " +
                                std::to_string(source_size) + " bytes on replica " +
                                from.member.name + ", more than the clone's " +
                                std::to_string(size_bytes_) + "; retry");
    }
    const std::string client = "plugin clone " + volume_;
    HCI_ASSIGN_OR_RAISE(rpb::ExtentList held,
                        Allocated(node_(from.member), from.member.name, snapshot));
    const std::vector<Extent> chunks = Split(held, source_size, kCopyChunk);
    for (const Extent& c : chunks) allocated_ += c.length;

    HCI_ASSIGN_OR_RAISE(auto reader, ReplicaLink::Open(options_, node_(from.member), client,
                                                       from.member.name, snapshot));
    std::vector<std::unique_ptr<ReplicaLink>> writers;
    for (const Member& t : targets_) {
      HCI_ASSIGN_OR_RAISE(auto w, ReplicaLink::Open(options_, node_(t), client, t.name, ""));
      HCI_RETURN_NOT_OK(ClearLeftovers(t, *w));
      writers.push_back(std::move(w));
    }

    const auto began = std::chrono::steady_clock::now();
    // Double buffered: the next chunk is read while the current one is written.
    std::vector<std::uint8_t> buffers[2] = {std::vector<std::uint8_t>(kCopyChunk),
                                            std::vector<std::uint8_t>(kCopyChunk)};
    std::uint64_t done = 0;
    op_.SetProgress(0, allocated_, "copying from replica " + from_);
    if (!chunks.empty())
      HCI_RETURN_NOT_OK(reader->Send(MsgType::kRead, chunks[0].offset, chunks[0].length));
    for (std::size_t i = 0; i < chunks.size(); ++i) {
      const Extent& c = chunks[i];
      std::span<std::uint8_t> data(buffers[i % 2].data(), c.length);
      HCI_RETURN_NOT_OK(FinishRead(*reader, c, data));
      if (i + 1 < chunks.size()) {
        HCI_RETURN_NOT_OK(reader->Send(MsgType::kRead, chunks[i + 1].offset, chunks[i + 1].length));
      }
      // A new replica reads zeros where nothing was written: zeros are not copied.
      if (!AllZero(data)) {
        for (auto& w : writers)
          HCI_RETURN_NOT_OK(w->Send(MsgType::kWrite, c.offset, c.length, data));
        for (auto& w : writers) HCI_RETURN_NOT_OK(w->Await());
        copied_ += c.length;
      }
      done += c.length;
      op_.SetProgress(done, allocated_);
      if (op_.cancel_requested()) return Cancelled("the clone was cancelled");
    }
    // Durable before the replicas count as a copy.
    for (auto& w : writers) HCI_RETURN_NOT_OK(w->Send(MsgType::kFlush, 0, 0));
    for (auto& w : writers) HCI_RETURN_NOT_OK(w->Await());
    const auto copied_at = std::chrono::steady_clock::now();
    copy_ms_ = std::chrono::duration_cast<milliseconds>(copied_at - began).count();
    HCI_RETURN_NOT_OK(Verify(chunks));
    verify_ms_ =
        std::chrono::duration_cast<milliseconds>(std::chrono::steady_clock::now() - copied_at)
            .count();
    // From here on the replicas are whole: an engine may serve them.
    for (const Member& t : targets_) {
      rpb::ControlRequest set;
      set.mutable_set_generation()->set_replica(t.name);
      set.mutable_set_generation()->set_expected_generation(1);
      set.mutable_set_generation()->set_generation(1);
      set.mutable_set_generation()->set_rebuilding(false);
      rpb::ControlResponse response;
      HCI_RETURN_NOT_OK(node_(t)
                            .Call(set, &response, kSlowCall)
                            .WithContext("replica " + t.name + " on node " + t.node));
    }
    return Status::OK();
  }

  // Receives the read of `c`; a read refused as stale (the attached source's engine started a
  // new generation) is sent again at the replica's new generation.
  Status FinishRead(ReplicaLink& reader, const Extent& c, std::span<std::uint8_t> data) {
    for (int attempt = 0;; ++attempt) {
      Status st = reader.Await(data);
      if (st.ok()) return st;
      if (st.code() != StatusCode::kFailedPrecondition || attempt >= kStaleRetries) {
        return st.WithContext(source_.field + ": reading " + Describe(source_));
      }
      HCI_RETURN_NOT_OK(reader.Reopen());
      HCI_RETURN_NOT_OK(reader.Send(MsgType::kRead, c.offset, c.length));
    }
  }

  // A replica of this name left by an earlier attempt that stopped half way (the plugin died)
  // is found again by the create; what it holds is trimmed so that only this copy's data stays.
  Status ClearLeftovers(const Member& target, ReplicaLink& writer) {
    HCI_ASSIGN_OR_RAISE(rpb::ExtentList held, Allocated(node_(target), target.name, ""));
    if (held.offsets_size() == 0) return Status::OK();
    ctx_.logger().Info(kVolumeKind, volume_,
                       "replica " + target.name + " holds data of an earlier attempt; trimming it");
    for (const Extent& e : Split(held, size_bytes_, kTrimChunk)) {
      HCI_RETURN_NOT_OK(writer.Send(MsgType::kTrim, e.offset, e.length));
      HCI_RETURN_NOT_OK(writer.Await());
    }
    return Status::OK();
  }

  // Every target must hold the same bytes where the source holds data (the rest was never
  // written on any of them).
  Status Verify(const std::vector<Extent>& chunks) {
    if (targets_.size() < 2 || chunks.empty()) return Status::OK();
    op_.SetProgress(allocated_, allocated_, "comparing the new replicas' extent hashes");
    // Whole extents again, so that a node hashes few large ranges.
    std::vector<Extent> extents;
    for (const Extent& c : chunks) {
      if (!extents.empty() && extents.back().offset + extents.back().length == c.offset &&
          extents.back().length + c.length <= kHashExtent * 16ull) {
        extents.back().length += c.length;
      } else {
        extents.push_back(c);
      }
    }
    std::vector<std::future<Result<std::vector<std::string>>>> pending;
    for (const Member& t : targets_) {
      pending.push_back(std::async(
          std::launch::async, [this, &extents, t] { return HashesOf(node_(t), t.name, extents); }));
    }
    std::vector<std::vector<std::string>> hashes;
    Status failed;
    for (auto& p : pending) {
      auto h = p.get();
      if (!h.ok() && failed.ok()) failed = h.status();
      if (h.ok()) hashes.push_back(std::move(h).MoveValueUnsafe());
    }
    HCI_RETURN_NOT_OK(failed);
    for (std::size_t k = 1; k < hashes.size(); ++k) {
      if (hashes[k] != hashes[0]) {
        return DataLoss("replicas " + targets_[0].name + " and " + targets_[k].name +
                        " of the clone differ after the copy (extent hashes)");
      }
    }
    return Status::OK();
  }

  PluginContext& ctx_;
  const Options& options_;
  const NodeLookup& node_;
  const CloneSource& source_;
  const std::string& volume_;
  const std::uint64_t size_bytes_;
  const std::vector<Member>& targets_;
  OperationControl& op_;
  std::uint64_t allocated_ = 0;
  std::uint64_t copied_ = 0;
  std::string from_;
  std::int64_t copy_ms_ = 0;
  std::int64_t verify_ms_ = 0;
};

}  // namespace

Result<std::uint64_t> CloneSourceSize(const Options& options, const NodeLookup& node,
                                      const CloneSource& source) {
  const VolumeRecord& rec = source.volume;
  const std::string& name = rec.obj.metadata().name();
  if (rec.obj.status().phase() == api::VOLUME_PHASE_DELETING) {
    return FailedPrecondition(source.field + ": volume " + Quote(name) + " is being deleted");
  }
  HCI_RETURN_NOT_OK(NoPendingRevert(rec).WithContext(source.field));
  if (source.snapshot.empty()) return rec.obj.spec().size_bytes();
  HCI_ASSIGN_OR_RAISE(
      View view, ChooseSource(options, node, rec, source.snapshot, source.field + ".snapshot"));
  return SizeOf(view, source.snapshot);
}

Status CloneInto(PluginContext& context, const Options& options, const NodeLookup& node,
                 const CloneSource& source, const std::string& volume, std::uint64_t size_bytes,
                 const std::vector<Member>& targets) {
  OperationInfo info;
  info.kind = "CloneVolume";
  info.object.set_kind(kVolumeKind);
  info.object.set_name(volume);
  OperationControl op = context.operations().Start(info);
  const auto began = std::chrono::steady_clock::now();
  Cloner cloner(context, options, node, source, volume, size_bytes, targets, op);
  Status st = cloner.Run();
  op.Finish(st);
  if (!st.ok()) {
    context.logger().Warn(kVolumeKind, volume,
                          "cloning " + Describe(source) + " failed: " + st.message());
    return st;
  }
  const auto ms =
      std::chrono::duration_cast<milliseconds>(std::chrono::steady_clock::now() - began).count();
  context.events().Publish(
      MakeEvent(api::EVENT_TYPE_NORMAL, kVolumeKind, volume, "VolumeCloned",
                "cloned from " + Describe(source) + " (replica " + cloner.from() +
                    "): " + std::to_string(cloner.allocated()) + " allocated bytes read, " +
                    std::to_string(cloner.copied()) + " bytes written to each of " +
                    std::to_string(targets.size()) + " replicas in " + std::to_string(ms) +
                    " ms (copy " + std::to_string(cloner.copy_ms()) + " ms, hash comparison " +
                    std::to_string(cloner.verify_ms()) + " ms)"));
  return Status::OK();
}

}  // namespace hci::replicated::plugin
