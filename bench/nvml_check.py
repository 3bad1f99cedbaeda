"""Check the GPU collector against real NVML on a GPU machine (not in CI, not a test).

The unit tests run :class:`fleetscope.collect.gpu.GPUCollector` on the simulator's fake NVML and on
``tests/collect/data/nvml_*.json`` (a recording this script makes). This script is the other half:
on a machine with an NVIDIA GPU and driver it

1. runs the production collectors (GPU, and the Xid collector's NVML event path) through the real
   ``pynvml`` for one idle cycle and a few cycles under load (a bf16 matrix-product loop in a child
   process, when PyTorch is installed);
2. compares every reading with ``nvidia-smi``'s at the same moment (identity exactly; gauges within
   a tolerance, since the two read a few milliseconds apart) and the process list with
   ``nvidia-smi --query-compute-apps``;
3. times ``collect()`` per cycle (the agent's NVML cost per GPU);
4. with ``--agent``, starts ``fleetscope agent --listen`` and checks its ``/metrics`` page;
5. with ``--record FILE``, writes every NVML call's arguments and result (pynvml's own struct and
   field names, errors as NVML codes) for the replay test.

Usage: ``PYTHONPATH=src python3 bench/nvml_check.py --record /tmp/nvml.json --report /tmp/r.json``.
``--fake`` runs the same steps on the simulator's fake NVML (a dry run on a machine without a GPU;
nvidia-smi comparisons are then skipped). Exit status 1 when an identity field or a reading
disagrees with nvidia-smi beyond its tolerance, or when a metric nvidia-smi reports is missing.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import shutil
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pynvml

from fleetscope.collect import Sample
from fleetscope.collect.attribution import owner_of_pid
from fleetscope.collect.gpu import USED_FUNCTIONS, GPUCollector
from fleetscope.collect.xid import XIDCollector

# nvidia-smi field → (metric, smi value → metric unit, absolute tolerance, relative tolerance);
# nvidia-smi rounds memory to MiB, and reads the sensors a few ms after the collector did
SMI_FIELDS: dict[str, tuple[str, Callable[[float], float], float, float]] = {
    "memory.total": ("fleet_gpu_memory_total_bytes", lambda v: v * 2**20, 2**20, 0.0),
    "memory.used": ("fleet_gpu_memory_used_bytes", lambda v: v * 2**20, 2 * 2**20, 0.0),
    "temperature.gpu": ("fleet_gpu_temperature_celsius", float, 3.0, 0.0),
    "power.draw": ("fleet_gpu_power_watts", float, 40.0, 0.25),
    "enforced.power.limit": ("fleet_gpu_power_limit_watts", float, 1.0, 0.0),
    "clocks.sm": ("fleet_gpu_sm_clock_hertz", lambda v: v * 1e6, 200e6, 0.0),
    "utilization.gpu": ("fleet_gpu_utilization_ratio", lambda v: v / 100, 0.35, 0.0),
}
IDENTITY = ("index", "uuid", "name", "pci.bus_id")
LOAD = """
import os, sys, time, torch
a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
b = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
host = torch.zeros(256 * 2**20, dtype=torch.uint8).pin_memory()
dev = torch.empty_like(host, device="cuda")
h2d = d2h = 0
print("load running", flush=True)
end = time.time() + float(sys.argv[1])
while time.time() < end:
    for _ in range(10):
        a @ b
    dev.copy_(host)
    host.copy_(dev)
    torch.cuda.synchronize()
    h2d += host.numel()
    d2h += host.numel()
    with open(sys.argv[2] + ".tmp", "w") as f:
        f.write(f"{h2d} {d2h}")
    os.replace(sys.argv[2] + ".tmp", sys.argv[2])
"""
COPIED = Path("/tmp/nvml_check_copied")  # the load's "H2D D2H" bytes so far


def pynvml_version() -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("nvidia-ml-py")
    except PackageNotFoundError:
        return None


# -- recording ---------------------------------------------------------------------------------


def to_json(value: Any) -> Any:
    """An NVML result as JSON: structs by pynvml class name and fields, bytes marked as such."""
    if isinstance(value, ctypes.Structure | ctypes.Union):
        fields = {name: to_json(getattr(value, name)) for name, *_ in value._fields_}
        return {"struct": type(value).__name__, "fields": fields}
    if isinstance(value, pynvml.nvmlFriendlyObject):
        return {"friendly": {k: to_json(v) for k, v in vars(value).items()}}
    if isinstance(value, list | tuple | ctypes.Array):
        return [to_json(v) for v in value]
    if isinstance(value, bytes):
        return {"bytes": value.decode("ascii", errors="replace")}
    if isinstance(value, int | float | str) or value is None:
        return value
    return {"repr": repr(value)}


class RecordingNVML:
    """Passes every call to ``nvml`` and records (function, device index, arguments, outcome)."""

    def __init__(self, nvml: Any) -> None:
        self._nvml = nvml
        self._index_of: dict[int, int] = {}  # address of a device handle → NVML index
        self.calls: list[dict[str, Any]] = []
        self.cycle = 0

    def __getattr__(self, name: str) -> Any:
        real = getattr(self._nvml, name)
        if not (name.startswith("nvml") and callable(real)):
            return real

        def call(*args: Any) -> Any:
            entry: dict[str, Any] = {"cycle": self.cycle, "fn": name, "device": None, "args": []}
            for arg in args:
                key = self._key(arg)
                if key is not None and key in self._index_of:
                    entry["device"] = self._index_of[key]
                else:
                    entry["args"].append(to_json(arg))
            started = time.perf_counter()
            try:
                result = real(*args)
            except Exception as err:
                entry["error"] = getattr(err, "value", None)
                entry["message"] = f"{type(err).__name__}: {err}"
                raise
            finally:
                entry["us"] = round((time.perf_counter() - started) * 1e6, 1)
                self.calls.append(entry)
            if name == "nvmlDeviceGetHandleByIndex":
                entry["device"] = args[0]
                key = self._key(result)
                if key is not None:
                    self._index_of[key] = int(args[0])
                entry["args"] = []
                entry["result"] = {"handle": int(args[0])}
            elif name not in ("nvmlEventSetCreate", "nvmlEventSetWait_v2"):
                entry["result"] = to_json(result)
            return result

        return call

    @staticmethod
    def _key(value: Any) -> int | None:
        if isinstance(value, ctypes._Pointer):  # pynvml's c_nvmlDevice_t
            return ctypes.cast(value, ctypes.c_void_p).value
        if type(value).__name__ == "FakeHandle":
            return id(value)
        return None


# -- nvidia-smi --------------------------------------------------------------------------------


def smi_gpus() -> list[dict[str, str]]:
    fields = [*IDENTITY, *SMI_FIELDS]
    out = subprocess.run(
        ["nvidia-smi", f"--query-gpu={','.join(fields)}", "--format=csv,noheader,nounits"],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    ).stdout
    return [
        dict(zip(fields, (c.strip() for c in line.split(",")), strict=True))
        for line in out.splitlines()
        if line.strip()
    ]


def smi_apps() -> list[dict[str, str]]:
    out = subprocess.run(
        [
            "nvidia-smi",
            "--query-compute-apps=gpu_uuid,pid,used_memory",
            "--format=csv,noheader,nounits",
        ],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    ).stdout
    keys = ("gpu_uuid", "pid", "used_memory")
    return [
        dict(zip(keys, (c.strip() for c in line.split(",")), strict=True))
        for line in out.splitlines()
        if line.count(",") == 2
    ]


# -- checks ------------------------------------------------------------------------------------


def by_gpu(samples: list[Sample]) -> dict[str, dict[str, list[Sample]]]:
    out: dict[str, dict[str, list[Sample]]] = {}
    for s in samples:
        out.setdefault(s.labels.get("gpu", "?"), {}).setdefault(s.name, []).append(s)
    return out


def compare(
    samples: list[Sample], smi: list[dict[str, str]], problems: list[str]
) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    got = by_gpu(samples)
    for gpu in smi:
        metrics = got.get(gpu["index"], {})
        up = metrics.get("fleet_gpu_up", [])
        if not up or up[0].value != 1.0:
            problems.append(f"GPU {gpu['index']}: fleet_gpu_up is {up and up[0].value}")
            continue
        labels = up[0].labels
        for want, have in (
            (gpu["uuid"], labels.get("gpu_uuid")),
            (gpu["name"], labels.get("gpu_model")),
        ):
            if want != have:
                problems.append(f"GPU {gpu['index']}: identity {have!r} != nvidia-smi {want!r}")
        for field, (metric, convert, abs_tol, rel_tol) in SMI_FIELDS.items():
            raw = gpu[field]
            smi_value = (
                None if raw in ("[N/A]", "N/A", "[Not Supported]", "") else convert(float(raw))
            )
            ours = metrics.get(metric)
            value = ours[0].value if ours else None
            row = {
                "gpu": gpu["index"],
                "field": field,
                "metric": metric,
                "smi": smi_value,
                "fleetscope": value,
            }
            if smi_value is not None and value is None:
                row["verdict"] = "MISSING"
                problems.append(f"GPU {gpu['index']}: {metric} missing, nvidia-smi says {raw}")
            elif smi_value is not None and value is not None:
                tol = max(abs_tol, rel_tol * abs(smi_value))
                row["verdict"] = "ok" if abs(value - smi_value) <= tol else "DIFFERS"
                if row["verdict"] != "ok":
                    problems.append(
                        f"GPU {gpu['index']}: {metric} {value} vs nvidia-smi {smi_value} (±{tol})"
                    )
            else:
                row["verdict"] = "n/a"
            rows.append(row)
    return rows


def check_pcie(cycles: list[dict[str, Any]], problems: list[str]) -> dict[str, Any]:
    """PCIe counter growth between the first and last loaded cycle against the bytes the load
    copied (host→device is the GPU's receive side). Other traffic adds a little; the copies are
    read a few ms apart from the counters, and NVML's throughput (what the counters integrate)
    is a 20 ms sample of bursty copies, so the ratio only has to land in 0.5–2."""
    loaded = [c for c in cycles if c["copied_h2d_d2h"] is not None]
    if len(loaded) < 2:
        return {"skipped": "no load"}
    first, last = loaded[0], loaded[-1]

    def pcie(cycle: dict[str, Any], name: str) -> float | None:
        found = [v for n, labels, v in cycle["samples"] if n == name and labels.get("gpu") == "0"]
        return found[0] if found else None

    out: dict[str, Any] = {}
    for i, name in enumerate(
        ("fleet_gpu_pcie_receive_bytes_total", "fleet_gpu_pcie_transmit_bytes_total")
    ):
        a, b = pcie(first, name), pcie(last, name)
        copied = last["copied_h2d_d2h"][i] - first["copied_h2d_d2h"][i]
        grew = None if a is None or b is None else b - a
        ratio = None if grew is None or copied <= 0 else grew / copied
        out[name] = {"counter_delta": grew, "copied": copied, "ratio": ratio}
        print(f"{name}: grew {grew} for {copied} copied (ratio {ratio})", flush=True)
        if ratio is None or not 0.5 <= ratio <= 2.0:
            problems.append(f"{name}: grew {ratio} × the bytes copied")
    return out


def memory_versions(gpu: GPUCollector) -> dict[str, Any]:
    """``nvmlDeviceGetMemoryInfo`` v1 (what the collector reads) beside v2 (what nvidia-smi shows,
    which leaves the driver's reserved memory out of ``used``)."""
    out: dict[str, Any] = {}
    for index in gpu.identities():
        handle = pynvml.nvmlDeviceGetHandleByIndex(index)
        try:
            v1 = pynvml.nvmlDeviceGetMemoryInfo(handle)
            v2 = pynvml.nvmlDeviceGetMemoryInfo(handle, version=pynvml.nvmlMemory_v2)
            out[str(index)] = {"v1": to_json(v1), "v2": to_json(v2)}
        except Exception as err:
            out[str(index)] = {"error": f"{type(err).__name__}: {err}"}
    return out


def start_load(seconds: float) -> subprocess.Popen[str] | None:
    try:
        import torch  # noqa: F401  (only whether it is there)
    except ImportError:
        print("no torch: no load; utilization stays idle", flush=True)
        return None
    COPIED.unlink(missing_ok=True)
    args = [sys.executable, "-c", LOAD, str(seconds), str(COPIED)]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    print(f"load pid {proc.pid}: {line.strip()}", flush=True)
    time.sleep(2.0)  # clocks and power ramp up
    return proc


def check_agent(report: dict[str, Any], problems: list[str]) -> None:
    port = 9577
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    cmd = [
        sys.executable,
        "-c",
        "from fleetscope.cli import main; main()",
        "agent",
        "--node",
        "devbox",
        "--listen",
        f"127.0.0.1:{port}",
        "--interval",
        "2s",
        "--wal-dir",
        "none",
    ]
    agent = subprocess.Popen(
        cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    text = ""
    try:
        for _ in range(30):
            time.sleep(1.0)
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
                    text = resp.read().decode()
                if "fleet_gpu_power_watts{" in text:
                    break
            except OSError:
                continue
    finally:
        agent.terminate()
        try:
            out, _ = agent.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            agent.kill()
            out, _ = agent.communicate()
    report["agent_log_tail"] = out[-4000:]
    report["agent_metrics"] = text
    names = sorted(
        {
            line.split("{")[0].split(" ")[0]
            for line in text.splitlines()
            if line.startswith("fleet_")
        }
    )
    report["agent_metric_names"] = names
    print(
        f"agent /metrics: {len(text.splitlines())} lines, {len(names)} fleet_* metrics", flush=True
    )
    if "fleet_gpu_power_watts{" not in text:
        problems.append("agent: /metrics has no fleet_gpu_power_watts")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cycles", type=int, default=4, help="cycles under load (after one idle)")
    parser.add_argument("--record", type=Path, help="write the NVML calls and results here")
    parser.add_argument("--report", type=Path, help="write the comparison report here")
    parser.add_argument(
        "--agent", action="store_true", help="also check `fleetscope agent --listen`"
    )
    parser.add_argument("--fake", action="store_true", help="dry run on the simulator's fake NVML")
    args = parser.parse_args()

    if args.fake:
        from fleetscope.simulate.nvml import FakeDevice, FakeNVML

        base: Any = FakeNVML([FakeDevice(0, "GPU-fake-0", "NVIDIA H200", power_mw=123_456)])
    else:
        base = pynvml
    has_smi = not args.fake and shutil.which("nvidia-smi") is not None
    nvml = RecordingNVML(base)
    problems: list[str] = []
    report: dict[str, Any] = {"python": sys.version, "pynvml": pynvml_version()}

    gpu = GPUCollector("devbox", nvml, owner_of=lambda pid: tuple(owner_of_pid(pid)))
    xid = XIDCollector("devbox", gpu.identities, nvml=nvml)
    report["driver"] = gpu.driver_version
    report["init_error"] = gpu.init_error
    if gpu.init_error:
        problems.append(f"NVML init: {gpu.init_error}")
    load = None
    cycles: list[dict[str, Any]] = []
    try:
        for cycle in range(args.cycles + 1):
            nvml.cycle = cycle
            if cycle == 1 and not args.fake:
                load = start_load(seconds=args.cycles * 3 + 20)
            started = time.perf_counter()
            samples = gpu.collect()
            took_ms = (time.perf_counter() - started) * 1e3
            copied = [int(x) for x in COPIED.read_text().split()] if COPIED.exists() else None
            xid_samples = xid.collect()
            memory_v2 = {} if args.fake else memory_versions(gpu)
            smi = smi_gpus() if has_smi else []
            apps = smi_apps() if has_smi else []
            rows = compare(samples, smi, problems) if smi else []
            procs = {i: [vars(p) for p in ps] for i, ps in gpu.processes().items()}
            for app in apps:
                pid = int(app["pid"])
                seen = any(p["pid"] == pid for ps in procs.values() for p in ps)
                if not seen:
                    problems.append(
                        f"cycle {cycle}: nvidia-smi lists pid {pid}, NVML collector does not"
                    )
            cycles.append(
                {
                    "cycle": cycle,
                    "loaded": load is not None,
                    "collect_ms": round(took_ms, 2),
                    "samples": [[s.name, s.labels, s.value] for s in samples],
                    "xid_samples": len(xid_samples),
                    "xid_init_error": xid.init_error,
                    "smi": smi,
                    "smi_apps": apps,
                    "processes": procs,
                    "pid_visible": {
                        str(p["pid"]): Path(f"/proc/{p['pid']}").exists()
                        for ps in procs.values()
                        for p in ps
                    },
                    "compare": rows,
                    "memory_v1_v2": memory_v2,
                    "copied_h2d_d2h": copied,
                }
            )
            line = ", ".join(
                f"{r['field']}={r['fleetscope']}/{r['smi']} {r['verdict']}" for r in rows
            )
            print(
                f"cycle {cycle}: collect {took_ms:.1f} ms, {len(samples)} samples; {line}",
                flush=True,
            )
            time.sleep(1.0)
    finally:
        if load is not None:
            load.kill()
            load.wait()
        xid.close()
        gpu.close()
    report["cycles"] = cycles
    report["pcie_check"] = check_pcie(cycles, problems)
    report["unsupported"] = sorted(f"{d}:{fn}" for d, fn in gpu.caller.unsupported)
    report["failures"] = dict(gpu.failures)
    report["calls_per_cycle"] = sum(1 for c in nvml.calls if c["cycle"] == 1)
    report["errors"] = sorted({f"{c['fn']}: {c['message']}" for c in nvml.calls if "error" in c})
    report["unused_functions"] = sorted(set(USED_FUNCTIONS) - {c["fn"] for c in nvml.calls})
    print(f"driver {gpu.driver_version}; unsupported {report['unsupported']}", flush=True)
    print(f"errors {report['errors']}", flush=True)
    if args.agent:
        check_agent(report, problems)
    report["problems"] = problems
    if args.record:
        smi = [{"cycle": c["cycle"], "gpus": c["smi"], "apps": c["smi_apps"]} for c in cycles]
        record = {
            "made_by": "bench/nvml_check.py --record (on the machine the GPUs are in)",
            "driver": gpu.driver_version,
            "pynvml": report["pynvml"],
            "calls": nvml.calls,
            "nvidia_smi": smi,  # read right after each cycle's collect()
        }
        args.record.write_text(json.dumps(record, indent=1))
    if args.report:
        args.report.write_text(json.dumps(report, indent=1, default=str))
    for problem in problems:
        print("PROBLEM:", problem, flush=True)
    print("OK" if not problems else f"{len(problems)} problem(s)", flush=True)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
