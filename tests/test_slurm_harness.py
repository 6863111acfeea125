"""The single-node Slurm harness: a real 2-task gloo job, exit codes, and nothing left running after stop."""
from __future__ import annotations

import os
import shutil
import socket
import sys
from pathlib import Path

import pytest
from conftest import ROOT
from slurm_cluster import SlurmCluster, slurm_cluster  # noqa: F401  (pytest fixture)

ALLREDUCE = """\
import os
import torch
import torch.distributed as dist

rank, world = int(os.environ["SLURM_PROCID"]), int(os.environ["SLURM_NTASKS"])
dist.init_process_group("gloo", init_method="env://", rank=rank, world_size=world)
value = torch.tensor([float(rank + 1)])
dist.all_reduce(value)
print(f"rank {rank} of {world}: sum {value.item():g}", flush=True)
dist.destroy_process_group()
"""

ALLREDUCE_JOB = """\
#!/bin/bash
#SBATCH --ntasks=2
#SBATCH --job-name=gloo-allreduce
set -euo pipefail
srun -l "$PYTHON" "$1"
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def pid_running(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


@pytest.mark.skipif(SlurmCluster.unavailable_reason() is not None, reason=str(SlurmCluster.unavailable_reason()))
def test_two_task_gloo_job_then_nothing_left_running(tmp_path):
    job_script = write(tmp_path / "allreduce.sbatch", ALLREDUCE_JOB)
    program = write(tmp_path / "allreduce.py", ALLREDUCE)
    env = {"PYTHON": sys.executable, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port()),
           "OMP_NUM_THREADS": "1"}
    with SlurmCluster(tmp_path / "cluster", cpus=4) as cluster:
        assert cluster.client(["sinfo", "-h", "-o", "%c"]).stdout.strip() == "4"
        job = cluster.submit(job_script, [str(program)], env=env)
        state, exit_code = cluster.wait(job, timeout=240)
        assert (state, exit_code) == ("COMPLETED", 0), cluster.output(job) + cluster.errors(job)
        assert cluster.job_info(job)["NumTasks"] == "2"
        lines = sorted(line for line in cluster.output(job).splitlines() if "sum" in line)
        daemons = cluster.daemon_pids
        munge_dir = cluster.munge_dir
    assert lines == ["0: rank 0 of 2: sum 3", "1: rank 1 of 2: sum 3"]
    assert sorted(daemons) == ["munged", "slurmctld", "slurmd"]
    assert [name for name, pid in daemons.items() if pid_running(pid)] == []
    assert cluster.leftover_processes() == []
    assert munge_dir is not None and not munge_dir.exists()


def test_failed_job_reports_its_exit_code_and_sees_env(slurm_cluster, tmp_path):  # noqa: F811
    script = write(tmp_path / "fail.sbatch", '#!/bin/bash\necho "value=$MY_VALUE arg=$1"\necho oops >&2\nexit 3\n')
    job = slurm_cluster.submit(script, ["first"], env={"MY_VALUE": "42"})
    assert slurm_cluster.wait(job, timeout=120) == ("FAILED", 3)
    assert slurm_cluster.output(job) == "value=42 arg=first\n"
    assert slurm_cluster.errors(job) == "oops\n"


def test_wait_times_out_and_cancels_the_job(slurm_cluster, tmp_path):  # noqa: F811
    script = write(tmp_path / "sleep.sbatch", "#!/bin/bash\nsleep 300\n")
    job = slurm_cluster.submit(script, sbatch_args=["--job-name=sleeper"])
    with pytest.raises(TimeoutError, match=f"Slurm job {job} still"):
        slurm_cluster.wait(job, timeout=2)
    state, _ = slurm_cluster.wait(job, timeout=60)
    assert state == "CANCELLED"


BIND_JOB = """\
#!/bin/bash
#SBATCH --ntasks=2
srun -l bash "$BIND_SH" --cpu=exclusive --mem=node -- "$PYTHON" -c \\
  'import os; print("affinity", sorted(os.sched_getaffinity(0)))'
"""


def test_bind_sh_under_srun_gives_each_task_its_own_cpu(slurm_cluster, tmp_path):  # noqa: F811
    # bind.sh takes the rank from SLURM_LOCALID and the rank count from Slurm's tasks-per-node
    # variables; a stand-in lscpu describes one NUMA node with CPUs 0 and 1.
    if shutil.which("numactl") is None or not {0, 1} <= os.sched_getaffinity(0):
        pytest.skip("needs numactl and CPUs 0 and 1")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    write(bin_dir / "lscpu", "#!/bin/sh\nprintf '# CPU,Core,Socket,Node\\n0,0,0,0\\n1,1,0,0\\n'\n").chmod(0o755)
    env = {"PYTHON": sys.executable, "BIND_SH": str(ROOT / "bind.sh"),
           "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}
    job = slurm_cluster.submit(write(tmp_path / "bind.sbatch", BIND_JOB), env=env)
    assert slurm_cluster.wait(job, timeout=120) == ("COMPLETED", 0), slurm_cluster.errors(job)
    assert sorted(slurm_cluster.output(job).splitlines()) == ["0: affinity [0]", "1: affinity [1]"]
