# Guest script of the CXL smoke test: runs in every VM of `deploy/vm.sh --shm cxl` (busybox sh,
# started by the guest's /init with NRX_VM_INDEX, NRX_VMS and NRX_SMOKE_MAGIC in its environment).
#   - every VM runs `nrx --help` and `nrx_cxl_dax`: the CXL type-3 device becomes /dev/dax0.0;
#   - VM 0 writes the magic string at offset 0 of the dax data, 8 bytes at a time (busybox devmem
#     at `nrx_cxl_dax --phys`, little-endian words, NUL-padded), the other VMs poll until they read
#     the same words back (deadline 90 s).
# Exit 0 on success; the host checks every VM's NRX-EXIT code and the shm file at the data offset.
set -eu
magic="${NRX_SMOKE_MAGIC:-NRX-CXL-SMOKE}"

if ! nrx --help >/tmp/nrx-help.txt 2>&1; then
  echo "cxl-smoke: nrx --help failed:"; cat /tmp/nrx-help.txt; exit 1
fi
echo "cxl-smoke: nrx --help: $(head -n 1 /tmp/nrx-help.txt)"

t0=$(cut -d' ' -f1 /proc/uptime)
dax=$(nrx_cxl_dax)
phys=$(nrx_cxl_dax --phys)
echo "cxl-smoke: vm $NRX_VM_INDEX of $NRX_VMS, $dax ($(cat /sys/bus/dax/devices/dax0.0/size) bytes) at $phys, set up in ${t0}s -> $(cut -d' ' -f1 /proc/uptime)s"
[ "$(nrx_cxl_dax)" = "$dax" ] || { echo "cxl-smoke: nrx_cxl_dax is not idempotent"; exit 1; }

# The magic as 64-bit little-endian words (hex), NUL-padded to a multiple of 8 bytes.
# shellcheck disable=SC2046  # one positional parameter per byte
set -- $(printf %s "$magic" | od -An -v -tu1)
words=""
while [ $# -gt 0 ]; do
  b0=${1:-0} b1=${2:-0} b2=${3:-0} b3=${4:-0} b4=${5:-0} b5=${6:-0} b6=${7:-0} b7=${8:-0}
  words="${words:+$words }$(printf '0x%02x%02x%02x%02x%02x%02x%02x%02x' "$b7" "$b6" "$b5" "$b4" "$b3" "$b2" "$b1" "$b0")"
  if [ $# -ge 8 ]; then shift 8; else shift $#; fi
done

# Read the words back from the dax data and decode them (stops at the first NUL).
read_magic() {
  addr=$phys; out=""
  for w in $words; do
    v=$(($(devmem "$addr" 64)))
    k=0
    while [ "$k" -lt 8 ]; do
      b=$(((v >> (8 * k)) & 255))
      [ "$b" -eq 0 ] && { printf %s "$out"; return 0; }
      # shellcheck disable=SC2059  # the format is the byte's octal escape
      out="$out$(printf "\\$(printf %03o "$b")")"
      k=$((k + 1))
    done
    addr=$((addr + 8))
  done
  printf %s "$out"
}

if [ "$NRX_VM_INDEX" = 0 ]; then
  addr=$phys
  for w in $words; do devmem "$addr" 64 "$w"; addr=$((addr + 8)); done
  got=$(read_magic)
  [ "$got" = "$magic" ] || { echo "cxl-smoke: wrote '$magic', read back '$got'"; exit 1; }
  echo "cxl-smoke: wrote $magic ($words) at $phys"
else
  polls=0
  while [ "$(read_magic)" != "$magic" ]; do
    polls=$((polls + 1))
    [ "$polls" -lt 900 ] || { echo "cxl-smoke: no magic after $polls polls (last read '$(read_magic)')"; exit 1; }
    sleep 0.1
  done
  echo "cxl-smoke: read $magic after $polls polls"
fi
