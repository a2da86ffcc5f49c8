"""Status codes map to the hci.Error hierarchy, from every path an error can take."""

import pickle

import pytest

import hci
from hci import _errors, _hci, v1
from conftest import vm_request

ERROR_CODES = [code for code in hci.StatusCode if code != hci.StatusCode.OK]


def test_every_code_of_status_h_has_its_own_class():
    # The C++ names (hci::StatusCodeName) are the class names; the enum ends at the last one.
    names = set()
    for code in ERROR_CODES:
        name = _hci.status_code_name(int(code))
        cls = getattr(hci, name)
        assert issubclass(cls, hci.Error) and cls is not hci.Error
        assert cls.CODE == code
        assert name in hci.__all__
        names.add(name)
    assert len(names) == 16
    # Past the last code the C++ side has no name any more: nothing was left out.
    assert _hci.status_code_name(len(hci.StatusCode)).startswith("Code(")


@pytest.mark.parametrize("code", ERROR_CODES, ids=lambda c: c.name)
def test_error_from_status_builds_the_subclass(code):
    error = _errors.error_from_status(int(code), "what went wrong")
    assert type(error).__name__ == _hci.status_code_name(int(code))
    assert error.code == code and isinstance(error.code, hci.StatusCode)
    assert error.message == "what went wrong" == str(error)
    assert isinstance(error, hci.Error)


def test_codes_outside_the_enum_give_the_base_class():
    error = _errors.error_from_status(99, "odd")
    assert type(error) is hci.Error
    assert error.code == 99 and error.message == "odd"
    assert str(error) == "Code(99): odd"


def test_errors_pickle_with_code_and_message():
    error = pickle.loads(pickle.dumps(hci.NotFound("vm \"x\" does not exist")))
    assert type(error) is hci.NotFound
    assert error.code == hci.StatusCode.NOT_FOUND and error.message == "vm \"x\" does not exist"


@pytest.mark.parametrize("code", ERROR_CODES, ids=lambda c: c.name)
def test_a_backend_status_raises_the_mapped_exception(host, code):
    compute = host.compute
    compute.fault_injector.inject(operation="GetVm", code=int(code), count=1,
                                  message=f"injected {code.name}")
    with pytest.raises(hci.Error) as info:
        compute.get_vm(name="some-vm")
    assert type(info.value) is getattr(hci, _hci.status_code_name(int(code)))
    assert info.value.code == code
    assert f"injected {code.name}" in info.value.message
    # count=1: the next call reaches the mock's real answer.
    with pytest.raises(hci.NotFound, match="some-vm"):
        compute.get_vm(name="some-vm")


def test_real_errors_name_the_field_or_object(host):
    compute = host.compute
    with pytest.raises(hci.InvalidArgument, match=r"spec\.vcpus"):
        compute.create_vm(vm_request("demo", vcpus=0))
    with pytest.raises(hci.InvalidArgument, match="not a valid name"):
        compute.get_vm(name="Not_A_Name")
    compute.create_vm(vm_request("demo"))
    with pytest.raises(hci.AlreadyExists):
        compute.create_vm(vm_request("demo", vcpus=2))
    with pytest.raises(hci.FailedPrecondition):
        compute.pause_vm(name="demo")  # stopped, not running
    with pytest.raises(hci.OutOfRange):
        compute.read_console(name="demo", offset=1 << 40)


def test_host_open_errors(make_config, tmp_path):
    config = make_config()
    config.backends.compute.plugin = "no-such-plugin"
    records = []
    with pytest.raises(hci.NotFound, match=r"backends\.compute\.plugin"):
        # The callbacks handed to a Host that never opened are released cleanly.
        hci.Host(config, on_event=print, on_log=records.append)
    with pytest.raises(hci.InvalidArgument, match="node_name"):
        hci.Host(v1.HostConfig(node_name="Bad Name", state_dir=str(tmp_path / "s")))
    with pytest.raises(hci.NotFound):
        hci.Host(str(tmp_path / "missing.yaml"))


def test_unconfigured_backend_and_closed_host_raise_failed_precondition(make_config):
    config = make_config()
    config.backends.ClearField("network")
    host = hci.Host(config)
    with pytest.raises(hci.FailedPrecondition, match="network"):
        host.network
    compute = host.compute
    host.close()
    with pytest.raises(hci.FailedPrecondition, match="closed"):
        compute.list_vms()
    with pytest.raises(hci.FailedPrecondition, match="closed"):
        host.compute
    host.close()  # idempotent


def test_requests_are_type_checked(host):
    with pytest.raises(TypeError, match="GetVmRequest"):
        host.compute.get_vm(v1.StartVmRequest(name="x"))
    with pytest.raises(TypeError, match="not both"):
        host.compute.get_vm(v1.GetVmRequest(name="x"), name="y")
    with pytest.raises(ValueError, match="no_such_field"):
        host.compute.get_vm(no_such_field="x")
