"""The README documents every script's current flags."""
import subprocess
import sys

from conftest import ROOT, script_env


def test_readme_script_parameters_are_current():
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "readme_usage.py"), "--check"],
                          env=script_env(), capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr
