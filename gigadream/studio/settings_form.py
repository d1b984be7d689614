"""The settings form of the studio's new-job page: every setting ``run --help`` lists, with
its help, choices, default and the chosen preset's value; which mode reads it; and whether
it is one of the few an artist changes first (the rest go under "advanced")."""
from __future__ import annotations

import json
from typing import Any

from ..config import field_choices, field_help, preset_values, setting_keys

# The settings shown first, in this order, with the words the form labels them by: the
# mode, how strong, how literal (a slider that picks the layers), which layers, how much of
# the far view stays, and the style's images.
MAIN = {"mode": "mode",
        "dream.step_size": "strength",
        "dream.dose": "dose (negative: the opposite features)",
        "dream.literal": "abstract ↔ literal",
        "dream.layers": "layers",
        "style.images": "style images",
        "style.style_weight": "style strength",
        "style.content_weight": "keep the photo's forms",
        "style.style_layers": "style layers",
        "keep_far.factor": "keep the far view"}
MODES = ("dream", "style")


def mode_of(key: str, help_: str = "") -> str:
    """The mode that reads setting ``key`` ("dream", "style"), or "" for a setting every
    mode reads: the section it is in (``dream.``, ``style.``), else its help's first word
    (``sequence.blend``'s help begins "dream: ...")."""
    section = key.partition(".")[0]
    if section in MODES:
        return section
    first = help_.partition(":")[0]
    return first if first in MODES else ""


def preset_mode(preset: str | None) -> str:
    """The mode that ``preset`` (a preset's YAML file) runs in: its ``mode``, else dream."""
    return str(preset_values(preset).get("mode", "dream")) if preset else "dream"


def settings_form(preset: str | None) -> list[dict]:
    """Every setting (``config.field_help``: the table of ``run --help``) with its help, its
    choices, its default and the value of ``preset`` (a preset's YAML file, which the
    studio found by its name), the mode that reads it and, for the few in ``MAIN``, the
    label the form shows first: the form's rows, those of ``MAIN`` first in its order."""
    fields = field_help()
    # the preset's own values, unchecked: a style preset names no style image yet
    values = setting_keys(preset_values(preset)) if preset else {}
    rows = []
    for key, default, help_ in fields:
        v = values.get(key, default)
        rows.append({"key": key, "default": _text(default), "value": _text(v), "help": help_,
                     "choices": [str(c) for c in field_choices(key) or ()],
                     "mode": mode_of(key, help_), "main": key in MAIN,
                     "label": MAIN.get(key, key)})
    order = list(MAIN)
    return sorted(rows, key=lambda r: order.index(r["key"]) if r["main"] else len(order))


def _text(v: Any) -> str:
    return v if isinstance(v, str) else json.dumps(v)
