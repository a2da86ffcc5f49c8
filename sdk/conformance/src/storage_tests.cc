// Storage checks: volume lifecycle and attachment, expansion, snapshots, clones, capabilities,
// idempotency, bad requests, races.
#include <algorithm>

#include "conformance_internal.h"

namespace hci::conformance::internal {
namespace {

std::string Op(std::string_view op) { return OpKey(BackendKind::kStorage, op); }

StorageBackend& S(Context& ctx) { return *ctx.env.storage; }

Result<v1::Volume> GetVolume(Context& ctx, const std::string& name) {
  v1::GetVolumeRequest r;
  r.set_name(name);
  return S(ctx).GetVolume(r);
}
Status DeleteVolume(Context& ctx, const std::string& name) {
  v1::DeleteVolumeRequest r;
  r.set_name(name);
  return S(ctx).DeleteVolume(r);
}
Result<v1::AttachInfo> Attach(Context& ctx, const std::string& name, const std::string& who) {
  ctx.tracker.Attachment(name, who);
  v1::AttachVolumeRequest r;
  r.set_name(name);
  r.set_attacher(who);
  return S(ctx).AttachVolume(r);
}
Status Detach(Context& ctx, const std::string& name, const std::string& who) {
  v1::DetachVolumeRequest r;
  r.set_name(name);
  r.set_attacher(who);
  return S(ctx).DetachVolume(r);
}
Result<v1::Volume> Expand(Context& ctx, const std::string& name, std::uint64_t size) {
  v1::ExpandVolumeRequest r;
  r.set_name(name);
  r.set_size_bytes(size);
  return S(ctx).ExpandVolume(r);
}
Result<v1::Snapshot> Snap(Context& ctx, const std::string& volume, const std::string& name) {
  ctx.tracker.Snapshot(volume, name);
  v1::CreateSnapshotRequest r;
  r.set_volume(volume);
  *r.mutable_metadata() = ctx.Meta(name);
  return S(ctx).CreateSnapshot(r);
}
Result<v1::ListSnapshotsResponse> ListSnaps(Context& ctx, const std::string& volume) {
  v1::ListSnapshotsRequest r;
  r.set_volume(volume);
  return S(ctx).ListSnapshots(r);
}
Status DeleteSnap(Context& ctx, const std::string& volume, const std::string& name) {
  v1::DeleteSnapshotRequest r;
  r.set_volume(volume);
  r.set_name(name);
  return S(ctx).DeleteSnapshot(r);
}
Result<v1::Volume> Revert(Context& ctx, const std::string& volume, const std::string& snapshot) {
  v1::RevertVolumeRequest r;
  r.set_volume(volume);
  r.set_snapshot(snapshot);
  return S(ctx).RevertVolume(r);
}
Result<Operation> Scrub(Context& ctx, const std::string& volume, bool report_only = false) {
  v1::ScrubVolumeRequest r;
  r.set_name(volume);
  r.set_report_only(report_only);
  auto op = S(ctx).ScrubVolume(r);
  if (op.ok()) ctx.tracker.Op(*op);
  return op;
}
Result<v1::ChangedBlocks> Changed(Context& ctx, const std::string& volume,
                                  const std::string& from = {}, const std::string& to = {}) {
  v1::GetChangedBlocksRequest r;
  r.set_volume(volume);
  r.set_from_snapshot(from);
  r.set_to_snapshot(to);
  return S(ctx).GetChangedBlocks(r);
}

std::vector<std::string> SnapshotNames(const v1::ListSnapshotsResponse& list) {
  std::vector<std::string> names;
  for (const auto& s : list.snapshots()) names.push_back(s.metadata().name());
  return names;
}

int CountListed(Context& ctx, const std::string& name) {
  auto list = S(ctx).ListVolumes({});
  if (!list.ok()) return -1;
  return static_cast<int>(
      std::count_if(list->volumes().begin(), list->volumes().end(),
                    [&](const auto& v) { return v.metadata().name() == name; }));
}

testing::AssertionResult Unchanged(Context& ctx, const v1::Volume& before) {
  auto now = GetVolume(ctx, before.metadata().name());
  if (!now.ok()) return testing::AssertionFailure() << "GetVolume: " << now.status();
  if (VolumeState(*now) != VolumeState(before)) {
    return testing::AssertionFailure()
           << "the refused call changed the volume:\n  before: " << VolumeState(before)
           << "\n  after:  " << VolumeState(*now);
  }
  return testing::AssertionSuccess();
}

testing::AssertionResult Absent(Context& ctx, const std::string& name) {
  auto v = GetVolume(ctx, name);
  if (v.status().code() == StatusCode::kNotFound) return testing::AssertionSuccess();
  return testing::AssertionFailure()
         << "volume " << name << " exists (GetVolume answers " << v.status() << ")";
}

// A volume's size as the contract reports it: spec.size_bytes and status.capacity_bytes.
testing::AssertionResult HasSize(const v1::Volume& v, std::uint64_t size) {
  if (v.spec().size_bytes() == size && v.status().capacity_bytes() == size) {
    return testing::AssertionSuccess();
  }
  return testing::AssertionFailure()
         << "expected size " << size << ", got spec.size_bytes " << v.spec().size_bytes()
         << " and status.capacity_bytes " << v.status().capacity_bytes();
}

void ExpectCreateRefused(Context& ctx, const std::function<void(v1::CreateVolumeRequest&)>& edit,
                         StatusCode code, const std::string& field) {
  auto request = ctx.VolumeRequest(ctx.Name("bad"));
  edit(request);
  ctx.tracker.Volume(request.metadata().name());
  EXPECT_TRUE(HasCode(S(ctx).CreateVolume(request), code, field));
  if (IsValidName(request.metadata().name())) {
    EXPECT_TRUE(Absent(ctx, request.metadata().name()));
  }
}

}  // namespace

void AddStorageTests(Env& env, std::vector<TestDef>& tests) {
  const auto& caps = env.storage_caps;
  const int repeat = env.fixtures.repeat;
  const int threads = env.fixtures.concurrency;
  const std::string lifecycle = "StorageLifecycle";
  const std::string capabilities = "StorageCapabilities";

  tests.push_back(
      {lifecycle,
       "CreateGetListDelete",
       {Op("CreateVolume"), Op("GetVolume"), Op("ListVolumes"), Op("DeleteVolume")},
       [](Context& ctx) {
         auto request = ctx.VolumeRequest(ctx.Name("vol"));
         const std::string name = request.metadata().name();
         CONF_ASSIGN_OR_FAIL(auto volume, ctx.CreateVolume(request));
         EXPECT_EQ(volume.metadata().name(), name);
         EXPECT_FALSE(volume.metadata().uid().empty()) << "CreateVolume must set metadata.uid";
         EXPECT_TRUE(HasSize(volume, ctx.fx().volume_size));
         EXPECT_EQ(volume.status().phase(), v1::VOLUME_PHASE_AVAILABLE);
         EXPECT_TRUE(volume.status().attached_to().empty());
         CONF_ASSIGN_OR_FAIL(auto got, GetVolume(ctx, name));
         EXPECT_EQ(got.metadata().uid(), volume.metadata().uid());
         EXPECT_EQ(CountListed(ctx, name), 1);
         v1::ListVolumesRequest selected;
         (*selected.mutable_label_selector())["hci-conformance"] = ctx.env.run_id;
         CONF_ASSIGN_OR_FAIL(auto matching, S(ctx).ListVolumes(selected));
         EXPECT_TRUE(std::any_of(matching.volumes().begin(), matching.volumes().end(),
                                 [&](const auto& v) { return v.metadata().name() == name; }));
         (*selected.mutable_label_selector())["hci-conformance"] = "no-such-run";
         CONF_ASSIGN_OR_FAIL(auto other, S(ctx).ListVolumes(selected));
         EXPECT_FALSE(std::any_of(other.volumes().begin(), other.volumes().end(),
                                  [&](const auto& v) { return v.metadata().name() == name; }));
         EXPECT_TRUE(IsOk(DeleteVolume(ctx, name)));
         EXPECT_TRUE(Absent(ctx, name));
         EXPECT_EQ(CountListed(ctx, name), 0);
       }});

  tests.push_back(
      {lifecycle,
       "AttachDetach",
       {Op("AttachVolume"), Op("DetachVolume"), Op("DeleteVolume")},
       [](Context& ctx) {
         CONF_ASSIGN_OR_FAIL(auto volume, ctx.NewVolume());
         const std::string name = volume.metadata().name();
         const std::string a = ctx.Name("owner-a");
         const std::string b = ctx.Name("owner-b");
         CONF_ASSIGN_OR_FAIL(auto info, Attach(ctx, name, a));
         EXPECT_TRUE(!info.path().empty() || info.blockdev().fields().count("driver") > 0)
             << "AttachInfo has neither a path nor a blockdev with a driver";
         CONF_ASSIGN_OR_FAIL(auto attached, GetVolume(ctx, name));
         EXPECT_EQ(attached.status().attached_to(), a);
         EXPECT_EQ(attached.status().phase(), v1::VOLUME_PHASE_ATTACHED);
         // Documented: idempotent for the same attacher; FailedPrecondition for another one.
         EXPECT_TRUE(IsOk(Attach(ctx, name, a))) << "AttachVolume again by the same attacher";
         EXPECT_TRUE(Unchanged(ctx, attached));
         EXPECT_TRUE(HasCode(Attach(ctx, name, b), StatusCode::kFailedPrecondition))
             << "AttachVolume by a second attacher";
         EXPECT_TRUE(Unchanged(ctx, attached));
         // Documented: OK when not attached to that attacher.
         EXPECT_TRUE(IsOk(Detach(ctx, name, b))) << "DetachVolume by someone else";
         EXPECT_TRUE(Unchanged(ctx, attached));
         // Documented: FailedPrecondition while attached.
         EXPECT_TRUE(HasCode(DeleteVolume(ctx, name), StatusCode::kFailedPrecondition))
             << "DeleteVolume of an attached volume";
         EXPECT_TRUE(Unchanged(ctx, attached));
         EXPECT_TRUE(IsOk(Detach(ctx, name, a)));
         CONF_ASSIGN_OR_FAIL(auto detached, GetVolume(ctx, name));
         EXPECT_TRUE(detached.status().attached_to().empty());
         EXPECT_EQ(detached.status().phase(), v1::VOLUME_PHASE_AVAILABLE);
         EXPECT_TRUE(IsOk(Attach(ctx, name, b))) << "the volume is free for another attacher";
         EXPECT_TRUE(IsOk(Detach(ctx, name, b)));
         EXPECT_TRUE(IsOk(DeleteVolume(ctx, name)));
         EXPECT_TRUE(Absent(ctx, name));
       }});

  if (caps.expand() || caps.online_expand()) {
    if (caps.expand()) {
      tests.push_back({lifecycle, "Expand", {Op("ExpandVolume")}, [](Context& ctx) {
                         CONF_ASSIGN_OR_FAIL(auto volume, ctx.NewVolume());
                         const std::string name = volume.metadata().name();
                         const std::uint64_t size = ctx.fx().volume_size;
                         CONF_ASSIGN_OR_FAIL(auto grown, Expand(ctx, name, 2 * size));
                         EXPECT_TRUE(HasSize(grown, 2 * size));
                         CONF_ASSIGN_OR_FAIL(auto now, GetVolume(ctx, name));
                         EXPECT_TRUE(HasSize(now, 2 * size));
                         // Documented: shrinking gives InvalidArgument naming size_bytes.
                         EXPECT_TRUE(HasCode(Expand(ctx, name, size), StatusCode::kInvalidArgument,
                                             "size_bytes"))
                             << "shrinking a volume";
                         EXPECT_TRUE(Unchanged(ctx, now));
                         EXPECT_TRUE(HasCode(Expand(ctx, name, 2 * size + 1),
                                             StatusCode::kInvalidArgument, "size_bytes"))
                             << "a size that is not a multiple of 4096";
                         EXPECT_TRUE(Unchanged(ctx, now));
                         CONF_ASSIGN_OR_FAIL(auto same, Expand(ctx, name, 2 * size));
                         EXPECT_TRUE(HasSize(same, 2 * size)) << "expanding to the same size";
                       }});
    }
    const bool online = caps.online_expand();
    tests.push_back({lifecycle, "ExpandAttached", {Op("ExpandVolume")}, [online](Context& ctx) {
                       CONF_ASSIGN_OR_FAIL(auto volume, ctx.NewVolume());
                       const std::string name = volume.metadata().name();
                       const std::uint64_t size = ctx.fx().volume_size;
                       CONF_ASSERT_OK(Attach(ctx, name, ctx.Name("owner")));
                       CONF_ASSIGN_OR_FAIL(auto before, GetVolume(ctx, name));
                       auto grown = Expand(ctx, name, 2 * size);
                       if (online) {
                         ASSERT_TRUE(IsOk(grown)) << "online_expand is claimed";
                         EXPECT_TRUE(HasSize(*grown, 2 * size));
                       } else {
                         EXPECT_TRUE(HasCode(grown, StatusCode::kFailedPrecondition) ||
                                     HasCode(grown, StatusCode::kUnimplemented))
                             << "online_expand is not claimed: ExpandVolume of an attached "
                                "volume must be refused (FailedPrecondition or Unimplemented), "
                                "got "
                             << grown.status();
                         EXPECT_TRUE(Unchanged(ctx, before));
                       }
                     }});
    // The rest of ExpandVolume's contract while detached, when only online_expand is claimed.
    if (!caps.expand()) {
      tests.push_back(
          {capabilities, "ExpandDetachedRefused", {Op("ExpandVolume")}, [](Context& ctx) {
             CONF_ASSIGN_OR_FAIL(auto volume, ctx.NewVolume());
             auto grown = Expand(ctx, volume.metadata().name(), 2 * ctx.fx().volume_size);
             EXPECT_TRUE(HasCode(grown, StatusCode::kFailedPrecondition) ||
                         HasCode(grown, StatusCode::kUnimplemented))
                 << "expand is not claimed: got " << grown.status();
             EXPECT_TRUE(Unchanged(ctx, volume));
           }});
    }
  } else {
    tests.push_back({capabilities, "ExpandUnimplemented", {Op("ExpandVolume")}, [](Context& ctx) {
                       CONF_ASSIGN_OR_FAIL(auto volume, ctx.NewVolume());
                       EXPECT_TRUE(
                           HasCode(Expand(ctx, volume.metadata().name(), 2 * ctx.fx().volume_size),
                                   StatusCode::kUnimplemented));
                       EXPECT_TRUE(Unchanged(ctx, volume));
                     }});
  }

  if (caps.snapshots()) {
    tests.push_back({lifecycle,
                     "Snapshots",
                     {Op("CreateSnapshot"), Op("ListSnapshots"), Op("DeleteSnapshot")},
                     [](Context& ctx) {
                       CONF_ASSIGN_OR_FAIL(auto volume, ctx.NewVolume());
                       const std::string v = volume.metadata().name();
                       const std::string s1 = ctx.Name("snap-a");
                       const std::string s2 = ctx.Name("snap-b");
                       CONF_ASSIGN_OR_FAIL(auto first, Snap(ctx, v, s1));
                       EXPECT_EQ(first.metadata().name(), s1);
                       EXPECT_EQ(first.volume(), v);
                       EXPECT_FALSE(first.metadata().uid().empty());
                       CONF_ASSERT_OK(Snap(ctx, v, s2));
                       CONF_ASSIGN_OR_FAIL(auto listed, ListSnaps(ctx, v));
                       auto names = SnapshotNames(listed);
                       std::sort(names.begin(), names.end());
                       std::vector<std::string> expected{s1, s2};
                       std::sort(expected.begin(), expected.end());
                       EXPECT_EQ(names, expected);
                       EXPECT_TRUE(HasCode(Snap(ctx, ctx.Name("missing"), ctx.Name("snap")),
                                           StatusCode::kNotFound))
                           << "CreateSnapshot of a volume that does not exist";
                       EXPECT_TRUE(IsOk(DeleteSnap(ctx, v, s1)));
                       CONF_ASSIGN_OR_FAIL(auto after, ListSnaps(ctx, v));
                       EXPECT_EQ(SnapshotNames(after), (std::vector<std::string>{s2}));
                       // The volume's snapshots go with it.
                       EXPECT_TRUE(IsOk(DeleteVolume(ctx, v)))
                           << "DeleteVolume of a volume with snapshots";
                       EXPECT_TRUE(Absent(ctx, v));
                     }});
    tests.push_back(
        {"StorageIdempotency", "CreateSnapshot", {Op("CreateSnapshot")}, [repeat](Context& ctx) {
           CONF_ASSIGN_OR_FAIL(auto volume, ctx.NewVolume());
           const std::string v = volume.metadata().name();
           const std::string s = ctx.Name("snap");
           CONF_ASSIGN_OR_FAIL(auto first, Snap(ctx, v, s));
           for (int i = 1; i < repeat; ++i) {
             auto again = Snap(ctx, v, s);
             ASSERT_TRUE(IsOk(again)) << "CreateSnapshot, try " << i + 1;
             EXPECT_EQ(again->metadata().uid(), first.metadata().uid());
           }
           CONF_ASSIGN_OR_FAIL(auto listed, ListSnaps(ctx, v));
           EXPECT_EQ(SnapshotNames(listed), (std::vector<std::string>{s}));
         }});
    tests.push_back(
        {"StorageIdempotency", "DeleteSnapshot", {Op("DeleteSnapshot")}, [repeat](Context& ctx) {
           CONF_ASSIGN_OR_FAIL(auto volume, ctx.NewVolume());
           const std::string v = volume.metadata().name();
           const std::string s = ctx.Name("snap");
           CONF_ASSERT_OK(Snap(ctx, v, s));
           for (int i = 0; i < repeat; ++i) {
             EXPECT_TRUE(IsOk(DeleteSnap(ctx, v, s))) << "DeleteSnapshot, try " << i + 1;
           }
           CONF_ASSIGN_OR_FAIL(auto listed, ListSnaps(ctx, v));
           EXPECT_EQ(listed.snapshots_size(), 0);
         }});
  } else {
    tests.push_back(
        {capabilities,
         "SnapshotsUnimplemented",
         {Op("CreateSnapshot"), Op("ListSnapshots"), Op("DeleteSnapshot")},
         [](Context& ctx) {
           CONF_ASSIGN_OR_FAIL(auto volume, ctx.NewVolume());
           const std::string v = volume.metadata().name();
           EXPECT_TRUE(HasCode(Snap(ctx, v, ctx.Name("snap")), StatusCode::kUnimplemented));
           EXPECT_TRUE(HasCode(ListSnaps(ctx, v), StatusCode::kUnimplemented));
           EXPECT_TRUE(HasCode(DeleteSnap(ctx, v, ctx.Name("snap")), StatusCode::kUnimplemented));
         }});
  }

  if (caps.revert() && caps.snapshots()) {
    tests.push_back(
        {lifecycle, "Revert", {Op("RevertVolume")}, [](Context& ctx) {
           CONF_ASSIGN_OR_FAIL(auto volume, ctx.NewVolume());
           const std::string v = volume.metadata().name();
           const std::string s = ctx.Name("snap");
           CONF_ASSERT_OK(Snap(ctx, v, s));
           CONF_ASSIGN_OR_FAIL(auto reverted, Revert(ctx, v, s));
           EXPECT_EQ(reverted.metadata().uid(), volume.metadata().uid());
           EXPECT_TRUE(HasCode(Revert(ctx, v, ctx.Name("missing")), StatusCode::kNotFound))
               << "RevertVolume to a snapshot that does not exist";
           const std::string owner = ctx.Name("owner");
           CONF_ASSERT_OK(Attach(ctx, v, owner));
           CONF_ASSIGN_OR_FAIL(auto attached, GetVolume(ctx, v));
           // Documented: the volume must be detached.
           EXPECT_TRUE(HasCode(Revert(ctx, v, s), StatusCode::kFailedPrecondition))
               << "RevertVolume of an attached volume";
           EXPECT_TRUE(Unchanged(ctx, attached));
           EXPECT_TRUE(IsOk(Detach(ctx, v, owner)));
         }});
  } else if (!caps.revert()) {
    tests.push_back({capabilities, "RevertUnimplemented", {Op("RevertVolume")}, [](Context& ctx) {
                       CONF_ASSIGN_OR_FAIL(auto volume, ctx.NewVolume());
                       EXPECT_TRUE(HasCode(Revert(ctx, volume.metadata().name(), ctx.Name("snap")),
                                           StatusCode::kUnimplemented));
                       EXPECT_TRUE(Unchanged(ctx, volume));
                     }});
  }

  if (caps.clone()) {
    const bool snapshots = caps.snapshots();
    tests.push_back({lifecycle, "Clone", {Op("CreateVolume")}, [snapshots](Context& ctx) {
                       CONF_ASSIGN_OR_FAIL(auto source, ctx.NewVolume("src"));
                       const std::string src = source.metadata().name();
                       auto request = ctx.VolumeRequest(ctx.Name("clone"));
                       request.mutable_spec()->set_size_bytes(0);
                       request.mutable_spec()->mutable_source()->set_volume(src);
                       CONF_ASSIGN_OR_FAIL(auto clone, ctx.CreateVolume(request));
                       EXPECT_TRUE(HasSize(clone, ctx.fx().volume_size))
                           << "a clone with size 0 has its source's size";
                       auto smaller = ctx.VolumeRequest(ctx.Name("clone-small"));
                       smaller.mutable_spec()->set_size_bytes(ctx.fx().volume_size / 2 / 4096 *
                                                              4096);
                       smaller.mutable_spec()->mutable_source()->set_volume(src);
                       ctx.tracker.Volume(smaller.metadata().name());
                       EXPECT_TRUE(HasCode(S(ctx).CreateVolume(smaller),
                                           StatusCode::kInvalidArgument, "spec.size_bytes"))
                           << "a clone smaller than its source";
                       EXPECT_TRUE(Absent(ctx, smaller.metadata().name()));
                       auto orphan = ctx.VolumeRequest(ctx.Name("clone-orphan"));
                       orphan.mutable_spec()->mutable_source()->set_volume(ctx.Name("missing"));
                       ctx.tracker.Volume(orphan.metadata().name());
                       EXPECT_TRUE(HasCode(S(ctx).CreateVolume(orphan), StatusCode::kNotFound,
                                           "spec.source.volume"))
                           << "a clone of a volume that does not exist";
                       EXPECT_TRUE(Absent(ctx, orphan.metadata().name()));
                       if (!snapshots) return;
                       const std::string snap = ctx.Name("snap");
                       CONF_ASSERT_OK(Snap(ctx, src, snap));
                       auto from_snap = ctx.VolumeRequest(ctx.Name("from-snap"));
                       from_snap.mutable_spec()->set_size_bytes(0);
                       auto* ref = from_snap.mutable_spec()->mutable_source()->mutable_snapshot();
                       ref->set_volume(src);
                       ref->set_snapshot(snap);
                       CONF_ASSIGN_OR_FAIL(auto restored, ctx.CreateVolume(from_snap));
                       EXPECT_TRUE(HasSize(restored, ctx.fx().volume_size));
                       ref->set_snapshot(ctx.Name("missing"));
                       from_snap.mutable_metadata()->set_name(ctx.Name("from-nothing"));
                       ctx.tracker.Volume(from_snap.metadata().name());
                       EXPECT_TRUE(HasCode(S(ctx).CreateVolume(from_snap), StatusCode::kNotFound))
                           << "a clone of a snapshot that does not exist";
                     }});
  } else {
    tests.push_back({capabilities, "CloneUnimplemented", {Op("CreateVolume")}, [](Context& ctx) {
                       CONF_ASSIGN_OR_FAIL(auto source, ctx.NewVolume("src"));
                       const std::string src = source.metadata().name();
                       ExpectCreateRefused(
                           ctx,
                           [&](auto& r) { r.mutable_spec()->mutable_source()->set_volume(src); },
                           StatusCode::kUnimplemented, "");
                     }});
  }

  if (caps.from_image()) {
    tests.push_back({lifecycle, "FromImage", {Op("CreateVolume")}, [](Context& ctx) {
                       if (ctx.env.image == nullptr) {
                         GTEST_SKIP()
                             << "from_image is claimed but no image backend is configured: bind "
                                "one in the config (host.backends.image) to exercise it";
                       }
                       CONF_ASSIGN_OR_FAIL(auto image, ctx.NewImage("img"));
                       auto request = ctx.VolumeRequest(ctx.Name("from-img"));
                       request.mutable_spec()->set_size_bytes(0);
                       request.mutable_spec()->mutable_source()->set_image(image.metadata().name());
                       CONF_ASSIGN_OR_FAIL(auto volume, ctx.CreateVolume(request));
                       const std::uint64_t expected =
                           (image.status().virtual_size_bytes() + 4095) / 4096 * 4096;
                       if (expected > 0) {
                         EXPECT_TRUE(HasSize(volume, expected))
                             << "size 0 means the image's virtual size ("
                             << image.status().virtual_size_bytes() << " bytes)";
                       }
                       auto orphan = ctx.VolumeRequest(ctx.Name("from-none"));
                       orphan.mutable_spec()->mutable_source()->set_image(ctx.Name("missing"));
                       ctx.tracker.Volume(orphan.metadata().name());
                       EXPECT_TRUE(HasCode(S(ctx).CreateVolume(orphan), StatusCode::kNotFound,
                                           "spec.source.image"))
                           << "a volume from an image that does not exist";
                       EXPECT_TRUE(Absent(ctx, orphan.metadata().name()));
                     }});
  } else {
    tests.push_back(
        {capabilities, "FromImageUnimplemented", {Op("CreateVolume")}, [](Context& ctx) {
           ExpectCreateRefused(
               ctx,
               [&](auto& r) { r.mutable_spec()->mutable_source()->set_image(ctx.Name("image")); },
               StatusCode::kUnimplemented, "");
         }});
  }

  {
    const std::uint32_t max = caps.replication() ? caps.max_replicas() : 1;
    const bool replicated = caps.replication();
    tests.push_back(
        {lifecycle, "ReplicaCount", {Op("CreateVolume")}, [max, replicated](Context& ctx) {
           auto request = ctx.VolumeRequest(ctx.Name("replicas"));
           request.mutable_spec()->set_replica_count(max);
           CONF_ASSIGN_OR_FAIL(auto volume, ctx.CreateVolume(request));
           if (replicated) {
             EXPECT_EQ(volume.status().replicas_size(), static_cast<int>(max))
                 << "status.replicas of a volume with replica_count max_replicas";
           }
           auto too_many = ctx.VolumeRequest(ctx.Name("replicas-over"));
           too_many.mutable_spec()->set_replica_count(max + 1);
           ctx.tracker.Volume(too_many.metadata().name());
           auto refused = S(ctx).CreateVolume(too_many);
           EXPECT_TRUE(HasCode(refused, StatusCode::kInvalidArgument, "spec.replica_count") ||
                       HasCode(refused, StatusCode::kResourceExhausted))
               << "replica_count above max_replicas (" << max << ") must be InvalidArgument "
               << "naming spec.replica_count or ResourceExhausted, got " << refused.status();
           EXPECT_TRUE(Absent(ctx, too_many.metadata().name()));
         }});
  }

  if (caps.changed_blocks()) {
    const bool snapshots = caps.snapshots();
    tests.push_back(
        {lifecycle, "ChangedBlocks", {Op("GetChangedBlocks")}, [snapshots](Context& ctx) {
           CONF_ASSIGN_OR_FAIL(auto volume, ctx.NewVolume());
           const std::string v = volume.metadata().name();
           auto check = [&](const v1::ChangedBlocks& blocks) {
             for (const auto& e : blocks.extents()) {
               EXPECT_LE(e.offset() + e.length(), blocks.size_bytes())
                   << "an extent beyond the end of the volume";
               EXPECT_GT(e.length(), 0u);
             }
           };
           CONF_ASSIGN_OR_FAIL(auto all, Changed(ctx, v));
           EXPECT_EQ(all.size_bytes(), ctx.fx().volume_size);
           check(all);
           if (!snapshots) return;
           const std::string s1 = ctx.Name("snap-a");
           const std::string s2 = ctx.Name("snap-b");
           CONF_ASSERT_OK(Snap(ctx, v, s1));
           CONF_ASSERT_OK(Snap(ctx, v, s2));
           CONF_ASSIGN_OR_FAIL(auto between, Changed(ctx, v, s1, s2));
           check(between);
           EXPECT_TRUE(HasCode(Changed(ctx, v, ctx.Name("missing")), StatusCode::kNotFound))
               << "GetChangedBlocks from a snapshot that does not exist";
         }});
  } else {
    tests.push_back(
        {capabilities, "ChangedBlocksUnimplemented", {Op("GetChangedBlocks")}, [](Context& ctx) {
           CONF_ASSIGN_OR_FAIL(auto volume, ctx.NewVolume());
           EXPECT_TRUE(HasCode(Changed(ctx, volume.metadata().name()), StatusCode::kUnimplemented));
         }});
  }

  if (caps.scrub()) {
    tests.push_back({lifecycle, "Scrub", {Op("ScrubVolume")}, [](Context& ctx) {
                       CONF_ASSIGN_OR_FAIL(auto volume, ctx.NewVolume());
                       const std::string v = volume.metadata().name();
                       for (bool report_only : {true, false}) {
                         CONF_ASSIGN_OR_FAIL(auto op, Scrub(ctx, v, report_only));
                         CONF_ASSERT_OK(ctx.Wait(op));
                         EXPECT_EQ(op.status().kind(), "ScrubVolume");
                         CONF_ASSIGN_OR_FAIL(auto now, GetVolume(ctx, v));
                         const auto& last = now.status().last_scrub();
                         EXPECT_TRUE(now.status().has_last_scrub())
                             << "a finished scrub is reported in status.last_scrub";
                         EXPECT_EQ(last.bytes_compared(), ctx.fx().volume_size)
                             << "a scrub compares the whole volume";
                         EXPECT_EQ(last.report_only(), report_only);
                         EXPECT_EQ(last.mismatched_bytes(), 0u) << "a new volume's replicas agree";
                         EXPECT_EQ(last.code(), 0) << last.error();
                       }
                     }});
  } else {
    tests.push_back({capabilities, "ScrubUnimplemented", {Op("ScrubVolume")}, [](Context& ctx) {
                       CONF_ASSIGN_OR_FAIL(auto volume, ctx.NewVolume());
                       EXPECT_TRUE(HasCode(Scrub(ctx, volume.metadata().name()),
                                           StatusCode::kUnimplemented));
                     }});
  }

  if (caps.thin_provisioning()) {
    tests.push_back({lifecycle, "ThinProvisioning", {Op("CreateVolume")}, [](Context& ctx) {
                       CONF_ASSIGN_OR_FAIL(auto volume, ctx.NewVolume());
                       CONF_ASSIGN_OR_FAIL(auto now, GetVolume(ctx, volume.metadata().name()));
                       EXPECT_LT(now.status().actual_size_bytes(), now.spec().size_bytes())
                           << "thin_provisioning is claimed, but a new blank volume occupies "
                              "its whole size";
                     }});
  }

  // ---------------------------------------------------------------------------------------
  // Idempotency

  tests.push_back(
      {"StorageIdempotency", "CreateVolume", {Op("CreateVolume")}, [repeat](Context& ctx) {
         auto request = ctx.VolumeRequest(ctx.Name("vol"));
         CONF_ASSIGN_OR_FAIL(auto first, ctx.CreateVolume(request));
         for (int i = 1; i < repeat; ++i) {
           auto again = S(ctx).CreateVolume(request);
           ASSERT_TRUE(IsOk(again)) << "CreateVolume with the same spec, try " << i + 1;
           EXPECT_EQ(again->metadata().uid(), first.metadata().uid())
               << "a repeated create made a new volume";
         }
         EXPECT_EQ(CountListed(ctx, request.metadata().name()), 1);
         auto other = request;
         other.mutable_spec()->set_size_bytes(2 * request.spec().size_bytes());
         EXPECT_TRUE(HasCode(S(ctx).CreateVolume(other), StatusCode::kAlreadyExists))
             << "CreateVolume of an existing name with another size";
         EXPECT_TRUE(Unchanged(ctx, first));
       }});

  tests.push_back(
      {"StorageIdempotency", "DeleteVolume", {Op("DeleteVolume")}, [repeat](Context& ctx) {
         CONF_ASSIGN_OR_FAIL(auto volume, ctx.NewVolume());
         for (int i = 0; i < repeat; ++i) {
           EXPECT_TRUE(IsOk(DeleteVolume(ctx, volume.metadata().name())))
               << "DeleteVolume, try " << i + 1;
         }
         EXPECT_TRUE(Absent(ctx, volume.metadata().name()));
         EXPECT_TRUE(IsOk(DeleteVolume(ctx, ctx.Name("never"))))
             << "DeleteVolume of a volume that never existed";
       }});

  tests.push_back({"StorageIdempotency",
                   "AttachDetachVolume",
                   {Op("AttachVolume"), Op("DetachVolume")},
                   [repeat](Context& ctx) {
                     CONF_ASSIGN_OR_FAIL(auto volume, ctx.NewVolume());
                     const std::string name = volume.metadata().name();
                     const std::string owner = ctx.Name("owner");
                     for (int i = 0; i < repeat; ++i) {
                       EXPECT_TRUE(IsOk(Attach(ctx, name, owner))) << "AttachVolume, try " << i + 1;
                     }
                     for (int i = 0; i < repeat; ++i) {
                       EXPECT_TRUE(IsOk(Detach(ctx, name, owner))) << "DetachVolume, try " << i + 1;
                     }
                     CONF_ASSIGN_OR_FAIL(auto now, GetVolume(ctx, name));
                     EXPECT_TRUE(now.status().attached_to().empty());
                   }});

  // ---------------------------------------------------------------------------------------
  // Bad requests

  struct CreateCase {
    const char* test;
    const char* field;
    std::function<void(v1::CreateVolumeRequest&)> edit;
  };
  std::vector<CreateCase> creates = {
      {"CreateVolume_metadata_name", "metadata.name",
       [](auto& r) { r.mutable_metadata()->set_name(""); }},
      {"CreateVolume_metadata_name_invalid", "metadata.name",
       [](auto& r) { r.mutable_metadata()->set_name("../escape"); }},
      {"CreateVolume_spec_size_bytes", "spec.size_bytes",
       [](auto& r) { r.mutable_spec()->set_size_bytes(0); }},
      {"CreateVolume_spec_size_bytes_unaligned", "spec.size_bytes",
       [](auto& r) { r.mutable_spec()->set_size_bytes(r.spec().size_bytes() + 1); }},
  };
  for (auto& c : creates) {
    tests.push_back({"StorageNegative",
                     c.test,
                     {Op("CreateVolume")},
                     [field = std::string(c.field), edit = c.edit](Context& ctx) {
                       ExpectCreateRefused(ctx, edit, StatusCode::kInvalidArgument, field);
                     }});
  }
  tests.push_back(
      {"StorageNegative", "AttachVolume_attacher", {Op("AttachVolume")}, [](Context& ctx) {
         CONF_ASSIGN_OR_FAIL(auto volume, ctx.NewVolume());
         EXPECT_TRUE(HasCode(Attach(ctx, volume.metadata().name(), ""),
                             StatusCode::kInvalidArgument, "attacher"));
         EXPECT_TRUE(Unchanged(ctx, volume));
       }});
  tests.push_back(
      {"StorageNegative", "DetachVolume_attacher", {Op("DetachVolume")}, [](Context& ctx) {
         CONF_ASSIGN_OR_FAIL(auto volume, ctx.NewVolume());
         EXPECT_TRUE(HasCode(Detach(ctx, volume.metadata().name(), ""),
                             StatusCode::kInvalidArgument, "attacher"));
       }});
  if (caps.expand() || caps.online_expand()) {
    tests.push_back(
        {"StorageNegative", "ExpandVolume_size_bytes", {Op("ExpandVolume")}, [](Context& ctx) {
           CONF_ASSIGN_OR_FAIL(auto volume, ctx.NewVolume());
           EXPECT_TRUE(HasCode(Expand(ctx, volume.metadata().name(), 0),
                               StatusCode::kInvalidArgument, "size_bytes"));
           EXPECT_TRUE(Unchanged(ctx, volume));
         }});
  }
  if (caps.snapshots()) {
    tests.push_back({"StorageNegative",
                     "CreateSnapshot_metadata_name",
                     {Op("CreateSnapshot")},
                     [](Context& ctx) {
                       CONF_ASSIGN_OR_FAIL(auto volume, ctx.NewVolume());
                       EXPECT_TRUE(HasCode(Snap(ctx, volume.metadata().name(), ""),
                                           StatusCode::kInvalidArgument, "metadata.name"));
                     }});
    tests.push_back(
        {"StorageNegative", "CreateSnapshot_volume", {Op("CreateSnapshot")}, [](Context& ctx) {
           EXPECT_TRUE(
               HasCode(Snap(ctx, "", ctx.Name("snap")), StatusCode::kInvalidArgument, "volume"));
         }});
    tests.push_back(
        {"StorageNegative", "DeleteSnapshot_name", {Op("DeleteSnapshot")}, [](Context& ctx) {
           CONF_ASSIGN_OR_FAIL(auto volume, ctx.NewVolume());
           EXPECT_TRUE(HasCode(DeleteSnap(ctx, volume.metadata().name(), ""),
                               StatusCode::kInvalidArgument, "name"));
         }});
    tests.push_back(
        {"StorageNegative", "DeleteSnapshot_volume", {Op("DeleteSnapshot")}, [](Context& ctx) {
           EXPECT_TRUE(HasCode(DeleteSnap(ctx, "", ctx.Name("snap")), StatusCode::kInvalidArgument,
                               "volume"));
         }});
    tests.push_back(
        {"StorageNegative", "ListSnapshots_volume", {Op("ListSnapshots")}, [](Context& ctx) {
           EXPECT_TRUE(HasCode(ListSnaps(ctx, ""), StatusCode::kInvalidArgument, "volume"));
         }});
    tests.push_back({"StorageNotFound", "ListSnapshots", {Op("ListSnapshots")}, [](Context& ctx) {
                       EXPECT_TRUE(
                           HasCode(ListSnaps(ctx, ctx.Name("missing")), StatusCode::kNotFound));
                     }});
  }
  if (caps.revert()) {
    tests.push_back(
        {"StorageNegative", "RevertVolume_snapshot", {Op("RevertVolume")}, [](Context& ctx) {
           CONF_ASSIGN_OR_FAIL(auto volume, ctx.NewVolume());
           EXPECT_TRUE(HasCode(Revert(ctx, volume.metadata().name(), ""),
                               StatusCode::kInvalidArgument, "snapshot"));
           EXPECT_TRUE(Unchanged(ctx, volume));
         }});
  }

  struct NamedCall {
    const char* op;
    bool claimed;
    std::function<Status(Context&, const std::string&)> call;
  };
  std::vector<NamedCall> calls = {
      {"GetVolume", true,
       [](Context& c, const std::string& n) { return GetVolume(c, n).status(); }},
      {"DeleteVolume", true, [](Context& c, const std::string& n) { return DeleteVolume(c, n); }},
      {"AttachVolume", true,
       [](Context& c, const std::string& n) { return Attach(c, n, c.Name("owner")).status(); }},
      {"DetachVolume", true,
       [](Context& c, const std::string& n) { return Detach(c, n, c.Name("owner")); }},
      {"ExpandVolume", caps.expand() || caps.online_expand(),
       [](Context& c, const std::string& n) {
         return Expand(c, n, 2 * c.fx().volume_size).status();
       }},
      {"RevertVolume", caps.revert(),
       [](Context& c, const std::string& n) { return Revert(c, n, c.Name("snap")).status(); }},
      {"GetChangedBlocks", caps.changed_blocks(),
       [](Context& c, const std::string& n) { return Changed(c, n).status(); }},
      {"ScrubVolume", caps.scrub(),
       [](Context& c, const std::string& n) { return Scrub(c, n).status(); }},
  };
  for (auto& c : calls) {
    if (!c.claimed) continue;
    std::string op = c.op;
    tests.push_back({"StorageNegative", op + "_name", {Op(op)}, [call = c.call](Context& ctx) {
                       Status s = call(ctx, "");
                       EXPECT_TRUE(HasCode(s, StatusCode::kInvalidArgument, "name") ||
                                   HasCode(s, StatusCode::kInvalidArgument, "volume"))
                           << "expected InvalidArgument naming the volume field, got " << s;
                     }});
    // Deletes and detaches of what does not exist are OK (ComputeIdempotency-style checks).
    if (op == "DeleteVolume" || op == "DetachVolume") continue;
    tests.push_back({"StorageNotFound", op, {Op(op)}, [call = c.call](Context& ctx) {
                       EXPECT_TRUE(HasCode(call(ctx, ctx.Name("missing")), StatusCode::kNotFound));
                     }});
  }

  // ---------------------------------------------------------------------------------------
  // Races on one volume

  tests.push_back(
      {"StorageConcurrency", "CreateVolume", {Op("CreateVolume")}, [threads](Context& ctx) {
         auto request = ctx.VolumeRequest(ctx.Name("vol"));
         ctx.tracker.Volume(request.metadata().name());
         bool slowed = SlowNextCall(ctx.env.storage, "CreateVolume");
         auto results = ctx.Race<Result<v1::Volume>>(
             threads, [&](int) { return S(ctx).CreateVolume(request); });
         ClearFaults(ctx.env.storage);
         EXPECT_TRUE(OneWinsOthersAborted(Count(results), slowed));
         std::set<std::string> uids;
         for (const auto& r : results) {
           if (r.ok()) uids.insert(r->metadata().uid());
         }
         EXPECT_EQ(uids.size(), 1u) << "concurrent creates made different volumes";
         EXPECT_EQ(CountListed(ctx, request.metadata().name()), 1);
       }});

  tests.push_back(
      {"StorageConcurrency", "AttachVolume", {Op("AttachVolume")}, [threads](Context& ctx) {
         CONF_ASSIGN_OR_FAIL(auto volume, ctx.NewVolume());
         const std::string name = volume.metadata().name();
         std::vector<std::string> owners;
         for (int i = 0; i < threads; ++i) owners.push_back(ctx.Name("owner"));
         for (const auto& o : owners) ctx.tracker.Attachment(name, o);
         bool slowed = SlowNextCall(ctx.env.storage, "AttachVolume");
         auto results = ctx.Race<Result<v1::AttachInfo>>(threads, [&](int i) {
           v1::AttachVolumeRequest r;
           r.set_name(name);
           r.set_attacher(owners[static_cast<std::size_t>(i)]);
           return S(ctx).AttachVolume(r);
         });
         ClearFaults(ctx.env.storage);
         std::vector<std::string> winners;
         std::vector<std::string> unexpected;
         int aborted = 0;
         for (std::size_t i = 0; i < results.size(); ++i) {
           const Status s = results[i].status();
           if (s.ok()) {
             winners.push_back(owners[i]);
           } else if (s.code() == StatusCode::kAborted) {
             ++aborted;
           } else if (s.code() != StatusCode::kFailedPrecondition) {
             unexpected.push_back(s.ToString());
           }
         }
         EXPECT_EQ(winners.size(), 1u) << "attachers racing for one volume: exactly one wins";
         EXPECT_TRUE(unexpected.empty())
             << "the losers answer Aborted or FailedPrecondition; got " << unexpected.front();
         if (slowed) {
           EXPECT_GE(aborted, 1) << "no call was Aborted while the first was slowed";
         }
         CONF_ASSIGN_OR_FAIL(auto now, GetVolume(ctx, name));
         if (winners.size() == 1) {
           EXPECT_EQ(now.status().attached_to(), winners.front())
               << "the volume is attached to someone other than the winner";
         }
       }});

  tests.push_back(
      {"StorageConcurrency", "DeleteVolume", {Op("DeleteVolume")}, [threads](Context& ctx) {
         CONF_ASSIGN_OR_FAIL(auto volume, ctx.NewVolume());
         const std::string name = volume.metadata().name();
         bool slowed = SlowNextCall(ctx.env.storage, "DeleteVolume");
         auto results = ctx.Race<Status>(threads, [&](int) { return DeleteVolume(ctx, name); });
         ClearFaults(ctx.env.storage);
         EXPECT_TRUE(OneWinsOthersAborted(Count(results), slowed));
         EXPECT_TRUE(Absent(ctx, name));
       }});
}

}  // namespace hci::conformance::internal
