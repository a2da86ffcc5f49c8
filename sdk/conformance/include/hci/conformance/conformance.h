// The plugin conformance kit: GoogleTest checks that a plugin shared object honours libhci's
// backend contracts, in the spirit of the CSI sanity suite (kubernetes-csi/csi-test
// pkg/sanity). The `hci-conformance` CLI wraps it; docs/conformance.md is the manual.
//
// Use it from your own GoogleTest binary (link hci::conformance):
//
//   int main(int argc, char** argv) {
//     testing::InitGoogleTest(&argc, argv);
//     hci::conformance::Options options;
//     options.plugin_path = "/path/to/hci_myplugin.so";
//     auto suite = hci::conformance::Suite::Create(options);
//     if (!suite.ok()) { std::cerr << suite.status() << "\n"; return 2; }
//     (*suite)->RegisterTests();
//     int rc = RUN_ALL_TESTS();
//     hci::conformance::WriteMatrixJson((*suite)->Matrix(), "matrix.json").IgnoreError();
//     return rc;
//   }
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "hci/backend.h"
#include "hci/conformance/matrix.h"
#include "hci/result.h"
#include "hci/status.h"
#include "hci/v1/host.pb.h"

namespace hci::conformance {

/// What to test.
struct Options {
  /// The plugin shared object under test, e.g. "build/lib/hci/plugins/hci_mock.so" (made
  /// absolute against the working directory). Required.
  std::string plugin_path;
  /// A conformance.yaml (docs/conformance.md, "The config file"); empty: defaults (a fresh
  /// temporary state directory, the plugin bound to every kind it provides, nothing else).
  std::string config_path;
  /// The kinds to test; empty: every kind the plugin provides.
  std::vector<BackendKind> kinds;
  /// Print libhci's and the plugin's log lines as they come; by default only the lines of a
  /// failed test are printed, after it.
  bool verbose = false;
};

/// One conformance run against one plugin: owns the Host the plugin is loaded into, the kit's
/// temporary files and the registered tests' shared state. Destroy it after RUN_ALL_TESTS: that
/// closes the Host and removes what the kit created (a temporary state directory included).
class Suite {
 public:
  /// Reads the config, loads the plugin through hci::Host::Open (the production loader, so the
  /// ABI handshake is part of the run), binds it to the tested kinds and prepares the fixtures.
  /// A plugin that the loader refuses or whose factory fails is not an error here: the suite
  /// then registers one failing Handshake test that gives the reason.
  ///
  /// Errors: InvalidArgument naming the option or config field (no plugin_path, a kind the
  /// plugin does not provide, a bad config value); NotFound for a missing plugin or config file;
  /// FailedPrecondition when the config's state directory is in use by another Host.
  static Result<std::unique_ptr<Suite>> Create(const Options& options);

  ~Suite();
  Suite(const Suite&) = delete;
  Suite& operator=(const Suite&) = delete;

  /// What the loader reported about the plugin under test (name, version, kinds, state).
  const v1::PluginInfo& plugin() const;

  /// Registers the checks with GoogleTest (testing::RegisterTest), for the tested kinds and
  /// according to the capabilities the plugin claims. Call once, after
  /// testing::InitGoogleTest and before RUN_ALL_TESTS.
  void RegisterTests();

  /// The run's support matrix, from the capabilities and the results of the registered tests.
  /// Call after RUN_ALL_TESTS.
  PluginMatrix Matrix() const;

 private:
  struct Impl;
  explicit Suite(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

/// The hci-conformance command line (`hci-conformance --help`): runs the suite, or merges
/// per-run matrices into Markdown with --merge. Returns the process exit code: 0 when every
/// check passed, 1 when a check failed, 2 for a usage or setup error.
int Main(int argc, char** argv);

}  // namespace hci::conformance
