#!/usr/bin/python3
"""Boots the libhci test guest (tools/build-test-guest) under QEMU/TCG and checks what it promises.

Run by ctest (tests/guest/CMakeLists.txt) with Debian's /usr/bin/python3, standard library only.

  1. build-test-guest builds the guest, and a second run is a no-op (cache stamp);
  2. boot 1 (vmlinux through PVH when the builder produced one): ready marker, `disk ok boots=1`,
     ticks counting 1, 2, 3, ... without gaps, QMP system_powerdown -> the guest prints
     `powering off`, QEMU reports SHUTDOWN (guest-shutdown) and exits by itself;
  3. boot 2 on the same disk (bzImage): `boots=2`, powerdown again; the host then reads the
     `hci.write=` lines of both boots back from the disk image with debugfs;
  4. a boot without a disk prints the skip line and keeps ticking;
  5. `hci.panic=1` panics the kernel after the ready marker; with `-device pvpanic` QEMU reports
     GUEST_PANICKED and SHUTDOWN (guest-panic) and exits.

Fails (never skips) when QEMU or a builder input is missing: tools/install-deps installs them.
"""

import argparse
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time

READY_TIMEOUT_S = 120.0
POWEROFF_TIMEOUT_S = 60.0
DEBUGFS = None  # set by main()


class TestFailure(Exception):
    pass


def check(condition, message):
    if not condition:
        raise TestFailure(message)


def load_guest_env(path):
    """Sources guest.env in bash (it is written with printf %q) and returns its variables."""
    script = 'set -a && . "$1" && env -0'
    out = subprocess.run(["bash", "-c", script, "bash", path], check=True,
                         stdout=subprocess.PIPE, env={"PATH": os.environ.get("PATH", "")}).stdout
    env = {}
    for item in out.decode().split("\0"):
        key, sep, value = item.partition("=")
        if sep:
            env[key] = value
    for key in ("KERNEL", "KERNEL_BZIMAGE", "KERNEL_PVH", "INITRD", "DISK", "CMDLINE",
                "KERNEL_VERSION"):
        check(key in env, f"{path}: variable {key} is missing")
    return env


class Qmp:
    """A minimal QMP client (docs/interop/qmp-spec.rst): greeting, capabilities, commands,
    events collected while waiting."""

    def __init__(self, path, deadline, proc):
        while True:
            try:
                self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                self.sock.connect(path)
                break
            except OSError:
                self.sock.close()
                if proc.poll() is not None:
                    raise TestFailure(f"QEMU exited ({proc.returncode}) before QMP was up")
                if time.monotonic() > deadline:
                    raise TestFailure(f"cannot connect to QMP socket {path}")
                time.sleep(0.05)
        self.buf = b""
        self.events = []
        self.next_id = 0
        greeting = self._read_message(deadline)
        check("QMP" in greeting, f"unexpected QMP greeting {greeting}")
        self.execute("qmp_capabilities")

    def _read_message(self, deadline):
        while b"\n" not in self.buf:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError("QMP read timed out")
            self.sock.settimeout(remaining)
            chunk = self.sock.recv(65536)
            if not chunk:
                raise EOFError("QMP connection closed")
            self.buf += chunk
        line, self.buf = self.buf.split(b"\n", 1)
        return json.loads(line)

    def execute(self, command, arguments=None, timeout=10.0):
        self.next_id += 1
        request = {"execute": command, "id": self.next_id}
        if arguments:
            request["arguments"] = arguments
        self.sock.sendall(json.dumps(request).encode() + b"\n")
        deadline = time.monotonic() + timeout
        while True:
            msg = self._read_message(deadline)
            if "event" in msg:
                self.events.append(msg)
            elif msg.get("id") == self.next_id:
                check("error" not in msg, f"QMP {command} failed: {msg}")
                return msg["return"]

    def drain_events(self, deadline):
        """Collects events until QEMU closes the connection or the deadline passes."""
        try:
            while True:
                msg = self._read_message(deadline)
                if "event" in msg:
                    self.events.append(msg)
        except (EOFError, TimeoutError, ConnectionResetError):
            pass

    def close(self):
        self.sock.close()


class Guest:
    def __init__(self, name, env, kernel, workdir, sockdir, disk=None, extra_append="",
                 extra_args=()):
        self.name = name
        self.log = os.path.join(workdir, f"{name}.serial.log")
        self.stderr_path = os.path.join(workdir, f"{name}.qemu.stderr")
        self.qmp_path = os.path.join(sockdir, f"{name}.qmp")
        for path in (self.log, self.qmp_path):
            if os.path.exists(path):
                os.unlink(path)
        append = env["CMDLINE"] + (" " + extra_append if extra_append else "")
        self.argv = [
            "qemu-system-x86_64", "-accel", "tcg", "-M", "pc", "-m", "256",
            "-nographic", "-no-reboot", "-display", "none", "-monitor", "none",
            "-kernel", kernel, "-initrd", env["INITRD"], "-append", append,
            "-serial", f"file:{self.log}",
            "-qmp", f"unix:{self.qmp_path},server=on,wait=off",
        ]
        if disk:
            self.argv += ["-drive", f"file={disk},format=raw,if=virtio"]
        self.argv += list(extra_args)
        self.kernel_kind = "vmlinux/PVH" if kernel == env["KERNEL_PVH"] else "bzImage"
        print(f"[{name}] {' '.join(self.argv)}", flush=True)
        self.stderr = open(self.stderr_path, "wb")
        self.started = time.monotonic()
        self.proc = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL,
                                     stdout=self.stderr, stderr=self.stderr)
        # Connect at once so that no event (SHUTDOWN after a panic, say) is missed.
        self.qmp = None
        self.qmp = Qmp(self.qmp_path, time.monotonic() + 30, self.proc)

    def text(self):
        try:
            with open(self.log, "rb") as f:
                return f.read().decode("utf-8", errors="replace")
        except FileNotFoundError:
            return ""

    def lines(self):
        """Complete serial lines only: a line still being written must not match."""
        return [line.rstrip("\r") for line in self.text().split("\n")[:-1]]

    def wait_for(self, pattern, timeout):
        """Waits until a serial line matches `pattern`; returns the match."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        while True:
            for line in self.lines():
                m = regex.search(line)
                if m:
                    return m
            if self.proc.poll() is not None and not any(regex.search(x) for x in self.lines()):
                raise TestFailure(f"[{self.name}] QEMU exited ({self.proc.returncode}) before "
                                  f"/{pattern}/ appeared")
            if time.monotonic() > deadline:
                raise TestFailure(f"[{self.name}] /{pattern}/ did not appear in {timeout:.0f} s")
            time.sleep(0.05)

    def wait_ready(self):
        self.wait_for(r"hci-test-guest: ready$", READY_TIMEOUT_S)
        seconds = time.monotonic() - self.started
        print(f"[{self.name}] boot-to-ready: {seconds:.2f} s ({self.kernel_kind})", flush=True)
        return seconds

    def ticks(self):
        return [int(m.group(1)) for m in
                (re.search(r"hci-test-guest: tick (\d+)$", line) for line in self.lines()) if m]

    def check_ticking(self, at_least):
        """Sees the counter advance to `at_least` and checks it never skipped a number."""
        self.wait_for(rf"hci-test-guest: tick {at_least}$", 60)
        ticks = self.ticks()
        check(ticks == list(range(1, len(ticks) + 1)),
              f"[{self.name}] ticks are not 1, 2, 3, ...: {ticks}")

    def wait_exit(self, timeout):
        """Waits for QEMU to exit by itself, collecting QMP events meanwhile."""
        deadline = time.monotonic() + timeout
        if self.qmp:
            self.qmp.drain_events(deadline)
        try:
            self.proc.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            raise TestFailure(f"[{self.name}] QEMU did not exit within {timeout:.0f} s")
        return self.proc.returncode

    def events(self, name):
        return [e for e in (self.qmp.events if self.qmp else []) if e["event"] == name]

    def powerdown(self):
        """system_powerdown; the guest must power off cleanly and QEMU exit by itself."""
        qmp = self.qmp
        started = time.monotonic()
        qmp.execute("system_powerdown")
        rc = self.wait_exit(POWEROFF_TIMEOUT_S)
        print(f"[{self.name}] powerdown-to-exit: {time.monotonic() - started:.2f} s", flush=True)
        check(rc == 0, f"[{self.name}] QEMU exited with {rc} after system_powerdown")
        check(any(line.startswith("hci-test-guest: power button pressed (event")
                  for line in self.lines()), f"[{self.name}] no 'power button pressed' line")
        check("hci-test-guest: powering off" in self.lines(),
              f"[{self.name}] no 'powering off' line")
        shutdowns = self.events("SHUTDOWN")
        check(shutdowns, f"[{self.name}] no SHUTDOWN event; events: {self.qmp.events}")
        reason = shutdowns[0].get("data", {}).get("reason")
        check(reason == "guest-shutdown", f"[{self.name}] SHUTDOWN reason is {reason}")

    def stop(self):
        if self.qmp:
            self.qmp.close()
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.stderr.close()

    def dump(self):
        print(f"----- [{self.name}] serial log (last 60 lines) -----")
        print("\n".join(self.lines()[-60:]))
        with open(self.stderr_path, "rb") as f:
            err = f.read().decode(errors="replace").strip()
        if err:
            print(f"----- [{self.name}] QEMU stderr -----\n{err}")
        sys.stdout.flush()


def disk_file(disk, path):
    """Reads a file from the ext4 image on the host (debugfs, no mount)."""
    out = subprocess.run([DEBUGFS, "-R", f"cat {path}", disk], check=True,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    return out.stdout.decode()


def run_builder(builder, outdir):
    started = time.monotonic()
    proc = subprocess.run([builder, outdir], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    output = proc.stdout.decode(errors="replace")
    print(output, end="", flush=True)
    check(proc.returncode == 0, f"{builder} failed with {proc.returncode}")
    return output, time.monotonic() - started


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--builder", required=True, help="tools/build-test-guest")
    parser.add_argument("--guest-dir", required=True, help="its output directory")
    parser.add_argument("--work-dir", required=True, help="logs and disk copies go here")
    args = parser.parse_args()

    if not shutil.which("qemu-system-x86_64"):
        raise TestFailure("qemu-system-x86_64 is not installed; run tools/install-deps")
    global DEBUGFS
    # debugfs is in sbin, which a non-root user's PATH may lack.
    DEBUGFS = shutil.which("debugfs", path=os.environ.get("PATH", "") + ":/usr/sbin:/sbin")
    if not DEBUGFS:
        raise TestFailure("debugfs (e2fsprogs) is not installed; run tools/install-deps")

    # 1. Build, then prove the cache makes a second run a no-op.
    _, build_s = run_builder(args.builder, args.guest_dir)
    print(f"build-test-guest: {build_s:.1f} s", flush=True)
    env_path = os.path.join(args.guest_dir, "guest.env")
    outputs = [os.path.join(args.guest_dir, f) for f in
               ("vmlinuz", "initramfs.cpio.gz", "disk.raw", "guest.env")]
    mtimes = [os.stat(p).st_mtime_ns for p in outputs]
    output, _ = run_builder(args.builder, args.guest_dir)
    check("up to date" in output, "second build-test-guest run was not a no-op")
    check(mtimes == [os.stat(p).st_mtime_ns for p in outputs],
          "second build-test-guest run rewrote its outputs")
    env = load_guest_env(env_path)
    print(f"guest kernel {env['KERNEL_VERSION']}; PVH vmlinux: {env['KERNEL_PVH'] or 'none'}")

    os.makedirs(args.work_dir, exist_ok=True)
    # Unix socket paths are limited to 108 bytes; the build tree may be deep.
    sockdir = tempfile.mkdtemp(prefix="hci-guest-")
    disk = os.path.join(args.work_dir, "disk.raw")
    shutil.copyfile(env["DISK"], disk)
    pvh = env["KERNEL_PVH"]
    bzimage = env["KERNEL_BZIMAGE"]
    timings = {}
    guests = []

    def boot(name, kernel, **kwargs):
        guest = Guest(name, env, kernel, args.work_dir, sockdir, **kwargs)
        guests.append(guest)
        return guest

    try:
        # 2. First boot: disk, ticks, clean powerdown.
        g = boot("boot1", pvh or bzimage, disk=disk, extra_append="hci.write=first-boot")
        timings.setdefault(g.kernel_kind, []).append(g.wait_ready())
        m = g.wait_for(r"hci-test-guest: modules loaded=\d+ failed=\[(.*)\]$", 1)
        # crc32c-intel refuses CPUs without SSE4.2 (TCG's qemu64); everything else must load.
        failed = set(m.group(1).split()) - {"crc32c-intel.ko"}
        check(not failed, f"[boot1] modules failed to load: {sorted(failed)}")
        m = g.wait_for(r"hci-test-guest: disk ok boots=(\d+)$", 60)
        check(m.group(1) == "1", f"[boot1] expected boots=1, got boots={m.group(1)}")
        check(g.qmp.execute("query-status")["status"] == "running", "[boot1] not running")
        g.check_ticking(5)
        g.powerdown()

        # 3. Second boot on the same disk: the first boot's writes persisted.
        g = boot("boot2", bzimage, disk=disk, extra_append="hci.write=second-boot")
        timings.setdefault(g.kernel_kind, []).append(g.wait_ready())
        m = g.wait_for(r"hci-test-guest: disk ok boots=(\d+)$", 60)
        check(m.group(1) == "2", f"[boot2] expected boots=2, got boots={m.group(1)}")
        g.check_ticking(3)
        g.powerdown()
        data = disk_file(disk, "/hci-test/data")
        check(data == "first-boot\nsecond-boot\n", f"/hci-test/data on the disk is {data!r}")
        boots = disk_file(disk, "/hci-test/boots")
        check(len(boots.splitlines()) == 2, f"/hci-test/boots on the disk is {boots!r}")

        # 4. No disk: a printed skip line, not an error; still ticking.
        g = boot("nodisk", env["KERNEL"])
        timings.setdefault(g.kernel_kind, []).append(g.wait_ready())
        g.wait_for(r"hci-test-guest: no disk ", 30)
        check(not any("disk error" in line for line in g.lines()), "[nodisk] disk error")
        g.check_ticking(3)
        g.powerdown()

        # 5. hci.panic=1: the kernel panics after the ready marker. The guest's pvpanic driver
        # tells QEMU, which reports GUEST_PANICKED and (default -action panic=poweroff) exits.
        g = boot("panic", env["KERNEL"], extra_append="hci.panic=1",
                 extra_args=["-device", "pvpanic"])
        timings.setdefault(g.kernel_kind, []).append(g.wait_ready())
        g.wait_for(r"Kernel panic - not syncing", 60)
        rc = g.wait_exit(POWEROFF_TIMEOUT_S)
        check(rc == 0, f"[panic] QEMU exited with {rc}")
        check(not g.ticks(), "[panic] guest ticked although it panicked before the tick loop")
        check(g.events("GUEST_PANICKED"), f"[panic] no GUEST_PANICKED event: {g.qmp.events}")
        shutdowns = g.events("SHUTDOWN")
        check(shutdowns and shutdowns[0]["data"]["reason"] == "guest-panic",
              f"[panic] expected SHUTDOWN guest-panic, got {g.qmp.events}")
    except Exception:
        for guest in guests:
            guest.dump()
        raise
    finally:
        for guest in guests:
            guest.stop()
        shutil.rmtree(sockdir, ignore_errors=True)

    for kind, values in sorted(timings.items()):
        print(f"boot-to-ready {kind}: " + ", ".join(f"{v:.2f} s" for v in values))
    print("PASS")


if __name__ == "__main__":
    try:
        main()
    except TestFailure as e:
        print(f"FAIL: {e}", flush=True)
        sys.exit(1)
