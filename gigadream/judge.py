"""How literally a dream shows things, and whether it haloes: measures of a result beside its
photo (``make bench-literal`` and the tests; issue 31).

``judge`` asks an ImageNet classifier what share of its belief goes to a group of classes
(animals, dogs, birds, buildings) in a photo or a dream. Two choices make the share a person's
judgement rather than the dreaming network's:

- the judge is a network that did not dream (``judge_for``): a dream climbs its own network's
  logits with texture that another network barely sees, so the dreaming network's own figures
  overstate what a person sees (they are reported beside, not instead);
- every crop is blurred (Gaussian, σ = 2 px) before it is judged: adversarial, pixel-sized
  texture is gone after it, the forms a person recognises (a head, an eye, fur) stay.

Crops are 224 px, the networks' training size, tiled over the image at several scales (1, ½,
¼ by default): a creature a few hundred pixels wide is seen whole at ¼ when it spans several
crops at 1.

``seam_ratio`` measures tile seams: the dreamed change's step across the finest octave's tile
boundaries over its step elsewhere (1 = none).

``halo_ratio`` measures halos: a dream grows most along the photo's contours and fringes them
with colour. It compares the colour shift (CIELAB, ΔE76 and its a*b* chroma part) within 3 px
of the photo's strong edges with that elsewhere; 1 = no halo (the acceptance: ≤ 1.5).
"""
from __future__ import annotations

import numpy as np

# The groups judged, those of them that ``classes.GROUPS`` has (read at each call): ``animal``
# is ImageNet's 398 animals (0-397), ``building`` buildings and their parts.
GROUPS_JUDGED = ("animal", "dog", "bird", "building")


def judge_for(dreaming_model: str) -> str:
    """The judge of a dream by ``dreaming_model``: a network that did not dream it, so the
    texture that fools the dreamer alone does not count. EfficientNet-Lite2 judges VGG16's,
    Lite0's and Lite1's dreams, Lite0 judges Lite2's."""
    return "efficientnet_lite0" if dreaming_model == "efficientnet_lite2" else "efficientnet_lite2"


def groups() -> dict[str, list[int]]:
    """The judged groups: {name: class indices} of ``GROUPS_JUDGED`` in ``classes.GROUPS``."""
    from .classes import GROUPS
    return {g: GROUPS[g] for g in GROUPS_JUDGED if g in GROUPS}


def crops(image: np.ndarray, scale: float, crop: int = 224):
    """(N, 3, crop, crop) float 0-255: the image at ``scale`` (antialiased bilinear) cut into
    the whole crops that fit, the grid centred; N = 0 where the scaled image is smaller."""
    import torch
    import torch.nn.functional as F
    rgb = np.ascontiguousarray(image[..., :3], dtype=np.float32)
    x = torch.from_numpy(rgb).permute(2, 0, 1)[None]                 # (1, 3, h, w)
    if scale != 1:
        x = F.interpolate(x, scale_factor=scale, mode="bilinear", antialias=True)
    h, w = x.shape[2:]
    ny, nx = h // crop, w // crop
    oy, ox = (h - ny * crop) // 2, (w - nx * crop) // 2
    if not ny or not nx:
        return x.new_zeros((0, 3, crop, crop))
    return torch.cat([x[:, :, oy + i * crop:oy + (i + 1) * crop, ox + j * crop:ox + (j + 1) * crop]
                      for i in range(ny) for j in range(nx)])


def judge(image: np.ndarray, model: str, scales=(1, 0.5, 0.25), sigma: float = 2.0,
          crop: int = 224) -> dict[str, float]:
    """{group: share}: the mean over ``scales`` of the mean softmax mass that ``model`` gives
    a group's classes over the crops at that scale (``crops``), each crop blurred by
    ``sigma`` px first. ``image``: (h, w, 3), 0-255. A scale at which the image is smaller
    than a crop is left out; if every one is, ValueError."""
    import torch

    from .models import get_model
    from .modes.dream import gaussian_blur
    net, found = get_model(model), groups()
    per_scale = []
    for s in scales:
        c = crops(image, s, crop)
        if not len(c):
            continue
        if sigma:
            c = gaussian_blur(c, sigma)
        with torch.no_grad():
            p = torch.cat([net(b, {"logits"})["logits"].float().softmax(1) for b in c.split(16)])
        per_scale.append({g: float(p[:, idx].sum(1).mean()) for g, idx in found.items()})
    if not per_scale:
        raise ValueError(f"judge: a {image.shape[1]}×{image.shape[0]} image has no {crop} px "
                         f"crop at scales {tuple(scales)}; give an image at least {crop} px a side")
    return {g: float(np.mean([d[g] for d in per_scale])) for g in found}


def edge_zone(photo: np.ndarray, radius: int = 3, quantile: float = 0.95) -> np.ndarray:
    """(h, w) bool: within ``radius`` px (a disk's dilation) of the photo's strong edges, its
    grey Sobel magnitude (after a Gaussian blur of σ 1 px, so noise is no edge) above its
    ``quantile``."""
    from skimage import color, filters, morphology
    grey = filters.gaussian(color.rgb2gray(np.asarray(photo[..., :3]) / 255.0), sigma=1)
    mag = filters.sobel(grey)
    return morphology.dilation(mag > np.quantile(mag, quantile), morphology.disk(radius))


def halo_ratio(photo: np.ndarray, result: np.ndarray, radius: int = 3,
               quantile: float = 0.95) -> tuple[float, float]:
    """(chroma ratio, ΔE ratio): the mean colour shift from ``photo`` to ``result`` (both
    (h, w, 3), 0-255) near the photo's strong edges (``edge_zone``) over its mean elsewhere.
    The shift is CIELAB ΔE76 per pixel, and its chroma part, the a*b* distance: a halo is
    mostly a colour fringe (green-magenta, as raw RGB steps make them), which the chroma
    ratio sees even where the lightness change along a contour is the photo's own."""
    from skimage import color
    near = edge_zone(photo, radius, quantile)
    a = color.rgb2lab(np.asarray(photo[..., :3], np.float64) / 255.0)
    b = color.rgb2lab(np.asarray(result[..., :3], np.float64) / 255.0)
    d = b - a
    chroma = np.hypot(d[..., 1], d[..., 2])
    delta_e = np.sqrt((d * d).sum(-1))
    return (float(chroma[near].mean() / chroma[~near].mean()),
            float(delta_e[near].mean() / delta_e[~near].mean()))


def boundary_ratio(img: np.ndarray, lines: list[int], axis: int) -> float:
    """Mean |gradient| across ``lines`` (the step from line to line + 1) over that elsewhere;
    ``img``: (h, w, C)."""
    d = np.abs(np.diff(np.asarray(img, np.float64).sum(axis=2), axis=axis))
    return float(d.take(lines, axis=axis).mean() / np.delete(d, lines, axis=axis).mean())


def tile_boundaries(cfg, shape: tuple[int, int], axis: int) -> list[int]:
    """The finest octave's tile boundary lines along ``axis`` (0: rows), every pass's: the
    last row or column before each boundary."""
    from .pipeline import plan
    t = cfg.tiling.tile
    return sorted({i * t - p.offset[axis] - 1 for p in plan(shape, cfg) if p.octave == 0
                   for i in range(1, shape[axis] // t + 2)
                   if 0 < i * t - p.offset[axis] < shape[axis]})


def seam_ratio(photo: np.ndarray, result: np.ndarray, cfg) -> tuple[float, float] | None:
    """(rows, columns): the change from ``photo`` to ``result`` (a run of ``cfg``) across the
    finest octave's tile boundaries over elsewhere (``boundary_ratio``); 1 = no seam. None
    where the image is one tile."""
    change = np.asarray(result, np.float64) - np.asarray(photo, np.float64)
    lines = [tile_boundaries(cfg, change.shape[:2], axis) for axis in (0, 1)]
    if not all(lines):
        return None
    return tuple(boundary_ratio(change, ls, axis) for axis, ls in enumerate(lines))
