// hci-conformance: the plugin conformance kit's command line (docs/conformance.md).
#include "hci/conformance/conformance.h"

int main(int argc, char** argv) { return hci::conformance::Main(argc, argv); }
