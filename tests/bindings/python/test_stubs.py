"""The public surface: complete against the C++ headers, described by the type stubs, and
documented."""

import ast
import inspect
import pathlib
import pydoc
import re

import pytest

import hci
from hci import _hci, v1

SOURCE = pathlib.Path(__file__).resolve().parents[3]
PACKAGE = pathlib.Path(hci.__file__).parent
STUB = ast.parse((PACKAGE / "__init__.pyi").read_text())


def snake(name):
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


def virtual_methods(header, cls):
    """The virtual methods declared in `class HCI_EXPORT <cls>` of include/hci/<header>."""
    text = (SOURCE / "include" / "hci" / header).read_text()
    body = text[text.index(f"class HCI_EXPORT {cls} "):]
    body = body[:body.index("\n};")]
    return {m for m in re.findall(r"virtual\s+(?!~)[^;{(]*?\b(\w+)\s*\(", body)}


@pytest.mark.parametrize("header,cpp,py", [
    ("compute.h", "ComputeBackend", hci.ComputeBackend),
    ("storage.h", "StorageBackend", hci.StorageBackend),
    ("network.h", "NetworkBackend", hci.NetworkBackend),
    ("image.h", "ImageBackend", hci.ImageBackend),
    ("backup.h", "BackupBackend", hci.BackupBackend),
    ("backend.h", "Backend", hci.ComputeBackend),
    ("compute.h", "ConsoleStream", hci.Console),
])
def test_every_virtual_method_of_the_headers_is_bound(header, cpp, py):
    methods = virtual_methods(header, cpp)
    assert len(methods) >= 2, f"could not read {cpp} from {header}"
    missing = sorted(m for m in methods if not hasattr(py, snake(m)))
    assert not missing, f"{py.__name__} lacks {missing}"


def test_host_and_operation_methods_are_bound():
    host = (SOURCE / "include" / "hci" / "host.h").read_text()
    declared = set(re.findall(r"^\s+(?:static\s+)?[\w:<>*, ]+?\b(\w+)\((?:[^)]*)\)(?: const)?;",
                              host, re.M))
    # logger() hands out the C++ Logger for the embedder's own lines: Python has logging.
    declared -= {"Host", "logger"}
    assert {"Open", "LoadConfig", "compute", "plugins", "Subscribe", "Metrics"} <= declared
    missing = sorted(d for d in declared if not hasattr(hci.Host, snake(d)))
    assert not missing, f"hci.Host lacks {missing}"
    op = (SOURCE / "include" / "hci" / "operation.h").read_text()
    op = op[op.index("class HCI_EXPORT Operation {"):op.index("class HCI_EXPORT OperationControl")]
    declared = set(re.findall(r"^  (?:[\w:<>]+ )+(\w+)\(", op, re.M)) - {"valid", "Operation"}
    missing = sorted(d for d in declared if not hasattr(hci.Operation, snake(d)))
    assert not missing and {"Wait", "Cancel", "OnProgress"} <= declared, missing


def test_every_extension_method_is_wrapped():
    # What _hci offers is reachable from the public classes (fault injection through
    # backend.fault_injector).
    wrapped = {"has_fault_injector", "inject_fault", "clear_faults"}
    for name in ("ComputeBackend", "StorageBackend", "NetworkBackend", "ImageBackend",
                 "BackupBackend", "Operation", "Host", "Console", "Subscription"):
        raw = getattr(_hci, name)
        public = getattr(hci, name)
        for method in (m for m in vars(raw) if not m.startswith("_")):
            assert method in wrapped or hasattr(public, method), f"hci.{name} lacks {method}"


def stub_classes():
    return {n.name: n for n in STUB.body if isinstance(n, ast.ClassDef)}


def stub_names():
    names = set()
    for node in STUB.body:
        if isinstance(node, (ast.ClassDef, ast.FunctionDef)):
            names.add(node.name)
        elif isinstance(node, ast.AnnAssign):
            names.add(node.target.id)
        elif isinstance(node, ast.ImportFrom):
            names.update(a.asname for a in node.names if a.asname)
    return {n for n in names if not n.startswith("_")}


def test_stub_declares_exactly_the_public_names():
    declared = stub_names()
    assert declared == set(hci.__all__), (
        f"missing from the stub: {sorted(set(hci.__all__) - declared)}; "
        f"not public: {sorted(declared - set(hci.__all__))}")


def class_members(node, classes):
    members = set()
    for item in node.body:
        if isinstance(item, ast.FunctionDef):
            members.add(item.name)
        elif isinstance(item, ast.AnnAssign):
            members.add(item.target.id)
        elif isinstance(item, ast.Assign):
            members.update(t.id for t in item.targets)
    for base in node.bases:
        if isinstance(base, ast.Name) and base.id in classes:
            members |= class_members(classes[base.id], classes)
    return members


def runtime_members(cls):
    """Public names defined by hci's own code in cls and its hci base classes."""
    names = set()
    for klass in cls.__mro__:
        if klass.__module__ == "hci" or klass.__module__.startswith("hci."):
            names.update(n for n in vars(klass) if not n.startswith("_"))
    if issubclass(cls, tuple):  # NamedTuple fields
        names |= set(cls._fields)
    return names


@pytest.mark.parametrize("name", sorted(n for n in hci.__all__
                                        if isinstance(getattr(hci, n), type)))
def test_stub_classes_match_the_runtime(name):
    classes = stub_classes()
    cls = getattr(hci, name)
    stub = class_members(classes[name], classes)
    public_stub = {m for m in stub if not m.startswith("_") or m in ("__enter__", "__exit__")}
    runtime = runtime_members(cls)
    if issubclass(cls, hci.Error):
        runtime |= {"code", "message"}  # instance attributes
    if issubclass(cls, hci.StatusCode) or issubclass(cls, hci.LogLevel):
        runtime = {m.name for m in cls}
    assert {m for m in public_stub if not m.startswith("__")} == runtime
    for dunder in ("__enter__", "__exit__", "__iter__", "__next__"):
        assert (dunder in stub) == (dunder in vars(cls)), f"{name}.{dunder}"


def test_every_public_name_has_a_docstring():
    undocumented = []
    for name in hci.__all__:
        obj = getattr(hci, name)
        if name == "v1" or not (inspect.isclass(obj) or callable(obj)):
            continue
        if not (obj.__doc__ or "").strip():
            undocumented.append(name)
        if inspect.isclass(obj) and not issubclass(obj, (hci.Error, tuple, int)):
            for member, value in vars(obj).items():
                if member.startswith("_"):
                    continue
                if not (getattr(value, "__doc__", None) or "").strip():
                    undocumented.append(f"{name}.{member}")
    assert not undocumented


def test_extension_defs_have_docstrings():
    for name, obj in vars(_hci).items():
        if name.startswith("__") or not (callable(obj) or isinstance(obj, type)):
            continue
        assert obj.__doc__ and obj.__doc__.strip(), name
        if isinstance(obj, type):
            for member, value in vars(obj).items():
                if not member.startswith("_"):
                    assert (value.__doc__ or "").strip(), f"{name}.{member}"


def test_help_on_host_is_useful():
    text = pydoc.render_doc(hci.Host, renderer=pydoc.plaintext)
    for expected in ("class Host", "compute", "The :class:`ComputeBackend`", "Raises",
                     "subscribe(self, callback)", "FailedPrecondition", "close(self)"):
        assert expected in text
    text = pydoc.render_doc(hci.ComputeBackend, renderer=pydoc.plaintext)
    assert "create_vm(self, request=None, /, **fields)" in text and "AlreadyExists" in text


def test_package_ships_typing_files():
    assert (PACKAGE / "py.typed").exists()
    assert (PACKAGE / "v1" / "__init__.pyi").exists()
    for module in v1._MODULES:
        assert pathlib.Path(module.__file__).with_suffix(".pyi").exists(), module.__name__


def test_v1_exports_every_message_and_enum():
    for module in v1._MODULES:
        for name in module.DESCRIPTOR.message_types_by_name:
            assert getattr(v1, name) is getattr(module, name)
        for name, enum in module.DESCRIPTOR.enum_types_by_name.items():
            assert getattr(v1, name) is getattr(module, name)
            for value in enum.values:
                assert getattr(v1, value.name) == value.number
    protos = {p.stem for p in (SOURCE / "proto" / "hci" / "v1").glob("*.proto")}
    assert {m.__name__.rsplit(".", 1)[1][:-len("_pb2")] for m in v1._MODULES} == protos
