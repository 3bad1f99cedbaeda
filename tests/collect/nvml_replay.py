"""Replays an NVML recording made on a real GPU by ``bench/nvml_check.py --record``.

:class:`ReplayNVML` stands where the ``pynvml`` module stands. Each call is looked up by
(function, device index, the other arguments as recorded) and answers that key's recorded
outcomes in order (the last one again once they run out): results rebuilt as the installed
pynvml's own structs and objects, errors raised as ``pynvml.NVMLError(code)``. A call the
recording does not have is noted in ``unrecorded`` and raises, so a test can tell that the
collector asked for something the real driver was never asked (re-record then).
"""

from __future__ import annotations

import ctypes
import json
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

import pynvml


@dataclass(frozen=True)
class ReplayHandle:
    """A device handle of the replay (the recording names devices by NVML index)."""

    index: int


def rebuild(value: Any) -> Any:
    """A recorded result as pynvml returns it (the inverse of ``nvml_check.to_json``)."""
    if isinstance(value, list):
        return [rebuild(v) for v in value]
    if not isinstance(value, dict):
        return value
    if "bytes" in value:
        return value["bytes"].encode()
    if "friendly" in value:
        return pynvml.nvmlFriendlyObject({k: rebuild(v) for k, v in value["friendly"].items()})
    if "struct" in value:
        struct = getattr(pynvml, value["struct"])()
        for name, field in value["fields"].items():
            inner = rebuild(field)
            if isinstance(inner, ctypes.Structure | ctypes.Union):
                ctypes.pointer(getattr(struct, name))[0] = inner
            else:
                setattr(
                    struct,
                    name,
                    inner.encode() if isinstance(inner, str) and _is_chars(struct, name) else inner,
                )
        return struct
    raise ValueError(f"cannot rebuild recorded value {value!r}")


def _is_chars(struct: Any, name: str) -> bool:
    kind = dict((f[0], f[1]) for f in struct._fields_)[name]
    return (
        isinstance(kind, type) and issubclass(kind, ctypes.Array) and kind._type_ is ctypes.c_char
    )


class ReplayNVML:
    """The recorded driver (see the module docstring)."""

    def __init__(self, recording: dict[str, Any]) -> None:
        self.answers: dict[tuple[str, int | None, str], list[dict[str, Any]]] = defaultdict(list)
        for call in recording["calls"]:
            self.answers[self._key(call["fn"], call["device"], call["args"])].append(call)
        self.asked: dict[tuple[str, int | None, str], int] = defaultdict(int)
        self.unrecorded: list[str] = []

    @staticmethod
    def _key(fn: str, device: int | None, args: list[Any]) -> tuple[str, int | None, str]:
        return fn, device, json.dumps(args)

    def __getattr__(self, name: str) -> Any:
        if name.startswith(("NVML_", "NVMLError", "nvmlMemory_v")) and hasattr(pynvml, name):
            return getattr(pynvml, name)
        if not name.startswith("nvml"):
            raise AttributeError(name)

        def call(*args: Any) -> Any:
            device = next((a.index for a in args if isinstance(a, ReplayHandle)), None)
            rest = [a for a in args if not isinstance(a, ReplayHandle)]
            if name == "nvmlDeviceGetHandleByIndex":
                device, rest = int(args[0]), []
            key = self._key(name, device, rest)
            outcomes = self.answers.get(key)
            if not outcomes:
                self.unrecorded.append(f"{name} device={device} args={rest}")
                raise pynvml.NVMLError(pynvml.NVML_ERROR_UNKNOWN)
            outcome = outcomes[min(self.asked[key], len(outcomes) - 1)]
            self.asked[key] += 1
            if "error" in outcome:
                raise pynvml.NVMLError(outcome["error"])
            if name == "nvmlDeviceGetHandleByIndex":
                return ReplayHandle(int(args[0]))
            return rebuild(outcome.get("result"))

        return call
