#include "hci/status.h"

#include <gtest/gtest.h>

#include <cerrno>
#include <memory>
#include <string>

#include "hci/result.h"

namespace hci {
namespace {

TEST(StatusTest, DefaultIsOkAndEmpty) {
  Status s;
  EXPECT_TRUE(s.ok());
  EXPECT_EQ(s.code(), StatusCode::kOk);
  EXPECT_EQ(s.message(), "");
  EXPECT_EQ(s.ToString(), "OK");
}

TEST(StatusTest, OkCodeWithMessageIsOk) {
  Status s(StatusCode::kOk, "ignored");
  EXPECT_TRUE(s.ok());
  EXPECT_EQ(s.message(), "");
}

TEST(StatusTest, ConstructorsSetCodeAndMessage) {
  struct Case {
    Status status;
    StatusCode code;
    const char* name;
  };
  const Case cases[] = {
      {Cancelled("m"), StatusCode::kCancelled, "Cancelled"},
      {InvalidArgument("m"), StatusCode::kInvalidArgument, "InvalidArgument"},
      {DeadlineExceeded("m"), StatusCode::kDeadlineExceeded, "DeadlineExceeded"},
      {NotFound("m"), StatusCode::kNotFound, "NotFound"},
      {AlreadyExists("m"), StatusCode::kAlreadyExists, "AlreadyExists"},
      {ResourceExhausted("m"), StatusCode::kResourceExhausted, "ResourceExhausted"},
      {FailedPrecondition("m"), StatusCode::kFailedPrecondition, "FailedPrecondition"},
      {Aborted("m"), StatusCode::kAborted, "Aborted"},
      {Unimplemented("m"), StatusCode::kUnimplemented, "Unimplemented"},
      {Internal("m"), StatusCode::kInternal, "Internal"},
      {Unavailable("m"), StatusCode::kUnavailable, "Unavailable"},
      {DataLoss("m"), StatusCode::kDataLoss, "DataLoss"},
  };
  for (const auto& c : cases) {
    EXPECT_FALSE(c.status.ok());
    EXPECT_EQ(c.status.code(), c.code);
    EXPECT_EQ(c.status.message(), "m");
    EXPECT_EQ(c.status.ToString(), std::string(c.name) + ": m");
    EXPECT_EQ(StatusCodeName(c.code), c.name);
  }
}

TEST(StatusTest, CodesUseGrpcNumbering) {
  // Management planes map these straight onto gRPC/CSI; the numbers are part of the contract.
  EXPECT_EQ(static_cast<int>(StatusCode::kInvalidArgument), 3);
  EXPECT_EQ(static_cast<int>(StatusCode::kNotFound), 5);
  EXPECT_EQ(static_cast<int>(StatusCode::kAborted), 10);
  EXPECT_EQ(static_cast<int>(StatusCode::kUnimplemented), 12);
  EXPECT_EQ(static_cast<int>(StatusCode::kUnavailable), 14);
  EXPECT_EQ(static_cast<int>(StatusCode::kUnauthenticated), 16);
}

TEST(StatusTest, CopyIsDeepAndEqual) {
  Status a = NotFound("volume \"x\" does not exist");
  Status b = a;
  EXPECT_EQ(a, b);
  b = Internal("other");
  EXPECT_EQ(a.code(), StatusCode::kNotFound);
  EXPECT_NE(a, b);
  Status c = std::move(b);
  EXPECT_EQ(c.code(), StatusCode::kInternal);
}

TEST(StatusTest, WithContextPrefixesMessageAndKeepsCode) {
  Status s = NotFound("no such file").WithContext("backends.storage (plugin \"local\")");
  EXPECT_EQ(s.code(), StatusCode::kNotFound);
  EXPECT_EQ(s.message(), "backends.storage (plugin \"local\"): no such file");
  EXPECT_TRUE(Status().WithContext("x").ok());
}

TEST(StatusTest, ErrnoMapping) {
  EXPECT_EQ(ErrnoStatus(ENOENT, "open /x").code(), StatusCode::kNotFound);
  EXPECT_EQ(ErrnoStatus(EEXIST, "x").code(), StatusCode::kAlreadyExists);
  EXPECT_EQ(ErrnoStatus(EACCES, "x").code(), StatusCode::kPermissionDenied);
  EXPECT_EQ(ErrnoStatus(ENOSPC, "x").code(), StatusCode::kResourceExhausted);
  EXPECT_EQ(ErrnoStatus(EAGAIN, "x").code(), StatusCode::kUnavailable);
  EXPECT_EQ(ErrnoStatus(EIO, "x").code(), StatusCode::kInternal);
  EXPECT_EQ(ErrnoStatus(ENOENT, "open /x").message(), "open /x: No such file or directory");
}

Result<int> Half(int x) {
  if (x % 2 != 0) return InvalidArgument("x: " + std::to_string(x) + " is odd");
  return x / 2;
}

Result<int> Quarter(int x) {
  HCI_ASSIGN_OR_RAISE(int half, Half(x));
  HCI_ASSIGN_OR_RAISE(int quarter, Half(half));
  return quarter;
}

Status CheckEven(int x) {
  HCI_RETURN_NOT_OK(Half(x));
  return Status();
}

Status Chain(int x) {
  HCI_RETURN_NOT_OK(CheckEven(x));
  return Status();
}

TEST(ResultTest, ValueAndError) {
  Result<int> ok = Half(8);
  ASSERT_TRUE(ok.ok());
  EXPECT_EQ(*ok, 4);
  EXPECT_TRUE(ok.status().ok());
  Result<int> bad = Half(3);
  EXPECT_FALSE(bad.ok());
  EXPECT_EQ(bad.status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(bad.ValueOr(-1), -1);
}

TEST(ResultTest, MacrosPropagate) {
  EXPECT_EQ(*Quarter(8), 2);
  EXPECT_EQ(Quarter(6).status().message(), "x: 3 is odd");
  EXPECT_TRUE(Chain(4).ok());
  EXPECT_EQ(Chain(5).code(), StatusCode::kInvalidArgument);
}

TEST(ResultTest, OkStatusWithoutValueBecomesInternal) {
  Result<int> r{Status()};
  EXPECT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), StatusCode::kInternal);
}

TEST(ResultTest, MoveOnlyValue) {
  Result<std::unique_ptr<int>> r = std::make_unique<int>(7);
  ASSERT_TRUE(r.ok());
  std::unique_ptr<int> p = std::move(r).ValueOrDie();
  EXPECT_EQ(*p, 7);
}

TEST(ResultDeathTest, ValueOfErrorAborts) {
  Result<int> bad = Half(3);
  EXPECT_DEATH({ (void)bad.ValueOrDie(); }, "errored Result.*x: 3 is odd");
}

}  // namespace
}  // namespace hci
