"""hci.v1: libhci's protocol messages as the standard Python protobuf classes.

The modules ``hci.v1.<file>_pb2`` are generated at build time by ``protoc --python_out`` from
``proto/hci/v1/*.proto``, the same files libhci's C++ code is generated from. This package
re-exports every message class (``hci.v1.VirtualMachine``), every enum wrapper
(``hci.v1.VmPhase``, with ``VmPhase.Name(n)`` and ``VmPhase.Value("VM_PHASE_RUNNING")``) and every
enum value (``hci.v1.VM_PHASE_RUNNING``), so that specs are built in plain Python::

    from hci import v1
    request = v1.CreateVmRequest(
        metadata=v1.ObjectMeta(name="demo"),
        spec=v1.VirtualMachineSpec(vcpus=1, memory_mib=256, run_strategy=v1.RUN_STRATEGY_MANUAL))
    print(request)                      # text format
    data = request.SerializeToString()  # wire format
"""

from hci.v1 import (backup_pb2, compute_pb2, event_pb2, host_pb2, image_pb2, meta_pb2,
                    network_pb2, operation_pb2, storage_pb2, testing_pb2)

_MODULES = (meta_pb2, compute_pb2, storage_pb2, network_pb2, image_pb2, backup_pb2, event_pb2,
            operation_pb2, host_pb2, testing_pb2)


def _export():
    names = []
    for module in _MODULES:
        for name in module.DESCRIPTOR.message_types_by_name:
            globals()[name] = getattr(module, name)
            names.append(name)
        for name, enum in module.DESCRIPTOR.enum_types_by_name.items():
            globals()[name] = getattr(module, name)
            names.append(name)
            for value in enum.values:
                globals()[value.name] = value.number
                names.append(value.name)
    return sorted(names)


__all__ = _export()
