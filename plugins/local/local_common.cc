// Helpers shared by the local plugin's backends: options, files, metadata, worker threads.
#include <errno.h>
#include <fcntl.h>
#include <google/protobuf/util/time_util.h>
#include <stdio.h>
#include <sys/stat.h>
#include <unistd.h>

#include <utility>

#include "hci/options.h"
#include "local_internal.h"

namespace hci::local {

// ---------------------------------------------------------------------------------------------
// Options

Result<Options> ParseOptions(const google::protobuf::Struct& options, BackendKind kind) {
  Options out;
  OptionsReader reader(options, "");
  HCI_ASSIGN_OR_RAISE(out.qemu_img, reader.String("qemu_img", out.qemu_img));
  // Storage bindings never fetch, so the fetch options are unknown (refused) there.
  if (kind == BackendKind::kImage) {
    constexpr std::uint64_t kMaxSeconds = 24 * 3600;
    HCI_ASSIGN_OR_RAISE(auto connect, reader.Unsigned("connect_timeout_seconds",
                                                      out.connect_timeout_seconds, 1, kMaxSeconds));
    out.connect_timeout_seconds = static_cast<std::uint32_t>(connect);
    HCI_ASSIGN_OR_RAISE(auto stall, reader.Unsigned("stall_timeout_seconds",
                                                    out.stall_timeout_seconds, 1, kMaxSeconds));
    out.stall_timeout_seconds = static_cast<std::uint32_t>(stall);
    HCI_ASSIGN_OR_RAISE(out.max_bytes_per_second,
                        reader.Unsigned("max_bytes_per_second", 0, 0, 1ull << 50));
  }
  HCI_RETURN_NOT_OK(reader.RejectUnknown());
  return out;
}

// ---------------------------------------------------------------------------------------------
// Files

namespace {

std::string DirOf(const std::string& path) {
  auto slash = path.rfind('/');
  if (slash == std::string::npos) return ".";
  if (slash == 0) return "/";
  return path.substr(0, slash);
}

}  // namespace

Status SyncFile(const std::string& path) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return ErrnoStatus(errno, "open \"" + path + "\"");
  Status status;
  if (::fsync(fd) != 0) status = ErrnoStatus(errno, "fsync \"" + path + "\"");
  ::close(fd);
  return status;
}

void SyncDir(const std::string& dir) {
  int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) return;
  ::fsync(fd);
  ::close(fd);
}

Status RemoveFile(const std::string& path) {
  if (::unlink(path.c_str()) != 0 && errno != ENOENT) {
    return ErrnoStatus(errno, "unlink \"" + path + "\"");
  }
  return Status();
}

Status RenameNoReplace(const std::string& from, const std::string& to) {
  if (::renameat2(AT_FDCWD, from.c_str(), AT_FDCWD, to.c_str(), RENAME_NOREPLACE) != 0) {
    int err = errno;
    if (err == EEXIST) return AlreadyExists("\"" + to + "\" already exists");
    return ErrnoStatus(err, "rename \"" + from + "\" to \"" + to + "\"");
  }
  SyncDir(DirOf(to));
  return Status();
}

std::uint64_t AllocatedBytes(const std::string& path) {
  struct stat st;
  if (::stat(path.c_str(), &st) != 0) return 0;
  return static_cast<std::uint64_t>(st.st_blocks) * 512;
}

TempFile::~TempFile() {
  if (!path_.empty()) ::unlink(path_.c_str());
}

// ---------------------------------------------------------------------------------------------
// Workers

bool Workers::Spawn(std::function<void()> fn) {
  std::list<Worker> finished;
  {
    std::lock_guard lock(mu_);
    if (stopping_) return false;
    for (auto it = workers_.begin(); it != workers_.end();) {
      auto next = std::next(it);
      if (it->done->load()) finished.splice(finished.end(), workers_, it);
      it = next;
    }
    auto done = std::make_shared<std::atomic<bool>>(false);
    workers_.push_back(Worker{std::thread([fn = std::move(fn), done] {
                                fn();
                                done->store(true);
                              }),
                              done});
  }
  for (auto& w : finished) w.thread.join();
  return true;
}

void Workers::Stop() {
  std::list<Worker> all;
  {
    std::lock_guard lock(mu_);
    stopping_ = true;
    all.swap(workers_);
  }
  for (auto& w : all) w.thread.join();
}

// ---------------------------------------------------------------------------------------------
// Helpers

google::protobuf::Timestamp Now() { return google::protobuf::util::TimeUtil::GetCurrentTime(); }

std::string Quote(std::string_view s) { return "\"" + std::string(s) + "\""; }

Status Missing(std::string_view kind, std::string_view name, std::string_view field) {
  std::string message;
  if (!field.empty()) message = std::string(field) + ": ";
  message += std::string(kind) + " " + Quote(name) + " does not exist";
  return NotFound(std::move(message));
}

std::string FormatName(v1::ImageFormat format) {
  switch (format) {
    case v1::IMAGE_FORMAT_RAW:
    case v1::IMAGE_FORMAT_ISO:  // an ISO 9660 image is raw data to qemu-img
      return "raw";
    case v1::IMAGE_FORMAT_QCOW2:
      return "qcow2";
    case v1::IMAGE_FORMAT_VMDK:
      return "vmdk";
    case v1::IMAGE_FORMAT_VHDX:
      return "vhdx";
    case v1::IMAGE_FORMAT_VDI:
      return "vdi";
    default:
      return "";
  }
}

v1::ImageFormat FormatFromName(std::string_view name) {
  if (name == "raw") return v1::IMAGE_FORMAT_RAW;
  if (name == "qcow2") return v1::IMAGE_FORMAT_QCOW2;
  if (name == "vmdk") return v1::IMAGE_FORMAT_VMDK;
  if (name == "vhdx") return v1::IMAGE_FORMAT_VHDX;
  if (name == "vdi") return v1::IMAGE_FORMAT_VDI;
  return v1::IMAGE_FORMAT_UNSPECIFIED;
}

}  // namespace hci::local
