#!/usr/bin/env python3
"""Start one process per local rank, each bound to its own CPUs and NUMA memory.

The interface of the original `bind_pyt.py` (itself modelled on `torch.distributed.launch`):

    python bind_pyt.py --nproc_per_node 2 [--nnodes 1 --node_rank 0 --master_addr 127.0.0.1
        --master_port 29500 --no_hyperthreads --no_membind] script.py [script args...]

Every rank gets RANK, LOCAL_RANK, WORLD_SIZE, LOCAL_WORLD_SIZE, MASTER_ADDR and MASTER_PORT in its
environment and, unless --use_env is given, `--local_rank=<r>` as its first script argument. The
binding itself is computed and applied by `bind.sh` next to this file (`--cpu=exclusive`, or
`exclusive,nosmt` with --no_hyperthreads; `--mem=node` unless --no_membind), so both launchers bind
identically. Without numactl the ranks run unbound after one warning line (--require_binding makes
that an error instead). SIGINT/SIGTERM/SIGHUP are forwarded to the ranks; when one rank fails the others are
stopped and the launcher exits with that rank's code.
"""
from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

BIND_SH = Path(__file__).resolve().parent / "bind.sh"
FORWARDED_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
POLL_SECONDS = 0.05
STOP_GRACE_SECONDS = 10.0


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nnodes", type=int, default=1, help="number of nodes")
    parser.add_argument("--node_rank", type=int, default=0, help="rank of this node, 0..nnodes-1")
    parser.add_argument("--nproc_per_node", type=int, default=1, help="processes (ranks) on this node")
    parser.add_argument("--master_addr", default="127.0.0.1", help="address of the rank 0 node")
    parser.add_argument("--master_port", type=int, default=29500, help="free port on the rank 0 node")
    parser.add_argument("--no_hyperthreads", action="store_true", help="bind to one hardware thread per core")
    parser.add_argument("--no_membind", action="store_true", help="do not restrict memory to the rank's NUMA node")
    parser.add_argument("--nsockets_per_node", type=int, default=None,
                        help="accepted for compatibility; the topology is read from lscpu")
    parser.add_argument("--ncores_per_socket", type=int, default=None,
                        help="accepted for compatibility; the topology is read from lscpu")
    parser.add_argument("--use_env", action="store_true", help="do not pass --local_rank to the script")
    parser.add_argument("--require_binding", action="store_true",
                        help="fail when numactl is missing (default: warn once and run the ranks unbound)")
    parser.add_argument("training_script", help="the Python script each rank runs")
    parser.add_argument("training_script_args", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    if args.nproc_per_node < 1 or args.nnodes < 1:
        parser.error("--nproc_per_node and --nnodes must be at least 1")
    if not 0 <= args.node_rank < args.nnodes:
        parser.error(f"--node_rank {args.node_rank} must be in [0, {args.nnodes})")
    return args


def bind_options(args: argparse.Namespace) -> list[str]:
    if not args.bind:
        return ["--cpu=off", "--mem=off"]
    cpu = "exclusive,nosmt" if args.no_hyperthreads else "exclusive"
    mem = "off" if args.no_membind else "node"
    return [f"--cpu={cpu}", f"--mem={mem}"]


def decide_binding(args: argparse.Namespace) -> None:
    """Sets args.bind; checked once here so a missing numactl gives one line, not one per rank."""
    args.bind = shutil.which("numactl") is not None
    if args.bind:
        return
    if args.require_binding:
        print("error: numactl is not installed (apt-get install numactl); --require_binding forbids running unbound",
              file=sys.stderr)
        raise SystemExit(2)
    print("bind_pyt.py: warning: numactl not found, running the ranks unbound (install numactl to bind)",
          file=sys.stderr)


def rank_env(args: argparse.Namespace, local_rank: int) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        RANK=str(args.node_rank * args.nproc_per_node + local_rank),
        LOCAL_RANK=str(local_rank),
        WORLD_SIZE=str(args.nnodes * args.nproc_per_node),
        LOCAL_WORLD_SIZE=str(args.nproc_per_node),
        MASTER_ADDR=args.master_addr,
        MASTER_PORT=str(args.master_port),
    )
    return env


def rank_command(args: argparse.Namespace, local_rank: int) -> list[str]:
    script = [sys.executable, "-u", args.training_script]
    if not args.use_env:
        script.append(f"--local_rank={local_rank}")
    return ["bash", str(BIND_SH), *bind_options(args), "--", *script, *args.training_script_args]


class RankGroup:
    """The running ranks: forwards signals to them and reports the first failure."""

    def __init__(self, processes: list[subprocess.Popen]):
        self.processes = processes
        self.signals_received = 0

    def forward(self, signum: int, _frame=None) -> None:
        # A second signal means the user wants out now.
        self.signals_received += 1
        self.send(signal.SIGKILL if self.signals_received > 1 else signum)

    def send(self, signum: int) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.send_signal(signum)

    def wait(self) -> int:
        """Wait for all ranks; on the first non-zero exit, stop the rest and return its code."""
        while True:
            running = False
            for process in self.processes:
                code = process.poll()
                if code is None:
                    running = True
                elif code != 0:
                    self.stop_remaining()
                    return exit_status(code)
            if not running:
                return 0
            time.sleep(POLL_SECONDS)

    def stop_remaining(self) -> None:
        self.send(signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE_SECONDS
        for process in self.processes:
            try:
                process.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def exit_status(returncode: int) -> int:
    """Popen reports death by signal N as -N; a shell would report 128 + N."""
    return 128 - returncode if returncode < 0 else returncode


def launch(args: argparse.Namespace) -> int:
    group = RankGroup([])
    previous = {signum: signal.signal(signum, group.forward) for signum in FORWARDED_SIGNALS}
    try:
        for local_rank in range(args.nproc_per_node):
            group.processes.append(subprocess.Popen(rank_command(args, local_rank), env=rank_env(args, local_rank)))
        return group.wait()
    except BaseException:
        group.stop_remaining()
        raise
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    decide_binding(args)
    return launch(args)


if __name__ == "__main__":
    sys.exit(main())
