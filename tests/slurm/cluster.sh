#!/usr/bin/env bash
# A throw-away one-node SLURM cluster on this machine, for the `slurm` tests and for trying the
# cluster path by hand. Needs Debian's slurmctld, slurmd, munge and slurm-client; run as root.
#
#   tests/slurm/cluster.sh start [DIR]   # config, state and logs in DIR (default: a new temp dir);
#                                        # prints `export SLURM_CONF=...` for sbatch/srun/squeue
#   tests/slurm/cluster.sh stop DIR      # stops its daemons; DIR is left for the logs
#
# Nothing outside DIR is written: munged gets its own socket, key copy and pid file there, and
# the daemons read DIR/slurm.conf (SLURM_CONF), never /etc/slurm.
set -euo pipefail

start() {
  local dir=${1:-$(mktemp -d /tmp/sweeper-slurm.XXXXXX)}
  mkdir -p "$dir"/{state,spool,munge}
  dir=$(cd "$dir" && pwd)
  local host cpus mem
  host=$(hostname -s)
  cpus=$(nproc)
  mem=$(awk '/MemTotal/ {print int($2 / 1024 * 0.8)}' /proc/meminfo)
  if [ ! -f "$dir/munge/munge.key" ]; then
    dd if=/dev/urandom of="$dir/munge/munge.key" bs=1024 count=1 status=none
  fi
  chmod 700 "$dir/munge"
  chmod 400 "$dir/munge/munge.key"
  munged --force --key-file="$dir/munge/munge.key" --socket="$dir/munge/munge.socket" \
         --pid-file="$dir/munge/munged.pid" --log-file="$dir/munge/munged.log" \
         --seed-file="$dir/munge/munged.seed"
  cat > "$dir/slurm.conf" <<CONF
ClusterName=sweeper-test
SlurmctldHost=$host
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket=$dir/munge/munge.socket
CredType=cred/munge
SlurmctldPort=16817
SlurmdPort=16818
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool
SlurmctldPidFile=$dir/slurmctld.pid
SlurmdPidFile=$dir/slurmd.pid
SlurmctldLogFile=$dir/slurmctld.log
SlurmdLogFile=$dir/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
MpiDefault=none
ReturnToService=2
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=1
MinJobAge=300
KillWait=10
NodeName=$host CPUs=$cpus RealMemory=$mem State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP OverSubscribe=YES
CONF
  export SLURM_CONF="$dir/slurm.conf"
  slurmctld -f "$SLURM_CONF"
  slurmd -f "$SLURM_CONF"
  for _ in $(seq 60); do
    if sinfo -h -o %T 2>/dev/null | grep -qE '^(idle|mixed|allocated)'; then
      echo "export SLURM_CONF=$SLURM_CONF"
      return 0
    fi
    sleep 0.5
  done
  echo "cluster in $dir did not come up; see $dir/*.log" >&2
  stop "$dir"
  return 1
}

stop() {
  local dir=$1
  # Cancel the cluster's jobs first: their job steps would outlive the daemons.
  if [ -f "$dir/slurm.conf" ]; then
    SLURM_CONF="$dir/slurm.conf" scancel --quiet --user="$(id -un)" 2>/dev/null || true
    for _ in $(seq 20); do
      [ -z "$(SLURM_CONF="$dir/slurm.conf" squeue -h 2>/dev/null)" ] && break
      sleep 0.5
    done
  fi
  for pidfile in "$dir/slurmd.pid" "$dir/slurmctld.pid" "$dir/munge/munged.pid"; do
    if [ -f "$pidfile" ]; then
      kill "$(cat "$pidfile")" 2>/dev/null || true
    fi
  done
  sleep 1
}

case "${1:-}" in
  start) start "${2:-}" ;;
  stop) stop "${2:?usage: cluster.sh stop DIR}" ;;
  *) echo "usage: $0 start [DIR] | stop DIR" >&2; exit 2 ;;
esac
