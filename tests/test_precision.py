"""--precision auto: bf16 on the CPU only where oneDNN runs it natively, fp32 elsewhere; one line says
which and why; an explicit bf16 on a CPU that emulates it runs with one warning; presets pass auto."""
from __future__ import annotations

import subprocess

import pytest
import torch
from conftest import ROOT, script_env

import precision
from precision import cpu_runs_bf16_natively, resolve_precision


@pytest.fixture
def bf16_native(monkeypatch):
    """Set what the oneDNN bf16 probe answers."""
    def set_answer(native: bool) -> None:
        monkeypatch.setattr(precision, "cpu_runs_bf16_natively", lambda: native)
    return set_answer


@pytest.mark.parametrize(("native", "expected", "why"), [
    (False, "fp32", "no native bf16"), (True, "bf16", "runs bf16 natively")])
@pytest.mark.parametrize("asked", [None, "auto"])
def test_auto_picks_bf16_only_where_the_cpu_runs_it_natively(bf16_native, capsys, native, expected, why, asked):
    bf16_native(native)
    assert resolve_precision(asked, False, torch.device("cpu")) == expected
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"precision auto: {expected} (") and why in lines[0], lines


@pytest.mark.parametrize("native", [False, True])
def test_auto_on_a_gpu_keeps_the_original_default_and_the_fp16_flag_wins(bf16_native, native):
    bf16_native(native)
    assert resolve_precision(None, False, torch.device("cuda", 0)) == "fp32"
    assert resolve_precision("auto", False, "cuda:1") == "fp32"
    assert resolve_precision(None, True, "cpu") == "fp16"  # the original's --fp16/--amp
    assert resolve_precision("auto", True, "cuda") == "fp16"


def test_explicit_bf16_on_an_emulating_cpu_runs_with_one_warning(bf16_native, capsys):
    bf16_native(False)
    assert resolve_precision("bf16", False, "cpu") == "bf16"
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith("warning: --precision bf16") and "10x slower" in err[0]
    bf16_native(True)
    assert resolve_precision("bf16", False, "cpu") == "bf16"
    assert resolve_precision("fp32", True, "cpu") == "fp32"  # --precision wins over --fp16
    assert capsys.readouterr().err == ""  # nothing to warn about


def test_the_probe_answers_what_onednn_says():
    probe = getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", None)
    expected = bool(torch.backends.mkldnn.is_available() and probe is not None and probe())
    assert cpu_runs_bf16_natively() == expected


def test_only_rank_zero_says_what_auto_chose(bf16_native, capsys, monkeypatch):
    bf16_native(False)
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert resolve_precision(None, False, "cpu") == "fp32"
    assert capsys.readouterr() == ("", "")


def test_unknown_precision_is_refused():
    with pytest.raises(ValueError, match="--precision: unknown value 'fp8'"):
        resolve_precision("fp8")


@pytest.mark.parametrize("script", ["run_pretraining.py", "run_squad.py", "run_glue.py", "run_swag.py",
                                    "inference.py", "extract_features.py", "run_pretraining_inference.py"])
def test_every_script_takes_auto_and_defaults_to_it(script):
    out = subprocess.run(["python", str(ROOT / script), "--help"], capture_output=True, text=True,
                         env=script_env(), check=True).stdout
    flag = out[out.index("--precision"):]
    assert "auto" in flag.split("\n", 1)[0] and "auto (the default" in " ".join(flag.split())


@pytest.mark.parametrize(("cpu_precision", "expected"), [(None, "auto"), ("fp32", "fp32"), ("bf16", "bf16")])
def test_cpu_preset_passes_auto_unless_pinned(cpu_precision, expected):
    env = {k: v for k, v in script_env().items() if k != "CPU_PRECISION"}
    if cpu_precision:
        env["CPU_PRECISION"] = cpu_precision
    preset = ROOT / "scripts" / "configs" / "pretrain_config.sh"
    out = subprocess.run(["bash", "-c", 'source "$1" && cpu_tiny', "_", str(preset)], capture_output=True, text=True,
                         env=env, check=True).stdout.split()
    assert out[2] == expected  # positional 3 of scripts/run_pretraining.sh


def test_wrappers_accept_auto_and_name_it_in_the_error():
    common = ROOT / "scripts" / "finetune_common.sh"
    ok = subprocess.run(["bash", "-c", 'source "$1" && check_precision auto', "_", str(common)], capture_output=True,
                        text=True)
    assert ok.returncode == 0, ok.stderr
    bad = subprocess.run(["bash", "-c", 'source "$1" && check_precision fp8', "_", str(common)], capture_output=True,
                         text=True)
    assert bad.returncode == 2
    assert bad.stderr.strip() == "error: unknown precision 'fp8': use auto, fp16, bf16, tf32 or fp32"
