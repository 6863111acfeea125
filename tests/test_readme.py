"""docs/parameters.md documents every script's current flags (generated from each script's --help)."""
import subprocess
import sys

from conftest import ROOT, script_env

GENERATOR = ROOT / "scripts" / "update_parameters_doc.py"


def test_parameters_doc_is_current():
    proc = subprocess.run([sys.executable, str(GENERATOR), "--check"],
                          env=script_env(), capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr


def test_parameters_doc_covers_every_entry_point_and_flag():
    """Each Python entry point the README names has a section, and its flags appear in it."""
    doc = (ROOT / "docs" / "parameters.md").read_text(encoding="utf-8")
    for script in ("run_pretraining.py", "run_squad.py", "run_glue.py", "run_swag.py", "inference.py",
                   "data/bertPrep.py", "convert_checkpoint.py", "triton/export.py", "bind_pyt.py"):
        assert f"### `{script}`" in doc, script
    section = doc.split("### `run_pretraining.py`", 1)[1].split("### ", 1)[0]
    for flag in ("--input_dir", "--config_file", "--output_dir", "--steps_this_run", "--phase2", "--precision"):
        assert flag in section, flag


def test_readme_links_the_parameters_doc():
    assert "docs/parameters.md" in (ROOT / "README.md").read_text(encoding="utf-8")
