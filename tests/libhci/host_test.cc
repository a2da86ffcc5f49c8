#include "hci/host.h"

#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <filesystem>
#include <string>

namespace hci {
namespace {

namespace fs = std::filesystem;

class HostTest : public ::testing::Test {
 protected:
  void SetUp() override {
    root_ = fs::path(::testing::TempDir()) /
            ("host_test_" + std::to_string(::getpid()) + "_" +
             ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::remove_all(root_);
    fs::create_directories(root_ / "plugins");
    fs::permissions(root_ / "plugins", fs::perms(0755));
  }
  void TearDown() override { fs::remove_all(root_); }

  v1::HostConfig EmptyConfig() {
    v1::HostConfig config;
    config.set_state_dir((root_ / "state").string());
    config.add_plugin_dirs((root_ / "plugins").string());
    config.set_node_name("node-1");
    config.set_log_level(v1::LOG_LEVEL_WARN);
    return config;
  }

  fs::path root_;
};

TEST_F(HostTest, OpensWithoutBackendsAndCreatesPrivateStateDir) {
  auto host = Host::Open(EmptyConfig());
  ASSERT_TRUE(host.ok()) << host.status();
  struct stat st {};
  ASSERT_EQ(::stat((root_ / "state").c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0700u);
  EXPECT_EQ((*host)->config().node_name(), "node-1");
  EXPECT_TRUE((*host)->plugins().empty());
  EXPECT_TRUE((*host)->ListOperations().empty());
  EXPECT_EQ((*host)->GetOperation("op-1").status().code(), StatusCode::kNotFound);
}

TEST_F(HostTest, OneHostPerStateDir) {
  auto first = Host::Open(EmptyConfig());
  ASSERT_TRUE(first.ok()) << first.status();
  auto second = Host::Open(EmptyConfig());
  EXPECT_EQ(second.status().code(), StatusCode::kFailedPrecondition);
  EXPECT_NE(second.status().message().find("pid " + std::to_string(::getpid())),
            std::string::npos)
      << second.status();
  first->reset();
  auto third = Host::Open(EmptyConfig());
  EXPECT_TRUE(third.ok()) << third.status();
}

TEST_F(HostTest, UnconfiguredBackendIsFailedPrecondition) {
  auto host = Host::Open(EmptyConfig());
  ASSERT_TRUE(host.ok()) << host.status();
  auto compute = (*host)->compute();
  EXPECT_EQ(compute.status().code(), StatusCode::kFailedPrecondition);
  EXPECT_NE(compute.status().message().find("backends.compute.plugin"), std::string::npos);
  EXPECT_FALSE((*host)->storage().ok());
  EXPECT_FALSE((*host)->network().ok());
  EXPECT_FALSE((*host)->image().ok());
  EXPECT_FALSE((*host)->backup().ok());
}

TEST_F(HostTest, RejectsBadNodeNameAndRelativeStateDir) {
  v1::HostConfig config = EmptyConfig();
  config.set_node_name("Node_1");
  auto host = Host::Open(config);
  EXPECT_EQ(host.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(host.status().message().find("node_name"), std::string::npos);

  config = EmptyConfig();
  config.set_state_dir("relative/dir");
  host = Host::Open(config);
  EXPECT_EQ(host.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(host.status().message().find("state_dir"), std::string::npos);
}

TEST_F(HostTest, MissingPluginIsNotFoundNamingTheField) {
  v1::HostConfig config = EmptyConfig();
  config.mutable_backends()->mutable_storage()->set_plugin("nonexistent");
  auto host = Host::Open(config);
  EXPECT_EQ(host.status().code(), StatusCode::kNotFound);
  EXPECT_NE(host.status().message().find("backends.storage.plugin"), std::string::npos)
      << host.status();
  EXPECT_NE(host.status().message().find("nonexistent"), std::string::npos);
}

TEST_F(HostTest, OptionsWithoutPluginIsInvalid) {
  v1::HostConfig config = EmptyConfig();
  (*config.mutable_backends()->mutable_network()->mutable_options()->mutable_fields())["x"]
      .set_number_value(1);
  auto host = Host::Open(config);
  EXPECT_EQ(host.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(host.status().message().find("backends.network.plugin"), std::string::npos);
}

TEST_F(HostTest, DefaultStateDirHonoursEnvironment) {
  ::setenv("HCI_STATE_DIR", "/tmp/hci-state-from-env", 1);
  EXPECT_EQ(Host::DefaultStateDir(), "/tmp/hci-state-from-env");
  ::unsetenv("HCI_STATE_DIR");
  EXPECT_FALSE(Host::DefaultStateDir().empty());
  EXPECT_EQ(Host::DefaultStateDir().front(), '/');
}

TEST_F(HostTest, MetricsTextIsPrometheusFormat) {
  auto host = Host::Open(EmptyConfig());
  ASSERT_TRUE(host.ok()) << host.status();
  std::string text = (*host)->Metrics();
  EXPECT_NE(text.find("# TYPE hci_backend_requests_total counter"), std::string::npos);
}

}  // namespace
}  // namespace hci
