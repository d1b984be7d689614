"""The device this process runs its models on: given to each worker by the engine when it
starts (``use_device``), read by the processors (``device``)."""
from __future__ import annotations

from .errors import ModelError

_device: str | None = None


def use_device(name: str) -> None:
    """Run this process's models on ``name`` (cpu, cuda, cuda:1)."""
    global _device
    import torch
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ModelError(f"device {name} asked for, but torch sees no CUDA device; install a "
                         "CUDA build of torch, or run on the CPU")
    _device = name


def device() -> str:
    """The device this process was given (``use_device``), else the first CUDA device torch
    sees, else the CPU."""
    if _device is not None:
        return _device
    import torch
    return "cuda" if torch.cuda.is_available() else "cpu"
