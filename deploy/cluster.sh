#!/usr/bin/env bash
# deploy/cluster.sh: an nrx cluster of QEMU VMs in one command (`nrx cluster up` and `nrx cluster
# down` run this script). `up` makes the cluster's secret and TLS certificates (nrx cluster init),
# starts N VMs on one shared memory and a private network (deploy/vm.sh), each running
# `nrx node --controller` on its view of the shared region (or, with --log rdma, on soft-RoCE over
# the private network: no shared memory at all), then the controller on the host inside
# the VMs' network namespace (10.77.0.1:7700, and a unix socket in the run directory for the host's
# tools), and returns once every machine joined. `down` tells the controller to stop (the machines
# leave and their VMs power off), stops whatever is left by PID, and removes the shared memory and
# the network namespace. Progress goes to stderr.
#
#   deploy/cluster.sh up --nodes 3        # then: nrx cluster run kv; nrx cluster status
#   deploy/cluster.sh up --nodes 2 --log rdma
#   deploy/cluster.sh down
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

say() { printf 'cluster: %s\n' "$*" >&2; }
die() { printf 'cluster: error: %s\n' "$*" >&2; exit 2; }
fail() { printf 'cluster: %s\n' "$*" >&2; exit 1; }

usage() {
  cat <<'USAGE'
usage: deploy/cluster.sh up|down|status [options]    (also: nrx cluster up|down [options])

  up      start the VMs (one `nrx node` each) and the controller; return once every machine joined
  down    stop the controller, the machines and the VMs; remove the shared memory and the namespace
  status  whether the controller and the VMs of DIR run

options:
  --nodes N         machines (VMs), each one kernel with one replica (default 3)
  --shm KIND        shared memory between the VMs: ivshmem (default; coherent: the kernel runs on
                    it) or cxl (an emulated CXL type-3 device, /dev/dax0.0 in every guest; loads
                    and stores are shared, atomics are not: the logs' noncoherent mode, with
                    machine 0 of each run as their sequencer)
  --log BACKEND     where the kernels share their logs: shm (default: the shared memory of --shm)
                    or rdma (RDMA logs over soft-RoCE, rdma_rxe on each VM's private NIC; no
                    shared memory; machine 0 of each run sequences the logs)
  --shm-mb MB       size of the shared region, a power of two (default 512)
  --mem MB          guest RAM (default 512)
  --lease-ms MS     a machine silent this long is fenced (default 6000: TCG guests on a busy host
                    stall for seconds)
  --heartbeat-ms MS (default 250)
  --plaintext       no TLS between the machines and the controller (default: TLS with the
                    certificates of `nrx cluster init`)
  --dir DIR         run directory (default build/cluster/nrx): controller.log, controller.sock,
                    secrets/, vms/vmI.console
  --bin PATH        the nrx binary, for the host and the guests (default: $NRX_BIN, else
                    build/bin/nrx)
  --image DIR       guest image directory (default build/guest)
  --timeout S       how long `up` waits for every machine to join (default 180)
  -h, --help        this text

exit status: 0 success, 1 a step failed (its log is named), 2 bad usage or set-up error.
USAGE
}

cmd="${1:-}"
[[ -n "$cmd" ]] || { usage >&2; exit 2; }
shift
case "$cmd" in
  -h|--help|help) usage; exit 0 ;;
  up|down|status) ;;
  *) die "unknown command '$cmd' (see --help)" ;;
esac

nodes=3
log=shm
shm=ivshmem
shm_set=0
shm_mb=512
mem=512
lease_ms=6000
heartbeat_ms=250
tls=1
dir="$root/build/cluster/nrx"
bin="${NRX_BIN:-$root/build/bin/nrx}"
image="$root/build/guest"
timeout=180
is_uint() { [[ "$1" =~ ^[0-9]+$ ]]; }
while (($#)); do
  case "$1" in
    --nodes) nodes="${2:?--nodes needs a number}"; shift ;;
    --shm) shm="${2:?--shm needs ivshmem or cxl}"; shm_set=1; shift ;;
    --log) log="${2:?--log needs shm or rdma}"; shift ;;
    --shm-mb) shm_mb="${2:?--shm-mb needs a number}"; shift ;;
    --mem) mem="${2:?--mem needs a number}"; shift ;;
    --lease-ms) lease_ms="${2:?--lease-ms needs a number}"; shift ;;
    --heartbeat-ms) heartbeat_ms="${2:?--heartbeat-ms needs a number}"; shift ;;
    --plaintext) tls=0 ;;
    --dir) dir="${2:?--dir needs a directory}"; shift ;;
    --bin) bin="${2:?--bin needs a path}"; shift ;;
    --image) image="${2:?--image needs a directory}"; shift ;;
    --timeout) timeout="${2:?--timeout needs seconds}"; shift ;;
    -h|--help) usage; exit 0 ;;
    *) die "unknown option '$1' (see --help)" ;;
  esac
  shift
done
is_uint "$nodes" && ((nodes >= 1 && nodes <= 16)) || die "--nodes must be in 1..16"
is_uint "$lease_ms" && is_uint "$heartbeat_ms" && ((heartbeat_ms > 0 && lease_ms >= 2 * heartbeat_ms)) ||
  die "--lease-ms must be at least twice --heartbeat-ms"
is_uint "$timeout" || die "--timeout must be a number of seconds"
case "$shm" in
  ivshmem|cxl) ;;
  *) die "--shm must be ivshmem or cxl, not '$shm'" ;;
esac
case "$log" in
  shm) ;;
  rdma) ((!shm_set)) || die "--shm goes with --log shm (--log rdma shares no memory)"; shm=none ;;
  *) die "--log must be shm or rdma, not '$log'" ;;
esac
mkdir -p "$dir"
dir="$(cd "$dir" && pwd)"
vmdir="$dir/vms"
port=7700

controller_pid() {  # prints the PID if the recorded controller still runs
  local pid
  pid="$(cat "$dir/controller.pid" 2>/dev/null || true)"
  [[ -n "$pid" ]] && kill -0 "$pid" 2>/dev/null && grep -aq 'controller' "/proc/$pid/cmdline" 2>/dev/null && echo "$pid"
  return 0
}

cmd_down() {
  local pid i
  if [[ -S "$dir/controller.sock" && -x "$bin" ]]; then
    # The machines leave at their next heartbeat; their VMs then print NRX-EXIT and power off.
    if "$bin" cluster shutdown --dir "$dir" 2>/dev/null; then
      say "down: controller told to stop; waiting for the machines to leave"
      "$root/deploy/vm.sh" wait --dir "$vmdir" --timeout 20 >/dev/null 2>&1 || true
    fi
  fi
  if [[ -f "$vmdir/cluster.env" ]] || compgen -G "$vmdir/vm*.pid" >/dev/null; then
    "$root/deploy/vm.sh" down --dir "$vmdir" || true
  fi
  pid="$(controller_pid)"
  if [[ -n "$pid" ]]; then
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < 50; i++)); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
  fi
  rm -f "$dir/controller.pid" "$dir/controller.sock"
  say "down: stopped (logs stay in $dir)"
}

cmd_status() {
  local pid
  pid="$(controller_pid)"
  echo "controller: ${pid:+running (pid $pid)}${pid:-not running}"
  "$root/deploy/vm.sh" status --dir "$vmdir" 2>/dev/null || echo "vms: none"
}

cmd_up() {
  [[ -x "$bin" ]] || die "no nrx binary at $bin (build it first: ./nrx build)"
  command -v qemu-system-x86_64 >/dev/null || die "qemu-system-x86_64 not found; install it with: apt-get install qemu-system-x86"
  [[ -z "$(controller_pid)" ]] || die "a cluster already runs in $dir; run 'nrx cluster down' first"
  if [[ ! -f "$dir/secrets/secret" ]]; then
    rm -rf "$dir/secrets"
    "$bin" cluster init "$dir/secrets" >/dev/null || fail "nrx cluster init failed"
    say "up: made the cluster secret and TLS certificates in $dir/secrets"
  fi
  local -a envs=(--env "NRX_SECRET=$(cat "$dir/secrets/secret")" --env "NRX_CONTROLLER=10.77.0.1:$port")
  if ((tls)); then
    envs+=(--env "NRX_CA_B64=$(base64 -w0 "$dir/secrets/ca.pem")")
    mv -f "$dir/secrets/ca.pem.off" "$dir/secrets/ca.pem" 2>/dev/null || true
  else
    # The controller serves TLS exactly when its cluster directory holds ca.pem.
    [[ -f "$dir/secrets/ca.pem" ]] && mv -f "$dir/secrets/ca.pem" "$dir/secrets/ca.pem.off"
  fi
  cat >"$dir/node.sh" <<'GUEST'
# Guest script of deploy/cluster.sh: one nrx machine, joined to the controller on the host.
set -u
mkdir -p /tmp/nrx-cluster
printf '%s\n' "$NRX_SECRET" >/tmp/nrx-cluster/secret
if [ -n "${NRX_CA_B64:-}" ]; then printf '%s' "$NRX_CA_B64" | base64 -d >/tmp/nrx-cluster/ca.pem; fi
hostname "nrx-vm$NRX_VM_INDEX"
if [ "$NRX_SHM" = none ]; then
  # --log rdma: soft-RoCE on the private NIC (rxe0); the logs' endpoints go through the controller.
  rxe=$(nrx_rxe) || { echo "node: nrx_rxe failed (no soft-RoCE device)"; exit 1; }
  echo "node: vm $NRX_VM_INDEX at $NRX_IP, RDMA $rxe, controller $NRX_CONTROLLER"
  exec nrx node --controller "$NRX_CONTROLLER" --cluster-dir /tmp/nrx-cluster --log rdma --device rxe0 \
    --nodes 1 --cores-per-node 1 --memory 64
fi
if [ "$NRX_SHM" = cxl ]; then
  region=$(nrx_cxl_dax) || { echo "node: no CXL dax device"; exit 1; }
  coherence=noncoherent
else
  region=$(nrx_ivshmem_bar) || { echo "node: no ivshmem BAR"; exit 1; }
  coherence=coherent
fi
echo "node: vm $NRX_VM_INDEX at $NRX_IP, region $region ($coherence), controller $NRX_CONTROLLER"
exec nrx node --controller "$NRX_CONTROLLER" --cluster-dir /tmp/nrx-cluster --region "$region" \
  --coherence "$coherence" --nodes 1 --cores-per-node 1 --memory 64
GUEST
  trap 'rc=$?; trap - EXIT; if ((rc != 0)); then say "up: failed or interrupted; cleaning up"; cmd_down || true; fi; exit $rc' EXIT
  trap 'exit 130' INT
  trap 'exit 143' TERM
  local t0=$SECONDS
  if [[ "$log" == rdma ]]; then
    say "up: starting $nodes VMs (RDMA logs over soft-RoCE; private network 10.77.0.0/24)"
  else
    say "up: starting $nodes VMs (shared memory: $shm, $shm_mb MiB; private network 10.77.0.0/24)"
  fi
  "$root/deploy/vm.sh" up --vms "$nodes" --dir "$vmdir" --image "$image" --bin "$bin" --shm "$shm" \
    --shm-mb "$shm_mb" --mem "$mem" --net private --script "$dir/node.sh" "${envs[@]}" \
    --boot-timeout "$timeout" || fail "deploy/vm.sh up failed (consoles in $vmdir)"
  say "up: VMs booted in $((SECONDS - t0)) s; starting the controller on 10.77.0.1:$port"
  rm -f "$dir/controller.sock"
  # setsid: the controller outlives this script (and its terminal); down stops it by PID.
  setsid "$root/deploy/vm.sh" exec --dir "$vmdir" -- "$bin" controller \
    --listen "10.77.0.1:$port,unix:$dir/controller.sock" --cluster-dir "$dir/secrets" --nodes "$nodes" \
    --lease-ms "$lease_ms" --heartbeat-ms "$heartbeat_ms" >"$dir/controller.log" 2>&1 </dev/null &
  echo $! >"$dir/controller.pid"
  local deadline=$((SECONDS + timeout)) joined=0 n
  while :; do
    [[ -n "$(controller_pid)" ]] || fail "the controller stopped (log: $dir/controller.log)"
    n="$(grep -c ' joined, replicas ' "$dir/controller.log" 2>/dev/null || true)"
    while ((joined < ${n:-0})); do
      say "up: $(grep ' joined, replicas ' "$dir/controller.log" | sed -n "$((joined + 1))p" | sed 's/^nrx controller: //')"
      joined=$((joined + 1))
    done
    ((joined >= nodes)) && break
    ((SECONDS < deadline)) || fail "only $joined of $nodes machines joined within $timeout s (consoles in $vmdir)"
    sleep 0.2
  done
  trap - EXIT INT TERM
  say "up: $nodes machines joined in $((SECONDS - t0)) s"
  cat >&2 <<EOF
cluster: run directory  $dir
cluster: controller     10.77.0.1:$port and unix:$dir/controller.sock ($( ((tls)) && echo TLS || echo plaintext)); log $dir/controller.log
cluster: consoles       $vmdir/vm0.console .. vm$((nodes - 1)).console
cluster: next           nrx cluster run kv; nrx cluster status; nrx cluster down
EOF
}

case "$cmd" in
  up) cmd_up ;;
  down) cmd_down ;;
  status) cmd_status ;;
esac
