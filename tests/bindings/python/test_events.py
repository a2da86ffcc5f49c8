"""Events: callbacks, Subscription, the events() iterator, on_event and on_log."""

import logging
import queue
import threading
import time

import pytest

import hci
from hci import v1
from conftest import vm_request


def phase_changes(events, name):
    return [(e.vm_phase.old_phase, e.vm_phase.new_phase) for e in events
            if e.reason == "VmPhaseChanged" and e.object.name == name]


def wait_until(predicate, timeout=30):
    done = threading.Event()
    for _ in range(int(timeout * 20)):
        if predicate():
            return True
        done.wait(0.05)
    return predicate()


def test_subscribe_receives_phase_changes_in_order(host):
    events = []
    sub = host.subscribe(events.append)
    assert isinstance(sub, hci.Subscription) and sub.active
    compute = host.compute
    compute.create_vm(vm_request("demo"))
    compute.start_vm(name="demo")
    compute.stop_vm(name="demo")
    assert wait_until(lambda: (v1.VM_PHASE_STOPPING, v1.VM_PHASE_STOPPED)
                      in phase_changes(events, "demo"))
    changes = phase_changes(events, "demo")
    assert changes[-1] == (v1.VM_PHASE_STOPPING, v1.VM_PHASE_STOPPED)
    assert (v1.VM_PHASE_STARTING, v1.VM_PHASE_RUNNING) in changes
    assert all(isinstance(e, v1.Event) and e.node == "py-test" and e.source == "mock"
               for e in events)
    sub.close()
    assert not sub.active


def test_flush_events_returns_after_earlier_events_were_delivered(host):
    seen = []

    def slow(event):
        time.sleep(0.05)  # without the flush, the list below would still be short
        host.flush_events()  # from the event thread: returns at once instead of deadlocking
        seen.append(event)

    with host.subscribe(slow):
        host.compute.create_vm(vm_request("flushed"))
        host.compute.start_vm(name="flushed")
        host.flush_events()
        assert [c for c in phase_changes(seen, "flushed")][-1] == (v1.VM_PHASE_STARTING,
                                                                   v1.VM_PHASE_RUNNING)


def test_closed_subscription_gets_nothing_more(host):
    closed, witness = queue.SimpleQueue(), queue.SimpleQueue()
    first = host.subscribe(closed.put)
    with host.subscribe(witness.put):
        first.close()
        host.compute.create_vm(vm_request("demo"))
        host.compute.start_vm(name="demo")
        # The witness subscribed later, so it is called after `first` for each event: once it
        # saw the Running change, `first` would have seen it too.
        while True:
            event = witness.get(timeout=30)
            if event.vm_phase.new_phase == v1.VM_PHASE_RUNNING:
                break
    seen = []
    while not closed.empty():
        seen.append(closed.get())
    assert not any(e.object.name == "demo" for e in seen)


def test_event_stream_iterates_until_timeout(host):
    with host.events(timeout=0.5) as stream:
        host.compute.create_vm(vm_request("demo"))
        host.compute.start_vm(name="demo")
        running = stream.wait_for(lambda e: e.vm_phase.new_phase == v1.VM_PHASE_RUNNING, 30)
        assert running.object.name == "demo"
        host.compute.pause_vm(name="demo")
        rest = list(stream)  # ends 0.5 s after the last event
    assert (v1.VM_PHASE_RUNNING, v1.VM_PHASE_PAUSED) in phase_changes(rest, "demo")
    with pytest.raises(hci.DeadlineExceeded):
        stream.wait_for(lambda e: True, 0.1)


def test_event_stream_ends_when_the_host_closes(make_config):
    host = hci.Host(make_config())
    stream = host.events()  # no timeout: only the close can end it
    host.compute.create_vm(vm_request("demo"))
    host.compute.start_vm(name="demo")
    host.close()
    events = list(stream)
    assert (v1.VM_PHASE_STARTING, v1.VM_PHASE_RUNNING) in phase_changes(events, "demo")
    assert stream.get(timeout=0) is None


def test_event_callback_exceptions_are_printed_and_delivery_goes_on(host, capfd):
    seen = []

    def flaky(event):
        seen.append(event)
        if len(seen) == 1:
            raise ValueError("boom in an event callback")

    with host.subscribe(flaky):
        host.compute.create_vm(vm_request("demo"))
        host.compute.start_vm(name="demo")
        assert wait_until(lambda: phase_changes(seen, "demo")
                          and phase_changes(seen, "demo")[-1][1] == v1.VM_PHASE_RUNNING)
    err = capfd.readouterr().err
    assert "Exception in hci event callback" in err and "ValueError: boom" in err
    assert len(seen) >= 2


def test_on_event_and_on_log_at_open(make_config):
    events, records = [], []
    with hci.Host(make_config(log_level=v1.LOG_LEVEL_INFO), on_event=events.append,
                  on_log=records.append) as host:
        host.storage.create_volume(metadata=v1.ObjectMeta(name="data"),
                                   spec=v1.VolumeSpec(size_bytes=1 << 20))
    # close() delivered everything queued.
    assert any(e.reason == "VolumeHealthy" and e.object.name == "data" for e in events)
    assert all(isinstance(r, hci.LogRecord) and isinstance(r.level, hci.LogLevel)
               for r in records)
    assert any(r.component == "core" and r.level == hci.LogLevel.INFO
               and 'using plugin "mock"' in r.message for r in records)


def test_log_to_python(make_config, caplog):
    caplog.set_level(logging.INFO, logger="hci")
    with hci.Host(make_config(log_level=v1.LOG_LEVEL_INFO), on_log=hci.log_to_python()):
        pass
    assert any(r.name == "hci.core" and 'using plugin "mock"' in r.getMessage()
               for r in caplog.records)


def test_close_inside_a_callback_is_refused(host):
    outcome = queue.SimpleQueue()

    def close_from_callback(event):
        try:
            host.close()
            outcome.put("closed")
        except hci.FailedPrecondition as e:
            outcome.put(e)

    with host.subscribe(close_from_callback):
        host.compute.create_vm(vm_request("demo"))
        host.compute.start_vm(name="demo")
        result = outcome.get(timeout=30)
    assert isinstance(result, hci.FailedPrecondition) and "callback" in result.message
    assert not host.closed
