// A conformance runner of one's own, linked against the installed kit (hci::conformance): how a
// plugin author adds checks next to the kit's. This one only runs the kit's.
#include "hci/conformance/conformance.h"

int main(int argc, char** argv) { return hci::conformance::Main(argc, argv); }
