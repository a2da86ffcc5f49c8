#!/usr/bin/python3
"""fio (its nbd ioengine) against replicated volumes and what they are measured against, in one run.

Configurations, all on the same disk and over NBD on unix sockets:
  (a) qemu-nbd   qemu-nbd serving a raw file: the single-copy ceiling through the same protocol
  (b) replicated-N  a volume of the replicated plugin with N = 1, 2, 3 replicas (hci-replica-server
                 processes on 127.0.0.1, the engine in nbdkit), created and attached through libhci's
                 Python bindings
  (c) quorum     QEMU's quorum driver (vote-threshold 2) over three qemu-nbd exports, exported by
                 qemu-storage-daemon
Workloads: 4 KiB random write and read, 128 KiB sequential write and read, queue depth 32.
Prints each figure and its ratio to (a). Run by bench/replicated/run, which builds what it needs:

    bench/replicated/run [--runtime SECONDS] [--size-mib MIB]

--configs, --replicas and --only run a part; --profile DIR also records a perf profile of the
engine and servers during each workload and prints its top symbols (docs/benchmarks.md).
"""

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

WORKLOADS = [
    # name, fio rw, block size, metric
    ("seq-write-128k", "write", "128k", "bw"),
    ("rand-write-4k", "randwrite", "4k", "iops"),
    ("rand-read-4k", "randread", "4k", "iops"),
    ("seq-read-128k", "read", "128k", "bw"),
]


def log(message):
    sys.stdout.write(f"[{time.strftime('%H:%M:%S')}] {message}\n")
    sys.stdout.flush()


def wait_for(path, proc, what, timeout=30):
    deadline = time.time() + timeout
    while not os.path.exists(path):
        if proc is not None and proc.poll() is not None:
            raise SystemExit(f"{what} exited with {proc.returncode}")
        if time.time() > deadline:
            raise SystemExit(f"{what}: {path} did not appear within {timeout} s")
        time.sleep(0.05)


def fio(socket, export, rw, bs, runtime, size_mib):
    uri = f"nbd+unix:///{export}?socket={socket}"
    argv = ["fio", "--name=bench", "--ioengine=nbd", f"--uri={uri}", f"--rw={rw}", f"--bs={bs}",
            "--iodepth=32", f"--size={size_mib}M", f"--runtime={runtime}", "--time_based",
            "--randrepeat=0", "--output-format=json"]
    out = subprocess.run(argv, check=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    # The nbd engine prints "fio: connected to NBD server" before the JSON document.
    text = out.stdout.decode()
    job = json.loads(text[text.index("{"):])["jobs"][0]
    side = job["write"] if "write" in rw else job["read"]
    return {"iops": side["iops"], "bw": side["bw_bytes"],
            "fio_cpu_s": (job["usr_cpu"] + job["sys_cpu"]) / 100.0 * runtime,
            "lat_p50_us": side["clat_ns"]["percentile"]["50.000000"] / 1000.0,
            "lat_p99_us": side["clat_ns"]["percentile"]["99.000000"] / 1000.0}


def cpu_seconds(pids):
    """User+system CPU seconds of each process (from /proc/PID/stat), by name."""
    out = {}
    tick = os.sysconf("SC_CLK_TCK")
    for name, pid in pids.items():
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            out[name] = (int(fields[11]) + int(fields[12])) / tick
        except OSError:
            out[name] = 0.0
    return out


def perf_start(args, name, workload, pids):
    """With --profile: `perf record` of `pids` (call graphs, kernel included) while fio runs."""
    if not args.profile or not pids:
        return None
    os.makedirs(args.profile, exist_ok=True)
    out = os.path.join(args.profile, f"{name}.{workload}.perf.data")
    return subprocess.Popen(["perf", "record", "--quiet", "-F", "499", "-g", "-o", out, "-p",
                             ",".join(str(p) for p in pids.values())],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL), out


def perf_stop(recording):
    """Stops the recording and prints where the samples fell: by process, then by symbol."""
    if recording is None:
        return
    proc, data = recording
    proc.send_signal(signal.SIGINT)
    proc.wait()
    for sort, limit in (("comm", 8), ("comm,dso,sym", 25)):
        report = subprocess.run(["perf", "report", "-i", data, "--no-children", "--stdio",
                                 "--sort", sort, "--percent-limit", "0.5", "-g", "none"],
                                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        rows = [line for line in report.stdout.splitlines()
                if line.strip() and not line.startswith("#")]
        log(f"profile {os.path.basename(data)}, by {sort}:")
        for line in rows[:limit]:
            sys.stdout.write("    " + line.strip() + "\n")
    sys.stdout.flush()


def run_workloads(name, socket, export, args, results, pids=None):
    """`pids`: processes whose CPU time each workload reports (where the time goes)."""
    for workload, rw, bs, _ in WORKLOADS:
        if args.only and workload not in args.only:
            continue
        before = cpu_seconds(pids or {})
        recording = perf_start(args, name, workload, pids)
        r = fio(socket, export, rw, bs, args.runtime, args.size_mib)
        perf_stop(recording)
        after = cpu_seconds(pids or {})
        r["cpu_s"] = {k: round(after[k] - before[k], 2) for k in after}
        r["cpu_s"]["fio"] = round(r["fio_cpu_s"], 2)
        results.setdefault(name, {})[workload] = r
        cpu = " ".join(f"{k} {v:.1f}s" for k, v in r["cpu_s"].items())
        log(f"{name:14} {workload:15} {r['iops']:10.0f} IOPS {r['bw'] / 2**20:8.1f} MiB/s "
            f"p50 {r['lat_p50_us']:7.0f} us p99 {r['lat_p99_us']:7.0f} us; CPU: {cpu}")


def qemu_nbd(path, socket, size_mib):
    subprocess.run(["qemu-img", "create", "-q", "-f", "raw", path, f"{size_mib}M"], check=True)
    proc = subprocess.Popen(["qemu-nbd", "--persistent", "--shared=8", "--format=raw",
                             "--socket", socket, path])
    wait_for(socket, proc, "qemu-nbd")
    return proc


def bench_baseline(work, args, results):
    proc = qemu_nbd(os.path.join(work, "baseline.raw"), os.path.join(work, "baseline.sock"),
                    args.size_mib)
    try:
        run_workloads("qemu-nbd", os.path.join(work, "baseline.sock"), "", args, results,
                      {"qemu-nbd": proc.pid})
    finally:
        proc.terminate()
        proc.wait()


def bench_quorum(work, args, results):
    procs = []
    try:
        children = []
        for i in range(3):
            sock = os.path.join(work, f"quorum{i}.sock")
            procs.append(qemu_nbd(os.path.join(work, f"quorum{i}.raw"), sock, args.size_mib))
            children.append(sock)
        qsd_sock = os.path.join(work, "quorum.sock")
        argv = ["qemu-storage-daemon"]
        for i, sock in enumerate(children):
            argv += ["--blockdev", json.dumps({"driver": "nbd", "node-name": f"c{i}",
                                               "server": {"type": "unix", "path": sock}})]
        argv += ["--blockdev", json.dumps({"driver": "quorum", "node-name": "q",
                                           "vote-threshold": 2, "children": ["c0", "c1", "c2"]}),
                 "--nbd-server", f"addr.type=unix,addr.path={qsd_sock}",
                 "--export", "type=nbd,id=e0,node-name=q,name=q,writable=on"]
        qsd = subprocess.Popen(argv)
        procs.append(qsd)
        wait_for(qsd_sock, qsd, "qemu-storage-daemon")
        pids = {f"qemu-nbd{i}": p.pid for i, p in enumerate(procs[:3])}
        pids["qemu-storage-daemon"] = qsd.pid
        run_workloads("quorum", qsd_sock, "q", args, results, pids)
    finally:
        for p in reversed(procs):
            p.terminate()
            p.wait()


def bench_replicated(work, args, results):
    import hci
    from hci import v1
    from google.protobuf import json_format

    secret = os.path.join(work, "secret")
    with open(secret, "w") as f:
        f.write("bench-secret")
    os.chmod(secret, 0o600)
    servers, nodes = [], []
    try:
        for i in range(3):
            ready = os.path.join(work, f"node{i}.ready")
            data = os.path.join(work, f"node{i}")
            os.makedirs(data)
            log_file = open(os.path.join(work, f"node{i}.log"), "w")
            p = subprocess.Popen([args.replica_server, "--node", f"node{i}", "--listen",
                                  "127.0.0.1:0", "--data-dir", data, "--secret-file", secret,
                                  "--ready-file", ready], stdout=log_file, stderr=log_file)
            servers.append(p)
            wait_for(ready, p, "hci-replica-server")
            with open(ready) as f:
                nodes.append({"name": f"node{i}", "address": f.read().strip()})
        options = {"nodes": nodes, "secret_file": secret}
        binding = v1.BackendBinding(plugin="replicated")
        json_format.ParseDict(options, binding.options)
        config = v1.HostConfig(node_name="bench", state_dir=os.path.join(work, "state"),
                               log_level=v1.LOG_LEVEL_WARN, plugin_dirs=[args.plugin_dir],
                               backends=v1.Backends(storage=binding))
        with hci.Host(config) as host:
            for n in (int(c) for c in args.replicas.split(",")):
                name = f"bench-{n}"
                host.storage.create_volume(
                    metadata=v1.ObjectMeta(name=name),
                    spec=v1.VolumeSpec(size_bytes=args.size_mib << 20, replica_count=n))
                info = host.storage.attach_volume(name=name, attacher="fio")
                socket = info.blockdev["server"]["path"]
                engine_pid = int(open(os.path.join(work, "state", "plugins", "replicated", "run",
                                                   name, "engine.pid")).read())
                pids = {"engine": engine_pid}
                pids.update({f"server{i}": p.pid for i, p in enumerate(servers)})
                try:
                    run_workloads(f"replicated-{n}", socket, "", args, results, pids)
                finally:
                    host.storage.detach_volume(name=name, attacher="fio")
                    host.storage.delete_volume(name=name)
    finally:
        for p in servers:
            p.terminate()
            p.wait()


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--build-dir", required=True)
    parser.add_argument("--runtime", type=int, default=15, help="seconds per workload (15)")
    parser.add_argument("--size-mib", type=int, default=1024, help="volume size (1024 MiB)")
    parser.add_argument("--work-dir", default="/var/tmp", help="where the data goes (/var/tmp)")
    parser.add_argument("--out", help="JSON results file")
    parser.add_argument("--only", action="append",
                        help="run only this workload (repeatable); the table needs all four")
    parser.add_argument("--profile", metavar="DIR",
                        help="perf record the measured processes during each workload into DIR "
                             "and print the top symbols")
    parser.add_argument("--configs", default="baseline,replicated,quorum",
                        help="which of baseline, replicated, quorum to run (all)")
    parser.add_argument("--replicas", default="1,2,3",
                        help="replica counts of the replicated configuration (1,2,3)")
    args = parser.parse_args()
    args.replica_server = os.path.join(args.build_dir, "bin", "hci-replica-server")
    args.plugin_dir = os.path.join(args.build_dir, "lib", "hci", "plugins")
    sys.path.insert(0, os.path.join(args.build_dir, "python"))

    work = tempfile.mkdtemp(prefix="hci-bench-replicated.", dir=args.work_dir)
    results = {}
    try:
        log(f"fio {subprocess.run(['fio', '--version'], stdout=subprocess.PIPE, text=True).stdout.strip()}, "
            f"{args.runtime} s per workload, {args.size_mib} MiB, queue depth 32, data in {work}")
        configs = args.configs.split(",")
        if "baseline" in configs:
            bench_baseline(work, args, results)
        if "replicated" in configs:
            bench_replicated(work, args, results)
        if "quorum" in configs:
            bench_quorum(work, args, results)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    if args.only or len(results) < 5:
        return
    base = results["qemu-nbd"]
    print()
    print("| configuration | " + " | ".join(w[0] for w in WORKLOADS) + " |")
    print("|---|" + "---|" * len(WORKLOADS))
    for name, figures in results.items():
        cells = []
        for workload, _, _, metric in WORKLOADS:
            value, ref = figures[workload][metric], base[workload][metric]
            shown = f"{value:.0f} IOPS" if metric == "iops" else f"{value / 2**20:.0f} MiB/s"
            cells.append(f"{shown} ({value / ref:.0%})")
        print(f"| {name} | " + " | ".join(cells) + " |")
    three = results["replicated-3"]
    print()
    print(f"replicated-3: rand-write-4k {three['rand-write-4k']['iops'] / base['rand-write-4k']['iops']:.0%} "
          f"of qemu-nbd (target 60%), seq-write-128k "
          f"{three['seq-write-128k']['bw'] / base['seq-write-128k']['bw']:.0%} (target 80%)")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
