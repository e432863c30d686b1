# Guest script of the cluster smoke test: runs in every VM of `deploy/vm.sh` (busybox sh, started
# by the guest's /init with NRX_VM_INDEX, NRX_VMS and NRX_SMOKE_MAGIC in its environment).
#   - every VM runs `nrx --help`: the binary and its shared libraries work in the guest;
#   - VM 0 writes the magic string at offset 0 of the ivshmem BAR (through /dev/mem: the sysfs
#     resource2 file only supports mmap), the other VMs poll until they read it back.
# Exit 0 on success; the host checks every VM's NRX-EXIT code and the shm file's first bytes.
set -eu
magic="${NRX_SMOKE_MAGIC:-NRX-SMOKE}"

if ! nrx --help >/tmp/nrx-help.txt 2>&1; then
  echo "smoke: nrx --help failed:"; cat /tmp/nrx-help.txt; exit 1
fi
echo "smoke: nrx --help: $(head -n 1 /tmp/nrx-help.txt)"

bar=$(nrx_ivshmem_bar)
echo "smoke: vm $NRX_VM_INDEX of $NRX_VMS, shared memory $bar at $(nrx_ivshmem_bar --phys)"
if [ "$NRX_VM_INDEX" = 0 ]; then
  nrx_ivshmem_poke 0 "$magic"
  got=$(nrx_ivshmem_peek 0 ${#magic})
  [ "$got" = "$magic" ] || { echo "smoke: wrote '$magic', read back '$got'"; exit 1; }
  echo "smoke: wrote $magic"
else
  polls=0
  while [ "$(nrx_ivshmem_peek 0 ${#magic})" != "$magic" ]; do
    polls=$((polls + 1))
    [ "$polls" -lt 1200 ] || { echo "smoke: no magic after $polls polls"; exit 1; }
    sleep 0.1
  done
  echo "smoke: read $magic after $polls polls"
fi
