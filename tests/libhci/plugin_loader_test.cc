// The plugin loader, through the public API: Host::Open scans temporary plugin directories that
// each test fills with copies of the plugins in test_plugins/, and Host::plugins() reports.
#include <elf.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <link.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstddef>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <memory>
#include <mutex>
#include <string>
#include <system_error>
#include <vector>

#include "hci/host.h"
#include "hci/plugin.h"

namespace hci {
namespace {

namespace fs = std::filesystem;
using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::IsEmpty;

class CapturingSink final : public LogSink {
 public:
  struct Line {
    LogLevel level;
    std::string message;
  };

  void Write(const LogRecord& record) override {
    std::lock_guard<std::mutex> lock(mu_);
    lines_.push_back({record.level, std::string(record.message)});
  }

  // True when one line at `level` contains every part.
  bool Has(LogLevel level, const std::vector<std::string>& parts) const {
    std::lock_guard<std::mutex> lock(mu_);
    for (const auto& line : lines_) {
      if (line.level != level) continue;
      bool all = true;
      for (const auto& p : parts) all = all && line.message.find(p) != std::string::npos;
      if (all) return true;
    }
    return false;
  }

  std::string Dump() const {
    std::lock_guard<std::mutex> lock(mu_);
    std::string out;
    for (const auto& line : lines_) {
      out += "  [" + std::string(LogLevelName(line.level)) + "] " + line.message + "\n";
    }
    return out;
  }

 private:
  mutable std::mutex mu_;
  std::vector<Line> lines_;
};

std::string Dump(const std::vector<v1::PluginInfo>& report) {
  std::string out;
  for (const auto& info : report) out += "  " + info.ShortDebugString() + "\n";
  return out;
}

// The report entry for `path`, or nullptr.
const v1::PluginInfo* Entry(const std::vector<v1::PluginInfo>& report, const std::string& path) {
  for (const auto& info : report) {
    if (info.path() == path) return &info;
  }
  return nullptr;
}

class PluginLoaderTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string dir = ::testing::TempDir() + "hci-loader-XXXXXX";
    ASSERT_NE(::mkdtemp(dir.data()), nullptr) << std::strerror(errno);
    root_ = dir;
    // Explicit modes everywhere: the umask must not make a directory group-writable.
    Chmod(root_, 0755);
    good_dir_ = MakeDir("good");
    good_ = Install(HCI_TEST_PLUGIN_GOOD, good_dir_);
  }

  void TearDown() override {
    std::error_code ec;
    fs::remove_all(root_, ec);
    EXPECT_FALSE(ec) << "cannot remove " << root_ << ": " << ec.message();
  }

  static void Chmod(const std::string& path, mode_t mode) {
    ASSERT_EQ(::chmod(path.c_str(), mode), 0) << path << ": " << std::strerror(errno);
  }

  // A new directory `name` under the test's root, mode 0755.
  std::string MakeDir(const std::string& name) {
    std::string dir = root_ + "/" + name;
    EXPECT_EQ(::mkdir(dir.c_str(), 0755), 0) << dir << ": " << std::strerror(errno);
    Chmod(dir, 0755);
    return dir;
  }

  // Copies `source` into `dir` as `file_name` (default: its own name), mode 0644.
  static std::string Install(const std::string& source, const std::string& dir,
                             std::string file_name = "") {
    if (file_name.empty()) file_name = fs::path(source).filename().string();
    std::string target = dir + "/" + file_name;
    std::error_code ec;
    fs::copy_file(source, target, ec);
    EXPECT_FALSE(ec) << "copy " << source << " to " << target << ": " << ec.message();
    Chmod(target, 0644);
    return target;
  }

  static std::string WriteFile(const std::string& path, const std::string& content) {
    std::ofstream(path, std::ios::binary) << content;
    Chmod(path, 0644);
    return path;
  }

  // `state` names the state directory: one Host manages a state directory at a time.
  v1::HostConfig Config(const std::vector<std::string>& dirs,
                        const std::string& storage_plugin = "",
                        const std::string& state = "state") const {
    v1::HostConfig config;
    config.set_node_name("node-1");
    config.set_state_dir(root_ + "/" + state);
    config.set_log_level(v1::LOG_LEVEL_DEBUG);
    for (const auto& d : dirs) config.add_plugin_dirs(d);
    if (!storage_plugin.empty())
      config.mutable_backends()->mutable_storage()->set_plugin(storage_plugin);
    return config;
  }

  Result<std::unique_ptr<Host>> Open(const v1::HostConfig& config) {
    return Host::Open(config, HostOptions{.log_sink = sink_, .event_sink = nullptr});
  }

  // Opens a host over `dirs` (the good plugin's directory is added last) with the storage backend
  // bound to the good plugin, and checks that it loaded and serves.
  std::vector<v1::PluginInfo> ScanWithGood(std::vector<std::string> dirs) {
    dirs.push_back(good_dir_);
    auto host = Open(Config(dirs, "loader-good"));
    EXPECT_TRUE(host.ok()) << host.status() << "\nlog:\n" << sink_->Dump();
    if (!host.ok()) return {};
    auto report = (*host)->plugins();
    const v1::PluginInfo* good = Entry(report, good_);
    EXPECT_NE(good, nullptr) << Dump(report);
    if (good != nullptr) {
      EXPECT_EQ(good->state(), v1::PLUGIN_STATE_LOADED) << Dump(report);
    }
    ExpectServes(**host);
    return report;
  }

  // The good plugin's trivial storage backend answers through the host.
  static void ExpectServes(const Host& host) {
    auto storage = host.storage();
    ASSERT_TRUE(storage.ok()) << storage.status();
    auto list = (*storage)->ListVolumes(v1::ListVolumesRequest());
    ASSERT_TRUE(list.ok()) << list.status();
    EXPECT_THAT(list->volumes(), IsEmpty());
    v1::GetVolumeRequest get;
    get.set_name("data");
    auto volume = (*storage)->GetVolume(get);
    EXPECT_EQ(volume.status().code(), StatusCode::kNotFound) << volume.status();
    EXPECT_THAT(volume.status().message(), HasSubstr("\"data\""));
  }

  // `path` was refused with a reason naming it and containing every part; the refusal was logged.
  void ExpectRefused(const std::vector<v1::PluginInfo>& report, const std::string& path,
                     const std::vector<std::string>& parts) {
    const v1::PluginInfo* info = Entry(report, path);
    ASSERT_NE(info, nullptr) << path << " not in the report:\n" << Dump(report);
    EXPECT_EQ(info->state(), v1::PLUGIN_STATE_REFUSED) << info->ShortDebugString();
    EXPECT_THAT(info->reason(), HasSubstr(path));
    for (const auto& p : parts) EXPECT_THAT(info->reason(), HasSubstr(p));
    EXPECT_TRUE(sink_->Has(LogLevel::kWarn, {path, parts.empty() ? path : parts.front()}))
        << "no warning for " << path << "; log:\n"
        << sink_->Dump();
  }

  std::string root_;
  std::string good_dir_;
  std::string good_;
  std::shared_ptr<CapturingSink> sink_ = std::make_shared<CapturingSink>();
};

TEST_F(PluginLoaderTest, LoadsAGoodPluginAndItsBackendServes) {
  auto host = Open(Config({good_dir_}, "loader-good"));
  ASSERT_TRUE(host.ok()) << host.status() << "\nlog:\n" << sink_->Dump();
  auto report = (*host)->plugins();
  ASSERT_EQ(report.size(), 1u) << Dump(report);
  const v1::PluginInfo& info = report[0];
  EXPECT_EQ(info.path(), good_);
  EXPECT_EQ(info.state(), v1::PLUGIN_STATE_LOADED);
  EXPECT_EQ(info.reason(), "");
  EXPECT_EQ(info.name(), "loader-good");
  EXPECT_EQ(info.version(), "1.2.3");
  EXPECT_EQ(info.abi_version(), kPluginAbiVersion);
  EXPECT_THAT(info.toolchain(), HasSubstr(HCI_TOOLCHAIN_STDLIB));
  EXPECT_THAT(info.toolchain(), HasSubstr("cxx11-abi " + std::to_string(HCI_TOOLCHAIN_CXX11_ABI) +
                                          ", protobuf " + std::to_string(GOOGLE_PROTOBUF_VERSION)));
  EXPECT_THAT(info.kinds(), ElementsAre("storage"));
  ExpectServes(**host);
  EXPECT_TRUE(
      sink_->Has(LogLevel::kInfo, {"loaded plugin loader-good 1.2.3 from " + good_ + " (storage)"}))
      << sink_->Dump();
}

TEST_F(PluginLoaderTest, LoadsTheMockFromItsRealFile) {
  const std::string mock = HCI_TEST_MOCK_PLUGIN;
  auto host = Open(Config({fs::path(mock).parent_path().string()}));
  ASSERT_TRUE(host.ok()) << host.status();
  auto report = (*host)->plugins();
  const v1::PluginInfo* info = Entry(report, mock);
  ASSERT_NE(info, nullptr) << Dump(report);
  EXPECT_EQ(info->state(), v1::PLUGIN_STATE_LOADED) << info->reason();
  EXPECT_EQ(info->name(), "mock");
  EXPECT_FALSE(info->version().empty());
}

TEST_F(PluginLoaderTest, ScansDirectoriesInOrderAndFilesByNameSkippingOthers) {
  std::string dir = MakeDir("sorted");
  std::string b = Install(HCI_TEST_PLUGIN_OTHER_COMPILER, dir, "b.so");
  std::string a = Install(HCI_TEST_PLUGIN_GOOD, dir, "a.so");
  WriteFile(dir + "/README.txt", "not a plugin\n");
  WriteFile(dir + "/a.so.bak", "not a plugin either\n");
  ASSERT_EQ(::mkdir((dir + "/sub.so").c_str(), 0755), 0);
  std::string missing = root_ + "/does-not-exist";

  auto host = Open(Config({missing, dir}));
  ASSERT_TRUE(host.ok()) << host.status();
  auto report = (*host)->plugins();
  ASSERT_EQ(report.size(), 2u) << Dump(report);
  EXPECT_EQ(report[0].path(), a);
  EXPECT_EQ(report[1].path(), b);
  EXPECT_EQ(report[0].state(), v1::PLUGIN_STATE_LOADED) << report[0].reason();
  EXPECT_EQ(report[1].state(), v1::PLUGIN_STATE_LOADED) << report[1].reason();
  EXPECT_TRUE(sink_->Has(LogLevel::kWarn, {missing})) << sink_->Dump();
}

// Compilers differ in nothing that crosses the plugin boundary (gcc and clang share the Itanium
// C++ ABI), so a plugin whose only difference is the compiler loads.
TEST_F(PluginLoaderTest, AcceptsAPluginBuiltByAnotherCompiler) {
  std::string dir = MakeDir("other");
  std::string path = Install(HCI_TEST_PLUGIN_OTHER_COMPILER, dir);
  auto report = ScanWithGood({dir});
  const v1::PluginInfo* info = Entry(report, path);
  ASSERT_NE(info, nullptr) << Dump(report);
  EXPECT_EQ(info->state(), v1::PLUGIN_STATE_LOADED) << info->reason();
  EXPECT_THAT(info->toolchain(), HasSubstr("clang 99.0.0"));
  EXPECT_THAT(info->kinds(), IsEmpty());
}

TEST_F(PluginLoaderTest, RefusesAPluginBuiltForAnotherAbi) {
  std::string dir = MakeDir("abi");
  std::string future = Install(HCI_TEST_PLUGIN_ABI_FUTURE, dir);
  std::string zero = Install(HCI_TEST_PLUGIN_ABI_ZERO, dir);
  const std::string accepts = ", this libhci accepts ABI " + std::to_string(kPluginAbiOldest) +
                              " to " + std::to_string(kPluginAbiVersion);
  auto report = ScanWithGood({dir});
  ExpectRefused(report, future, {future + ": built for plugin ABI 999" + accepts});
  ExpectRefused(report, zero, {zero + ": built for plugin ABI 0" + accepts});
  // The stable header is still reported.
  const v1::PluginInfo* info = Entry(report, future);
  ASSERT_NE(info, nullptr);
  EXPECT_EQ(info->name(), "loader-abi-future");
  EXPECT_EQ(info->abi_version(), 999u);
}

TEST_F(PluginLoaderTest, RefusesAToolchainMismatchShowingBothFingerprints) {
  std::string dir = MakeDir("toolchain");
  std::string cxx11 = Install(HCI_TEST_PLUGIN_CXX11_ABI, dir);
  std::string protobuf = Install(HCI_TEST_PLUGIN_PROTOBUF, dir);
  std::string libcxx = Install(HCI_TEST_PLUGIN_LIBCXX, dir);
  const std::string ours = std::to_string(HCI_TOOLCHAIN_CXX11_ABI);
  const std::string theirs = HCI_TOOLCHAIN_CXX11_ABI == 1 ? "0" : "1";
  const std::string protobuf_ours = "protobuf " + std::to_string(GOOGLE_PROTOBUF_VERSION);

  auto report = ScanWithGood({dir});
  ExpectRefused(
      report, cxx11,
      {"toolchain mismatch", "_GLIBCXX_USE_CXX11_ABI " + theirs + " vs " + ours,
       "cxx11-abi " + theirs + ", " + protobuf_ours, "cxx11-abi " + ours + ", " + protobuf_ours});
  ExpectRefused(
      report, protobuf,
      {"toolchain mismatch", "protobuf 3000000 vs " + std::to_string(GOOGLE_PROTOBUF_VERSION),
       "cxx11-abi " + ours + ", protobuf 3000000", "cxx11-abi " + ours + ", " + protobuf_ours});
  ExpectRefused(report, libcxx,
                {"toolchain mismatch", "\"libc++\" vs \"" HCI_TOOLCHAIN_STDLIB "\"",
                 ", libc++, cxx11-abi", ", " HCI_TOOLCHAIN_STDLIB ", cxx11-abi"});
}

TEST_F(PluginLoaderTest, RefusesABadMagic) {
  std::string dir = MakeDir("magic");
  std::string path = Install(HCI_TEST_PLUGIN_BAD_MAGIC, dir);
  auto report = ScanWithGood({dir});
  ExpectRefused(report, path, {"magic 0xdeadbeef", "expected 0x50494348"});
  // Nothing after a wrong magic is trusted.
  const v1::PluginInfo* info = Entry(report, path);
  ASSERT_NE(info, nullptr);
  EXPECT_EQ(info->name(), "");
}

TEST_F(PluginLoaderTest, RefusesASharedObjectWithoutTheEntrySymbol) {
  std::string dir = MakeDir("no-entry");
  std::string path = Install(HCI_TEST_PLUGIN_NO_ENTRY, dir);
  auto report = ScanWithGood({dir});
  ExpectRefused(report, path, {"no hci_plugin_entry symbol"});
}

TEST_F(PluginLoaderTest, RefusesFilesThatAreNotElfSharedObjects) {
  std::string dir = MakeDir("not-elf");
  std::string text = WriteFile(dir + "/hci_text.so", "this is a text file, not a library\n");
  std::string empty = WriteFile(dir + "/hci_empty.so", "");

  // A relocatable object: the good plugin's ELF header with e_type ET_REL.
  std::ifstream in(HCI_TEST_PLUGIN_GOOD, std::ios::binary);
  std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  ASSERT_GT(bytes.size(), sizeof(ElfW(Ehdr)));
  ElfW(Half) rel = ET_REL;
  std::memcpy(bytes.data() + offsetof(ElfW(Ehdr), e_type), &rel, sizeof(rel));
  std::string relocatable = WriteFile(dir + "/hci_rel.so", bytes);

  auto report = ScanWithGood({dir});
  ExpectRefused(report, text, {"not an ELF shared object", "ELF magic"});
  ExpectRefused(report, empty, {"not an ELF shared object"});
  ExpectRefused(report, relocatable, {"not an ELF shared object", "ET_REL"});
}

TEST_F(PluginLoaderTest, RefusesWhenDlopenFailsWithTheLoadersMessage) {
  std::string dir = MakeDir("dlopen");
  std::string unresolved = Install(HCI_TEST_PLUGIN_UNRESOLVED, dir);
  // A valid ELF header with nothing behind it.
  std::ifstream in(HCI_TEST_PLUGIN_GOOD, std::ios::binary);
  std::string header(sizeof(ElfW(Ehdr)), '\0');
  in.read(header.data(), static_cast<std::streamsize>(header.size()));
  std::string truncated = WriteFile(dir + "/hci_truncated.so", header);

  auto report = ScanWithGood({dir});
  ExpectRefused(report, unresolved,
                {"dlopen failed", "undefined symbol: loader_test_symbol_nobody_defines"});
  ExpectRefused(report, truncated, {"dlopen failed"});
}

TEST_F(PluginLoaderTest, RefusesAnInvalidNameOrAnEmptyVersion) {
  std::string dir = MakeDir("names");
  std::string bad_name = Install(HCI_TEST_PLUGIN_BAD_NAME, dir);
  std::string no_version = Install(HCI_TEST_PLUGIN_NO_VERSION, dir);
  auto report = ScanWithGood({dir});
  ExpectRefused(report, bad_name,
                {"plugin name: \"Loader_Bad\" is not a valid name", "uppercase 'L'"});
  ExpectRefused(report, no_version, {"plugin \"loader-no-version\" has an empty version"});
}

TEST_F(PluginLoaderTest, RefusesADuplicateNameKeepingTheFirst) {
  std::string dir = MakeDir("again");
  std::string same_dir_copy = Install(HCI_TEST_PLUGIN_GOOD, good_dir_, "hci_loader-good2.so");
  std::string later_dir_copy = Install(HCI_TEST_PLUGIN_GOOD, dir);

  auto host = Open(Config({good_dir_, dir}, "loader-good"));
  ASSERT_TRUE(host.ok()) << host.status();
  auto report = (*host)->plugins();
  ASSERT_EQ(report.size(), 3u) << Dump(report);
  EXPECT_EQ(report[0].path(), good_);
  EXPECT_EQ(report[0].state(), v1::PLUGIN_STATE_LOADED);
  ExpectRefused(report, same_dir_copy,
                {"plugin name \"loader-good\" is already provided by " + good_});
  ExpectRefused(report, later_dir_copy,
                {"plugin name \"loader-good\" is already provided by " + good_});
  ExpectServes(**host);
}

TEST_F(PluginLoaderTest, LoadsTheSameFileReachedTwiceOnce) {
  std::string links = MakeDir("links");
  fs::create_symlink(good_, links + "/hci_alias.so");
  fs::create_symlink(good_dir_, root_ + "/good-link");

  auto host = Open(Config({good_dir_, links, root_ + "/good-link", good_dir_}, "loader-good"));
  ASSERT_TRUE(host.ok()) << host.status();
  auto report = (*host)->plugins();
  ASSERT_EQ(report.size(), 1u) << Dump(report);
  EXPECT_EQ(report[0].path(), good_);
  EXPECT_EQ(report[0].state(), v1::PLUGIN_STATE_LOADED);
  ExpectServes(**host);
}

TEST_F(PluginLoaderTest, RefusesEverythingInAWorldWritableDirectory) {
  std::string dir = MakeDir("open");
  std::string path = Install(HCI_TEST_PLUGIN_OTHER_COMPILER, dir);
  Chmod(dir, 0777);
  auto report = ScanWithGood({dir});
  ExpectRefused(report, path,
                {"its directory " + dir + " is writable by group and others", "mode 0777"});
}

TEST_F(PluginLoaderTest, RefusesAGroupWritableFile) {
  std::string dir = MakeDir("group");
  std::string path = Install(HCI_TEST_PLUGIN_OTHER_COMPILER, dir);
  Chmod(path, 0664);
  auto report = ScanWithGood({dir});
  ExpectRefused(report, path, {"the file is writable by group", "mode 0664"});
}

TEST_F(PluginLoaderTest, RefusesAFileOwnedByAnotherUser) {
  if (::geteuid() != 0) {
    GTEST_SKIP() << "only root can give a file to another user (euid " << ::geteuid() << ")";
  }
  std::string dir = MakeDir("owner");
  std::string path = Install(HCI_TEST_PLUGIN_OTHER_COMPILER, dir);
  ASSERT_EQ(::chown(path.c_str(), 4242, 4242), 0) << std::strerror(errno);
  auto report = ScanWithGood({dir});
  ExpectRefused(report, path, {"owned by uid 4242", "neither root nor"});
}

TEST_F(PluginLoaderTest, BindingARefusedPluginIsNotFoundWithTheReason) {
  std::string dir = MakeDir("abi");
  std::string future = Install(HCI_TEST_PLUGIN_ABI_FUTURE, dir);
  auto host = Open(Config({dir, good_dir_}, "loader-abi-future"));
  ASSERT_FALSE(host.ok());
  EXPECT_EQ(host.status().code(), StatusCode::kNotFound) << host.status();
  EXPECT_THAT(host.status().message(), HasSubstr("backends.storage.plugin"));
  EXPECT_THAT(host.status().message(), HasSubstr(future + ": built for plugin ABI 999"));
}

// Refused before its descriptor was read, the plugin is still found by its file name.
TEST_F(PluginLoaderTest, BindingAPluginRefusedForItsDirectoryIsNotFoundWithTheReason) {
  std::string dir = MakeDir("open");
  std::string path = Install(HCI_TEST_PLUGIN_OTHER_COMPILER, dir);
  Chmod(dir, 0757);
  auto host = Open(Config({dir, good_dir_}, "loader-other-compiler"));
  ASSERT_FALSE(host.ok());
  EXPECT_EQ(host.status().code(), StatusCode::kNotFound) << host.status();
  EXPECT_THAT(host.status().message(), HasSubstr(path));
  EXPECT_THAT(host.status().message(), HasSubstr("is writable by others (mode 0757)"));
}

TEST_F(PluginLoaderTest, BindingAKindThePluginLacksIsInvalidArgument) {
  v1::HostConfig config = Config({good_dir_});
  config.mutable_backends()->mutable_compute()->set_plugin("loader-good");
  auto host = Open(config);
  ASSERT_FALSE(host.ok());
  EXPECT_EQ(host.status().code(), StatusCode::kInvalidArgument) << host.status();
  EXPECT_THAT(host.status().message(), HasSubstr("backends.compute.plugin"));
  EXPECT_THAT(host.status().message(), HasSubstr("it provides: storage"));
}

// Two hosts in one process share the mapping, and plugins are never unloaded: the plugin's own
// factory counter keeps counting across hosts, even after every host is gone.
TEST_F(PluginLoaderTest, TwoHostsShareOneMappingThatOutlivesThem) {
  auto FactoryCall = [](const Host& host) {
    auto storage = host.storage();
    if (!storage.ok()) return storage.status().ToString();
    auto metrics = (*storage)->Metrics();
    return metrics.ok() ? *metrics : metrics.status().ToString();
  };
  {
    auto first = Open(Config({good_dir_}, "loader-good", "state-1"));
    ASSERT_TRUE(first.ok()) << first.status();
    auto second = Open(Config({good_dir_}, "loader-good", "state-2"));
    ASSERT_TRUE(second.ok()) << second.status();
    EXPECT_EQ(FactoryCall(**first), "loader_good_factory_call 1\n");
    EXPECT_EQ(FactoryCall(**second), "loader_good_factory_call 2\n");
    ExpectServes(**first);
    ExpectServes(**second);
    EXPECT_EQ((*second)->plugins()[0].state(), v1::PLUGIN_STATE_LOADED);
  }
  auto third = Open(Config({good_dir_}, "loader-good", "state-3"));
  ASSERT_TRUE(third.ok()) << third.status();
  EXPECT_EQ(FactoryCall(**third), "loader_good_factory_call 3\n");
  ExpectServes(**third);
}

}  // namespace
}  // namespace hci
