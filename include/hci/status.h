// hci::Status: the error type of every libhci API and plugin call.
#pragma once

#include <memory>
#include <ostream>
#include <string>
#include <string_view>

#include "hci/export.h"

namespace hci {

/// Error codes, numbered as gRPC status codes (google.rpc.Code) so that they map one to one onto
/// a gRPC or CSI service. Meanings follow the CSI spec where it defines them.
enum class StatusCode : int {
  kOk = 0,
  kCancelled = 1,           ///< The caller cancelled the operation.
  kUnknown = 2,
  kInvalidArgument = 3,     ///< A request field is wrong; the message names the field.
  kDeadlineExceeded = 4,    ///< The deadline passed before the operation finished.
  kNotFound = 5,            ///< The named object does not exist.
  kAlreadyExists = 6,       ///< An object of that name exists with a different spec.
  kPermissionDenied = 7,
  kResourceExhausted = 8,   ///< Not enough capacity (nodes, space, addresses).
  kFailedPrecondition = 9,  ///< Not allowed in the object's current state; do not retry as is.
  kAborted = 10,            ///< Another operation is already pending on that object; retry later.
  kOutOfRange = 11,
  kUnimplemented = 12,      ///< The backend does not implement this; do not retry.
  kInternal = 13,           ///< A bug or broken invariant.
  kUnavailable = 14,        ///< Transient; retry with back-off.
  kDataLoss = 15,
  kUnauthenticated = 16,
};

/// "InvalidArgument", "NotFound", ... ; "Code(N)" for values outside the enum.
HCI_EXPORT std::string_view StatusCodeName(StatusCode code);

/// The outcome of an operation: OK, or a code with a sentence-style message such as
/// `metadata.name: "Vm_1" is not a valid name: ...`.
///
/// An OK status allocates nothing. Status is cheap to move and copy.
class [[nodiscard]] HCI_EXPORT Status {
 public:
  /// OK.
  Status() noexcept = default;
  /// `code` must not be kOk when `message` is set; kOk with a message yields OK.
  Status(StatusCode code, std::string message);

  ///@{
  /// Copies and moves; a moved-from Status is OK.
  Status(const Status& other);
  Status& operator=(const Status& other);
  Status(Status&&) noexcept = default;
  Status& operator=(Status&&) noexcept = default;
  ///@}
  ~Status() = default;

  /// The OK status (the same as Status()).
  static Status OK() { return Status(); }

  /// True for OK.
  bool ok() const { return state_ == nullptr; }
  /// kOk for OK.
  StatusCode code() const { return ok() ? StatusCode::kOk : state_->code; }
  /// Empty for OK.
  const std::string& message() const;

  /// "NotFound: volume \"data\" does not exist"; "OK" for OK.
  std::string ToString() const;

  /// A copy with `context` prepended to the message: "context: message". OK stays OK.
  Status WithContext(std::string_view context) const;

  /// Same code and same message.
  bool operator==(const Status& other) const;

  /// Marks a status as deliberately ignored.
  void IgnoreError() const {}

 private:
  struct State {
    StatusCode code;
    std::string message;
  };
  std::unique_ptr<State> state_;
};

/// Writes status.ToString().
HCI_EXPORT std::ostream& operator<<(std::ostream& os, const Status& status);

///@{
/// Constructors for each code.
HCI_EXPORT Status Cancelled(std::string message);
HCI_EXPORT Status UnknownError(std::string message);
HCI_EXPORT Status InvalidArgument(std::string message);
HCI_EXPORT Status DeadlineExceeded(std::string message);
HCI_EXPORT Status NotFound(std::string message);
HCI_EXPORT Status AlreadyExists(std::string message);
HCI_EXPORT Status PermissionDenied(std::string message);
HCI_EXPORT Status ResourceExhausted(std::string message);
HCI_EXPORT Status FailedPrecondition(std::string message);
HCI_EXPORT Status Aborted(std::string message);
HCI_EXPORT Status OutOfRange(std::string message);
HCI_EXPORT Status Unimplemented(std::string message);
HCI_EXPORT Status Internal(std::string message);
HCI_EXPORT Status Unavailable(std::string message);
HCI_EXPORT Status DataLoss(std::string message);
HCI_EXPORT Status Unauthenticated(std::string message);
///@}

/// Status from errno: ENOENT -> NotFound, EEXIST -> AlreadyExists, EACCES/EPERM ->
/// PermissionDenied, ENOSPC -> ResourceExhausted, EAGAIN/EINTR/EBUSY -> Unavailable,
/// others -> Internal. The message is "context: strerror(errnum)".
HCI_EXPORT Status ErrnoStatus(int errnum, std::string_view context);

}  // namespace hci

#define HCI_STATUS_CONCAT_INNER_(a, b) a##b
#define HCI_STATUS_CONCAT_(a, b) HCI_STATUS_CONCAT_INNER_(a, b)

/// Evaluates `expr` (a Status or Result); returns its status from the current function if not OK.
#define HCI_RETURN_NOT_OK(expr)                                        \
  do {                                                                 \
    auto&& hci_status_or_result_ = (expr);                             \
    if (!::hci::internal::StatusOf(hci_status_or_result_).ok()) {      \
      return ::hci::internal::StatusOf(hci_status_or_result_);         \
    }                                                                  \
  } while (false)

namespace hci::internal {
inline const Status& StatusOf(const Status& s) { return s; }
/// Prints `status` to stderr and aborts: used when the value of an errored Result is read.
[[noreturn]] HCI_EXPORT void DieOnErroredResult(const Status& status);
}  // namespace hci::internal
