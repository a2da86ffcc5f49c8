// An ELF shared object that is not a plugin: it exports a function, but not hci_plugin_entry.
extern "C" __attribute__((visibility("default"))) int loader_test_not_a_plugin() { return 42; }
