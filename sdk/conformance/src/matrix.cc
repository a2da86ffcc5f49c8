// The support matrix: operations per kind, what gates them, the run's cells, JSON and Markdown.
#include <google/protobuf/util/json_util.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "conformance_internal.h"

namespace hci::conformance {

std::string_view SupportName(Support support) {
  switch (support) {
    case Support::kComplete:
      return "complete";
    case Support::kPartial:
      return "partial";
    case Support::kMissing:
      return "missing";
    case Support::kNotTested:
      return "n/a";
  }
  return "n/a";
}

std::vector<std::string> Operations(BackendKind kind) {
  switch (kind) {
    case BackendKind::kCompute:
      return {"CreateVm",    "GetVm",         "ListVms",   "DeleteVm", "StartVm",
              "StopVm",      "RestartVm",     "PauseVm",   "ResumeVm", "MigrateVm",
              "ReadConsole", "AttachConsole", "VmMetrics", "ResizeDisk", "Metrics"};
    case BackendKind::kStorage:
      return {"CreateVolume",  "GetVolume",      "ListVolumes",  "DeleteVolume",
              "AttachVolume",  "DetachVolume",   "ExpandVolume", "CreateSnapshot",
              "ListSnapshots", "DeleteSnapshot", "RevertVolume", "GetChangedBlocks",
              "ScrubVolume",   "Metrics"};
    case BackendKind::kNetwork:
      return {"CreateNetwork", "GetNetwork", "ListNetworks", "DeleteNetwork", "CreatePort",
              "GetPort",       "ListPorts",  "DeletePort",   "Metrics"};
    case BackendKind::kImage:
      return {"ImportImage", "GetImage", "ListImages", "DeleteImage", "Metrics"};
    case BackendKind::kBackup:
      return {"CreateBackupTarget", "GetBackupTarget", "ListBackupTargets", "DeleteBackupTarget",
              "CreateBackup",       "GetBackup",       "ListBackups",       "DeleteBackup",
              "RestoreBackup",      "Metrics"};
  }
  return {};
}

namespace internal {

std::string OpKey(BackendKind kind, std::string_view op) {
  return std::string(BackendKindName(kind)) + "/" + std::string(op);
}

std::optional<BackendKind> ParseKind(std::string_view name) {
  for (BackendKind kind : kAllBackendKinds) {
    if (BackendKindName(kind) == name) return kind;
  }
  return std::nullopt;
}

std::optional<Gate> GateOf(const Env& env, BackendKind kind, std::string_view op) {
  auto gate = [](std::string capability, bool claimed) {
    return std::optional<Gate>(Gate{std::move(capability), claimed});
  };
  switch (kind) {
    case BackendKind::kCompute: {
      const auto& c = env.compute_caps;
      if (op == "RestartVm") return gate("restart", c.restart());
      if (op == "PauseVm" || op == "ResumeVm") return gate("pause", c.pause());
      if (op == "MigrateVm") return gate("live_migration", c.live_migration());
      if (op == "ReadConsole") return gate("console_log", c.console_log());
      if (op == "AttachConsole") return gate("console_attach", c.console_attach());
      if (op == "VmMetrics") return gate("metrics", c.metrics());
      if (op == "ResizeDisk") return gate("resize_disk", c.resize_disk());
      break;
    }
    case BackendKind::kStorage: {
      const auto& c = env.storage_caps;
      if (op == "ExpandVolume") return gate("expand", c.expand() || c.online_expand());
      if (op == "CreateSnapshot" || op == "ListSnapshots" || op == "DeleteSnapshot") {
        return gate("snapshots", c.snapshots());
      }
      if (op == "RevertVolume") return gate("revert", c.revert());
      if (op == "GetChangedBlocks") return gate("changed_blocks", c.changed_blocks());
      if (op == "ScrubVolume") return gate("scrub", c.scrub());
      break;
    }
    case BackendKind::kNetwork:
      if (op == "CreatePort" || op == "GetPort" || op == "ListPorts" || op == "DeletePort") {
        return gate("ports", env.network_caps.ports());
      }
      break;
    case BackendKind::kImage:
      break;
    case BackendKind::kBackup:
      if (op == "DeleteBackup") return gate("delete", env.backup_caps.delete_());
      if (op == "RestoreBackup") return gate("restore", env.backup_caps.restore());
      break;
  }
  return std::nullopt;
}

std::vector<std::string> UnclaimedFeatures(const Env& env, BackendKind kind, std::string_view op) {
  std::vector<std::string> out;
  auto need = [&](bool claimed, const char* capability) {
    if (!claimed) out.push_back(capability);
  };
  switch (kind) {
    case BackendKind::kCompute: {
      const auto& c = env.compute_caps;
      if (op == "CreateVm") {
        need(c.uefi(), "uefi");
        need(c.kernel_boot(), "kernel_boot");
        need(c.cloud_init(), "cloud_init");
        for (int s = v1::RUN_STRATEGY_ALWAYS; s <= v1::RUN_STRATEGY_ONCE; ++s) {
          if (std::find(c.run_strategies().begin(), c.run_strategies().end(), s) ==
              c.run_strategies().end()) {
            out.push_back("run_strategies: " +
                          v1::RunStrategy_Name(static_cast<v1::RunStrategy>(s)));
          }
        }
      }
      if (op == "StopVm") need(c.graceful_stop(), "graceful_stop");
      break;
    }
    case BackendKind::kStorage: {
      const auto& c = env.storage_caps;
      if (op == "CreateVolume") {
        need(c.clone(), "clone");
        need(c.from_image(), "from_image");
      }
      if (op == "ExpandVolume" && (c.expand() || c.online_expand())) {
        need(c.expand(), "expand");
        need(c.online_expand(), "online_expand");
      }
      break;
    }
    case BackendKind::kNetwork: {
      const auto& c = env.network_caps;
      if (op == "CreateNetwork") {
        need(c.vlan(), "vlan");
        need(c.trunk(), "trunk");
        need(c.untagged(), "untagged");
        need(c.mtu(), "mtu");
      }
      break;
    }
    case BackendKind::kImage: {
      const auto& c = env.image_caps;
      if (op == "ImportImage") {
        need(c.import_url(), "import_url");
        need(c.import_file(), "import_file");
        need(c.checksum(), "checksum");
      }
      break;
    }
    case BackendKind::kBackup:
      if (op == "CreateBackup") need(env.backup_caps.incremental(), "incremental");
      break;
  }
  return out;
}

PluginMatrix ComputeMatrix(const Env& env, const std::map<std::string, TestOutcome>& outcomes) {
  PluginMatrix m;
  m.plugin = env.plugin.name();
  // A plugin refused before its descriptor was read has no name yet: use its file's.
  if (m.plugin.empty()) m.plugin = std::filesystem::path(env.plugin.path()).filename().string();
  m.version = env.plugin.version();
  m.kinds.assign(env.kinds.begin(), env.kinds.end());
  if (!env.load_error.ok()) m.error = env.load_error.ToString();
  for (const auto& [test, outcome] : outcomes) {
    if (!outcome.ran) continue;
    if (outcome.failed) {
      ++m.failed;
    } else if (outcome.skipped) {
      ++m.skipped;
    } else {
      ++m.passed;
    }
  }
  // Operation key -> the tests that decide it.
  std::map<std::string, std::vector<std::string>> tests_of;
  for (const auto& [test, ops] : env.test_ops) {
    for (const auto& op : ops) tests_of[op].push_back(test);
  }
  for (BackendKind kind : kAllBackendKinds) {
    for (const auto& op : Operations(kind)) {
      OperationSupport cell;
      cell.kind = kind;
      cell.operation = op;
      if (!env.tested(kind) || !env.load_error.ok()) {
        cell.support = Support::kNotTested;
        m.operations.push_back(std::move(cell));
        continue;
      }
      const std::string key = OpKey(kind, op);
      std::vector<std::string> failed, skipped;
      int passed = 0;
      for (const auto& test : tests_of[key]) {
        auto it = outcomes.find(test);
        if (it == outcomes.end() || !it->second.ran) continue;
        if (it->second.failed) {
          failed.push_back(test);
        } else if (it->second.skipped) {
          skipped.push_back(test);
        } else {
          ++passed;
        }
      }
      std::optional<Gate> gate = GateOf(env, kind, op);
      bool missing = gate && !gate->claimed;
      if (op == "Metrics") missing = env.observed_unimplemented.count(key) > 0;
      for (const auto& t : failed) cell.notes.push_back("failed: " + t);
      if (missing) {
        cell.support = failed.empty() ? Support::kMissing : Support::kPartial;
        if (!failed.empty()) {
          cell.notes.insert(cell.notes.begin(),
                            "does not claim `" + (gate ? gate->capability : op) +
                                "` but does not answer Unimplemented as it should");
        }
      } else {
        for (const auto& feature : UnclaimedFeatures(env, kind, op)) {
          cell.notes.push_back("does not claim `" + feature + "`");
        }
        if (passed == 0 && failed.empty())
          cell.notes.push_back("no check exercised it in this run");
        cell.support = cell.notes.empty() ? Support::kComplete : Support::kPartial;
      }
      for (const auto& t : skipped) cell.notes.push_back("skipped: " + t);
      m.operations.push_back(std::move(cell));
    }
  }
  return m;
}

}  // namespace internal

namespace {

v1::conformance::Support ToProto(Support s) {
  switch (s) {
    case Support::kComplete:
      return v1::conformance::SUPPORT_COMPLETE;
    case Support::kPartial:
      return v1::conformance::SUPPORT_PARTIAL;
    case Support::kMissing:
      return v1::conformance::SUPPORT_MISSING;
    case Support::kNotTested:
      return v1::conformance::SUPPORT_NOT_TESTED;
  }
  return v1::conformance::SUPPORT_UNSPECIFIED;
}

std::optional<Support> FromProto(v1::conformance::Support s) {
  switch (s) {
    case v1::conformance::SUPPORT_COMPLETE:
      return Support::kComplete;
    case v1::conformance::SUPPORT_PARTIAL:
      return Support::kPartial;
    case v1::conformance::SUPPORT_MISSING:
      return Support::kMissing;
    case v1::conformance::SUPPORT_NOT_TESTED:
      return Support::kNotTested;
    default:
      return std::nullopt;
  }
}

}  // namespace

Status WriteMatrixJson(const PluginMatrix& matrix, const std::string& path) {
  v1::conformance::MatrixRun run;
  run.set_plugin(matrix.plugin);
  run.set_version(matrix.version);
  for (BackendKind k : matrix.kinds) run.add_kinds(std::string(BackendKindName(k)));
  for (const auto& op : matrix.operations) {
    auto* o = run.add_operations();
    o->set_kind(std::string(BackendKindName(op.kind)));
    o->set_operation(op.operation);
    o->set_support(ToProto(op.support));
    for (const auto& n : op.notes) o->add_notes(n);
  }
  run.set_passed(matrix.passed);
  run.set_failed(matrix.failed);
  run.set_skipped(matrix.skipped);
  run.set_error(matrix.error);
  google::protobuf::util::JsonPrintOptions print;
  print.add_whitespace = true;
  std::string json;
  if (auto s = google::protobuf::util::MessageToJsonString(run, &json, print); !s.ok()) {
    return Internal(path + ": cannot render the matrix as JSON: " + s.ToString());
  }
  std::ofstream out(path, std::ios::trunc);
  out << json;
  out.close();
  if (!out) return Internal("cannot write \"" + path + "\"");
  return Status();
}

Result<PluginMatrix> ReadMatrixJson(const std::string& path) {
  std::ifstream in(path);
  if (!in) return NotFound("\"" + path + "\" cannot be read (does it exist?)");
  std::stringstream text;
  text << in.rdbuf();
  v1::conformance::MatrixRun run;
  if (auto s = google::protobuf::util::JsonStringToMessage(text.str(), &run); !s.ok()) {
    return InvalidArgument(path +
                           ": not a matrix written by hci-conformance --matrix: " + s.ToString());
  }
  PluginMatrix m;
  m.plugin = run.plugin();
  m.version = run.version();
  for (const auto& k : run.kinds()) {
    auto kind = internal::ParseKind(k);
    if (!kind) return InvalidArgument(path + ": kinds: unknown kind \"" + k + "\"");
    m.kinds.push_back(*kind);
  }
  for (int i = 0; i < run.operations_size(); ++i) {
    const auto& o = run.operations(i);
    std::string field = path + ": operations[" + std::to_string(i) + "]";
    auto kind = internal::ParseKind(o.kind());
    if (!kind) return InvalidArgument(field + ".kind: unknown kind \"" + o.kind() + "\"");
    auto ops = Operations(*kind);
    if (std::find(ops.begin(), ops.end(), o.operation()) == ops.end()) {
      return InvalidArgument(field + ".operation: \"" + o.operation() + "\" is not a " + o.kind() +
                             " operation");
    }
    auto support = FromProto(o.support());
    if (!support) return InvalidArgument(field + ".support: is required");
    m.operations.push_back(
        OperationSupport{*kind, o.operation(), *support, {o.notes().begin(), o.notes().end()}});
  }
  m.passed = run.passed();
  m.failed = run.failed();
  m.skipped = run.skipped();
  m.error = run.error();
  return m;
}

std::string RenderMatrixMarkdown(std::vector<PluginMatrix> plugins) {
  std::sort(plugins.begin(), plugins.end(),
            [](const PluginMatrix& a, const PluginMatrix& b) { return a.plugin < b.plugin; });
  std::ostringstream out;
  out << "<!-- Generated by hci-conformance --merge from conformance runs: do not edit. -->\n"
         "# Support matrix\n\n"
         "What each in-tree plugin implements, measured by the conformance kit "
         "([conformance.md](conformance.md)) in a real run against the plugin. Cells:\n\n"
         "- **complete**: implemented, every check that exercises it passed, every related "
         "capability claimed;\n"
         "- **partial**: implemented, but a check failed or a related capability is not claimed "
         "(see the note);\n"
         "- **missing**: not implemented (the capability is not claimed and the operation "
         "answers Unimplemented);\n"
         "- **—**: the plugin does not provide that backend kind.\n\n"
         "Regenerate with `cmake --build <build dir> --target support-matrix`; the ctest "
         "`conformance.matrix` fails when this file differs from what the tree generates.\n\n";
  out << "| plugin | version | kinds | checks passed | failed | skipped |\n"
         "|---|---|---|---|---|---|\n";
  for (const auto& p : plugins) {
    std::string kinds;
    for (BackendKind k : p.kinds) {
      kinds += (kinds.empty() ? "" : ", ") + std::string(BackendKindName(k));
    }
    out << "| " << p.plugin << " | " << p.version << " | " << (kinds.empty() ? "—" : kinds) << " | "
        << p.passed << " | " << p.failed << " | " << p.skipped << " |\n";
  }
  out << "\n| kind | operation |";
  for (const auto& p : plugins) out << " " << p.plugin << " |";
  out << "\n|---|---|";
  for (std::size_t i = 0; i < plugins.size(); ++i) out << "---|";
  out << "\n";
  std::vector<std::string> notes;
  for (BackendKind kind : kAllBackendKinds) {
    for (const auto& op : Operations(kind)) {
      out << "| " << BackendKindName(kind) << " | " << op << " |";
      for (const auto& p : plugins) {
        const OperationSupport* cell = nullptr;
        for (const auto& o : p.operations) {
          if (o.kind == kind && o.operation == op) cell = &o;
        }
        if (cell == nullptr || cell->support == Support::kNotTested) {
          out << " — |";
          continue;
        }
        out << " " << SupportName(cell->support);
        if (!cell->notes.empty()) {
          std::string text;
          for (const auto& n : cell->notes) text += (text.empty() ? "" : "; ") + n;
          notes.push_back(p.plugin + ", " + std::string(BackendKindName(kind)) + " " + op + ": " +
                          text + ".");
          out << " (" << notes.size() << ")";
        }
        out << " |";
      }
      out << "\n";
    }
  }
  bool errors = false;
  for (const auto& p : plugins) errors = errors || !p.error.empty();
  if (!notes.empty() || errors) out << "\n## Notes\n\n";
  for (std::size_t i = 0; i < notes.size(); ++i) out << i + 1 << ". " << notes[i] << "\n";
  for (const auto& p : plugins) {
    if (!p.error.empty())
      out << "\n**" << p.plugin << " could not be tested:** " << p.error << "\n";
  }
  return out.str();
}

}  // namespace hci::conformance
