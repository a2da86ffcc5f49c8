// `hcictl image import`, `hcictl volume create|resize|scrub|snapshot`.
#include <fmt/format.h>

#include <cctype>
#include <filesystem>
#include <iostream>
#include <system_error>

#include "hcictl_internal.h"

namespace hcictl {
namespace {

std::string Upper(std::string s) {
  for (char& c : s) c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
  return s;
}

// Each object exists at most once: an imperative create of an existing one is an error, as
// with kubectl create (apply is the idempotent way).
hci::Status MustNotExist(Context& ctx, const Resource& resource, const std::string& parent,
                         const std::string& name) {
  hci::Result<MessagePtr> existing = resource.get(ctx, parent, name);
  if (existing.ok()) {
    return hci::AlreadyExists(fmt::format("{}/{} already exists", resource.name, name));
  }
  if (existing.status().code() == hci::StatusCode::kNotFound) return hci::Status::OK();
  return existing.status();
}

}  // namespace

hci::Status RunImageImport(Context& ctx, const ImageImportOptions& options) {
  if (options.url.empty() == options.file.empty()) {
    return ctx.UsageError("image import needs exactly one of --url and --file");
  }
  v1::ImportImageRequest request;
  request.mutable_metadata()->set_name(options.name);
  if (!options.url.empty()) {
    request.mutable_spec()->set_url(options.url);
  } else {
    // The image backend wants an absolute path; a user types a relative one.
    std::error_code ec;
    const std::filesystem::path absolute = std::filesystem::absolute(options.file, ec);
    request.mutable_spec()->set_file(ec ? options.file : absolute.lexically_normal().string());
  }
  request.mutable_spec()->set_sha256(options.sha256);
  if (!options.format.empty()) {
    const pb::EnumValueDescriptor* format =
        v1::ImageFormat_descriptor()->FindValueByName("IMAGE_FORMAT_" + Upper(options.format));
    if (format == nullptr || format->number() == 0) {
      return ctx.UsageError(
          fmt::format("--format: \"{}\" is not an image format (raw, qcow2, vmdk, vhdx, vdi, iso)",
                      options.format));
    }
    request.mutable_spec()->set_format(static_cast<v1::ImageFormat>(format->number()));
  }
  HCI_ASSIGN_OR_RAISE(hci::ImageBackend * images, ctx.image());
  const Resource& resource = *FindResource("image");
  v1::GetImageRequest get;
  get.set_name(options.name);
  hci::Result<v1::Image> existing = images->GetImage(get);
  if (existing.ok() && existing->status().phase() == v1::IMAGE_PHASE_READY) {
    return hci::AlreadyExists(fmt::format("image/{} already exists", options.name));
  }
  if (!existing.ok() && existing.status().code() != hci::StatusCode::kNotFound) {
    return existing.status();
  }
  HCI_ASSIGN_OR_RAISE(hci::Operation op, images->ImportImage(request));
  hci::Status result = WaitWithProgress(op, "image/" + options.name + " importing");
  if (!result.ok()) {
    if (Interrupted()) return result;
    return result.WithContext(fmt::format("image/{}: import failed", options.name));
  }
  HCI_ASSIGN_OR_RAISE(v1::Image image, images->GetImage(get));
  return PrintResult(ctx, resource, image, "imported");
}

hci::Status RunVolumeCreate(Context& ctx, const VolumeOptions& options) {
  v1::CreateVolumeRequest request;
  request.mutable_metadata()->set_name(options.name);
  v1::VolumeSpec& spec = *request.mutable_spec();
  const int sources =
      !options.from_image.empty() + !options.from_volume.empty() + !options.from_snapshot.empty();
  if (sources > 1) {
    return ctx.UsageError("give at most one of --from-image, --from-volume, --from-snapshot");
  }
  if (options.size.empty() && sources == 0) {
    return ctx.UsageError("a blank volume needs --size");
  }
  if (!options.size.empty()) {
    HCI_ASSIGN_OR_RAISE(std::uint64_t size, ctx.Usage(ParseSize(options.size, "--size")));
    spec.set_size_bytes(size);
  }
  if (!options.from_image.empty()) spec.mutable_source()->set_image(options.from_image);
  if (!options.from_volume.empty()) spec.mutable_source()->set_volume(options.from_volume);
  if (!options.from_snapshot.empty()) {
    const size_t slash = options.from_snapshot.find('/');
    if (slash == std::string::npos || slash == 0 || slash + 1 == options.from_snapshot.size()) {
      return ctx.UsageError(
          fmt::format("--from-snapshot: \"{}\" is not VOLUME/SNAPSHOT", options.from_snapshot));
    }
    spec.mutable_source()->mutable_snapshot()->set_volume(options.from_snapshot.substr(0, slash));
    spec.mutable_source()->mutable_snapshot()->set_snapshot(
        options.from_snapshot.substr(slash + 1));
  }
  spec.set_replica_count(options.replicas);
  spec.set_linked_clone(options.linked_clone);
  const Resource& resource = *FindResource("volume");
  HCI_RETURN_NOT_OK(MustNotExist(ctx, resource, "", options.name));
  HCI_ASSIGN_OR_RAISE(hci::StorageBackend * storage, ctx.storage());
  HCI_ASSIGN_OR_RAISE(v1::Volume volume, storage->CreateVolume(request));
  return PrintResult(ctx, resource, volume, "created");
}

hci::Status RunVolumeResize(Context& ctx, const VolumeOptions& options) {
  HCI_ASSIGN_OR_RAISE(std::uint64_t size, ctx.Usage(ParseSize(options.size, "--size")));
  HCI_ASSIGN_OR_RAISE(hci::StorageBackend * storage, ctx.storage());
  v1::ExpandVolumeRequest request;
  request.set_name(options.name);
  request.set_size_bytes(size);
  HCI_ASSIGN_OR_RAISE(v1::Volume volume, storage->ExpandVolume(request));
  return PrintResult(ctx, *FindResource("volume"), volume,
                     "resized to " + HumanBytes(volume.status().capacity_bytes() != 0
                                                    ? volume.status().capacity_bytes()
                                                    : volume.spec().size_bytes()));
}

hci::Status RunVolumeScrub(Context& ctx, const VolumeScrubOptions& options) {
  HCI_ASSIGN_OR_RAISE(hci::StorageBackend * storage, ctx.storage());
  v1::ScrubVolumeRequest request;
  request.set_name(options.name);
  request.set_report_only(options.report_only);
  HCI_ASSIGN_OR_RAISE(hci::Operation op, storage->ScrubVolume(request));
  if (!options.wait) {
    // Operations live as long as the Host that started them, and hcictl's closes when it exits:
    // a backend may go on with the scrub (the replicated one does for an attached volume) or not.
    std::cout << "volume/" << options.name << " scrub started (operation " << op.id()
              << "); it may end when hcictl exits: use --wait to follow it" << std::endl;
    return hci::Status::OK();
  }
  hci::Status result = WaitWithProgress(op, "volume/" + options.name + " scrubbing");
  if (!result.ok()) {
    if (Interrupted()) return result;
    return result.WithContext(fmt::format("volume/{}: scrub failed", options.name));
  }
  v1::GetVolumeRequest get;
  get.set_name(options.name);
  HCI_ASSIGN_OR_RAISE(v1::Volume volume, storage->GetVolume(get));
  const v1::ScrubResult& scrub = volume.status().last_scrub();
  if (ctx.output != OutputFormat::kTable) {
    return PrintResult(ctx, *FindResource("volume"), volume, "scrubbed");
  }
  std::cout << fmt::format("volume/{} scrubbed: {} compared, {} mismatched, {} repaired{}\n",
                           options.name, HumanBytes(scrub.bytes_compared()),
                           HumanBytes(scrub.mismatched_bytes()), HumanBytes(scrub.repaired_bytes()),
                           scrub.report_only() ? " (report only)" : "");
  for (const v1::ScrubMismatch& m : scrub.mismatches()) {
    std::cout << fmt::format("  replica {} at [{}, +{}): {}\n", m.replica(), m.offset(), m.length(),
                             m.repaired() ? "repaired" : "not repaired");
  }
  return hci::Status::OK();
}

hci::Status RunSnapshot(Context& ctx, const SnapshotOptions& options) {
  const Resource& snapshots = *FindResource("snapshot");
  if (options.action == "list") {
    GetOptions get;
    get.kind = "snapshot";
    get.parent.volume = options.volume;
    return RunGet(ctx, get);
  }
  if (options.name.empty()) {
    return ctx.UsageError(
        fmt::format("volume snapshot {} needs VOLUME and SNAPSHOT", options.action));
  }
  HCI_ASSIGN_OR_RAISE(hci::StorageBackend * storage, ctx.storage());
  if (options.action == "create") {
    HCI_RETURN_NOT_OK(MustNotExist(ctx, snapshots, options.volume, options.name));
    v1::CreateSnapshotRequest request;
    request.set_volume(options.volume);
    request.mutable_metadata()->set_name(options.name);
    HCI_ASSIGN_OR_RAISE(v1::Snapshot snapshot, storage->CreateSnapshot(request));
    return PrintResult(ctx, snapshots, snapshot, "created");
  }
  if (options.action == "delete") {
    HCI_RETURN_NOT_OK(snapshots.get(ctx, options.volume, options.name).status());
    v1::DeleteSnapshotRequest request;
    request.set_volume(options.volume);
    request.set_name(options.name);
    HCI_RETURN_NOT_OK(storage->DeleteSnapshot(request));
    std::cout << "snapshot/" << options.name << " deleted" << std::endl;
    return hci::Status::OK();
  }
  if (options.action == "revert") {
    v1::RevertVolumeRequest request;
    request.set_volume(options.volume);
    request.set_snapshot(options.name);
    HCI_ASSIGN_OR_RAISE(v1::Volume volume, storage->RevertVolume(request));
    return PrintResult(ctx, *FindResource("volume"), volume,
                       "reverted to snapshot " + options.name);
  }
  return ctx.UsageError("unknown snapshot action \"" + options.action + "\"");
}

}  // namespace hcictl
