// The mock ImageBackend: imports that "download" 64 MiB of zeros in kOperationSteps steps on a
// backend-owned thread.
#include <map>
#include <string>
#include <utility>
#include <vector>

#include "mock_internal.h"

namespace hci::mock {
namespace {

constexpr char kImageKind[] = "Image";
constexpr auto kCancelWait = std::chrono::seconds(10);

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
    case v1::ImageSpec::kFile:
      if (spec.file().empty() || spec.file().front() != '/') {
        return InvalidArgument("spec.file: \"" + spec.file() + "\" is not an absolute path");
      }
      break;
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

std::string PhaseName(v1::ImagePhase phase) {
  switch (phase) {
    case v1::IMAGE_PHASE_PENDING:
      return "Pending";
    case v1::IMAGE_PHASE_IMPORTING:
      return "Importing";
    case v1::IMAGE_PHASE_READY:
      return "Ready";
    case v1::IMAGE_PHASE_FAILED:
      return "Failed";
    default:
      return "Unspecified";
  }
}

struct Img {
  v1::Image obj;
  Operation import;           // the latest import
  std::uint64_t attempt = 0;  // identifies the worker allowed to update this record
};

class MockImage final : public ImageBackend {
 public:
  explicit MockImage(std::shared_ptr<BackendEnv> env) : env_(std::move(env)) {}
  ~MockImage() override { workers_.Stop(); }

  FaultInjector* fault_injector() override { return env_->faults(); }

  v1::ImageCapabilities Capabilities() const override {
    v1::ImageCapabilities caps;
    caps.set_import_url(true);
    caps.set_import_file(true);
    caps.set_checksum(true);
    for (auto f : {v1::IMAGE_FORMAT_RAW, v1::IMAGE_FORMAT_QCOW2, v1::IMAGE_FORMAT_VMDK,
                   v1::IMAGE_FORMAT_VHDX, v1::IMAGE_FORMAT_VDI, v1::IMAGE_FORMAT_ISO}) {
      caps.add_source_formats(f);
    }
    caps.set_stored_format(v1::IMAGE_FORMAT_RAW);
    return caps;
  }

  Result<std::string> Metrics() override {
    HCI_RETURN_NOT_OK(env_->Enter("Metrics"));
    std::map<std::string, int> counts;
    {
      std::lock_guard lock(mu_);
      for (const auto& [name, img] : images_) ++counts[PhaseName(img.obj.status().phase())];
    }
    std::string out =
        "# HELP hci_mock_images Images in the mock image store, by phase.\n"
        "# TYPE hci_mock_images gauge\n";
    for (const auto& [phase, n] : counts) {
      out += "hci_mock_images{phase=\"" + phase + "\"} " + std::to_string(n) + "\n";
    }
    return out;
  }

  Result<Operation> ImportImage(const v1::ImportImageRequest& request) override {
    HCI_RETURN_NOT_OK(env_->Enter("ImportImage"));
    const std::string& name = request.metadata().name();
    std::lock_guard lock(mu_);
    auto it = images_.find(name);
    if (it != images_.end()) {
      Img& img = it->second;
      if (!DescribeSpecDifference(img.obj.spec(), request.spec()).empty()) {
        return SpecConflict("image", name, img.obj.spec(), request.spec());
      }
      // Running or done: the same import. Failed (or cancelled): the repeat is a retry.
      if (img.obj.status().phase() != v1::IMAGE_PHASE_FAILED) return img.import;
    } else {
      HCI_RETURN_NOT_OK(ValidateImageSpec(request.spec()));
      Img img;
      *img.obj.mutable_metadata() = NewObjectMeta(request.metadata());
      *img.obj.mutable_spec() = request.spec();
      it = images_.emplace(name, std::move(img)).first;
    }
    Img& img = it->second;
    OperationInfo info;
    info.kind = "ImportImage";
    info.object.set_kind(kImageKind);
    info.object.set_name(name);
    info.cancellable = true;
    info.progress_unit = "bytes";
    auto control = std::make_shared<OperationControl>(env_->context().operations().Start(info));
    std::uint64_t attempt = ++attempts_;
    auto* status = img.obj.mutable_status();
    status->Clear();
    status->set_phase(v1::IMAGE_PHASE_PENDING);
    status->mutable_progress()->set_total(kImageBytes);
    img.import = control->handle();
    img.attempt = attempt;
    Operation handle = img.import;
    if (!workers_.Spawn([this, control, name, attempt] { RunImport(*control, name, attempt); })) {
      status->set_phase(v1::IMAGE_PHASE_FAILED);
      control->Finish(Unavailable("the mock image backend is shutting down"));
    }
    return handle;
  }

  Result<v1::Image> GetImage(const v1::GetImageRequest& request) override {
    HCI_RETURN_NOT_OK(env_->Enter("GetImage"));
    std::lock_guard lock(mu_);
    auto it = images_.find(request.name());
    if (it == images_.end()) return Missing("image", request.name());
    return it->second.obj;
  }

  Result<v1::ListImagesResponse> ListImages(const v1::ListImagesRequest& request) override {
    HCI_RETURN_NOT_OK(env_->Enter("ListImages"));
    v1::ListImagesResponse out;
    std::lock_guard lock(mu_);
    for (const auto& [name, img] : images_) {
      if (MatchesLabels(img.obj.metadata().labels(), request.label_selector())) {
        *out.add_images() = img.obj;
      }
    }
    return out;
  }

  Status DeleteImage(const v1::DeleteImageRequest& request) override {
    HCI_RETURN_NOT_OK(env_->Enter("DeleteImage"));
    const std::string& name = request.name();
    Operation running;
    {
      std::lock_guard lock(mu_);
      auto it = images_.find(name);
      if (it == images_.end()) return Status();
      if (it->second.import.valid() && !it->second.import.done()) running = it->second.import;
    }
    // Asked without holding mu_: the storage backend may call GetImage meanwhile.
    if (StorageBackend* storage = env_->context().storage(); storage != nullptr) {
      HCI_ASSIGN_OR_RAISE(auto volumes, storage->ListVolumes(v1::ListVolumesRequest()));
      std::string users;
      for (const auto& vol : volumes.volumes()) {
        if (vol.spec().source().source_case() == v1::VolumeSource::kImage &&
            vol.spec().source().image() == name) {
          users += (users.empty() ? "" : ", ") + Quote(vol.metadata().name());
        }
      }
      if (!users.empty()) {
        return FailedPrecondition("image " + Quote(name) + " is used by volume(s) " + users +
                                  "; delete them first");
      }
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
    std::lock_guard lock(mu_);
    if (images_.erase(name) > 0) {
      env_->Publish(env_->MakeEvent(v1::EVENT_TYPE_NORMAL, kImageKind, name, "ImageDeleted",
                                    "image deleted"));
    }
    return Status();
  }

 private:
  // Updates the record of `name` if `attempt` still owns it; returns false otherwise.
  template <typename Fn>
  bool UpdateLocked(const std::string& name, std::uint64_t attempt, Fn&& fn) {
    auto it = images_.find(name);
    if (it == images_.end() || it->second.attempt != attempt) return false;
    fn(it->second.obj);
    return true;
  }

  void RunImport(OperationControl& control, const std::string& name, std::uint64_t attempt) {
    control.OnCancel([this] { workers_.Wake(); });
    auto cancelled = [&] { return control.cancel_requested(); };
    std::string source;
    {
      std::lock_guard lock(mu_);
      UpdateLocked(name, attempt, [&](v1::Image& img) {
        img.mutable_status()->set_phase(v1::IMAGE_PHASE_IMPORTING);
        source = img.spec().has_url() ? img.spec().url() : img.spec().file();
      });
    }
    control.SetProgress(0, kImageBytes, "downloading " + source);
    int step = 0;
    for (; step < kOperationSteps; ++step) {
      if (!workers_.SleepFor(env_->step(), cancelled)) break;
      std::uint64_t done = kImageBytes * (step + 1) / kOperationSteps;
      {
        std::lock_guard lock(mu_);
        UpdateLocked(name, attempt, [&](v1::Image& img) {
          img.mutable_status()->mutable_progress()->set_done(done);
        });
      }
      control.SetProgress(done, kImageBytes, "downloading " + source);
    }
    Status result;
    if (step < kOperationSteps) {
      result = cancelled() ? Cancelled("import of image " + Quote(name) + " cancelled")
                           : Unavailable("the mock image backend shut down during the import");
    }
    {
      std::lock_guard lock(mu_);
      bool current = UpdateLocked(name, attempt, [&](v1::Image& img) {
        auto* status = img.mutable_status();
        const std::string& expected = img.spec().sha256();
        if (result.ok() && !expected.empty() && expected != kImageSha256) {
          // As a real import: nothing is kept when the bytes are not the expected ones.
          result = DataLoss("spec.sha256: expected " + expected + " but received " + kImageSha256);
        }
        auto* ready = status->add_conditions();
        ready->set_type("Ready");
        *ready->mutable_last_transition_time() = Now();
        if (result.ok()) {
          status->set_phase(v1::IMAGE_PHASE_READY);
          status->set_sha256(kImageSha256);
          auto format = img.spec().format() == v1::IMAGE_FORMAT_UNSPECIFIED ? v1::IMAGE_FORMAT_RAW
                                                                            : img.spec().format();
          status->set_source_format(format);
          status->set_stored_format(v1::IMAGE_FORMAT_RAW);
          status->set_virtual_size_bytes(kImageBytes);
          status->set_actual_size_bytes(kImageBytes);
          ready->set_status(v1::CONDITION_STATUS_TRUE);
          ready->set_reason("Imported");
        } else {
          status->set_phase(v1::IMAGE_PHASE_FAILED);
          status->set_message(result.message());
          status->set_actual_size_bytes(0);
          ready->set_status(v1::CONDITION_STATUS_FALSE);
          ready->set_reason(result.code() == StatusCode::kCancelled ? "ImportCancelled"
                                                                    : "ImportFailed");
          ready->set_message(result.message());
        }
      });
      if (current) {
        auto event = result.ok()
                         ? env_->MakeEvent(
                               v1::EVENT_TYPE_NORMAL, kImageKind, name, "ImageReady",
                               "imported " + std::to_string(kImageBytes) + " bytes from " + source)
                         : env_->MakeEvent(v1::EVENT_TYPE_WARNING, kImageKind, name, "ImportFailed",
                                           result.message());
        event.set_operation_id(control.handle().id());
        env_->Publish(std::move(event));
      }
    }
    control.Finish(std::move(result));
  }

  std::shared_ptr<BackendEnv> env_;
  std::mutex mu_;
  std::map<std::string, Img> images_;
  std::uint64_t attempts_ = 0;
  Workers workers_;
};

}  // namespace

Result<std::unique_ptr<ImageBackend>> MakeImage(PluginContext& context) {
  HCI_ASSIGN_OR_RAISE(auto env, BackendEnv::Make(context, BackendKind::kImage));
  return std::unique_ptr<ImageBackend>(std::make_unique<MockImage>(std::move(env)));
}

}  // namespace hci::mock
