// Helpers shared by the local plugin's backends: options, files, metadata, worker threads.
#include <errno.h>
#include <fcntl.h>
#include <google/protobuf/util/message_differencer.h>
#include <google/protobuf/util/time_util.h>
#include <stdio.h>
#include <sys/stat.h>
#include <unistd.h>

#include <boost/uuid/random_generator.hpp>
#include <boost/uuid/uuid_io.hpp>
#include <cmath>
#include <cstdio>
#include <exception>
#include <utility>

#include "local_internal.h"

namespace hci::local {

// ---------------------------------------------------------------------------------------------
// Options

namespace {

using google::protobuf::Value;

std::string KindOf(const Value& v) {
  switch (v.kind_case()) {
    case Value::kNullValue:
      return "null";
    case Value::kNumberValue:
      return "a number";
    case Value::kStringValue:
      return "a string";
    case Value::kBoolValue:
      return "a boolean";
    case Value::kStructValue:
      return "a map";
    case Value::kListValue:
      return "a list";
    default:
      return "nothing";
  }
}

Result<std::uint64_t> ParseUnsigned(const Value& v, const std::string& key, std::uint64_t max) {
  if (v.kind_case() != Value::kNumberValue) {
    return InvalidArgument(key + ": expected a non-negative integer, got " + KindOf(v));
  }
  double d = v.number_value();
  if (!std::isfinite(d) || d < 0 || d != std::floor(d) || d > static_cast<double>(max)) {
    return InvalidArgument(key + ": " + std::to_string(d) + " is not an integer between 0 and " +
                           std::to_string(max));
  }
  return static_cast<std::uint64_t>(d);
}

}  // namespace

Result<Options> ParseOptions(const google::protobuf::Struct& options, BackendKind kind) {
  Options out;
  const bool image = kind == BackendKind::kImage;
  constexpr std::uint64_t kMaxSeconds = 24 * 3600;
  for (const auto& [key, value] : options.fields()) {
    if (key == "qemu_img") {
      if (value.kind_case() != Value::kStringValue || value.string_value().empty()) {
        return InvalidArgument(key + ": expected a program name or path, got " + KindOf(value));
      }
      out.qemu_img = value.string_value();
    } else if (image && key == "connect_timeout_seconds") {
      HCI_ASSIGN_OR_RAISE(auto s, ParseUnsigned(value, key, kMaxSeconds));
      if (s == 0) return InvalidArgument(key + ": must be at least 1");
      out.connect_timeout_seconds = static_cast<std::uint32_t>(s);
    } else if (image && key == "stall_timeout_seconds") {
      HCI_ASSIGN_OR_RAISE(auto s, ParseUnsigned(value, key, kMaxSeconds));
      if (s == 0) return InvalidArgument(key + ": must be at least 1");
      out.stall_timeout_seconds = static_cast<std::uint32_t>(s);
    } else if (image && key == "max_bytes_per_second") {
      HCI_ASSIGN_OR_RAISE(out.max_bytes_per_second, ParseUnsigned(value, key, 1ull << 50));
    } else {
      return InvalidArgument(key + ": unknown option for the " +
                             std::string(BackendKindName(kind)) + " binding of plugin \"local\"" +
                             (image ? " (expected qemu_img, connect_timeout_seconds, "
                                      "stall_timeout_seconds, max_bytes_per_second)"
                                    : " (expected qemu_img)"));
    }
  }
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

Status WriteFileAtomically(const std::string& path, std::string_view content) {
  static std::atomic<std::uint64_t> counter{0};
  std::string dir = DirOf(path);
  std::string tmp = dir + "/." + path.substr(dir.size() + 1) + ".tmp." +
                    std::to_string(::getpid()) + "." + std::to_string(++counter);
  int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
  if (fd < 0) return ErrnoStatus(errno, "open \"" + tmp + "\"");
  Status status;
  std::size_t done = 0;
  while (status.ok() && done < content.size()) {
    ssize_t n = ::write(fd, content.data() + done, content.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      status = ErrnoStatus(errno, "write \"" + tmp + "\"");
    } else {
      done += static_cast<std::size_t>(n);
    }
  }
  if (status.ok() && ::fsync(fd) != 0) status = ErrnoStatus(errno, "fsync \"" + tmp + "\"");
  if (::close(fd) != 0 && status.ok()) status = ErrnoStatus(errno, "close \"" + tmp + "\"");
  if (status.ok() && ::rename(tmp.c_str(), path.c_str()) != 0) {
    status = ErrnoStatus(errno, "rename \"" + tmp + "\" to \"" + path + "\"");
  }
  if (!status.ok()) {
    ::unlink(tmp.c_str());
    return status;
  }
  SyncDir(dir);
  return Status();
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

std::string NewUid() {
  // random_generator throws only when the OS has no entropy to give; no exception may leave the
  // plugin, so fall back to a process-unique id.
  try {
    thread_local boost::uuids::random_generator generator;
    return boost::uuids::to_string(generator());
  } catch (const std::exception&) {
    static std::atomic<std::uint64_t> counter{0};
    char buf[40];
    std::snprintf(buf, sizeof(buf), "00000000-0000-4000-8000-%012llx",
                  static_cast<unsigned long long>(++counter));
    return buf;
  }
}

google::protobuf::Timestamp Now() { return google::protobuf::util::TimeUtil::GetCurrentTime(); }

v1::ObjectMeta NewMeta(const v1::ObjectMeta& requested) {
  v1::ObjectMeta meta;
  meta.set_name(requested.name());
  *meta.mutable_labels() = requested.labels();
  *meta.mutable_annotations() = requested.annotations();
  meta.set_uid(NewUid());
  *meta.mutable_creation_time() = Now();
  return meta;
}

bool MatchesLabels(const google::protobuf::Map<std::string, std::string>& labels,
                   const google::protobuf::Map<std::string, std::string>& selector) {
  for (const auto& [key, value] : selector) {
    auto it = labels.find(key);
    if (it == labels.end() || it->second != value) return false;
  }
  return true;
}

std::string DescribeDifference(const google::protobuf::Message& a,
                               const google::protobuf::Message& b) {
  using google::protobuf::util::MessageDifferencer;
  std::string report;
  MessageDifferencer differencer;
  differencer.ReportDifferencesToString(&report);
  if (differencer.Compare(a, b)) return "";
  auto newline = report.find('\n');
  if (newline != std::string::npos) report.resize(newline);
  return report.empty() ? "specs differ" : report;
}

std::string Quote(std::string_view s) { return "\"" + std::string(s) + "\""; }

Status Missing(std::string_view kind, std::string_view name, std::string_view field) {
  std::string message;
  if (!field.empty()) message = std::string(field) + ": ";
  message += std::string(kind) + " " + Quote(name) + " does not exist";
  return NotFound(std::move(message));
}

v1::Event MakeEvent(v1::EventType type, std::string_view kind, std::string_view name,
                    std::string_view reason, std::string message, std::string_view parent) {
  v1::Event event;
  event.set_type(type);
  event.mutable_object()->set_kind(std::string(kind));
  event.mutable_object()->set_name(std::string(name));
  if (!parent.empty()) event.mutable_object()->set_parent(std::string(parent));
  event.set_reason(std::string(reason));
  event.set_message(std::move(message));
  return event;
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
