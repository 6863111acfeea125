#!/usr/bin/env bash
# Run a command bound to this local rank's share of the CPUs and memory (via numactl).
#
#   bind.sh [--cpu=exclusive|exclusive,nosmt|node|off] [--mem=node|off] [--ib=single|off]
#           [--cluster=NAME] [--require-binding] [--print] -- COMMAND [ARGS...]
#
# Defaults: --cpu=node --mem=node --ib=off.
#   --cpu=exclusive        the rank's contiguous share of the physical cores of its NUMA node,
#                          with all their hardware threads
#   --cpu=exclusive,nosmt  the same cores, first hardware thread of each only
#   --cpu=node             every CPU of the rank's NUMA node (--cpunodebind)
#   --mem=node             allocate only on the rank's NUMA node (--membind)
#   --ib=single            export OMPI_MCA_btl_openib_if_include with one InfiniBand device
#                          (from `ibstat -l`) chosen by rank, like the original
#   --cluster=NAME         accepted for compatibility; devices always come from `ibstat -l`
#   --require-binding      fail (exit 2) when numactl is missing instead of running unbound
#                          (also when BIND_REQUIRE=1)
#   --print                print the command that would run where numactl is installed, one
#                          argument per line, and exit (also when BIND_DRY_RUN=1)
#
# Without numactl (clusters that lack it) the command runs unbound after one warning line on stderr.
#
# Local rank: LOCAL_RANK, SLURM_LOCALID, OMPI_COMM_WORLD_LOCAL_RANK, else 0.
# Ranks on this node: LOCAL_WORLD_SIZE, OMPI_COMM_WORLD_LOCAL_SIZE, Slurm's tasks-per-node
# variables, the GPU count from `nvidia-smi -L`, else 1.
# Ranks are spread evenly over the NUMA nodes in `lscpu -p=CPU,CORE,SOCKET,NODE` order.
set -euo pipefail

die() {
  echo "bind.sh: $*" >&2
  exit 2
}

usage() {
  sed -n '2,/^set -euo/p' "$0" | sed -e '$d' -e 's/^# \{0,1\}//'
}

first_set() {
  local name
  for name in "$@"; do
    if [[ -n "${!name:-}" ]]; then
      echo "${!name}"
      return 0
    fi
  done
  return 1
}

require_count() {
  local what=$1 value=$2
  [[ "$value" =~ ^[0-9]+$ ]] || die "$what must be a non-negative integer, got '$value'"
}

# Slurm writes per-node task counts as e.g. "4(x2),3": pick the entry of this node (SLURM_NODEID).
slurm_tasks_on_this_node() {
  local spec=$1 node=${SLURM_NODEID:-0} item count repeats
  local -a items
  IFS=, read -ra items <<<"$spec"
  for item in "${items[@]}"; do
    if [[ "$item" =~ ^([0-9]+)\(x([0-9]+)\)$ ]]; then
      count=${BASH_REMATCH[1]}
      repeats=${BASH_REMATCH[2]}
    elif [[ "$item" =~ ^[0-9]+$ ]]; then
      count=$item
      repeats=1
    else
      return 1
    fi
    if ((node < repeats)); then
      echo "$count"
      return 0
    fi
    node=$((node - repeats))
  done
  return 1
}

gpu_count() {
  command -v nvidia-smi >/dev/null 2>&1 || { echo 0; return 0; }
  local listing
  listing=$(nvidia-smi -L 2>/dev/null) || { echo 0; return 0; }
  grep -c '^GPU ' <<<"$listing" || true
}

local_world_size() {
  local size spec gpus
  if size=$(first_set LOCAL_WORLD_SIZE OMPI_COMM_WORLD_LOCAL_SIZE); then
    echo "$size"
    return 0
  fi
  if spec=$(first_set SLURM_STEP_TASKS_PER_NODE SLURM_NTASKS_PER_NODE SLURM_TASKS_PER_NODE) &&
    size=$(slurm_tasks_on_this_node "$spec"); then
    echo "$size"
    return 0
  fi
  gpus=$(gpu_count)
  if ((gpus > 0)); then echo "$gpus"; else echo 1; fi
}

# Prints "<numa node> <cpu list>" for the rank ("-" for the list unless cpu_mode is exclusive*).
# The cpu list holds the rank's contiguous share
# [i*n/k, (i+1)*n/k) of the n physical cores of its node (k ranks there, i its index among
# them), so the shares differ by at most one core and together cover the node.
compute_binding() {
  local rank=$1 world=$2 cpu_mode=$3 topology
  topology=$(lscpu -p=CPU,CORE,SOCKET,NODE) || die "lscpu -p=CPU,CORE,SOCKET,NODE failed"
  awk -F, -v rank="$rank" -v world="$world" -v mode="$cpu_mode" '
    function fail(msg) { print "bind.sh: " msg > "/dev/stderr"; failed = 1; exit 2 }
    function cpu_ranges(list,    n, ids, i, j, t, out, start) {
      n = split(list, ids, " ")
      for (i = 2; i <= n; i++)
        for (j = i; j > 1 && ids[j - 1] + 0 > ids[j] + 0; j--) { t = ids[j]; ids[j] = ids[j - 1]; ids[j - 1] = t }
      out = ""
      for (i = 1; i <= n; i = j + 1) {
        start = ids[i]
        for (j = i; j < n && ids[j + 1] == ids[j] + 1; j++) {}
        out = out (out == "" ? "" : ",") (j > i ? start "-" ids[j] : start)
      }
      return out
    }
    BEGIN { nosmt = (mode == "exclusive,nosmt") }
    /^#/ || NF < 3 { next }
    {
      cpu = $1; core = $3 ":" $2; node = ($4 == "" ? 0 : $4 + 0)
      if (!(node in node_seen)) { node_seen[node] = 1; node_ids[num_nodes++] = node }
      if (!(core in core_threads)) { node_core[node, cores_on[node]++] = core; core_threads[core] = cpu }
      else if (!nosmt) core_threads[core] = core_threads[core] " " cpu
    }
    END {
      if (failed) exit 2
      if (num_nodes == 0) fail("lscpu listed no CPUs")
      for (i = 1; i < num_nodes; i++)
        for (j = i; j > 0 && node_ids[j - 1] > node_ids[j]; j--) { t = node_ids[j]; node_ids[j] = node_ids[j - 1]; node_ids[j - 1] = t }
      slot = int(rank * num_nodes / world)
      node = node_ids[slot]
      first = -1; here = 0
      for (r = 0; r < world; r++)
        if (int(r * num_nodes / world) == slot) { if (first < 0) first = r; here++ }
      if (mode !~ /^exclusive/) { print node, "-"; exit 0 }
      index_on_node = rank - first
      n = cores_on[node]
      if (n < here) fail(here " ranks share NUMA node " node " but it has only " n " physical cores; use --cpu=node")
      list = ""
      for (c = int(index_on_node * n / here); c < int((index_on_node + 1) * n / here); c++)
        list = list " " core_threads[node_core[node, c]]
      print node, cpu_ranges(list)
    }' <<<"$topology"
}

infiniband_device() {
  local rank=$1 world=$2
  local -a devices
  command -v ibstat >/dev/null 2>&1 || return 1
  mapfile -t devices < <(ibstat -l 2>/dev/null)
  ((${#devices[@]} > 0)) || return 1
  echo "${devices[rank * ${#devices[@]} / world]}"
}

cpu_mode=node
mem_mode=node
ib_mode=off
print_only=${BIND_DRY_RUN:-0}
require_binding=${BIND_REQUIRE:-0}
while (($#)); do
  case "$1" in
    --cpu=*) cpu_mode=${1#--cpu=} ;;
    --mem=*) mem_mode=${1#--mem=} ;;
    --ib=*) ib_mode=${1#--ib=} ;;
    --cluster=*) ;;
    --require-binding) require_binding=1 ;;
    --print) print_only=1 ;;
    -h | --help) usage; exit 0 ;;
    --) shift; break ;;
    *) die "unknown option '$1' (options go before '--', the command after it; see --help)" ;;
  esac
  shift
done
(($#)) || die "no command given: use bind.sh [options] -- COMMAND [ARGS...]"

case "$cpu_mode" in
  exclusive | exclusive,nosmt | node | off) ;;
  *) die "--cpu must be exclusive, exclusive,nosmt, node or off, got '$cpu_mode'" ;;
esac
case "$mem_mode" in node | off) ;; *) die "--mem must be node or off, got '$mem_mode'" ;; esac
case "$ib_mode" in single | off) ;; *) die "--ib must be single or off, got '$ib_mode'" ;; esac

local_rank=$(first_set LOCAL_RANK SLURM_LOCALID OMPI_COMM_WORLD_LOCAL_RANK || echo 0)
world=$(local_world_size)
require_count "local rank" "$local_rank"
require_count "local world size" "$world"
((world > 0)) || die "local world size must be at least 1"
((local_rank < world)) || die "local rank $local_rank is not below the local world size $world"

numactl_args=()
if [[ "$cpu_mode" != off || "$mem_mode" != off ]]; then
  binding=$(compute_binding "$local_rank" "$world" "$cpu_mode")
  numa_node=${binding%% *}
  case "$cpu_mode" in
    exclusive*) numactl_args+=("--physcpubind=${binding#* }") ;;
    node) numactl_args+=("--cpunodebind=$numa_node") ;;
  esac
  [[ "$mem_mode" == node ]] && numactl_args+=("--membind=$numa_node")
fi

ib_env=()
if [[ "$ib_mode" == single ]]; then
  if device=$(infiniband_device "$local_rank" "$world"); then
    ib_env=(env "OMPI_MCA_btl_openib_if_include=$device")
  else
    echo "bind.sh: --ib=single: no InfiniBand device found by 'ibstat -l'; not selecting one" >&2
  fi
fi
binder=()
if ((${#numactl_args[@]})); then
  binder=(numactl "${numactl_args[@]}" --)
fi

if [[ "$print_only" == 1 ]]; then
  printf '%s\n' "${ib_env[@]}" "${binder[@]}" "$@"
  exit 0
fi
if ((${#binder[@]})) && ! command -v numactl >/dev/null 2>&1; then
  if [[ "$require_binding" == 1 ]]; then
    die "numactl is not installed (apt-get install numactl), or run with --cpu=off --mem=off"
  fi
  # Clusters without numactl still run the job, just without affinity.
  echo "bind.sh: warning: numactl not found, running unbound (install numactl to bind; --require-binding makes this an error)" >&2
  binder=()
fi
exec "${ib_env[@]}" "${binder[@]}" "$@"
