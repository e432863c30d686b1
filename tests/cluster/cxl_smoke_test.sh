#!/usr/bin/env bash
# CXL smoke test: two QEMU VMs share one memory file as a CXL type-3 device (`deploy/vm.sh up
# --shm cxl --net none`); each makes it /dev/dax0.0 (nrx_cxl_dax), VM 0 writes a magic string into
# the dax data through busybox devmem, 8 bytes at a time, VM 1 polls until it reads the same (guest
# script: cxl_smoke.sh). Then the host finds the magic in the shm file at SHM_DATA_OFFSET (2 MiB:
# the devdax info block and alignment come first) before `down` removes the file and the VMs' LSA
# files. Exit 77 (ctest SKIP_RETURN_CODE) where qemu-system-x86_64 or ndctl is not installed.
#
#   tests/cluster/cxl_smoke_test.sh [--bin PATH] [--dir DIR] [--image DIR]
set -euo pipefail

. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
vm_test_init cxl_smoke_test cxl
parse_options "$@"

need_qemu
need_cxl_tools
need_binary "$bin" nrx

vm=("$root/deploy/vm.sh")
magic="NRX-CXL-SMOKE-$$-$RANDOM"
start=$SECONDS
# up stops the VMs itself when it fails; from then on, down runs whatever happens (it removes the
# shm file and the LSA files).
"${vm[@]}" up --vms 2 --shm cxl --net none --dir "$dir" --image "$image" --bin "$bin" \
  --script "$here/cxl_smoke.sh" --env "NRX_SMOKE_MAGIC=$magic" --boot-timeout 120 \
  || die "deploy/vm.sh up --shm cxl failed (consoles in $dir)"
trap '"${vm[@]}" down --dir "$dir" || true' EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

rc=0
"${vm[@]}" wait --dir "$dir" --timeout 180 || rc=$?
# The VMs have powered off; the shm file stays until down.
shm_path="$(sed -n 's/^SHM_PATH=//p' "$dir/cluster.env")"
offset="$(sed -n 's/^SHM_DATA_OFFSET=//p' "$dir/cluster.env")"
[[ -f "$shm_path" ]] || die "no shm file '$shm_path' (SHM_PATH in $dir/cluster.env)"
[[ "$offset" == 2097152 ]] || die "SHM_DATA_OFFSET is '$offset', not 2097152 (2 MiB)"
for i in 0 1; do [[ -f "$dir/vm$i.lsa" ]] || die "no label-storage file $dir/vm$i.lsa"; done
host_read="$(dd if="$shm_path" bs=1 skip="$offset" count=${#magic} status=none)"
"${vm[@]}" down --dir "$dir"
trap - EXIT INT TERM
((rc == 0)) || die "deploy/vm.sh wait failed (consoles in $dir)"

for i in 0 1; do
  console="$dir/vm$i.console"
  grep -aq 'cxl-smoke: nrx --help: usage: nrx' "$console" || die "vm$i: no 'nrx --help' output on $console"
  grep -aq 'cxl-smoke: vm .* /dev/dax0.0' "$console" || die "vm$i: nrx_cxl_dax gave no /dev/dax0.0 on $console"
  grep -aq 'NRX-EXIT 0' "$console" || die "vm$i: no 'NRX-EXIT 0' on $console"
done
grep -aq "cxl-smoke: wrote $magic" "$dir/vm0.console" || die "vm0 did not write the magic string"
grep -aq "cxl-smoke: read $magic" "$dir/vm1.console" || die "vm1 did not read the magic string"
[[ "$host_read" == "$magic" ]] || die "the host file has '$host_read' at offset $offset, not '$magic'"
[[ ! -e "$shm_path" ]] || die "down left the shm file $shm_path"
for i in 0 1; do [[ ! -e "$dir/vm$i.lsa" ]] || die "down left the label-storage file $dir/vm$i.lsa"; done
check_qemu_gone "$dir" down
say "passed in $((SECONDS - start)) s: vm1 read vm0's '$magic' through CXL (/dev/dax0.0), the host at offset $offset of $shm_path"
