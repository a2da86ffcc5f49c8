// The example ImageBackend: imports raw images from local files into <state_dir>/images, as a
// long operation on a worker thread with progress and cancellation. URL imports, checksums and
// format conversion are optional and not claimed. A real plugin would detect the format and
// convert it (qemu-img), and download URLs.
#include "hci/image.h"

#include <cerrno>
#include <chrono>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <list>
#include <map>
#include <memory>
#include <mutex>
#include <stop_token>
#include <string>
#include <system_error>
#include <thread>
#include <utility>
#include <vector>

#include "example_internal.h"
#include "hci/object_meta.h"
#include "hci/operation.h"
#include "hci/options.h"

namespace example {
namespace {

namespace fs = std::filesystem;
namespace v1 = hci::v1;
using hci::Result;
using hci::Status;

constexpr char kImageKind[] = "Image";
constexpr std::size_t kChunkBytes = 1 << 20;

// Copies `from` to `to`, reporting progress after every chunk and stopping early when the
// caller cancels or the backend shuts down.
Status CopyFile(const fs::path& from, const fs::path& to, hci::OperationControl& control,
                const std::stop_token& stop) {
  std::ifstream in(from, std::ios::binary);
  if (!in) return hci::ErrnoStatus(errno, "spec.file: open " + Quote(from.string()));
  std::error_code error;
  std::uint64_t total = fs::file_size(from, error);
  if (error) return hci::ErrnoStatus(error.value(), "spec.file: size of " + Quote(from.string()));
  std::ofstream out(to, std::ios::binary | std::ios::trunc);
  if (!out) return hci::ErrnoStatus(errno, "create " + Quote(to.string()));
  std::vector<char> chunk(kChunkBytes);
  std::uint64_t done = 0;
  control.SetProgress(0, total, "copying");
  while (done < total) {
    if (control.cancel_requested()) return hci::Cancelled("the import was cancelled");
    if (stop.stop_requested()) return hci::Unavailable("the image backend is shutting down");
    in.read(chunk.data(), static_cast<std::streamsize>(chunk.size()));
    if (in.gcount() <= 0) {
      return hci::DataLoss("spec.file: " + Quote(from.string()) + " shrank during the import");
    }
    out.write(chunk.data(), in.gcount());
    if (!out) return hci::ErrnoStatus(errno, "write " + Quote(to.string()));
    done += static_cast<std::uint64_t>(in.gcount());
    control.SetProgress(done, total, "copying");
  }
  out.close();
  if (!out) return hci::ErrnoStatus(errno, "write " + Quote(to.string()));
  return Status::OK();
}

class ExampleImage final : public hci::ImageBackend {
 public:
  ExampleImage(hci::PluginContext& context, fs::path dir)
      : context_(context), dir_(std::move(dir)) {}

  v1::ImageCapabilities Capabilities() const override {
    v1::ImageCapabilities caps;
    caps.set_import_file(true);
    caps.add_source_formats(v1::IMAGE_FORMAT_RAW);
    caps.set_stored_format(v1::IMAGE_FORMAT_RAW);
    return caps;
  }

  Result<hci::Operation> ImportImage(const v1::ImportImageRequest& request) override {
    const std::string& name = request.metadata().name();
    std::lock_guard lock(mu_);
    auto it = images_.find(name);
    if (it != images_.end()) {
      if (!hci::DescribeSpecDifference(it->second.image.spec(), request.spec()).empty()) {
        return SpecConflict("image", name, it->second.image.spec(), request.spec());
      }
      // The same import again: hand out the running or finished one (even if the source file
      // is gone by now). A failed one is retried.
      if (it->second.image.status().phase() != v1::IMAGE_PHASE_FAILED) return it->second.import;
    }
    HCI_RETURN_NOT_OK(ValidateSpec(request.spec()));
    if (it != images_.end()) images_.erase(it);
    // The tracker makes the operation visible to Host::ListOperations and sends its progress
    // as events; the control is the worker's end, the handle the caller's.
    hci::OperationInfo info;
    info.kind = "ImportImage";
    info.object.set_kind(kImageKind);
    info.object.set_name(name);
    hci::OperationControl control = context_.operations().Start(info);
    Record& record = images_[name];
    *record.image.mutable_metadata() = hci::NewObjectMeta(request.metadata());
    *record.image.mutable_spec() = request.spec();
    record.image.mutable_status()->set_phase(v1::IMAGE_PHASE_IMPORTING);
    record.import = control.handle();
    record.attempt = ++attempts_;
    workers_.emplace_back([this, name, source = request.spec().file(), attempt = record.attempt,
                           control = std::move(control)](std::stop_token stop) mutable {
      Import(name, source, attempt, control, stop);
    });
    return record.import;
  }

  Result<v1::Image> GetImage(const v1::GetImageRequest& request) override {
    std::lock_guard lock(mu_);
    auto it = images_.find(request.name());
    if (it == images_.end()) return Missing("image", request.name());
    return it->second.image;
  }

  Result<v1::ListImagesResponse> ListImages(const v1::ListImagesRequest& request) override {
    v1::ListImagesResponse out;
    std::lock_guard lock(mu_);
    for (const auto& [name, record] : images_) {
      if (hci::MatchesLabels(record.image.metadata().labels(), request.label_selector())) {
        *out.add_images() = record.image;
      }
    }
    return out;
  }

  Status DeleteImage(const v1::DeleteImageRequest& request) override {
    hci::Operation running;
    {
      std::lock_guard lock(mu_);
      auto it = images_.find(request.name());
      if (it == images_.end()) return Status::OK();
      running = it->second.import;
    }
    // Deleting an image that is still importing stops the import first. Wait without mu_:
    // the worker needs it to finish.
    if (!running.done()) {
      running.Cancel().IgnoreError();
      if (running.Wait(std::chrono::seconds(30)).code() == hci::StatusCode::kDeadlineExceeded) {
        return hci::Aborted("image " + Quote(request.name()) + ": the import " + running.id() +
                            " did not stop within 30 s; retry");
      }
    }
    std::lock_guard lock(mu_);
    images_.erase(request.name());
    std::error_code ignored;  // Absent when the import failed.
    fs::remove(Path(request.name()), ignored);
    PublishEvent(context_, kImageKind, request.name(), "ImageDeleted", "deleted");
    return Status::OK();
  }

 private:
  struct Record {
    v1::Image image;
    hci::Operation import;
    std::uint64_t attempt = 0;  // Which worker may update this record.
  };

  static Status ValidateSpec(const v1::ImageSpec& spec) {
    if (spec.has_url()) return NotClaimed("spec.url", "importing from a URL");
    if (!spec.sha256().empty()) return NotClaimed("spec.sha256", "checksum verification");
    if (spec.format() != v1::IMAGE_FORMAT_UNSPECIFIED && spec.format() != v1::IMAGE_FORMAT_RAW) {
      return NotClaimed("spec.format", v1::ImageFormat_Name(spec.format()));
    }
    const std::string& file = spec.file();
    if (file.empty() || file.front() != '/') {
      return hci::InvalidArgument("spec.file: " + Quote(file) + " is not an absolute path");
    }
    std::error_code error;
    if (!fs::exists(file, error)) {
      return hci::NotFound("spec.file: " + Quote(file) + " does not exist");
    }
    if (!fs::is_regular_file(file, error)) {
      return hci::InvalidArgument("spec.file: " + Quote(file) + " is not a regular file");
    }
    return Status::OK();
  }

  fs::path Path(const std::string& name) const { return dir_ / (name + ".raw"); }

  // Runs on a worker thread. Copies to a temporary name and renames it when complete, so a crash
  // never leaves a truncated image under the final name.
  void Import(const std::string& name, const std::string& source, std::uint64_t attempt,
              hci::OperationControl& control, const std::stop_token& stop) {
    fs::path temporary = Path(name).string() + ".part";
    Status result = CopyFile(source, temporary, control, stop);
    std::error_code error;
    if (result.ok()) {
      fs::rename(temporary, Path(name), error);
      if (error) result = hci::ErrnoStatus(error.value(), "rename " + Quote(temporary.string()));
    }
    if (!result.ok()) fs::remove(temporary, error);
    {
      std::lock_guard lock(mu_);
      auto it = images_.find(name);
      if (it != images_.end() && it->second.attempt == attempt) {
        v1::ImageStatus& status = *it->second.image.mutable_status();
        *status.mutable_progress() = control.handle().status().progress();
        if (result.ok()) {
          std::uint64_t size = fs::file_size(Path(name), error);
          status.set_phase(v1::IMAGE_PHASE_READY);
          status.set_source_format(v1::IMAGE_FORMAT_RAW);
          status.set_stored_format(v1::IMAGE_FORMAT_RAW);
          status.set_virtual_size_bytes(size);
          status.set_actual_size_bytes(size);
          context_.logger().Info("image", name, "imported " + std::to_string(size) + " bytes");
        } else {
          status.set_phase(v1::IMAGE_PHASE_FAILED);
          status.set_message(result.message());
        }
      }
    }
    // Last: once the operation is finished, callers of Wait() may delete the image at once.
    control.Finish(std::move(result));
  }

  hci::PluginContext& context_;
  const fs::path dir_;
  std::mutex mu_;
  std::map<std::string, Record> images_;
  std::uint64_t attempts_ = 0;
  // Declared last, so destroyed first: each jthread is asked to stop and joined while the state
  // it uses still exists. (Finished threads stay in the list until then; a long-lived plugin
  // would reap them.)
  std::list<std::jthread> workers_;
};

}  // namespace

Result<std::unique_ptr<hci::ImageBackend>> MakeImage(hci::PluginContext& context) {
  // Nothing to configure, but refuse options anyway: a typo must not pass silently.
  HCI_RETURN_NOT_OK(hci::OptionsReader(context.options(), "options").RejectUnknown());
  // The plugin's own directory (0700, created by the core) is the place for persistent state.
  fs::path dir = fs::path(context.state_dir()) / "images";
  std::error_code error;
  fs::create_directories(dir, error);
  if (error) return hci::ErrnoStatus(error.value(), "create " + Quote(dir.string()));
  return std::unique_ptr<hci::ImageBackend>(std::make_unique<ExampleImage>(context, dir));
}

}  // namespace example
