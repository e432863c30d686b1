#!/usr/bin/env bash
# Real verbs between VMs over soft-RoCE: two QEMU VMs on the private network of `deploy/vm.sh run
# --net private` (--shm none); each runs nrx_rxe (rdma_rxe on eth0: device rxe0, PORT_ACTIVE, a
# RoCE v2 GID), `ibv_devinfo -d rxe0 -v` and `nrx rdma probe` (transport/verbs); then VM 1 runs
# `nrx rdma ping` against VM 0: an RC queue pair on VM 0's registered memory, FETCH_AND_ADDs whose
# every returned value is checked, a COMPARE_AND_SWAP, a WRITE read back by READs, and VM 0's
# counter compared at the end; `nrx rdma logbench` between them (one RDMA log, logs/rdma, both
# appending: equal digests, entries/s and append latency beside a shm log and a local ring, and
# the append path's cost, checked: one FETCH_AND_ADD and one WRITE per other mirror) (guest
# script: rxe.sh). Checks both consoles for the markers,
# PORT_ACTIVE, the ping's OK and NRX-EXIT 0; prints the round trips (TCG: the emulation's) and the
# elapsed time. Exit 77 (ctest SKIP_RETURN_CODE) where
# qemu-system-x86_64, root, iproute2 (ip, rdma), /dev/net/tun or the host's ibverbs (ibv_devinfo,
# the rxe provider) are missing.
#
# Then VM 0 runs rdma_log_test: the log conformance suite over the RDMA log backend (logs/rdma) on
# rxe0, every reservation and payload release a real RDMA atomic (loopback queue pair); and
# verbs_mirror_test: transport/verbs' Mirror (two machines' copies in one process, pushed by RDMA
# WRITEs through rxe0) and the CNR scan order's bakery on it (none of its tests may skip).
#
#   tests/cluster/rxe_test.sh [--bin PATH] [--log-test PATH] [--mirror-test PATH] [--dir DIR] [--image DIR]
set -euo pipefail

. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
vm_test_init rxe_test rxe
log_test=""
mirror_test=""
script_option() {
  case "$1" in
    --log-test) log_test="${2:?--log-test needs a path}" ;;
    --mirror-test) mirror_test="${2:?--mirror-test needs a path}" ;;
    *) return 1 ;;
  esac
}
parse_options "$@"
vms=2

need_qemu
need_vm_network
need_rxe_provider
need_binary "$bin" nrx
[[ -n "$log_test" ]] || log_test="$(dirname "$bin")/rdma_log_test"
need_binary "$log_test" rdma_log_test
[[ -n "$mirror_test" ]] || mirror_test="$(dirname "$bin")/verbs_mirror_test"
need_binary "$mirror_test" verbs_mirror_test
dir="$(realpath -m "$dir")"
vm=("$root/deploy/vm.sh")

start=$SECONDS
# `run` stops the VMs itself (failure, Ctrl-C, TERM); down again on the way out in case this script
# was stopped while run was still starting them (down finds nothing left to do otherwise).
cleanup() {
  local rc=$?
  trap - EXIT
  "${vm[@]}" down --dir "$dir" >/dev/null 2>&1 || true
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

rc=0
"${vm[@]}" run --vms "$vms" --net private --shm none --dir "$dir" --image "$image" --bin "$bin" --bin "$log_test" --bin "$mirror_test" \
  --script "$here/rxe.sh" --boot-timeout 120 --timeout 300 || rc=$?
((rc == 0)) || die "deploy/vm.sh run failed with exit $rc (consoles in $dir)"

for ((i = 0; i < vms; i++)); do
  console="$dir/vm$i.console"
  [[ -f "$console" ]] || die "no console file $console"
  grep -aq "rxe-test: devinfo: .*state:[[:space:]]*PORT_ACTIVE" "$console" || die "vm$i: no PORT_ACTIVE on $console"
  grep -aqE "^RXE-OK vm=$i gid_index=[0-9]+" "$console" || die "vm$i: no 'RXE-OK vm=$i' marker on $console"
  grep -aq 'NRX-EXIT 0' "$console" || die "vm$i: no 'NRX-EXIT 0' on $console"
done
grep -aq '^nrx rdma ping: OK' "$dir/vm1.console" || die "vm1: nrx rdma ping did not finish OK (see $dir/vm1.console)"
grep -aq '^nrx rdma ping: served; counter ' "$dir/vm0.console" || die "vm0: nrx rdma ping --listen did not serve"
grep -aq '^RDMA-LOG-TEST-OK' "$dir/vm0.console" || die "vm0: rdma_log_test failed (see $dir/vm0.console)"
grep -aq '^VERBS-MIRROR-TEST-OK' "$dir/vm0.console" || die "vm0: verbs_mirror_test failed (see $dir/vm0.console)"
grep -aE '^mirror( bakery| order)?: ' "$dir/vm0.console" | tr -d '\r' || true
for ((i = 0; i < 2; i++)); do
  grep -aq '^nrx rdma logbench: OK' "$dir/vm$i.console" || die "vm$i: nrx rdma logbench failed (see $dir/vm$i.console)"
  grep -a '^nrx rdma logbench: ' "$dir/vm$i.console" | tr -d '\r'
  # The append path's cost: one FETCH_AND_ADD and one posted WRITE per other mirror (a batch whose
  # slots wrap around the ring takes two), no READ, one round trip (a rare room check aside).
  grep -aEq '^nrx rdma logbench: append path, per append .*: 1\.00 FETCH_AND_ADD, 1\.0[0-3] WRITEs posted, 0\.0[0-3] READs, 1\.0[0-5] round trips' \
    "$dir/vm$i.console" || die "vm$i: an append cost more than one FETCH_AND_ADD and one WRITE per mirror"
done
grep -aE '^\[  PASSED  \]|^\[==========\] .* ran' "$dir/vm0.console" | tr -d '\r' || true
for ((i = 0; i < vms; i++)); do
  grep -a "^rxe-test: vm $i of" "$dir/vm$i.console" | tr -d '\r' || true
  grep -a "^nrx rdma ping: " "$dir/vm$i.console" | tr -d '\r' || true
  grep -aE "^RXE-OK vm=$i " "$dir/vm$i.console" | tr -d '\r'
done
check_qemu_gone "$dir" run
say "passed in $((SECONDS - start)) s: $vms VMs brought up rxe0 on eth0 and ran RC verbs on each other's memory"
