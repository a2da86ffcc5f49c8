"""samples/python/boot_snapshot_stop.py end to end: the real test guest under QEMU (TCG where
KVM cannot run it), the kvm and local plugins (ctest python.sample, label guest)."""

import os
import subprocess
import sys

import pytest

import hci
from hci import v1

pytestmark = pytest.mark.guest


@pytest.fixture(scope="module")
def guest_dir():
    builder = os.environ["HCI_BUILD_TEST_GUEST"]
    directory = os.environ["HCI_TEST_GUEST_DIR"]
    # Cached: a no-op when the guest is already built (docs/test-guest.md).
    subprocess.run([builder, directory], check=True, timeout=600, stdout=subprocess.DEVNULL)
    return directory


def sample_argv(*args):
    sample = os.environ["HCI_PYTHON_SAMPLE"]
    preload = os.environ.get("HCI_TEST_LD_PRELOAD")
    if not preload:
        return [sys.executable, sample, *args]
    # Sanitizer build: the interpreter needs the ASan runtime preloaded, QEMU must not get it.
    bootstrap = ("import os, runpy, sys; os.environ.pop('LD_PRELOAD', None); "
                 "sys.argv = sys.argv[1:]; runpy.run_path(sys.argv[0], run_name='__main__')")
    return [sys.executable, "-c", bootstrap, sample, *args]


def test_sample_boots_snapshots_and_stops_the_guest(guest_dir, tmp_path, plugin_dir):
    state = tmp_path / "state"
    env = dict(os.environ)
    if env.get("HCI_TEST_LD_PRELOAD"):
        env["LD_PRELOAD"] = env["HCI_TEST_LD_PRELOAD"]
    run = subprocess.run(
        sample_argv("--guest-dir", guest_dir, "--state-dir", str(state), "--plugin-dir",
                    plugin_dir),
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=540, text=True)
    print(run.stdout)
    assert run.returncode == 0
    out = run.stdout
    for expected in ("image sample-guest: OPERATION_PHASE_SUCCEEDED",
                     "console: hci-test-guest: ready", "console: hci-test-guest: disk ok boots=1",
                     "vm sample: VM_PHASE_STOPPED (GuestShutdown)",
                     "snapshot booted of sample-root: ready_to_use=True",
                     "event: vm/sample VM_PHASE_STARTING -> VM_PHASE_RUNNING",
                     "deleted the vm, the volume and the image"):
        assert expected in out
    assert out.index("disk ok") < out.index("snapshot booted")
    # It cleaned up and released the state directory: a new Host opens it and finds nothing.
    config = v1.HostConfig(node_name="python-sample", state_dir=str(state),
                           plugin_dirs=[plugin_dir],
                           backends=v1.Backends(compute=v1.BackendBinding(plugin="kvm"),
                                                storage=v1.BackendBinding(plugin="local"),
                                                image=v1.BackendBinding(plugin="local")))
    with hci.Host(config) as host:
        assert not host.compute.list_vms().vms
        assert not host.storage.list_volumes().volumes
        assert not host.image.list_images().images
