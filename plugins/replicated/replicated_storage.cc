// The replicated StorageBackend: volumes of N replicas on N storage nodes (each an
// hci-replica-server), attached through one engine process per volume (nbdkit with
// nbdkit-hci-engine-plugin.so) that QEMU reaches over NBD on a unix socket.
// docs/replicated-plugin.md describes the behaviour; docs/replicated-design.md the data path.
//
// Locking: `mu_` guards the maps below it and is held only briefly, never across a network call
// or a process start. Each volume's `op` mutex serialises the mutating calls on that volume and
// is held across their network calls. Order: a volume's op mutex, then mu_.
#include <google/protobuf/util/time_util.h>
#include <unistd.h>

#include <algorithm>
#include <boost/scope_exit.hpp>
#include <condition_variable>
#include <filesystem>
#include <fstream>
#include <future>
#include <optional>
#include <set>
#include <thread>
#include <utility>

#include "hci/compute.h"
#include "hci/names.h"
#include "hci/object_meta.h"
#include "replicated_internal.h"

namespace hci::replicated::plugin {
namespace {

using std::chrono::milliseconds;

constexpr char kVolumeKind[] = "Volume";
constexpr char kSnapshotKind[] = "Snapshot";
// How long an attach waits for the engine to reach a read quorum and answer.
constexpr milliseconds kEngineStartTimeout{30000};
// How long the engine handed to the engine's own start-up wait (less than the above, so that
// the engine's own error reaches its log before the plugin gives up).
constexpr std::uint32_t kEngineReplicaWaitMs = 20000;
constexpr milliseconds kEngineStopGrace{30000};
// Control requests that write metadata or files on a node (create, delete, snapshot, revert).
constexpr milliseconds kSlowCall{60000};
// How often attached volumes are observed for events and rebuild operations (WatchLoop).
constexpr milliseconds kWatchInterval{1000};

std::int64_t NowUnixMs() {
  return std::chrono::duration_cast<milliseconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

google::protobuf::Timestamp FromUnixMs(std::int64_t ms) {
  return google::protobuf::util::TimeUtil::MillisecondsToTimestamp(ms);
}

Status ValidateSpec(const api::VolumeSpec& spec) {
  const api::VolumeSource& source = spec.source();
  switch (source.source_case()) {
    case api::VolumeSource::kImage:
      HCI_RETURN_NOT_OK(ValidateName("spec.source.image", source.image()));
      if (spec.linked_clone()) {
        return InvalidArgument(
            "spec.linked_clone: the replicated backend copies the image into every replica; it "
            "makes no linked clones");
      }
      break;
    case api::VolumeSource::kVolume:
      HCI_RETURN_NOT_OK(ValidateName("spec.source.volume", source.volume()));
      break;
    case api::VolumeSource::kSnapshot:
      HCI_RETURN_NOT_OK(ValidateName("spec.source.snapshot.volume", source.snapshot().volume()));
      HCI_RETURN_NOT_OK(
          ValidateName("spec.source.snapshot.snapshot", source.snapshot().snapshot()));
      break;
    case api::VolumeSource::SOURCE_NOT_SET:
      if (spec.size_bytes() == 0) {
        return InvalidArgument("spec.size_bytes: must be greater than 0 for a blank volume");
      }
      break;
  }
  if (spec.size_bytes() % kBlockBytes != 0) {
    return InvalidArgument("spec.size_bytes: " + std::to_string(spec.size_bytes()) +
                           " is not a multiple of 4096");
  }
  if (spec.size_bytes() > kMaxVolumeBytes) {
    return InvalidArgument("spec.size_bytes: " + std::to_string(spec.size_bytes()) +
                           " is more than the largest volume this backend creates (" +
                           std::to_string(kMaxVolumeBytes) + " bytes, 1 PiB)");
  }
  if (spec.linked_clone()) {
    return InvalidArgument("spec.linked_clone: only a volume from an image can be a linked clone");
  }
  return Status();
}

std::string Plural(std::uint64_t n, std::string_view word) {
  return std::to_string(n) + " " + std::string(word) + (n == 1 ? "" : "s");
}

// What one replica's node said about it.
struct ReplicaView {
  Member member;
  Status status;          // OK, or why the node did not answer
  rpb::ReplicaInfo info;  // when OK
};

api::ReplicaState StateOf(rpb::MemberState state) {
  switch (state) {
    case rpb::MEMBER_STATE_HEALTHY:
      return api::REPLICA_STATE_HEALTHY;
    case rpb::MEMBER_STATE_REBUILDING:
      return api::REPLICA_STATE_REBUILDING;
    case rpb::MEMBER_STATE_FAILED:
    case rpb::MEMBER_STATE_OFFLINE:
      return api::REPLICA_STATE_FAILED;
    default:
      return api::REPLICA_STATE_UNSPECIFIED;
  }
}

const rpb::Layer* FindSnapshotLayer(const rpb::ReplicaMeta& meta, std::string_view name) {
  for (const auto& layer : meta.layers()) {
    if (!layer.removed() && !layer.snapshot().empty() && layer.snapshot() == name) return &layer;
  }
  return nullptr;
}

// The nearest ancestor of `layer` that is a live snapshot ("" when none): what ChangedBetween
// measures the layer's own data from.
std::string LiveParentSnapshot(const rpb::ReplicaMeta& meta, const rpb::Layer& layer) {
  std::uint64_t parent = layer.parent();
  for (int guard = 0; parent != 0 && guard < meta.layers_size(); ++guard) {
    const rpb::Layer* p = nullptr;
    for (const auto& l : meta.layers()) {
      if (l.id() == parent) p = &l;
    }
    if (p == nullptr) return "";
    if (!p->removed() && !p->snapshot().empty()) return p->snapshot();
    parent = p->parent();
  }
  return "";
}

class ReplicatedStorage final : public StorageBackend {
 public:
  ReplicatedStorage(PluginContext& context, Options options, std::vector<VolumeRecord> records)
      : ctx_(context),
        options_(std::move(options)),
        records_dir_(options_.state_dir + "/volumes"),
        scrubs_(context, options_.io_timeout,
                [this](const std::string& volume, const api::ScrubResult& result) {
                  ScrubFinished(volume, result);
                }) {
    for (const NodeOption& n : options_.nodes) {
      nodes_.emplace(n.name, std::make_unique<NodeClient>(n.name, n.address, options_.secret,
                                                          options_.io_timeout));
    }
    for (auto& r : records) {
      std::string name = r.obj.metadata().name();
      volumes_.emplace(std::move(name), std::move(r));
    }
    watcher_ = std::thread([this] { WatchLoop(); });
  }

  // The watcher and the scrub threads call back into this object: they end before any member
  // goes.
  ~ReplicatedStorage() override {
    {
      std::lock_guard lock(watch_mu_);
      watch_stop_ = true;
    }
    watch_cv_.notify_all();
    watcher_.join();
    for (auto& [key, op] : rebuild_ops_) {
      op.control.Finish(Aborted("the storage backend closed; the rebuild goes on in the engine"));
    }
    scrubs_.Shutdown();
  }

  api::StorageCapabilities Capabilities() const override {
    api::StorageCapabilities caps;
    caps.set_snapshots(true);
    caps.set_revert(true);
    caps.set_clone(true);
    caps.set_from_image(true);
    caps.set_expand(true);
    caps.set_online_expand(true);
    caps.set_replication(true);
    caps.set_max_replicas(static_cast<std::uint32_t>(options_.nodes.size()));
    caps.set_changed_blocks(true);
    caps.set_trim(true);
    caps.set_thin_provisioning(true);
    caps.set_scrub(true);
    return caps;
  }

  Result<std::string> Metrics() override {
    std::vector<api::Volume> volumes;
    std::map<std::string, rpb::EngineStatus> engines;
    for (const VolumeRecord& rec : AllRecords()) {
      std::optional<rpb::EngineStatus> engine;
      volumes.push_back(Observe(rec, &engine));
      if (engine) engines.emplace(rec.obj.metadata().name(), *engine);
    }
    return RenderMetrics(volumes, engines);
  }

  // -------------------------------------------------------------------------------------------
  // Volumes

  Result<api::Volume> CreateVolume(const api::CreateVolumeRequest& request) override {
    const std::string& name = request.metadata().name();
    HCI_RETURN_NOT_OK(ValidateName("metadata.name", name));
    if (auto existing = Find(name)) return Existing(*existing, request);
    const api::VolumeSpec& spec = request.spec();
    HCI_RETURN_NOT_OK(ValidateSpec(spec));
    const std::uint32_t count =
        spec.replica_count() != 0 ? spec.replica_count() : options_.replicas;
    const std::size_t configured = options_.nodes.size();
    if (count > configured) {
      return ResourceExhausted("spec.replica_count: " + Plural(count, "replica") + " need " +
                               Plural(count, "storage node") + ", " + std::to_string(configured) +
                               (configured == 1 ? " is" : " are") + " configured");
    }
    const std::uint32_t quorum = options_.write_quorum != 0 ? options_.write_quorum : count / 2 + 1;
    if (quorum > count) {
      return InvalidArgument("spec.replica_count: " + Plural(count, "replica") +
                             " cannot reach the write_quorum option (" + std::to_string(quorum) +
                             ")");
    }
    // A clone (replicated_clone.cc): its source stays as it is, its op mutex held, until the
    // copy is done.
    std::uint64_t size = spec.size_bytes();
    std::optional<CloneSource> clone;
    std::optional<ImageSource> image;
    std::unique_lock<std::mutex> source_lock;
    const NodeLookup lookup = [this](const Member& m) -> NodeClient& { return Node(m); };
    if (spec.source().source_case() == api::VolumeSource::kImage) {
      HCI_ASSIGN_OR_RAISE(image, ResolveImage(ctx_, spec.source().image()));
      const std::uint64_t image_size =
          (image->virtual_size_bytes + kBlockBytes - 1) / kBlockBytes * kBlockBytes;
      if (size == 0) {
        size = image_size;
      } else if (size < image_size) {
        return InvalidArgument("spec.size_bytes: " + std::to_string(size) +
                               " is smaller than image " + Quote(image->name) + " (" +
                               std::to_string(image->virtual_size_bytes) + " bytes virtual)");
      }
      if (size == 0 || size > kMaxVolumeBytes) {
        return InvalidArgument("spec.size_bytes: image " + Quote(image->name) + " is " +
                               std::to_string(image->virtual_size_bytes) +
                               " bytes virtual, which makes no volume of this backend");
      }
    } else if (spec.source().source_case() != api::VolumeSource::SOURCE_NOT_SET) {
      HCI_ASSIGN_OR_RAISE(CloneSource source, LockCloneSource(spec, &source_lock));
      HCI_ASSIGN_OR_RAISE(const std::uint64_t source_size,
                          CloneSourceSize(options_, lookup, source));
      if (size == 0) {
        size = source_size;
      } else if (size < source_size) {
        return InvalidArgument("spec.size_bytes: " + std::to_string(size) +
                               " is smaller than the source (" + std::to_string(source_size) +
                               " bytes); a clone may be larger than its source, not smaller");
      }
      clone = std::move(source);
    }

    std::vector<Member> members;
    std::optional<VolumeRecord> raced;
    {
      std::lock_guard lock(mu_);
      if (auto it = volumes_.find(name); it != volumes_.end()) {
        raced = it->second;
      } else if (creating_.count(name) > 0) {
        return Aborted("volume " + Quote(name) + " is being created; retry when that finishes");
      } else {
        members = PlaceLocked(name, count);
        std::vector<std::string> chosen;
        for (const Member& m : members) chosen.push_back(m.node);
        creating_.emplace(name, std::move(chosen));
      }
    }
    if (raced) return Existing(*raced, request);
    BOOST_SCOPE_EXIT_ALL(&) {
      std::lock_guard lock(mu_);
      creating_.erase(name);
    };

    // Each replica on its node, at generation 1. A failure removes what was made.
    const api::ObjectMeta meta = NewObjectMeta(request.metadata());
    std::uint64_t actual = 0;
    std::vector<const Member*> made;
    for (const Member& m : members) {
      rpb::ControlRequest create;
      create.mutable_create()->set_replica(m.name);
      create.mutable_create()->set_volume(name);
      create.mutable_create()->set_volume_uid(meta.uid());
      create.mutable_create()->set_size_bytes(size);
      create.mutable_create()->set_generation(1);
      // A clone's replicas are incomplete until the copy is done: no engine may serve them.
      create.mutable_create()->set_rebuilding(clone.has_value());
      rpb::ControlResponse response;
      Status st = Node(m).Call(create, &response, kSlowCall);
      if (st.code() == StatusCode::kAlreadyExists) {
        // This plugin has no record of the volume, so the replica of that name is a leftover
        // (of a deleted volume, or of a create that failed while its node was down): it goes,
        // and its data with it.
        ctx_.logger().Warn(
            kVolumeKind, name,
            "removing replica " + m.name + " left on node " + m.node + ": " + st.message());
        st = DeleteReplica(m);
        if (st.ok()) st = Node(m).Call(create, &response, kSlowCall);
      }
      if (!st.ok()) {
        for (const Member* done : made) DeleteReplica(*done).IgnoreError();
        st = st.WithContext("volume " + Quote(name) + ": creating replica " + m.name + " on node " +
                            m.node);
        ctx_.logger().Warn(kVolumeKind, name, st.message());
        return st;
      }
      made.push_back(&m);
      actual = std::max(actual, response.info().actual_size_bytes());
    }
    if (clone) {
      Status copied = CloneInto(ctx_, options_, lookup, *clone, name, size, members);
      if (!copied.ok()) {
        for (const Member& m : members) DeleteReplica(m).IgnoreError();
        return copied;
      }
    }

    VolumeRecord record;
    *record.obj.mutable_metadata() = meta;
    *record.obj.mutable_spec() = spec;
    record.obj.mutable_spec()->set_size_bytes(size);
    record.obj.mutable_spec()->set_replica_count(count);
    record.requested = spec;
    record.write_quorum = quorum;
    record.members = members;
    if (image) {
      Status filled = FillThroughEngine(record, *image);
      if (!filled.ok()) {
        for (const Member& m : members) DeleteReplica(m).IgnoreError();
        return filled;
      }
    }
    auto* status = record.obj.mutable_status();
    status->set_phase(api::VOLUME_PHASE_AVAILABLE);
    status->set_capacity_bytes(size);
    Status saved;
    {
      std::lock_guard lock(mu_);
      // The record is the commit point: without it the replicas are removed again.
      saved = SaveRecord(records_dir_, record);
      if (saved.ok()) {
        volumes_.emplace(name, record);
        observed_[name] = Observed{api::VOLUME_ROBUSTNESS_HEALTHY, {}};
      }
    }
    if (!saved.ok()) {
      for (const Member& m : members) DeleteReplica(m).IgnoreError();
      return saved.WithContext("volume " + Quote(name) + ": saving its record");
    }
    std::string where;
    for (const Member& m : members) where += (where.empty() ? "" : ", ") + m.node;
    Publish(MakeEvent(api::EVENT_TYPE_NORMAL, kVolumeKind, name, "VolumeHealthy",
                      "created " + std::to_string(size) + "-byte volume with " +
                          Plural(count, "replica") + " on " + where + " (write quorum " +
                          std::to_string(quorum) + ")"));
    if (clone || image) return Observe(record);  // what the copy allocated
    api::Volume out = record.obj;
    out.mutable_status()->set_robustness(api::VOLUME_ROBUSTNESS_HEALTHY);
    out.mutable_status()->set_actual_size_bytes(actual);
    for (const Member& m : members) {
      auto* r = out.mutable_status()->add_replicas();
      r->set_name(m.name);
      r->set_node(m.node);
      r->set_state(api::REPLICA_STATE_HEALTHY);
      r->set_generation(1);
    }
    SetReady(out.mutable_status());
    return out;
  }

  Result<api::Volume> GetVolume(const api::GetVolumeRequest& request) override {
    HCI_RETURN_NOT_OK(ValidateName("name", request.name()));
    auto rec = Find(request.name());
    if (!rec) return Missing(request.name());
    return Observe(*rec);
  }

  Result<api::ListVolumesResponse> ListVolumes(const api::ListVolumesRequest& request) override {
    api::ListVolumesResponse out;
    for (const VolumeRecord& rec : AllRecords()) {
      if (MatchesLabels(rec.obj.metadata().labels(), request.label_selector())) {
        *out.add_volumes() = Observe(rec);
      }
    }
    return out;
  }

  Status DeleteVolume(const api::DeleteVolumeRequest& request) override {
    const std::string& name = request.name();
    HCI_RETURN_NOT_OK(ValidateName("name", name));
    auto op = OpMutex(name);
    if (!op) return Status();
    std::lock_guard op_lock(*op);
    auto rec = Find(name);
    if (!rec) return Status();
    if (!rec->obj.status().attached_to().empty()) return Attached(*rec, "deleting it");
    if (auto adopted = AdoptMembership(*rec)) rec = adopted;
    if (scrubs_.Running(name)) return Scrubbing(name, "deleting it");
    if (rec->obj.status().phase() != api::VOLUME_PHASE_DELETING) {
      // From here on the volume cannot be attached again, whatever happens to the deletes.
      HCI_RETURN_NOT_OK(Update(name, [](VolumeRecord& r) {
        r.obj.mutable_status()->set_phase(api::VOLUME_PHASE_DELETING);
      }));
    }
    std::vector<std::string> failures;
    // Replicas the engine replaced and could not delete yet (their node was down) hold the
    // delete up as members do: one left behind would be taken by the idempotent create of a
    // new volume of the same name and size, which would then serve this volume's data.
    std::vector<Member> replicas = rec->members;
    replicas.insert(replicas.end(), rec->retired.begin(), rec->retired.end());
    for (const Member& m : replicas) {
      Status st = DeleteReplica(m);
      if (st.ok()) continue;
      if (st.code() == StatusCode::kUnavailable && nodes_.count(m.node) == 0) {
        // The node was removed from the configuration and does not answer at its last
        // address: its replica cannot be reached any more, so it does not hold the delete up.
        ctx_.logger().Warn(kVolumeKind, name,
                           "replica " + m.name + " left on node " + m.node +
                               ", which is no longer configured: " + st.message());
        continue;
      }
      failures.push_back("replica " + m.name + " on node " + m.node + ": " + st.message());
    }
    if (!failures.empty()) {
      std::string joined;
      for (const auto& f : failures) joined += (joined.empty() ? "" : "; ") + f;
      return Unavailable("volume " + Quote(name) + ": " + Plural(failures.size(), "replica") +
                         " could not be deleted (" + joined +
                         "); the volume stays in phase Deleting: retry DeleteVolume");
    }
    {
      std::lock_guard lock(mu_);
      HCI_RETURN_NOT_OK(RemoveRecord(records_dir_, name));
      volumes_.erase(name);
      observed_.erase(name);
    }
    const EnginePaths paths = EnginePathsFor(options_.state_dir, name);
    std::error_code ec;
    std::filesystem::remove_all(paths.dir, ec);
    if (paths.socket_dir != paths.dir) std::filesystem::remove_all(paths.socket_dir, ec);
    Publish(MakeEvent(api::EVENT_TYPE_NORMAL, kVolumeKind, name, "VolumeDeleted",
                      "volume, its replicas and their snapshots deleted"));
    return Status();
  }

  Result<api::AttachInfo> AttachVolume(const api::AttachVolumeRequest& request) override {
    const std::string& name = request.name();
    HCI_RETURN_NOT_OK(ValidateName("name", name));
    if (request.attacher().empty()) return InvalidArgument("attacher: is required");
    HCI_RETURN_NOT_OK(ValidateName("attacher", request.attacher()));
    auto op = OpMutex(name);
    if (!op) return Missing(name);
    std::lock_guard op_lock(*op);
    auto rec = Find(name);
    if (!rec) return Missing(name);
    // A member replaced by the last engine (spare node): the next one starts with it.
    if (auto adopted = AdoptMembership(*rec)) rec = adopted;
    const auto& status = rec->obj.status();
    if (status.phase() == api::VOLUME_PHASE_DELETING) {
      return FailedPrecondition("volume " + Quote(name) + " is being deleted");
    }
    if (!status.attached_to().empty() && status.attached_to() != request.attacher()) {
      return FailedPrecondition("volume " + Quote(name) + " is attached to " +
                                Quote(status.attached_to()) + ", not " + Quote(request.attacher()) +
                                "; a volume has one attacher");
    }
    HCI_RETURN_NOT_OK(NoPendingRevert(*rec));
    const EnginePaths paths = EnginePathsFor(options_.state_dir, name);
    if (status.attached_to() == request.attacher()) {
      if (RunningEngine(paths) > 0) return Info(paths);
      // Attached, but the engine is gone (killed, or the machine restarted): start it again.
      HCI_RETURN_NOT_OK(StartEngine(options_, paths, EngineConfigFor(*rec), kEngineStartTimeout));
      Publish(MakeEvent(api::EVENT_TYPE_WARNING, kVolumeKind, name, "EngineRestarted",
                        "the engine of the attached volume was not running and was restarted"));
      return Info(paths);
    }
    // A scrub of the detached volume runs in an engine of its own, started as an attach starts
    // one (engineClean is already false): the attach takes it over and the scrub goes on.
    if (scrubs_.Adopt(name) && RunningEngine(paths) > 0) {
      HCI_RETURN_NOT_OK(Update(name, [&](VolumeRecord& r) {
        r.obj.mutable_status()->set_attached_to(request.attacher());
        r.obj.mutable_status()->set_phase(api::VOLUME_PHASE_ATTACHED);
      }));
      Publish(MakeEvent(api::EVENT_TYPE_NORMAL, kVolumeKind, name, "VolumeAttached",
                        "attached to " + Quote(request.attacher()) +
                            " through the engine its running scrub started, on " +
                            paths.nbd_socket));
      return Info(paths);
    }
    auto started = StartOwnEngine(name, *rec, paths);
    if (!started.ok()) return started.status();
    Status saved = Update(name, [&](VolumeRecord& r) {
      r.obj.mutable_status()->set_attached_to(request.attacher());
      r.obj.mutable_status()->set_phase(api::VOLUME_PHASE_ATTACHED);
    });
    if (!saved.ok()) {
      const bool clean = StopEngine(paths, kEngineStopGrace);
      Update(name, [&](VolumeRecord& r) { r.engine_clean = clean; }).IgnoreError();
      return saved;
    }
    Publish(MakeEvent(api::EVENT_TYPE_NORMAL, kVolumeKind, name, "VolumeAttached",
                      "attached to " + Quote(request.attacher()) + " through engine pid " +
                          std::to_string(*started) + " on " + paths.nbd_socket));
    return Info(paths);
  }

  Status DetachVolume(const api::DetachVolumeRequest& request) override {
    const std::string& name = request.name();
    HCI_RETURN_NOT_OK(ValidateName("name", name));
    if (request.attacher().empty()) return InvalidArgument("attacher: is required");
    HCI_RETURN_NOT_OK(ValidateName("attacher", request.attacher()));
    auto op = OpMutex(name);
    if (!op) return Status();
    std::lock_guard op_lock(*op);
    auto rec = Find(name);
    if (!rec || rec->obj.status().attached_to() != request.attacher()) return Status();
    const EnginePaths paths = EnginePathsFor(options_.state_dir, name);
    const bool running = RunningEngine(paths) > 0;
    const bool clean = StopEngine(paths, kEngineStopGrace);
    AdoptMembership(*rec);
    HCI_RETURN_NOT_OK(Update(name, [&](VolumeRecord& r) {
      r.obj.mutable_status()->clear_attached_to();
      r.obj.mutable_status()->set_phase(api::VOLUME_PHASE_AVAILABLE);
      r.engine_clean = clean;
    }));
    Publish(MakeEvent(api::EVENT_TYPE_NORMAL, kVolumeKind, name, "VolumeDetached",
                      "detached from " + Quote(request.attacher())));
    if (!clean) {
      Publish(MakeEvent(api::EVENT_TYPE_WARNING, kVolumeKind, name, "EngineStoppedUncleanly",
                        running ? "the engine did not exit within 30 s of SIGTERM and was killed"
                                : "the engine was not running when the volume was detached"));
    }
    return Status();
  }

  // Attached: the engine grows every serving replica (a replica that misses it is failed and
  // grown by its rebuild), then the VM is told. Detached: every replica directly; a node that
  // does not answer leaves the record at the old size, and a retry grows the rest (growing is
  // idempotent per replica, and an engine serves the largest size any replica has). The record
  // changes only once the replicas have the size.
  Result<api::Volume> ExpandVolume(const api::ExpandVolumeRequest& request) override {
    const std::string& name = request.name();
    HCI_RETURN_NOT_OK(ValidateName("name", name));
    const std::uint64_t size = request.size_bytes();
    if (size == 0 || size % kBlockBytes != 0) {
      return InvalidArgument("size_bytes: " + std::to_string(size) +
                             " is not a positive multiple of 4096");
    }
    if (size > kMaxVolumeBytes) {
      return InvalidArgument("size_bytes: " + std::to_string(size) +
                             " is more than the largest volume this backend creates (" +
                             std::to_string(kMaxVolumeBytes) + " bytes, 1 PiB)");
    }
    auto op = OpMutex(name);
    if (!op) return Missing(name);
    std::lock_guard op_lock(*op);
    auto rec = Find(name);
    if (!rec) return Missing(name);
    if (rec->obj.status().phase() == api::VOLUME_PHASE_DELETING) {
      return FailedPrecondition("volume " + Quote(name) + " is being deleted");
    }
    const std::uint64_t current = rec->obj.spec().size_bytes();
    if (size < current) {
      return InvalidArgument("size_bytes: " + std::to_string(size) +
                             " is smaller than the current size " + std::to_string(current) +
                             " of volume " + Quote(name) + " (volumes only grow)");
    }
    const std::string attacher = rec->obj.status().attached_to();
    if (size > current && !attacher.empty()) {
      rpb::EngineRequest expand;
      expand.set_expand(size);
      HCI_RETURN_NOT_OK(
          AskAttachedEngine(options_.state_dir, name, expand, "", kSlowCall).status());
    } else if (size > current) {
      std::vector<std::string> failures;
      for (const Member& m : rec->members) {
        rpb::ControlRequest expand;
        expand.mutable_expand()->set_replica(m.name);
        expand.mutable_expand()->set_size_bytes(size);
        rpb::ControlResponse response;
        Status st = Node(m).Call(expand, &response, kSlowCall);
        if (!st.ok()) {
          failures.push_back("replica " + m.name + " on node " + m.node + ": " + st.message());
        }
      }
      if (!failures.empty()) {
        std::string joined;
        for (const auto& f : failures) joined += (joined.empty() ? "" : "; ") + f;
        return Unavailable("volume " + Quote(name) + ": " + Plural(failures.size(), "replica") +
                           " could not be grown (" + joined + "); the volume keeps its size " +
                           std::to_string(current) +
                           " until a retried ExpandVolume grows every replica");
      }
    }
    if (size > current) {
      HCI_RETURN_NOT_OK(Update(name, [&](VolumeRecord& r) {
        r.obj.mutable_spec()->set_size_bytes(size);
        r.obj.mutable_status()->set_capacity_bytes(size);
      }));
      rec->obj.mutable_spec()->set_size_bytes(size);
      rec->obj.mutable_status()->set_capacity_bytes(size);
      Publish(MakeEvent(
          api::EVENT_TYPE_NORMAL, kVolumeKind, name, "VolumeExpanded",
          "expanded from " + std::to_string(current) + " to " + std::to_string(size) + " bytes" +
              (attacher.empty() ? " (detached)"
                                : " (attached to " + Quote(attacher) + ", through the engine)")));
    }
    // Also for the same size: a retry tells a VM that missed the first notification.
    if (!attacher.empty()) TellAttacher(name, attacher, size);
    return Observe(*rec);
  }

  // -------------------------------------------------------------------------------------------
  // Snapshots

  Result<api::Snapshot> CreateSnapshot(const api::CreateSnapshotRequest& request) override {
    const std::string& volume = request.volume();
    const std::string& snap = request.metadata().name();
    HCI_RETURN_NOT_OK(ValidateName("volume", volume));
    HCI_RETURN_NOT_OK(ValidateName("metadata.name", snap));
    auto op = OpMutex(volume);
    if (!op) return Missing(volume, "volume");
    std::lock_guard op_lock(*op);
    auto rec = Find(volume);
    if (!rec) return Missing(volume, "volume");
    if (rec->obj.status().phase() == api::VOLUME_PHASE_DELETING) {
      return FailedPrecondition("volume: volume " + Quote(volume) + " is being deleted");
    }
    if (rec->snapshots.count(snap) > 0) {
      // Made before: return it while the replicas still have it (else take it again).
      auto listed = ListSnapshotsOf(*rec);
      if (listed.ok()) {
        for (const auto& s : listed->snapshots()) {
          if (s.metadata().name() == snap) return s;
        }
      }
    }
    if (!rec->obj.status().attached_to().empty()) {
      rpb::EngineRequest take;
      take.set_snapshot(snap);
      HCI_RETURN_NOT_OK(
          AskAttachedEngine(options_.state_dir, volume, take, "snapshot " + Quote(snap), kSlowCall)
              .status());
    } else {
      HCI_ASSIGN_OR_RAISE(auto views, InStep(*rec, "taking snapshot " + Quote(snap)));
      (void)views;
      const std::int64_t created = NowUnixMs();
      std::vector<const Member*> made;
      for (const Member& m : rec->members) {
        rpb::ControlRequest take;
        take.mutable_snapshot()->set_replica(m.name);
        take.mutable_snapshot()->set_snapshot(snap);
        take.mutable_snapshot()->set_created_unix_ms(created);
        rpb::ControlResponse response;
        Status st = Node(m).Call(take, &response, kSlowCall);
        if (!st.ok()) {
          // All or nothing: a snapshot that only some replicas have cannot be reverted to.
          for (const Member* done : made) {
            rpb::ControlRequest undo;
            undo.mutable_delete_snapshot()->set_replica(done->name);
            undo.mutable_delete_snapshot()->set_snapshot(snap);
            Node(*done).Call(undo, &response, kSlowCall).IgnoreError();
          }
          return st.WithContext("volume " + Quote(volume) + ": snapshot " + Quote(snap) +
                                " of replica " + m.name);
        }
        made.push_back(&m);
      }
    }
    api::ObjectMeta meta = NewObjectMeta(request.metadata());
    HCI_RETURN_NOT_OK(Update(volume, [&](VolumeRecord& r) { r.snapshots[snap] = meta; }));
    rec->snapshots[snap] = meta;
    Publish(MakeEvent(api::EVENT_TYPE_NORMAL, kSnapshotKind, snap, "SnapshotCreated",
                      std::string("crash-consistent snapshot of every replica") +
                          (rec->obj.status().attached_to().empty() ? " (volume detached)"
                                                                   : " (through the engine)"),
                      volume));
    auto listed = ListSnapshotsOf(*rec);
    if (listed.ok()) {
      for (const auto& s : listed->snapshots()) {
        if (s.metadata().name() == snap) return s;
      }
    }
    api::Snapshot out;
    *out.mutable_metadata() = meta;
    out.set_volume(volume);
    out.mutable_status()->set_ready_to_use(true);
    *out.mutable_status()->mutable_creation_time() = meta.creation_time();
    return out;
  }

  Result<api::ListSnapshotsResponse> ListSnapshots(
      const api::ListSnapshotsRequest& request) override {
    HCI_RETURN_NOT_OK(ValidateName("volume", request.volume()));
    auto rec = Find(request.volume());
    if (!rec) return Missing(request.volume(), "volume");
    return ListSnapshotsOf(*rec);
  }

  Status DeleteSnapshot(const api::DeleteSnapshotRequest& request) override {
    const std::string& volume = request.volume();
    const std::string& snap = request.name();
    HCI_RETURN_NOT_OK(ValidateName("volume", volume));
    HCI_RETURN_NOT_OK(ValidateName("name", snap));
    auto op = OpMutex(volume);
    if (!op) return Status();
    std::lock_guard op_lock(*op);
    auto rec = Find(volume);
    if (!rec) return Status();
    // Every replica, whether or not it has it (OK when absent), so that none keeps it.
    std::vector<std::string> failures;
    for (const Member& m : rec->members) {
      rpb::ControlRequest del;
      del.mutable_delete_snapshot()->set_replica(m.name);
      del.mutable_delete_snapshot()->set_snapshot(snap);
      rpb::ControlResponse response;
      Status st = Node(m).Call(del, &response, kSlowCall);
      if (!st.ok() && st.code() != StatusCode::kNotFound) {
        failures.push_back("replica " + m.name + " on node " + m.node + ": " + st.message());
      }
    }
    if (!failures.empty()) {
      std::string joined;
      for (const auto& f : failures) joined += (joined.empty() ? "" : "; ") + f;
      return Unavailable("volume " + Quote(volume) + ": snapshot " + Quote(snap) +
                         " could not be deleted everywhere (" + joined + "); retry DeleteSnapshot");
    }
    if (rec->snapshots.count(snap) > 0) {
      HCI_RETURN_NOT_OK(Update(volume, [&](VolumeRecord& r) { r.snapshots.erase(snap); }));
      Publish(MakeEvent(api::EVENT_TYPE_NORMAL, kSnapshotKind, snap, "SnapshotDeleted",
                        "snapshot deleted from every replica", volume));
    }
    return Status();
  }

  Result<api::Volume> RevertVolume(const api::RevertVolumeRequest& request) override {
    const std::string& volume = request.volume();
    const std::string& snap = request.snapshot();
    HCI_RETURN_NOT_OK(ValidateName("volume", volume));
    HCI_RETURN_NOT_OK(ValidateName("snapshot", snap));
    auto op = OpMutex(volume);
    if (!op) return Missing(volume, "volume");
    std::lock_guard op_lock(*op);
    auto rec = Find(volume);
    if (!rec) return Missing(volume, "volume");
    if (!rec->obj.status().attached_to().empty()) return Attached(*rec, "reverting it");
    if (rec->obj.status().phase() == api::VOLUME_PHASE_DELETING) {
      return FailedPrecondition("volume: volume " + Quote(volume) + " is being deleted");
    }
    // A revert left half done is finished whatever the replicas look like now: the ones
    // already reverted moved on (their changed-block history records the revert).
    const bool resuming = rec->pending_revert == snap;
    if (!resuming) {
      HCI_ASSIGN_OR_RAISE(auto views, InStep(*rec, "reverting it"));
      bool anywhere = false;
      std::string lacking;
      for (const ReplicaView& v : views) {
        if (FindSnapshotLayer(v.info.meta(), snap) != nullptr) {
          anywhere = true;
        } else {
          lacking += (lacking.empty() ? "" : ", ") + v.member.name;
        }
      }
      if (!anywhere) {
        return NotFound("snapshot: snapshot " + Quote(snap) + " of volume " + Quote(volume) +
                        " does not exist");
      }
      if (!lacking.empty()) {
        return FailedPrecondition("snapshot: snapshot " + Quote(snap) + " of volume " +
                                  Quote(volume) + " is missing on replica " + lacking +
                                  " (it failed before the snapshot was taken), so reverting "
                                  "would leave the replicas different");
      }
      HCI_RETURN_NOT_OK(Update(volume, [&](VolumeRecord& r) { r.pending_revert = snap; }));
    }
    std::vector<std::string> failures;
    for (const Member& m : rec->members) {
      rpb::ControlRequest revert;
      revert.mutable_revert()->set_replica(m.name);
      revert.mutable_revert()->set_snapshot(snap);
      rpb::ControlResponse response;
      Status st = Node(m).Call(revert, &response, kSlowCall);
      if (st.ok() && response.info().meta().size_bytes() < rec->obj.spec().size_bytes()) {
        // A snapshot from before an ExpandVolume is smaller: the volume keeps its size (the
        // space beyond the snapshot reads zeroes), as volumes only grow.
        rpb::ControlRequest expand;
        expand.mutable_expand()->set_replica(m.name);
        expand.mutable_expand()->set_size_bytes(rec->obj.spec().size_bytes());
        st = Node(m).Call(expand, &response, kSlowCall);
      }
      if (!st.ok())
        failures.push_back("replica " + m.name + " on node " + m.node + ": " + st.message());
    }
    if (!failures.empty()) {
      std::string joined;
      for (const auto& f : failures) joined += (joined.empty() ? "" : "; ") + f;
      return Unavailable("volume " + Quote(volume) + ": the revert to snapshot " + Quote(snap) +
                         " did not reach every replica (" + joined +
                         "); the volume cannot be attached until a retried RevertVolume "
                         "finishes it");
    }
    HCI_RETURN_NOT_OK(Update(volume, [](VolumeRecord& r) { r.pending_revert.clear(); }));
    rec->pending_revert.clear();
    Publish(MakeEvent(api::EVENT_TYPE_NORMAL, kVolumeKind, volume, "VolumeReverted",
                      "every replica reverted to snapshot " + Quote(snap)));
    return Observe(*rec);
  }

  // The scrub itself runs in the volume's engine (engine/engine_scrub.cc); a detached volume gets
  // an engine of its own for it, without an attacher. The operation's thread is in
  // replicated_scrub.cc.
  Result<Operation> ScrubVolume(const api::ScrubVolumeRequest& request) override {
    const std::string& name = request.name();
    HCI_RETURN_NOT_OK(ValidateName("name", name));
    auto op = OpMutex(name);
    if (!op) return Missing(name);
    std::lock_guard op_lock(*op);
    auto rec = Find(name);
    if (!rec) return Missing(name);
    if (rec->obj.status().phase() == api::VOLUME_PHASE_DELETING) {
      return FailedPrecondition("volume " + Quote(name) + " is being deleted");
    }
    if (scrubs_.Running(name)) {
      return Aborted("volume " + Quote(name) +
                     ": a scrub is running; wait for its operation or cancel it");
    }
    if (rec->members.size() < 2) {
      return FailedPrecondition("volume " + Quote(name) +
                                " has one replica; a scrub compares at least two");
    }
    HCI_RETURN_NOT_OK(NoPendingRevert(*rec));
    const EnginePaths paths = EnginePathsFor(options_.state_dir, name);
    const bool attached = !rec->obj.status().attached_to().empty();
    if (attached) {
      if (RunningEngine(paths) <= 0) {
        return Unavailable("volume " + Quote(name) +
                           " is attached but its engine is not running; AttachVolume again "
                           "restarts it");
      }
    } else {
      // As AttachVolume does: the engine resynchronises the replicas before it serves, so a
      // scrub never reports what an unclean stop left in flight.
      auto started = StartOwnEngine(name, *rec, paths);
      if (!started.ok()) {
        return started.status().WithContext("volume " + Quote(name) + ": starting its engine");
      }
    }
    rpb::EngineRequest start;
    start.mutable_scrub()->set_report_only(request.report_only());
    auto answer = CallEngine(paths.control_socket, start, options_.io_timeout);
    Status st = !answer.ok() ? answer.status()
                : answer->code() != 0
                    ? Status(static_cast<StatusCode>(answer->code()), answer->message())
                    : Status();
    if (!st.ok()) {
      if (!attached) {
        const bool clean = StopEngine(paths, kEngineStopGrace);
        Update(name, [&](VolumeRecord& r) { r.engine_clean = clean; }).IgnoreError();
      }
      return st.WithContext("volume " + Quote(name) + ": scrub");
    }
    return scrubs_.Track(name, paths.control_socket, answer->status().scrub().id(),
                         request.report_only(), !attached);
  }

  Result<api::ChangedBlocks> GetChangedBlocks(
      const api::GetChangedBlocksRequest& request) override {
    HCI_RETURN_NOT_OK(ValidateName("volume", request.volume()));
    auto rec = Find(request.volume());
    if (!rec) return Missing(request.volume(), "volume");
    HCI_ASSIGN_OR_RAISE(ReplicaView ref, Reference(*rec));
    for (const auto& [field, snap] :
         {std::pair<std::string, std::string>{"from_snapshot", request.from_snapshot()},
          {"to_snapshot", request.to_snapshot()}}) {
      if (!snap.empty() && FindSnapshotLayer(ref.info.meta(), snap) == nullptr) {
        return NotFound(field + ": snapshot " + Quote(snap) + " of volume " +
                        Quote(request.volume()) + " does not exist");
      }
    }
    rpb::ControlRequest changed;
    changed.mutable_changed_between()->set_replica(ref.member.name);
    changed.mutable_changed_between()->set_from_snapshot(request.from_snapshot());
    changed.mutable_changed_between()->set_to_snapshot(request.to_snapshot());
    rpb::ControlResponse response;
    HCI_RETURN_NOT_OK(
        Node(ref.member)
            .Call(changed, &response, kSlowCall)
            .WithContext("volume " + Quote(request.volume()) + ": replica " + ref.member.name));
    api::ChangedBlocks out;
    out.set_size_bytes(rec->obj.spec().size_bytes());
    const auto& extents = response.extents();
    for (int i = 0; i < extents.offsets_size() && i < extents.lengths_size(); ++i) {
      auto* e = out.add_extents();
      e->set_offset(extents.offsets(i));
      e->set_length(extents.lengths(i));
    }
    return out;
  }

 private:
  struct Observed {
    api::VolumeRobustness robustness = api::VOLUME_ROBUSTNESS_UNSPECIFIED;
    std::set<std::string> rebuilding;
  };

  void Publish(const api::Event& event) { ctx_.events().Publish(event); }

  static Status Scrubbing(const std::string& name, std::string_view action) {
    return FailedPrecondition("volume " + Quote(name) +
                              " is being scrubbed; wait for the ScrubVolume operation or cancel it "
                              "before " +
                              std::string(action));
  }

  // The end of a scrub (from its thread): its result goes into the record, and an engine that
  // was started for it alone is stopped again.
  void ScrubFinished(const std::string& name, const api::ScrubResult& result) {
    auto op = OpMutex(name);
    if (!op) {
      scrubs_.Release(name);
      return;
    }
    std::lock_guard op_lock(*op);
    const bool own_engine = scrubs_.Release(name);
    Status saved = Update(
        name, [&](VolumeRecord& r) { *r.obj.mutable_status()->mutable_last_scrub() = result; });
    if (!saved.ok()) ctx_.logger().Warn(kVolumeKind, name, "scrub result: " + saved.message());
    auto rec = Find(name);
    if (own_engine && rec && rec->obj.status().attached_to().empty()) {
      const bool clean = StopEngine(EnginePathsFor(options_.state_dir, name), kEngineStopGrace);
      Update(name, [&](VolumeRecord& r) { r.engine_clean = clean; }).IgnoreError();
    }
  }

  // After an attached volume grew: the compute backend makes its VM's QEMU take the new size
  // (the engine's existing NBD connections keep the old one). The volume did grow whatever
  // happens here, so a failure is a Warning event (ExpandVolume still succeeds): the guest sees
  // the new size at its next start, or when ExpandVolume is called again with the same size.
  void TellAttacher(const std::string& volume, const std::string& attacher, std::uint64_t size) {
    ComputeBackend* compute = ctx_.compute();
    if (compute == nullptr) return;  // no VMs here: a client sees the size when it reconnects
    api::ResizeDiskRequest resize;
    resize.set_vm(attacher);
    resize.set_volume(volume);
    resize.set_size_bytes(size);
    Status st = compute->ResizeDisk(resize);
    if (st.ok()) return;
    if (st.code() == StatusCode::kNotFound) {
      // The attacher is not a VM with a disk on this volume (a backup, an import, a test).
      ctx_.logger().Info(kVolumeKind, volume,
                         "attacher " + Quote(attacher) +
                             " is not a VM using the volume; new NBD connections see the new "
                             "size: " +
                             st.message());
      return;
    }
    Publish(MakeEvent(api::EVENT_TYPE_WARNING, kVolumeKind, volume, "ResizeDiskFailed",
                      "the volume grew to " + std::to_string(size) + " bytes but VM " +
                          Quote(attacher) + " was not told (" + st.ToString() +
                          "); its guest sees the new size after its next start, or when "
                          "ExpandVolume is called again with the same size"));
  }

  static Status Missing(const std::string& name, std::string_view field = {}) {
    std::string message = field.empty() ? "" : std::string(field) + ": ";
    return NotFound(message + "volume " + Quote(name) + " does not exist");
  }

  static Status Attached(const VolumeRecord& rec, std::string_view action) {
    return FailedPrecondition("volume " + Quote(rec.obj.metadata().name()) + " is attached to " +
                              Quote(rec.obj.status().attached_to()) + "; detach it before " +
                              std::string(action));
  }

  // The source a clone's spec names, with that volume's op mutex locked into `*lock`. NotFound
  // naming spec.source.volume or spec.source.snapshot when the volume does not exist.
  Result<CloneSource> LockCloneSource(const api::VolumeSpec& spec,
                                      std::unique_lock<std::mutex>* lock) {
    CloneSource source;
    std::string volume;
    if (spec.source().has_snapshot()) {
      volume = spec.source().snapshot().volume();
      source.snapshot = spec.source().snapshot().snapshot();
      source.field = "spec.source.snapshot";
    } else {
      volume = spec.source().volume();
      source.field = "spec.source.volume";
    }
    auto op = OpMutex(volume);
    if (!op) return Missing(volume, source.field);
    *lock = std::unique_lock<std::mutex>(*op);
    auto rec = Find(volume);
    if (!rec) return Missing(volume, source.field);
    // A member the last engine replaced by one on a spare node is read (and a temporary
    // snapshot deleted) where it is now.
    if (auto adopted = AdoptMembership(*rec)) rec = adopted;
    // A detached scrub repairs replicas' heads directly: the head read by the copy must not
    // change under it. Snapshots and attached volumes (read at a snapshot) are not affected.
    if (source.snapshot.empty() && rec->obj.status().attached_to().empty() &&
        scrubs_.Running(volume)) {
      return Scrubbing(volume, "cloning it").WithContext(source.field);
    }
    source.volume = std::move(*rec);
    return source;
  }

  std::optional<VolumeRecord> Find(const std::string& name) {
    std::lock_guard lock(mu_);
    auto it = volumes_.find(name);
    if (it == volumes_.end()) return std::nullopt;
    return it->second;
  }

  std::shared_ptr<std::mutex> OpMutex(const std::string& name) {
    std::lock_guard lock(mu_);
    auto it = volumes_.find(name);
    return it == volumes_.end() ? nullptr : it->second.op;
  }

  std::vector<VolumeRecord> AllRecords() {
    std::lock_guard lock(mu_);
    std::vector<VolumeRecord> out;
    for (const auto& [name, rec] : volumes_) out.push_back(rec);
    return out;
  }

  // Changes the stored record with `edit` and persists it; the stored record is unchanged when
  // the write fails.
  template <typename Edit>
  Status Update(const std::string& name, Edit edit) {
    std::lock_guard lock(mu_);
    auto it = volumes_.find(name);
    if (it == volumes_.end()) return Missing(name);
    VolumeRecord next = it->second;
    edit(next);
    HCI_RETURN_NOT_OK(SaveRecord(records_dir_, next).WithContext("volume " + Quote(name)));
    it->second = std::move(next);
    return Status();
  }

  Result<api::Volume> Existing(const VolumeRecord& rec, const api::CreateVolumeRequest& request) {
    const std::string diff = DescribeSpecDifference(rec.requested, request.spec());
    if (!diff.empty()) {
      return AlreadyExists("volume " + Quote(request.metadata().name()) +
                           " already exists with a different spec (" + diff + ")");
    }
    return Observe(rec);
  }

  // `count` members on distinct nodes: those holding the fewest replicas of this plugin's
  // volumes (and of the creates in progress), ties by name.
  std::vector<Member> PlaceLocked(const std::string& volume, std::uint32_t count) {
    std::map<std::string, std::size_t> load;
    for (const NodeOption& n : options_.nodes) load[n.name] = 0;
    for (const auto& [name, rec] : volumes_) {
      for (const Member& m : rec.members) {
        if (load.count(m.node) > 0) ++load[m.node];
      }
    }
    for (const auto& [name, nodes] : creating_) {
      for (const auto& n : nodes) {
        if (load.count(n) > 0) ++load[n];
      }
    }
    std::vector<const NodeOption*> order;
    for (const NodeOption& n : options_.nodes) order.push_back(&n);
    std::sort(order.begin(), order.end(), [&](const NodeOption* a, const NodeOption* b) {
      if (load[a->name] != load[b->name]) return load[a->name] < load[b->name];
      return a->name < b->name;
    });
    std::vector<Member> members;
    for (std::uint32_t k = 0; k < count; ++k) {
      members.push_back(
          Member{volume + "-r" + std::to_string(k), order[k]->name, order[k]->address});
    }
    return members;
  }

  // The client of a member's node: the configured one, or one at the address recorded at
  // creation when the node is no longer configured.
  NodeClient& Node(const Member& m) {
    if (auto it = nodes_.find(m.node); it != nodes_.end()) return *it->second;
    std::lock_guard lock(mu_);
    auto& client = unconfigured_[m.node + "@" + m.address];
    if (client == nullptr) {
      client =
          std::make_unique<NodeClient>(m.node, m.address, options_.secret, options_.io_timeout);
    }
    return *client;
  }

  Status DeleteReplica(const Member& m) {
    rpb::ControlRequest del;
    del.mutable_delete_()->set_replica(m.name);
    rpb::ControlResponse response;
    return Node(m).Call(del, &response, kSlowCall);
  }

  // Every member's `get`, asked of the nodes in parallel.
  std::vector<ReplicaView> Inspect(const VolumeRecord& rec) {
    std::vector<std::future<ReplicaView>> pending;
    for (const Member& m : rec.members) {
      pending.push_back(std::async(std::launch::async, [this, m] {
        ReplicaView v{m, Status(), {}};
        rpb::ControlRequest get;
        get.mutable_get()->set_replica(m.name);
        rpb::ControlResponse response;
        v.status = Node(m).Call(get, &response, options_.io_timeout);
        if (v.status.ok()) v.info = response.info();
        return v;
      }));
    }
    std::vector<ReplicaView> out;
    for (auto& p : pending) out.push_back(p.get());
    return out;
  }

  // For operations on a detached volume's replicas directly: every replica answers, and they
  // are in step (same generation, none half rebuilt, the last engine stopped cleanly).
  Result<std::vector<ReplicaView>> InStep(const VolumeRecord& rec, const std::string& action) {
    const std::string volume = Quote(rec.obj.metadata().name());
    if (scrubs_.Running(rec.obj.metadata().name())) {
      return Scrubbing(rec.obj.metadata().name(), action);
    }
    if (!rec.engine_clean) {
      return FailedPrecondition(
          "volume " + volume +
          ": its last engine did not stop cleanly (it crashed or was killed), so its replicas may "
          "differ in the writes it had in flight; attach and detach the volume once (the engine "
          "resynchronises them) before " +
          action);
    }
    std::vector<ReplicaView> views = Inspect(rec);
    std::uint64_t newest = 0;
    for (const ReplicaView& v : views) {
      if (!v.status.ok()) {
        return Unavailable("volume " + volume + ": replica " + v.member.name + " on node " +
                           v.member.node + " does not answer (" + v.status.message() + "); " +
                           action + " needs every replica");
      }
      newest = std::max(newest, v.info.meta().generation());
    }
    for (const ReplicaView& v : views) {
      const auto& meta = v.info.meta();
      if (meta.rebuilding() || meta.generation() != newest) {
        return FailedPrecondition(
            "volume " + volume + ": replica " + v.member.name + " is " +
            (meta.rebuilding() ? "half rebuilt"
                               : "at generation " + std::to_string(meta.generation()) +
                                     ", behind the volume's " + std::to_string(newest)) +
            "; attach the volume so that the engine rebuilds it before " + action);
      }
    }
    return views;
  }

  // The replica whose metadata answers questions about the volume's content: a healthy member
  // of the running engine, else the reachable replica of the highest generation that is not a
  // rebuild target (ties by name).
  Result<ReplicaView> Reference(const VolumeRecord& rec) {
    std::vector<ReplicaView> views = Inspect(rec);
    std::set<std::string> healthy;
    if (!rec.obj.status().attached_to().empty()) {
      if (auto engine = EngineStatusOf(rec); engine.ok()) {
        for (const auto& m : engine->members()) {
          if (m.state() == rpb::MEMBER_STATE_HEALTHY) healthy.insert(m.name());
        }
      }
    }
    const ReplicaView* best = nullptr;
    std::string why;
    for (const ReplicaView& v : views) {
      if (!v.status.ok()) {
        why += (why.empty() ? "" : "; ") + v.member.name + ": " + v.status.message();
        continue;
      }
      if (!healthy.empty() && healthy.count(v.member.name) == 0) continue;
      if (v.info.meta().rebuilding()) continue;
      if (best == nullptr || v.info.meta().generation() > best->info.meta().generation() ||
          (v.info.meta().generation() == best->info.meta().generation() &&
           v.member.name < best->member.name)) {
        best = &v;
      }
    }
    if (best == nullptr) {
      return Unavailable("volume " + Quote(rec.obj.metadata().name()) +
                         ": no up-to-date replica answers (" + why + ")");
    }
    return *best;
  }

  Result<rpb::EngineStatus> EngineStatusOf(const VolumeRecord& rec) {
    const EnginePaths paths = EnginePathsFor(options_.state_dir, rec.obj.metadata().name());
    rpb::EngineRequest request;
    request.set_status(true);
    HCI_ASSIGN_OR_RAISE(auto answer,
                        CallEngine(paths.control_socket, request, options_.io_timeout));
    return answer.status();
  }

  // Fills the new volume of `rec` (not saved yet: nothing can attach it) from `image` through an
  // engine of its own, stopped again afterwards. A clean stop is required: the record then says
  // so, and the next engine trusts the replicas as they are.
  Status FillThroughEngine(VolumeRecord& rec, const ImageSource& image) {
    const std::string& name = rec.obj.metadata().name();
    const EnginePaths paths = EnginePathsFor(options_.state_dir, name);
    // An engine of an earlier attempt of this create (the plugin died during the copy) serves
    // replicas that are gone.
    if (RunningEngine(paths) > 0) StopEngine(paths, kEngineStopGrace);
    rec.engine_clean = true;  // the replicas were just created, all at generation 1
    HCI_RETURN_NOT_OK(StartEngine(options_, paths, EngineConfigFor(rec), kEngineStartTimeout)
                          .status()
                          .WithContext("spec.source.image: starting the volume's engine"));
    Status filled = FillFromImage(ctx_, image, name, paths, rec.obj.spec().size_bytes());
    const bool clean = StopEngine(paths, kEngineStopGrace);
    HCI_RETURN_NOT_OK(filled);
    if (!clean) {
      return Internal("spec.source.image: the engine of volume " + Quote(name) +
                      " did not stop cleanly after copying image " + Quote(image.name));
    }
    return Status::OK();
  }

  // Starts the volume's engine for an attach or a scrub. An engine running without an
  // attachment (left by an attach or a scrub that did not finish) is stopped first. The record
  // says "unclean" before the engine runs: from its first write on, only an engine may touch
  // the replicas until one stops cleanly. `rec` is updated as the record is.
  Result<pid_t> StartOwnEngine(const std::string& name, VolumeRecord& rec,
                               const EnginePaths& paths) {
    if (RunningEngine(paths) > 0) {
      const bool clean = StopEngine(paths, kEngineStopGrace);
      HCI_RETURN_NOT_OK(Update(name, [&](VolumeRecord& r) { r.engine_clean = clean; }));
      rec.engine_clean = clean;
    }
    const bool was_clean = rec.engine_clean;
    HCI_RETURN_NOT_OK(Update(name, [](VolumeRecord& r) { r.engine_clean = false; }));
    // The config is made from the record as it was before the start marked it unclean.
    auto started = StartEngine(options_, paths, EngineConfigFor(rec), kEngineStartTimeout);
    if (!started.ok()) {
      // It never served a request.
      Update(name, [&](VolumeRecord& r) { r.engine_clean = was_clean; }).IgnoreError();
    }
    return started;
  }

  rpb::EngineConfig EngineConfigFor(const VolumeRecord& rec) {
    const std::string& name = rec.obj.metadata().name();
    const EnginePaths paths = EnginePathsFor(options_.state_dir, name);
    rpb::EngineConfig config;
    config.set_volume(name);
    config.set_volume_uid(rec.obj.metadata().uid());
    config.set_size_bytes(rec.obj.spec().size_bytes());
    config.set_write_quorum(rec.write_quorum);
    config.set_secret_file(options_.secret_file);
    config.set_control_socket(paths.control_socket);
    config.set_rebuild_bytes_per_second(options_.rebuild_bytes_per_second);
    config.set_io_timeout_ms(static_cast<std::uint32_t>(options_.io_timeout.count()));
    config.set_start_timeout_ms(kEngineReplicaWaitMs);
    // `rec` is the record as it was before the start marked it unclean.
    config.set_clean_start(rec.engine_clean);
    for (const Member& m : rec.members) {
      auto* r = config.add_replicas();
      r->set_name(m.name);
      r->set_node(m.node);
      r->set_address(Node(m).address());
    }
    // Replenishment: the engine replaces a member failed for longer than the wait by a new
    // replica on one of these (nodes holding none of this volume's replicas), in this order.
    config.set_replica_replenish_wait_ms(options_.replica_replenish_wait_ms);
    config.set_membership_version(rec.membership_version);
    for (const NodeOption& n : options_.nodes) {
      if (std::none_of(rec.members.begin(), rec.members.end(),
                       [&](const Member& m) { return m.node == n.name; })) {
        auto* spare = config.add_spares();
        spare->set_node(n.name);
        spare->set_address(n.address);
      }
    }
    for (const Member& m : rec.retired) {
      auto* r = config.add_retired();
      r->set_name(m.name);
      r->set_node(m.node);
      r->set_address(m.address);
    }
    return config;
  }

  // The engine replaced a member by a replica on a spare node and rewrote its config file with
  // a newer membership_version: the record takes that membership (persisted), so that the next
  // engine start and GetVolume use it. Nullopt when there is nothing newer.
  std::optional<VolumeRecord> AdoptMembership(const VolumeRecord& rec) {
    const std::string& name = rec.obj.metadata().name();
    const EnginePaths paths = EnginePathsFor(options_.state_dir, name);
    std::ifstream in(paths.config, std::ios::binary);
    rpb::EngineConfig config;
    if (!in || !config.ParseFromIstream(&in) || config.volume() != name ||
        config.membership_version() <= rec.membership_version ||
        config.replicas_size() != static_cast<int>(rec.members.size())) {
      return std::nullopt;
    }
    std::optional<VolumeRecord> adopted;
    std::string moved;
    Status st = Update(name, [&](VolumeRecord& r) {
      for (int i = 0; i < config.replicas_size(); ++i) {
        const auto& c = config.replicas(i);
        if (r.members[i].name != c.name() || r.members[i].node != c.node()) {
          moved += (moved.empty() ? "" : ", ") + r.members[i].name + " on node " +
                   r.members[i].node + " by " + c.name() + " on node " + c.node();
        }
        r.members[i] = Member{c.name(), c.node(), c.address()};
      }
      r.retired.clear();
      for (const auto& c : config.retired()) r.retired.push_back({c.name(), c.node(), c.address()});
      r.membership_version = config.membership_version();
      adopted = r;
    });
    if (!st.ok()) {
      ctx_.logger().Warn(kVolumeKind, name,
                         "the engine's new membership is not recorded: " + st.message());
      return std::nullopt;
    }
    if (!moved.empty()) {
      Publish(MakeEvent(api::EVENT_TYPE_NORMAL, kVolumeKind, name, "ReplicaReplaced",
                        "a replica failed for longer than replica_replenish_wait_ms was replaced "
                        "by one on a spare node: " +
                            moved));
    }
    return adopted;
  }

  static api::AttachInfo Info(const EnginePaths& paths) {
    api::AttachInfo info;
    *info.mutable_blockdev() = EngineBlockdev(paths);
    return info;
  }

  static void SetReady(api::VolumeStatus* status) {
    auto* ready = status->add_conditions();
    ready->set_type("Ready");
    const bool ok = status->robustness() == api::VOLUME_ROBUSTNESS_HEALTHY ||
                    status->robustness() == api::VOLUME_ROBUSTNESS_DEGRADED;
    ready->set_status(ok ? api::CONDITION_STATUS_TRUE : api::CONDITION_STATUS_FALSE);
    switch (status->robustness()) {
      case api::VOLUME_ROBUSTNESS_HEALTHY:
        ready->set_reason("Healthy");
        break;
      case api::VOLUME_ROBUSTNESS_DEGRADED:
        ready->set_reason("Degraded");
        break;
      default:
        ready->set_reason("Faulted");
        break;
    }
    ready->set_message(status->message());
  }

  // The record's volume with its replicas, robustness and allocation observed now: from the
  // running engine when attached (its view of each member), else from each replica's node.
  api::Volume Observe(const VolumeRecord& observed,
                      std::optional<rpb::EngineStatus>* engine_out = nullptr) {
    std::optional<VolumeRecord> adopted;
    if (!observed.obj.status().attached_to().empty()) adopted = AdoptMembership(observed);
    const VolumeRecord& rec = adopted ? *adopted : observed;
    const std::string& name = rec.obj.metadata().name();
    api::Volume out = rec.obj;
    api::VolumeStatus* status = out.mutable_status();
    std::vector<ReplicaView> views = Inspect(rec);
    std::vector<std::string> problems;
    std::uint64_t actual = 0;
    for (const ReplicaView& v : views) {
      if (v.status.ok()) actual = std::max(actual, v.info.actual_size_bytes());
    }
    status->set_actual_size_bytes(actual);

    std::optional<rpb::EngineStatus> engine;
    if (!status->attached_to().empty()) {
      auto answer = EngineStatusOf(rec);
      if (answer.ok()) {
        engine = *answer;
        // A scrub that finished in the engine after the recorded one (its operation ended with
        // an earlier Host): shown, not stored.
        const rpb::ScrubStatus& scrub = engine->scrub();
        if (scrub.id() != 0 && !scrub.running() &&
            scrub.finished_unix_ms() > google::protobuf::util::TimeUtil::TimestampToMilliseconds(
                                           status->last_scrub().end_time())) {
          *status->mutable_last_scrub() = ToScrubResult(scrub, scrub.report_only());
        }
      } else {
        problems.push_back("the engine of the attached volume does not answer (" +
                           answer.status().message() + "); AttachVolume again restarts it");
      }
    }
    std::uint32_t healthy = 0;
    std::set<std::string> rebuilding;
    if (engine) {
      for (const Member& m : rec.members) {
        auto* r = status->add_replicas();
        r->set_name(m.name);
        r->set_node(m.node);
        const rpb::MemberStatus* ms = nullptr;
        for (const auto& candidate : engine->members()) {
          if (candidate.name() == m.name) ms = &candidate;
        }
        if (ms == nullptr) {
          r->set_state(api::REPLICA_STATE_FAILED);
          problems.push_back("replica " + m.name + " is not served by the engine");
          continue;
        }
        r->set_state(StateOf(ms->state()));
        r->set_generation(ms->generation());
        if (ms->state() == rpb::MEMBER_STATE_REBUILDING) {
          r->mutable_rebuild_progress()->set_done(ms->rebuild_done_bytes());
          r->mutable_rebuild_progress()->set_total(ms->rebuild_total_bytes());
          rebuilding.insert(m.name);
        }
        if (ms->state() == rpb::MEMBER_STATE_HEALTHY) {
          ++healthy;
        } else if (ms->state() != rpb::MEMBER_STATE_REBUILDING) {
          problems.push_back("replica " + m.name + " on node " + m.node +
                             " failed: " + ms->message());
        }
      }
    } else {
      std::uint64_t newest = 0;
      for (const ReplicaView& v : views) {
        if (v.status.ok() && !v.info.meta().rebuilding()) {
          newest = std::max(newest, v.info.meta().generation());
        }
      }
      for (const ReplicaView& v : views) {
        auto* r = status->add_replicas();
        r->set_name(v.member.name);
        r->set_node(v.member.node);
        r->set_state(api::REPLICA_STATE_FAILED);
        if (!v.status.ok()) {
          problems.push_back("replica " + v.member.name + ": " + v.status.message());
          continue;
        }
        const auto& meta = v.info.meta();
        r->set_generation(meta.generation());
        if (meta.rebuilding()) {
          problems.push_back("replica " + v.member.name + " on node " + v.member.node +
                             " is half rebuilt; its rebuild resumes when the volume is attached");
        } else if (meta.generation() < newest) {
          problems.push_back("replica " + v.member.name + " on node " + v.member.node +
                             " is at generation " + std::to_string(meta.generation()) +
                             ", behind the volume's " + std::to_string(newest) +
                             "; it is rebuilt when the volume is attached");
        } else {
          r->set_state(api::REPLICA_STATE_HEALTHY);
          ++healthy;
        }
      }
    }
    const auto total = static_cast<std::uint32_t>(rec.members.size());
    if (healthy == total) {
      status->set_robustness(api::VOLUME_ROBUSTNESS_HEALTHY);
    } else if (healthy >= rec.write_quorum) {
      status->set_robustness(api::VOLUME_ROBUSTNESS_DEGRADED);
    } else {
      status->set_robustness(api::VOLUME_ROBUSTNESS_FAULTED);
    }
    if (!rec.pending_revert.empty()) {
      problems.push_back("a revert to snapshot " + Quote(rec.pending_revert) +
                         " has not reached every replica; retry RevertVolume");
    }
    std::string message;
    for (const auto& p : problems) message += (message.empty() ? "" : "; ") + p;
    status->set_message(message);
    SetReady(status);
    Note(name, status->robustness(), healthy, total, rebuilding, message);
    if (engine_out != nullptr) *engine_out = engine;
    return out;
  }

  // Events for what changed since the last observation of the volume.
  void Note(const std::string& name, api::VolumeRobustness robustness, std::uint32_t healthy,
            std::uint32_t total, const std::set<std::string>& rebuilding,
            const std::string& message) {
    std::vector<api::Event> events;
    {
      std::lock_guard lock(mu_);
      if (volumes_.count(name) == 0) return;  // deleted meanwhile
      auto [it, first] = observed_.try_emplace(name);
      Observed& seen = it->second;
      if (first) seen.robustness = api::VOLUME_ROBUSTNESS_HEALTHY;
      if (robustness != seen.robustness) {
        const std::string counts =
            std::to_string(healthy) + " of " + Plural(total, "replica") + " healthy";
        if (robustness == api::VOLUME_ROBUSTNESS_HEALTHY) {
          events.push_back(MakeEvent(api::EVENT_TYPE_NORMAL, kVolumeKind, name, "VolumeHealthy",
                                     "every replica is healthy again"));
        } else {
          events.push_back(
              MakeEvent(api::EVENT_TYPE_WARNING, kVolumeKind, name, "VolumeDegraded",
                        std::string(robustness == api::VOLUME_ROBUSTNESS_FAULTED
                                        ? "faulted (fewer healthy replicas than the write quorum): "
                                        : "degraded: ") +
                            counts + (message.empty() ? "" : ": " + message)));
        }
      }
      for (const auto& r : rebuilding) {
        if (seen.rebuilding.count(r) == 0) {
          events.push_back(MakeEvent(api::EVENT_TYPE_NORMAL, kVolumeKind, name, "RebuildStarted",
                                     "replica " + r + " is being rebuilt"));
        }
      }
      seen.robustness = robustness;
      seen.rebuilding = rebuilding;
    }
    for (const auto& e : events) Publish(e);
  }

  // Engines rebuild on their own, whether or not anyone asks for the volume. Attached volumes
  // are therefore observed every second: VolumeDegraded, RebuildStarted and VolumeHealthy are
  // published when they happen, and each rebuild is an Operation (kind "RebuildReplica", on the
  // volume, progress in bytes copied) that succeeds when the replica is healthy.
  void WatchLoop() {
    std::unique_lock lock(watch_mu_);
    while (!watch_cv_.wait_for(lock, kWatchInterval, [this] { return watch_stop_; })) {
      lock.unlock();
      std::set<std::string> seen;
      for (const VolumeRecord& rec : AllRecords()) {
        if (rec.obj.status().attached_to().empty()) continue;
        const std::string& name = rec.obj.metadata().name();
        const api::Volume volume = Observe(rec);
        for (const auto& r : volume.status().replicas()) {
          const std::string key = name + "/" + r.name();
          auto it = rebuild_ops_.find(key);
          if (r.state() == api::REPLICA_STATE_REBUILDING) {
            seen.insert(key);
            if (it == rebuild_ops_.end()) {
              OperationInfo info;
              info.kind = "RebuildReplica";
              info.object.set_kind(kVolumeKind);
              info.object.set_name(name);
              info.cancellable = false;
              it = rebuild_ops_.emplace(key, RebuildOp{ctx_.operations().Start(info), 0}).first;
            }
            it->second.total = r.rebuild_progress().total();
            it->second.control.SetProgress(
                r.rebuild_progress().done(), it->second.total,
                "rebuilding replica " + r.name() + " on node " + r.node());
          } else if (it != rebuild_ops_.end()) {
            if (r.state() == api::REPLICA_STATE_HEALTHY) {
              // A healthy replica reports no rebuild progress any more: the last total is done.
              it->second.control.SetProgress(
                  it->second.total, it->second.total,
                  "replica " + r.name() + " on node " + r.node() + " is healthy");
              it->second.control.Finish(Status());
            } else {
              it->second.control.Finish(
                  Unavailable("the rebuild of replica " + r.name() + " on node " + r.node() +
                              " did not finish: it is " + api::ReplicaState_Name(r.state()) + " (" +
                              volume.status().message() + "); the engine retries it"));
            }
            rebuild_ops_.erase(it);
          }
        }
      }
      // Detached, deleted, or replaced by a spare meanwhile.
      for (auto it = rebuild_ops_.begin(); it != rebuild_ops_.end();) {
        if (seen.count(it->first) > 0) {
          ++it;
          continue;
        }
        it->second.control.Finish(
            Aborted("the rebuild stopped with its engine (volume detached, "
                    "deleted, or the replica was replaced)"));
        it = rebuild_ops_.erase(it);
      }
      lock.lock();
    }
  }

  Result<api::ListSnapshotsResponse> ListSnapshotsOf(const VolumeRecord& rec) {
    HCI_ASSIGN_OR_RAISE(ReplicaView ref, Reference(rec));
    const rpb::ReplicaMeta& meta = ref.info.meta();
    std::vector<api::Snapshot> snaps;
    for (const rpb::Layer& layer : meta.layers()) {
      if (layer.snapshot().empty() || layer.removed()) continue;
      api::Snapshot s;
      if (auto it = rec.snapshots.find(layer.snapshot()); it != rec.snapshots.end()) {
        *s.mutable_metadata() = it->second;
      } else {
        // Taken outside the plugin (or its record write failed): a uid of its own.
        s.mutable_metadata()->set_name(layer.snapshot());
        s.mutable_metadata()->set_uid(NewObjectMeta(s.metadata()).uid());
        *s.mutable_metadata()->mutable_creation_time() = FromUnixMs(layer.created_unix_ms());
      }
      s.set_volume(rec.obj.metadata().name());
      s.mutable_status()->set_ready_to_use(true);
      *s.mutable_status()->mutable_creation_time() = FromUnixMs(layer.created_unix_ms());
      // The data the layer itself holds: the blocks it owns.
      rpb::ControlRequest changed;
      changed.mutable_changed_between()->set_replica(ref.member.name);
      changed.mutable_changed_between()->set_from_snapshot(LiveParentSnapshot(meta, layer));
      changed.mutable_changed_between()->set_to_snapshot(layer.snapshot());
      rpb::ControlResponse response;
      if (Node(ref.member).Call(changed, &response, options_.io_timeout).ok()) {
        std::uint64_t bytes = 0;
        for (auto length : response.extents().lengths()) bytes += length;
        s.mutable_status()->set_size_bytes(bytes);
      }
      snaps.push_back(std::move(s));
    }
    std::sort(snaps.begin(), snaps.end(), [](const api::Snapshot& a, const api::Snapshot& b) {
      const auto& ta = a.status().creation_time();
      const auto& tb = b.status().creation_time();
      if (ta.seconds() != tb.seconds()) return ta.seconds() < tb.seconds();
      if (ta.nanos() != tb.nanos()) return ta.nanos() < tb.nanos();
      return a.metadata().name() < b.metadata().name();
    });
    api::ListSnapshotsResponse out;
    for (auto& s : snaps) *out.add_snapshots() = std::move(s);
    return out;
  }

  PluginContext& ctx_;
  const Options options_;
  const std::string records_dir_;
  // Configured nodes by name; fixed after construction.
  std::map<std::string, std::unique_ptr<NodeClient>> nodes_;

  std::mutex mu_;
  std::map<std::string, VolumeRecord> volumes_;
  // Volumes being created and the nodes their replicas go to (counted by placement).
  std::map<std::string, std::vector<std::string>> creating_;
  // What the last observation of each volume found, for events on changes.
  std::map<std::string, Observed> observed_;
  // Clients of nodes that are no longer configured, by "<node>@<address>".
  std::map<std::string, std::unique_ptr<NodeClient>> unconfigured_;
  // Last: their threads call back into the members above.
  Scrubs scrubs_;
  std::mutex watch_mu_;
  std::condition_variable watch_cv_;
  bool watch_stop_ = false;
  // Rebuild operations by "<volume>/<replica>"; only the watcher touches them while it runs.
  struct RebuildOp {
    OperationControl control;
    std::uint64_t total;  // bytes to copy, as last reported
  };
  std::map<std::string, RebuildOp> rebuild_ops_;
  std::thread watcher_;
};

}  // namespace

Result<std::unique_ptr<StorageBackend>> MakeStorage(PluginContext& context) {
  HCI_ASSIGN_OR_RAISE(Options options, ParseOptions(context.options(), context.state_dir()));
  HCI_RETURN_NOT_OK(MakeDirs(options.state_dir + "/volumes").WithContext("state_dir"));
  HCI_RETURN_NOT_OK(MakeDirs(options.state_dir + "/run").WithContext("state_dir"));
  std::vector<std::string> errors;
  std::vector<VolumeRecord> records = LoadRecords(options.state_dir + "/volumes", &errors);
  for (const auto& e : errors) {
    context.logger().Warn(kVolumeKind, "", "a volume record is skipped: " + e);
  }
  return std::unique_ptr<StorageBackend>(
      std::make_unique<ReplicatedStorage>(context, std::move(options), std::move(records)));
}

}  // namespace hci::replicated::plugin
