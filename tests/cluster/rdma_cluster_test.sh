#!/usr/bin/env bash
# The cluster over RDMA: `nrx cluster up --nodes 3 --log rdma` (no shared memory: each VM adds a
# soft-RoCE device, rdma_rxe on its private NIC, and joins with `nrx node --log rdma --device
# rxe0`), then `nrx cluster run kv`: the kernel's process table and NR-FS logs are RDMA logs
# (logs/rdma, a mirror on each machine, machine 0 sequencing), their endpoints exchanged through
# the controller, NR-FS's scans ordered by the bakery mirrored over RDMA WRITEs; writes from every
# VM, every replica with the same digests. Then a VM's QEMU is SIGKILLed mid-run (machine 1, while
# it appends): the controller fences it, the survivors cut their links to it (machine 0 lets its
# replicas go and resolves the slots it reserved but never wrote), and they finish with equal
# digests, every entry the dead machine had applied kept. `nrx cluster down` leaves nothing
# behind. Exit 77 (skipped) where QEMU, the VM network or the rxe provider are missing.
#
#   tests/cluster/rdma_cluster_test.sh [--bin PATH] [--dir DIR] [--image DIR] [--vms N]
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
bin="$root/build/bin/nrx"
dir="$root/build/cluster/rdma-cluster"
image="$root/build/guest"
vms=3

die() { printf 'rdma_cluster_test: FAILED: %s\n' "$*" >&2; exit 1; }
note() { printf 'rdma_cluster_test: %s\n' "$*" >&2; }
while (($#)); do
  case "$1" in
    --bin) bin="${2:?--bin needs a path}"; shift ;;
    --dir) dir="${2:?--dir needs a directory}"; shift ;;
    --image) image="${2:?--image needs a directory}"; shift ;;
    --vms) vms="${2:?--vms needs a number}"; shift ;;
    -h|--help) sed -n '2,10p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown option '$1' (see --help)" ;;
  esac
  shift
done
if ! command -v qemu-system-x86_64 >/dev/null; then
  echo "SKIP: qemu-system-x86_64 is not installed (apt-get install qemu-system-x86)"
  exit 77
fi
if [[ $(id -u) -ne 0 || ! -c /dev/net/tun ]] || ! command -v ip >/dev/null; then
  echo "SKIP: the VM network needs root, ip (iproute2) and /dev/net/tun"
  exit 77
fi
provider=(/usr/lib/x86_64-linux-gnu/libibverbs/librxe-rdmav*.so)
if [[ ! -x /usr/bin/rdma || ! -x /usr/bin/ibv_devinfo || ! -f "${provider[0]}" || ! -f /etc/libibverbs.d/rxe.driver ]]; then
  echo "SKIP: the guest image needs rdma, ibv_devinfo and the rxe provider (apt-get install iproute2 ibverbs-utils ibverbs-providers)"
  exit 77
fi
[[ -x "$bin" ]] || die "no nrx binary at $bin (build it first: ./nrx build)"
[[ "$vms" =~ ^[0-9]+$ && "$vms" -ge 3 ]] || die "--vms must be a number >= 3 (one is killed)"

cleanup() { NRX_BIN="$bin" "$root/deploy/cluster.sh" down --dir "$dir" --bin "$bin" >/dev/null 2>&1 || true; }
trap 'rc=$?; cleanup; exit $rc' EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
rm -rf "$dir"
start=$SECONDS
NRX_BIN="$bin" "$root/deploy/cluster.sh" up --nodes "$vms" --log rdma --dir "$dir" --bin "$bin" --image "$image" \
  --timeout 240 || die "nrx cluster up --log rdma failed (logs in $dir)"
up_s=$((SECONDS - start))
for ((i = 0; i < vms; i++)); do
  grep -aq 'node: vm .* RDMA rxe0 ' "$dir/vms/vm$i.console" || die "vm$i did not bring up rxe0 (see $dir/vms/vm$i.console)"
done
cl=(--dir "$dir")
kv_start=$SECONDS
run="$("$bin" cluster run kv "${cl[@]}" --seconds 3 --timeout 300)" || die "nrx cluster run kv failed: $run"
kv_s=$((SECONDS - kv_start))
printf '%s\n' "$run"
[[ $(grep -cE '^[0-9]+ +[0-9]+ +nrx-vm[0-9]+ +ok ' <<<"$run") -eq "$vms" ]] || die "not every machine reported ok"
grep -q 'has the same digests' <<<"$run" || die "the digests differ"
for ((i = 0; i < vms; i++)); do
  grep -Eq " nrx-vm$i +ok +[1-9][0-9]* " <<<"$run" || die "vm$i made no NR-FS calls"
  grep -aq 'RDMA logs on rxe0' "$dir/vms/vm$i.console" || die "vm$i did not run the kernel on RDMA logs"
done

# Kill machine 1 mid-run (machine 0 sequences the RDMA logs: its loss is not survived).
victim="$("$bin" cluster status "${cl[@]}" | awk '$1 == 1 {print $2}')"
[[ "$victim" =~ ^nrx-vm[0-9]+$ ]] || die "cannot tell which VM is node 1"
vpid="$(cat "$dir/vms/${victim#nrx-}.pid")"
"$bin" cluster run kv "${cl[@]}" --seconds 12 --timeout 300 >"$dir/run2.out" 2>&1 &
runner=$!
deadline=$((SECONDS + 120))
# A condition, not a time: node 1 runs and has made NR-FS calls (so it appends).
until "$bin" cluster status "${cl[@]}" | grep -Eq "^1 +$victim +live +[0-9.]+ +[0-9.]+ s +RUNNING +[1-9]"; do
  ((SECONDS < deadline)) || die "node 1 never ran its workload"
  kill -0 "$runner" 2>/dev/null || die "the run ended before node 1 ran: $(cat "$dir/run2.out")"
  sleep 0.2
done
kill -KILL "$vpid"
killed=$SECONDS
note "killed $victim (QEMU pid $vpid) mid-run"
set +e
wait "$runner"
rc=$?
set -e
cat "$dir/run2.out"
[[ $rc -eq 0 ]] || die "the run with a killed VM failed (rc $rc)"
grep -Eq "^1 +1 +$victim +fenced " "$dir/run2.out" || die "$victim was not reported fenced"
[[ $(grep -cE '^[0-9]+ +[0-9]+ +nrx-vm[0-9]+ +ok ' "$dir/run2.out") -eq $((vms - 1)) ]] || die "not every survivor reported ok"
grep -q 'has the same digests' "$dir/run2.out" || die "the survivors' digests differ"
grep -q "applied log entries on every survivor: kept" "$dir/run2.out" || die "entries the dead machine applied are missing"
[[ $(grep -alE "machine 1 fenced by the controller; its RDMA links cut\s*$" "$dir"/vms/vm*.console | wc -l) -eq $((vms - 1)) ]] ||
  die "not every survivor fenced machine 1 on its RDMA logs"
kill_s=$((SECONDS - killed))
note "fenced and finished ${kill_s} s after the kill"

NRX_BIN="$bin" "$root/deploy/cluster.sh" down --dir "$dir" --bin "$bin" || die "nrx cluster down failed"
trap - EXIT
if pgrep -f "file:$dir/vms/vm[0-9]*.console" >/dev/null; then die "QEMU processes still run after down"; fi
echo "rdma_cluster_test: passed in $((SECONDS - start)) s (up ${up_s} s, kv run ${kv_s} s, kill to finish ${kill_s} s)"
