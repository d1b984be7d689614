"""The progress bar in a person's words: the share of the whole run, the time left only once
it can be told, the stage as words (issue 32: `tile-it`, `calibrate octave 3` and a first
ETA of 12:59 for a two-minute run were what a newcomer saw)."""
import io
import sys

import pytest

from gigadream import progress
from gigadream.events import Rows, Stage, Total, Work
from gigadream.progress import Progress, in_words


@pytest.mark.parametrize("name, detail, mode, words", [
    ("pass", "octave 1 pass 2: 1714×571 px, 12 tiles", "dream", "dreaming at 1714×571 px (pass 2)"),
    ("pass", "octave 0 pass 1: 800×400 px, 2 tiles, 4 a step", "style", "painting at 800×400 px (pass 1)"),
    ("calibrate", "octave 3", "dream", "measuring how strongly to dream"),
    ("ingest", "2400×800 px", "dream", "reading the image"),
    ("export", "pano-impressionist.jpg", "dream", "writing pano-impressionist.jpg"),
    ("frame 3/8", "pass octave 0 pass 1: 96×72 px, 1 tiles", "style",
     "frame 3 of 8: painting at 96×72 px (pass 1)"),
    ("encode", "8 frames → clip.mp4", "dream", "encoding the video clip.mp4"),
])
def test_stages_in_words(name, detail, mode, words):
    assert in_words(name, detail, mode) == words


def test_the_bar_says_the_share_done_and_a_time_left_only_once_it_is_known(monkeypatch):
    now = [100.0]
    monkeypatch.setattr(progress.time, "monotonic", lambda: now[0])
    err = io.StringIO()
    monkeypatch.setattr(sys, "stderr", err)
    p = Progress(False, "dream")
    p(Total(100))
    p(Stage("pass", "octave 3 pass 1: 200×100 px, 1 tiles"))
    now[0] += 2.0
    p(Work(1))                                   # 1 % after 2 s: no guess yet
    assert "left" not in p.bar.desc and "0:02 so far" in p.bar.desc
    now[0] += 30.0
    p(Work(9))                                   # 10 % after 32 s: 288 s left
    assert p.bar.desc.endswith("0:32 so far, about 4:48 left")
    p(Rows("export", 50, 100))
    assert p.bar.desc.startswith("writing (50 %)")
    p.close()
    out = err.getvalue()
    assert "tile-it" not in out and "10% |" in out
