"""Which device each process runs its models on.

One GPU a worker, as Dask's GPU deployments run (dask-cuda: each worker sees one device
through ``CUDA_VISIBLE_DEVICES``):

- the embedded cluster (``cluster``) picks the GPUs (``choose_gpus``: all this machine has, or
  ``--gpus 0,2``), gives worker i its device (``worker_devices``), and hands it over when the
  worker starts (``use_device``): nothing reads it back from the environment;
- a worker of an existing cluster runs on the one GPU it sees, else on its CPU
  (``own_device``); one that sees several is refused in one line, since every such worker
  would land on the first.

The processors read their process's device with ``device``; ``native_bf16`` says whether it
computes bfloat16 in hardware. ``cuda_devices`` counts the GPUs without importing torch (the
client), ``loaded_torch`` gives torch only where the process has imported it already.
"""
from __future__ import annotations

import functools
import os
import sys
from pathlib import Path

from .errors import ClusterError, ConfigError, ModelError

_device: str | None = None


def loaded_torch():
    """The torch module where this process has imported it (every model worker), else None:
    the client and identity workers never import it, and a check must not import it for
    them."""
    return sys.modules.get("torch")


def cuda_devices() -> int:
    """NVIDIA GPUs this process may use, without importing torch: the client never runs a
    model, and importing torch would cost it ~180 MB. The driver lists its GPUs under
    /proc/driver/nvidia/gpus; CUDA_VISIBLE_DEVICES narrows them, as it does for torch."""
    gpus = Path("/proc/driver/nvidia/gpus")
    found = len(list(gpus.iterdir())) if gpus.is_dir() else 0
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is None:
        return found
    n = 0
    for v in visible.split(","):     # CUDA stops at the first invalid entry ("-1": none)
        if not v.strip() or v.strip().startswith("-"):
            break
        n += 1
    return min(found, n)


def use_device(name: str) -> None:
    """Run this process's models on ``name`` (cpu, cuda:1): it also becomes torch's current
    CUDA device, which what is not told a device uses."""
    global _device
    import torch
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ModelError(f"device {name} asked for, but torch sees no CUDA device; install "
                             "a CUDA build of torch, or run on the CPU")
        torch.cuda.set_device(torch.device(name))
    _device = name


def device() -> str:
    """The device this process was given (``use_device``), else torch's current CUDA device
    where it sees one, else the CPU."""
    if _device is not None:
        return _device
    import torch
    return f"cuda:{torch.cuda.current_device()}" if visible_gpus() else "cpu"


def visible_gpus() -> int:
    """CUDA devices torch sees in this process."""
    import torch
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def own_device(where: str = "this process") -> str:
    """A worker's device when none was handed to it (an existing cluster's): its one GPU,
    else the CPU; several GPUs are refused in one line, naming ``where`` (the worker)."""
    n = visible_gpus()
    if n > 1:
        seen = os.environ.get("CUDA_VISIBLE_DEVICES")
        raise ClusterError(
            f"Dask worker {where} sees {n} GPUs"
            + (f" (CUDA_VISIBLE_DEVICES={seen})" if seen is not None else "")
            + "; gigadream runs one GPU a worker, as dask-cuda does: start the workers with "
            "'dask cuda worker SCHEDULER', or one 'CUDA_VISIBLE_DEVICES=N dask worker "
            "SCHEDULER' per GPU")
    return "cuda:0" if n == 1 else "cpu"


def choose_gpus(setting: str | tuple[int, ...], available: int) -> list[int]:
    """The GPUs the embedded cluster runs on (torch's numbers in this process): all of the
    ``available`` ones for auto, else those named, which must exist."""
    if setting == "auto":
        return list(range(available))
    missing = [g for g in setting if g >= available]
    if missing:
        have = (f"has {available} GPU{'s' if available > 1 else ''} (0-{available - 1})"
                if available else "has no GPU that CUDA can use")
        raise ConfigError(f"engine.gpus {','.join(map(str, setting))}: GPU {missing[0]} is not "
                          f"there; this machine {have}")
    return list(setting)


def worker_devices(workers: int, gpus: list[int]) -> list[str] | None:
    """The device of each of ``workers`` workers (by number): GPU i of ``gpus`` for worker i,
    round again where there are more workers than GPUs; None without GPUs (the CPU)."""
    if not gpus:
        return None
    return [f"cuda:{gpus[i % len(gpus)]}" for i in range(workers)]


@functools.cache
def native_bf16(name: str) -> bool:
    """Whether device ``name`` computes bfloat16 in hardware: a CUDA GPU since Ampere (sm80),
    asked of that GPU itself, natively (torch's ``is_bf16_supported`` counts emulation by
    default, which runs slower than fp32 on a T4 or V100); a CPU with AMX or AVX512-BF16."""
    import torch
    if name.startswith("cuda"):
        index = torch.device(name).index
        with torch.cuda.device(index if index is not None else torch.cuda.current_device()):
            return torch.cuda.is_bf16_supported(including_emulation=False)
    cpu = torch.cpu
    return any(getattr(cpu, f, lambda: False)() for f in ("_is_amx_tile_supported",
                                                          "_is_avx512_bf16_supported"))
