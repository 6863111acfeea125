"""bind.sh and bind_pyt.py: numactl arguments on known topologies, real binding, the launcher."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import ROOT

BIND_SH = ROOT / "bind.sh"
BIND_PYT = ROOT / "bind_pyt.py"
# Variables bind.sh reads; the test process may run under torchrun or Slurm itself.
RANK_VARS = ("LOCAL_RANK", "SLURM_LOCALID", "OMPI_COMM_WORLD_LOCAL_RANK", "LOCAL_WORLD_SIZE",
             "OMPI_COMM_WORLD_LOCAL_SIZE", "SLURM_STEP_TASKS_PER_NODE", "SLURM_NTASKS_PER_NODE",
             "SLURM_TASKS_PER_NODE", "SLURM_NODEID", "BIND_DRY_RUN", "BIND_REQUIRE")


def lscpu_lines(sockets: int, cores_per_socket: int, threads: int) -> list[str]:
    """`lscpu -p=CPU,CORE,SOCKET,NODE` as Linux numbers CPUs: first thread of every core, then the second..."""
    cores = sockets * cores_per_socket
    lines = ["# The following is the parsable format", "# CPU,Core,Socket,Node"]
    for thread in range(threads):
        for core in range(cores):
            socket_id = core // cores_per_socket
            lines.append(f"{thread * cores + core},{core},{socket_id},{socket_id}")
    return lines


TWO_SOCKETS = lscpu_lines(sockets=2, cores_per_socket=4, threads=2)  # CPUs 0-7 first threads, 8-15 second
ONE_NODE_TWO_CPUS = lscpu_lines(sockets=1, cores_per_socket=2, threads=1)


def write_tool(bin_dir: Path, name: str, body: str) -> None:
    path = bin_dir / name
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(0o755)


def fake_tools(tmp_path: Path, topology: list[str], gpus: int | None = None,
               ib_devices: list[str] | None = None) -> Path:
    """A bin folder with stand-in lscpu (and nvidia-smi / ibstat) that describe a made-up machine."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    (tmp_path / "lscpu.txt").write_text("\n".join(topology) + "\n")
    write_tool(bin_dir, "lscpu", f'[ "$*" = "-p=CPU,CORE,SOCKET,NODE" ] || exit 64\ncat "{tmp_path}/lscpu.txt"\n')
    if gpus is not None:
        listing = "".join(f"echo 'GPU {i}: NVIDIA H100 80GB HBM3 (UUID: GPU-0000000{i})'\n" for i in range(gpus))
        write_tool(bin_dir, "nvidia-smi", f'[ "$1" = "-L" ] || exit 64\n{listing}')
    if ib_devices is not None:
        write_tool(bin_dir, "ibstat", f'[ "$1" = "-l" ] || exit 64\nprintf "%s\\n" {" ".join(ib_devices)}\n')
    return bin_dir


def bind_env(bin_dir: Path | None, path_rest: str | None = None, **rank_vars: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in RANK_VARS}
    rest = os.environ.get("PATH", "") if path_rest is None else path_rest
    env["PATH"] = f"{bin_dir}{os.pathsep}{rest}" if bin_dir else rest
    env.update(rank_vars)
    return env


def run_bind(args: list[str], env: dict[str, str], check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run(["/bin/bash", str(BIND_SH), *args], env=env, capture_output=True, text=True, timeout=60)
    if check:
        assert result.returncode == 0, result.stderr
    return result


def printed_command(args: list[str], env: dict[str, str]) -> list[str]:
    return run_bind(["--print", *args, "--", "train.py", "--flag"], env).stdout.splitlines()


def numactl_part(command: list[str]) -> list[str]:
    """The numactl options of a printed command line ([] when it runs the command directly)."""
    if command[0] != "numactl":
        assert command == ["train.py", "--flag"]
        return []
    assert command[-3:] == ["--", "train.py", "--flag"]
    return command[1:-3]


CPU_EXPECTED = {  # (rank 0, rank 1) on 2 sockets x 4 cores x 2 threads, one rank per socket
    "exclusive": (["--physcpubind=0-3,8-11"], ["--physcpubind=4-7,12-15"]),
    "exclusive,nosmt": (["--physcpubind=0-3"], ["--physcpubind=4-7"]),
    "node": (["--cpunodebind=0"], ["--cpunodebind=1"]),
    "off": ([], []),
}
MEM_EXPECTED = {"node": (["--membind=0"], ["--membind=1"]), "off": ([], [])}


@pytest.mark.parametrize("rank", [0, 1])
@pytest.mark.parametrize("mem", sorted(MEM_EXPECTED))
@pytest.mark.parametrize("cpu", sorted(CPU_EXPECTED))
def test_modes_two_sockets_ranks_from_gpu_count(tmp_path, cpu, mem, rank):
    # No world-size variable: the 2 GPUs nvidia-smi lists give one rank per socket.
    env = bind_env(fake_tools(tmp_path, TWO_SOCKETS, gpus=2), LOCAL_RANK=str(rank))
    command = printed_command([f"--cpu={cpu}", f"--mem={mem}"], env)
    assert numactl_part(command) == CPU_EXPECTED[cpu][rank] + MEM_EXPECTED[mem][rank]


@pytest.mark.parametrize(("rank", "expected"), [
    (0, ["--physcpubind=0-1,8-9", "--membind=0"]),
    (1, ["--physcpubind=2-3,10-11", "--membind=0"]),
    (2, ["--physcpubind=4-5,12-13", "--membind=1"]),
    (3, ["--physcpubind=6-7,14-15", "--membind=1"]),
])
def test_exclusive_splits_each_socket_between_its_ranks(tmp_path, rank, expected):
    env = bind_env(fake_tools(tmp_path, TWO_SOCKETS), LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE="4")
    assert numactl_part(printed_command(["--cpu=exclusive", "--mem=node"], env)) == expected


def test_uneven_split_uses_every_core(tmp_path):
    # 4 cores on one socket among 3 ranks: shares of 1, 1 and 2 cores.
    topology = lscpu_lines(sockets=1, cores_per_socket=4, threads=1)
    shares = []
    for rank in range(3):
        env = bind_env(fake_tools(tmp_path, topology), LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE="3")
        shares.append(numactl_part(printed_command(["--cpu=exclusive,nosmt", "--mem=off"], env)))
    assert shares == [["--physcpubind=0"], ["--physcpubind=1"], ["--physcpubind=2-3"]]


def test_without_nvidia_smi_a_single_rank_takes_the_first_node(tmp_path):
    env = bind_env(fake_tools(tmp_path, TWO_SOCKETS))
    assert numactl_part(printed_command(["--cpu=exclusive"], env)) == ["--physcpubind=0-3,8-11", "--membind=0"]
    assert "not below the local world size 1" in run_bind(["--print", "--", "x"], {**env, "LOCAL_RANK": "1"},
                                                          check=False).stderr


@pytest.mark.parametrize(("rank", "cpu", "expected"), [
    (0, "exclusive", ["--physcpubind=0", "--membind=0"]),
    (1, "exclusive", ["--physcpubind=1", "--membind=0"]),
    (1, "exclusive,nosmt", ["--physcpubind=1", "--membind=0"]),
    (0, "node", ["--cpunodebind=0", "--membind=0"]),
    (1, "node", ["--cpunodebind=0", "--membind=0"]),
])
@pytest.mark.parametrize("gpus", [None, 2])
def test_one_node_two_cpus(tmp_path, rank, cpu, expected, gpus):
    env = bind_env(fake_tools(tmp_path, ONE_NODE_TWO_CPUS, gpus=gpus), LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE="2")
    assert numactl_part(printed_command([f"--cpu={cpu}"], env)) == expected


@pytest.mark.parametrize(("rank_vars", "expected_cpus"), [
    ({"LOCAL_RANK": "1", "SLURM_LOCALID": "0", "LOCAL_WORLD_SIZE": "2"}, "4-7"),
    ({"SLURM_LOCALID": "1", "SLURM_STEP_TASKS_PER_NODE": "2"}, "4-7"),
    ({"SLURM_LOCALID": "1", "SLURM_NODEID": "2", "SLURM_TASKS_PER_NODE": "4(x2),2"}, "4-7"),
    ({"SLURM_LOCALID": "1", "SLURM_NODEID": "1", "SLURM_TASKS_PER_NODE": "4(x2),2"}, "2-3"),
    ({"SLURM_LOCALID": "1", "SLURM_NTASKS_PER_NODE": "8"}, "1"),
    ({"OMPI_COMM_WORLD_LOCAL_RANK": "1", "OMPI_COMM_WORLD_LOCAL_SIZE": "2"}, "4-7"),
])
def test_rank_and_world_size_sources(tmp_path, rank_vars, expected_cpus):
    env = bind_env(fake_tools(tmp_path, TWO_SOCKETS, gpus=8), **rank_vars)
    command = printed_command(["--cpu=exclusive,nosmt", "--mem=off"], env)
    assert numactl_part(command) == [f"--physcpubind={expected_cpus}"]


def test_bind_dry_run_variable_prints_instead_of_running(tmp_path):
    env = bind_env(fake_tools(tmp_path, ONE_NODE_TWO_CPUS), BIND_DRY_RUN="1")
    out = run_bind(["--cpu=node", "--mem=off", "--", "false"], env).stdout
    assert out.splitlines() == ["numactl", "--cpunodebind=0", "--", "false"]


def test_ib_single_picks_a_device_per_rank(tmp_path):
    bin_dir = fake_tools(tmp_path, TWO_SOCKETS, ib_devices=["mlx5_0", "mlx5_1", "mlx5_2", "mlx5_3"])
    env = bind_env(bin_dir, LOCAL_RANK="1", LOCAL_WORLD_SIZE="2")
    command = printed_command(["--cpu=off", "--mem=off", "--ib=single", "--cluster=selene"], env)
    assert command == ["env", "OMPI_MCA_btl_openib_if_include=mlx5_2", "train.py", "--flag"]


def test_ib_single_without_devices_warns_and_runs(tmp_path):
    env = bind_env(fake_tools(tmp_path, ONE_NODE_TWO_CPUS))
    result = run_bind(["--print", "--cpu=off", "--mem=off", "--ib=single", "--", "x"], env)
    assert result.stdout.splitlines() == ["x"]
    assert "no InfiniBand device" in result.stderr


@pytest.mark.parametrize(("args", "message"), [
    (["--cpu=socket", "--", "x"], "--cpu must be exclusive, exclusive,nosmt, node or off, got 'socket'"),
    (["--mem=interleave", "--", "x"], "--mem must be node or off, got 'interleave'"),
    (["--bogus", "--", "x"], "unknown option '--bogus'"),
    (["--cpu=node"], "no command given"),
])
def test_bad_options_give_one_line_errors(tmp_path, args, message):
    result = run_bind(args, bind_env(fake_tools(tmp_path, ONE_NODE_TWO_CPUS)), check=False)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("bind.sh: ") and message in lines[0]


def test_more_ranks_than_cores_is_an_error_for_exclusive_only(tmp_path):
    env = bind_env(fake_tools(tmp_path, ONE_NODE_TWO_CPUS), LOCAL_RANK="2", LOCAL_WORLD_SIZE="3")
    result = run_bind(["--print", "--cpu=exclusive", "--", "x"], env, check=False)
    assert result.returncode != 0
    assert "3 ranks share NUMA node 0 but it has only 2 physical cores" in result.stderr
    assert numactl_part(printed_command(["--cpu=node", "--mem=node"], env)) == ["--cpunodebind=0", "--membind=0"]


def minimal_path_without_numactl(tmp_path: Path) -> Path:
    """A bin folder with the stand-in lscpu and only the real tools bind.sh needs besides numactl."""
    bin_dir = fake_tools(tmp_path, ONE_NODE_TWO_CPUS)
    for tool in ("awk", "bash", "cat", "grep", "sed", "env"):
        (bin_dir / tool).symlink_to(shutil.which(tool))
    return bin_dir


def test_missing_numactl_warns_once_and_runs_unbound(tmp_path):
    env = bind_env(minimal_path_without_numactl(tmp_path), path_rest="", LOCAL_RANK="1", LOCAL_WORLD_SIZE="2")
    result = run_bind(["--cpu=exclusive", "--", sys.executable, "-c",
                       "import os; print(sorted(os.sched_getaffinity(0)))"], env)
    assert json.loads(result.stdout) == sorted(os.sched_getaffinity(0))
    assert result.stderr.splitlines() == [
        "bind.sh: warning: numactl not found, running unbound "
        "(install numactl to bind; --require-binding makes this an error)"]


def test_missing_numactl_is_an_error_when_binding_is_required(tmp_path):
    env = bind_env(minimal_path_without_numactl(tmp_path), path_rest="")
    command = ["--", sys.executable, "-c", "print('ran')"]
    for args, extra_env in ((["--require-binding"], {}), ([], {"BIND_REQUIRE": "1"})):
        result = run_bind([*args, "--cpu=node", *command], {**env, **extra_env}, check=False)
        assert result.returncode == 2
        assert result.stdout == ""
        assert result.stderr.splitlines() == [
            "bind.sh: numactl is not installed (apt-get install numactl), or run with --cpu=off --mem=off"]
    # Nothing to bind: numactl is not needed, and nothing is said about it.
    direct = run_bind(["--require-binding", "--cpu=off", "--mem=off", *command], env)
    assert (direct.stdout, direct.stderr) == ("ran\n", "")


def needs_real_numactl_on_cpus_0_and_1() -> None:
    if shutil.which("numactl") is None:
        pytest.skip("numactl not installed (apt-get install numactl)")
    if not {0, 1} <= os.sched_getaffinity(0):
        pytest.skip("CPUs 0 and 1 are not both available to this process")


def numactl_show(output: str) -> dict[str, str]:
    return {key.strip(): value.strip() for key, _, value in (line.partition(":") for line in output.splitlines())}


def test_real_numactl_binds_rank_1_of_2_to_cpu_1(tmp_path):
    needs_real_numactl_on_cpus_0_and_1()
    env = bind_env(fake_tools(tmp_path, ONE_NODE_TWO_CPUS), LOCAL_RANK="1", LOCAL_WORLD_SIZE="2")
    shown = numactl_show(run_bind(["--cpu=exclusive", "--", "numactl", "--show"], env).stdout)
    assert shown["physcpubind"] == "1"
    assert shown["membind"] == "0"
    affinity = run_bind(["--cpu=exclusive", "--mem=off", "--", sys.executable, "-c",
                         "import os; print(sorted(os.sched_getaffinity(0)))"], env).stdout
    assert affinity.strip() == "[1]"


def test_real_lscpu_single_rank_gets_its_whole_node():
    needs_real_numactl_on_cpus_0_and_1()
    numa_nodes = list(Path("/sys/devices/system/node").glob("node[0-9]*"))
    if len(numa_nodes) > 1:
        pytest.skip("this machine has several NUMA nodes; the single-node expectation does not apply")
    online = subprocess.run(["lscpu", "-p=CPU"], capture_output=True, text=True, check=True).stdout
    cpus = {int(line) for line in online.splitlines() if line and not line.startswith("#")}
    if cpus != os.sched_getaffinity(0):
        pytest.skip("this process is restricted to a subset of the online CPUs")
    env = bind_env(None, LOCAL_RANK="0", LOCAL_WORLD_SIZE="1")
    out = run_bind(["--cpu=exclusive", "--", sys.executable, "-c",
                    "import os; print(sorted(os.sched_getaffinity(0)))"], env).stdout
    assert json.loads(out) == sorted(cpus)


@pytest.mark.skipif(shutil.which("shellcheck") is None, reason="shellcheck not installed (apt-get install shellcheck)")
def test_bind_sh_is_shellcheck_clean():
    result = subprocess.run(["shellcheck", str(BIND_SH)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout


# --- bind_pyt.py -------------------------------------------------------------------------------

RANK_REPORT = """\
import json, os, sys
keys = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
report = {k: os.environ.get(k) for k in keys}
report["affinity"] = sorted(os.sched_getaffinity(0))
report["argv"] = sys.argv[1:]
with open(os.path.join(os.path.dirname(__file__), "rank%s.json" % os.environ["RANK"]), "w") as f:
    json.dump(report, f)
"""


def run_bind_pyt(args: list[str], env: dict[str, str], timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(BIND_PYT), *args], env=env, capture_output=True, text=True,
                          timeout=timeout)


def test_bind_pyt_launches_bound_ranks_with_their_env(tmp_path):
    needs_real_numactl_on_cpus_0_and_1()
    script = tmp_path / "report.py"
    script.write_text(RANK_REPORT)
    env = bind_env(fake_tools(tmp_path, ONE_NODE_TWO_CPUS))
    result = run_bind_pyt(["--nproc_per_node", "2", "--master_port", "29612", str(script), "--extra", "1"], env)
    assert result.returncode == 0, result.stderr
    for rank in (0, 1):
        report = json.loads((tmp_path / f"rank{rank}.json").read_text())
        assert report == {"RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "2",
                          "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29612", "affinity": [rank],
                          "argv": [f"--local_rank={rank}", "--extra", "1"]}


def test_bind_pyt_second_node_ranks_and_use_env(tmp_path):
    needs_real_numactl_on_cpus_0_and_1()
    script = tmp_path / "report.py"
    script.write_text(RANK_REPORT)
    env = bind_env(fake_tools(tmp_path, ONE_NODE_TWO_CPUS))
    args = ["--nnodes", "2", "--node_rank", "1", "--nproc_per_node", "2", "--master_addr", "10.0.0.1",
            "--no_hyperthreads", "--no_membind", "--use_env", str(script)]
    result = run_bind_pyt(args, env)
    assert result.returncode == 0, result.stderr
    reports = {rank: json.loads((tmp_path / f"rank{rank}.json").read_text()) for rank in (2, 3)}
    assert [r["LOCAL_RANK"] for r in reports.values()] == ["0", "1"]
    assert {r["WORLD_SIZE"] for r in reports.values()} == {"4"}
    assert [r["affinity"] for r in reports.values()] == [[0], [1]]
    assert [r["argv"] for r in reports.values()] == [[], []]
    assert reports[2]["MASTER_ADDR"] == "10.0.0.1"


def test_bind_pyt_without_numactl_warns_once_and_runs_ranks_unbound(tmp_path):
    script = tmp_path / "report.py"
    script.write_text(RANK_REPORT)
    env = bind_env(minimal_path_without_numactl(tmp_path), path_rest="")
    result = run_bind_pyt(["--nproc_per_node", "2", "--master_port", "29613", str(script)], env)
    assert result.returncode == 0, result.stderr
    assert result.stderr.splitlines() == [
        "bind_pyt.py: warning: numactl not found, running the ranks unbound (install numactl to bind)"]
    for rank in (0, 1):
        report = json.loads((tmp_path / f"rank{rank}.json").read_text())
        assert (report["RANK"], report["WORLD_SIZE"]) == (str(rank), "2")
        assert report["affinity"] == sorted(os.sched_getaffinity(0))
        assert report["argv"] == [f"--local_rank={rank}"]


def test_bind_pyt_require_binding_without_numactl_starts_no_rank(tmp_path):
    script = tmp_path / "report.py"
    script.write_text(RANK_REPORT)
    env = bind_env(minimal_path_without_numactl(tmp_path), path_rest="")
    result = run_bind_pyt(["--nproc_per_node", "2", "--require_binding", str(script)], env)
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        "error: numactl is not installed (apt-get install numactl); --require_binding forbids running unbound"]
    assert not list(tmp_path.glob("rank*.json"))


def test_bind_pyt_require_binding_with_numactl_binds(tmp_path):
    needs_real_numactl_on_cpus_0_and_1()
    script = tmp_path / "report.py"
    script.write_text(RANK_REPORT)
    env = bind_env(fake_tools(tmp_path, ONE_NODE_TWO_CPUS))
    result = run_bind_pyt(["--nproc_per_node", "2", "--require_binding", "--use_env", str(script)], env)
    assert result.returncode == 0, result.stderr
    assert "warning" not in result.stderr
    assert [json.loads((tmp_path / f"rank{r}.json").read_text())["affinity"] for r in (0, 1)] == [[0], [1]]


FAILING_RANKS = """\
import os, sys, time
rank = int(os.environ["RANK"])
folder = os.path.dirname(__file__)
open(os.path.join(folder, "pid%d" % rank), "w").write(str(os.getpid()))
if rank == 1:
    # fail only once rank 0 is running, so the launcher has a live rank to stop
    deadline = time.time() + 120
    while not os.path.exists(os.path.join(folder, "pid0")) and time.time() < deadline:
        time.sleep(0.05)
    sys.exit(3)
time.sleep(300)
open(os.path.join(folder, "finished%d" % rank), "w").close()
"""


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_bind_pyt_exits_with_the_failing_rank_code_and_stops_the_others(tmp_path):
    needs_real_numactl_on_cpus_0_and_1()
    script = tmp_path / "fail.py"
    script.write_text(FAILING_RANKS)
    env = bind_env(fake_tools(tmp_path, ONE_NODE_TWO_CPUS))
    result = run_bind_pyt(["--nproc_per_node", "2", "--use_env", str(script)], env, timeout=200)
    assert result.returncode == 3, result.stderr
    survivor = int((tmp_path / "pid0").read_text())
    assert not pid_alive(survivor)
    assert not (tmp_path / "finished0").exists()


SIGNAL_RANKS = """\
import os, signal, sys, time
folder = os.path.dirname(__file__)
rank = os.environ["RANK"]
def on_term(signum, frame):
    open(os.path.join(folder, "term" + rank), "w").write(str(signum))
    sys.exit(7)
signal.signal(signal.SIGTERM, on_term)
open(os.path.join(folder, "ready" + rank), "w").close()
time.sleep(300)
"""


def test_bind_pyt_forwards_sigterm_to_every_rank(tmp_path):
    needs_real_numactl_on_cpus_0_and_1()
    script = tmp_path / "wait.py"
    script.write_text(SIGNAL_RANKS)
    env = bind_env(fake_tools(tmp_path, ONE_NODE_TWO_CPUS))
    launcher = subprocess.Popen([sys.executable, str(BIND_PYT), "--nproc_per_node", "2", "--use_env", str(script)],
                                env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not all((tmp_path / f"ready{r}").exists() for r in (0, 1)):
            assert launcher.poll() is None, launcher.communicate()
            assert time.monotonic() < deadline, "ranks did not start"
            time.sleep(0.05)
        launcher.send_signal(signal.SIGTERM)
        launcher.wait(timeout=60)
    finally:
        if launcher.poll() is None:
            launcher.kill()
            launcher.wait()
    assert launcher.returncode == 7
    assert [(tmp_path / f"term{r}").read_text() for r in (0, 1)] == [str(int(signal.SIGTERM))] * 2
