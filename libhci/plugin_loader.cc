// The plugin loader: the only code in libhci that includes Boost.DLL (see docs/abi-policy.md).
#include <dlfcn.h>
#include <elf.h>
#include <fcntl.h>
#include <google/protobuf/stubs/common.h>
#include <link.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <boost/dll/library_info.hpp>
#include <boost/dll/shared_library.hpp>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <exception>
#include <filesystem>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <system_error>
#include <utility>
#include <vector>

#include "hci/backend.h"
#include "hci/names.h"
#include "hci/version.h"
#include "plugin_loader_internal.h"

namespace hci::internal {

namespace fs = std::filesystem;

namespace {

// Longest string read from a descriptor: a corrupt descriptor must not produce a huge message.
constexpr std::size_t kMaxDescriptorString = 256;

std::string DescriptorString(const char* s) {
  if (s == nullptr) return "";
  return std::string(s, ::strnlen(s, kMaxDescriptorString));
}

std::string Trimmed(std::string s) {
  while (!s.empty() && (s.back() == ' ' || s.back() == '\t')) s.pop_back();
  return s;
}

std::string Octal(mode_t mode) {
  char buf[16];
  std::snprintf(buf, sizeof(buf), "%04o", static_cast<unsigned>(mode & 07777));
  return buf;
}

std::string Hex(std::uint32_t value) {
  char buf[16];
  std::snprintf(buf, sizeof(buf), "0x%08x", value);
  return buf;
}

std::string Quoted(const std::string& s) { return "\"" + s + "\""; }

std::string Join(const std::vector<std::string>& parts) {
  std::string out;
  for (const auto& p : parts) out += (out.empty() ? "" : ", ") + p;
  return out;
}

// sshd's StrictModes rule: a file whose content decides what code runs in this process must be
// writable only by root or by this process's user. Group or other write permission on the file
// (or on its directory, which lets anyone replace the file) hands that decision to someone else.
std::string UnsafeReason(const struct stat& st, const std::string& what) {
  const uid_t euid = ::geteuid();
  if (st.st_uid != 0 && st.st_uid != euid) {
    return what + " is owned by uid " + std::to_string(st.st_uid) +
           ", which is neither root nor this process's effective uid " + std::to_string(euid);
  }
  const bool group = (st.st_mode & S_IWGRP) != 0;
  const bool other = (st.st_mode & S_IWOTH) != 0;
  if (group || other) {
    return what + " is writable by " +
           (group && other ? "group and others"
            : group        ? "group"
                           : "others") +
           " (mode " + Octal(st.st_mode) + ")";
  }
  return "";
}

constexpr const char* kSafetyRule =
    "plugin files and their directories must be owned by root or this process's user and "
    "writable by no one else";

// The ELF identity of libhci itself, read from its own mapped header: a plugin must match it.
const ElfW(Ehdr) & OwnElfHeader() {
  static const ElfW(Ehdr)* header = [] {
    Dl_info info{};
    ::dladdr(reinterpret_cast<void*>(&OwnElfHeader), &info);
    return static_cast<const ElfW(Ehdr)*>(info.dli_fbase);
  }();
  return *header;
}

std::string ElfTypeName(unsigned type) {
  switch (type) {
    case ET_NONE:
      return "ET_NONE";
    case ET_REL:
      return "ET_REL, a relocatable object";
    case ET_EXEC:
      return "ET_EXEC, an executable";
    case ET_DYN:
      return "ET_DYN";
    case ET_CORE:
      return "ET_CORE, a core dump";
    default:
      return std::to_string(type);
  }
}

// Empty when `fd` starts with an ELF header of a shared object this process can map; else the
// cause. `has_sections` tells whether a symbol table can be looked for without loading.
std::string CheckElfHeader(int fd, const struct stat& st, bool* has_sections) {
  ElfW(Ehdr) header{};
  ssize_t n = ::pread(fd, &header, sizeof(header), 0);
  if (n < 0) return std::string("cannot read the ELF header: ") + std::strerror(errno);
  if (static_cast<std::size_t>(n) < EI_NIDENT ||
      std::memcmp(header.e_ident, ELFMAG, SELFMAG) != 0) {
    return "not an ELF shared object (the file does not start with the ELF magic \\x7fELF)";
  }
  if (static_cast<std::size_t>(n) < sizeof(header)) {
    return "not an ELF shared object (the file is " + std::to_string(st.st_size) +
           " bytes, shorter than an ELF header)";
  }
  const ElfW(Ehdr)& own = OwnElfHeader();
  if (header.e_ident[EI_CLASS] != own.e_ident[EI_CLASS]) {
    auto bits = [](unsigned char c) {
      return c == ELFCLASS32 ? "32-bit" : c == ELFCLASS64 ? "64-bit" : "unknown-class";
    };
    return std::string("a ") + bits(header.e_ident[EI_CLASS]) + " ELF file, this process is " +
           bits(own.e_ident[EI_CLASS]);
  }
  if (header.e_ident[EI_DATA] != own.e_ident[EI_DATA]) {
    return "an ELF file of the other byte order than this process";
  }
  if (header.e_type != ET_DYN) {
    return "not an ELF shared object (ELF type " + ElfTypeName(header.e_type) +
           "; a plugin is ET_DYN)";
  }
  if (header.e_machine != own.e_machine) {
    return "built for ELF machine " + std::to_string(header.e_machine) + ", this process is " +
           std::to_string(own.e_machine);
  }
  // Boost's symbol reader trusts the section headers: only let it read ones inside the file.
  *has_sections = header.e_shnum != 0 && header.e_shoff <= static_cast<std::uint64_t>(st.st_size) &&
                  static_cast<std::uint64_t>(header.e_shnum) * header.e_shentsize <=
                      static_cast<std::uint64_t>(st.st_size) - header.e_shoff;
  return "";
}

enum class SymbolPresence { kPresent, kAbsent, kUnknown };

// Looks for the entry symbol in the file's symbol tables without running any of its code (dlopen
// runs constructors), so that a stray non-plugin library is refused before it can do anything.
SymbolPresence FindEntrySymbol(const std::string& path) {
  try {
    boost::dll::library_info info{boost::dll::fs::path(path)};
    for (const auto& s : info.symbols()) {
      if (s == kPluginEntrySymbol) return SymbolPresence::kPresent;
    }
    return SymbolPresence::kAbsent;
  } catch (const std::exception&) {
    // Sections Boost cannot parse: dlopen and dlsym decide.
    return SymbolPresence::kUnknown;
  }
}

// Every library this process ever opened as a plugin, keyed by canonical path. Intentionally
// leaked: unloading a plugin is unsafe (anything it created -- vtables, deleters, type_info,
// thread-local destructors, atexit handlers -- would point into unmapped code; see Boost.DLL's
// "missuses" and libvirt's RTLD_NODELETE), and destroying the map at exit would dlclose them
// while other static destructors may still run plugin code.
class LibraryRegistry {
 public:
  static LibraryRegistry& Get() {
    static auto* registry = new LibraryRegistry();
    return *registry;
  }

  // The mapping of `canonical`, opened RTLD_NOW | RTLD_LOCAL on first use; the dlerror text on
  // failure (not cached: a fixed file may be tried again).
  Result<const boost::dll::shared_library*> Open(const std::string& canonical) {
    std::lock_guard<std::mutex> lock(mu_);
    if (auto it = libs_.find(canonical); it != libs_.end()) return it->second.get();
    auto lib = std::make_unique<boost::dll::shared_library>();
    boost::dll::fs::error_code ec;
    std::string error;
    try {
      ::dlerror();  // Clear a stale message so that the one read below is ours.
      lib->load(boost::dll::fs::path(canonical),
                boost::dll::load_mode::rtld_now | boost::dll::load_mode::rtld_local, ec);
      if (ec || !lib->is_loaded()) {
        const char* text = ::dlerror();
        error = text != nullptr ? text : ec.message();
      }
    } catch (const std::exception& e) {
      error = e.what();
    }
    if (!error.empty()) return FailedPrecondition("dlopen failed: " + error);
    const boost::dll::shared_library* result = lib.get();
    libs_.emplace(canonical, std::move(lib));
    return result;
  }

 private:
  LibraryRegistry() = default;
  std::mutex mu_;
  std::map<std::string, std::unique_ptr<boost::dll::shared_library>> libs_;
};

std::vector<std::string> KindsOf(const PluginFactories& f) {
  std::vector<std::string> kinds;
  auto add = [&](bool provided, BackendKind kind) {
    if (provided) kinds.emplace_back(BackendKindName(kind));
  };
  add(f.compute != nullptr, BackendKind::kCompute);
  add(f.storage != nullptr, BackendKind::kStorage);
  add(f.network != nullptr, BackendKind::kNetwork);
  add(f.image != nullptr, BackendKind::kImage);
  add(f.backup != nullptr, BackendKind::kBackup);
  return kinds;
}

std::string NoEntrySymbol(const std::string& path) {
  return path + ": no " + kPluginEntrySymbol +
         " symbol is exported, so it is not an hci plugin (plugins define it with HCI_PLUGIN, "
         "see hci/plugin.h)";
}

}  // namespace

PluginLoader::PluginLoader(Logger logger) : logger_(std::move(logger)) {}

void PluginLoader::ScanDirectories(const std::vector<std::string>& dirs) {
  for (const auto& dir : dirs) {
    std::error_code ec;
    fs::directory_iterator it(dir, ec);
    if (ec) {
      logger_.Warn("", "", "plugin directory \"" + dir + "\" skipped: " + ec.message());
      continue;
    }
    std::vector<std::string> files;
    for (; it != fs::directory_iterator(); it.increment(ec)) {
      const fs::path& p = it->path();
      if (p.extension() != ".so") continue;
      std::error_code type_ec;
      // Follows symlinks: a link to a plugin elsewhere is loaded (from its canonical path).
      if (!fs::is_regular_file(p, type_ec)) {
        logger_.Debug("", "", p.string() + ": skipped, not a regular file");
        continue;
      }
      files.push_back(p.string());
    }
    if (ec) {
      logger_.Warn("", "", "plugin directory \"" + dir + "\": listing stopped: " + ec.message());
    }
    std::sort(files.begin(), files.end());
    for (const auto& f : files) LoadFile(f);
  }
}

void PluginLoader::LoadFile(const std::string& path) {
  v1::PluginInfo info;
  info.set_path(path);

  std::error_code ec;
  const fs::path canonical = fs::canonical(path, ec);
  if (ec) return Refuse(std::move(info), path + ": cannot resolve the path: " + ec.message());
  if (auto it = seen_.find(canonical.string()); it != seen_.end()) {
    logger_.Debug("", "", path + ": skipped, the same file as " + it->second);
    return;
  }
  seen_.emplace(canonical.string(), path);

  // One descriptor for every pre-dlopen check, so they all see the same file.
  const int fd = ::open(canonical.c_str(), O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK);
  if (fd < 0) {
    return Refuse(std::move(info), path + ": cannot open: " + std::strerror(errno));
  }
  struct stat file_st {};
  const bool stat_ok = ::fstat(fd, &file_st) == 0;
  const int stat_errno = errno;
  std::string problem;
  bool has_sections = false;
  if (!stat_ok) {
    problem = std::string("cannot stat: ") + std::strerror(stat_errno);
  } else if (!S_ISREG(file_st.st_mode)) {
    problem = "not a regular file";
  } else if (std::string unsafe = UnsafeReason(file_st, "the file"); !unsafe.empty()) {
    problem = unsafe + "; " + kSafetyRule;
  } else {
    // The directory holding the file, and the scanned one when a symlink led elsewhere: whoever
    // can write either can swap the plugin.
    std::vector<fs::path> dirs{canonical.parent_path()};
    fs::path scanned_dir = fs::absolute(fs::path(path), ec).parent_path();
    if (!ec && scanned_dir != dirs.front()) dirs.push_back(scanned_dir);
    for (const auto& d : dirs) {
      struct stat dir_st {};
      if (::stat(d.c_str(), &dir_st) != 0) {
        problem = "cannot stat its directory " + d.string() + ": " + std::strerror(errno);
        break;
      }
      if (std::string unsafe = UnsafeReason(dir_st, "its directory " + d.string());
          !unsafe.empty()) {
        problem = unsafe + "; " + kSafetyRule;
        break;
      }
    }
  }
  if (problem.empty()) problem = CheckElfHeader(fd, file_st, &has_sections);
  ::close(fd);
  if (!problem.empty()) return Refuse(std::move(info), path + ": " + problem);

  if (has_sections && FindEntrySymbol(canonical.string()) == SymbolPresence::kAbsent) {
    return Refuse(std::move(info), NoEntrySymbol(path));
  }

  auto lib = LibraryRegistry::Get().Open(canonical.string());
  if (!lib.ok()) return Refuse(std::move(info), path + ": " + lib.status().message());
  if (!(*lib)->has(kPluginEntrySymbol)) {
    return Refuse(std::move(info), NoEntrySymbol(path));
  }
  auto& entry = (*lib)->get<const PluginDescriptor*()>(kPluginEntrySymbol);
  const PluginDescriptor* d = nullptr;
  try {
    d = entry();
  } catch (...) {
    return Refuse(std::move(info), path + ": " + kPluginEntrySymbol + " threw an exception");
  }
  if (d == nullptr) {
    return Refuse(std::move(info), path + ": " + kPluginEntrySymbol + " returned no descriptor");
  }

  if (d->magic == kPluginMagic) {
    // The stable header is readable whatever the ABI version: report what the plugin says.
    info.set_name(DescriptorString(d->name));
    info.set_version(DescriptorString(d->version));
    info.set_abi_version(d->abi_version);
    info.set_toolchain(DescribeToolchain(*d));
    if (d->abi_version >= kPluginAbiOldest && d->abi_version <= kPluginAbiVersion) {
      for (auto& k : KindsOf(d->factories)) info.add_kinds(std::move(k));
    }
  }
  if (Status s = CheckDescriptor(*d, path); !s.ok()) {
    return Refuse(std::move(info), s.message());
  }
  if (Status s = ValidateName("plugin name", info.name()); !s.ok()) {
    return Refuse(std::move(info), path + ": " + s.message());
  }
  if (info.version().empty()) {
    return Refuse(std::move(info), path + ": plugin \"" + info.name() +
                                       "\" has an empty version (the descriptor's version must "
                                       "be a semantic version such as \"1.2.0\")");
  }
  for (const auto& l : loaded_) {
    if (l.name == info.name()) {
      return Refuse(std::move(info),
                    path + ": plugin name \"" + l.name + "\" is already provided by " + l.path);
    }
  }

  info.set_state(v1::PLUGIN_STATE_LOADED);
  loaded_.push_back(Loaded{info.name(), path, d});
  std::vector<std::string> kinds(info.kinds().begin(), info.kinds().end());
  logger_.Info("plugin", info.name(),
               "loaded plugin " + info.name() + " " + info.version() + " from " + path + " (" +
                   (kinds.empty() ? std::string("no backend kinds") : Join(kinds)) + ")");
  report_.push_back(std::move(info));
}

const PluginDescriptor* PluginLoader::Find(std::string_view name) const {
  for (const auto& l : loaded_) {
    if (l.name == name) return l.descriptor;
  }
  return nullptr;
}

const v1::PluginInfo* PluginLoader::FindInfo(std::string_view name) const {
  const v1::PluginInfo* refused = nullptr;
  const v1::PluginInfo* by_file = nullptr;
  const std::string file_name = "hci_" + std::string(name) + ".so";
  for (const auto& info : report_) {
    if (info.name() == name) {
      if (info.state() == v1::PLUGIN_STATE_LOADED) return &info;
      refused = &info;
    } else if (info.name().empty() && fs::path(info.path()).filename() == file_name) {
      by_file = &info;
    }
  }
  return refused != nullptr ? refused : by_file;
}

void PluginLoader::Refuse(v1::PluginInfo info, std::string reason) {
  info.set_state(v1::PLUGIN_STATE_REFUSED);
  if (info.name().empty()) {
    logger_.Warn("", "", "plugin refused: " + reason);
  } else {
    logger_.Warn("plugin", info.name(), "plugin refused: " + reason);
  }
  info.set_reason(std::move(reason));
  report_.push_back(std::move(info));
}

Status CheckDescriptor(const PluginDescriptor& descriptor, const std::string& path) {
  if (descriptor.magic != kPluginMagic) {
    return FailedPrecondition(path + ": " + kPluginEntrySymbol +
                              " returned a descriptor with magic " + Hex(descriptor.magic) +
                              ", expected " + Hex(kPluginMagic) +
                              " (\"HCIP\"); not an hci plugin, or a corrupt one");
  }
  if (descriptor.abi_version < kPluginAbiOldest || descriptor.abi_version > kPluginAbiVersion) {
    return FailedPrecondition(
        path + ": built for plugin ABI " + std::to_string(descriptor.abi_version) +
        ", this libhci accepts ABI " + std::to_string(kPluginAbiOldest) + " to " +
        std::to_string(kPluginAbiVersion) +
        (descriptor.abi_version > kPluginAbiVersion ? " (the plugin is newer than this libhci)"
                                                    : " (rebuild the plugin against this libhci)"));
  }
  const PluginDescriptor& core = CoreFingerprint();
  std::vector<std::string> differences;
  const std::string stdlib = DescriptorString(descriptor.stdlib);
  if (stdlib != core.stdlib) {
    differences.push_back("C++ standard library " + Quoted(stdlib) + " vs " + Quoted(core.stdlib));
  }
  if (descriptor.cxx11_abi != core.cxx11_abi) {
    differences.push_back("_GLIBCXX_USE_CXX11_ABI " + std::to_string(descriptor.cxx11_abi) +
                          " vs " + std::to_string(core.cxx11_abi));
  }
  if (descriptor.protobuf_version != core.protobuf_version) {
    differences.push_back("protobuf " + std::to_string(descriptor.protobuf_version) + " vs " +
                          std::to_string(core.protobuf_version));
  }
  if (!differences.empty()) {
    return FailedPrecondition(path + ": toolchain mismatch (" + Join(differences) +
                              "): the plugin was built with \"" + DescribeToolchain(descriptor) +
                              "\", this libhci with \"" + DescribeToolchain(core) +
                              "\"; rebuild the plugin with libhci's C++ standard library, "
                              "_GLIBCXX_USE_CXX11_ABI and protobuf");
  }
  return Status();
}

std::string DescribeToolchain(const PluginDescriptor& descriptor) {
  return Trimmed(DescriptorString(descriptor.compiler)) + ", " +
         DescriptorString(descriptor.stdlib) + ", cxx11-abi " +
         std::to_string(descriptor.cxx11_abi) + ", protobuf " +
         std::to_string(descriptor.protobuf_version);
}

const PluginDescriptor& CoreFingerprint() {
  static const PluginDescriptor core{kPluginMagic,
                                     kPluginAbiVersion,
                                     "",
                                     HCI_VERSION_STRING,
                                     HCI_TOOLCHAIN_COMPILER,
                                     HCI_TOOLCHAIN_STDLIB,
                                     HCI_TOOLCHAIN_CXX11_ABI,
                                     GOOGLE_PROTOBUF_VERSION,
                                     PluginFactories{}};
  return core;
}

}  // namespace hci::internal
