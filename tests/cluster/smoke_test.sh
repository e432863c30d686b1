#!/usr/bin/env bash
# Cluster smoke test: two QEMU VMs share an ivshmem region through `deploy/vm.sh run`; VM 0 writes
# a magic string, VM 1 polls until it reads it, both run `nrx --help` (guest script:
# ivshmem_smoke.sh). Checks every VM's NRX-EXIT code and console. Exit 77 (ctest SKIP_RETURN_CODE)
# where qemu-system-x86_64 is not installed.
#
#   tests/cluster/smoke_test.sh [--bin PATH] [--dir DIR] [--image DIR]
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
bin="$root/build/bin/nrx"
dir="$root/build/cluster/smoke"
image="$root/build/guest"

die() { printf 'smoke_test: %s\n' "$*" >&2; exit 1; }
while (($#)); do
  case "$1" in
    --bin) bin="${2:?--bin needs a path}"; shift ;;
    --dir) dir="${2:?--dir needs a directory}"; shift ;;
    --image) image="${2:?--image needs a directory}"; shift ;;
    -h|--help) sed -n '2,8p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown option '$1' (see --help)" ;;
  esac
  shift
done

if ! command -v qemu-system-x86_64 >/dev/null; then
  echo "SKIP: qemu-system-x86_64 is not installed (apt-get install qemu-system-x86)"
  exit 77
fi
[[ -x "$bin" ]] || die "no nrx binary at $bin (build it first: ./nrx build)"

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
if pgrep -f "file:$dir/vm[0-9]*.console" >/dev/null; then die "QEMU processes of $dir still run after down"; fi
echo "smoke_test: passed in $((SECONDS - start)) s: vm1 read vm0's '$magic' through ivshmem"
