// hcictl: the operator's command line for libhci. Commands in the style of kubectl and virtctl:
// apply manifests, get/describe/delete objects, VM lifecycle and console, images, volumes and
// snapshots. docs/hcictl.md is its manual.
#include <fmt/format.h>
#include <google/protobuf/stubs/common.h>

#include <CLI/CLI.hpp>
#include <exception>
#include <iostream>
#include <memory>
#include <string>
#include <vector>

#include "hcictl_internal.h"

namespace hcictl {
namespace {

constexpr char kDescription[] =
    "hcictl: the operator's command line for libhci. It opens a libhci Host on a state "
    "directory, runs one command against its backends and exits.";

std::string Footer() {
  return "Environment:\n"
         "  HCI_CONFIG       host config (YAML) used when --config is not given; without either,\n"
         "                   compute comes from the kvm plugin, storage and images from local\n"
         "  HCI_STATE_DIR    state directory when --state-dir is not given (then the config's\n"
         "                   state_dir, then /var/lib/hci for root or ~/.local/state/hci)\n"
         "  HCI_PLUGIN_PATH  plugin directories (colon-separated) when the config names none\n"
         "\n" +
         ExitCodeHelp() + "\nSee docs/hcictl.md for the manual.";
}

// What one command line asks for: its options and the command to run.
struct Invocation {
  GlobalOptions globals;
  std::string output = "table";
  std::function<hci::Status(Context&)> run;
  GetOptions get;
  DeleteOptions del;
  ApplyOptions apply;
  bool no_start = false;
  VmActionOptions vm;
  ConsoleOptions console;
  ImageImportOptions image;
  VolumeOptions volume;
  VolumeScrubOptions volume_scrub;
  SnapshotOptions snapshot;
  std::string batch_file;
};

hci::Status RunBatch(Context& ctx, const std::string& file);

hci::Status RunVersion(Context& ctx) {
  const std::string protobuf = google::protobuf::internal::VersionString(GOOGLE_PROTOBUF_VERSION);
  switch (ctx.output) {
    case OutputFormat::kJson:
      std::cout << fmt::format(
          "{{\n  \"hcictl\": \"{}\",\n  \"libhci\": \"{}\",\n  \"pluginAbi\": {},\n  "
          "\"pluginAbiOldest\": {},\n  \"protobuf\": \"{}\"\n}}\n",
          HCI_VERSION_STRING, HCI_VERSION_STRING, hci::kPluginAbiVersion, hci::kPluginAbiOldest,
          protobuf);
      break;
    case OutputFormat::kYaml:
      std::cout << fmt::format(
          "hcictl: {}\nlibhci: {}\npluginAbi: {}\npluginAbiOldest: {}\nprotobuf: {}\n",
          HCI_VERSION_STRING, HCI_VERSION_STRING, hci::kPluginAbiVersion, hci::kPluginAbiOldest,
          protobuf);
      break;
    default:
      std::cout << fmt::format("hcictl {} (libhci {}, plugin ABI {}, protobuf {})\n",
                               HCI_VERSION_STRING, HCI_VERSION_STRING, hci::kPluginAbiVersion,
                               protobuf);
      break;
  }
  return hci::Status::OK();
}

void AddParentFlags(CLI::App* sub, ParentFlags* flags) {
  sub->add_option("--volume", flags->volume, "The volume (for snapshots)");
  sub->add_option("--target", flags->target, "The backup target (for backups)");
  sub->add_option("--network", flags->network, "Only ports of this network");
}

// The command-line grammar. `in_batch`: a line of `hcictl batch`, which shares the Host of the
// batch and so takes no global options besides -o.
std::unique_ptr<CLI::App> BuildApp(Invocation& inv, bool in_batch) {
  auto app = std::make_unique<CLI::App>(kDescription, "hcictl");
  app->fallthrough();  // global flags may follow the subcommand: `hcictl get vm -o json`
  app->require_subcommand(1);
  app->footer(Footer());
  if (!in_batch) {
    app->add_option("--config", inv.globals.config,
                    "Host config file (YAML); default: $HCI_CONFIG, else the built-in one");
    app->add_option("--state-dir", inv.globals.state_dir,
                    "State directory; default: $HCI_STATE_DIR, the config's state_dir, "
                    "/var/lib/hci (root) or ~/.local/state/hci");
    app->add_flag("-v,--verbose", inv.globals.verbosity,
                  "Log more on stderr (-v info, -vv debug, -vvv trace; default warn)");
  }
  app->add_option("-o,--output", inv.output, "Output format: table (default), json, yaml, name")
      ->check(CLI::IsMember({"table", "json", "yaml", "name"}));

  // apply
  CLI::App* apply = app->add_subcommand(
      "apply", "Create what the manifests describe (images, networks, volumes, VMs) in order");
  apply->add_option("-f,--filename", inv.apply.files, "Manifest file; - for stdin; repeatable")
      ->required();
  apply->add_flag("--no-start", inv.no_start, "Do not start the VMs apply creates");
  apply->callback([&inv] {
    inv.apply.start = !inv.no_start;
    inv.run = [&inv](Context& ctx) { return RunApply(ctx, inv.apply); };
  });

  // get / describe
  const std::string kinds = ResourceList();
  CLI::App* get = app->add_subcommand("get", "List objects, or show the named ones");
  get->add_option("kind", inv.get.kind, "One of: " + kinds)->required();
  get->add_option("names", inv.get.names, "Names (all objects when none)");
  AddParentFlags(get, &inv.get.parent);
  get->callback([&inv] { inv.run = [&inv](Context& ctx) { return RunGet(ctx, inv.get); }; });

  CLI::App* describe = app->add_subcommand(
      "describe", "Show objects in detail: metadata, spec, status, conditions, events");
  describe->add_option("kind", inv.get.kind, "One of: " + kinds)->required();
  describe->add_option("names", inv.get.names, "Names (all objects when none)");
  AddParentFlags(describe, &inv.get.parent);
  describe->callback(
      [&inv] { inv.run = [&inv](Context& ctx) { return RunDescribe(ctx, inv.get); }; });

  // delete
  CLI::App* del = app->add_subcommand(
      "delete", "Delete named objects, or those of manifests (in reverse dependency order)");
  del->add_option("kind", inv.del.kind, "One of: " + kinds);
  del->add_option("names", inv.del.names, "Names");
  del->add_option("-f,--filename", inv.del.files, "Manifest file; - for stdin; repeatable");
  del->add_flag("--force", inv.del.force, "Stop running VMs first instead of refusing");
  del->add_flag("--ignore-not-found", inv.del.ignore_not_found,
                "Treat objects that do not exist as deleted");
  AddParentFlags(del, &inv.del.parent);
  del->callback([&inv] { inv.run = [&inv](Context& ctx) { return RunDelete(ctx, inv.del); }; });

  // vm
  CLI::App* vm = app->add_subcommand("vm", "Virtual machine lifecycle and console");
  vm->require_subcommand(1);
  for (const char* action : {"start", "stop", "restart", "pause", "resume"}) {
    static const std::map<std::string, std::string> kHelp = {
        {"start", "Start a stopped VM; returns once it runs"},
        {"stop", "Stop a VM: ACPI power button, then power off after the grace period"},
        {"restart", "Reboot a running VM"},
        {"pause", "Pause a running VM's vCPUs"},
        {"resume", "Resume a paused VM"}};
    CLI::App* sub = vm->add_subcommand(action, kHelp.at(action));
    sub->add_option("name", inv.vm.name, "VM name")->required();
    if (std::string(action) == "stop") {
      CLI::Option* force = sub->add_flag("--force", inv.vm.force, "Power off at once");
      sub->add_option("--grace-period", inv.vm.grace_period,
                      "How long the guest may take to shut down (e.g. 30s); default: the VM's "
                      "stop_grace_period_ms, else 60s")
          ->excludes(force);
    }
    if (std::string(action) == "restart") {
      sub->add_flag("--force", inv.vm.force, "Reset at once instead of a guest reboot");
    }
    sub->callback([&inv, action] {
      inv.vm.action = action;
      inv.run = [&inv](Context& ctx) { return RunVmAction(ctx, inv.vm); };
    });
  }
  CLI::App* console = vm->add_subcommand("console", "Print a VM's serial console log");
  console->add_option("name", inv.console.name, "VM name")->required();
  console->add_flag("-F,--follow", inv.console.follow,
                    "Keep printing what the guest writes until the VM stops");
  console->add_option("--until", inv.console.until,
                      "Wait for a line matching this regular expression (Perl syntax), print "
                      "it and exit 0");
  console->add_option("--timeout", inv.console.timeout,
                      "With --until: fail after this long (e.g. 180s); with --follow: stop");
  console->add_flag("--skip-existing", inv.console.skip_existing,
                    "Ignore what the log holds now (e.g. earlier boots)");
  console->add_flag("--attach", inv.console.attach,
                    "Attach to the live console (interactive; ^] detaches)");
  console->callback(
      [&inv] { inv.run = [&inv](Context& ctx) { return RunConsole(ctx, inv.console); }; });

  // image
  CLI::App* image = app->add_subcommand("image", "Disk images");
  image->require_subcommand(1);
  CLI::App* import = image->add_subcommand("import", "Import an image, showing progress");
  import->add_option("name", inv.image.name, "Image name")->required();
  CLI::Option* url = import->add_option("--url", inv.image.url, "http(s) URL to download");
  import->add_option("--file", inv.image.file, "File on this host")->excludes(url);
  import->add_option("--sha256", inv.image.sha256, "Expected SHA-256 (64 hex digits)");
  import->add_option("--format", inv.image.format,
                     "Source format (raw, qcow2, vmdk, vhdx, vdi, iso); default: detected");
  import->callback(
      [&inv] { inv.run = [&inv](Context& ctx) { return RunImageImport(ctx, inv.image);
};
}  // namespace
);

// volume
CLI::App* volume = app->add_subcommand("volume", "Block volumes and their snapshots");
volume->require_subcommand(1);
CLI::App* create = volume->add_subcommand("create", "Create a volume");
create->add_option("name", inv.volume.name, "Volume name")->required();
create->add_option("--size", inv.volume.size,
                   "Size: bytes or 10Gi, 512Mi, ... (default for copies: the source's)");
CLI::Option* from_image =
    create->add_option("--from-image", inv.volume.from_image, "Copy of an image");
CLI::Option* from_volume =
    create->add_option("--from-volume", inv.volume.from_volume, "Clone of a volume");
CLI::Option* from_snapshot = create->add_option("--from-snapshot", inv.volume.from_snapshot,
                                                "Clone of a snapshot, as VOLUME/SNAPSHOT");
from_image->excludes(from_volume)->excludes(from_snapshot);
from_volume->excludes(from_snapshot);
create->add_option("--replicas", inv.volume.replicas,
                   "Replicas for replicated backends; default: the backend's");
create->add_flag("--linked-clone", inv.volume.linked_clone,
                 "With --from-image: use the image as a backing file instead of copying it");
create->callback([&inv] {
  inv.run = [&inv](Context& ctx) { return RunVolumeCreate(ctx, inv.volume); };
});
CLI::App* resize = volume->add_subcommand("resize", "Grow a volume");
resize->add_option("name", inv.volume.name, "Volume name")->required();
resize->add_option("--size", inv.volume.size, "New size: bytes or 20Gi, ...")->required();
resize->callback([&inv] {
  inv.run = [&inv](Context& ctx) { return RunVolumeResize(ctx, inv.volume); };
});
CLI::App* scrub = volume->add_subcommand(
    "scrub", "Compare a volume's replicas and repair the one that differs from the others");
scrub->add_option("name", inv.volume_scrub.name, "Volume name")->required();
scrub->add_flag("--report-only", inv.volume_scrub.report_only,
                "Compare and report; repair nothing");
scrub->add_flag("--wait", inv.volume_scrub.wait,
                "Follow the scrub to its end and print what it found (without it, a scrub that "
                "needs this process ends when hcictl exits)");
scrub->callback([&inv] {
  inv.run = [&inv](Context& ctx) { return RunVolumeScrub(ctx, inv.volume_scrub); };
});
CLI::App* snapshot = volume->add_subcommand("snapshot", "Volume snapshots");
snapshot->require_subcommand(1);
for (const char* action : {"create", "list", "delete", "revert"}) {
  static const std::map<std::string, std::string> kHelp = {
      {"create", "Take a snapshot of a volume"},
      {"list", "List a volume's snapshots"},
      {"delete", "Delete a snapshot"},
      {"revert", "Revert a detached volume to a snapshot"}};
  CLI::App* sub = snapshot->add_subcommand(action, kHelp.at(action));
  sub->add_option("volume", inv.snapshot.volume, "Volume name")->required();
  if (std::string(action) != "list") {
    sub->add_option("snapshot", inv.snapshot.name, "Snapshot name")->required();
  }
  sub->callback([&inv, action] {
    inv.snapshot.action = action;
    inv.run = [&inv](Context& ctx) { return RunSnapshot(ctx, inv.snapshot); };
  });
}

// plugins, version, batch
app->add_subcommand("plugins", "What the plugin loader found, loaded or refused (and why)")
    ->callback([&inv] {
      inv.run = [](Context& ctx) {
        GetOptions options;
        options.kind = "plugin";
        return RunGet(ctx, options);
      };
    });
app->add_subcommand("version", "Print the versions of hcictl, libhci and the plugin ABI")
    ->callback([&inv] { inv.run = [](Context& ctx) { return RunVersion(ctx); }; });
if (!in_batch) {
  CLI::App* batch = app->add_subcommand(
      "batch",
      "Run the commands in a file (one per line, shell-style quoting, # comments) against one "
      "Host; stops at the first failure");
  batch->add_option("file", inv.batch_file, "Command file; - for stdin")->required();
  batch->callback(
      [&inv] { inv.run = [&inv](Context& ctx) { return RunBatch(ctx, inv.batch_file); }; });
}
return app;
}  // namespace hcictl

OutputFormat ParseFormat(const std::string& text) {
  if (text == "json") return OutputFormat::kJson;
  if (text == "yaml") return OutputFormat::kYaml;
  if (text == "name") return OutputFormat::kName;
  return OutputFormat::kTable;
}

// Parses `args` (without the program name). Returns -1 to go on, else the exit code (help
// printed, or a usage error reported with `prefix`).
int Parse(CLI::App& app, std::vector<std::string> args, const std::string& prefix) {
  try {
    std::reverse(args.begin(), args.end());  // CLI11 takes them last first
    app.parse(args);
    return -1;
  } catch (const CLI::ParseError& e) {
    if (e.get_exit_code() == static_cast<int>(CLI::ExitCodes::Success)) {
      return app.exit(e);  // --help
    }
    std::cerr << "error: " << prefix << e.what() << "\n"
              << "Run 'hcictl --help' (or 'hcictl COMMAND --help') for usage.\n";
    return kExitUsage;
  }
}

// Runs a parsed invocation; prints its error; returns the exit code.
int Execute(Context& ctx, Invocation& inv, const std::string& prefix) {
  ctx.output = ParseFormat(inv.output);
  ctx.clear_usage_error();
  if (!inv.run) return kExitUsage;
  const hci::Status status = inv.run(ctx);
  if (status.ok()) return kExitOk;
  if (!status.message().empty()) std::cerr << "error: " << prefix << status.message() << "\n";
  if (ctx.usage_error()) return kExitUsage;
  if (status.code() == hci::StatusCode::kCancelled && Interrupted()) return kExitInterrupted;
  return ExitCode(status);
}

// Splits a batch line into words as a POSIX shell would, without any expansion: blanks separate
// words, '...' and "..." quote ("..." honours \" and \\), a backslash escapes the next
// character, and # starts a comment at the beginning of a word.
hci::Result<std::vector<std::string>> SplitWords(std::string_view line) {
  std::vector<std::string> words;
  std::string word;
  bool in_word = false;
  for (size_t i = 0; i < line.size(); ++i) {
    const char c = line[i];
    if (c == ' ' || c == '\t' || c == '\r') {
      if (in_word) words.push_back(std::move(word));
      word.clear();
      in_word = false;
    } else if (c == '#' && !in_word) {
      break;
    } else if (c == '\'') {
      const size_t end = line.find('\'', i + 1);
      if (end == std::string_view::npos) return hci::InvalidArgument("unterminated ' quote");
      word.append(line.substr(i + 1, end - i - 1));
      i = end;
      in_word = true;
    } else if (c == '"') {
      size_t j = i + 1;
      for (; j < line.size() && line[j] != '"'; ++j) {
        if (line[j] == '\\' && j + 1 < line.size() && (line[j + 1] == '"' || line[j + 1] == '\\')) {
          ++j;
        }
        word += line[j];
      }
      if (j >= line.size()) return hci::InvalidArgument("unterminated \" quote");
      i = j;
      in_word = true;
    } else if (c == '\\') {
      if (i + 1 < line.size()) word += line[++i];
      in_word = true;
    } else {
      word += c;
      in_word = true;
    }
  }
  if (in_word) words.push_back(std::move(word));
  return words;
}

hci::Status RunBatch(Context& ctx, const std::string& file) {
  HCI_ASSIGN_OR_RAISE(std::string text, ReadInput(file));
  size_t line_number = 0;
  size_t start = 0;
  while (start < text.size()) {
    size_t end = text.find('\n', start);
    if (end == std::string::npos) end = text.size();
    const std::string_view line(text.data() + start, end - start);
    start = end + 1;
    ++line_number;
    const std::string prefix = fmt::format("line {}: ", line_number);
    hci::Result<std::vector<std::string>> words = SplitWords(line);
    if (!words.ok()) return ctx.UsageError(prefix + words.status().message());
    if (words->empty()) continue;
    Invocation inner;
    std::unique_ptr<CLI::App> app = BuildApp(inner, /*in_batch=*/true);
    if (const int code = Parse(*app, *words, prefix); code >= 0) {
      if (code == kExitOk) continue;  // help
      // Already reported; exit as a usage error.
      return ctx.UsageError("");
    }
    const int code = Execute(ctx, inner, prefix);
    if (code != kExitOk) {
      // Already reported; keep the command's exit code.
      if (code == kExitUsage) return ctx.UsageError("");
      if (code == kExitInterrupted) return InterruptedStatus();
      return hci::Status(static_cast<hci::StatusCode>(code - kExitStatusBase), "");
    }
  }
  return hci::Status::OK();
}

int Main(int argc, char** argv) {
  Invocation inv;
  std::unique_ptr<CLI::App> app = BuildApp(inv, /*in_batch=*/false);
  if (argc <= 1) {
    std::cerr << app->help();
    return kExitUsage;
  }
  const int parsed = Parse(*app, std::vector<std::string>(argv + 1, argv + argc), "");
  if (parsed >= 0) return parsed;
  Context ctx(inv.globals);
  return Execute(ctx, inv, "");
}

}  // namespace
}  // namespace hcictl

int main(int argc, char** argv) {
  // hcictl is run by people and scripts on any input: nothing may escape as a crash.
  try {
    return hcictl::Main(argc, argv);
  } catch (const std::exception& e) {
    std::cerr << "error: internal error: " << e.what() << "\n";
  } catch (...) {
    std::cerr << "error: internal error: unknown exception\n";
  }
  return hcictl::kExitStatusBase + static_cast<int>(hci::StatusCode::kInternal);
}
