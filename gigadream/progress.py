"""What a run is doing, in a person's words: the progress bar of ``gigadream run`` (one tqdm
bar for the whole run: the share of the run done, the time left once it can be told, the
stage) and ``in_words``, the stage's phrase, for any page that shows one.

The run's events (``events``) keep their terse names and details: the event log, the studio
and the tests read them. Only what a person reads is phrased here.
"""
from __future__ import annotations

import re
import sys
import time

from .events import Rows, Stage, Total, Work

VERBS = {"dream": "dreaming", "style": "painting", "identity": "copying"}
# Stage name → what it does, for a person (``pass`` is the mode's verb).
WORDS = {"ingest": "reading the image", "pyramid": "making the smaller sizes",
         "cluster": "starting the workers and loading the model",
         "calibrate": "measuring how strongly to dream", "grams": "measuring the style",
         "resume": "resuming", "export": "writing", "flow": "following the motion",
         "warp": "carrying the previous frame along", "encode": "encoding the video",
         "estimate": "estimating the time", "decode": "reading the image"}
# Before this share of the run is done (or this long has passed), a time left would be a
# guess from the first, cheapest steps: the first estimate of a two-minute run read 12:59.
SURE_SHARE, SURE_S = 0.05, 10.0
_PASS = re.compile(r"octave (\d+) pass (\d+): (\d+)×(\d+) px")


def in_words(name: str, detail: str = "", mode: str = "dream") -> str:
    """A stage (``events.Stage``'s name and detail) as a person reads it: ``pass`` / ``octave
    1 pass 2: 1714×571 px, 12 tiles`` is ``dreaming at 1714×571 px (pass 2)``; a
    sequence's ``frame 3/8`` stage is ``frame 3 of 8: `` and its frame's stage."""
    frame = re.fullmatch(r"frame (\d+)/(\d+)", name)
    if frame:
        inner, _, rest = detail.partition(" ")
        return f"frame {frame[1]} of {frame[2]}: {in_words(inner, rest, mode)}"
    if name == "pass":
        m = _PASS.match(detail)
        verb = VERBS.get(mode, "working")
        return f"{verb} at {m[3]}×{m[4]} px (pass {m[2]})" if m else verb
    words = WORDS.get(name, name)
    if name in ("export", "encode"):
        return f"{words} {detail.split(' → ')[-1]}".strip()
    return words


def _clock(s: float) -> str:
    s = int(round(s))
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"


class Progress:
    """The run's events on one tqdm bar (stderr), or nothing where ``quiet``."""

    def __init__(self, quiet: bool, mode: str = "dream"):
        self.quiet, self.mode, self.bar = quiet, mode, None
        self.began = time.monotonic()
        self.stage = ""

    def __call__(self, event) -> None:
        if self.quiet:
            return
        from tqdm import tqdm
        if isinstance(event, Total):
            self.bar = tqdm(total=event.units, dynamic_ncols=True, file=sys.stderr,
                            bar_format="{percentage:3.0f}% |{bar}| {desc}")
            self.began = time.monotonic()
        elif self.bar is None:
            return
        elif isinstance(event, Stage):
            self.stage = in_words(event.name, event.detail, self.mode)
        elif isinstance(event, Work):
            self.bar.update(event.units)
        elif isinstance(event, Rows):
            self.stage = (f"{in_words(event.stage, '', self.mode)} "
                          f"({100 * event.done // event.total} %)")
        else:
            return
        self.bar.set_description_str(f"{self.stage} · {self.times()}")

    def times(self) -> str:
        """Time spent, and the time left once enough of the run is done to tell it."""
        spent = time.monotonic() - self.began
        done = self.bar.n / self.bar.total if self.bar.total else 0.0
        text = f"{_clock(spent)} so far"
        if done >= SURE_SHARE and spent >= SURE_S and done < 1:
            text += f", about {_clock(spent * (1 - done) / done)} left"
        return text

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
