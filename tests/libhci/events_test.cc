#include "hci/events.h"

#include <gtest/gtest.h>

namespace hci {
namespace {

TEST(SubscriptionTest, ResetCancelsOnceAndMoveTransfers) {
  int cancels = 0;
  {
    Subscription a([&] { ++cancels; });
    EXPECT_TRUE(a.active());
    Subscription b = std::move(a);
    EXPECT_FALSE(a.active());  // NOLINT(bugprone-use-after-move): moved-from state is specified
    EXPECT_TRUE(b.active());
    b.Reset();
    EXPECT_EQ(cancels, 1);
    b.Reset();
    EXPECT_EQ(cancels, 1);
  }
  EXPECT_EQ(cancels, 1);
  {
    Subscription c([&] { ++cancels; });
    Subscription d([&] { cancels += 10; });
    c = std::move(d);  // Assigning over an active subscription cancels it first.
    EXPECT_EQ(cancels, 2);
  }
  EXPECT_EQ(cancels, 12);
}

}  // namespace
}  // namespace hci
