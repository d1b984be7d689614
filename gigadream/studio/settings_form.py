"""The settings form of the studio's new-job page: every setting ``run --help`` lists, with
its help, choices, default and the chosen preset's value."""
from __future__ import annotations

import json
from typing import Any

from ..config import field_choices, field_help, preset_values, presets


def preset_names() -> list[str]:
    """The bundled presets by name, alphabetically, as the form lists them."""
    return sorted(presets())


def settings_form(preset: str | None) -> list[dict]:
    """Every setting (``config.field_help``: the table of ``run --help``) with its help, its
    choices, its default and the preset's value: the form's rows."""
    fields = field_help()
    sections = {key.partition(".")[0] for key, _, _ in fields if "." in key}
    # the preset's own values, unchecked: a style preset names no style image yet
    values = section_keys(preset_values(preset), sections) if preset else {}
    rows = []
    for key, default, help_ in fields:
        v = values.get(key, default)
        rows.append({"key": key, "default": _text(default), "value": _text(v), "help": help_,
                     "choices": [str(c) for c in field_choices(key) or ()]})
    return rows


def _text(v: Any) -> str:
    return v if isinstance(v, str) else json.dumps(v)


def section_keys(values: dict, sections: set[str]) -> dict:
    """A preset's YAML mapping keyed as the form's rows are: ``section.key`` for the keys of
    each of ``sections``, one level deep; a value that is itself a mapping (a layer weight
    table) stays whole, since the form edits it as one JSON value."""
    out = {}
    for k, v in values.items():
        if isinstance(v, dict) and k in sections:
            out |= {f"{k}.{kk}": vv for kk, vv in v.items()}
        else:
            out[k] = v
    return out
