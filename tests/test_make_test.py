"""`make test` tests what CI tests: the system-package installer, and the run's closing skip summary."""
from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest
from conftest import ROOT

pytest_plugins = ["pytester"]

INSTALLER = ROOT / ".ci" / "install-system-packages.sh"
ABSENT = "bert-pytorch-no-such-package"


def installer_with_list(tmp_path: Path, packages: list[str]) -> Path:
    """The installer beside a package list of our choosing (it reads the list next to itself)."""
    folder = tmp_path / "ci"
    folder.mkdir()
    shutil.copy(INSTALLER, folder / INSTALLER.name)
    (folder / "system-packages.txt").write_text("# comment line\n\n" + "".join(f"{p}  # why\n" for p in packages))
    return folder / INSTALLER.name


def test_one_package_list_feeds_make_test_and_ci():
    listed = [line.split()[0] for line in (ROOT / ".ci" / "system-packages.txt").read_text().splitlines()
              if line.strip() and not line.startswith("#")]
    assert listed == ["slurm-wlm", "munge", "numactl", "shellcheck", "docker.io", "debootstrap"]
    makefile = (ROOT / "Makefile").read_text()
    assert "test: $(STAMP) system-packages" in makefile
    assert "bash .ci/install-system-packages.sh" in makefile
    ci = (ROOT / ".ci" / "run").read_text()
    assert "make test" in ci and "apt-get" not in ci  # CI installs through make test, from the same list
    assert ci.index("make lint") < ci.index("make test")  # lint first: a style failure shows in seconds


@pytest.mark.skipif(shutil.which("dpkg-query") is None, reason="dpkg-query not available (not Debian)")
def test_installer_is_silent_when_everything_is_installed(tmp_path):
    done = subprocess.run(["bash", str(installer_with_list(tmp_path, ["bash", "coreutils"]))],
                          capture_output=True, text=True, timeout=60)
    assert (done.returncode, done.stdout, done.stderr) == (0, "", "")


@pytest.mark.skipif(shutil.which("dpkg-query") is None, reason="dpkg-query not available (not Debian)")
@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("setpriv") is None, reason="needs root to drop to nobody")
def test_installer_without_root_names_what_is_missing_and_succeeds():
    # pytest's tmp_path lies under a root-only folder; nobody needs to read the script.
    folder = Path(tempfile.mkdtemp(prefix="bert-installer-"))
    try:
        folder.chmod(0o755)
        script = installer_with_list(folder, ["bash", ABSENT])
        script.parent.chmod(0o755)
        done = subprocess.run(["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", "bash", str(script)],
                              capture_output=True, text=True, timeout=60)
    finally:
        shutil.rmtree(folder)
    assert done.returncode == 0
    assert done.stderr.splitlines() == [
        f"system packages not installed (needs root and apt-get): {ABSENT}; their tests will skip"]


def test_run_ends_with_one_line_of_skip_reasons(pytester):
    pytester.makeconftest((ROOT / "tests" / "conftest.py").read_text())
    pytester.makepyfile(test_sample="""
        import shutil
        import pytest
        from conftest import shared_path

        @pytest.mark.parametrize("name", ["a", "b", "c"])
        def test_needs_data(name):
            shared_path("nowhere", name)

        @pytest.mark.skipif(True, reason="numactl not installed (apt-get install numactl)")
        def test_binding():
            pass

        @pytest.fixture
        def cluster():
            pytest.skip("Slurm not installed (apt-get install slurm-wlm munge)")

        def test_cluster(cluster):
            pass

        def test_runs():
            pass
    """)
    result = pytester.runpytest("-q", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=1, skipped=5)
    lines = [line for line in result.outlines if line.strip()]
    assert lines[-2] == ("skipped 5: 3 × shared data not available; "
                         "1 × Slurm not installed (apt-get install slurm-wlm munge); "
                         "1 × numactl not installed (apt-get install numactl)")


def test_no_skip_line_when_nothing_skipped(pytester):
    pytester.makeconftest((ROOT / "tests" / "conftest.py").read_text())
    pytester.makepyfile(test_sample="def test_runs():\n    pass\n")
    result = pytester.runpytest("-q", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=1)
    assert not [line for line in result.outlines if line.startswith("skipped")]
