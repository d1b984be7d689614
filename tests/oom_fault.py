"""Out of GPU memory on a machine without a GPU: the test hook of the engine's retries
(``engine._fitting``). ``tight`` wraps ``models.get_model`` so that its models raise
torch.cuda.OutOfMemoryError, as a full GPU does, for a step of more than ``batch`` windows or
more than ``pixels`` pixels (windows × their pixels). In the test's own process it is
monkeypatched in; in a Dask worker this file is a preload (``distributed.worker.preload``)
that reads the limits from GIGADREAM_TEST_OOM_BATCH and GIGADREAM_TEST_OOM_PIXELS, or, for a
cluster that serves several runs, from the file GIGADREAM_TEST_OOM_FILE names (``switched``:
a test writes it before the run that should run out of memory and removes it after)."""
import os


class _Tight:
    """A model that refuses steps above the limits, else runs them."""

    def __init__(self, net, batch: int, pixels: int):
        self.net, self.batch, self.pixels = net, batch, pixels

    def __call__(self, x, *args, **kwargs):
        import torch
        n, _, h, w = x.shape
        if (self.batch and n > self.batch) or (self.pixels and n * h * w > self.pixels):
            raise torch.cuda.OutOfMemoryError(
                f"CUDA out of memory (injected): a step of {n} windows of {h}×{w} px")
        return self.net(x, *args, **kwargs)

    def __getattr__(self, name):
        return getattr(self.net, name)


def tight(get_model, batch: int = 0, pixels: int = 0):
    """``get_model`` whose models refuse steps of more than ``batch`` windows or ``pixels``
    pixels (0: no limit)."""
    def tight_get_model(*args, **kwargs):
        return _Tight(get_model(*args, **kwargs), batch, pixels)
    return tight_get_model


def switched(get_model, path: str):
    """``get_model`` whose models take their limits from the file at ``path`` at each call:
    "BATCH PIXELS" (0: no limit), or none while there is no file."""
    def switched_get_model(*args, **kwargs):
        try:
            batch, pixels = map(int, open(path).read().split())
        except FileNotFoundError:
            return get_model(*args, **kwargs)
        return _Tight(get_model(*args, **kwargs), batch, pixels)
    return switched_get_model


def dask_setup(worker) -> None:
    from gigadream import models
    if os.environ.get("GIGADREAM_TEST_OOM_FILE"):
        models.get_model = switched(models.get_model, os.environ["GIGADREAM_TEST_OOM_FILE"])
        return
    models.get_model = tight(models.get_model, int(os.environ.get("GIGADREAM_TEST_OOM_BATCH", 0)),
                             int(os.environ.get("GIGADREAM_TEST_OOM_PIXELS", 0)))
