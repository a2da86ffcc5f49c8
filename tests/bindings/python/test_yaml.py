"""YAML, manifests and names through libhci's own rules."""

import pytest

import hci
from hci import v1


def test_parse_yaml_uses_libhci_rules():
    spec = hci.parse_yaml("vcpus: 2\nmemoryMib: 1Gi\nrunStrategy: RerunOnFailure\n"
                          "disks: [{name: root, volume: data, bus: virtio}]\n",
                          v1.VirtualMachineSpec)
    assert isinstance(spec, v1.VirtualMachineSpec)
    assert spec.memory_mib == 1024 and spec.run_strategy == v1.RUN_STRATEGY_RERUN_ON_FAILURE
    assert spec.disks[0].bus == v1.DISK_BUS_VIRTIO


def test_parse_yaml_errors_name_the_field_and_line():
    with pytest.raises(hci.InvalidArgument, match=r"disks\[0\]\.bus.*line 2"):
        hci.parse_yaml("vcpus: 1\ndisks: [{bus: virtoi}]\n", v1.VirtualMachineSpec)
    with pytest.raises(TypeError):
        hci.parse_yaml("a: 1", "hci.v1.VirtualMachineSpec")


def test_to_yaml_round_trips():
    vm = v1.VirtualMachine(metadata=v1.ObjectMeta(name="demo", labels={"app": "x"}),
                           spec=v1.VirtualMachineSpec(vcpus=2, memory_mib=256,
                                                      firmware=v1.FIRMWARE_UEFI))
    text = hci.to_yaml(vm)
    assert "memoryMib: 256" in text
    assert hci.parse_yaml(text, v1.VirtualMachine) == vm
    # A google.protobuf.Value with no kind set has no YAML form.
    binding = v1.BackendBinding(plugin="mock")
    binding.options.fields["latency_ms"].SetInParent()
    with pytest.raises(hci.InvalidArgument, match=r"^options\.latency_ms: .*no kind"):
        hci.to_yaml(binding)


def test_load_yaml_file(tmp_path):
    path = tmp_path / "net.yaml"
    path.write_text("type: L2_VLAN\nvlanId: 100\n")
    assert hci.load_yaml_file(path, v1.NetworkSpec).vlan_id == 100
    with pytest.raises(hci.NotFound):
        hci.load_yaml_file(tmp_path / "missing.yaml", v1.NetworkSpec)


def test_parse_manifests(monkeypatch):
    monkeypatch.setenv("HCI_PY_SIZE", "2Gi")
    objects = hci.parse_manifests(
        "kind: Volume\nmetadata: {name: data}\nspec:\n  sizeBytes: ${HCI_PY_SIZE}\n---\n"
        "kind: Network\nmetadata: {name: net}\nspec: {type: untagged}\n")
    assert [(o.kind, o.document, o.line) for o in objects] == [("Volume", 1, 1),
                                                               ("Network", 2, 6)]
    assert isinstance(objects[0].object, v1.Volume)
    assert objects[0].object.spec.size_bytes == 2 << 30
    with pytest.raises(hci.InvalidArgument, match=r"document 1 \(line 1\)"):
        hci.parse_manifests("kind: Nope\nmetadata: {name: x}\n")


def test_names():
    assert hci.is_valid_name("demo-1")
    assert not hci.is_valid_name("Demo_1")
    assert not hci.is_valid_name("a" * (hci.MAX_NAME_LENGTH + 1))
    hci.validate_name("metadata.name", "ok")
    with pytest.raises(hci.InvalidArgument, match=r"^metadata\.name: \"a/b\""):
        hci.validate_name("metadata.name", "a/b")
