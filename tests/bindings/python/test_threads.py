"""The GIL is released around every blocking call: one Python thread blocked in libhci does not
stop another."""

import threading
import time

import pytest

import hci
from hci import v1
from conftest import vm_request

SLOW_MS = 3000  # long enough that the other thread's work always fits well inside it


def start(target):
    result = {}

    def run():
        try:
            result["value"] = target()
        except BaseException as e:  # noqa: B902 -- handed to the test thread
            result["error"] = e

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, result


def test_a_slow_backend_call_does_not_block_other_threads(host):
    compute = host.compute
    compute.create_vm(vm_request("slow"))
    compute.fault_injector.inject(operation="GetVm", latency_ms=SLOW_MS, count=1)
    entered = threading.Event()
    slow, result = start(lambda: (entered.set(), compute.get_vm(name="slow"))[1])
    entered.wait(10)
    # Give the slow thread time to get into libhci. Had it kept the GIL, this thread could only
    # wake up once the 3 s call returned, and the check below would fail.
    time.sleep(0.5)
    # Meanwhile this thread runs Python and makes other calls into libhci.
    listed = [len(compute.list_vms().vms) for _ in range(50)]
    counted = sum(range(200_000))
    assert slow.is_alive(), "the slow call ended before the other thread's work: GIL held?"
    assert listed == [1] * 50 and counted > 0
    slow.join(timeout=60)
    assert result["value"].metadata.name == "slow"


def test_waiting_on_an_operation_lets_progress_callbacks_run(make_config):
    # The callbacks need the GIL while another thread waits: a wait holding it would deadlock.
    with hci.Host(make_config(image={"operation_step_ms": 100})) as host:
        updates = []
        op = host.image.import_image(metadata=v1.ObjectMeta(name="img"),
                                     spec=v1.ImageSpec(file="/var/tmp/disk.raw"))
        op.on_progress(updates.append)
        waiter, result = start(lambda: op.wait(timeout=60))
        waiter.join(timeout=60)
        assert not waiter.is_alive(), "Operation.wait did not return"
        assert result["value"].phase == v1.OPERATION_PHASE_SUCCEEDED
        assert updates[-1].phase == v1.OPERATION_PHASE_SUCCEEDED


def test_close_waits_for_calls_in_flight(host):
    compute = host.compute
    compute.create_vm(vm_request("slow"))
    compute.fault_injector.inject(operation="GetVm", latency_ms=1000, count=1)
    entered = threading.Event()
    slow, result = start(lambda: (entered.set(), compute.get_vm(name="slow"))[1])
    entered.wait(10)
    time.sleep(0.2)  # let it get into libhci; the result is the same if it has not yet
    host.close()
    slow.join(timeout=60)
    # Either the call finished before the close, or it started after and saw the Host closed:
    # never a crash or a call into a destroyed backend.
    if "error" in result:
        assert isinstance(result["error"], hci.FailedPrecondition)
    else:
        assert result["value"].metadata.name == "slow"
    with pytest.raises(hci.FailedPrecondition):
        compute.get_vm(name="slow")


def test_concurrent_calls_from_many_threads(host):
    storage = host.storage
    errors = []

    def worker(i):
        try:
            for j in range(10):
                name = f"vol-{i}-{j}"
                storage.create_volume(metadata=v1.ObjectMeta(name=name),
                                      spec=v1.VolumeSpec(size_bytes=1 << 20))
                assert storage.get_volume(name=name).metadata.name == name
        except BaseException as e:  # noqa: B902
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors
    assert len(storage.list_volumes().volumes) == 80
