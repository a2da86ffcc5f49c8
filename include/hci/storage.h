// StorageBackend: volumes, snapshots, clone, expand, attach.
#pragma once

#include "hci/backend.h"
#include "hci/export.h"
#include "hci/operation.h"
#include "hci/result.h"
#include "hci/v1/storage.pb.h"

namespace hci {

/// Block volumes. Sizes are bytes and multiples of 4096. Volume and snapshot names are
/// RFC 1123 labels (validated by the core before any call).
class HCI_EXPORT StorageBackend : public Backend {
 public:
  ~StorageBackend() override;

  /// What this backend implements; every optional method it does not claim answers
  /// Unimplemented. Cheap and constant for the backend's lifetime.
  virtual v1::StorageCapabilities Capabilities() const = 0;

  /// Creates a volume, blank or from `spec.source` (image, snapshot or volume: a clone).
  /// Idempotent by name: the same spec returns the existing volume; a different one gives
  /// AlreadyExists. NotFound when the source does not exist; InvalidArgument naming the field
  /// for a bad size ("spec.size_bytes"); ResourceExhausted when replicas cannot be placed.
  virtual Result<v1::Volume> CreateVolume(const v1::CreateVolumeRequest& request) = 0;
  /// NotFound when there is no such volume.
  virtual Result<v1::Volume> GetVolume(const v1::GetVolumeRequest& request) = 0;
  /// The volumes carrying every label of `label_selector` (all volumes when it is empty).
  virtual Result<v1::ListVolumesResponse> ListVolumes(const v1::ListVolumesRequest& request) = 0;
  /// OK when it does not exist. FailedPrecondition while attached.
  virtual Status DeleteVolume(const v1::DeleteVolumeRequest& request) = 0;

  /// Marks the volume in use by `attacher` and returns how QEMU opens it. Idempotent for the
  /// same attacher; FailedPrecondition for another one.
  virtual Result<v1::AttachInfo> AttachVolume(const v1::AttachVolumeRequest& request) = 0;
  /// OK when not attached to `attacher`.
  virtual Status DetachVolume(const v1::DetachVolumeRequest& request) = 0;

  /// Optional (capability `expand`/`online_expand`): grows the volume to `size_bytes`.
  /// Shrinking gives InvalidArgument ("size_bytes: ... smaller than the current size").
  /// While the volume is attached (`online_expand`), a backend whose attacher is a VM of this
  /// host tells the compute backend through PluginContext::compute()->ResizeDisk(), so that the
  /// guest sees the new size, as KubeVirt does after a PersistentVolumeClaim grows.
  virtual Result<v1::Volume> ExpandVolume(const v1::ExpandVolumeRequest& request);
  /// Optional (capability `snapshots`). Idempotent by name within the volume.
  virtual Result<v1::Snapshot> CreateSnapshot(const v1::CreateSnapshotRequest& request);
  /// Optional (capability `snapshots`). The snapshots of `volume`; NotFound for an unknown
  /// volume.
  virtual Result<v1::ListSnapshotsResponse> ListSnapshots(const v1::ListSnapshotsRequest& request);
  /// OK when it does not exist.
  virtual Status DeleteSnapshot(const v1::DeleteSnapshotRequest& request);
  /// Optional (capability `revert`): the volume must be detached (FailedPrecondition).
  virtual Result<v1::Volume> RevertVolume(const v1::RevertVolumeRequest& request);
  /// Optional (capability `changed_blocks`): extents that differ between two snapshots.
  virtual Result<v1::ChangedBlocks> GetChangedBlocks(const v1::GetChangedBlocksRequest& request);
  /// Optional (capability `scrub`): compares the content of the volume's replicas extent by
  /// extent and, unless `report_only`, rewrites an extent on a replica that differs from the
  /// replicas that agree on it. A long operation (kind "ScrubVolume", progress in bytes of the
  /// volume compared) that runs attached or detached. It succeeds when the comparison ran to the
  /// end: what it found is in VolumeStatus.last_scrub and in ScrubMismatch events. NotFound for
  /// an unknown volume; FailedPrecondition when fewer than two replicas can be compared.
  virtual Result<Operation> ScrubVolume(const v1::ScrubVolumeRequest& request);
};

}  // namespace hci
