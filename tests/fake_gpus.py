"""A Dask worker preload (``distributed.worker.preload``) that lets a machine without a GPU
stand in for one with them in the device-assignment tests: the worker sees as many GPUs as
its CUDA_VISIBLE_DEVICES names (as CUDA would), and takes the device it is handed without
asking CUDA for it. Nothing else changes: no model runs on these pretend devices."""
import os


def dask_setup(worker) -> None:
    from gigadream import devices

    def visible_gpus() -> int:
        return len([v for v in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if v.strip()])

    def use_device(name: str) -> None:
        devices._device = name

    devices.visible_gpus = visible_gpus
    devices.use_device = use_device
