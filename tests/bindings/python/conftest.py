"""Fixtures of the Python binding tests: Hosts on the mock plugin (docs/mock-plugin.md), each
with its own state directory."""

import os

import pytest

# In sanitizer builds ctest preloads the ASan runtime into this interpreter (see
# tests/bindings/CMakeLists.txt); the programs the plugins start (qemu-img, QEMU) must not get it.
os.environ.pop("LD_PRELOAD", None)

import hci  # noqa: E402 -- after the environment is settled
from hci import v1  # noqa: E402

KINDS = ("compute", "storage", "network", "image", "backup")


@pytest.fixture(scope="session")
def plugin_dir():
    path = os.environ.get("HCI_PLUGIN_PATH")
    assert path, "HCI_PLUGIN_PATH must name the build tree's plugin directory (ctest sets it)"
    assert os.path.exists(os.path.join(path, "hci_mock.so")), f"no hci_mock.so in {path}"
    return path


@pytest.fixture
def make_config(tmp_path, plugin_dir):
    """make_config(**options_by_kind) -> a HostConfig with every kind bound to the mock, e.g.
    make_config(image={"operation_step_ms": 200})."""

    def make(log_level=v1.LOG_LEVEL_WARN, state_dir=None, **options):
        config = v1.HostConfig(node_name="py-test", state_dir=str(state_dir or tmp_path / "state"),
                               plugin_dirs=[plugin_dir], log_level=log_level)
        for kind in KINDS:
            binding = getattr(config.backends, kind)
            binding.plugin = "mock"
            if kind in options:
                binding.options.update(options[kind])
        return config

    return make


@pytest.fixture
def host(make_config):
    with hci.Host(make_config()) as h:
        yield h


def python_env(**extra):
    """The environment for another Python process that imports hci (with the ASan runtime
    preloaded again in sanitizer builds)."""
    env = dict(os.environ, **extra)
    if os.environ.get("HCI_TEST_LD_PRELOAD"):
        env["LD_PRELOAD"] = os.environ["HCI_TEST_LD_PRELOAD"]
    return env


def vm_request(name, **spec):
    spec.setdefault("vcpus", 1)
    spec.setdefault("memory_mib", 256)
    return v1.CreateVmRequest(metadata=v1.ObjectMeta(name=name),
                              spec=v1.VirtualMachineSpec(**spec))
