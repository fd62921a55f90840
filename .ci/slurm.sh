#!/usr/bin/env bash
# A local Slurm cluster for the launcher tests: Debian's Slurm + munge, slurmctld and two slurmd "nodes"
# (n1, n2) on this one host, as root, without systemd. Idempotent: a running cluster is left as it is.
# Usage: bash .ci/slurm.sh [stop]      (state, logs and pid files under $RLCOMP_SLURM_DIR)
set -euo pipefail

DIR=${RLCOMP_SLURM_DIR:-/var/tmp/rlcomp-slurm}
CONF=/etc/slurm/slurm.conf
MARK="# written by rlcomp .ci/slurm.sh"
NODES=(n1 n2)

alive() { [[ -s $1 && $(cat "/proc/$(cat "$1")/comm" 2>/dev/null) == slurm* ]]; }  # a live daemon, not a reused pid

if [[ ${1:-} == stop ]]; then  # stop only the daemons this script started (by their pid files)
  for f in "$DIR"/run/slurmd-*.pid "$DIR"/run/slurmctld.pid; do
    alive "$f" && kill "$(cat "$f")" && echo "stopped $(basename "$f" .pid)"
  done
  exit 0
fi

if (( EUID != 0 )); then echo "slurm.sh: needs root (daemons run as root here)" >&2; exit 1; fi
if [[ -f $CONF ]] && ! grep -qF "$MARK" "$CONF"; then
  echo "slurm.sh: $CONF exists and is not ours: not touching a real Slurm installation" >&2; exit 1
fi

if ! command -v slurmctld >/dev/null || ! command -v slurmd >/dev/null || ! command -v sbatch >/dev/null \
    || ! command -v munged >/dev/null; then
  echo "slurm.sh: installing slurmctld slurmd slurm-client munge (Debian packages)"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >/dev/null
  apt-get install -y -qq --no-install-recommends slurmctld slurmd slurm-client munge >/dev/null 2>&1 \
    || apt-get install -y --no-install-recommends slurmctld slurmd slurm-client munge
fi

# munge (authentication between the Slurm daemons and clients)
if ! munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
  install -d -o munge -g munge -m 755 /run/munge
  [[ -s /etc/munge/munge.key ]] || { /usr/sbin/mungekey -f 2>/dev/null || /usr/sbin/create-munge-key -f; \
                                     chown munge:munge /etc/munge/munge.key; chmod 400 /etc/munge/munge.key; }
  runuser -u munge -- /usr/sbin/munged --force  # --force: past a stale socket of a killed munged
  for _ in $(seq 50); do munge -n 2>/dev/null | unmunge >/dev/null 2>&1 && break; sleep 0.1; done
fi

# slurm.conf: two nodes on this host, each with all its cores (so two small jobs can share the nodes, as
# jobs share real nodes) and 40% of its memory.
cpus=$(nproc)
mem=$(( $(awk '/MemTotal/ {print int($2 / 1024)}' /proc/meminfo) * 4 / 10 ))
host=$(hostname -s)
mkdir -p "$DIR"/run "$DIR"/log "$DIR"/state /etc/slurm
for n in "${NODES[@]}"; do mkdir -p "$DIR/spool/$n"; done
new=$(mktemp)
cat >"$new" <<EOF
$MARK
ClusterName=rlcomp
SlurmctldHost=$host
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool/%n
SlurmctldPidFile=$DIR/run/slurmctld.pid
SlurmdPidFile=$DIR/run/slurmd-%n.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd-%n.log
ProctrackType=proctrack/pgid
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
MpiDefault=none
KillWait=5
MinJobAge=600
SlurmdParameters=config_overrides
NodeName=n1 NodeHostname=$host NodeAddr=127.0.0.1 Port=6821 CPUs=$cpus RealMemory=$mem State=UNKNOWN
NodeName=n2 NodeHostname=$host NodeAddr=127.0.0.1 Port=6822 CPUs=$cpus RealMemory=$mem State=UNKNOWN
PartitionName=debug Nodes=n1,n2 Default=YES MaxTime=INFINITE State=UP
EOF
changed=0
if ! cmp -s "$new" "$CONF"; then install -m 644 "$new" "$CONF"; changed=1; fi
rm -f "$new"

if (( changed )); then  # node definitions changed: restart our daemons (state is kept in $DIR/state)
  for f in "$DIR"/run/slurmd-*.pid "$DIR"/run/slurmctld.pid; do alive "$f" && kill "$(cat "$f")"; done
  for f in "$DIR"/run/slurmd-*.pid "$DIR"/run/slurmctld.pid; do
    for _ in $(seq 50); do alive "$f" || break; sleep 0.1; done
  done
fi
alive "$DIR/run/slurmctld.pid" || slurmctld -f "$CONF"
for n in "${NODES[@]}"; do
  alive "$DIR/run/slurmd-$n.pid" || slurmd -f "$CONF" -N "$n"
done

# Wait until both nodes are idle (or already running jobs); bring back nodes left DOWN by a killed daemon.
for i in $(seq 100); do
  states=$(sinfo -h -N -o '%N %t' 2>/dev/null || true)
  if [[ -n $states ]] && ! grep -qvE ' (idle|mix|alloc|comp)$' <<<"$states"; then
    echo "slurm.sh: ready: $(tr '\n' ' ' <<<"$states")"; exit 0
  fi
  if (( i % 20 == 10 )) && grep -qE ' (down|drain|drng|fail)' <<<"$states"; then
    scontrol update NodeName=n1,n2 State=RESUME 2>/dev/null || true
  fi
  sleep 0.3
done
echo "slurm.sh: nodes not ready: $states (logs in $DIR/log)" >&2
exit 1
