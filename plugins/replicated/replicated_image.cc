// Volumes from images (docs/replicated-plugin.md, "Volumes from images"): the host's image
// backend names the stored image's file (ImageStatus.path, capability local_path); qemu-img
// decodes it and writes it through the new volume's own engine, so every byte reaches the write
// quorum exactly as a guest's writes do.
#include <google/protobuf/util/json_util.h>

#include <chrono>

#include "replicated_internal.h"

namespace hci::replicated::plugin {
namespace {

using std::chrono::milliseconds;

constexpr char kVolumeKind[] = "Volume";
constexpr char kField[] = "spec.source.image";
// How often the copy's progress is read from the engine's counters.
constexpr milliseconds kProgressInterval{1000};

// qemu-img's name of a stored format; empty for one it should not be told to read.
std::string QemuFormat(api::ImageFormat format) {
  switch (format) {
    case api::IMAGE_FORMAT_RAW:
      return "raw";
    case api::IMAGE_FORMAT_QCOW2:
      return "qcow2";
    case api::IMAGE_FORMAT_VMDK:
      return "vmdk";
    case api::IMAGE_FORMAT_VHDX:
      return "vhdx";
    case api::IMAGE_FORMAT_VDI:
      return "vdi";
    case api::IMAGE_FORMAT_ISO:
      return "raw";
    default:
      return "";
  }
}

}  // namespace

Result<ImageSource> ResolveImage(PluginContext& context, const std::string& name) {
  ImageBackend* images = context.image();
  if (images == nullptr) {
    return FailedPrecondition(std::string(kField) + ": no image backend is configured on this " +
                              "host (host.backends.image)");
  }
  api::GetImageRequest get;
  get.set_name(name);
  auto image = images->GetImage(get);
  if (!image.ok()) {
    if (image.status().code() == StatusCode::kNotFound) {
      return NotFound(std::string(kField) + ": image " + Quote(name) + " does not exist");
    }
    return image.status().WithContext(std::string(kField) + ": image " + Quote(name));
  }
  const api::ImageStatus& status = image->status();
  if (status.phase() != api::IMAGE_PHASE_READY) {
    return FailedPrecondition(std::string(kField) + ": image " + Quote(name) + " is not ready (" +
                              api::ImagePhase_Name(status.phase()) + ")");
  }
  ImageSource out;
  out.name = name;
  out.path = status.path();
  out.format = QemuFormat(status.stored_format());
  out.virtual_size_bytes = status.virtual_size_bytes();
  if (out.path.empty() || out.path.front() != '/') {
    return FailedPrecondition(std::string(kField) + ": the image backend does not give image " +
                              Quote(name) + "'s file (capability local_path), which the " +
                              "replicated backend reads");
  }
  if (out.format.empty()) {
    return FailedPrecondition(std::string(kField) + ": image " + Quote(name) +
                              " is stored in format " +
                              api::ImageFormat_Name(status.stored_format()) +
                              ", which the replicated backend does not read");
  }
  return out;
}

Status FillFromImage(PluginContext& context, const ImageSource& image, const std::string& volume,
                     const EnginePaths& engine, std::uint64_t size_bytes) {
  OperationInfo info;
  info.kind = "CopyImage";
  info.object.set_kind(kVolumeKind);
  info.object.set_name(volume);
  OperationControl op = context.operations().Start(info);
  const auto began = std::chrono::steady_clock::now();

  // The engine's export under a raw node (qemu-img -O raw), in json: syntax so that no character
  // of the socket's path needs escaping.
  google::protobuf::Struct blockdev;
  auto& fields = *blockdev.mutable_fields();
  fields["driver"].set_string_value("raw");
  *fields["file"].mutable_struct_value() = EngineBlockdev(engine);
  std::string target;
  (void)google::protobuf::util::MessageToJsonString(blockdev, &target);

  process::RunOptions run;
  // -n: the volume exists; --target-is-zero: its replicas were just created, so the image's
  // zero and unallocated ranges are skipped and stay thin; -f: the stored format, never probed.
  run.argv = {"qemu-img",   "convert", "-n",  "--target-is-zero", "-f",
              image.format, "-O",      "raw", image.path,         "json:" + target};
  auto last_poll = std::chrono::steady_clock::now();
  run.cancel_requested = [&] {
    const auto now = std::chrono::steady_clock::now();
    if (now - last_poll >= kProgressInterval) {
      last_poll = now;
      rpb::EngineRequest request;
      request.set_status(true);
      auto answer = CallEngine(engine.control_socket, request, milliseconds(2000));
      if (answer.ok()) op.SetProgress(answer->status().write_bytes(), size_bytes);
    }
    return op.cancel_requested();
  };
  op.SetProgress(0, size_bytes, "copying image " + Quote(image.name));
  auto ran = process::Run(run);
  Status st = ran.ok() ? process::CheckExit(*ran, "qemu-img convert") : ran.status();
  if (!st.ok()) {
    st = st.WithContext(std::string(kField) + ": copying image " + Quote(image.name) +
                        " into volume " + Quote(volume));
    op.Finish(st);
    context.logger().Warn(kVolumeKind, volume, st.message());
    return st;
  }
  op.SetProgress(size_bytes, size_bytes);
  op.Finish(Status::OK());
  const auto ms =
      std::chrono::duration_cast<milliseconds>(std::chrono::steady_clock::now() - began).count();
  context.events().Publish(
      MakeEvent(api::EVENT_TYPE_NORMAL, kVolumeKind, volume, "ImageCopied",
                "filled from image " + Quote(image.name) + " (" + image.format + ", " +
                    std::to_string(image.virtual_size_bytes) +
                    " bytes virtual) through its engine in " + std::to_string(ms) + " ms"));
  return Status::OK();
}

}  // namespace hci::replicated::plugin
