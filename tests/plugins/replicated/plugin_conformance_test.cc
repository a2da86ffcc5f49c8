// The conformance kit (sdk/conformance, docs/conformance.md) in-process against the replicated
// plugin, with three storage nodes (hci-replica-server processes on 127.0.0.1) this binary starts
// and stops itself. One ctest (replicated_conformance): the kit registers its checks at run time,
// from the capabilities the plugin claims.
#include <gtest/gtest.h>

#include <cstdlib>
#include <fstream>
#include <iostream>
#include <string>

#include "hci/conformance/conformance.h"
#include "plugin_test_nodes.h"

int main(int argc, char** argv) {
  testing::InitGoogleTest(&argc, argv);
  using hci::replicated::plugin_testing::TestNodes;
  auto nodes = TestNodes::Start(3);
  if (nodes == nullptr) return 2;
  const std::string config = nodes->dir() + "/conformance.yaml";
  {
    std::ofstream out(config);
    // The local plugin's image backend, so that the kit's from_image checks run: it stores
    // images on this host and gives their path (capability local_path).
    out << "host:\n"
        << "  backends:\n"
        << "    image: {plugin: local}\n"
        << "    storage:\n"
        << "      plugin: replicated\n"
        << "      options:\n"
        << "        secret_file: \"" << nodes->secret_file() << "\"\n"
        << "        io_timeout_ms: 2000\n";
    const google::protobuf::Struct node_options = nodes->Options();
    const auto& fields = node_options.fields();
    if (auto it = fields.find("nbdkit"); it != fields.end()) {
      out << "        nbdkit: \"" << it->second.string_value() << "\"\n";
    }
    out << "        nodes:\n";
    for (int i = 0; i < nodes->size(); ++i) {
      out << "          - {name: " << nodes->node(i).name << ", address: \""
          << nodes->node(i).address << "\"}\n";
    }
  }
  hci::conformance::Options options;
  options.plugin_path = HCI_REPLICATED_PLUGIN;
  options.config_path = config;
  auto suite = hci::conformance::Suite::Create(options);
  if (!suite.ok()) {
    std::cerr << "replicated conformance: " << suite.status() << "\n";
    return 2;
  }
  (*suite)->RegisterTests();
  int rc = RUN_ALL_TESTS();
  // `--matrix FILE`: this run's support-matrix fragment, for conformance.matrix
  // (docs/support-matrix.md), as `hci-conformance --matrix` writes it for the other plugins.
  for (int i = 1; i + 1 < argc; ++i) {
    if (std::string(argv[i]) != "--matrix") continue;
    if (auto st = hci::conformance::WriteMatrixJson((*suite)->Matrix(), argv[i + 1]); !st.ok()) {
      std::cerr << "replicated conformance: --matrix: " << st << "\n";
      rc = rc == 0 ? 2 : rc;
    }
  }
  // The kit's Host (and the engines it attached) go before the nodes.
  suite->reset();
  return rc;
}
