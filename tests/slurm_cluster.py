"""A real single-node Slurm cluster for tests (Debian's slurm-wlm and munge), started and stopped by PID.

Usage in a test module::

    from slurm_cluster import SlurmCluster, slurm_cluster  # noqa: F401  (slurm_cluster is a pytest fixture)

    def test_my_job(slurm_cluster, tmp_path):  # noqa: F811
        job = slurm_cluster.submit(ROOT / "run.sub", env={"PHASE": "1"}, sbatch_args=["--ntasks=2"], cwd=ROOT)
        state, exit_code = slurm_cluster.wait(job, timeout=300)
        assert (state, exit_code) == ("COMPLETED", 0), slurm_cluster.output(job) + slurm_cluster.errors(job)

or, for a cluster of your own (e.g. to check what is left after it stops)::

    with SlurmCluster(tmp_path) as cluster:
        ...
    assert cluster.leftover_processes() == []

The fixture is module-scoped: the tests of one module share a cluster; it skips with the reason when
Slurm or munge is not installed or the tests do not run as root (.ci/run installs both). Tests in
tests/e2e/ import it the same way (tests/ is on sys.path there too).

API of a SlurmCluster (all paths absolute):
- submit(script, args=(), env=None, *, sbatch_args=(), cwd=None) -> job id (int)
- wait(job_id, timeout=300) -> (JobState, exit code), e.g. ("COMPLETED", 0), ("FAILED", 3)
- output(job_id) / errors(job_id): the job's stdout / stderr text; stdout_path / stderr_path(job_id)
- job_info(job_id): `scontrol show job` fields as a dict
- client([...]): run any Slurm client (srun, sinfo, scontrol, ...) against this cluster
- env: the environment jobs and clients get; conf_path, workdir (logs: slurmctld.log, slurmd.log)
- daemon_pids, leftover_processes(): for checking that stop() left nothing running
- SlurmCluster(workdir, cpus=N): declare N CPUs on the node (to run more tasks than the machine has)
- SlurmCluster.unavailable_reason(): why no cluster can start here, or None

What it runs, all inside a temp folder and never touching /etc/slurm or the system munged:
- its own munged (as the munge user, with its own key and socket), named in slurm.conf's AuthInfo;
- slurmctld -D and slurmd -D with `SLURM_CONF` pointing at the folder's slurm.conf, on free ports;
  the node is this host with the CPUs and memory `slurmd -C` reports (or `cpus=` of your choice);
- every client call (sbatch, squeue, ...) gets the same SLURM_CONF and none of the launch variables
  (SLURM_*, RANK, LOCAL_RANK, WORLD_SIZE, MASTER_ADDR, ...) of whatever runs the tests.
Stopping cancels all jobs and waits for the queue to drain, runs `scontrol shutdown`, waits for the two
daemons, stops munged, then kills (by PID) any process still carrying this cluster's SLURM_CONF.
"""
from __future__ import annotations

import contextlib
import os
import pwd
import re
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import pytest

REQUIRED_PROGRAMS = ("munged", "setpriv", "slurmctld", "slurmd", "sbatch", "squeue", "scontrol", "scancel", "sinfo",
                     "srun")
# Launch variables of an enclosing Slurm job, torchrun or MPI run: jobs of this cluster must not inherit
# them (rank code prefers RANK/LOCAL_RANK/WORLD_SIZE when set). Pass MASTER_* through `env` when needed.
OUTER_LAUNCH_PREFIXES = ("SLURM_", "SBATCH_", "SALLOC_", "SRUN_", "OMPI_COMM_WORLD_", "TORCHELASTIC_")
OUTER_LAUNCH_NAMES = {"RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "GROUP_RANK", "GROUP_WORLD_SIZE",
                      "ROLE_RANK", "ROLE_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"}
POLL_SECONDS = 0.2
TERMINAL_STATES = {"BOOT_FAIL", "CANCELLED", "COMPLETED", "DEADLINE", "FAILED", "NODE_FAIL", "OUT_OF_MEMORY",
                   "PREEMPTED", "TIMEOUT"}


class SlurmCluster:
    """slurmctld + slurmd + munged for one test; a context manager (see the module docstring)."""

    def __init__(self, workdir: Path | str, cpus: int | None = None, start_timeout: float = 60.0):
        """`workdir` holds slurm.conf, state, logs and job output; `cpus` declares that many CPUs on
        the node (more than the machine has is allowed, via SlurmdParameters=config_overrides)."""
        self.workdir = Path(workdir).resolve()
        self.conf_path = self.workdir / "slurm.conf"
        self.jobs_dir = self.workdir / "jobs"
        self.node_name = socket.gethostname().split(".")[0]
        self.cpus = cpus
        self.start_timeout = start_timeout
        self.munge_dir: Path | None = None
        self.munge_socket: Path | None = None
        self.processes: dict[str, subprocess.Popen] = {}
        self.env = self._clean_env()

    # --- availability -----------------------------------------------------------------------------

    @staticmethod
    def unavailable_reason() -> str | None:
        """Why a cluster cannot start here, or None."""
        missing = [p for p in REQUIRED_PROGRAMS if shutil.which(p) is None and not Path("/usr/sbin", p).exists()]
        if missing:
            return f"Slurm/munge not installed (missing {', '.join(missing)}): apt-get install slurm-wlm munge"
        if os.geteuid() != 0:
            return "a test Slurm cluster needs root (munged runs as the munge user, the daemons as root)"
        try:
            pwd.getpwnam("munge")
        except KeyError:
            return "the munge user does not exist (apt-get install munge creates it)"
        return None

    # --- lifecycle --------------------------------------------------------------------------------

    def __enter__(self) -> SlurmCluster:
        self.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self.stop()

    def start(self) -> SlurmCluster:
        reason = self.unavailable_reason()
        if reason:
            raise RuntimeError(reason)
        for sub in ("state", "spool", "jobs"):
            (self.workdir / sub).mkdir(parents=True, exist_ok=True)
        try:
            self._start_munged()
            self.conf_path.write_text(self._slurm_conf())
            self._spawn("slurmctld", [_program("slurmctld"), "-D"])
            self._wait_for(lambda: self.client(["scontrol", "ping"], check=False).returncode == 0,
                           "slurmctld to answer")
            self._spawn("slurmd", [_program("slurmd"), "-D"])
            self._wait_for(lambda: self._node_state() == "idle", "the node to become idle")
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Stop everything this cluster started; safe to call twice or after a failed start."""
        try:
            shutdown_sent = False
            if "slurmctld" in self.processes and self.processes["slurmctld"].poll() is None:
                self._cancel_all_jobs()
                shutdown_sent = self.client(["scontrol", "shutdown"], check=False).returncode == 0
            for name in ("slurmd", "slurmctld"):
                self._stop_process(name, already_asked=shutdown_sent)
            self._stop_process("munged", already_asked=False)
            for pid in self.leftover_processes():
                _kill_pid(pid)
        finally:
            if self.munge_dir is not None:
                shutil.rmtree(self.munge_dir, ignore_errors=True)
                self.munge_dir = None

    # --- jobs -------------------------------------------------------------------------------------

    def submit(self, script: Path | str, args: Sequence[str] = (), env: Mapping[str, str] | None = None, *,
               sbatch_args: Sequence[str] = (), cwd: Path | str | None = None) -> int:
        """`sbatch` the script with its arguments; returns the job id.

        The job sees this process's environment (minus the launch variables of any enclosing Slurm,
        torchrun or MPI run: SLURM_*, RANK, MASTER_ADDR, ...) updated with `env`;
        its stdout and stderr go to `stdout_path(job)` / `stderr_path(job)`. `sbatch_args` come before
        the script and override its #SBATCH lines; `cwd` is the job's working directory (default: ours).
        """
        command = ["sbatch", "--parsable", f"--output={self.jobs_dir}/%j.out", f"--error={self.jobs_dir}/%j.err",
                   *sbatch_args, str(script), *args]
        result = self.client(command, env=env, cwd=cwd)
        return int(result.stdout.strip().split(";")[0])

    def wait(self, job_id: int, timeout: float = 300.0) -> tuple[str, int]:
        """Wait until the job ends; returns (JobState, exit code), e.g. ("COMPLETED", 0) or ("FAILED", 3).

        A job killed by a signal reports 128 + the signal. On timeout the job is cancelled and
        TimeoutError names its state and the end of its output.
        """
        deadline = time.monotonic() + timeout
        while self._still_queued(job_id):
            if time.monotonic() > deadline:
                state = self.job_info(job_id).get("JobState", "?")
                self.client(["scancel", str(job_id)], check=False)
                raise TimeoutError(f"Slurm job {job_id} still {state} after {timeout:.0f} s; stdout ends with:\n"
                                   f"{_tail(self.stdout_path(job_id))}\n"
                                   f"stderr ends with:\n{_tail(self.stderr_path(job_id))}")
            time.sleep(POLL_SECONDS)
        info = self.job_info(job_id)
        state = info.get("JobState", "UNKNOWN")
        code, _, signum = info.get("ExitCode", "-1:0").partition(":")
        return state, 128 + int(signum) if int(signum or 0) else int(code)

    def job_info(self, job_id: int) -> dict[str, str]:
        """`scontrol show job` as a dict (JobState, ExitCode, NumTasks, StdOut, ...); {} once forgotten."""
        result = self.client(["scontrol", "show", "job", "-o", str(job_id)], check=False)
        if result.returncode != 0:
            return {}
        return dict(re.findall(r"(\w+(?:/\w+)?)=(\S*)", result.stdout))

    def stdout_path(self, job_id: int) -> Path:
        return self.jobs_dir / f"{job_id}.out"

    def stderr_path(self, job_id: int) -> Path:
        return self.jobs_dir / f"{job_id}.err"

    def output(self, job_id: int) -> str:
        """The job's stdout so far ('' before it starts)."""
        path = self.stdout_path(job_id)
        return path.read_text(errors="replace") if path.exists() else ""

    def errors(self, job_id: int) -> str:
        """The job's stderr so far ('' before it starts)."""
        path = self.stderr_path(job_id)
        return path.read_text(errors="replace") if path.exists() else ""

    def client(self, command: Sequence[str], env: Mapping[str, str] | None = None, cwd: Path | str | None = None,
               check: bool = True, timeout: float = 60.0) -> subprocess.CompletedProcess:
        """Run a Slurm client command (sinfo, squeue, srun, ...) against this cluster."""
        full_env = {**self.env, **(env or {}), "SLURM_CONF": str(self.conf_path)}
        result = subprocess.run(list(command), env=full_env, cwd=cwd, capture_output=True, text=True, timeout=timeout)
        if check and result.returncode != 0:
            raise RuntimeError(f"{' '.join(command)} failed ({result.returncode}): {result.stderr.strip()}")
        return result

    # --- what is left ---------------------------------------------------------------------------

    @property
    def daemon_pids(self) -> dict[str, int]:
        return {name: process.pid for name, process in self.processes.items()}

    def leftover_processes(self) -> list[int]:
        """PIDs still alive that belong to this cluster: its daemons, or anything whose environment
        names its slurm.conf (slurmstepd, job steps)."""
        pids = {p.pid for p in self.processes.values() if p.poll() is None}
        marker = f"SLURM_CONF={self.conf_path}".encode()
        for proc in Path("/proc").iterdir():
            if not proc.name.isdigit() or int(proc.name) == os.getpid():
                continue
            try:
                if marker in (proc / "environ").read_bytes().split(b"\0") and _alive(int(proc.name)):
                    pids.add(int(proc.name))
            except OSError:
                continue
        return sorted(pids)

    # --- internals --------------------------------------------------------------------------------

    def _clean_env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(OUTER_LAUNCH_PREFIXES) and k not in OUTER_LAUNCH_NAMES}
        env["SLURM_CONF"] = str(self.conf_path)
        return env

    def _start_munged(self) -> None:
        # Outside workdir: pytest's temp folders are root-only and munged runs as the munge user.
        munge = pwd.getpwnam("munge")
        self.munge_dir = Path(tempfile.mkdtemp(prefix="bert-test-munge-"))
        os.chown(self.munge_dir, munge.pw_uid, munge.pw_gid)
        os.chmod(self.munge_dir, 0o711)  # munged insists that everyone may reach its socket
        key = self.munge_dir / "munge.key"
        key.write_bytes(secrets.token_bytes(1024))
        os.chown(key, munge.pw_uid, munge.pw_gid)
        os.chmod(key, 0o400)
        self.munge_socket = self.munge_dir / "munge.socket"
        command = [_program("setpriv"), "--reuid=munge", "--regid=munge", "--init-groups", _program("munged"), "-F",
                   f"--socket={self.munge_socket}", f"--key-file={key}", f"--pid-file={self.munge_dir}/munged.pid",
                   f"--seed-file={self.munge_dir}/munged.seed", f"--log-file={self.munge_dir}/munged.log"]
        self._spawn("munged", command)
        self._wait_for(self.munge_socket.exists, "munged's socket")

    def _spawn(self, name: str, command: list[str]) -> None:
        # The child keeps its own copy of the log's file descriptor.
        with open(self.workdir / f"{name}.console", "ab") as log:
            self.processes[name] = subprocess.Popen(command, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                                    stdin=subprocess.DEVNULL, start_new_session=True)

    def _wait_for(self, ready, what: str) -> None:
        deadline = time.monotonic() + self.start_timeout
        while not ready():
            for name, process in self.processes.items():
                if process.poll() is not None:
                    raise RuntimeError(f"{name} exited with {process.returncode} while waiting for {what}:\n"
                                       f"{self._logs_tail()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"timed out after {self.start_timeout:.0f} s waiting for "
                                   f"{what}:\n{self._logs_tail()}")
            time.sleep(POLL_SECONDS)

    def _logs_tail(self) -> str:
        logs = sorted(self.workdir.glob("*.log")) + sorted(self.workdir.glob("*.console"))
        if self.munge_dir is not None:
            logs.append(self.munge_dir / "munged.log")
        return "\n".join(f"--- {path.name}\n{_tail(path)}" for path in logs if path.exists())

    def _node_state(self) -> str:
        result = self.client(["sinfo", "-h", "-o", "%t"], check=False)
        return result.stdout.strip() if result.returncode == 0 else ""

    def _slurm_conf(self) -> str:
        hardware = self._node_hardware()
        overrides = ""
        if self.cpus is not None:
            hardware = f"CPUs={self.cpus} RealMemory={_field(hardware, 'RealMemory')}"
            overrides = "SlurmdParameters=config_overrides\n"
        work = self.workdir
        return f"""\
ClusterName=berttest
SlurmctldHost={self.node_name}(127.0.0.1)
SlurmctldPort={_free_port()}
SlurmdPort={_free_port()}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={self.munge_socket}
MailProg=/bin/true
StateSaveLocation={work}/state
SlurmdSpoolDir={work}/spool
SlurmctldPidFile={work}/slurmctld.pid
SlurmdPidFile={work}/slurmd.pid
SlurmctldLogFile={work}/slurmctld.log
SlurmdLogFile={work}/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
MpiDefault=none
ReturnToService=2
MinJobAge=3600
{overrides}NodeName={self.node_name} NodeAddr=127.0.0.1 {hardware} State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP OverSubscribe=YES
"""

    def _node_hardware(self) -> str:
        """The node line's hardware fields as `slurmd -C` measures them (CPUs, sockets, ..., RealMemory)."""
        result = subprocess.run([_program("slurmd"), "-C"], env=self.env, capture_output=True, text=True, check=True)
        first_line = result.stdout.splitlines()[0]
        return " ".join(field for field in first_line.split() if not field.startswith("NodeName="))

    def _still_queued(self, job_id: int) -> bool:
        result = self.client(["squeue", "-h", "-j", str(job_id), "-o", "%T"], check=False)
        state = result.stdout.strip()
        return result.returncode == 0 and state != "" and state not in TERMINAL_STATES

    def _cancel_all_jobs(self) -> None:
        # scontrol shutdown leaves running jobs alive, so the queue must be empty first.
        self.client(["scancel", f"--user={pwd.getpwuid(os.getuid()).pw_name}"], check=False)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            result = self.client(["squeue", "-h"], check=False)
            if result.returncode != 0 or not result.stdout.strip():
                return
            time.sleep(POLL_SECONDS)

    def _stop_process(self, name: str, already_asked: bool) -> None:
        process = self.processes.get(name)
        if process is None or process.poll() is not None:
            return
        if not already_asked:
            process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def _program(name: str) -> str:
    found = shutil.which(name) or str(Path("/usr/sbin", name))
    return found


def _field(fields: str, key: str) -> str:
    match = re.search(rf"\b{key}=(\S+)", fields)
    if not match:
        raise RuntimeError(f"slurmd -C did not report {key}: {fields}")
    return match.group(1)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _alive(pid: int) -> bool:
    """Running and not a zombie (a zombie has exited; only its parent's bookkeeping is left)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _kill_pid(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


def _tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(missing)"


@pytest.fixture(scope="module")
def slurm_cluster(tmp_path_factory) -> Iterator[SlurmCluster]:
    """A running SlurmCluster shared by the tests of one module; skips where Slurm cannot run."""
    reason = SlurmCluster.unavailable_reason()
    if reason:
        pytest.skip(reason)
    with SlurmCluster(tmp_path_factory.mktemp("slurm")) as cluster:
        yield cluster
