# Guest script of the cluster kernel test: every VM of `deploy/vm.sh` runs one nrx kernel on the
# ivshmem BAR they share. VM 0 formats the region (`nrx boot --log shm --region BAR`), the others
# join it (`nrx node --attach BAR`); each runs the demo and prints its JSON summary on one console
# line prefixed "NRX-JSON ". The host compares the digests across the VMs.
set -u
bar=$(nrx_ivshmem_bar)
echo "kernel: vm $NRX_VM_INDEX of $NRX_VMS on $bar"
common="--machines $NRX_VMS --nodes 1 --cores-per-node 1 --memory 64 --duration ${NRX_DURATION:-1.5} --json"
if [ "$NRX_VM_INDEX" = 0 ]; then
  # shellcheck disable=SC2086  # $common is a list of options
  nrx boot --log shm --region "$bar" $common >/tmp/summary.json 2>/tmp/progress.txt
else
  # shellcheck disable=SC2086
  nrx node --attach "$bar" --machine "$NRX_VM_INDEX" $common >/tmp/summary.json 2>/tmp/progress.txt
fi
rc=$?
cat /tmp/progress.txt
echo "NRX-JSON $(tr -d '\n' </tmp/summary.json)"
exit $rc
