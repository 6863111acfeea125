"""Serve a Triton model repository with the `tritonserver` bundled in the PyPI package nvidia-pytriton.

    python triton/server.py --model-repository results/triton_models [--http-port 8000 --grpc-port 8001]

No container is needed: the wheel carries a real `tritonserver` (2.51) and its `python` backend, so
models whose config says `backend: "python"` (what `triton/model_repository.py --backend python`
writes) run here on a laptop CPU. The same repository runs unchanged in the
`nvcr.io/nvidia/tritonserver` container on a GPU server (see triton/README.md), where the
`onnxruntime` and `pytorch` backends are also available.

What this launcher takes care of:
* binds HTTP, gRPC and metrics to 127.0.0.1 unless `--host` says otherwise;
* puts the interpreter's LIBDIR and the wheel's bundled libraries on LD_LIBRARY_PATH, so the backend
  stub embeds this Python (on pyenv builds it would otherwise load the system libpython and fail);
* gives the python backend a shared-memory prefix unique to this server, and on SIGTERM/SIGINT
  stops `tritonserver` gracefully, waits for it, then removes any of its /dev/shm regions and
  stub processes that a crash could have left behind;
* the server is started with a parent-death signal, so it never outlives this launcher;
* when the server dies after it was ready (the bundled 2.51 crashes on crafted HTTP requests,
  CVE-2025-23310/23311, see docs/serving.md), it is cleaned up and started again; one that does not
  come back ready ends the launcher with an error (`--no-restart`: end with the server's exit code).
"""
from __future__ import annotations

import argparse
import contextlib
import ctypes
import importlib.util
import os
import signal
import subprocess
import sys
import sysconfig
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

from input_checks import InputError, run_main

SHM_DIR = Path("/dev/shm")
SHM_PREFIX_BASE = "triton_python_backend_shm_region_"
STOP_TIMEOUT_S = 60.0
_PR_SET_PDEATHSIG = 1


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-repository", "--model_repository", required=True, type=Path,
                        help="folder with <model>/config.pbtxt and <model>/<version>/ (triton/model_repository.py)")
    parser.add_argument("--host", default="127.0.0.1",
                        help="address for HTTP, gRPC and metrics (default 127.0.0.1; 0.0.0.0 exposes the server)")
    parser.add_argument("--http-port", type=int, default=8000)
    parser.add_argument("--grpc-port", type=int, default=8001)
    parser.add_argument("--metrics-port", type=int, default=8002)
    parser.add_argument("--no-metrics", action="store_true", help="do not serve Prometheus metrics")
    parser.add_argument("--log-verbose", type=int, default=0, help="tritonserver --log-verbose level")
    parser.add_argument("--ready-timeout", type=float, default=300.0,
                        help="seconds to wait for the models to load before giving up (default 300)")
    parser.add_argument("--tritonserver", type=Path, default=None,
                        help="a tritonserver binary to use instead of the one bundled with nvidia-pytriton")
    parser.add_argument("--no-restart", action="store_true",
                        help="end when tritonserver dies instead of starting it again")
    return parser.parse_args(argv)


# --------------------------------------------------------------------------------------------
# The bundled server and its python backend
# --------------------------------------------------------------------------------------------


def pytriton_root() -> Path:
    """The installed `pytriton` package folder, found without importing it (the import is slow)."""
    spec = importlib.util.find_spec("pytriton")
    if spec is None or not spec.submodule_search_locations:
        raise InputError("nvidia-pytriton is not installed (pip install -r requirements-serve.txt); "
                         "it provides the tritonserver binary this launcher runs")
    return Path(next(iter(spec.submodule_search_locations)))


def bundled_paths() -> dict[str, Path]:
    root = pytriton_root()
    dist = root / "tritonserver"
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    paths = {
        "tritonserver": dist / "bin" / "tritonserver",
        "python_backend": dist / "backends" / "python",
        "stub": dist / "python_backend_stubs" / version / "triton_python_backend_stub",
        "libs": root.parent / "nvidia_pytriton.libs",
    }
    for name, path in paths.items():
        if not path.exists():
            raise InputError(f"nvidia-pytriton install is incomplete or has no build for Python {version}: "
                             f"{name} not found at {path}")
    return paths


def make_backend_directory(workdir: Path, paths: dict[str, Path]) -> Path:
    """A backends/ folder whose python backend uses the stub built for this interpreter's version."""
    backend = workdir / "backends" / "python"
    backend.mkdir(parents=True)
    for source in (paths["python_backend"] / "libtriton_python.so",
                   paths["python_backend"] / "triton_python_backend_utils.py",
                   paths["stub"]):
        os.symlink(source, backend / source.name)
    return workdir / "backends"


def server_environment(paths: dict[str, Path]) -> dict[str, str]:
    """This interpreter's LIBDIR first on LD_LIBRARY_PATH and its bin first on PATH, for the stub."""
    env = dict(os.environ)
    libdir = sysconfig.get_config_var("LIBDIR") or ""
    library_path = [p for p in (libdir, str(paths["libs"]), env.get("LD_LIBRARY_PATH", "")) if p]
    env["LD_LIBRARY_PATH"] = os.pathsep.join(library_path)
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    # The stub process imports the repository's modules (processors, tokenization) for text models.
    repo_root = str(Path(__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (repo_root, env.get("PYTHONPATH", "")) if p)
    return env


def server_command(args: argparse.Namespace, binary: Path, backend_dir: Path, shm_prefix: str) -> list[str]:
    command = [
        str(binary),
        f"--model-repository={args.model_repository.resolve()}",
        f"--backend-directory={backend_dir}",
        f"--http-address={args.host}", f"--http-port={args.http_port}",
        f"--grpc-address={args.host}", f"--grpc-port={args.grpc_port}",
        f"--backend-config=python,shm-region-prefix-name={shm_prefix}",
        "--allow-gpu-metrics=false",
        f"--log-verbose={args.log_verbose}",
        "--exit-on-error=true",
        "--strict-readiness=true",
    ]
    if args.no_metrics:
        command.append("--allow-metrics=false")
    else:
        command += [f"--metrics-address={args.host}", f"--metrics-port={args.metrics_port}"]
    return command


def _die_with_parent() -> None:
    """Runs in the child before exec: if the launcher dies (even SIGKILL), the server gets SIGTERM."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


# --------------------------------------------------------------------------------------------
# Signals, readiness, shutdown
# --------------------------------------------------------------------------------------------


def _raise_keyboard_interrupt(signum: int, _frame: object) -> None:
    raise KeyboardInterrupt(signal.Signals(signum).name)


def install_stop_handlers() -> None:
    """SIGTERM and SIGINT both stop the server cleanly.

    A process started in the background inherits SIGINT as ignored, and Python's default SIGTERM
    action would exit without stopping the child; explicit handlers fix both.
    """
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, _raise_keyboard_interrupt)


def is_ready(host: str, http_port: int) -> bool:
    address = "127.0.0.1" if host in ("0.0.0.0", "") else host
    url = f"http://{address}:{http_port}/v2/health/ready"
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status == 200
    except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
        return False


def wait_until_ready(process: subprocess.Popen, args: argparse.Namespace) -> None:
    deadline = time.monotonic() + args.ready_timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"tritonserver exited with code {process.returncode} before it was ready "
                               "(see its log above)")
        if is_ready(args.host, args.http_port):
            return
        time.sleep(0.5)
    raise RuntimeError(f"tritonserver not ready after {args.ready_timeout:.0f} s")


def stop_server(process: subprocess.Popen) -> int:
    """SIGTERM (Triton's graceful shutdown: finish in-flight requests, unload models), then SIGKILL."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            print(f"tritonserver did not stop within {STOP_TIMEOUT_S:.0f} s; killing it", file=sys.stderr)
            process.kill()
            process.wait()
    return process.returncode


def processes_mentioning(marker: str) -> list[int]:
    """PIDs whose command line contains `marker` (the python backend stubs carry the shm prefix)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        with contextlib.suppress(OSError):
            if marker.encode() in (entry / "cmdline").read_bytes():
                pids.append(int(entry.name))
    return pids


def clean_leftovers(shm_prefix: str) -> None:
    """Stubs and shared-memory regions of this server that a crash or kill left behind."""
    for pid in processes_mentioning(shm_prefix):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    for region in SHM_DIR.glob(shm_prefix + "*"):
        with contextlib.suppress(FileNotFoundError):
            region.unlink()


@contextlib.contextmanager
def running_server(args: argparse.Namespace) -> Iterator[subprocess.Popen]:
    paths = bundled_paths()
    binary = args.tritonserver or paths["tritonserver"]
    shm_prefix = f"{SHM_PREFIX_BASE}bert{os.getpid()}_"
    with tempfile.TemporaryDirectory(prefix="bert-triton-") as workdir:
        backend_dir = make_backend_directory(Path(workdir), paths)
        command = server_command(args, binary, backend_dir, shm_prefix)
        process = subprocess.Popen(command, env=server_environment(paths), preexec_fn=_die_with_parent,
                                   start_new_session=True)
        try:
            yield process
        finally:
            # A second Ctrl-C must not cut the shutdown short (stop_server kills after a timeout anyway).
            for signum in (signal.SIGTERM, signal.SIGINT):
                signal.signal(signum, signal.SIG_IGN)
            code = stop_server(process)
            clean_leftovers(shm_prefix)
            print(f"tritonserver stopped (exit code {code})", flush=True)


def check_repository(path: Path) -> None:
    if not path.is_dir():
        raise InputError(f"--model-repository {path}: not a folder")
    if not any(path.glob("*/config.pbtxt")):
        raise InputError(f"--model-repository {path}: no <model>/config.pbtxt inside "
                         "(build one with triton/model_repository.py)")


def serve_once(args: argparse.Namespace) -> int:
    """Start tritonserver, wait until it is ready, serve until it exits; its exit code."""
    install_stop_handlers()  # again after a restart: the previous shutdown ignored the signals
    with running_server(args) as process:
        wait_until_ready(process, args)
        print(f"server ready: http {args.host}:{args.http_port}, grpc {args.host}:{args.grpc_port} "
              f"(pid {os.getpid()}; stop with SIGTERM or Ctrl-C)", flush=True)
        process.wait()
        return process.returncode


def describe_exit(code: int) -> str:
    if code >= 0:
        return f"exit code {code}"
    with contextlib.suppress(ValueError):
        return f"signal {signal.Signals(-code).name}"
    return f"signal {-code}"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    check_repository(args.model_repository)
    restarts = 0
    try:
        while True:
            code = serve_once(args)
            # The launcher never stops a ready server itself except on a stop signal (KeyboardInterrupt),
            # so any exit here is a crash: serve again unless asked not to.
            if args.no_restart:
                return code
            restarts += 1
            print(f"warning: tritonserver died ({describe_exit(code)}); starting it again (restart {restarts})",
                  file=sys.stderr, flush=True)
    except KeyboardInterrupt:
        return 0
    except RuntimeError as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        return 1


if __name__ == "__main__":
    run_main(lambda argv: sys.exit(main(argv)))
