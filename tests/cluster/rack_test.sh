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

. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
vm_test_init rack_test rack
vms=3
parse_options "$@"
[[ "$vms" =~ ^[0-9]+$ && "$vms" -ge 3 ]] || die "--vms must be a number >= 3 (one is killed)"
need_qemu
need_vm_network
need_binary "$bin" nrx

nrx() { "$bin" "$@"; }
cl=(--dir "$dir")
cluster_down_on_exit
rm -rf "$dir"
start=$SECONDS

# 1. Up: every machine joins.
cluster_sh up --nodes "$vms" --image "$image" --timeout 240 || die "nrx cluster up failed (logs in $dir)"
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
check_kv_run "$run1" "$vms"

# 3b. logbench: the shared log's append/exec rate beside a local ring on every machine, and the
# log applied identically everywhere.
bench="$(nrx cluster run logbench "${cl[@]}" --seconds 2 --timeout 240)" || die "nrx cluster run logbench failed: $bench"
printf '%s\n' "$bench"
grep -q 'has the same digests' <<<"$bench" || die "the machines applied different logs"
grep -q '^median shm/ring ratio [0-9.]* over '"$vms"' machines' <<<"$bench" || die "logbench printed no ratio"

# 4. Kill a VM mid-run: machine 1 of the run (not machine 0, which formats the region).
kill_node1_mid_run "$vms"
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
cluster_down
[[ ! -f "$shm_path" ]] || die "the shared memory file is still there"
if pgrep -f "controller.*$dir/controller.sock" >/dev/null; then die "the controller still runs after down"; fi
note "passed in $((SECONDS - start)) s (up ${up_s} s)"
