// Symbol visibility for libhci's public API. libhci and plugins build with
// -fvisibility=hidden; only what is marked here is exported.
#pragma once

/// Exports a class or function of libhci's public API.
#define HCI_EXPORT [[gnu::visibility("default")]]

/// Marks the single symbol a plugin exports (see hci/plugin.h).
#define HCI_PLUGIN_EXPORT extern "C" __attribute__((visibility("default")))
