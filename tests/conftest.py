"""Shared fixtures: the shared real data, loading benchmark scripts, and skip helpers.

The project root and benchmarks/ are on sys.path through pyproject.toml's pytest `pythonpath`, so the tests
run from a checkout where the project is not installed too."""
from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("BERT_SHARED_DATA", ROOT.parent / "shared" / "data"))


def load_benchmark(name: str):
    """A module of benchmarks/ (a folder of scripts, not a package) by file name, e.g. 'bench_data_pipeline'."""
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is made
    spec.loader.exec_module(module)
    return module


def shared_path(*parts: str) -> Path:
    """A path under ../shared/data, or skip the test with the reason when it is absent."""
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"shared data not available: {path} (tests read real data from ../shared/data)")
    return path


@pytest.fixture
def shared():
    return shared_path


@pytest.fixture(scope="session")
def root() -> Path:
    return ROOT


@pytest.fixture(scope="session")
def python_exe() -> str:
    return sys.executable


def script_env() -> dict[str, str]:
    """Environment for running the project's scripts in a subprocess from the tests."""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    env.setdefault("OMP_NUM_THREADS", "2")
    env["HF_HUB_OFFLINE"] = "1"
    env["TRANSFORMERS_OFFLINE"] = "1"
    return env


def record_allreduces(ddp, world: int) -> list[int]:
    """Give a DistributedDataParallel model a comm hook that averages gradients as DDP does and records the
    bucket index of every all-reduce it runs; returns that (growing) record."""
    import torch.distributed as dist

    calls: list[int] = []

    def counting_hook(state, bucket):
        calls.append(bucket.index())
        fut = dist.all_reduce(bucket.buffer().div_(world), async_op=True).get_future()
        return fut.then(lambda f: f.value()[0])

    ddp.register_comm_hook(None, counting_hook)
    return calls


def skip_reason(report: pytest.TestReport) -> str:
    """A skip's reason without the per-test detail after the first ': ' (e.g. which data file is absent)."""
    longrepr = report.longrepr
    reason = longrepr[2] if isinstance(longrepr, tuple) else str(longrepr)
    reason = reason.removeprefix("Skipped: ")
    return reason.split(": ", 1)[0].strip()


def skip_summary(reports: list[pytest.TestReport]) -> str | None:
    """One line: how many tests were skipped, grouped by reason, most frequent first."""
    by_test = {report.nodeid: skip_reason(report) for report in reports}
    if not by_test:
        return None
    counts: dict[str, int] = {}
    for reason in by_test.values():
        counts[reason] = counts.get(reason, 0) + 1
    groups = sorted(counts.items(), key=lambda item: (-item[1], item[0]))
    return f"skipped {len(by_test)}: " + "; ".join(f"{count} × {reason}" for reason, count in groups)


def pytest_terminal_summary(terminalreporter, exitstatus, config) -> None:
    # `make test` on a machine without Slurm/numactl/shellcheck or the shared data tests less than CI:
    # say so in one line at the end of the run rather than only in the count.
    line = skip_summary(terminalreporter.stats.get("skipped", []))
    if line:
        terminalreporter.write_line(line, yellow=True)
