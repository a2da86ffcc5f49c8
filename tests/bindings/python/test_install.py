"""`cmake --install` puts an importable hci package under the prefix, whose extension finds the
installed libhci.so through its RPATH (ctest python.install)."""

import ast
import os
import pathlib
import subprocess
import sys

import pytest

pytestmark = pytest.mark.install

SCRIPT = """
import hci, sys
from hci import v1
config = v1.HostConfig(state_dir=sys.argv[1],
                       backends=v1.Backends(compute=v1.BackendBinding(plugin="mock")))
with hci.Host(config) as host:
    host.compute.create_vm(metadata=v1.ObjectMeta(name="demo"),
                           spec=v1.VirtualMachineSpec(vcpus=1, memory_mib=64))
    print("vm", host.compute.start_vm(name="demo").metadata.name)
    print("plugin", [p.path for p in host.plugins() if p.name == "mock"][0])
print("hci", hci.__file__)
print("ext", hci._hci.__file__)
with open("/proc/self/maps") as maps:
    print("libhci", sorted({line.split()[-1] for line in maps if "/libhci.so" in line}))
"""


def test_installed_package_imports_and_runs(tmp_path):
    build = os.environ["HCI_BUILD_DIR"]
    prefix = tmp_path / "prefix"
    subprocess.run([os.environ["HCI_CMAKE"], "--install", build, "--prefix", str(prefix)],
                   check=True, stdout=subprocess.DEVNULL, timeout=240)
    site = prefix / os.environ["HCI_PYTHON_INSTALL_DIR"]
    package = site / "hci"
    for name in ("__init__.py", "__init__.pyi", "py.typed", "v1/__init__.py", "v1/__init__.pyi",
                 "v1/compute_pb2.py", "v1/compute_pb2.pyi"):
        assert (package / name).is_file(), name
    extensions = list(package.glob("_hci.cpython-*.so"))
    assert len(extensions) == 1
    dynamic = subprocess.run(["readelf", "-d", str(extensions[0])], check=True,
                             stdout=subprocess.PIPE, text=True).stdout
    assert "$ORIGIN/" in dynamic and build not in dynamic

    plugins = prefix / os.environ["HCI_INSTALL_LIBDIR"] / "hci" / "plugins"
    env = {"PATH": os.environ["PATH"], "PYTHONPATH": str(site), "HCI_PLUGIN_PATH": str(plugins),
           "PYTHONDONTWRITEBYTECODE": "1"}
    if os.environ.get("HCI_TEST_LD_PRELOAD"):
        env["LD_PRELOAD"] = os.environ["HCI_TEST_LD_PRELOAD"]
        env["ASAN_OPTIONS"] = os.environ.get("ASAN_OPTIONS", "")
    run = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path / "state")], env=env,
                         cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                         text=True, timeout=120)
    assert run.returncode == 0, run.stdout
    lines = dict(line.split(" ", 1) for line in run.stdout.splitlines())
    assert lines["vm"] == "demo"
    for key in ("hci", "ext", "plugin"):
        assert pathlib.Path(lines[key]).resolve().is_relative_to(prefix.resolve()), lines
    libhci = ast.literal_eval(lines["libhci"])
    assert len(libhci) == 1
    assert pathlib.Path(libhci[0]).resolve().is_relative_to(prefix.resolve()), libhci
