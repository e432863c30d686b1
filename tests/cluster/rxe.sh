# Guest script of the soft-RoCE smoke test: runs in every VM of `deploy/vm.sh --net private`
# (busybox sh, started by the guest's /init with NRX_VM_INDEX, NRX_VMS and NRX_IP in its
# environment, eth0 already configured).
#   - nrx_rxe: rdma_rxe ib_uverbs rdma_ucm, `rdma link add rxe0 type rxe netdev eth0`, PORT_ACTIVE
#     and the RoCE v2 GID index (printed as one summary line);
#   - nrx_rxe again (idempotent: same GID index, no second device);
#   - `ibv_devinfo -d rxe0 -v` (libibverbs with the rxe provider), printed with a prefix; the GID
#     index of nrx_rxe must be listed there as RoCE v2;
#   - `nrx rdma probe` (transport/verbs picks the same device and a RoCE v2 GID);
#   - `nrx rdma ping`: VM 0 listens, VM 1 connects (real RC verbs on VM 0's registered memory:
#     FETCH_AND_ADDs each checked, COMPARE_AND_SWAP, WRITE read back by READs); other VMs idle;
#   - `nrx rdma logbench`: VM 0 and VM 1 share one RDMA log (logs/rdma), both append and apply,
#     and their digests must be equal;
#   - VM 0: rdma_log_test, the log conformance suite over logs/rdma;
#   - VM 0: verbs_mirror_test, transport/verbs' Mirror and the CNR bakery on it (no test may skip:
#     a skip means it found no RDMA device);
#   - the marker `RXE-OK vm=I gid_index=N`.
# Exit 0 on success; the host checks the markers, PORT_ACTIVE and every VM's NRX-EXIT code.
set -eu
fail() { echo "rxe-test: FAIL: $*"; exit 1; }
t0=$(cut -d' ' -f1 /proc/uptime)
summary=$(nrx_rxe) || fail "nrx_rxe failed (its messages are above)"
t1=$(cut -d' ' -f1 /proc/uptime)
echo "rxe-test: vm $NRX_VM_INDEX of $NRX_VMS ($NRX_IP): $summary (nrx_rxe ${t0}s -> ${t1}s)"
gid_index=$(nrx_rxe --gid-index) || fail "nrx_rxe --gid-index failed"
case "$summary" in *" gid_index=$gid_index "*) ;; *) fail "nrx_rxe --gid-index gave $gid_index, the summary says: $summary" ;; esac
set -- /sys/class/infiniband/*
[ $# = 1 ] || fail "not exactly one RDMA device: $*"

ibv_devinfo -d rxe0 -v >/tmp/devinfo.txt 2>&1 || { cat /tmp/devinfo.txt; fail "ibv_devinfo -d rxe0 -v failed"; }
sed 's/^/rxe-test: devinfo: /' /tmp/devinfo.txt
grep -q 'state:[[:space:]]*PORT_ACTIVE' /tmp/devinfo.txt || fail "ibv_devinfo shows no PORT_ACTIVE port"
grep -q 'transport:[[:space:]]*InfiniBand' /tmp/devinfo.txt || fail "ibv_devinfo shows no InfiniBand transport"
# rdma-core prints the GID table as `GID[  N]:  ADDRESS, RoCE v2`.
grep -Eq "GID\[ *$gid_index\]:.*RoCE v2" /tmp/devinfo.txt || fail "ibv_devinfo does not list GID $gid_index as RoCE v2"
nrx rdma probe || fail "nrx rdma probe failed"
set -- $NRX_PEERS
case "$NRX_VM_INDEX" in
  0) nrx rdma ping --listen 7800 --count "${RXE_COUNT:-100}" --timeout 120 || fail "nrx rdma ping --listen failed" ;;
  1) nrx rdma ping --connect "$1:7800" --count "${RXE_COUNT:-100}" --timeout 120 || fail "nrx rdma ping --connect failed" ;;
esac
# The RDMA log across the two machines: both append and apply, digests compared.
case "$NRX_VM_INDEX" in
  0) nrx rdma logbench --listen 7801 --seconds "${RXE_SECONDS:-2}" || fail "nrx rdma logbench --listen failed" ;;
  1) nrx rdma logbench --connect "$1:7801" --seconds "${RXE_SECONDS:-2}" || fail "nrx rdma logbench --connect failed" ;;
esac
if [ "$NRX_VM_INDEX" = 0 ]; then
  # The RDMA log backend under the conformance suite, on rxe0 (loopback queue pairs).
  rdma_log_test --gtest_brief=1 --gtest_color=no || fail "rdma_log_test failed"
  echo "RDMA-LOG-TEST-OK"
  # Mirror and the bakery over it: its output goes to the console; a skipped test is a failure.
  rc=0
  verbs_mirror_test --gtest_color=no >/tmp/mirror.txt 2>&1 || rc=$?
  cat /tmp/mirror.txt
  [ "$rc" = 0 ] || fail "verbs_mirror_test failed (exit $rc)"
  ! grep -q '^\[  SKIPPED \]' /tmp/mirror.txt || fail "verbs_mirror_test skipped tests (no RDMA device?)"
  echo "VERBS-MIRROR-TEST-OK"
fi
echo "RXE-OK vm=$NRX_VM_INDEX gid_index=$gid_index"
