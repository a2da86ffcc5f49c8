// The hci-conformance command line.
#include <CLI/CLI.hpp>
#include <fstream>
#include <iostream>

#include "conformance_internal.h"

namespace hci::conformance {
namespace {

constexpr char kDescription[] =
    "hci-conformance: runs libhci's plugin conformance kit against a plugin shared object, "
    "loaded through the production loader (hci::Host::Open), for every backend kind it "
    "provides. GoogleTest options (--gtest_filter=..., --gtest_list_tests, ...) are passed on.";

constexpr char kFooter[] =
    "Modes:\n"
    "  hci-conformance --plugin hci_x.so [--config c.yaml] [--kind compute,storage]\n"
    "                  [--junit out.xml] [--matrix out.json|out.md] [--gtest_filter=...]\n"
    "  hci-conformance --merge a.json b.json ... [--output support-matrix.md]\n"
    "\n"
    "Exit status: 0 every check passed; 1 a check failed; 2 a usage or setup error.\n"
    "See docs/conformance.md for the checks, the config file and the matrix.";

Status WriteText(const std::string& path, const std::string& text) {
  std::ofstream out(path, std::ios::trunc);
  out << text;
  out.close();
  if (!out) return Internal("cannot write \"" + path + "\"");
  return Status();
}

bool EndsWith(const std::string& s, std::string_view suffix) {
  return s.size() >= suffix.size() &&
         s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

int Merge(const std::vector<std::string>& inputs, const std::string& output) {
  std::vector<PluginMatrix> plugins;
  for (const auto& path : inputs) {
    auto m = ReadMatrixJson(path);
    if (!m.ok()) {
      std::cerr << "hci-conformance: --merge: " << m.status() << "\n";
      return 2;
    }
    plugins.push_back(std::move(m).MoveValueUnsafe());
  }
  std::string markdown = RenderMatrixMarkdown(std::move(plugins));
  if (output.empty() || output == "-") {
    std::cout << markdown;
    return 0;
  }
  if (Status s = WriteText(output, markdown); !s.ok()) {
    std::cerr << "hci-conformance: --output: " << s << "\n";
    return 2;
  }
  return 0;
}

}  // namespace

int Main(int argc, char** argv) {
  CLI::App app{kDescription, "hci-conformance"};
  app.footer(kFooter);
  app.allow_extras(true);
  Options options;
  std::vector<std::string> kinds;
  std::string junit, matrix, output;
  std::vector<std::string> merge;
  app.add_option("--plugin", options.plugin_path, "The plugin shared object to test")
      ->check(CLI::ExistingFile);
  app.add_option("--config", options.config_path,
                 "conformance.yaml: host config and fixtures (docs/conformance.md)")
      ->check(CLI::ExistingFile);
  app.add_option("--kind", kinds,
                 "Backend kinds to test (compute, storage, network, image, backup; repeatable or "
                 "comma-separated); default: every kind the plugin provides")
      ->delimiter(',');
  app.add_option("--junit", junit, "Write the results as JUnit XML (GoogleTest's XML report)");
  app.add_option("--matrix", matrix,
                 "Write the run's support matrix: JSON (for --merge), or Markdown when the file "
                 "name ends in .md");
  app.add_flag("-v,--verbose", options.verbose,
               "Print libhci's and the plugin's log lines as they come (default: only those of "
               "failed checks)");
  auto* merge_opt = app.add_option("--merge", merge,
                                   "Merge matrices written with --matrix (JSON) into the Markdown "
                                   "support matrix instead of running checks");
  app.add_option("--output", output, "Where --merge writes the Markdown (default: stdout)")
      ->needs(merge_opt);
  merge_opt->excludes("--plugin");
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e) == 0 ? 0 : 2;
  }
  if (!merge.empty()) return Merge(merge, output);
  if (options.plugin_path.empty()) {
    std::cerr << "hci-conformance: --plugin is required (see --help)\n";
    return 2;
  }
  for (const auto& k : kinds) {
    auto kind = internal::ParseKind(k);
    if (!kind) {
      std::cerr << "hci-conformance: --kind: unknown kind \"" << k
                << "\" (expected compute, storage, network, image or backup)\n";
      return 2;
    }
    options.kinds.push_back(*kind);
  }

  // GoogleTest sees the program name and whatever CLI11 did not take.
  std::vector<std::string> rest = app.remaining();
  // GoogleTest installs its XML reporter while it parses its flags.
  if (!junit.empty()) rest.insert(rest.begin(), "--gtest_output=xml:" + junit);
  std::vector<char*> gtest_argv{argv[0]};
  for (auto& arg : rest) gtest_argv.push_back(arg.data());
  int gtest_argc = static_cast<int>(gtest_argv.size());
  gtest_argv.push_back(nullptr);
  testing::InitGoogleTest(&gtest_argc, gtest_argv.data());
  if (gtest_argc > 1) {
    std::cerr << "hci-conformance: unknown argument \"" << gtest_argv[1] << "\" (see --help)\n";
    return 2;
  }

  auto suite = Suite::Create(options);
  if (!suite.ok()) {
    std::cerr << "hci-conformance: " << suite.status() << "\n";
    return 2;
  }
  const v1::PluginInfo& info = (*suite)->plugin();
  std::cout << "hci-conformance: plugin \"" << info.name() << "\" " << info.version() << " from "
            << info.path() << " (" << v1::PluginState_Name(info.state()) << ")" << std::endl;
  (*suite)->RegisterTests();
  int rc = RUN_ALL_TESTS();
  PluginMatrix result = (*suite)->Matrix();
  if (!matrix.empty()) {
    Status written = EndsWith(matrix, ".md") ? WriteText(matrix, RenderMatrixMarkdown({result}))
                                             : WriteMatrixJson(result, matrix);
    if (!written.ok()) {
      std::cerr << "hci-conformance: --matrix: " << written << "\n";
      rc = rc == 0 ? 2 : rc;
    }
  }
  suite->reset();  // closes the Host, removes the kit's files
  return rc == 0 ? 0 : (rc == 2 ? 2 : 1);
}

}  // namespace hci::conformance
