#!/usr/bin/env bash
# Cluster smoke test: two QEMU VMs share an ivshmem region through `deploy/vm.sh run`; VM 0 writes
# a magic string, VM 1 polls until it reads it, both run `nrx --help` (guest script:
# ivshmem_smoke.sh). Checks every VM's NRX-EXIT code and console. Exit 77 (ctest SKIP_RETURN_CODE)
# where qemu-system-x86_64 is not installed.
#
#   tests/cluster/smoke_test.sh [--bin PATH] [--dir DIR] [--image DIR]
set -euo pipefail

. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
vm_test_init smoke_test smoke
parse_options "$@"

need_qemu
need_binary "$bin" nrx

magic="NRX-SMOKE-$$-$RANDOM"
start=$SECONDS
# run = up + wait + down; it stops the VMs itself on failure, timeout, Ctrl-C and TERM.
"$root/deploy/vm.sh" run --vms 2 --dir "$dir" --image "$image" --bin "$bin" \
  --script "$here/ivshmem_smoke.sh" --env "NRX_SMOKE_MAGIC=$magic" \
  --boot-timeout 120 --timeout 180 || die "deploy/vm.sh run failed (consoles in $dir)"

for i in 0 1; do
  console="$dir/vm$i.console"
  grep -aq 'smoke: nrx --help: usage: nrx' "$console" || die "vm$i: no 'nrx --help' output on $console"
  grep -aq 'NRX-EXIT 0' "$console" || die "vm$i: no 'NRX-EXIT 0' on $console"
done
grep -aq "smoke: wrote $magic" "$dir/vm0.console" || die "vm0 did not write the magic string"
grep -aq "smoke: read $magic" "$dir/vm1.console" || die "vm1 did not read the magic string"
check_qemu_gone "$dir" down
say "passed in $((SECONDS - start)) s: vm1 read vm0's '$magic' through ivshmem"
