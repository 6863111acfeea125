"""The project installs as `bert-pytorch` (pyproject.toml) with every top-level module and package listed,
the runtime requirements in step with requirements.txt, and no script edits `sys.path` or waives E402."""
from __future__ import annotations

import re
import subprocess

import pytest
from conftest import ROOT

tomllib = pytest.importorskip("tomllib")

PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
# Where a sys.path entry is the job itself: argv_probe mimics `python X.py` in-process, and the Triton
# python-backend model runs in the server's interpreter, where the model config names the code folder.
SYS_PATH_ALLOWED = {"tests/argv_probe.py", "triton/python_models/bert_text_model.py"}


def tracked_python_files() -> list[str]:
    listed = subprocess.run(["git", "ls-files", "*.py"], cwd=ROOT, capture_output=True, text=True, check=True)
    return [name for name in listed.stdout.split() if (ROOT / name).exists()]


def test_every_top_level_module_and_package_is_installed():
    setuptools = PROJECT["tool"]["setuptools"]
    assert sorted(setuptools["py-modules"]) == sorted(p.stem for p in ROOT.glob("*.py"))
    packages = {p.parent.name for p in ROOT.glob("*/__init__.py")} - {"triton"}  # triton/: see its __init__.py
    assert sorted(setuptools["packages"]) == sorted(packages)


def test_dependencies_are_requirements_txt_without_torch():
    required = []
    for line in (ROOT / "requirements.txt").read_text(encoding="utf-8").splitlines():
        requirement = line.split("#", 1)[0].strip()
        if requirement and not re.match(r"torch\b", requirement):
            required.append(requirement)
    assert PROJECT["project"]["dependencies"] == required


def test_no_sys_path_edits_or_e402_waivers():
    found = []
    for name in tracked_python_files():
        if name in SYS_PATH_ALLOWED:
            continue
        text = (ROOT / name).read_text(encoding="utf-8")
        found += [f"{name}: {m.group(0)}" for m in re.finditer(r"sys\.path\.(insert|append)\(|noqa: E40[2]", text)]
    assert not found, found
