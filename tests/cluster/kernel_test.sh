#!/usr/bin/env bash
# Cluster kernel test: N QEMU VMs (default 2) share one ivshmem region through `deploy/vm.sh run`;
# VM 0 boots the nrx kernel on it with --log shm, the others join with `nrx node --attach` (guest
# script: kernel_ivshmem.sh). Each VM runs the demo with writes to the shared process table and
# NR-FS; the test checks every VM's exit code and that every replica on every VM ends with the
# same process-table and NR-FS digests. Exit 77 (ctest SKIP_RETURN_CODE) where
# qemu-system-x86_64 is not installed.
#
#   tests/cluster/kernel_test.sh [--vms N] [--bin PATH] [--dir DIR] [--image DIR]
set -euo pipefail

. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
vm_test_init kernel_test kernel
vms=2
parse_options "$@"
[[ "$vms" =~ ^[0-9]+$ && "$vms" -ge 2 ]] || die "--vms must be a number >= 2"

need_qemu
need_binary "$bin" nrx

start=$SECONDS
# The kernel's logs need about 280 MiB of the region (4 NR-FS logs with their payload arenas).
"$root/deploy/vm.sh" run --vms "$vms" --dir "$dir" --image "$image" --bin "$bin" --shm-mb 512 \
  --script "$here/kernel_ivshmem.sh" --boot-timeout 180 --timeout 300 ||
  die "deploy/vm.sh run failed (consoles in $dir)"

# "subsystems":{"proc":{...,"digests":["a","a"],...},"fs":{...}} -> the digests of one subsystem.
digests() {  # console, subsystem
  grep -a '^NRX-JSON ' "$1" | grep -ao "\"$2\":{[^}]*}" | head -n 1 | grep -o '"digests":\[[^]]*\]' |
    grep -o '"[0-9a-f]\{16\}"' | tr -d '"' | sort -u
}
for sub in proc fs; do
  all=""
  for ((i = 0; i < vms; i++)); do
    console="$dir/vm$i.console"
    grep -aq '^NRX-JSON {' "$console" || die "vm$i printed no summary (console: $console)"
    grep -aq '"ok":true' "$console" || die "vm$i's kernel reported a failed check (console: $console)"
    d=$(digests "$console" "$sub")
    [[ -n "$d" ]] || die "vm$i: no $sub digests in its summary"
    [[ $(wc -l <<<"$d") -eq 1 ]] || die "vm$i: its own $sub replicas disagree: $d"
    all+="$d"$'\n'
  done
  distinct=$(sort -u <<<"${all%$'\n'}" | wc -l)
  [[ "$distinct" -eq 1 ]] || die "the VMs' $sub digests differ: $(tr '\n' ' ' <<<"$all")"
  say "$sub digest $(head -n 1 <<<"$all") on all $vms VMs"
done
say "passed in $((SECONDS - start)) s: $vms VMs agree on the shared process table and NR-FS"
