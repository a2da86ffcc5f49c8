// hci::Result<T>: a value or a non-OK Status.
#pragma once

#include <cstdlib>
#include <type_traits>
#include <utility>
#include <variant>

#include "hci/status.h"

namespace hci {

/// Holds either a T or a non-OK Status (never an OK status without a value).
/// Accessing the value of an errored Result aborts the process with the status printed:
/// check ok() first, or use HCI_ASSIGN_OR_RAISE.
template <typename T>
class [[nodiscard]] Result {
 public:
  static_assert(!std::is_same_v<std::decay_t<T>, Status>, "Result<Status> is not allowed");

  /// An errored Result. An OK `status` is a bug and becomes Internal.
  Result(Status status)  // NOLINT(google-explicit-constructor)
      : v_(status.ok() ? Internal("Result constructed from an OK status without a value")
                       : std::move(status)) {}
  ///@{
  /// A Result holding `value` (or a value converted from it).
  Result(const T& value) : v_(value) {}  // NOLINT(google-explicit-constructor)
  Result(T&& value) : v_(std::move(value)) {}  // NOLINT(google-explicit-constructor)
  template <typename U, typename = std::enable_if_t<std::is_convertible_v<U&&, T> &&
                                                    !std::is_same_v<std::decay_t<U>, T> &&
                                                    !std::is_same_v<std::decay_t<U>, Status>>>
  Result(U&& value) : v_(T(std::forward<U>(value))) {}  // NOLINT(google-explicit-constructor)
  ///@}

  /// True when a value is held.
  bool ok() const { return v_.index() == 1; }
  /// OK when a value is held.
  Status status() const { return ok() ? Status() : std::get<0>(v_); }

  ///@{
  /// The value; aborts the process, printing the status, when errored (check ok() first).
  const T& ValueOrDie() const& {
    CheckOk();
    return std::get<1>(v_);
  }
  T& ValueOrDie() & {
    CheckOk();
    return std::get<1>(v_);
  }
  T ValueOrDie() && {
    CheckOk();
    return std::move(std::get<1>(v_));
  }
  const T& operator*() const& { return ValueOrDie(); }
  T& operator*() & { return ValueOrDie(); }
  T operator*() && { return std::move(*this).ValueOrDie(); }
  const T* operator->() const { return &ValueOrDie(); }
  T* operator->() { return &ValueOrDie(); }
  ///@}

  /// The value, or `fallback` when errored.
  T ValueOr(T fallback) const& { return ok() ? std::get<1>(v_) : std::move(fallback); }

  /// Moves the value out; the Result must be OK.
  T MoveValueUnsafe() { return std::move(std::get<1>(v_)); }

 private:
  void CheckOk() const {
    if (!ok()) internal::DieOnErroredResult(std::get<0>(v_));
  }
  std::variant<Status, T> v_;
};

namespace internal {
template <typename T>
const Status StatusOf(const Result<T>& r) {
  return r.status();
}
}  // namespace internal

}  // namespace hci

/// `HCI_ASSIGN_OR_RAISE(auto vm, compute->GetVm(req));` declares/assigns the value of a Result,
/// or returns its status from the current function.
#define HCI_ASSIGN_OR_RAISE(lhs, rexpr)                                                   \
  HCI_ASSIGN_OR_RAISE_IMPL_(HCI_STATUS_CONCAT_(hci_result_, __COUNTER__), lhs, rexpr)

#define HCI_ASSIGN_OR_RAISE_IMPL_(result_name, lhs, rexpr) \
  auto&& result_name = (rexpr);                            \
  if (!result_name.ok()) return result_name.status();      \
  lhs = std::move(result_name).MoveValueUnsafe()
