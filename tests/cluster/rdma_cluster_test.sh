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

. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
vm_test_init rdma_cluster_test rdma-cluster
vms=3
parse_options "$@"
need_qemu
need_vm_network
need_rxe_provider
need_binary "$bin" nrx
[[ "$vms" =~ ^[0-9]+$ && "$vms" -ge 3 ]] || die "--vms must be a number >= 3 (one is killed)"

cluster_down_on_exit
rm -rf "$dir"
start=$SECONDS
cluster_sh up --nodes "$vms" --log rdma --image "$image" --timeout 240 ||
  die "nrx cluster up --log rdma failed (logs in $dir)"
up_s=$((SECONDS - start))
for ((i = 0; i < vms; i++)); do
  grep -aq 'node: vm .* RDMA rxe0 ' "$dir/vms/vm$i.console" || die "vm$i did not bring up rxe0 (see $dir/vms/vm$i.console)"
done
kv_start=$SECONDS
run="$("$bin" cluster run kv --dir "$dir" --seconds 3 --timeout 300)" || die "nrx cluster run kv failed: $run"
kv_s=$((SECONDS - kv_start))
printf '%s\n' "$run"
check_kv_run "$run" "$vms"
for ((i = 0; i < vms; i++)); do
  grep -aq 'RDMA logs on rxe0' "$dir/vms/vm$i.console" || die "vm$i did not run the kernel on RDMA logs"
done

# Kill machine 1 mid-run (machine 0 sequences the RDMA logs: its loss is not survived).
kill_node1_mid_run "$vms"
[[ $(grep -alE "machine 1 fenced by the controller; its RDMA links cut\s*$" "$dir"/vms/vm*.console | wc -l) -eq $((vms - 1)) ]] ||
  die "not every survivor fenced machine 1 on its RDMA logs"
kill_s=$((SECONDS - killed))
note "fenced and finished ${kill_s} s after the kill"

cluster_down
say "passed in $((SECONDS - start)) s (up ${up_s} s, kv run ${kv_s} s, kill to finish ${kill_s} s)"
