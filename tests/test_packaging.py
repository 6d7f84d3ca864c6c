"""The wheel: what `pip install unetlab` puts on a machine works from any folder, built-in recipes included.

Built offline from a copy of the sources (`--no-build-isolation`: setuptools from the dev extras),
installed with `pip --target` into a temporary folder and run by fresh interpreters whose working
folder is elsewhere and which cannot see the checkout.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

# Run first in every fresh interpreter: forget the checkout (an editable install's path entry or import hook).
PRELUDE = f"""
import sys
sys.path[:] = [p for p in sys.path if not p.startswith({str(REPO / "src")!r})]
sys.meta_path[:] = [f for f in sys.meta_path if not type(f).__module__.startswith("__editable__")]
"""

CHECK = PRELUDE + """
from pathlib import Path
import unetlab
from unetlab import load_config
from unetlab.recipes import recipe_names

target = Path(sys.argv[1]).resolve()
assert Path(unetlab.__file__).resolve().is_relative_to(target), unetlab.__file__
assert recipe_names() == ["case-study", "tgs-salt"], recipe_names()
assert load_config("tgs-salt").name == "tgs-salt"
assert load_config("case-study", ["train.epochs=2"]).train.epochs == 2
print("ok")
"""

CLI = PRELUDE + """
import runpy
sys.argv[0] = "unetlab"
runpy.run_module("unetlab", run_name="__main__", alter_sys=True)
"""


def _run(args: list[str], **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(args, capture_output=True, text=True, timeout=600, **kwargs)


def _build_wheel(tmp_path: Path) -> Path:
    source = tmp_path / "source"  # a copy: the build writes build/ and *.egg-info beside the sources
    shutil.copytree(REPO / "src", source / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, source / name)
    built = _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
                  "-w", str(tmp_path / "dist"), str(source)])
    assert built.returncode == 0, built.stdout[-3000:] + built.stderr[-3000:]
    wheels = list((tmp_path / "dist").glob("unetlab-*.whl"))
    assert len(wheels) == 1, wheels
    return wheels[0]


def test_wheel_installs_and_runs_from_any_folder(tmp_path):
    wheel = _build_wheel(tmp_path)
    target = tmp_path / "site"
    installed = _run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "--target", str(target),
                      str(wheel)])
    assert installed.returncode == 0, installed.stdout[-3000:] + installed.stderr[-3000:]
    assert sorted(p.name for p in (target / "unetlab" / "configs").glob("*.yaml")) == ["case-study.yaml",
                                                                                       "tgs-salt.yaml"]
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {**os.environ, "PYTHONPATH": str(target)}
    checked = _run([sys.executable, "-c", CHECK, str(target)], cwd=elsewhere, env=env)
    assert checked.returncode == 0 and checked.stdout.strip() == "ok", checked.stdout + checked.stderr
    helped = _run([sys.executable, "-c", CLI, "train", "--config", "tgs-salt", "--help"], cwd=elsewhere, env=env)
    assert helped.returncode == 0 and "--config" in helped.stdout, helped.stdout + helped.stderr
    listed = _run([sys.executable, "-c", CLI, "configs"], cwd=elsewhere, env=env)
    assert listed.returncode == 0 and "tgs-salt" in listed.stdout and "case-study" in listed.stdout, listed.stderr
