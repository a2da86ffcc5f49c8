#!/usr/bin/python3
"""Boots libhci's test guest from Python, waits for its console marker, snapshots its volume and
stops it gracefully: the `hci` package's end-to-end sample (docs/python.md).

    PYTHONPATH=build/debug/python HCI_PLUGIN_PATH=build/debug/lib/hci/plugins \\
        /usr/bin/python3 samples/python/boot_snapshot_stop.py --guest-dir build/debug/test-guest

The guest comes from tools/build-test-guest (docs/test-guest.md). The Host uses the kvm plugin
for compute (TCG when KVM cannot run the guest) and the local plugin for images and volumes:

  1. import the guest's disk as image "sample-guest" (an Operation, with progress),
  2. make volume "sample-root" from it and VM "sample" booting the guest's kernel on it,
  3. start the VM and read its serial console until "hci-test-guest: disk ok" (the guest
     mounted its disk and wrote to it),
  4. snapshot the volume as "booted": the local plugin refuses while QEMU holds the file
     (hci.FailedPrecondition), so the sample then stops the VM first and snapshots the
     detached volume,
  5. stop the VM with the ACPI power button: it ends Stopped, reason GuestShutdown,
  6. delete what it made (unless --keep) and close the Host.

Exits 0 when the VM ended Stopped with reason GuestShutdown and the snapshot is ready to use.
"""

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time

import hci
from hci import v1

IMAGE, VOLUME, VM, SNAPSHOT = "sample-guest", "sample-root", "sample", "booted"
MARKERS = ("hci-test-guest: ready", "hci-test-guest: disk ok")


def log(message):
    # Callbacks print from libhci's threads too: one write per line.
    sys.stdout.write(f"[{time.strftime('%H:%M:%S')}] {message}\n")
    sys.stdout.flush()


def load_guest_env(guest_dir):
    """The variables of guest.env (written with printf %q): sourced by bash, read back."""
    out = subprocess.run(["bash", "-c", 'set -a && . "$1" && env -0', "bash",
                          os.path.join(guest_dir, "guest.env")],
                         check=True, stdout=subprocess.PIPE).stdout.decode()
    env = dict(item.split("=", 1) for item in out.split("\0") if "=" in item)
    for key in ("KERNEL", "INITRD", "DISK", "CMDLINE"):
        if not env.get(key):
            raise SystemExit(f"{guest_dir}/guest.env: {key} is missing; run "
                             "tools/build-test-guest first")
    return env


def on_event(event):
    if event.reason == "VmPhaseChanged":
        log(f"event: vm/{event.object.name} {v1.VmPhase.Name(event.vm_phase.old_phase)} -> "
            f"{v1.VmPhase.Name(event.vm_phase.new_phase)}")


def import_image(host, disk):
    op = host.image.import_image(metadata=v1.ObjectMeta(name=IMAGE),
                                 spec=v1.ImageSpec(file=disk, format=v1.IMAGE_FORMAT_RAW))
    reported = set()

    def progress(status):
        total = status.progress.total
        quarter = 4 * status.progress.done // total if total else 0
        if quarter not in reported:
            reported.add(quarter)
            log(f"import {status.id}: {status.progress.done}/{total} {status.progress.unit}")

    op.on_progress(progress)
    final = op.wait(timeout=300)  # raises hci.DataLoss & co. when the import fails
    log(f"image {IMAGE}: {v1.OperationPhase.Name(final.phase)}")


def wait_for_console(compute, markers, timeout):
    """Reads the console log until each marker has started a complete line, in order."""
    deadline = time.monotonic() + timeout
    offset, pending, wanted = 0, b"", list(markers)
    while wanted:
        chunk = compute.read_console(name=VM, offset=offset)
        offset = chunk.next_offset
        pending += chunk.data
        *lines, pending = pending.split(b"\n")
        for line in lines:
            text = line.decode(errors="replace").rstrip("\r")
            if wanted and text.startswith(wanted[0]):
                log(f"console: {text}")
                wanted.pop(0)
        if wanted and time.monotonic() > deadline:
            raise hci.DeadlineExceeded(f"console: no {wanted[0]!r} line within {timeout} s")
        if wanted and not chunk.data:
            time.sleep(0.2)


def describe(vm):
    return f"{v1.VmPhase.Name(vm.status.phase)} ({vm.status.reason})"


def run(host, guest, keep):
    compute, storage = host.compute, host.storage
    import_image(host, guest["DISK"])
    storage.create_volume(metadata=v1.ObjectMeta(name=VOLUME),
                          spec=v1.VolumeSpec(source=v1.VolumeSource(image=IMAGE)))
    log(f"volume {VOLUME} made from image {IMAGE}")
    compute.create_vm(
        metadata=v1.ObjectMeta(name=VM, labels={"app": "python-sample"}),
        spec=v1.VirtualMachineSpec(
            vcpus=1, memory_mib=256,
            kernel_boot=v1.KernelBoot(kernel_path=guest["KERNEL"], initrd_path=guest["INITRD"],
                                      cmdline=guest["CMDLINE"]),
            disks=[v1.Disk(name="root", volume=VOLUME, boot_order=1)],
            run_strategy=v1.RUN_STRATEGY_MANUAL, accelerator="auto",
            stop_grace_period_ms=60000))
    vm = compute.start_vm(name=VM)
    log(f"vm {VM}: {describe(vm)}, accelerator {vm.status.accelerator} "
        f"({vm.status.accelerator_reason})")
    wait_for_console(compute, MARKERS, timeout=180)

    try:
        snapshot = storage.create_snapshot(volume=VOLUME, metadata=v1.ObjectMeta(name=SNAPSHOT))
        log(f"snapshot {SNAPSHOT} taken while the VM runs")
        vm = compute.stop_vm(name=VM)
    except hci.FailedPrecondition as e:
        log(f"live snapshot refused ({e.message}); stopping the VM first")
        vm = compute.stop_vm(name=VM)
        snapshot = storage.create_snapshot(volume=VOLUME, metadata=v1.ObjectMeta(name=SNAPSHOT))
    log(f"vm {VM}: {describe(vm)}")
    snapshots = storage.list_snapshots(volume=VOLUME).snapshots
    log(f"snapshot {snapshot.metadata.name} of {snapshot.volume}: ready_to_use="
        f"{snapshot.status.ready_to_use}, {snapshot.status.size_bytes} bytes; volume "
        f"{VOLUME} has {[s.metadata.name for s in snapshots]}")

    ok = (vm.status.phase == v1.VM_PHASE_STOPPED and vm.status.reason == "GuestShutdown"
          and snapshot.status.ready_to_use and SNAPSHOT in [s.metadata.name for s in snapshots])
    if not keep:
        cleanup(host)
    return ok


def cleanup(host):
    """Deletes the VM (stopping it if need be), the volume with its snapshots, and the image."""
    host.compute.delete_vm(name=VM, force=True)
    host.storage.delete_volume(name=VOLUME)
    host.image.delete_image(name=IMAGE)
    log("deleted the vm, the volume and the image")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--guest-dir", default=os.environ.get("HCI_TEST_GUEST"),
                        help="tools/build-test-guest's output (default: $HCI_TEST_GUEST)")
    parser.add_argument("--state-dir", help="the Host's state directory (default: a temporary "
                        "one, removed at the end)")
    parser.add_argument("--plugin-dir", help="where hci_kvm.so and hci_local.so are (default: "
                        "$HCI_PLUGIN_PATH, else the installed plugin directory)")
    parser.add_argument("--keep", action="store_true", help="leave the VM, volume and image")
    args = parser.parse_args()
    if not args.guest_dir:
        parser.error("--guest-dir (or $HCI_TEST_GUEST) is required")

    guest = load_guest_env(args.guest_dir)
    state_dir = args.state_dir or tempfile.mkdtemp(prefix="hci-python-sample.")
    config = v1.HostConfig(
        node_name="python-sample", state_dir=state_dir, log_level=v1.LOG_LEVEL_WARN,
        plugin_dirs=[args.plugin_dir] if args.plugin_dir else [],
        backends=v1.Backends(compute=v1.BackendBinding(plugin="kvm"),
                             storage=v1.BackendBinding(plugin="local"),
                             image=v1.BackendBinding(plugin="local")))
    log(f"hci {hci.__version__}, state dir {state_dir}")
    try:
        with hci.Host(config, on_event=on_event) as host:
            try:
                ok = run(host, guest, args.keep)
            except BaseException:
                if not args.keep:
                    # QEMU runs in its own session and would outlive this script.
                    try:
                        cleanup(host)
                    except hci.Error as e:
                        log(f"cleanup failed: {type(e).__name__}: {e}")
                raise
    except hci.Error as e:
        log(f"error: {type(e).__name__}: {e}")
        return 1
    finally:
        if not args.state_dir and not args.keep:
            shutil.rmtree(state_dir, ignore_errors=True)
    if not ok:
        log("error: the VM did not end Stopped (GuestShutdown) with a ready snapshot")
        return 1
    log("done: the guest booted, its volume was snapshotted and it shut down on the power "
        "button")
    return 0


if __name__ == "__main__":
    sys.exit(main())
