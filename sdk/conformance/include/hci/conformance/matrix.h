// The support matrix: which operations a plugin implements, and how well, as measured by a
// conformance run. docs/conformance.md defines the cells; docs/support-matrix.md is the
// published matrix of the in-tree plugins.
#pragma once

#include <string>
#include <string_view>
#include <vector>

#include "hci/backend.h"
#include "hci/result.h"
#include "hci/status.h"

namespace hci::conformance {

/// One cell of the matrix.
enum class Support {
  /// Implemented, every check that exercises it passed, and every related capability is
  /// claimed.
  kComplete,
  /// Implemented, but a check that exercises it failed, no check exercised it in this run, or a
  /// related capability (e.g. `online_expand` for ExpandVolume) is not claimed.
  kPartial,
  /// Not implemented: its capability is not claimed and the operation answers Unimplemented
  /// (for Metrics, which has no capability: it answers Unimplemented).
  kMissing,
  /// The run did not test this backend kind (the plugin does not provide it, or --kind left it
  /// out).
  kNotTested,
};

/// "complete", "partial", "missing", "n/a".
std::string_view SupportName(Support support);

/// The matrix cell of one operation.
struct OperationSupport {
  /// The backend interface the operation belongs to.
  BackendKind kind = BackendKind::kCompute;
  /// The method name in the backend interface, e.g. "CreateVm", "Metrics".
  std::string operation;
  /// The cell.
  Support support = Support::kNotTested;
  /// Why the cell is not complete, one sentence each, e.g. "does not claim `uefi`",
  /// "failed: StorageLifecycle.AttachDetach". Deterministic for a given plugin and tree.
  std::vector<std::string> notes;
};

/// The matrix column of one plugin, from one run.
struct PluginMatrix {
  /// The plugin's name, as its descriptor gives it.
  std::string plugin;
  /// The plugin's version (semver).
  std::string version;
  /// The kinds the run tested.
  std::vector<BackendKind> kinds;
  /// Every operation of every backend kind, in the order of Operations().
  std::vector<OperationSupport> operations;
  ///@{
  /// How many of the run's checks passed, failed and were skipped.
  int passed = 0;
  int failed = 0;
  int skipped = 0;
  ///@}
  /// Non-empty when the plugin could not be tested at all (the loader refused it, a factory
  /// failed): the reason.
  std::string error;
};

/// Every operation of `kind`'s backend interface, in interface order, Metrics last.
std::vector<std::string> Operations(BackendKind kind);

/// Writes `matrix` as JSON (protobuf's JSON mapping of hci.v1.conformance.MatrixRun).
/// Errors: Internal when the file cannot be written (naming the path).
Status WriteMatrixJson(const PluginMatrix& matrix, const std::string& path);

/// Reads what WriteMatrixJson wrote. Errors: NotFound when the file is missing; InvalidArgument
/// naming the path for malformed JSON, an unknown kind or operation.
Result<PluginMatrix> ReadMatrixJson(const std::string& path);

/// The Markdown document of docs/support-matrix.md for these plugins: columns in plugin-name
/// order, one row per operation of every kind, numbered notes for cells that are not complete.
/// Deterministic: the same inputs give the same bytes.
std::string RenderMatrixMarkdown(std::vector<PluginMatrix> plugins);

}  // namespace hci::conformance
