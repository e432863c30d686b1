#!/usr/bin/env bash
# The cluster over emulated CXL: `nrx cluster up --shm cxl --nodes 2` (a CXL type-3 device per VM on
# one shared host file, /dev/dax0.0 in each guest, the machines join with --coherence noncoherent),
# then `nrx cluster run logbench`: both machines append to one shared log in its noncoherent mode
# (a sequencer on machine 0, no cross-VM read-modify-write) and must apply the same log (equal
# digests); the shm/ring ratio is printed. Then `nrx cluster run kv`: the kernel on the CXL memory
# (its process table and NR-FS logs noncoherent, sequenced by machine 0; NR-FS's scans ordered by
# the bakery), writes from both VMs, every replica with the same digests. `nrx cluster down`
# leaves nothing behind. Exit 77 (skipped)
# where QEMU, the cxl/ndctl tools or the VM network are missing.
#
#   tests/cluster/cxl_cluster_test.sh [--bin PATH] [--dir DIR] [--image DIR]
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
bin="$root/build/bin/nrx"
dir="$root/build/cluster/cxl-cluster"
image="$root/build/guest"

die() { printf 'cxl_cluster_test: FAILED: %s\n' "$*" >&2; exit 1; }
while (($#)); do
  case "$1" in
    --bin) bin="${2:?--bin needs a path}"; shift ;;
    --dir) dir="${2:?--dir needs a directory}"; shift ;;
    --image) image="${2:?--image needs a directory}"; shift ;;
    -h|--help) sed -n '2,10p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown option '$1' (see --help)" ;;
  esac
  shift
done
if ! command -v qemu-system-x86_64 >/dev/null || ! command -v cxl >/dev/null || ! command -v ndctl >/dev/null; then
  echo "SKIP: needs qemu-system-x86_64 and the cxl/ndctl tools (apt-get install qemu-system-x86 ndctl)"
  exit 77
fi
if [[ $(id -u) -ne 0 || ! -c /dev/net/tun ]] || ! command -v ip >/dev/null; then
  echo "SKIP: the VM network needs root, ip (iproute2) and /dev/net/tun"
  exit 77
fi
[[ -x "$bin" ]] || die "no nrx binary at $bin (build it first: ./nrx build)"

cleanup() { NRX_BIN="$bin" "$root/deploy/cluster.sh" down --dir "$dir" --bin "$bin" >/dev/null 2>&1 || true; }
trap 'rc=$?; cleanup; exit $rc' EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
rm -rf "$dir"
start=$SECONDS
NRX_BIN="$bin" "$root/deploy/cluster.sh" up --nodes 2 --shm cxl --dir "$dir" --bin "$bin" --image "$image" \
  --timeout 240 || die "nrx cluster up --shm cxl failed (logs in $dir)"
up_s=$((SECONDS - start))
bench="$("$bin" cluster run logbench --dir "$dir" --seconds 2 --timeout 240)" || die "logbench failed: $bench"
printf '%s\n' "$bench"
[[ $(grep -cE '^[0-9]+ +[0-9]+ +nrx-vm[0-9]+ +ok ' <<<"$bench") -eq 2 ]] || die "not both machines reported ok"
grep -q 'has the same digests' <<<"$bench" || die "the machines applied different logs"
grep -q '^median shm/ring ratio [0-9.]* over 2 machines' <<<"$bench" || die "no ratio printed"
grep -aq 'logbench (noncoherent)' "$dir/vms/vm0.console" || die "the log did not run in its noncoherent mode"
kv_start=$SECONDS
run="$("$bin" cluster run kv --dir "$dir" --seconds 3 --timeout 300)" || die "nrx cluster run kv failed: $run"
kv_s=$((SECONDS - kv_start))
printf '%s\n' "$run"
[[ $(grep -cE '^[0-9]+ +[0-9]+ +nrx-vm[0-9]+ +ok ' <<<"$run") -eq 2 ]] || die "not both machines reported ok"
grep -q 'has the same digests' <<<"$run" || die "the digests differ"
for i in 0 1; do
  grep -Eq " nrx-vm$i +ok +[1-9][0-9]* " <<<"$run" || die "vm$i made no NR-FS calls"
done
shm_path="$(sed -n 's/^SHM_PATH=//p' "$dir/vms/cluster.env")"
NRX_BIN="$bin" "$root/deploy/cluster.sh" down --dir "$dir" --bin "$bin" || die "nrx cluster down failed"
trap - EXIT
[[ -z "$shm_path" || ! -e "$shm_path" ]] || die "the shared memory file is still there"
if pgrep -f "file:$dir/vms/vm[0-9]*.console" >/dev/null; then die "QEMU processes still run after down"; fi
echo "cxl_cluster_test: passed in $((SECONDS - start)) s (up ${up_s} s, kv run ${kv_s} s)"
