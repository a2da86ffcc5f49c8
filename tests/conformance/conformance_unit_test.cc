// Unit tests of the conformance kit's parts: HostConfig.plugin_files, the matrix (cells, JSON,
// Markdown), the config and option errors, capability-driven registration and the resource
// tracker. The kit's checks themselves run in conformance.<plugin> and conformance.broken.
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>

#include "conformance_internal.h"
#include "hci/conformance/conformance.h"
#include "hci/hci.h"

namespace hci::conformance {
namespace {

namespace fs = std::filesystem;
using ::testing::HasSubstr;

class TempDir {
 public:
  TempDir() {
    std::string pattern = fs::temp_directory_path().string() + "/hci-conf-unit-XXXXXX";
    path_ = ::mkdtemp(pattern.data()) != nullptr ? pattern : "";
  }
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(path_, ec);
  }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

void WriteFile(const std::string& path, const std::string& text) { std::ofstream(path) << text; }

// ---------------------------------------------------------------------------------------------
// HostConfig.plugin_files (the core change the kit needs)

v1::HostConfig QuietConfig(const std::string& state_dir, const std::string& plugin_dir) {
  v1::HostConfig config;
  config.set_node_name("conf-unit");
  config.set_state_dir(state_dir);
  config.add_plugin_dirs(plugin_dir);
  config.set_log_level(v1::LOG_LEVEL_OFF);
  return config;
}

TEST(PluginFiles, LoadsAnExplicitFileWithTheScannedDirectoriesChecks) {
  TempDir state, empty_dir;
  auto config = QuietConfig(state.path(), empty_dir.path());
  config.add_plugin_files(HCI_TEST_MOCK_PLUGIN);
  config.mutable_backends()->mutable_compute()->set_plugin("mock");
  auto host = Host::Open(config);
  ASSERT_TRUE(host.ok()) << host.status();
  auto report = (*host)->plugins();
  ASSERT_EQ(report.size(), 1u);
  EXPECT_EQ(report[0].path(), HCI_TEST_MOCK_PLUGIN);
  EXPECT_EQ(report[0].state(), v1::PLUGIN_STATE_LOADED);
  EXPECT_EQ(report[0].name(), "mock");
  EXPECT_TRUE((*host)->compute().ok());
}

TEST(PluginFiles, TheSameFileInAScannedDirectoryIsNotLoadedTwice) {
  TempDir state;
  auto config = QuietConfig(state.path(), fs::path(HCI_TEST_MOCK_PLUGIN).parent_path().string());
  config.add_plugin_files(HCI_TEST_MOCK_PLUGIN);
  auto host = Host::Open(config);
  ASSERT_TRUE(host.ok()) << host.status();
  int mocks = 0;
  for (const auto& info : (*host)->plugins()) {
    if (info.name() == "mock") {
      ++mocks;
      EXPECT_EQ(info.state(), v1::PLUGIN_STATE_LOADED) << info.reason();
      EXPECT_EQ(info.path(), HCI_TEST_MOCK_PLUGIN) << "the explicit file comes first";
    }
  }
  EXPECT_EQ(mocks, 1);
}

TEST(PluginFiles, AnotherFileWithTheSameNameIsRefused) {
  TempDir state, copies;
  const std::string copy = copies.path() + "/hci_mock.so";
  fs::copy_file(HCI_TEST_MOCK_PLUGIN, copy);
  auto config = QuietConfig(state.path(), copies.path());
  config.add_plugin_files(HCI_TEST_MOCK_PLUGIN);
  auto host = Host::Open(config);
  ASSERT_TRUE(host.ok()) << host.status();
  auto report = (*host)->plugins();
  ASSERT_EQ(report.size(), 2u);
  EXPECT_EQ(report[0].state(), v1::PLUGIN_STATE_LOADED);
  EXPECT_EQ(report[1].path(), copy);
  EXPECT_EQ(report[1].state(), v1::PLUGIN_STATE_REFUSED);
  EXPECT_THAT(report[1].reason(), HasSubstr("already provided by " HCI_TEST_MOCK_PLUGIN));
}

TEST(PluginFiles, RelativePathsAreRefused) {
  TempDir state, empty_dir;
  auto config = QuietConfig(state.path(), empty_dir.path());
  config.add_plugin_files("hci_mock.so");
  auto host = Host::Open(config);
  ASSERT_FALSE(host.ok());
  EXPECT_EQ(host.status().code(), StatusCode::kInvalidArgument);
  EXPECT_THAT(host.status().message(), HasSubstr("plugin_files[0]"));
}

TEST(PluginFiles, ReadFromYaml) {
  TempDir dir;
  const std::string path = dir.path() + "/host.yaml";
  WriteFile(path, "pluginFiles: [/opt/a/hci_x.so, /opt/b/hci_y.so]\n");
  auto config = Host::LoadConfig(path);
  ASSERT_TRUE(config.ok()) << config.status();
  ASSERT_EQ(config->plugin_files_size(), 2);
  EXPECT_EQ(config->plugin_files(1), "/opt/b/hci_y.so");
}

// ---------------------------------------------------------------------------------------------
// The matrix

PluginMatrix SampleMatrix(std::string plugin) {
  PluginMatrix m;
  m.plugin = std::move(plugin);
  m.version = "1.0.0";
  m.kinds = {BackendKind::kStorage};
  m.passed = 10;
  m.failed = 1;
  m.skipped = 2;
  for (BackendKind kind : kAllBackendKinds) {
    for (const auto& op : Operations(kind)) {
      OperationSupport cell{kind, op, Support::kNotTested, {}};
      if (kind == BackendKind::kStorage) cell.support = Support::kComplete;
      if (op == "ExpandVolume") {
        cell.support = Support::kPartial;
        cell.notes = {"does not claim `online_expand`"};
      }
      if (op == "GetChangedBlocks") cell.support = Support::kMissing;
      m.operations.push_back(cell);
    }
  }
  return m;
}

TEST(Matrix, EveryKindHasItsInterfaceOperationsAndMetrics) {
  EXPECT_EQ(Operations(BackendKind::kCompute).front(), "CreateVm");
  EXPECT_EQ(Operations(BackendKind::kCompute).size(), 15u);
  EXPECT_EQ(Operations(BackendKind::kStorage).size(), 14u);
  EXPECT_EQ(Operations(BackendKind::kNetwork).size(), 9u);
  EXPECT_EQ(Operations(BackendKind::kImage).size(), 5u);
  EXPECT_EQ(Operations(BackendKind::kBackup).size(), 10u);
  for (BackendKind kind : kAllBackendKinds) EXPECT_EQ(Operations(kind).back(), "Metrics");
}

TEST(Matrix, JsonRoundTrip) {
  TempDir dir;
  const std::string path = dir.path() + "/m.json";
  PluginMatrix m = SampleMatrix("alpha");
  m.error = "";
  ASSERT_TRUE(WriteMatrixJson(m, path).ok());
  auto back = ReadMatrixJson(path);
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_EQ(back->plugin, "alpha");
  EXPECT_EQ(back->version, "1.0.0");
  EXPECT_EQ(back->kinds, m.kinds);
  EXPECT_EQ(back->passed, 10);
  EXPECT_EQ(back->failed, 1);
  EXPECT_EQ(back->skipped, 2);
  ASSERT_EQ(back->operations.size(), m.operations.size());
  for (std::size_t i = 0; i < m.operations.size(); ++i) {
    EXPECT_EQ(back->operations[i].kind, m.operations[i].kind);
    EXPECT_EQ(back->operations[i].operation, m.operations[i].operation);
    EXPECT_EQ(back->operations[i].support, m.operations[i].support);
    EXPECT_EQ(back->operations[i].notes, m.operations[i].notes);
  }
  EXPECT_EQ(RenderMatrixMarkdown({*back}), RenderMatrixMarkdown({m}));
}

TEST(Matrix, ReadErrorsNameTheFileAndField) {
  TempDir dir;
  EXPECT_EQ(ReadMatrixJson(dir.path() + "/none.json").status().code(), StatusCode::kNotFound);
  const std::string bad = dir.path() + "/bad.json";
  WriteFile(bad, "{not json");
  auto parsed = ReadMatrixJson(bad);
  EXPECT_EQ(parsed.status().code(), StatusCode::kInvalidArgument);
  EXPECT_THAT(parsed.status().message(), HasSubstr(bad));
  const std::string unknown = dir.path() + "/unknown.json";
  WriteFile(unknown, R"({"plugin":"x","operations":[{"kind":"storage","operation":"Teleport",)"
                     R"("support":"SUPPORT_COMPLETE"}]})");
  auto op = ReadMatrixJson(unknown);
  EXPECT_EQ(op.status().code(), StatusCode::kInvalidArgument);
  EXPECT_THAT(op.status().message(), HasSubstr("operations[0].operation"));
}

TEST(Matrix, MarkdownColumnsAreSortedAndNotesNumbered) {
  std::string md = RenderMatrixMarkdown({SampleMatrix("zeta"), SampleMatrix("alpha")});
  EXPECT_EQ(md, RenderMatrixMarkdown({SampleMatrix("alpha"), SampleMatrix("zeta")}))
      << "the input order must not matter";
  EXPECT_THAT(md, HasSubstr("| kind | operation | alpha | zeta |"));
  EXPECT_THAT(md, HasSubstr("| storage | ExpandVolume | partial (1) | partial (2) |"));
  EXPECT_THAT(md, HasSubstr("| storage | GetChangedBlocks | missing | missing |"));
  EXPECT_THAT(md, HasSubstr("| compute | CreateVm | — | — |"));
  EXPECT_THAT(md, HasSubstr("1. alpha, storage ExpandVolume: does not claim `online_expand`."));
  EXPECT_THAT(md, HasSubstr("| alpha | 1.0.0 | storage | 10 | 1 | 2 |"));
}

// The cell rules of docs/conformance.md, on an environment with no Host.
class MatrixCells : public ::testing::Test {
 protected:
  MatrixCells() {
    env_.plugin.set_name("p");
    env_.plugin.set_version("1");
    env_.kinds = {BackendKind::kStorage};
    env_.storage_caps.set_expand(true);  // not online_expand
    env_.storage_caps.set_clone(true);
    env_.storage_caps.set_from_image(true);
  }
  const OperationSupport& Cell(const PluginMatrix& m, std::string_view op) {
    for (const auto& o : m.operations) {
      if (o.kind == BackendKind::kStorage && o.operation == op) return o;
    }
    static OperationSupport none;
    return none;
  }
  internal::Env env_;
};

TEST_F(MatrixCells, FollowCapabilitiesAndOutcomes) {
  env_.test_ops = {
      {"S.Create", {"storage/CreateVolume"}},       {"S.Get", {"storage/GetVolume"}},
      {"S.Broken", {"storage/DeleteVolume"}},       {"S.Expand", {"storage/ExpandVolume"}},
      {"S.SnapUnimpl", {"storage/CreateSnapshot"}}, {"S.RevertUnimpl", {"storage/RevertVolume"}},
      {"S.Skipped", {"storage/AttachVolume"}},      {"Metrics.storage", {"storage/Metrics"}}};
  env_.observed_unimplemented.insert("storage/Metrics");
  std::map<std::string, internal::TestOutcome> outcomes = {
      {"S.Create", {true, false, false}},     {"S.Get", {true, false, false}},
      {"S.Broken", {true, true, false}},      {"S.Expand", {true, false, false}},
      {"S.SnapUnimpl", {true, false, false}}, {"S.RevertUnimpl", {true, true, false}},
      {"S.Skipped", {true, false, true}},     {"Metrics.storage", {true, false, false}}};
  PluginMatrix m = internal::ComputeMatrix(env_, outcomes);
  EXPECT_EQ(m.passed, 5);
  EXPECT_EQ(m.failed, 2);
  EXPECT_EQ(m.skipped, 1);
  EXPECT_EQ(Cell(m, "CreateVolume").support, Support::kComplete);
  EXPECT_EQ(Cell(m, "GetVolume").support, Support::kComplete);
  EXPECT_EQ(Cell(m, "DeleteVolume").support, Support::kPartial);
  EXPECT_THAT(Cell(m, "DeleteVolume").notes, ::testing::ElementsAre("failed: S.Broken"));
  // Implemented and passing, but a related capability is not claimed.
  EXPECT_EQ(Cell(m, "ExpandVolume").support, Support::kPartial);
  EXPECT_THAT(Cell(m, "ExpandVolume").notes,
              ::testing::ElementsAre("does not claim `online_expand`"));
  // Not claimed and honestly Unimplemented.
  EXPECT_EQ(Cell(m, "CreateSnapshot").support, Support::kMissing);
  // Not claimed, but the Unimplemented check failed: the plugin implements it anyway.
  EXPECT_EQ(Cell(m, "RevertVolume").support, Support::kPartial);
  EXPECT_THAT(Cell(m, "RevertVolume").notes[0], HasSubstr("does not claim `revert`"));
  // Only a skipped check: not exercised.
  EXPECT_EQ(Cell(m, "AttachVolume").support, Support::kPartial);
  EXPECT_THAT(Cell(m, "AttachVolume").notes,
              ::testing::ElementsAre("no check exercised it in this run", "skipped: S.Skipped"));
  EXPECT_EQ(Cell(m, "Metrics").support, Support::kMissing);
  // Kinds the run did not test.
  for (const auto& o : m.operations) {
    if (o.kind != BackendKind::kStorage) {
      EXPECT_EQ(o.support, Support::kNotTested);
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Options and config errors

TEST(SuiteCreate, RefusesBadOptionsAndConfig) {
  Options options;
  EXPECT_EQ(Suite::Create(options).status().code(), StatusCode::kInvalidArgument);
  options.plugin_path = "/nonexistent/hci_x.so";
  EXPECT_EQ(Suite::Create(options).status().code(), StatusCode::kNotFound);

  options.plugin_path = HCI_TEST_BROKEN_PLUGIN;
  options.kinds = {BackendKind::kCompute};
  auto kind = Suite::Create(options);
  EXPECT_EQ(kind.status().code(), StatusCode::kInvalidArgument);
  EXPECT_THAT(kind.status().message(), HasSubstr("--kind"));
  EXPECT_THAT(kind.status().message(), HasSubstr("it provides: storage"));

  TempDir dir;
  options.kinds.clear();
  options.config_path = dir.path() + "/c.yaml";
  WriteFile(options.config_path, "fixtures: {concurrency: 1}\n");
  auto race = Suite::Create(options);
  EXPECT_EQ(race.status().code(), StatusCode::kInvalidArgument);
  EXPECT_THAT(race.status().message(), HasSubstr("fixtures.concurrency"));
  WriteFile(options.config_path, "fixtures: {compute: {vmSpec: {runStrategy: always}}}\n");
  auto strategy = Suite::Create(options);
  EXPECT_THAT(strategy.status().message(), HasSubstr("fixtures.compute.vm_spec.run_strategy"));
  WriteFile(options.config_path, "fixtures: {storage: {volumeSizeBytes: 4097}}\n");
  EXPECT_THAT(Suite::Create(options).status().message(),
              HasSubstr("fixtures.storage.volume_size_bytes"));
  WriteFile(options.config_path, "fixture: {}\n");
  auto unknown = Suite::Create(options);
  EXPECT_EQ(unknown.status().code(), StatusCode::kInvalidArgument);
  EXPECT_THAT(unknown.status().message(), HasSubstr("fixture"));
}

TEST(SuiteCreate, ARefusedPluginBecomesAFailingHandshakeNotAnError) {
  TempDir dir;
  // World-writable: the loader refuses it.
  const std::string copy = dir.path() + "/hci_mock.so";
  fs::copy_file(HCI_TEST_MOCK_PLUGIN, copy);
  fs::permissions(copy, fs::perms::others_write, fs::perm_options::add);
  Options options;
  options.plugin_path = copy;
  auto suite = Suite::Create(options);
  ASSERT_TRUE(suite.ok()) << suite.status();
  EXPECT_EQ((*suite)->plugin().state(), v1::PLUGIN_STATE_REFUSED);
  EXPECT_THAT((*suite)->plugin().reason(), HasSubstr("writable by others"));
}

// ---------------------------------------------------------------------------------------------
// Registration follows the capabilities

std::vector<std::string> Names(const std::vector<internal::TestDef>& defs) {
  std::vector<std::string> names;
  for (const auto& d : defs) names.push_back(d.suite + "." + d.name);
  return names;
}

TEST(Registration, ClaimedCapabilitiesGetChecksAndTheOthersUnimplementedChecks) {
  Options options;
  options.plugin_path = HCI_TEST_BROKEN_PLUGIN;
  auto env = internal::MakeEnv(options);
  ASSERT_TRUE(env.ok()) << env.status();
  ASSERT_TRUE((*env)->load_error.ok()) << (*env)->load_error;
  EXPECT_EQ((*env)->kinds, std::set<BackendKind>{BackendKind::kStorage});
  std::vector<internal::TestDef> defs;
  internal::AddStorageTests(**env, defs);
  auto names = Names(defs);
  // The broken plugin claims expand and snapshots, not revert, clone, online_expand.
  EXPECT_THAT(names, ::testing::Contains("StorageLifecycle.Snapshots"));
  EXPECT_THAT(names, ::testing::Contains("StorageLifecycle.Expand"));
  EXPECT_THAT(names, ::testing::Contains("StorageCapabilities.RevertUnimplemented"));
  EXPECT_THAT(names, ::testing::Contains("StorageCapabilities.CloneUnimplemented"));
  EXPECT_THAT(names, ::testing::Not(::testing::Contains("StorageLifecycle.Revert")));
  EXPECT_THAT(names, ::testing::Not(::testing::Contains("StorageLifecycle.Clone")));
  for (const auto& d : defs) {
    EXPECT_FALSE(d.ops.empty()) << d.suite << "." << d.name << " decides no matrix cell";
    for (const auto& op : d.ops) EXPECT_EQ(op.rfind("storage/", 0), 0u) << op;
  }
  internal::DestroyEnv(**env);
}

// ---------------------------------------------------------------------------------------------
// The resource tracker

TEST(Tracker, RemovesEverythingATestCreated) {
  Options options;
  options.plugin_path = HCI_TEST_MOCK_PLUGIN;
  auto made = internal::MakeEnv(options);
  ASSERT_TRUE(made.ok()) << made.status();
  internal::Env& env = **made;
  const std::string work_dir = env.work_dir;
  {
    internal::Context ctx(env);
    auto vm = ctx.NewRunningVm();  // with its disk volume, attached while it runs
    ASSERT_TRUE(vm.ok()) << vm.status();
    auto volume = ctx.NewVolume();
    ASSERT_TRUE(volume.ok()) << volume.status();
    v1::AttachVolumeRequest attach;
    attach.set_name(volume->metadata().name());
    attach.set_attacher("someone-else");  // an attachment the tracker never saw
    ASSERT_TRUE(env.storage->AttachVolume(attach).ok());
    auto net = ctx.NewNetwork();
    ASSERT_TRUE(net.ok()) << net.status();
    ASSERT_TRUE(ctx.NewPort(net->metadata().name()).ok());
    auto image = ctx.NewImage();
    ASSERT_TRUE(image.ok()) << image.status();
    auto target = ctx.NewTarget();
    ASSERT_TRUE(target.ok()) << target.status();
    ASSERT_TRUE(ctx.NewBackup(target->metadata().name(), volume->metadata().name()).ok());

    EXPECT_THAT(ctx.tracker.CleanUp(), ::testing::IsEmpty());
    EXPECT_EQ(env.compute->ListVms({})->vms_size(), 0);
    EXPECT_EQ(env.storage->ListVolumes({})->volumes_size(), 0);
    EXPECT_EQ(env.network->ListNetworks({})->networks_size(), 0);
    EXPECT_EQ(env.network->ListPorts({})->ports_size(), 0);
    EXPECT_EQ(env.image->ListImages({})->images_size(), 0);
    EXPECT_EQ(env.backup->ListBackupTargets({})->targets_size(), 0);
  }
  internal::DestroyEnv(env);
  EXPECT_FALSE(fs::exists(work_dir)) << "the kit's work directory outlived the suite";
}

TEST(Tracker, ReportsWhatItCouldNotRemove) {
  Options options;
  options.plugin_path = HCI_TEST_MOCK_PLUGIN;
  auto made = internal::MakeEnv(options);
  ASSERT_TRUE(made.ok()) << made.status();
  internal::Env& env = **made;
  {
    internal::Context ctx(env);
    auto volume = ctx.NewVolume();
    ASSERT_TRUE(volume.ok());
    v1::Fault fault;
    fault.set_operation("DeleteVolume");
    fault.set_code(static_cast<int>(StatusCode::kPermissionDenied));
    ASSERT_TRUE(env.storage->fault_injector()->Inject(fault).ok());
    auto problems = ctx.tracker.CleanUp();
    env.storage->fault_injector()->Clear();
    ASSERT_EQ(problems.size(), 2u);
    EXPECT_THAT(problems[0], HasSubstr("removing volume \"" + volume->metadata().name()));
    EXPECT_THAT(problems[0], HasSubstr("PermissionDenied"));
    EXPECT_THAT(problems[1], HasSubstr("still there"));
  }
  internal::DestroyEnv(env);  // the final sweep removes the volume
}

}  // namespace
}  // namespace hci::conformance
