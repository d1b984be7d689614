"""The 1000 ImageNet classes, by name or index, and a few groups (``dog``, ``bird``, ...).

A group is a contiguous range of WordNet synsets in ILSVRC-2012's class order (``dog`` is the
118 breeds 151-268, ``animal`` all 398 animal synsets 0-397), or, for ``building``, a list. Dreaming of a group raises the mean of its classes' logits.
"""
from __future__ import annotations

import difflib
import functools
from pathlib import Path

from .errors import ConfigError

GROUPS = {
    "animal": list(range(0, 398)),     # every animal synset: fish to sea anemone
    "fish": [*range(0, 7), *range(389, 398)],
    "bird": [*range(7, 25), *range(80, 101), *range(127, 147)],
    "amphibian": list(range(25, 33)),
    "reptile": list(range(33, 69)),
    "spider": list(range(72, 78)),
    "dog": list(range(151, 269)),
    "wolf": list(range(269, 273)),
    "fox": list(range(277, 281)),
    "cat": list(range(281, 286)),
    "big_cat": list(range(286, 294)),
    "bear": list(range(294, 298)),
    "insect": list(range(300, 321)),
    "butterfly": list(range(321, 327)),
    "monkey": list(range(365, 385)),
    "fruit": list(range(948, 958)),
    "mushroom": [947, *range(991, 998)],
    # buildings and their parts, picked from the object classes (not one WordNet range)
    "building": [406, 410, 425, 437, 442, 449, 483, 497, 498, 538, 580, 624, 663, 668, 682,
                 698, 727, 743, 832, 853, 858, 873, 884, 888, 900, 915],
}


@functools.lru_cache(maxsize=1)
def names() -> list[str]:
    lines = (Path(__file__).with_name("imagenet_classes.txt")).read_text().splitlines()
    return [ln for ln in lines if not ln.startswith("#")]


def _key(name: str) -> str:
    return name.strip().lower().replace(" ", "_").replace("-", "_")


def resolve(key: str, c: int | str) -> list[int]:
    """Class indices of an index, a class name (any case, spaces or underscores) or a group."""
    if isinstance(c, bool) or not isinstance(c, (int, str)):
        raise ConfigError(f"{key}: expected a class name or index, got {c!r}")
    if isinstance(c, int):
        if not 0 <= c < 1000:
            raise ConfigError(f"{key}: ImageNet classes are 0 to 999, got {c}")
        return [c]
    k = _key(c)
    if k in GROUPS:
        return GROUPS[k]
    hits = [i for i, n in enumerate(names()) if _key(n) == k]
    if len(hits) > 1:
        raise ConfigError(f"{key}: {c!r} names classes {hits}; give the index you mean")
    if hits:
        return hits
    near = difflib.get_close_matches(k, [_key(n) for n in names()] + list(GROUPS), n=3)
    hint = f"; did you mean {', '.join(near)}?" if near else ""
    raise ConfigError(f"{key}: {c!r} is not an ImageNet class or group{hint} "
                      "('gigadream classes' lists them)")


def indices(classes: tuple[int | str, ...]) -> tuple[int, ...]:
    return tuple(sorted({i for c in classes for i in resolve("dream.classes", c)}))
