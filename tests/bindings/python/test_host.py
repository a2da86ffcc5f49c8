"""Host and every backend method, against the mock plugin: each binding reaches the C++ method
it names and converts request and response."""

import os
import subprocess
import sys
import threading

import pytest

import hci
from hci import v1
from conftest import KINDS, python_env, vm_request

MIB = 1 << 20


def test_config_plugins_and_capabilities(host, tmp_path, plugin_dir):
    config = host.config
    assert isinstance(config, v1.HostConfig)
    assert config.node_name == "py-test" and config.state_dir == str(tmp_path / "state")
    assert list(config.plugin_dirs) == [plugin_dir]
    mock = [p for p in host.plugins() if p.name == "mock"]
    assert len(mock) == 1 and mock[0].state == v1.PLUGIN_STATE_LOADED
    assert sorted(mock[0].kinds) == sorted(KINDS)
    caps = {kind: getattr(host, kind).capabilities() for kind in KINDS}
    assert isinstance(caps["compute"], v1.ComputeCapabilities) and caps["compute"].pause
    assert isinstance(caps["storage"], v1.StorageCapabilities) and caps["storage"].snapshots
    assert isinstance(caps["network"], v1.NetworkCapabilities) and caps["network"].vlan
    assert isinstance(caps["image"], v1.ImageCapabilities) and caps["image"].checksum
    assert isinstance(caps["backup"], v1.BackupCapabilities) and caps["backup"].restore
    assert "hci_backend_requests_total" in host.metrics()
    assert "kubevirt_vmi_phase_count" in host.compute.metrics()
    assert "py-test" in repr(host) and "open" in repr(host)


def test_compute_lifecycle(host):
    compute = host.compute
    vm = compute.create_vm(vm_request("demo"))
    assert isinstance(vm, v1.VirtualMachine) and vm.status.phase == v1.VM_PHASE_STOPPED
    assert compute.create_vm(vm_request("demo")).metadata.uid == vm.metadata.uid  # idempotent
    compute.create_vm(metadata=v1.ObjectMeta(name="other", labels={"app": "x"}),
                      spec=v1.VirtualMachineSpec(vcpus=2, memory_mib=512))
    assert [v.metadata.name for v in compute.list_vms(label_selector={"app": "x"}).vms] == \
        ["other"]
    assert compute.start_vm(name="demo").status.phase == v1.VM_PHASE_RUNNING
    assert compute.pause_vm(name="demo").status.phase == v1.VM_PHASE_PAUSED
    assert compute.resume_vm(name="demo").status.phase == v1.VM_PHASE_RUNNING
    assert compute.restart_vm(name="demo").status.restart_count == 1
    op = compute.migrate_vm(name="demo", target_node="node-b")
    assert op.wait(timeout=60).kind == "MigrateVm"
    assert compute.get_vm(name="demo").status.node == "node-b"
    log = compute.read_console(name="demo")
    assert isinstance(log.data, bytes) and b"hci-mock: ready" in log.data
    assert compute.read_console(name="demo", offset=log.next_offset).data == b""
    assert "kubevirt_vmi_vcpu_seconds_total" in compute.vm_metrics(name="demo").text
    with compute.attach_console(name="demo") as console:
        console.write("hello from python\n")
        assert console.read_until(b"from python", timeout=10).endswith(b"hello from python")
        assert console.read_until("\n", timeout=10) == b"\n"  # the rest stayed buffered
    with pytest.raises(hci.FailedPrecondition, match="console is closed"):
        console.read(0)
    with pytest.raises(hci.FailedPrecondition):
        compute.delete_vm(name="demo")  # running
    stopped = compute.stop_vm(name="demo")
    assert stopped.status.phase == v1.VM_PHASE_STOPPED
    assert stopped.status.reason == "GuestShutdown"
    assert compute.delete_vm(name="demo") is None
    with pytest.raises(hci.NotFound):
        compute.get_vm(name="demo")
    compute.delete_vm(name="demo")  # absent: fine


def test_console_closes_with_its_host(make_config):
    host = hci.Host(make_config())
    host.compute.create_vm(vm_request("demo"))
    host.compute.start_vm(name="demo")
    console = host.compute.attach_console(name="demo")
    host.close()
    with pytest.raises(hci.FailedPrecondition):
        console.read(0)
    console.close()


def test_storage(host):
    storage = host.storage
    volume = storage.create_volume(metadata=v1.ObjectMeta(name="data"),
                                   spec=v1.VolumeSpec(size_bytes=64 * MIB))
    assert volume.spec.size_bytes == 64 * MIB and volume.status.phase == v1.VOLUME_PHASE_AVAILABLE
    assert storage.get_volume(name="data").metadata.uid == volume.metadata.uid
    assert [v.metadata.name for v in storage.list_volumes().volumes] == ["data"]
    info = storage.attach_volume(name="data", attacher="vm-a")
    assert isinstance(info, v1.AttachInfo) and info.blockdev["driver"] == "null-co"
    with pytest.raises(hci.FailedPrecondition, match="vm-a"):
        storage.attach_volume(name="data", attacher="vm-b")
    snap = storage.create_snapshot(volume="data", metadata=v1.ObjectMeta(name="s1"))
    assert isinstance(snap, v1.Snapshot) and snap.volume == "data"
    assert storage.detach_volume(name="data", attacher="vm-a") is None
    assert storage.expand_volume(name="data", size_bytes=128 * MIB).spec.size_bytes == 128 * MIB
    with pytest.raises(hci.InvalidArgument, match="size_bytes"):
        storage.expand_volume(name="data", size_bytes=MIB)
    storage.create_snapshot(volume="data", metadata=v1.ObjectMeta(name="s2"))
    assert [s.metadata.name for s in storage.list_snapshots(volume="data").snapshots] == \
        ["s1", "s2"]
    changed = storage.get_changed_blocks(volume="data", from_snapshot="s1", to_snapshot="s2")
    assert isinstance(changed, v1.ChangedBlocks)
    assert isinstance(storage.revert_volume(volume="data", snapshot="s1"), v1.Volume)
    scrub = storage.scrub_volume(name="data", report_only=True)
    assert isinstance(scrub, hci.Operation)
    scrub.wait(timeout=10)
    last = storage.get_volume(name="data").status.last_scrub
    assert last.report_only and last.bytes_compared == 128 * MIB and last.mismatched_bytes == 0
    with pytest.raises(hci.NotFound, match="missing"):
        storage.scrub_volume(name="missing")
    storage.delete_snapshot(volume="data", name="s2")
    assert [s.metadata.name for s in storage.list_snapshots(volume="data").snapshots] == ["s1"]
    storage.delete_volume(name="data")
    assert not storage.list_volumes().volumes


def test_network(host):
    network = host.network
    net = network.create_network(metadata=v1.ObjectMeta(name="vlan100"),
                                 spec=v1.NetworkSpec(type=v1.NETWORK_TYPE_L2_VLAN, vlan_id=100))
    assert net.status.bridge == "mgmt-br"
    with pytest.raises(hci.InvalidArgument, match=r"spec\.vlan_id"):
        network.create_network(metadata=v1.ObjectMeta(name="bad"),
                               spec=v1.NetworkSpec(type=v1.NETWORK_TYPE_L2_VLAN, vlan_id=5000))
    assert network.get_network(name="vlan100").spec.vlan_id == 100
    assert len(network.list_networks().networks) == 1
    port = network.create_port(metadata=v1.ObjectMeta(name="p1"),
                               spec=v1.PortSpec(network="vlan100"))
    assert port.status.mac_address
    assert network.get_port(name="p1").status.mac_address == port.status.mac_address
    assert [p.metadata.name for p in network.list_ports(network="vlan100").ports] == ["p1"]
    with pytest.raises(hci.FailedPrecondition, match="p1"):
        network.delete_network(name="vlan100")
    network.delete_port(name="p1")
    network.delete_network(name="vlan100")
    with pytest.raises(hci.NotFound):
        network.get_network(name="vlan100")


def test_image(host):
    images = host.image
    images.import_image(metadata=v1.ObjectMeta(name="img"),
                        spec=v1.ImageSpec(url="http://example.invalid/disk.qcow2")).wait(60)
    assert images.get_image(name="img").status.phase == v1.IMAGE_PHASE_READY
    assert [i.metadata.name for i in images.list_images().images] == ["img"]
    images.delete_image(name="img")
    assert not images.list_images().images


def test_backup_and_restore(host):
    host.storage.create_volume(metadata=v1.ObjectMeta(name="data"),
                               spec=v1.VolumeSpec(size_bytes=64 * MIB))
    backup = host.backup
    target = backup.create_backup_target(metadata=v1.ObjectMeta(name="nfs"),
                                         spec=v1.BackupTargetSpec(url="nfs://127.0.0.1/backups"))
    assert target.status.phase == v1.BACKUP_TARGET_PHASE_AVAILABLE
    assert backup.get_backup_target(name="nfs").spec.url == "nfs://127.0.0.1/backups"
    assert len(backup.list_backup_targets().targets) == 1
    backup.create_backup(metadata=v1.ObjectMeta(name="b1"),
                         spec=v1.BackupSpec(target="nfs", volume="data")).wait(timeout=60)
    assert backup.get_backup(target="nfs", name="b1").status.phase == v1.BACKUP_PHASE_COMPLETED
    assert [b.metadata.name for b in backup.list_backups(target="nfs").backups] == ["b1"]
    backup.restore_backup(target="nfs", backup="b1",
                          volume=v1.ObjectMeta(name="restored")).wait(timeout=60)
    assert host.storage.get_volume(name="restored").spec.size_bytes == 64 * MIB
    backup.delete_backup(target="nfs", name="b1")
    backup.delete_backup_target(name="nfs")
    assert not backup.list_backup_targets().targets


def test_fault_injector_inject_and_clear(host):
    injector = host.storage.fault_injector
    assert isinstance(injector, hci.FaultInjector)
    injector.inject(v1.Fault(operation="ListVolumes", code=hci.StatusCode.UNAVAILABLE))
    for _ in range(2):  # count 0: until cleared
        with pytest.raises(hci.Unavailable):
            host.storage.list_volumes()
    injector.clear()
    assert not host.storage.list_volumes().volumes
    with pytest.raises(hci.InvalidArgument, match="fault.operation"):
        injector.inject(operation="NoSuchMethod", code=14)


def test_open_from_yaml_and_defaults(tmp_path, plugin_dir, monkeypatch):
    path = tmp_path / "host.yaml"
    path.write_text(f"nodeName: yaml-node\nstateDir: {tmp_path / 'state'}\n"
                    f"pluginDirs: [{plugin_dir}]\nlogLevel: warn\n"
                    "backends:\n  compute: {plugin: mock}\n")
    config = hci.Host.load_config(path)
    assert config.node_name == "yaml-node" and config.log_level == v1.LOG_LEVEL_WARN
    with hci.Host(str(path)) as host:
        assert host.config.node_name == "yaml-node"
        with pytest.raises(hci.FailedPrecondition):
            host.storage
    path.write_text("nodeName: [not, a, string]\n")
    with pytest.raises(hci.InvalidArgument, match="node"):
        hci.Host.load_config(path)
    monkeypatch.setenv("HCI_STATE_DIR", str(tmp_path / "from-env"))
    assert hci.Host.default_state_dir() == str(tmp_path / "from-env")
    with pytest.raises(TypeError, match="HostConfig"):
        hci.Host(42)


def test_one_host_per_state_directory(make_config):
    with hci.Host(make_config()):
        with pytest.raises(hci.FailedPrecondition, match="in use"):
            hci.Host(make_config())
    hci.Host.open(make_config()).close()  # released by close()


def test_host_closes_when_dropped_and_at_close(make_config):
    host = hci.Host(make_config())
    compute = host.compute
    del host  # the backend object keeps it open
    compute.create_vm(vm_request("demo"))
    assert compute.get_vm(name="demo").metadata.name == "demo"
    del compute
    with hci.Host(make_config()) as again:  # the state directory was released
        assert not again.closed
    assert again.closed


def test_threads_may_share_a_host(host):
    names = []
    thread = threading.Thread(target=lambda: names.append(len(host.compute.list_vms().vms)))
    thread.start()
    thread.join(timeout=30)
    assert names == [0]


def test_environment_plugin_path(tmp_path, plugin_dir):
    # An empty plugin_dirs takes $HCI_PLUGIN_PATH, which ctest sets.
    assert os.environ["HCI_PLUGIN_PATH"] == plugin_dir
    config = v1.HostConfig(state_dir=str(tmp_path / "s"),
                           backends=v1.Backends(compute=v1.BackendBinding(plugin="mock")))
    with hci.Host(config) as host:
        assert list(host.config.plugin_dirs) == [plugin_dir]
        assert hci.is_valid_name(host.config.node_name)


EXIT_SCRIPT = """
import sys, hci
from hci import v1
host = hci.Host(v1.HostConfig.FromString(bytes.fromhex(sys.argv[1])))
events = host.subscribe(lambda event: None)
op = host.image.import_image(metadata=v1.ObjectMeta(name="img"),
                             spec=v1.ImageSpec(file="/var/tmp/disk.raw"))
op.on_progress(lambda status: None)
print("exiting while", op.id, "runs", flush=True)
"""


def test_the_interpreter_exits_cleanly_with_a_host_open(make_config):
    # Nothing closed: hci's atexit hook closes the Host while its operation thread still calls
    # the progress callback, before the interpreter finalizes.
    config = make_config(image={"operation_step_ms": 300})
    run = subprocess.run([sys.executable, "-c", EXIT_SCRIPT, config.SerializeToString().hex()],
                         env=python_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                         text=True, timeout=60)
    assert run.returncode == 0, run.stdout
    assert "exiting while op-1 runs" in run.stdout
