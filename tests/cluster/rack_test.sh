#!/usr/bin/env bash
# The README's cluster sequence, checked: `nrx cluster up` (3 QEMU VMs over ivshmem, a private
# network, the gRPC controller with TLS), then
#   - a machine with a wrong secret is refused (and so is a tool with one);
#   - `nrx cluster run kv` with writes from every VM: every replica ends with the same digests;
#   - `nrx cluster run logbench`: every machine applies the same log, the shm/ring ratio is printed;
#   - a VM's QEMU is SIGKILLed mid-run: the controller fences it within its lease, the others finish
#     with equal digests, and every log entry the dead machine had applied is on every survivor;
#   - a region whose header names another cluster is refused by `nrx node --attach`;
# then `nrx cluster down` leaves no QEMU, namespace, shared memory or controller behind.
# Exit 77 (skipped) where QEMU or the VM network cannot be used (no root, no /dev/net/tun).
#
#   tests/cluster/rack_test.sh [--bin PATH] [--dir DIR] [--image DIR] [--vms N]
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
bin="$root/build/bin/nrx"
dir="$root/build/cluster/rack"
image="$root/build/guest"
vms=3

die() { printf 'rack_test: FAILED: %s\n' "$*" >&2; exit 1; }
note() { printf 'rack_test: %s\n' "$*" >&2; }
while (($#)); do
  case "$1" in
    --bin) bin="${2:?--bin needs a path}"; shift ;;
    --dir) dir="${2:?--dir needs a directory}"; shift ;;
    --image) image="${2:?--image needs a directory}"; shift ;;
    --vms) vms="${2:?--vms needs a number}"; shift ;;
    -h|--help) sed -n '2,14p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown option '$1' (see --help)" ;;
  esac
  shift
done
[[ "$vms" =~ ^[0-9]+$ && "$vms" -ge 3 ]] || die "--vms must be a number >= 3 (one is killed)"
if ! command -v qemu-system-x86_64 >/dev/null; then
  echo "SKIP: qemu-system-x86_64 is not installed (apt-get install qemu-system-x86)"
  exit 77
fi
if [[ $(id -u) -ne 0 || ! -c /dev/net/tun ]] || ! command -v ip >/dev/null; then
  echo "SKIP: the VM network needs root, ip (iproute2) and /dev/net/tun"
  exit 77
fi
[[ -x "$bin" ]] || die "no nrx binary at $bin (build it first: ./nrx build)"

nrx() { "$bin" "$@"; }
cl=(--dir "$dir")
cleanup() { NRX_BIN="$bin" "$root/deploy/cluster.sh" down --dir "$dir" --bin "$bin" >/dev/null 2>&1 || true; }
trap 'rc=$?; cleanup; exit $rc' EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
rm -rf "$dir"
start=$SECONDS

# 1. Up: every machine joins.
NRX_BIN="$bin" "$root/deploy/cluster.sh" up --nodes "$vms" --dir "$dir" --bin "$bin" --image "$image" \
  --timeout 240 || die "nrx cluster up failed (logs in $dir)"
up_s=$((SECONDS - start))
status="$(nrx cluster status "${cl[@]}")" || die "nrx cluster status failed"
[[ $(grep -c ' live ' <<<"$status") -eq "$vms" ]] || die "not every machine is live: $status"
grep -q 'TLS' <<<"$status" || die "the controller does not serve TLS: $status"

# 2. A wrong secret is refused: a machine cannot join, a tool cannot ask.
wrong="$dir/wrong"
mkdir -p "$wrong"
printf 'not-the-cluster-secret-at-all\n' >"$wrong/secret"
cp "$dir/secrets/ca.pem" "$wrong/"
set +e
out="$(nrx node --controller "unix:$dir/controller.sock" --cluster-dir "$wrong" --region /dev/shm/nrx-rack-unused 2>&1)"
rc=$?
set -e
[[ $rc -ne 0 ]] || die "a machine with a wrong secret joined"
grep -q 'wrong cluster secret' <<<"$out" || die "no 'wrong cluster secret' in: $out"
if nrx cluster status "${cl[@]}" --cluster-dir "$wrong" >/dev/null 2>&1; then die "status answered a wrong secret"; fi
[[ $(nrx cluster status "${cl[@]}" | grep -c ' live ') -eq "$vms" ]] || die "the refused machine changed the membership"
note "a wrong secret is refused: ${out##*: }"

# 3. The key-value workload with writes from every VM.
run1="$(nrx cluster run kv "${cl[@]}" --seconds 3 --timeout 240)" || die "nrx cluster run kv failed: $run1"
printf '%s\n' "$run1"
[[ $(grep -cE '^[0-9]+ +[0-9]+ +nrx-vm[0-9]+ +ok ' <<<"$run1") -eq "$vms" ]] || die "not every machine reported ok"
grep -q 'has the same digests' <<<"$run1" || die "the digests differ"
for ((i = 0; i < vms; i++)); do
  grep -Eq " nrx-vm$i +ok +[1-9][0-9]* " <<<"$run1" || die "vm$i made no NR-FS calls"
done

# 3b. logbench: the shared log's append/exec rate beside a local ring on every machine, and the
# log applied identically everywhere.
bench="$(nrx cluster run logbench "${cl[@]}" --seconds 2 --timeout 240)" || die "nrx cluster run logbench failed: $bench"
printf '%s\n' "$bench"
grep -q 'has the same digests' <<<"$bench" || die "the machines applied different logs"
grep -q '^median shm/ring ratio [0-9.]* over '"$vms"' machines' <<<"$bench" || die "logbench printed no ratio"

# 4. Kill a VM mid-run: machine 1 of the run (not machine 0, which formats the region).
victim="$(nrx cluster status "${cl[@]}" | awk '$1 == 1 {print $2}')"
[[ "$victim" =~ ^nrx-vm[0-9]+$ ]] || die "cannot tell which VM is node 1"
vpid="$(cat "$dir/vms/${victim#nrx-}.pid")"
nrx cluster run kv "${cl[@]}" --seconds 12 --timeout 300 >"$dir/run2.out" 2>&1 &
runner=$!
deadline=$((SECONDS + 120))
until nrx cluster status "${cl[@]}" | grep -Eq "^1 +$victim +live .* RUNNING "; do
  ((SECONDS < deadline)) || die "node 1 never started running"
  kill -0 "$runner" 2>/dev/null || die "the run ended before node 1 ran: $(cat "$dir/run2.out")"
  sleep 0.2
done
# Let it log for a moment (a condition, not a time: node 1 has made calls).
until nrx cluster status "${cl[@]}" | grep -Eq "^1 +$victim +live +[0-9.]+ +[0-9.]+ s +RUNNING +[1-9]"; do
  ((SECONDS < deadline)) || die "node 1 made no calls"
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
nrx cluster status "${cl[@]}" | grep -Eq "^1 +$victim +fenced " || die "status does not show $victim fenced"
grep -q "node 1 ($victim) FENCED" "$dir/controller.log" || die "the controller log has no fencing"
note "fenced and finished $((SECONDS - killed)) s after the kill"

# 5. A region whose header names another cluster is refused (each run formats with its own id).
shm_path="$(sed -n 's/^SHM_PATH=//p' "$dir/vms/cluster.env")"
[[ -f "$shm_path" ]] || die "no shared memory file at '$shm_path'"
set +e
out="$(timeout 60 "$bin" node --attach "$shm_path" --machine 1 --machines 2 --nodes 1 --memory 16 2>&1)"
rc=$?
set -e
[[ $rc -ne 0 && $rc -ne 124 ]] || die "nrx node --attach on another cluster's region did not fail at once (rc $rc): $out"
grep -qi 'cluster' <<<"$out" || die "the refusal does not name the cluster mismatch: $out"
note "a region of another cluster is refused: $(grep -i 'cluster' <<<"$out" | tail -n 1)"

# 6. Down: nothing is left.
NRX_BIN="$bin" "$root/deploy/cluster.sh" down --dir "$dir" --bin "$bin" || die "nrx cluster down failed"
trap - EXIT
[[ ! -f "$shm_path" ]] || die "the shared memory file is still there"
if pgrep -f "file:$dir/vms/vm[0-9]*.console" >/dev/null; then die "QEMU processes still run after down"; fi
if pgrep -f "controller.*$dir/controller.sock" >/dev/null; then die "the controller still runs after down"; fi
note "passed in $((SECONDS - start)) s (up ${up_s} s)"
