"""Operations: progress callbacks, wait with a timeout, cancel, failures, lookup."""

import threading

import pytest

import hci
from hci import v1

ZEROS_SHA256 = "3b6a07d0d404fab4e23b6d34bc6696a6a312dd92821332385e5af7c01c421351"  # the mock's


def import_request(name, **spec):
    spec.setdefault("file", "/var/tmp/disk.raw")
    return v1.ImportImageRequest(metadata=v1.ObjectMeta(name=name), spec=v1.ImageSpec(**spec))


def test_progress_callbacks_then_wait(host):
    seen = []
    op = host.image.import_image(import_request("img"))
    assert isinstance(op, hci.Operation) and op.id.startswith("op-")
    op.on_progress(seen.append)
    final = op.wait(timeout=60)
    assert final.phase == v1.OPERATION_PHASE_SUCCEEDED and final.code == hci.StatusCode.OK
    assert final.kind == "ImportImage" and final.object.name == "img"
    assert op.done()
    # Wait() returns only after the final callback ran.
    assert seen and all(isinstance(s, v1.OperationStatus) for s in seen)
    assert seen[-1].phase == v1.OPERATION_PHASE_SUCCEEDED
    done = [s.progress.done for s in seen]
    assert done == sorted(done)
    assert seen[-1].progress.done == seen[-1].progress.total > 0
    image = host.image.get_image(name="img")
    assert image.status.phase == v1.IMAGE_PHASE_READY and image.status.sha256 == ZEROS_SHA256
    # A callback added after the end is called once, at once.
    late = []
    op.on_progress(late.append)
    assert [s.phase for s in late] == [v1.OPERATION_PHASE_SUCCEEDED]


def test_every_update_reaches_the_callback(make_config):
    # 5 steps of 200 ms: the callback sees intermediate progress, not only the end.
    with hci.Host(make_config(image={"operation_step_ms": 200})) as host:
        seen = []
        op = host.image.import_image(import_request("img"))
        op.on_progress(seen.append)
        op.wait(timeout=60)
    running = [s for s in seen if s.phase == v1.OPERATION_PHASE_RUNNING]
    assert running, f"no intermediate update among {len(seen)}"
    assert len({s.progress.done for s in running}) >= 2
    assert running[0].progress.done < running[0].progress.total == seen[-1].progress.done


def test_wait_timeout_raises_deadline_exceeded_and_the_operation_goes_on(make_config):
    with hci.Host(make_config(image={"operation_step_ms": 200})) as host:
        op = host.image.import_image(import_request("img"))
        with pytest.raises(hci.DeadlineExceeded, match=op.id):
            op.wait(timeout=0.05)
        assert not op.done()
        assert op.wait().phase == v1.OPERATION_PHASE_SUCCEEDED


def test_cancel(make_config):
    with hci.Host(make_config(image={"operation_step_ms": 200})) as host:
        op = host.image.import_image(import_request("img"))
        op.cancel()
        with pytest.raises(hci.Cancelled):
            op.wait(timeout=30)
        assert op.status().phase == v1.OPERATION_PHASE_CANCELLED
        assert op.status().code == hci.StatusCode.CANCELLED
        with pytest.raises(hci.FailedPrecondition, match="already finished"):
            op.cancel()


def test_failed_operation_raises_its_code(host):
    op = host.image.import_image(import_request("bad", sha256="0" * 64))
    with pytest.raises(hci.DataLoss, match="sha256"):
        op.wait(timeout=60)
    status = op.status()
    assert status.phase == v1.OPERATION_PHASE_FAILED and status.code == hci.StatusCode.DATA_LOSS
    assert status.error


def test_callback_exceptions_are_printed_not_raised(host, capfd):
    calls = []

    def bad(status):
        calls.append(status.phase)
        raise RuntimeError("boom in a progress callback")

    op = host.image.import_image(import_request("img"))
    op.on_progress(bad)
    assert op.wait(timeout=60).phase == v1.OPERATION_PHASE_SUCCEEDED
    assert calls[-1] == v1.OPERATION_PHASE_SUCCEEDED
    err = capfd.readouterr().err
    assert "Exception in hci progress callback" in err
    assert "RuntimeError: boom in a progress callback" in err


def test_callbacks_run_on_libhci_threads(make_config):
    with hci.Host(make_config(image={"operation_step_ms": 20})) as host:
        threads = set()
        op = host.image.import_image(import_request("img"))
        op.on_progress(lambda s: threads.add(threading.get_ident()))
        op.wait(timeout=60)
    assert threads and threading.get_ident() not in threads


def test_host_tracks_operations(host):
    op = host.image.import_image(import_request("img"))
    op.wait(timeout=60)
    assert op.id in [s.id for s in host.list_operations()]
    again = host.get_operation(op.id)
    assert again.id == op.id and again.status().phase == v1.OPERATION_PHASE_SUCCEEDED
    with pytest.raises(hci.NotFound, match="op-999999"):
        host.get_operation("op-999999")
    assert op.id in repr(op) and "succeeded" in repr(op)


def test_operations_outlive_their_host(make_config):
    host = hci.Host(make_config())
    op = host.image.import_image(import_request("img"))
    host.close()
    # Closing finished it (the mock finishes what runs with Unavailable), and it stays usable.
    assert op.done()
    assert op.status().phase in (v1.OPERATION_PHASE_SUCCEEDED, v1.OPERATION_PHASE_FAILED)
