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

. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
vm_test_init cxl_cluster_test cxl-cluster
parse_options "$@"
need_qemu
need_cxl_tools
need_vm_network
need_binary "$bin" nrx

cluster_down_on_exit
rm -rf "$dir"
start=$SECONDS
cluster_sh up --nodes 2 --shm cxl --image "$image" --timeout 240 || die "nrx cluster up --shm cxl failed (logs in $dir)"
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
check_kv_run "$run" 2
shm_path="$(sed -n 's/^SHM_PATH=//p' "$dir/vms/cluster.env")"
cluster_down
[[ -z "$shm_path" || ! -e "$shm_path" ]] || die "the shared memory file is still there"
say "passed in $((SECONDS - start)) s (up ${up_s} s, kv run ${kv_s} s)"
