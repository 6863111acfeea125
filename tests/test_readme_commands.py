"""Every command in README.md and docs/*.md runs as written on a fresh clone (data paths aside).

Each shell line of the ```bash blocks is split into commands and checked without doing the work:
- `python X.py ...` / `python -m pkg.mod ...` / `torchrun ... X.py ...`: X exists and its own argparse
  parser accepts the arguments (tests/argv_probe.py stops the script right after the parse);
- `bash X.sh ...`, `sbatch ... run.sub`: the file exists and passes `bash -n`; a quoted argument that is
  itself a command (`launch.sh "make demo"`) is checked the same way;
- `$(source scripts/configs/X.sh && preset)`: runs for real (presets only print arguments);
- `make [VAR=value] target`: `make -n` accepts it;
- every argument that names a file inside the repository (a path whose first part is a tracked
  file or folder, or any `.py`/`.sh` file) exists. Data and output paths are exempt: anything under
  `data/`, `results/`, `demo_out/`, `checkpoints/`, absolute paths and anything holding `$`.
"""
from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from conftest import ROOT, script_env

DOC_FILES = [ROOT / "README.md", *sorted(p for p in (ROOT / "docs").glob("*.md") if p.name != "parameters.md")]
FENCE = re.compile(r"^```(\w*)\s*$")
SHELL_LANGS = {"bash", "sh", "shell"}
PYTHONS = {"python", "python3", ".venv/bin/python"}
# Programs that are not part of this repository and are fine to name in a command.
EXTERNAL = {"sbatch", "srun", "docker", "pip", "git", "tensorboard", "nvidia-smi", "numactl", "tritonserver",
            "export", "cd", "mkdir", "ls", "cat", "echo", "tar", "curl", "kill"}
EXEMPT_PREFIXES = ("data/", "results/", "demo_out/", "checkpoints/", "/", "~", "-")
SUBST = re.compile(r"\$\(([^()]*)\)")
ENV_ASSIGNMENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")
CONTROL = {"&&", "||", ";", "|", "&"}


@dataclass
class Command:
    source: str  # "README.md:42", for the failure message
    argv: list[str]


@dataclass
class Findings:
    errors: list[str] = field(default_factory=list)
    python_calls: list[tuple[str, str, list[str]]] = field(default_factory=list)  # (where, target, argv)


def shell_lines(text: str, name: str) -> list[tuple[str, str]]:
    """(where, line) for each logical line of the shell code blocks, continuations joined."""
    out: list[tuple[str, str]] = []
    in_shell = in_block = False
    pending, start = "", 0
    for number, line in enumerate(text.splitlines(), 1):
        fence = FENCE.match(line.strip())
        if fence:
            in_block = not in_block
            in_shell = in_block and fence.group(1) in SHELL_LANGS
            continue
        if not in_shell:
            continue
        if not pending:
            start = number
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        out.append((f"{name}:{start}", pending + line))
        pending = ""
    return out


def split_commands(where: str, line: str, findings: Findings) -> list[Command]:
    """Split a shell line into simple commands; `$(...)` substitutions are checked and replaced."""
    for inner in SUBST.findall(line):
        check_substitution(where, inner, findings)
    line = SUBST.sub("SUBSTITUTED", line)
    lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    commands, current = [], []
    tokens = list(lexer)
    index = 0
    while index < len(tokens):
        token = tokens[index]
        if token in CONTROL:
            commands.append(current)
            current = []
        elif token in {">", ">>", "<", "2>"}:
            index += 1  # a redirection's file is output, not checked
        else:
            current.append(token)
        index += 1
    commands.append(current)
    return [Command(where, argv) for argv in commands if argv]


def check_substitution(where: str, inner: str, findings: Findings) -> None:
    """`$(source FILE && preset)` is run for real: presets only print a script's arguments."""
    if not inner.strip().startswith(("source ", ". ")):
        for command in split_commands(where, inner, findings):
            check_command(command, findings)
        return
    proc = subprocess.run(["bash", "-c", inner], cwd=ROOT, capture_output=True, text=True, timeout=60)
    if proc.returncode != 0 or not proc.stdout.strip():
        findings.errors.append(f"{where}: `$({inner})` failed: {proc.stderr.strip()[-300:]}")


def is_repository_path(token: str) -> bool:
    """A token that names a file of this repository (so it must exist), not data or output."""
    value = token.split("=", 1)[1] if token.startswith("--") and "=" in token else token
    if not value or "$" in value or value.startswith(EXEMPT_PREFIXES) and not value.endswith((".py", ".sh")):
        return False
    if value.startswith(("/", "~", "-")) or " " in value:
        return False
    if value.endswith((".py", ".sh", ".sub")):
        return True
    first = value.split("/", 1)[0]
    return "/" in value and (ROOT / first).exists()


def check_paths(command: Command, findings: Findings) -> None:
    for token in command.argv:
        value = token.split("=", 1)[1] if token.startswith("--") and "=" in token else token
        if is_repository_path(token) and not (ROOT / value).exists():
            findings.errors.append(f"{command.source}: `{value}` does not exist in the repository")


def check_shell_script(where: str, script: str, args: list[str], findings: Findings) -> None:
    path = ROOT / script
    if not path.is_file():
        findings.errors.append(f"{where}: script `{script}` does not exist")
        return
    proc = subprocess.run(["bash", "-n", str(path)], capture_output=True, text=True, timeout=60)
    if proc.returncode != 0:
        findings.errors.append(f"{where}: `bash -n {script}` failed: {proc.stderr.strip()}")
    for arg in args:  # a quoted command handed to the script (docker/launch.sh "make demo")
        words = arg.split()
        if len(words) > 1 and (words[0] in PYTHONS or words[0] in {"bash", "make"}):
            for command in split_commands(where, arg, findings):
                check_command(command, findings)


def check_python(where: str, args: list[str], findings: Findings) -> None:
    if args[:1] == ["-m"] and len(args) > 1:
        module = args[1]
        if module.split(".")[0] not in {"pytest", "pip", "torch", *sys.stdlib_module_names}:
            if not (ROOT / (module.replace(".", "/") + ".py")).is_file():
                findings.errors.append(f"{where}: module `{module}` is not in the repository")
                return
            findings.python_calls.append((where, f"-m {module}", args[2:]))
        return
    if not args or not args[0].endswith(".py"):
        findings.errors.append(f"{where}: `python {' '.join(args)}` names no script")
        return
    if not (ROOT / args[0]).is_file():
        findings.errors.append(f"{where}: script `{args[0]}` does not exist")
        return
    source = (ROOT / args[0]).read_text(encoding="utf-8")
    if "ArgumentParser" not in source:
        # A script with its own tiny argv handling is never run here; each flag must appear in it.
        for flag in (a.split("=", 1)[0] for a in args[1:] if a.startswith("--")):
            if f'"{flag}"' not in source:
                findings.errors.append(f"{where}: `{args[0]}` has no flag `{flag}`")
        return
    findings.python_calls.append((where, args[0], args[1:]))


def check_make(where: str, args: list[str], findings: Findings) -> None:
    proc = subprocess.run(["make", "-n", *args], cwd=ROOT, capture_output=True, text=True, timeout=60,
                          env=script_env())
    if proc.returncode != 0:
        findings.errors.append(f"{where}: `make {' '.join(args)}` is not accepted: {proc.stderr.strip()}")


def check_command(command: Command, findings: Findings) -> None:
    argv = list(command.argv)
    while argv and ENV_ASSIGNMENT.match(argv[0]):
        argv.pop(0)
    if not argv:
        return
    program, args = argv[0], argv[1:]
    check_paths(Command(command.source, args), findings)
    where = command.source
    if program in PYTHONS:
        check_python(where, args, findings)
    elif program == "torchrun":
        rest = [a for a in args if not a.startswith("-")]
        check_python(where, args[args.index(rest[0]):] if rest else [], findings)
    elif program in {"bash", "sh"}:
        if args:
            check_shell_script(where, args[0], args[1:], findings)
    elif program.startswith("./") or program.endswith((".sh", ".sub")):
        check_shell_script(where, program.removeprefix("./"), args, findings)
    elif program == "sbatch":
        scripts = [a for a in args if not a.startswith("-")]
        if scripts:
            check_shell_script(where, scripts[0], [], findings)
    elif program == "make":
        check_make(where, args, findings)
    elif program == "source" or program == ".":
        check_shell_script(where, args[0], [], findings)
    elif program not in EXTERNAL:
        findings.errors.append(f"{where}: `{program}` is neither a repository script nor a known program")


def probe_python_calls(calls: list[tuple[str, str, list[str]]]) -> list[str]:
    """Parse each call's arguments with the script's own parser (one interpreter for all)."""
    if not calls:
        return []
    entries = [{"target": target, "argv": argv} for _, target, argv in calls]
    proc = subprocess.run([sys.executable, str(ROOT / "tests" / "argv_probe.py")], input=json.dumps(entries),
                          cwd=ROOT, env=script_env(), capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr
    results = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    assert len(results) == len(calls), proc.stdout + proc.stderr
    return [f"{where}: `{target} {shlex.join(argv)}`: {result['error']}"
            for (where, target, argv), result in zip(calls, results, strict=True) if not result["ok"]]


def check_document(text: str, name: str) -> tuple[list[str], int]:
    """All problems with the commands of one markdown text, and how many commands were checked."""
    findings = Findings()
    count = 0
    for where, line in shell_lines(text, name):
        for command in split_commands(where, line, findings):
            check_command(command, findings)
            count += 1
    return findings.errors + probe_python_calls(findings.python_calls), count


@pytest.mark.parametrize("doc", DOC_FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_documented_command_runs_as_written(doc: Path):
    errors, count = check_document(doc.read_text(encoding="utf-8"), str(doc.relative_to(ROOT)))
    assert not errors, "\n".join(errors)
    if doc.name == "README.md":
        assert count >= 15, f"only {count} commands found in README.md's code blocks"


def test_readme_quick_start_is_make_demo_and_make_test():
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    commands = [" ".join(c.argv) for where, line in shell_lines(text, "README.md")
                for c in split_commands(where, line, Findings())]
    assert commands[:2] == ["make demo", "make test"]


def test_pretraining_presets_run_this_checkout_from_any_folder(tmp_path):
    """The README's preset command works on a fresh clone: CODEDIR and the data default to this checkout."""
    script = f"source {ROOT / 'scripts/configs/pretrain_config.sh'} && dgxa100_8gpu_bf16"
    env = {k: v for k, v in script_env().items() if k not in {"CODEDIR", "BERT_PREP_WORKING_DIR", "DATA_P1", "DATA_P2"}}
    args = subprocess.run(["bash", "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True,
                          check=True).stdout.split()
    assert len(args) == 25
    data_p1, data_p2, codedir, config = args[20], args[21], args[22], args[24]
    assert codedir == str(ROOT) and config == str(ROOT / "bert_config.json")
    assert data_p1.startswith(str(ROOT / "data" / "hdf5_lower_case_1_seq_len_128_max_pred_20_"))
    assert data_p2.startswith(str(ROOT / "data" / "hdf5_lower_case_1_seq_len_512_max_pred_80_"))


LINK = re.compile(r"\]\(([^)\s]+)\)")


def heading_anchors(text: str) -> set[str]:
    """GitHub's anchors for a markdown file's headings (lower case, punctuation dropped, spaces to -)."""
    headings, in_block = [], False
    for line in text.splitlines():
        in_block ^= bool(FENCE.match(line.strip()))
        if not in_block and re.match(r"^#{1,6} ", line):  # a `# comment` in a code block is no heading
            headings.append(line.lstrip("#").strip())
    return {"".join(c for c in h.lower() if c.isalnum() or c in "-_ ").replace(" ", "-") for h in headings}


@pytest.mark.parametrize("doc", [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))],
                         ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_and_anchor_exists(doc: Path):
    broken = []
    for target in LINK.findall(doc.read_text(encoding="utf-8")):
        if "://" in target:
            continue
        path, _, anchor = target.partition("#")
        file = (doc.parent / path).resolve() if path else doc
        anchor_missing = bool(anchor) and file.suffix == ".md" and file.exists() and \
            anchor not in heading_anchors(file.read_text(encoding="utf-8"))
        if not file.exists() or anchor_missing:
            broken.append(target)
    assert not broken, f"{doc.name}: broken links {broken}"


BROKEN = """
```bash
python run_squad.py --init_checkpoint x.pt --output_dir results --no_such_flag 3
python run_pretraining.py --input_dir data/x --config_file bert_config.json --output_dir results --precision fp8
make no-such-target
bash scripts/no_such_script.sh
python inference.py --vocab_file vocab/vocab --config_file bert_config.json --init_checkpoint x.pt
bash scripts/run_squad.sh $(source scripts/configs/squad_config.sh && no_such_preset)
frobnicate --now
python tests/test_golden_loss.py --regenerate-all
```
"""


def test_the_check_catches_wrong_flags_targets_and_paths():
    errors, count = check_document(BROKEN, "BROKEN.md")
    assert count == 8
    text = "\n".join(errors)
    assert "run_squad.py: error: unrecognized arguments: --no_such_flag 3" in text, text
    assert "argument --precision: invalid choice: 'fp8'" in text
    assert "make no-such-target" in text
    assert "scripts/no_such_script.sh" in text
    assert "`vocab/vocab` does not exist" in text
    assert "no_such_preset" in text
    assert "`frobnicate`" in text
    assert "has no flag `--regenerate-all`" in text
