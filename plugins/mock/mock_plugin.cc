// The mock plugin's entry point: an in-memory implementation of all five backend kinds.
#include "hci/plugin.h"
#include "mock_internal.h"

HCI_PLUGIN("mock", "0.1.0",
           {.compute = &hci::mock::MakeCompute,
            .storage = &hci::mock::MakeStorage,
            .network = &hci::mock::MakeNetwork,
            .image = &hci::mock::MakeImage,
            .backup = &hci::mock::MakeBackup})
