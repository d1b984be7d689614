"""What a run reports as it goes, and where its time went.

The core never prints: it sends these events to an ``on_event`` callback; the CLI turns them
into a progress bar, ``EventLog`` into JSON lines, tests and profilers attach their own.
``Timings`` is the part of a report that a run and a preview keep alike.
"""
from __future__ import annotations

import contextlib
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Mapping


@dataclass(frozen=True)
class Stage:
    """A stage begins: ingest, pyramid, cluster, calibrate, grams, pass, export. A pass
    says how many ``pixels`` it covers (for throughput)."""
    name: str
    detail: str = ""
    pixels: int = 0


@dataclass(frozen=True)
class Total:
    """The run will do ``units`` of work in all (sent once, before the work)."""
    units: int


@dataclass(frozen=True)
class Work:
    """``units`` of the run's work are done (a tile × its iterations)."""
    units: int


@dataclass(frozen=True)
class Rows:
    """``done`` of ``total`` image rows of a streamed stage (ingest, export)."""
    stage: str
    done: int
    total: int


def row_counter(on_event: Callable[[object], None], stage: str,
                total: int) -> Callable[[int], None]:
    """An ``on_rows`` callback that reports the rows of ``stage`` done so far as ``Rows``."""
    done = [0]

    def on_rows(n: int) -> None:
        done[0] += n
        on_event(Rows(stage, done[0], total))
    return on_rows


class EventLog:
    """Events as JSON lines (``{"t": unix time, "event": "Stage", ...}``), flushed as they
    come, for profilers and batch monitors: ``gigadream run --events FILE``."""

    def __init__(self, path: Path, then: Callable[[object], None] = lambda e: None):
        self.file = open(path, "w", buffering=1)
        self.then = then

    def __call__(self, event) -> None:
        self.file.write(json.dumps({"t": time.time(), "event": type(event).__name__,
                                    **asdict(event)}) + "\n")
        self.then(event)

    def close(self) -> None:
        self.file.close()


@dataclass(kw_only=True)
class Timings:
    """Seconds of each stage, and the model's share: its seconds and the megapixels its
    steps went through (together, the model's rate)."""
    stage_s: dict[str, float] = field(default_factory=dict)
    model_s: float = 0.0
    model_mp: float = 0.0         # Σ window megapixels of each model step in model_s

    @contextlib.contextmanager
    def timed(self, stage: str) -> Iterator[None]:
        """The block's seconds added to ``stage``'s."""
        t = time.perf_counter()
        try:
            yield
        finally:
            self.stage_s[stage] = self.stage_s.get(stage, 0.0) + time.perf_counter() - t

    def count_model(self, stats: Mapping | Timings) -> None:
        """Add the model time of a tile's statistics (``engine.run_tiles``), or of a run's
        report."""
        if isinstance(stats, Timings):
            stats = {"model_s": stats.model_s, "model_mp": stats.model_mp}
        self.model_s += stats.get("model_s", 0.0)
        self.model_mp += stats.get("model_mp", 0.0)
