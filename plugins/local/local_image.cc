// The local ImageBackend: imports (a file, or http/https) run on backend-owned threads; images are
// stored as qcow2 in the state directory shared with the local storage backend.
#include <sys/stat.h>

#include <algorithm>
#include <utility>

#include "hci/names.h"
#include "local_internal.h"

namespace hci::local {
namespace {

using Clock = std::chrono::steady_clock;

constexpr char kImageKind[] = "Image";
constexpr auto kCancelWait = std::chrono::seconds(30);
constexpr auto kProgressInterval = std::chrono::milliseconds(100);

bool IsLowerHex(std::string_view s) {
  for (char c : s) {
    if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'))) return false;
  }
  return true;
}

Status ValidateImageSpec(const v1::ImageSpec& spec) {
  switch (spec.source_case()) {
    case v1::ImageSpec::kUrl: {
      const std::string& url = spec.url();
      std::string_view rest;
      if (url.starts_with("http://")) {
        rest = std::string_view(url).substr(7);
      } else if (url.starts_with("https://")) {
        rest = std::string_view(url).substr(8);
      } else {
        return InvalidArgument("spec.url: \"" + url + "\" is not an http:// or https:// URL");
      }
      if (rest.empty() || rest.front() == '/') {
        return InvalidArgument("spec.url: \"" + url + "\" has no host");
      }
      break;
    }
    case v1::ImageSpec::kFile: {
      const std::string& file = spec.file();
      if (file.empty() || file.front() != '/') {
        return InvalidArgument("spec.file: \"" + file + "\" is not an absolute path");
      }
      struct stat st;
      if (::stat(file.c_str(), &st) != 0) {
        if (errno == ENOENT || errno == ENOTDIR) {
          return NotFound("spec.file: \"" + file + "\" does not exist");
        }
        return ErrnoStatus(errno, "spec.file: stat \"" + file + "\"");
      }
      if (!S_ISREG(st.st_mode)) {
        return InvalidArgument("spec.file: \"" + file + "\" is not a regular file");
      }
      break;
    }
    default:
      return InvalidArgument("spec.url: an image needs a source: set spec.url or spec.file");
  }
  if (!spec.sha256().empty() && (spec.sha256().size() != 64 || !IsLowerHex(spec.sha256()))) {
    return InvalidArgument("spec.sha256: \"" + spec.sha256() +
                           "\" is not a SHA-256 digest (64 lowercase hex digits)");
  }
  if (!v1::ImageFormat_IsValid(spec.format())) {
    return InvalidArgument("spec.format: unknown value " + std::to_string(spec.format()));
  }
  return Status();
}

std::string SourceOf(const v1::ImageSpec& spec) {
  return spec.has_url() ? spec.url() : spec.file();
}

class LocalImage final : public ImageBackend {
 public:
  LocalImage(PluginContext& context, Options options, std::shared_ptr<Store> store)
      : context_(context),
        options_(std::move(options)),
        store_(std::move(store)),
        qemu_img_(options_.qemu_img) {}

  // Imports still running end with Unavailable; their temporary files are removed.
  ~LocalImage() override { workers_.Stop(); }

  v1::ImageCapabilities Capabilities() const override {
    v1::ImageCapabilities caps;
    caps.set_import_url(true);
    caps.set_import_file(true);
    caps.set_checksum(true);
    for (auto f : {v1::IMAGE_FORMAT_RAW, v1::IMAGE_FORMAT_QCOW2, v1::IMAGE_FORMAT_VMDK,
                   v1::IMAGE_FORMAT_VHDX, v1::IMAGE_FORMAT_VDI, v1::IMAGE_FORMAT_ISO}) {
      caps.add_source_formats(f);
    }
    caps.set_stored_format(v1::IMAGE_FORMAT_QCOW2);
    caps.set_local_path(true);
    return caps;
  }

  Result<Operation> ImportImage(const v1::ImportImageRequest& request) override {
    const std::string& name = request.metadata().name();
    HCI_RETURN_NOT_OK(ValidateName("metadata.name", name));
    std::lock_guard lock(store_->mu);
    auto it = store_->images.find(name);
    if (it != store_->images.end()) {
      ImageRecord& record = it->second;
      if (std::string diff = DescribeSpecDifference(record.obj.spec(), request.spec());
          !diff.empty()) {
        return AlreadyExists("image " + Quote(name) + " already exists with a different spec (" +
                             diff + ")");
      }
      // Running or done: the same import. Failed (or cancelled): the repeat is a retry.
      if (record.obj.status().phase() != v1::IMAGE_PHASE_FAILED) {
        if (!record.import.valid()) record.import = FinishedImport(record.obj);
        return record.import;
      }
      HCI_RETURN_NOT_OK(ValidateImageSpec(request.spec()));
    } else {
      HCI_RETURN_NOT_OK(ValidateImageSpec(request.spec()));
      ImageRecord record;
      *record.obj.mutable_metadata() = NewObjectMeta(request.metadata());
      *record.obj.mutable_spec() = request.spec();
      it = store_->images.emplace(name, std::move(record)).first;
    }
    ImageRecord& record = it->second;
    auto control = std::make_shared<OperationControl>(context_.operations().Start(Info(name)));
    // Unique in the process: two backends may share the store (one per state directory).
    static std::atomic<std::uint64_t> attempts{0};
    std::uint64_t attempt = ++attempts;
    auto* status = record.obj.mutable_status();
    status->Clear();
    status->set_phase(v1::IMAGE_PHASE_PENDING);
    record.import = control->handle();
    record.attempt = attempt;
    Operation handle = record.import;
    v1::ImageSpec spec = request.spec();
    if (!workers_.Spawn(
            [this, control, name, attempt, spec] { RunImport(*control, name, attempt, spec); })) {
      status->set_phase(v1::IMAGE_PHASE_FAILED);
      status->set_message("the image backend is shutting down");
      control->Finish(Unavailable("the local image backend is shutting down"));
    }
    return handle;
  }

  Result<v1::Image> GetImage(const v1::GetImageRequest& request) override {
    std::lock_guard lock(store_->mu);
    auto it = store_->images.find(request.name());
    if (it == store_->images.end()) return Missing("image", request.name());
    return Refreshed(it->second);
  }

  Result<v1::ListImagesResponse> ListImages(const v1::ListImagesRequest& request) override {
    v1::ListImagesResponse out;
    std::lock_guard lock(store_->mu);
    for (const auto& [name, record] : store_->images) {
      if (MatchesLabels(record.obj.metadata().labels(), request.label_selector())) {
        *out.add_images() = Refreshed(record);
      }
    }
    return out;
  }

  Status DeleteImage(const v1::DeleteImageRequest& request) override {
    const std::string& name = request.name();
    HCI_RETURN_NOT_OK(ValidateName("name", name));
    Operation running;
    {
      std::lock_guard lock(store_->mu);
      auto it = store_->images.find(name);
      if (it == store_->images.end()) return Status();
      HCI_RETURN_NOT_OK(InUseLocked(name));
      if (it->second.import.valid() && !it->second.import.done()) running = it->second.import;
    }
    // A storage backend of another plugin may hold volumes made from this image too. Asked
    // without Store::mu: the local storage backend takes it.
    if (StorageBackend* storage = context_.storage(); storage != nullptr) {
      HCI_ASSIGN_OR_RAISE(auto volumes, storage->ListVolumes(v1::ListVolumesRequest()));
      std::vector<std::string> users;
      for (const auto& vol : volumes.volumes()) {
        if (vol.spec().source().source_case() == v1::VolumeSource::kImage &&
            vol.spec().source().image() == name) {
          users.push_back(vol.metadata().name());
        }
      }
      HCI_RETURN_NOT_OK(UsedBy(name, users));
    }
    // Deleting an image that is still importing stops the import first.
    if (running.valid()) {
      running.Cancel().IgnoreError();
      Status done =
          running.Wait(std::chrono::duration_cast<std::chrono::milliseconds>(kCancelWait));
      if (done.code() == StatusCode::kDeadlineExceeded) {
        return Aborted("image " + Quote(name) + ": the import " + running.id() +
                       " did not stop in time; retry");
      }
    }
    std::lock_guard lock(store_->mu);
    auto it = store_->images.find(name);
    if (it == store_->images.end()) return Status();
    HCI_RETURN_NOT_OK(InUseLocked(name));
    if (it->second.import.valid() && !it->second.import.done()) {
      return Aborted("image " + Quote(name) + ": an import started meanwhile; retry");
    }
    HCI_RETURN_NOT_OK(store_->RemoveImageRecord(name));  // the commit point
    store_->images.erase(it);
    RemoveFile(store_->ImagePath(name)).IgnoreError();  // else removed by the next Open
    context_.events().Publish(
        MakeEvent(v1::EVENT_TYPE_NORMAL, kImageKind, name, "ImageDeleted", "image deleted"));
    return Status();
  }

 private:
  static OperationInfo Info(const std::string& name) {
    OperationInfo info;
    info.kind = "ImportImage";
    info.object.set_kind(kImageKind);
    info.object.set_name(name);
    info.cancellable = true;
    info.progress_unit = "bytes";
    return info;
  }

  // An already finished operation for an image imported by an earlier Host.
  Operation FinishedImport(const v1::Image& image) {
    OperationControl control = context_.operations().Start(Info(image.metadata().name()));
    std::uint64_t size = image.status().progress().total();
    control.SetProgress(size, size, "imported earlier");
    control.Finish(image.status().phase() == v1::IMAGE_PHASE_READY
                       ? Status()
                       : Internal(image.status().message()));
    return control.handle();
  }

  Status UsedBy(const std::string& name, std::vector<std::string> users) {
    if (users.empty()) return Status();
    std::sort(users.begin(), users.end());
    users.erase(std::unique(users.begin(), users.end()), users.end());
    std::string list;
    for (const auto& u : users) list += (list.empty() ? "" : ", ") + Quote(u);
    return FailedPrecondition("image " + Quote(name) + " is used by volume(s) " + list +
                              "; delete them first");
  }

  Status InUseLocked(const std::string& name) {
    return UsedBy(name, store_->VolumesUsingImageLocked(name));
  }

  v1::Image Refreshed(const ImageRecord& record) const {
    v1::Image out = record.obj;
    if (out.status().phase() == v1::IMAGE_PHASE_READY) {
      const std::string path = store_->ImagePath(out.metadata().name());
      out.mutable_status()->set_actual_size_bytes(AllocatedBytes(path));
      // Not stored in the record: the store's directory may move between runs.
      out.mutable_status()->set_path(path);
    }
    return out;
  }

  // Applies `fn` to the record of `name` if import `attempt` still owns it (call with mu held).
  template <typename Fn>
  bool UpdateLocked(const std::string& name, std::uint64_t attempt, Fn&& fn) {
    auto it = store_->images.find(name);
    if (it == store_->images.end() || it->second.attempt != attempt) return false;
    fn(it->second);
    return true;
  }

  void RunImport(OperationControl& control, const std::string& name, std::uint64_t attempt,
                 const v1::ImageSpec& spec) {
    {
      std::lock_guard lock(store_->mu);
      UpdateLocked(name, attempt, [](ImageRecord& r) {
        r.obj.mutable_status()->set_phase(v1::IMAGE_PHASE_IMPORTING);
      });
    }
    Status result = Import(control, name, attempt, spec);
    if (!result.ok() && result.code() != StatusCode::kCancelled && control.cancel_requested()) {
      // Whatever broke, it broke because the caller asked to stop.
      result = Cancelled("import of image " + Quote(name) + " cancelled: " + result.message());
    }
    if (!result.ok() && workers_.stopping() && !control.cancel_requested()) {
      result = Unavailable("the local image backend shut down during the import of image " +
                           Quote(name));
    }
    bool current = true;
    if (!result.ok()) {
      std::lock_guard lock(store_->mu);
      current = UpdateLocked(name, attempt, [&](ImageRecord& r) {
        auto* status = r.obj.mutable_status();
        status->set_phase(v1::IMAGE_PHASE_FAILED);
        status->set_message(result.message());
        status->set_virtual_size_bytes(0);
        status->set_actual_size_bytes(0);
        auto* ready = status->add_conditions();
        ready->set_type("Ready");
        ready->set_status(v1::CONDITION_STATUS_FALSE);
        ready->set_reason(result.code() == StatusCode::kCancelled ? "ImportCancelled"
                                                                  : "ImportFailed");
        ready->set_message(result.message());
        *ready->mutable_last_transition_time() = Now();
      });
    }
    if (current) {
      v1::Event event = result.ok() ? MakeEvent(v1::EVENT_TYPE_NORMAL, kImageKind, name,
                                                "ImageImported", "imported from " + SourceOf(spec))
                                    : MakeEvent(v1::EVENT_TYPE_WARNING, kImageKind, name,
                                                "ImageImportFailed", result.message());
      event.set_operation_id(control.handle().id());
      context_.events().Publish(event);
    }
    control.Finish(std::move(result));
  }

  // Fetch, verify, inspect, convert, commit. Every temporary file is removed on failure.
  Status Import(OperationControl& control, const std::string& name, std::uint64_t attempt,
                const v1::ImageSpec& spec) {
    auto cancelled = [&] { return control.cancel_requested() || workers_.stopping(); };
    const std::string source = SourceOf(spec);
    const std::string step = (spec.has_url() ? "downloading " : "copying ") + source;

    TempFile fetched_file(store_->TempPath(name, ".source"));
    FetchOptions fetch;
    fetch.connect_timeout_seconds = options_.connect_timeout_seconds;
    fetch.stall_timeout_seconds = options_.stall_timeout_seconds;
    fetch.max_bytes_per_second = options_.max_bytes_per_second;
    fetch.cancelled = cancelled;
    Clock::time_point last_update;
    fetch.progress = [&](std::uint64_t done, std::uint64_t total) {
      control.SetProgress(done, total, step);
      auto now = Clock::now();
      if (now - last_update < kProgressInterval) return;
      last_update = now;
      std::lock_guard lock(store_->mu);
      UpdateLocked(name, attempt, [&](ImageRecord& r) {
        r.obj.mutable_status()->mutable_progress()->set_done(done);
        r.obj.mutable_status()->mutable_progress()->set_total(total);
      });
    };
    control.SetProgress(0, 0, step);
    auto fetched = spec.has_url() ? Download(spec.url(), fetched_file.path(), fetch)
                                  : CopyFile(spec.file(), fetched_file.path(), fetch);
    if (!fetched.ok()) return fetched.status();
    const std::uint64_t bytes = fetched->bytes;
    {
      std::lock_guard lock(store_->mu);
      UpdateLocked(name, attempt, [&](ImageRecord& r) {
        auto* status = r.obj.mutable_status();
        status->set_sha256(fetched->sha256);
        status->mutable_progress()->set_done(bytes);
        status->mutable_progress()->set_total(bytes);
      });
    }
    if (!spec.sha256().empty() && spec.sha256() != fetched->sha256) {
      return DataLoss("spec.sha256: expected " + spec.sha256() + " but the " +
                      std::to_string(bytes) + " bytes received from " + source + " have SHA-256 " +
                      fetched->sha256);
    }
    if (cancelled()) return Cancelled("import of image " + Quote(name) + " cancelled");

    control.SetProgress(bytes, bytes, "inspecting");
    std::string format = FormatName(spec.format());
    HCI_ASSIGN_OR_RAISE(ImageInfo info, qemu_img_.Info(fetched_file.path(), format, false));
    if (format.empty()) format = info.format;
    v1::ImageFormat source_format =
        spec.format() != v1::IMAGE_FORMAT_UNSPECIFIED ? spec.format() : FormatFromName(format);
    if (source_format == v1::IMAGE_FORMAT_UNSPECIFIED) {
      return InvalidArgument("spec.format: the source is in format \"" + format +
                             "\", which this backend does not import (raw, qcow2, vmdk, vhdx, "
                             "vdi, iso)");
    }
    // An image that names other host files would make qemu-img read them into the store.
    if (!info.backing_filename.empty()) {
      return InvalidArgument("spec: the " + format + " image refers to a backing file (\"" +
                             info.backing_filename + "\"); import a self-contained image");
    }
    if (!info.data_file.empty()) {
      return InvalidArgument("spec: the qcow2 image has an external data file (\"" +
                             info.data_file + "\"); import a self-contained image");
    }
    for (const auto& extent : info.extent_files) {
      if (extent != fetched_file.path()) {
        return InvalidArgument("spec: the vmdk image has an extent in another file (\"" + extent +
                               "\"); import a monolithic (single-file) vmdk");
      }
    }

    TempFile stored(store_->TempPath(name, ".qcow2"));
    if (format == "qcow2") {
      HCI_RETURN_NOT_OK(RenameNoReplace(fetched_file.path(), stored.path()));
    } else {
      control.SetProgress(bytes, bytes, "converting " + format + " to qcow2");
      Status converted =
          qemu_img_.Convert(fetched_file.path(), format, stored.path(), "", cancelled);
      if (!converted.ok()) {
        if (cancelled()) return Cancelled("import of image " + Quote(name) + " cancelled");
        return converted;
      }
    }
    RemoveFile(fetched_file.path()).IgnoreError();
    HCI_RETURN_NOT_OK(SyncFile(stored.path()));
    HCI_ASSIGN_OR_RAISE(ImageInfo stored_info, qemu_img_.Info(stored.path(), "qcow2", false));
    if (cancelled()) return Cancelled("import of image " + Quote(name) + " cancelled");

    // Commit: file into place, then the record.
    std::lock_guard lock(store_->mu);
    auto it = store_->images.find(name);
    if (it == store_->images.end() || it->second.attempt != attempt) {
      return Aborted("image " + Quote(name) + " was deleted during its import");
    }
    ImageRecord& record = it->second;
    v1::Image ready = record.obj;
    auto* status = ready.mutable_status();
    status->set_phase(v1::IMAGE_PHASE_READY);
    status->set_sha256(fetched->sha256);
    status->set_source_format(source_format);
    status->set_stored_format(v1::IMAGE_FORMAT_QCOW2);
    status->set_virtual_size_bytes(stored_info.virtual_size);
    status->set_actual_size_bytes(AllocatedBytes(stored.path()));
    status->mutable_progress()->set_done(bytes);
    status->mutable_progress()->set_total(bytes);
    status->clear_message();
    auto* cond = status->add_conditions();
    cond->set_type("Ready");
    cond->set_status(v1::CONDITION_STATUS_TRUE);
    cond->set_reason("Imported");
    cond->set_message("imported " + std::to_string(bytes) + " bytes of " + format + " from " +
                      source);
    *cond->mutable_last_transition_time() = Now();
    const std::string path = store_->ImagePath(name);
    HCI_RETURN_NOT_OK(RenameNoReplace(stored.path(), path));
    stored.Release();
    ImageRecord to_save;
    to_save.obj = ready;
    if (Status saved = store_->SaveImage(to_save); !saved.ok()) {
      RemoveFile(path).IgnoreError();
      return saved.WithContext("image " + Quote(name) + ": saving its record");
    }
    record.obj = std::move(ready);
    control.SetProgress(bytes, bytes, "ready");
    return Status();
  }

  PluginContext& context_;
  Options options_;
  std::shared_ptr<Store> store_;
  QemuImg qemu_img_;
  Workers workers_;
};

}  // namespace

Result<std::unique_ptr<ImageBackend>> MakeImage(PluginContext& context) {
  HCI_ASSIGN_OR_RAISE(Options options, ParseOptions(context.options(), BackendKind::kImage));
  InitCurlOnce();
  HCI_ASSIGN_OR_RAISE(auto store, Store::Open(context));
  return std::unique_ptr<ImageBackend>(
      std::make_unique<LocalImage>(context, std::move(options), std::move(store)));
}

}  // namespace hci::local
