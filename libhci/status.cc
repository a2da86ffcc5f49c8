#include "hci/status.h"

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>

namespace hci {

std::string_view StatusCodeName(StatusCode code) {
  switch (code) {
    case StatusCode::kOk: return "OK";
    case StatusCode::kCancelled: return "Cancelled";
    case StatusCode::kUnknown: return "Unknown";
    case StatusCode::kInvalidArgument: return "InvalidArgument";
    case StatusCode::kDeadlineExceeded: return "DeadlineExceeded";
    case StatusCode::kNotFound: return "NotFound";
    case StatusCode::kAlreadyExists: return "AlreadyExists";
    case StatusCode::kPermissionDenied: return "PermissionDenied";
    case StatusCode::kResourceExhausted: return "ResourceExhausted";
    case StatusCode::kFailedPrecondition: return "FailedPrecondition";
    case StatusCode::kAborted: return "Aborted";
    case StatusCode::kOutOfRange: return "OutOfRange";
    case StatusCode::kUnimplemented: return "Unimplemented";
    case StatusCode::kInternal: return "Internal";
    case StatusCode::kUnavailable: return "Unavailable";
    case StatusCode::kDataLoss: return "DataLoss";
    case StatusCode::kUnauthenticated: return "Unauthenticated";
  }
  return "Code(?)";
}

Status::Status(StatusCode code, std::string message) {
  if (code != StatusCode::kOk) {
    state_ = std::make_unique<State>(State{code, std::move(message)});
  }
}

Status::Status(const Status& other)
    : state_(other.state_ ? std::make_unique<State>(*other.state_) : nullptr) {}

Status& Status::operator=(const Status& other) {
  if (this != &other) {
    state_ = other.state_ ? std::make_unique<State>(*other.state_) : nullptr;
  }
  return *this;
}

const std::string& Status::message() const {
  static const std::string kEmpty;
  return ok() ? kEmpty : state_->message;
}

std::string Status::ToString() const {
  if (ok()) return "OK";
  std::string out(StatusCodeName(state_->code));
  if (!state_->message.empty()) {
    out += ": ";
    out += state_->message;
  }
  return out;
}

Status Status::WithContext(std::string_view context) const {
  if (ok()) return Status();
  std::string message(context);
  message += ": ";
  message += state_->message;
  return Status(state_->code, std::move(message));
}

bool Status::operator==(const Status& other) const {
  return code() == other.code() && message() == other.message();
}

std::ostream& operator<<(std::ostream& os, const Status& status) {
  return os << status.ToString();
}

#define HCI_DEFINE_STATUS_CTOR(fn, code) \
  Status fn(std::string message) { return Status(StatusCode::code, std::move(message)); }
HCI_DEFINE_STATUS_CTOR(Cancelled, kCancelled)
HCI_DEFINE_STATUS_CTOR(UnknownError, kUnknown)
HCI_DEFINE_STATUS_CTOR(InvalidArgument, kInvalidArgument)
HCI_DEFINE_STATUS_CTOR(DeadlineExceeded, kDeadlineExceeded)
HCI_DEFINE_STATUS_CTOR(NotFound, kNotFound)
HCI_DEFINE_STATUS_CTOR(AlreadyExists, kAlreadyExists)
HCI_DEFINE_STATUS_CTOR(PermissionDenied, kPermissionDenied)
HCI_DEFINE_STATUS_CTOR(ResourceExhausted, kResourceExhausted)
HCI_DEFINE_STATUS_CTOR(FailedPrecondition, kFailedPrecondition)
HCI_DEFINE_STATUS_CTOR(Aborted, kAborted)
HCI_DEFINE_STATUS_CTOR(OutOfRange, kOutOfRange)
HCI_DEFINE_STATUS_CTOR(Unimplemented, kUnimplemented)
HCI_DEFINE_STATUS_CTOR(Internal, kInternal)
HCI_DEFINE_STATUS_CTOR(Unavailable, kUnavailable)
HCI_DEFINE_STATUS_CTOR(DataLoss, kDataLoss)
HCI_DEFINE_STATUS_CTOR(Unauthenticated, kUnauthenticated)
#undef HCI_DEFINE_STATUS_CTOR

Status ErrnoStatus(int errnum, std::string_view context) {
  StatusCode code;
  switch (errnum) {
    case ENOENT: code = StatusCode::kNotFound; break;
    case EEXIST: code = StatusCode::kAlreadyExists; break;
    case EACCES:
    case EPERM: code = StatusCode::kPermissionDenied; break;
    case ENOSPC:
    case EDQUOT:
    case ENOMEM: code = StatusCode::kResourceExhausted; break;
    case EAGAIN:
    case EINTR:
    case EBUSY:
    case ECONNREFUSED:
    case ECONNRESET:
    case ETIMEDOUT: code = StatusCode::kUnavailable; break;
    case EINVAL: code = StatusCode::kInvalidArgument; break;
    default: code = StatusCode::kInternal; break;
  }
  std::string message(context);
  message += ": ";
  message += std::strerror(errnum);
  return Status(code, std::move(message));
}

namespace internal {
void DieOnErroredResult(const Status& status) {
  std::fprintf(stderr, "libhci: value of an errored Result accessed: %s\n",
               status.ToString().c_str());
  std::abort();
}
}  // namespace internal

}  // namespace hci
