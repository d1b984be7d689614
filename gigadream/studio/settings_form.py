"""The settings form of the studio's new-job page: every setting ``run --help`` lists, with
its help, choices, default and the chosen preset's value."""
from __future__ import annotations

import json
from typing import Any

from ..config import field_choices, field_help, preset_values, setting_keys


def settings_form(preset: str | None) -> list[dict]:
    """Every setting (``config.field_help``: the table of ``run --help``) with its help, its
    choices, its default and the value of ``preset`` (a preset's YAML file, which the
    studio found by its name): the form's rows."""
    fields = field_help()
    # the preset's own values, unchecked: a style preset names no style image yet
    values = setting_keys(preset_values(preset)) if preset else {}
    rows = []
    for key, default, help_ in fields:
        v = values.get(key, default)
        rows.append({"key": key, "default": _text(default), "value": _text(v), "help": help_,
                     "choices": [str(c) for c in field_choices(key) or ()]})
    return rows


def _text(v: Any) -> str:
    return v if isinstance(v, str) else json.dumps(v)
