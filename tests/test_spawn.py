"""gigadream's own children start the installed package whatever folder they start in
(issue 32: a studio started from the folder that holds the clone answered 500, "cannot import
name '__version__' from 'gigadream'")."""
import os
import subprocess
import sys

from gigadream import __version__
from gigadream.spawn import python_module


def test_a_source_folder_in_the_working_folder_does_not_shadow_the_package(tmp_path):
    (tmp_path / "gigadream").mkdir()             # a clone's folder, as seen from its parent
    (tmp_path / "gigadream" / "README.md").write_text("not the package")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}   # the package as installed
    plain = subprocess.run([sys.executable, "-m", "gigadream", "--version"], cwd=tmp_path,
                           capture_output=True, text=True, env=env)
    assert plain.returncode != 0                  # what -m alone does there: the bug
    ours = subprocess.run(python_module("gigadream", "--version"), cwd=tmp_path,
                          capture_output=True, text=True, env=env)
    assert ours.returncode == 0 and ours.stdout.strip() == f"gigadream {__version__}"
