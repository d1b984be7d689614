"""make bench-literal: does each dream preset show what it promises to someone who looks, and
does it halo? (issue 31)

    python profiling/literal.py [--photos astronaut,coffee,rocket] [--presets dreamscape,...]
                                [--out profiling/literal-bench.md]

The photos are made here from scikit-image's (astronaut, coffee, rocket), each upscaled 2×
(order-3 spline), so nothing is downloaded. Every bundled preset whose mode is dream (found in
``configs/``, so a new one is measured without touching this file) runs on each photo
through the real command, ``python -m gigadream run PHOTO --config PRESET -o OUT.png``. For
each (photo, preset) the report gives:

1. what a network that did not dream sees (``gigadream.judge``: EfficientNet-Lite2 for a VGG16,
   Lite0 or Lite1 dream, Lite0 for a Lite2 dream), on 224 px crops at scales 1, ½ and ¼,
   blurred by σ = 2 px: the share of the animal (ImageNet 0-397), dog (151-268) and bird
   classes, and each share over the photo's; the aims: dreamscape raises the animals ≥ 3×, a
   guided preset its own groups ≥ 5×;
2. the same from the dreaming network itself where it has a classifier (the Lites; VGG16:
   n/a): it sees its own adversarial texture, so its figures are an upper bound;
3. halos: the colour shift within 3 px of the photo's strong edges over that elsewhere
   (CIELAB a*b* chroma and ΔE76; aim ≤ 1.5);
4. seams: the change's step across the finest octave's tile boundaries over its step
   elsewhere, rows and columns (1 = none);
5. the run's wall time (the whole command: its workers' start and the model's load included).

On the first photo each preset runs once more with keep_far the other way (``--set
keep_far=16`` where the preset has none, ``keep_far=0`` where it has it): the far view kept is
the mean |result − photo| (levels) with both shrunk 16× (the mean of each 16 × 16 block),
with keep_far against without.

It writes the report (``--out``: tables per photo and the command) and, in the folder of the
same name beside it, one JPEG per (photo, preset): 512 × 256, the photo's 256 px crop at 100 %
on the left, the result's same crop on the right, where the photo has detail (the
astronaut's face and collar, the coffee's spoon and handle, the rocket's top).
"""
from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from gigadream.config import load_config, presets
from gigadream.judge import groups, halo_ratio, judge, judge_for, seam_ratio

REPO = Path(__file__).resolve().parent.parent
# the 100 % crop's top-left (row, column) in the 2× photo, and its side
CROPS = {"astronaut": (192, 320), "coffee": (400, 500), "rocket": (220, 512)}
CROP = 256
FAR = 16
AIMS = {"dreamscape": {"animal": 3.0}}     # a guided preset's aims: its own groups, ≥ 5×
GUIDED_AIM = 5.0
HALO_AIM = 1.5
# seams: a step across the tile boundaries at most 10 % above the step elsewhere (a seamless
# run's ratios stray 5-10 % from 1 over a handful of boundaries: the photo's content)
SEAM_AIM = 1.1
JPEG_QUALITY = 85
# the dreamers with a classifier whose own figures are reported (VGG16 has none: n/a)
LITES = ("efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2")


def make_photo(name: str, folder: Path) -> tuple[Path, np.ndarray]:
    """scikit-image's ``name`` upscaled 2× (order-3 spline) as a PNG in ``folder``."""
    import skimage.data
    from PIL import Image
    from skimage.transform import resize
    im = np.asarray(getattr(skimage.data, name)())[..., :3]
    big = resize(im, (2 * im.shape[0], 2 * im.shape[1]), order=3, preserve_range=True,
                 anti_aliasing=False)
    big = np.clip(big, 0, 255).round().astype(np.uint8)
    path = folder / f"{name}.png"
    Image.fromarray(big).save(path)
    return path, big


def dream_presets() -> list[str]:
    """The bundled presets whose mode is dream, in their files' order."""
    return [name for name, path in presets().items() if load_config(path).mode == "dream"]


def read(path: Path) -> np.ndarray:
    from PIL import Image
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


def run(photo: Path, preset: str, out: Path, *sets: str) -> tuple[np.ndarray, float]:
    """The command's result and its wall seconds."""
    cmd = [sys.executable, "-m", "gigadream", "run", str(photo), "--config", preset,
           "-o", str(out), "--overwrite", "--quiet", *(a for s in sets for a in ("--set", s))]
    t = time.perf_counter()
    r = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    seconds = time.perf_counter() - t
    if r.returncode:
        sys.exit(f"{shlex.join(cmd)} failed ({r.returncode}): {r.stderr.strip()[-2000:]}")
    return read(out), seconds


def far_change(photo: np.ndarray, result: np.ndarray, k: int = FAR) -> float:
    """Mean |result − photo| (levels) with both shrunk k× (the mean of each k × k block)."""
    h, w = (s // k * k for s in photo.shape[:2])

    def shrink(a):
        return a[:h, :w].astype(np.float64).reshape(h // k, k, w // k, k, 3).mean(axis=(1, 3))
    return float(np.abs(shrink(result) - shrink(photo)).mean())


def save_crops(photo: np.ndarray, result: np.ndarray, at: tuple[int, int], path: Path) -> None:
    """The photo's CROP px crop at 100 % beside the result's same crop, a JPEG."""
    from PIL import Image
    y, x = at
    pair = np.concatenate([photo[y:y + CROP, x:x + CROP], result[y:y + CROP, x:x + CROP]], axis=1)
    Image.fromarray(np.ascontiguousarray(pair)).save(path, quality=JPEG_QUALITY)


def aims(preset: str) -> dict[str, float]:
    """{group: the share's least ratio over the photo's} the preset promises."""
    cfg = load_config(preset)
    guided = {c: GUIDED_AIM for c in cfg.dream.classes if isinstance(c, str) and c in groups()}
    return {**guided, **AIMS.get(preset, {})}


def cell(share: float, base: float, aim: float | None) -> str:
    ratio = share / base
    mark = "" if aim is None else (" ✓" if ratio >= aim else f" ✗ (aim {aim:g}×)")
    return f"{share:.3f} ({ratio:.1f}×){mark}"


def measure(photo: np.ndarray, result: np.ndarray, preset: str) -> dict:
    """The figures of one result: judged by a network that did not dream, by the dreamer (a
    Lite; else None), the halo ratios, the seams."""
    cfg = load_config(preset)
    model = cfg.model.name
    judge_name = judge_for(model)
    own = judge(result, model) if model in LITES else None
    return {"model": model, "judge": judge_name, "shares": judge(result, judge_name),
            "own": own, "halo": halo_ratio(photo, result), "seams": seam_ratio(photo, result, cfg),
            "aims": aims(preset)}


def table(name: str, base: dict, rows: list[dict]) -> list[str]:
    gs = list(groups())
    judges = sorted({r["judge"] for r in rows} | {r["model"] for r in rows if r["own"]})
    lines = [f"### {name} ({rows[0]['shape'][1]}×{rows[0]['shape'][0]})", "",
             "The photo's shares: " + "; ".join(
                 f"{j}: " + ", ".join(f"{g} {base[j][g]:.3f}" for g in gs) for j in judges), "",
             "| preset | dreamer → judge | " + " | ".join(f"{g} (judge)" for g in gs) + " | "
             + " | ".join(f"{g} (dreamer)" for g in gs)
             + " | halo a*b* | halo ΔE | seams | run s |",
             "|" + " --- |" * (2 * len(gs) + 6)]
    for r in rows:
        judged = [cell(r["shares"][g], base[r["judge"]][g], r["aims"].get(g)) for g in gs]
        own = ([cell(r["own"][g], base[r["model"]][g], None) for g in gs] if r["own"]
               else ["n/a"] * len(gs))
        halo = [f"{v:.2f}" + ("" if v <= HALO_AIM else " ✗") for v in r["halo"]]
        seams = ("n/a" if r["seams"] is None else " / ".join(f"{v:.2f}" for v in r["seams"])
                 + ("" if max(r["seams"]) <= SEAM_AIM else " ✗"))
        lines.append(f"| {r['preset']} | {r['model']} → {r['judge']} | " + " | ".join(judged)
                     + " | " + " | ".join(own) + " | " + " | ".join(halo)
                     + f" | {seams} | {r['s']:.0f} |")
    return lines + [""]


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--photos", default=",".join(CROPS),
                    help="scikit-image photos, comma-separated (default: %(default)s)")
    ap.add_argument("--presets", default=None,
                    help="presets, comma-separated (default: every bundled dream preset)")
    ap.add_argument("--out", type=Path, default=REPO / "profiling" / "literal-bench.md",
                    help="the report; its crops go in the folder of its name (default: "
                         "profiling/literal-bench.md and profiling/literal-bench/; the "
                         "research behind the presets is profiling/literal.md)")
    args = ap.parse_args(argv)
    photos = [p for p in args.photos.split(",") if p]
    chosen = args.presets.split(",") if args.presets else dream_presets()
    import skimage.data
    for p in photos:
        if not callable(getattr(skimage.data, p, None)):
            sys.exit(f"--photos: {p!r} is not a scikit-image photo; try {', '.join(CROPS)}")
    for p in chosen:
        if p not in presets() or load_config(p).mode != "dream":
            sys.exit(f"--presets: {p!r} is not a bundled dream preset; the dream presets: "
                     f"{', '.join(dream_presets())}")
    crops_dir = args.out.with_suffix("")
    crops_dir.mkdir(parents=True, exist_ok=True)
    report = ["# How literally the dream presets dream, and their halos (issue 31)", "",
              "Made by `make bench-literal`; this run: `python profiling/literal.py "
              + shlex.join(sys.argv[1:] if argv is None else argv) + "`, "
              + f"{os.cpu_count()} CPUs, {time.strftime('%Y-%m-%d')}.", "",
              "Each cell: the share of the group's classes (mean softmax mass over 224 px "
              "crops at scales 1, ½, ¼, blurred σ = 2 px) and, in brackets, over the photo's. "
              "The judge did not dream; the dreamer's own figures see its own texture. "
              f"Halo: colour shift within 3 px of the photo's strong edges over elsewhere "
              f"(aim ≤ {HALO_AIM}). Seams: the change's step across the finest octave's tile "
              "boundaries over elsewhere, rows / columns (1 = none; `judge.seam_ratio`; "
              f"aim ≤ {SEAM_AIM}). "
              f"✓/✗: the issue's aims (dreamscape animals ≥ 3×, a guided "
              f"preset's groups ≥ {GUIDED_AIM:g}×). Crops: "
              f"`{crops_dir.name}/PHOTO-PRESET.jpg`, photo left, result right, 100 %.", ""]
    far_rows = []
    with tempfile.TemporaryDirectory(prefix="literal-") as tmp:
        tmp = Path(tmp)
        for n, name in enumerate(photos):
            path, photo = make_photo(name, tmp)
            rows, base = [], {}
            for preset in chosen:
                cfg = load_config(preset)
                model = cfg.model.name
                print(f"{name} × {preset} ({model})", flush=True)
                result, seconds = run(path, preset, tmp / f"{name}-{preset}.png")
                for j in {judge_for(model), model} & set(LITES):
                    base.setdefault(j, judge(photo, j))
                rows.append({"preset": preset, "s": seconds, "shape": photo.shape,
                             **measure(photo, result, preset)})
                at = CROPS.get(name, ((photo.shape[0] - CROP) // 2, (photo.shape[1] - CROP) // 2))
                save_crops(photo, result, at, crops_dir / f"{name}-{preset}.jpg")
                if n == 0:
                    kept = cfg.keep_far.factor
                    other, _ = run(path, preset, tmp / f"{name}-{preset}-far.png",
                                   f"keep_far={0 if kept else FAR}")
                    on, off = (result, other) if kept else (other, result)
                    far_rows.append((preset, kept, far_change(photo, on), far_change(photo, off)))
            report += table(name, base, rows)
            print("\n".join(table(name, base, rows)), flush=True)
    if far_rows:
        report += [f"### The far view kept ({photos[0]}, both shrunk {FAR}×)", "",
                   f"Mean |result − photo| in levels at 1/{FAR} size, with keep_far={FAR} and "
                   "without (the preset's own setting is the other run's).", "",
                   f"| preset | preset's keep_far | with keep_far={FAR} | without | ratio |",
                   "| --- | --- | --- | --- | --- |"]
        report += [f"| {p} | {k or 'off'} | {on:.2f} | {off:.2f} | {on / off:.2f} |"
                   for p, k, on, off in far_rows]
        report.append("")
    args.out.write_text("\n".join(report))
    print(f"wrote {args.out} and {crops_dir}/")


if __name__ == "__main__":
    main()
