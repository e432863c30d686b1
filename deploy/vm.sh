#!/usr/bin/env bash
# deploy/vm.sh: a cluster of QEMU VMs that share one memory backend, for nrx's cross-machine tests.
#
# Each VM boots the image of deploy/image.sh (PVH vmlinux + initramfs, no disk), gets its script
# and its environment through fw_cfg (opt/nrx/script, opt/nrx/env: NRX_VM_INDEX, NRX_VMS, NRX_SHM,
# NRX_SHM_MB, NRX_NET, with --net private NRX_IP, NRX_HOST_IP, NRX_PEERS), runs the script, prints
# `NRX-EXIT <rc>` on its serial console and powers off. All VMs map the same host file as their
# shared memory: with --shm ivshmem, a /dev/shm file behind an ivshmem-plain PCI device (coherent,
# cross-VM atomics exact when -smp maxcpus >= 2, which this script always sets; see
# /work/shared/notes/qemu.md); with --shm cxl, the same kind of file as the memory of a CXL type-3
# (persistent-memory) device on each VM's CXL host bridge (loads and stores shared, cross-VM
# atomics NOT atomic; each VM gets its own fresh label-storage file). The run directory records
# what `down` needs (PIDs, the shm file, the LSA files, the network namespace), so `up`, `wait` and
# `down` can be separate commands.
#
# With --net private (the default) the VMs and the host also share a private network: a network
# namespace per run directory holds a bridge (10.77.0.1/24, the host's side) and one tap per VM;
# every QEMU runs inside that namespace with a virtio-net NIC on its tap, and the guest's /init
# gives eth0 the address NRX_IP (10.77.0.(10+I)). `vm.sh exec -- CMD` runs a host command inside
# the namespace (a server on 10.77.0.1, a client of the guests). `down` deletes the namespace.
#
# Usage example:
#   deploy/vm.sh run --script guest.sh              # 2 VMs: up, wait for NRX-EXIT, down
#   deploy/vm.sh up --vms 2 --script-for 0 writer.sh --script-for 1 reader.sh
#   deploy/vm.sh wait --timeout 60; deploy/vm.sh down
#   deploy/vm.sh exec -- ping -c 1 10.77.0.10        # the host reaches VM 0 (--net private)
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

say() { printf 'vm: %s\n' "$*" >&2; }
die() { printf 'vm: error: %s\n' "$*" >&2; exit 2; }
fail() { printf 'vm: %s\n' "$*" >&2; exit 1; }

usage() {
  cat <<'USAGE'
usage: deploy/vm.sh COMMAND [options]

Run N QEMU VMs (TCG unless real KVM is usable) that share one memory backend and a private network
with the host, each running a shell script inside the nrx guest image (deploy/image.sh). Progress
goes to stderr.

commands:
  up        build/refresh the image, create the shared memory, start the VMs; return once every
            console shows the guest's NRX-BOOTED line (the script is starting); on failure or
            timeout the VMs are stopped again
  wait      wait until every VM printed NRX-EXIT <rc> (or its QEMU died, or --timeout); print
            `vmI: exit RC` per VM on stdout; exit 0 only if every VM exited 0
  down      stop every QEMU by its recorded PID (TERM, then KILL after 5 s), remove the shm file,
            the CXL label-storage files, the network namespace and the run files; consoles and QEMU logs stay (--purge removes
            the directory)
  run       up + wait + down; cleans up on failure, Ctrl-C and TERM; exit status of wait
  status    print each VM's state (running / exit RC / dead), the shm file and the namespace
  exec [--dir DIR] -- CMD [ARGS...]
            run a host command inside the run's network namespace (--net private), e.g. a server
            listening on 10.77.0.1 or a client of the guests; exits with CMD's status, or 2 if the
            run has no namespace. `down` does not stop what exec started: stop it by its PID

options (up, run):
  --vms N             number of VMs (default 2)
  --script FILE       the script every VM runs (with sh, busybox userland)
  --script-for I FILE the script VM I runs (repeatable; overrides --script for that VM)
  --env KEY=VALUE     one more variable for every VM's script environment (repeatable)
  --shm KIND          shared memory between the VMs: ivshmem (default), cxl or none.
                      ivshmem: an ivshmem-plain PCI device on a /dev/shm file; coherent, cross-VM
                      atomics exact (65-85 ns per access under TCG).
                      cxl: the same kind of /dev/shm file as the memory of a CXL type-3 pmem device
                      (QEMU 7.2): every VM gets -machine q35,cxl=on, a pxb-cxl host bridge with
                      two root ports (the second stays empty: with one, reads return 0 and writes
                      vanish), the cxl-type3 device, its own fresh label-storage file (DIR/vmI.lsa,
                      1 MiB) and a 4 GiB fixed memory window (or --shm-mb, if larger); the kernel
                      command line gets iomem=relaxed nopat (for devmem on the dax range). In the
                      guest, nrx_cxl_dax (below) makes it /dev/dax0.0. Loads and stores are shared
                      VM<->VM<->host but cross-VM atomics are NOT atomic (QEMU emulates the window
                      as MMIO: a locked read-modify-write is atomic only inside one QEMU), about
                      350-775 ns per access; the dax data starts 2 MiB into the host file
                      (SHM_DATA_OFFSET in DIR/cluster.env), so it has --shm-mb - 2 MiB.
                      Needs ndctl on the host (the image's cxl and ndctl tools).
  --shm-mb MB         size of the shared memory in MiB (default 256): ivshmem a power of two (a
                      PCI BAR), cxl a multiple of 256 (the CXL decoder granularity)
  --net KIND          network: private (default) or none. private (needs root, iproute2 and
                      /dev/net/tun): a network namespace nrx-<8 hex of a hash of DIR> (NETNS in
                      DIR/cluster.env) with lo, a bridge br0 at 10.77.0.1/24 (the host's side) and
                      a tap tapI per VM; every QEMU runs in it with a virtio-net NIC on tapI (MAC
                      52:54:00:77:00:XX, XX = 10+I in hex), at most 245 VMs; a stale namespace of
                      that name (left by a crashed run) is deleted first. none: no NIC, no namespace
  --mem MB            guest RAM in MiB (default 512)
  --smp N             vCPUs per VM (default 1; maxcpus is always >= 2, see the notes)
  --accel A           auto (default: KVM only if /proc/cpuinfo has vmx/svm and kvm_pvm is not
                      loaded), tcg or kvm
  --image DIR         guest image directory (default build/guest)
  --bin PATH          binary for the guest's /usr/bin, passed to image.sh (repeatable; default
                      build/bin/nrx)
  --no-image-build    use the image in --image as it is (do not call image.sh)
  --append ARGS       extra kernel command-line arguments (--shm cxl adds iomem=relaxed nopat)
  --qemu-arg ARG      one more QEMU argument for every VM (repeatable)
  --boot-timeout S    seconds `up` waits for every guest to boot (default 120)
options (wait, run):
  --timeout S         seconds `wait` waits for every NRX-EXIT (default 600)
options (all):
  --dir DIR           run directory (default build/cluster/run): vmI.console (serial console),
                      vmI.qemu.log, vmI.pid, vmI.script, vmI.env, vmI.lsa (--shm cxl), cluster.env
                      (VMS, SHM, SHM_PATH, SHM_DATA_OFFSET, NET, NETNS, ...)
  --purge             (down, run) remove the run directory too, consoles included
  -h, --help          this text

In the guest (environment of the script): NRX_VM_INDEX (0..N-1), NRX_VMS, NRX_SHM, NRX_SHM_MB,
NRX_NET, plus --env variables. With --net private also NRX_IP (this VM: 10.77.0.(10+I), on eth0,
set up by /init before the script starts), NRX_HOST_IP (10.77.0.1: the host, reached through
`vm.sh exec`) and NRX_PEERS (every VM's address, space-separated, in index order, this one
included); the peers may still be booting when a script starts, so retry (busybox ping, nc).
With --shm ivshmem:
  BAR=$(nrx_ivshmem_bar)          # /sys/bus/pci/devices/BDF/resource2, enabled; mmap MAP_SHARED
  PHYS=$(nrx_ivshmem_bar --phys)  # its physical address: `devmem $PHYS 64 [VALUE]` (busybox)
  nrx_ivshmem_poke 0 hello; nrx_ivshmem_peek 0 5     # short strings through /dev/mem
(read()/write() on resource2 fail with EIO: the kernel only supports mmap on memory BARs.)
With --shm cxl:
  DAX=$(nrx_cxl_dax)              # /dev/dax0.0: mmap it MAP_SHARED (offset/length 4 KiB-aligned: -a 4096)
  PHYS=$(nrx_cxl_dax --phys)      # physical start of its data: `devmem $PHYS 64 [VALUE]`
(nrx_cxl_dax loads cxl_acpi cxl_pci cxl_mem cxl_pmem nd_pmem dax_pmem device_dax and runs, once,
`cxl create-region -m -d decoder0.0 -w 1 -t pmem mem0` and `ndctl create-namespace -r region0
-m devdax -M mem -a 4096 -f`; 0.7-1.6 s under TCG. Byte N of the dax device is byte
SHM_DATA_OFFSET + N = 2 MiB + N of the host file. No cross-VM atomics: single-writer slots.)
The host sees the same bytes in the shm file (its path is SHM_PATH in DIR/cluster.env).

exit status: 0 success, 1 a VM failed or timed out, 2 bad usage or set-up error.
USAGE
}

now() { echo "${EPOCHREALTIME/[.,]/}"; }         # microseconds
secs() { local us=$(($(now) - $1)); printf '%d.%01d s' $((us / 1000000)) $((us % 1000000 / 100000)); }

# ---------------------------------------------------------------------------------------------
# Options
cmd="${1:-}"
case "$cmd" in
  up|wait|down|run|status|exec) shift ;;
  -h|--help|help) usage; exit 0 ;;
  "") usage >&2; exit 2 ;;
  *) die "unknown command '$cmd' (up, wait, down, run, status, exec; see deploy/vm.sh --help)" ;;
esac

vms=2
script=""
declare -A script_for=()
envs=()
shm=ivshmem
shm_mb=256
net=private
mem_mb=512
smp=1
accel=auto
image="$root/build/guest"
bins=()
image_build=1
append=""
qemu_extra=()
boot_timeout=120
timeout=600
dir="$root/build/cluster/run"
purge=0
exec_cmd=()

is_uint() { [[ "$1" =~ ^[0-9]+$ ]]; }
need_uint() {  # option value minimum: dies unless value is an integer >= minimum
  if ! is_uint "$2" || (($2 < $3)); then die "$1: '$2' is not a whole number >= $3"; fi
}
while (($#)); do
  opt="$1"; val=""
  if [[ "$opt" == -- ]]; then
    [[ "$cmd" == exec ]] || die "'--' only goes with exec (see deploy/vm.sh --help)"
    shift; exec_cmd=("$@"); break
  fi
  case "$opt" in
    --*=*) val="${opt#*=}"; opt="${opt%%=*}"; set -- "$opt" "$val" "${@:2}" ;;
  esac
  case "$opt" in
    --vms|--script|--env|--shm|--shm-mb|--net|--mem|--smp|--accel|--image|--bin|--append|--qemu-arg|\
    --boot-timeout|--timeout|--dir)
      [[ $# -ge 2 ]] || die "$opt needs a value"; val="$2"; shift ;;
    --script-for)
      [[ $# -ge 3 ]] || die "--script-for needs an index and a file"
      is_uint "$2" || die "--script-for: '$2' is not a VM index"
      script_for[$2]="$3"; shift 3; continue ;;
  esac
  case "$opt" in
    --vms) need_uint "$opt" "$val" 1; vms="$val" ;;
    --script) script="$val" ;;
    --env) [[ "$val" =~ ^[A-Za-z_][A-Za-z0-9_]*= ]] || die "--env: '$val' is not KEY=VALUE"; envs+=("$val") ;;
    --shm) shm="$val" ;;
    --shm-mb) shm_mb="$val" ;;
    --net) net="$val" ;;
    --mem) need_uint "$opt" "$val" 128; mem_mb="$val" ;;
    --smp) need_uint "$opt" "$val" 1; smp="$val" ;;
    --accel) accel="$val" ;;
    --image) image="$val" ;;
    --bin) bins+=("$val") ;;
    --no-image-build) image_build=0 ;;
    --append) append="$val" ;;
    --qemu-arg) qemu_extra+=("$val") ;;
    --boot-timeout) need_uint "$opt" "$val" 1; boot_timeout="$val" ;;
    --timeout) need_uint "$opt" "$val" 1; timeout="$val" ;;
    --dir) dir="$val" ;;
    --purge) purge=1 ;;
    -h|--help) usage; exit 0 ;;
    *)
      if [[ "$cmd" == exec && "$opt" != -* ]]; then die "exec: put '--' before the command: deploy/vm.sh exec [--dir DIR] -- $opt ..."; fi
      die "unknown option '$opt' (see deploy/vm.sh --help)" ;;
  esac
  shift
done
dir="$(realpath -m "$dir")"
if [[ "$cmd" == up || "$cmd" == run ]]; then
  mkdir -p "$dir" 2>/dev/null || die "cannot create the run directory $dir"
fi

# ---------------------------------------------------------------------------------------------
# Shared-memory backends. Each kind has set-up (host side, once), QEMU arguments (per VM) and
# tear-down. ivshmem: one /dev/shm file behind an ivshmem-plain device. cxl: the same file as a CXL
# type-3 device's memory, plus a fresh label-storage (LSA) file per VM in the run directory (a
# reused one makes the guest's namespace creation fail with ENOSPC); the guest's nrx_cxl_dax does
# the cxl/ndctl steps. Measured set-up and limits: /work/shared/notes/qemu.md, "CXL type-3".
cxl_lsa_size=1M         # label storage per VM (namespace labels; QEMU's examples use 256M, 1M suffices)
cxl_data_offset=2097152 # the devdax data starts 2 MiB into the namespace = the host file (-M mem)
shm_validate() {
  case "$shm" in
    ivshmem)
      need_uint --shm-mb "$shm_mb" 1
      (((shm_mb & (shm_mb - 1)) == 0)) || die "--shm-mb: $shm_mb is not a power of two (a PCI BAR's size must be one)" ;;
    cxl)
      need_uint --shm-mb "$shm_mb" 256
      ((shm_mb % 256 == 0)) || die "--shm-mb: $shm_mb is not a multiple of 256 (the CXL HDM decoder granularity)"
      if ((image_build)) && ! { command -v cxl && command -v ndctl; } >/dev/null; then
        die "--shm cxl: the guest image needs the host's 'cxl' and 'ndctl' tools: apt-get install ndctl"
      fi ;;
    none) ;;
    *) die "--shm: unknown kind '$shm' (ivshmem, cxl or none)" ;;
  esac
}
shm_setup() {  # sets SHM_PATH, SHM_DATA_OFFSET; cxl: creates DIR/vmI.lsa
  SHM_PATH=""; SHM_DATA_OFFSET=""
  [[ "$shm" == ivshmem || "$shm" == cxl ]] || return 0
  local avail_mb i
  avail_mb=$(($(df -Pk /dev/shm | awk 'NR == 2 { print $4 }') / 1024))
  ((avail_mb > shm_mb)) || die "/dev/shm has $avail_mb MiB free, --shm-mb asks for $shm_mb"
  SHM_PATH="$(mktemp /dev/shm/nrx-cluster-XXXXXXXX)" || die "cannot create a file in /dev/shm"
  truncate -s "${shm_mb}M" "$SHM_PATH"
  echo "$SHM_PATH" >"$dir/shm.path"
  SHM_DATA_OFFSET=0
  if [[ "$shm" == cxl ]]; then
    SHM_DATA_OFFSET=$cxl_data_offset
    for ((i = 0; i < vms; i++)); do
      rm -f "$dir/vm$i.lsa"       # fresh: never a label area another boot already wrote
      truncate -s "$cxl_lsa_size" "$dir/vm$i.lsa" || die "cannot create the label-storage file $dir/vm$i.lsa"
    done
  fi
}
shm_qemu_args() {  # VM index -> appends to qemu_args
  case "$shm" in
    ivshmem)
      # shellcheck disable=SC2054  # the commas belong to QEMU's option syntax
      qemu_args+=(-object "memory-backend-file,id=nrxshm,share=on,mem-path=$SHM_PATH,size=${shm_mb}M"
                  -device ivshmem-plain,memdev=nrxshm) ;;
    cxl)
      # -machine q35,cxl=on comes from machine_args. The second root port stays empty on purpose
      # (QEMU 7.2 + Linux 6.1: with a single port reads return 0 and writes vanish).
      local fmw_mb=$((shm_mb > 4096 ? shm_mb : 4096))
      # shellcheck disable=SC2054  # the commas belong to QEMU's option syntax
      qemu_args+=(-object "memory-backend-file,id=cxl-mem0,share=on,mem-path=$SHM_PATH,size=${shm_mb}M"
                  -object "memory-backend-file,id=cxl-lsa0,share=on,mem-path=$dir/vm$1.lsa,size=$cxl_lsa_size"
                  -device pxb-cxl,bus_nr=12,bus=pcie.0,id=cxl.1
                  -device cxl-rp,port=0,bus=cxl.1,id=root_port13,chassis=0,slot=2
                  -device cxl-rp,port=1,bus=cxl.1,id=root_port14,chassis=0,slot=3
                  -device cxl-type3,bus=root_port13,memdev=cxl-mem0,lsa=cxl-lsa0,id=cxl-pmem0
                  -M "cxl-fmw.0.targets.0=cxl.1,cxl-fmw.0.size=${fmw_mb}M") ;;
  esac
}
shm_teardown() {
  local p=""
  [[ -f "$dir/shm.path" ]] && p="$(cat "$dir/shm.path")"
  # Only ever a file this script created.
  if [[ "$p" == /dev/shm/nrx-cluster-* && -f "$p" ]]; then rm -f "$p"; fi
  rm -f "$dir/shm.path" "$dir"/vm*.lsa     # the CXL label-storage files (--shm cxl)
}

# ---------------------------------------------------------------------------------------------
# Networks. private: a network namespace per run directory (its name derives from the directory,
# so `down` and a later `up` find it even when cluster.env is gone) with a bridge (the host's
# side, 10.77.0.1/24) and one tap per VM; each QEMU runs inside it (ip netns exec, which execs, so
# the recorded PID is QEMU's) with a virtio-net NIC on its tap. Deleting the namespace removes the
# bridge and the taps with it.
net_host_ip=10.77.0.1
net_ip() { echo "10.77.0.$((10 + $1))"; }       # VM index -> its address
net_name() { echo "nrx-$(printf '%s' "$dir" | sha256sum | cut -c1-8)"; }
net_exists() { command -v ip >/dev/null && ip netns list 2>/dev/null | awk '{ print $1 }' | grep -qxF "$1"; }
net_validate() {
  case "$net" in
    private)
      command -v ip >/dev/null || die "--net private needs 'ip' (apt-get install iproute2), or use --net none"
      ((EUID == 0)) || die "--net private needs root (network namespace, bridge, taps); use --net none"
      [[ -c /dev/net/tun ]] || die "--net private needs /dev/net/tun (modprobe tun), or use --net none"
      ((vms <= 245)) || die "--net private gives VM I the address 10.77.0.(10+I): at most 245 VMs" ;;
    none) ;;
    *) die "--net: unknown kind '$net' (private or none)" ;;
  esac
}
net_setup() {  # sets NETNS
  NETNS=""
  [[ "$net" == private ]] || return 0
  NETNS="$(net_name)"
  local i
  if net_exists "$NETNS"; then
    say "up: deleting the stale network namespace $NETNS (left by an earlier run in $dir)"
    ip netns del "$NETNS" || die "cannot delete the stale network namespace $NETNS"
  fi
  ip netns add "$NETNS" || die "cannot create the network namespace $NETNS (ip netns add)"
  {
    ip -n "$NETNS" link set lo up &&
    ip -n "$NETNS" link add br0 type bridge forward_delay 0 &&
    ip -n "$NETNS" addr add "$net_host_ip/24" dev br0 &&
    ip -n "$NETNS" link set br0 up
  } || die "cannot set up the bridge br0 ($net_host_ip/24) in the network namespace $NETNS"
  for ((i = 0; i < vms; i++)); do
    {
      ip -n "$NETNS" tuntap add "tap$i" mode tap &&
      ip -n "$NETNS" link set "tap$i" master br0 &&
      ip -n "$NETNS" link set "tap$i" up
    } || die "cannot add tap$i to br0 in the network namespace $NETNS"
  done
}
net_qemu_args() {  # VM index -> appends to qemu_args (the NIC; the namespace is the launcher's)
  [[ "$net" == private ]] || return 0
  # shellcheck disable=SC2054  # the commas belong to QEMU's option syntax
  qemu_args+=(-netdev "tap,id=n0,ifname=tap$1,script=no,downscript=no"
              -device "virtio-net-pci,bus=pcie.0,netdev=n0,mac=52:54:00:77:00:$(printf '%02x' $((10 + $1)))")
}
net_teardown() {  # deletes the run's namespace (recorded or derived from the directory); sets NET_REMOVED
  local ns
  NET_REMOVED=""
  for ns in ${NETNS:-} "$(net_name)"; do
    [[ "$ns" == nrx-* ]] || continue               # only ever a namespace this script names
    if net_exists "$ns"; then
      if ip netns del "$ns"; then NET_REMOVED="$ns"; else say "down: cannot delete the network namespace $ns"; fi
    fi
  done
}

# ---------------------------------------------------------------------------------------------
# Run-directory state
state_load() {  # sets VMS, SHM_PATH, NETNS from DIR/cluster.env
  [[ -f "$dir/cluster.env" ]] || return 1
  VMS="$(sed -n 's/^VMS=//p' "$dir/cluster.env")"
  SHM_PATH="$(sed -n 's/^SHM_PATH=//p' "$dir/cluster.env")"
  NETNS="$(sed -n 's/^NETNS=//p' "$dir/cluster.env")"
  is_uint "$VMS" || die "$dir/cluster.env is damaged (VMS='$VMS')"
}
# The PID of VM I's QEMU if it is still running (checked against its command line, so a recycled
# PID is never mistaken for it), else nothing.
vm_pid() {
  local pidf="$dir/vm$1.pid" pid
  [[ -f "$pidf" ]] || return 0
  pid="$(cat "$pidf")"
  is_uint "$pid" || return 0
  if [[ -r "/proc/$pid/cmdline" ]] && tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -qF "file:$dir/vm$1.console"; then
    echo "$pid"
  fi
}
# Whether our own child PID still runs (a zombie does not). Used while `up` waits: vm_pid's
# command-line check would miss a child that has not exec'ed QEMU yet.
child_alive() { [[ -r "/proc/$1/stat" && "$(cut -d' ' -f3 "/proc/$1/stat" 2>/dev/null)" != Z ]]; }
vm_exit_code() {  # last NRX-EXIT code on VM I's console, or nothing
  [[ -f "$dir/vm$1.console" ]] || return 0
  grep -a -o 'NRX-EXIT [0-9]*' "$dir/vm$1.console" 2>/dev/null | tail -n 1 | cut -d' ' -f2 || true
}
console_tail() {  # VM I: its last lines, for error messages
  say "---- vm$1 console (last 20 lines): $dir/vm$1.console"
  # Without the firmware's terminal escapes and carriage returns; awk ends a partial last line.
  tail -n 20 "$dir/vm$1.console" 2>/dev/null | sed 's/\x1b\[[0-9;?]*[A-Za-z]//g; s/\x1bc//g; s/\r//g; s/^/    /' | awk 1 >&2 || true
  if [[ -s "$dir/vm$1.qemu.log" ]]; then
    say "---- vm$1 QEMU log: $dir/vm$1.qemu.log"
    tail -n 10 "$dir/vm$1.qemu.log" | sed 's/^/    /' >&2
  fi
}

# ---------------------------------------------------------------------------------------------
# Commands
cmd_down() {
  local i pid n=0 stopped=() deadline
  if state_load; then n="$VMS"; else
    # No state file: still clean whatever pid files a half-finished `up` left.
    for f in "$dir"/vm*.pid; do [[ -f "$f" ]] && n=$((n + 1)); done
  fi
  for ((i = 0; i < n; i++)); do
    pid="$(vm_pid "$i")"
    if [[ -n "$pid" ]]; then kill -TERM "$pid" 2>/dev/null || true; stopped+=("$i:$pid"); fi
  done
  deadline=$(($(now) + 5000000))
  for s in "${stopped[@]}"; do
    i="${s%%:*}"; pid="${s#*:}"
    while kill -0 "$pid" 2>/dev/null && (($(now) < deadline)); do sleep 0.1; done
    if kill -0 "$pid" 2>/dev/null; then
      say "vm$i: QEMU $pid ignored TERM; killing it"
      kill -KILL "$pid" 2>/dev/null || true
      while kill -0 "$pid" 2>/dev/null; do sleep 0.1; done
    fi
    wait "$pid" 2>/dev/null || true      # reap it when it is our child (run)
  done
  shm_teardown
  net_teardown          # after the QEMUs are gone: they hold the taps
  rm -f "$dir"/vm*.pid "$dir"/vm*.env "$dir"/vm*.script "$dir/cluster.env"
  if ((purge)); then rm -rf "$dir"; fi
  say "down: stopped ${#stopped[@]} QEMU process(es)${SHM_PATH:+, removed $SHM_PATH}${NET_REMOVED:+, deleted the network namespace $NET_REMOVED}$( ((purge)) && echo ", removed $dir")"
}

pick_accel() {  # sets accel_args
  local want="$accel"
  if [[ "$want" == auto ]]; then
    want=tcg
    # /dev/kvm may be a paravirtual KVM (kvm_pvm) on which stock guests crawl and die: real KVM only.
    if grep -qwE 'vmx|svm' /proc/cpuinfo && [[ ! -e /sys/module/kvm_pvm && -w /dev/kvm ]]; then want=kvm; fi
  fi
  case "$want" in
    tcg) accel_args=(-accel tcg -cpu max) ;;
    kvm) [[ -w /dev/kvm ]] || die "--accel kvm: /dev/kvm is not usable"; accel_args=(-accel kvm -cpu host) ;;
    *) die "--accel: '$accel' is not auto, tcg or kvm" ;;
  esac
}

sq() { printf "'%s'" "${1//\'/\'\\\'\'}"; }   # POSIX-sh single quoting

cmd_up() {
  local i f
  command -v qemu-system-x86_64 >/dev/null || die "qemu-system-x86_64 not found; install it with: apt-get install qemu-system-x86"
  shm_validate
  net_validate
  pick_accel
  # Every VM needs a script.
  for i in "${!script_for[@]}"; do ((i < vms)) || die "--script-for $i: there are only $vms VMs (--vms)"; done
  for ((i = 0; i < vms; i++)); do
    f="${script_for[$i]:-$script}"
    [[ -n "$f" ]] || die "no script for VM $i (give --script FILE or --script-for $i FILE)"
    [[ -f "$f" && -r "$f" ]] || die "script for VM $i: cannot read '$f'"
  done
  if state_load; then
    for ((i = 0; i < VMS; i++)); do
      [[ -z "$(vm_pid "$i")" ]] || die "$dir already has running VMs; run 'deploy/vm.sh down --dir $dir' first"
    done
  fi

  # The image: refresh it (cheap when cached) unless told not to.
  local kernel initramfs
  if ((image_build)); then
    local -a iargs=(--out "$image")
    for f in "${bins[@]}"; do iargs+=(--bin "$f"); done
    local assignments
    assignments="$("$root/deploy/image.sh" "${iargs[@]}")" || die "deploy/image.sh failed"
    kernel="$(sed -n 's/^NRX_KERNEL=//p' <<<"$assignments")"
    initramfs="$(sed -n 's/^NRX_INITRAMFS=//p' <<<"$assignments")"
  else
    kernel="$image/vmlinux"
    # The newest, should several compressions be lying there.
    initramfs="$(find "$image" -maxdepth 1 -name 'initramfs.cpio*' -printf '%T@ %p\n' 2>/dev/null | sort -rn | head -n 1 | cut -d' ' -f2-)"
  fi
  [[ -f "$kernel" ]] || die "no kernel at '$kernel' (run deploy/image.sh --out $image)"
  [[ -f "$initramfs" ]] || die "no initramfs in $image (run deploy/image.sh --out $image)"

  rm -f "$dir"/vm*.console "$dir"/vm*.qemu.log "$dir"/vm*.pid "$dir"/vm*.env "$dir"/vm*.script
  # From here on a failure must not leave QEMUs or shm files behind.
  trap 'rc=$?; trap - EXIT; say "up: failed or interrupted; stopping the VMs"; cmd_down || true; exit $rc' EXIT
  trap 'exit 130' INT
  trap 'exit 143' TERM
  shm_setup
  net_setup
  printf 'VMS=%s\nSHM=%s\nSHM_MB=%s\nSHM_PATH=%s\nSHM_DATA_OFFSET=%s\nNET=%s\nNETNS=%s\nIMAGE=%s\n' \
    "$vms" "$shm" "$shm_mb" "$SHM_PATH" "$SHM_DATA_OFFSET" "$net" "$NETNS" "$image" >"$dir/cluster.env"

  local -a qemu_args launch=() pids=()
  local peers=""
  if [[ "$net" == private ]]; then
    launch=(ip netns exec "$NETNS")
    for ((i = 0; i < vms; i++)); do peers+="${peers:+ }$(net_ip "$i")"; done
  fi
  local machine=q35 kappend="$append"
  if [[ "$shm" == cxl ]]; then
    machine=q35,cxl=on
    # busybox devmem on the dax data (`nrx_cxl_dax --phys`) needs both (measured): iomem=relaxed,
    # because device_dax claims the range and Debian's CONFIG_IO_STRICT_DEVMEM makes /dev/mem refuse
    # a claimed range (mmap: EPERM); nopat, because device_dax maps it write-back and devmem's
    # O_SYNC mapping asks for uncached-minus, a PAT conflict (mmap: EAGAIN). /dev/mem read/write
    # are no way around it: they stop at the end of RAM. Caching modes mean nothing under TCG.
    kappend="iomem=relaxed nopat${append:+ $append}"
  fi
  local -A t0=()
  for ((i = 0; i < vms; i++)); do
    cp "${script_for[$i]:-$script}" "$dir/vm$i.script"
    {
      echo "NRX_VM_INDEX=$i"
      echo "NRX_VMS=$vms"
      echo "NRX_SHM=$shm"
      echo "NRX_SHM_MB=$shm_mb"
      echo "NRX_NET=$net"
      if [[ "$net" == private ]]; then
        echo "NRX_IP=$(net_ip "$i")"
        echo "NRX_HOST_IP=$net_host_ip"
        echo "NRX_PEERS=$(sq "$peers")"
      fi
      for f in "${envs[@]}"; do echo "${f%%=*}=$(sq "${f#*=}")"; done
    } >"$dir/vm$i.env"
    qemu_args=(qemu-system-x86_64 -name "nrx-vm$i" -nodefaults -machine "$machine" "${accel_args[@]}"
               -m "${mem_mb}M" -smp "$smp,maxcpus=$((smp > 2 ? smp : 2))"
               -nographic -serial "file:$dir/vm$i.console" -no-reboot
               -kernel "$kernel" -initrd "$initramfs" -append "console=ttyS0 quiet panic=-1 $kappend"
               -fw_cfg "name=opt/nrx/script,file=$dir/vm$i.script"
               -fw_cfg "name=opt/nrx/env,file=$dir/vm$i.env")
    shm_qemu_args "$i"
    net_qemu_args "$i"
    qemu_args+=("${qemu_extra[@]}")
    t0[$i]=$(now)
    "${launch[@]}" "${qemu_args[@]}" </dev/null >"$dir/vm$i.qemu.log" 2>&1 &
    pids[i]=$!
    echo $! >"$dir/vm$i.pid"
  done
  say "up: started $vms VM(s) (${accel_args[*]}, ${mem_mb} MiB, shm $shm${SHM_PATH:+ $SHM_PATH ${shm_mb} MiB}, net $net${NETNS:+ $NETNS $net_host_ip/24}); waiting for them to boot"

  # Wait for every guest's NRX-BOOTED line.
  local deadline=$(($(now) + boot_timeout * 1000000)) pending=$vms
  local -A booted=()
  while ((pending > 0)); do
    for ((i = 0; i < vms; i++)); do
      [[ -n "${booted[$i]:-}" ]] && continue
      if grep -aq 'NRX-BOOTED' "$dir/vm$i.console" 2>/dev/null; then
        booted[$i]=1; pending=$((pending - 1))
        say "vm$i: booted in $(secs "${t0[$i]}") ($(grep -a -o 'NRX-BOOTED.*' "$dir/vm$i.console" | head -n 1 | tr -d '\r'))"
      elif ! child_alive "${pids[$i]}"; then
        console_tail "$i"
        fail "up: vm$i's QEMU exited before the guest booted"
      fi
    done
    ((pending == 0)) && break
    if (($(now) >= deadline)); then
      for ((i = 0; i < vms; i++)); do [[ -n "${booted[$i]:-}" ]] || console_tail "$i"; done
      fail "up: $pending VM(s) did not boot within $boot_timeout s (--boot-timeout)"
    fi
    sleep 0.1
  done
  trap - EXIT INT TERM
  say "up: $vms VM(s) running; run dir $dir"
}

cmd_wait() {
  state_load || die "no cluster in $dir (nothing was started with 'deploy/vm.sh up --dir $dir')"
  local i deadline pending="$VMS" failed=0 code t0
  t0=$(now); deadline=$((t0 + timeout * 1000000))
  local -A result=()
  while ((pending > 0)); do
    for ((i = 0; i < VMS; i++)); do
      [[ -n "${result[$i]:-}" ]] && continue
      code="$(vm_exit_code "$i")"
      if [[ -n "$code" ]]; then
        result[$i]="$code"
      elif [[ -z "$(vm_pid "$i")" ]]; then
        # The QEMU may have written the marker just before it exited: look once more.
        code="$(vm_exit_code "$i")"
        result[$i]="${code:-dead}"
      else
        continue
      fi
      pending=$((pending - 1))
    done
    ((pending == 0)) && break
    if (($(now) >= deadline)); then
      for ((i = 0; i < VMS; i++)); do [[ -n "${result[$i]:-}" ]] || result[$i]=timeout; done
      break
    fi
    sleep 0.2
  done
  for ((i = 0; i < VMS; i++)); do
    case "${result[$i]}" in
      0) echo "vm$i: exit 0" ;;
      dead) echo "vm$i: QEMU exited without NRX-EXIT (kernel panic or crash?)"; failed=1; console_tail "$i" ;;
      timeout) echo "vm$i: timed out after $timeout s (still running)"; failed=1; console_tail "$i" ;;
      *) echo "vm$i: exit ${result[$i]}"; failed=1; console_tail "$i" ;;
    esac
  done
  say "wait: done in $(secs "$t0")"
  return "$failed"
}

cmd_status() {
  state_load || { echo "no cluster in $dir"; return 0; }
  local i code pid
  for ((i = 0; i < VMS; i++)); do
    code="$(vm_exit_code "$i")"; pid="$(vm_pid "$i")"
    if [[ -n "$code" ]]; then echo "vm$i: exit $code${pid:+ (QEMU $pid still running)}"
    elif [[ -n "$pid" ]]; then echo "vm$i: running (QEMU $pid)"
    else echo "vm$i: dead (no NRX-EXIT)"; fi
  done
  echo "shm: ${SHM_PATH:-none}"
  if [[ -n "$NETNS" ]]; then
    echo "net: $NETNS ($(net_exists "$NETNS" && echo "host $net_host_ip" || echo "deleted"))"
  else
    echo "net: none"
  fi
}

cmd_exec() {
  ((${#exec_cmd[@]})) || die "exec: no command (deploy/vm.sh exec [--dir DIR] -- CMD [ARGS...])"
  state_load || die "exec: no cluster in $dir (nothing was started with 'deploy/vm.sh up --dir $dir')"
  [[ -n "$NETNS" ]] || die "exec: the run in $dir has no network namespace (it was started with --net none)"
  net_exists "$NETNS" || die "exec: the network namespace $NETNS of $dir is gone (the cluster is down?)"
  exec ip netns exec "$NETNS" "${exec_cmd[@]}"
}

cmd_run() {
  local t0 rc=0
  t0=$(now)
  cmd_up
  # up removed its own traps; from here on, down runs whatever happens.
  trap 'rc=$?; trap - EXIT; say "run: failed or interrupted; stopping the VMs"; cmd_down || true; exit $rc' EXIT
  trap 'exit 130' INT
  trap 'exit 143' TERM
  cmd_wait || rc=$?
  trap - EXIT INT TERM
  cmd_down
  say "run: $( ((rc == 0)) && echo passed || echo FAILED) in $(secs "$t0") (consoles in $dir)"
  return "$rc"
}

case "$cmd" in
  up) cmd_up ;;
  wait) cmd_wait ;;
  down) cmd_down ;;
  run) cmd_run ;;
  status) cmd_status ;;
  exec) cmd_exec ;;
esac
