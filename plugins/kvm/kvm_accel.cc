// The accelerator choice: KVM only when it demonstrably runs guest code, else TCG.
//
// /dev/kvm alone proves nothing: on some hosts it is a software implementation that runs a tiny
// guest but cannot boot Linux (docs/kvm-plugin.md). So `auto` asks for three things, cheapest
// first: the CPU's virtualization flag, a read-write /dev/kvm, and a probe guest that runs to
// completion under -accel kvm within a deadline.
#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <string>

#include "kvm_internal.h"
#include "process/process.h"

namespace hci::kvm {
namespace {

// Real-mode code at the reset vector (F000:FFF0): write 'K' to COM1, write 0x20 to the
// isa-debug-exit port (QEMU exits with status (0x20 << 1) | 1 = 65), and halt should that fail.
constexpr unsigned char kProbeCode[] = {
    0xBA, 0xF8, 0x03,  // mov dx, 0x3f8
    0xB0, 0x4B,        // mov al, 'K'
    0xEE,              // out dx, al
    0xB0, 0x20,        // mov al, 0x20
    0xE6, 0xF4,        // out 0xf4, al
    0xF4,              // hlt
    0xEB, 0xFE,        // jmp $
};
constexpr std::size_t kProbeImageSize = 64 * 1024;  // one BIOS-sized segment
constexpr std::size_t kResetVectorOffset = 0xFFF0;
constexpr int kProbeExitCode = (0x20 << 1) | 1;

}  // namespace

bool CpuinfoHasVirtualization(std::string_view cpuinfo) {
  std::size_t pos = 0;
  while (pos < cpuinfo.size()) {
    std::size_t end = cpuinfo.find('\n', pos);
    if (end == std::string_view::npos) end = cpuinfo.size();
    std::string_view line = cpuinfo.substr(pos, end - pos);
    pos = end + 1;
    if (!line.starts_with("flags")) continue;
    auto colon = line.find(':');
    if (colon == std::string_view::npos) continue;
    std::string_view flags = line.substr(colon + 1);
    std::size_t i = 0;
    while (i < flags.size()) {
      while (i < flags.size() && (flags[i] == ' ' || flags[i] == '\t')) ++i;
      std::size_t j = i;
      while (j < flags.size() && flags[j] != ' ' && flags[j] != '\t') ++j;
      std::string_view flag = flags.substr(i, j - i);
      if (flag == "vmx" || flag == "svm") return true;
      i = j;
    }
  }
  return false;
}

Status ProbeKvm(const std::string& qemu_binary, const std::string& work_dir,
                std::chrono::milliseconds timeout) {
  std::string image(kProbeImageSize, '\xF4');  // hlt everywhere else
  image.replace(kResetVectorOffset, sizeof(kProbeCode), reinterpret_cast<const char*>(kProbeCode),
                sizeof(kProbeCode));
  std::string path = work_dir + "/kvm-probe.bin";
  HCI_RETURN_NOT_OK(WriteFileAtomically(path, image));
  process::RunOptions run;
  run.argv = {qemu_binary,
              "-machine",
              "microvm",
              "-accel",
              "kvm",
              "-m",
              "16",
              "-bios",
              path,
              "-nodefaults",
              "-no-user-config",
              "-display",
              "none",
              "-monitor",
              "none",
              "-serial",
              "stdio",
              "-device",
              "isa-debug-exit,iobase=0xf4,iosize=1"};
  run.timeout = timeout;
  auto result = process::Run(run);
  ::unlink(path.c_str());
  if (!result.ok()) {
    if (result.status().code() == StatusCode::kDeadlineExceeded) {
      return Unavailable("the KVM probe guest did not finish within " +
                         std::to_string(timeout.count()) + " ms");
    }
    return Unavailable("the KVM probe could not run: " + result.status().message());
  }
  if (result->exit_code != kProbeExitCode || result->stdout_data.find('K') == std::string::npos) {
    std::string how = result->term_signal != 0
                          ? "was killed by signal " + std::to_string(result->term_signal)
                          : "exited with " + std::to_string(result->exit_code);
    std::string err = process::Tail(result->stderr_data, 300);
    return Unavailable("the KVM probe guest " + how + " instead of reporting through " +
                       "isa-debug-exit" + (err.empty() ? "" : ": " + err));
  }
  return Status();
}

AccelChoice ChooseAutoAccel(const std::string& qemu_binary, const std::string& work_dir,
                            std::chrono::milliseconds probe_timeout) {
  auto cpuinfo = ReadFile("/proc/cpuinfo");
  if (!cpuinfo.ok() || !CpuinfoHasVirtualization(*cpuinfo)) {
    return {"tcg",
            "auto: the host CPU advertises neither vmx nor svm, so /dev/kvm (if any) is not "
            "hardware virtualization; using TCG"};
  }
  int fd = ::open("/dev/kvm", O_RDWR | O_CLOEXEC);
  if (fd < 0) {
    return {"tcg", std::string("auto: /dev/kvm cannot be opened read-write (") +
                       std::strerror(errno) + "); using TCG"};
  }
  ::close(fd);
  Status probe = ProbeKvm(qemu_binary, work_dir, probe_timeout);
  if (!probe.ok()) {
    return {"tcg", "auto: KVM is present but " + probe.message() + "; using TCG"};
  }
  return {"kvm", "auto: the CPU has hardware virtualization and a probe guest ran under KVM"};
}

}  // namespace hci::kvm
