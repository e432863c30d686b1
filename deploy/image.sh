#!/usr/bin/env bash
# deploy/image.sh: the guest image of an nrx QEMU cluster, built from Debian packages and cached.
#
# The image is two files that QEMU boots directly (-kernel/-initrd, no disk, no bootloader):
#   OUT/vmlinux           the uncompressed Debian kernel, booted through its PVH entry (about 3 s
#                         faster under TCG than the bzImage, see /work/shared/notes/qemu.md)
#   OUT/initramfs.cpio    busybox-static, kmod's modprobe, the kernel modules the cluster needs, the
#                         nrx binaries with their shared libraries, the CXL tools (cxl and ndctl
#                         from Debian's ndctl, for vm.sh --shm cxl), soft-RoCE (the rdma_rxe,
#                         ib_uverbs and rdma_ucm modules, iproute2's rdma, ibv_devinfo, the
#                         libibverbs rxe provider and the nrx_rxe helper, for real verbs between
#                         the VMs of vm.sh --net private), and an /init that configures eth0 when
#                         the environment has NRX_IP, runs the script QEMU passes through fw_cfg
#                         (opt/nrx/script), prints `NRX-EXIT <rc>` on the console and powers off.
# The kernel is downloaded once (OUT/kernel/<version>/, with its modules); the initramfs is rebuilt
# whenever one of its inputs changes (a binary's contents, busybox, kmod, cxl/ndctl, the RDMA tools
# and rxe provider, the module list, this script), judged by a SHA-256 stamp, so `vm.sh up` can
# call this every time at ~0.2 s.
#
# Usage example:
#   deploy/image.sh                          # build or refresh build/guest/ for build/bin/nrx
#   deploy/image.sh --bin build/bin/nrx --bin build/bin/cnr_test --out /tmp/guest
#   eval "$(deploy/image.sh)"; echo "$NRX_KERNEL $NRX_INITRAMFS"
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
self="$root/deploy/image.sh"

say() { printf 'image: %s\n' "$*" >&2; }
die() { printf 'image: error: %s\n' "$*" >&2; exit 2; }

usage() {
  cat <<'USAGE'
usage: deploy/image.sh [options]

Build (first use) or refresh the guest image of an nrx QEMU cluster: an uncompressed Debian kernel
for PVH boot and an initramfs with busybox, kmod, kernel modules and the given binaries. Progress
and timings go to stderr; stdout gets shell assignments NRX_KERNEL=... NRX_INITRAMFS=...
NRX_KERNEL_VERSION=... (so `eval "$(deploy/image.sh)"` works).

options:
  --out DIR           image directory (default: build/guest under the repository)
  --bin PATH          a binary to put in the guest's /usr/bin, with its libraries (repeatable; a
                      directory adds every executable file in it; default: build/bin/nrx)
  --module NAME       one more kernel module (with its dependencies) for the initramfs (repeatable)
  --no-strip          keep the binaries' debug sections (default: strip them in the guest copy)
  --compress C        initramfs compression: none (default: boots ~0.5 s faster under TCG and
                      builds ~1 s faster than gzip; 16 MB instead of 6), gzip or zstd
  --rebuild           rebuild the initramfs even when its stamp matches
  --refresh-kernel    download and extract the kernel again
  -h, --help          this text

Needs (Debian 12): apt-get, dpkg, busybox-static, kmod, cpio, xz-utils; ndctl for the CXL tools
(without it the image is built without them, with a warning, and `vm.sh --shm cxl` refuses to
start); iproute2, ibverbs-utils and ibverbs-providers for soft-RoCE (without them the image is
built without RDMA, with a warning, and nrx_rxe fails); root is not needed (except to apt-get
install missing packages). The kernel comes from the versioned package that
`apt-cache depends linux-image-amd64` names.

Modules always included: qemu_fw_cfg (the script channel), virtio_pci and virtio_net (the NIC of
`vm.sh --net private`; Debian builds the virtio PCI transport as a module too) and, for CXL shared
memory, cxl_acpi cxl_pci cxl_mem cxl_pmem nd_pmem dax_pmem device_dax. ivshmem needs no module
(the guest uses /sys/bus/pci/devices/*/resource2 and /dev/mem through the PCI core). With the
RDMA tools below also rdma_rxe ib_uverbs rdma_ucm (soft-RoCE; ib_core, rdma_cm and the rest come
as dependencies) and crc32_generic crc32_pclmul (rdma_rxe asks the crypto API for "crc32", which
request_module()s crypto-crc32 through kmod's modprobe).

Binaries always included when the host has them (package ndctl): /usr/bin/cxl and /usr/bin/ndctl
with their libraries (what nrx_cxl_dax needs). For soft-RoCE (what nrx_rxe needs), all or none:
/usr/bin/rdma (iproute2) and /usr/bin/ibv_devinfo (ibverbs-utils) with their libraries, and the
libibverbs provider of rxe (ibverbs-providers: /usr/lib/x86_64-linux-gnu/libibverbs/
librxe-rdmav*.so, dlopen'ed, with its libraries) and /etc/libibverbs.d/rxe.driver, at the same
paths in the guest.

The guest's /init: when its environment (opt/nrx/env) has NRX_IP, it loads virtio_pci and
virtio_net, brings up lo and eth0 and gives eth0 the address NRX_IP/24 (busybox ip) before it
runs the script.

Guest helpers installed in /usr/bin:
  nrx_ivshmem_bar [--phys] [N]   enable the N-th ivshmem device (default 0) and print its BAR2
                                 sysfs file (.../resource2: mmap it MAP_SHARED; read() and
                                 write() on it fail with EIO), or with --phys its physical address
  nrx_ivshmem_poke OFFSET STRING [N]   write a short string into the shared memory (busybox devmem)
  nrx_ivshmem_peek OFFSET LEN [N]      print it back (stops at the first NUL)
  nrx_cxl_dax [--phys]           (vm.sh --shm cxl) load the CXL/nvdimm/dax modules, create the pmem
                                 region and a devdax namespace on the CXL type-3 device unless
                                 /dev/dax0.0 exists already (idempotent), print /dev/dax0.0 (mmap
                                 it MAP_SHARED, 4 KiB-aligned), or with --phys its physical start
                                 address (for busybox devmem; vm.sh boots with iomem=relaxed
                                 nopat, without which devmem's mmap fails)
  nrx_rxe [--gid-index]          (vm.sh --net private) soft-RoCE on eth0: load rdma_rxe ib_uverbs
                                 rdma_ucm, `rdma link add rxe0 type rxe netdev eth0` unless rxe0
                                 exists (idempotent), wait up to 10 s for PORT_ACTIVE (ibv_devinfo
                                 -d rxe0) and a non-zero RoCE v2 GID on port 1, print one line:
                                 `rxe0 netdev=eth0 state=PORT_ACTIVE gid_index=N gid=G
                                 ipv4_gid_index=M ipv4_gid=G4` (N: the first RoCE v2 GID, the
                                 IPv6 link-local default GID, 0 with Linux 6.1's rxe; M: the RoCE
                                 v2 GID of eth0's IPv4 address, ::ffff:a.b.c.d, 1 there, or -
                                 when eth0 has no IPv4 address; both work between VMs), or with
                                 --gid-index only N; exit 1 with the failing step's output
USAGE
}

now() { echo "${EPOCHREALTIME/[.,]/}"; }         # microseconds
mib() { echo "$(($(stat -c %s "$1") / 1048576)) MiB"; }
elapsed() { local us=$(($(now) - $1)); printf '%d.%02d s' $((us / 1000000)) $((us % 1000000 / 10000)); }

need() {  # command, package that provides it
  command -v "$1" >/dev/null 2>&1 || die "'$1' not found; install it with: apt-get install $2"
}

# ---------------------------------------------------------------------------------------------
# Options
out="$root/build/guest"
bins=()
extra_modules=()
strip=1
compress=none
rebuild=0
refresh_kernel=0
while (($#)); do
  case "$1" in
    --out) [[ $# -ge 2 ]] || die "--out needs a directory"; out="$2"; shift ;;
    --out=*) out="${1#*=}" ;;
    --bin) [[ $# -ge 2 ]] || die "--bin needs a path"; bins+=("$2"); shift ;;
    --bin=*) bins+=("${1#*=}") ;;
    --module) [[ $# -ge 2 ]] || die "--module needs a name"; extra_modules+=("$2"); shift ;;
    --module=*) extra_modules+=("${1#*=}") ;;
    --no-strip) strip=0 ;;
    --compress) [[ $# -ge 2 ]] || die "--compress needs gzip, zstd or none"; compress="$2"; shift ;;
    --compress=*) compress="${1#*=}" ;;
    --rebuild) rebuild=1 ;;
    --refresh-kernel) refresh_kernel=1 ;;
    -h|--help) usage; exit 0 ;;
    *) die "unknown option '$1' (see deploy/image.sh --help)" ;;
  esac
  shift
done
case "$compress" in gzip|zstd|none) ;; *) die "--compress: '$compress' is not gzip, zstd or none" ;; esac
((${#bins[@]})) || bins=("$root/build/bin/nrx")

# Resolve --bin arguments to absolute paths of executable files.
bin_files=()
for b in "${bins[@]}"; do
  if [[ -d "$b" ]]; then
    found=0
    for f in "$b"/*; do
      [[ -f "$f" && -x "$f" ]] || continue
      bin_files+=("$(realpath "$f")"); found=1
    done
    ((found)) || die "--bin $b: the directory holds no executable file"
  elif [[ -f "$b" && -x "$b" ]]; then
    bin_files+=("$(realpath "$b")")
  elif [[ -e "$b" ]]; then
    die "--bin $b: not an executable file"
  else
    die "--bin $b: no such file (build it first: ./nrx build)"
  fi
done

need apt-get apt; need dpkg dpkg; need cpio cpio; need depmod kmod; need ldd libc-bin
need sha256sum coreutils; need flock util-linux
busybox_bin="$(command -v busybox || true)"
[[ -n "$busybox_bin" ]] || die "busybox not found; install it with: apt-get install busybox-static"
busybox_bin="$(realpath "$busybox_bin")"
# The guest has no libc of its own beyond what ldd finds for the binaries: busybox must be static.
if ldd "$busybox_bin" >/dev/null 2>&1; then
  die "$busybox_bin is dynamically linked; install the static one: apt-get install busybox-static"
fi
kmod_bin="$(realpath "$(command -v kmod || echo /bin/kmod)")"
[[ -x "$kmod_bin" ]] || die "kmod not found; install it with: apt-get install kmod"
[[ "$compress" != zstd ]] || need zstd zstd
# The CXL tools of the guest (nrx_cxl_dax): Debian's ndctl ships both /usr/bin/cxl and /usr/bin/ndctl.
cxl_tools=()
for t in cxl ndctl; do
  p="$(command -v "$t" || true)"
  [[ -n "$p" ]] && cxl_tools+=("$(realpath "$p")")
done
if ((${#cxl_tools[@]} < 2)); then
  say "warning: 'cxl' or 'ndctl' not found: the image gets no CXL tools (vm.sh --shm cxl needs them: apt-get install ndctl)"
  cxl_tools=()
fi
# Soft-RoCE in the guest (nrx_rxe): iproute2's rdma, ibverbs-utils' ibv_devinfo, and the rxe
# provider that libibverbs dlopen()s (found through /etc/libibverbs.d/rxe.driver), all or none.
rdma_tools=() rxe_provider="" rxe_driver=/etc/libibverbs.d/rxe.driver
for t in /usr/bin/rdma /usr/bin/ibv_devinfo; do
  [[ -x "$t" ]] && rdma_tools+=("$t")
done
for f in /usr/lib/x86_64-linux-gnu/libibverbs/librxe-rdmav*.so; do
  [[ -f "$f" ]] && rxe_provider="$f"
done
if ((${#rdma_tools[@]} < 2)) || [[ -z "$rxe_provider" || ! -f "$rxe_driver" ]]; then
  say "warning: /usr/bin/rdma, /usr/bin/ibv_devinfo, the rxe provider (librxe-rdmav*.so) or $rxe_driver not found: the image gets no soft-RoCE (nrx_rxe needs them: apt-get install iproute2 ibverbs-utils ibverbs-providers)"
  rdma_tools=() rxe_provider="" rxe_driver=""
fi
rdma_modules=()
[[ -n "$rxe_provider" ]] && rdma_modules=(rdma_rxe ib_uverbs rdma_ucm crc32_generic crc32_pclmul)

mkdir -p "$out" || die "cannot create $out"
out="$(realpath "$out")"
# One builder at a time per image directory (vm.sh and a test may call this concurrently).
exec 9>"$out/.lock"
flock -w 900 9 || die "timed out waiting for another image.sh on $out"

modules=(qemu_fw_cfg virtio_pci virtio_net cxl_acpi cxl_pci cxl_mem cxl_pmem nd_pmem dax_pmem device_dax
         "${rdma_modules[@]}" "${extra_modules[@]}")
total_start=$(now)

# ---------------------------------------------------------------------------------------------
# Kernel: the versioned Debian package, its modules (depmod'ed) and the uncompressed vmlinux.

# extract_vmlinux BZIMAGE DEST: the x86 boot protocol (>= 2.08) records where the compressed
# kernel sits: setup_sects at 0x1f1 (0 means 4), payload_offset/payload_length at 0x248/0x24c,
# counted from the protected-mode code, which starts after (setup_sects + 1) sectors. The payload
# starts with its compressor's magic; some compressors' payloads end with 4 bytes of appended size,
# so success is judged by the output being an ELF file, not by the decompressor's exit status.
extract_vmlinux() {
  local bz="$1" dest="$2" sects version poff plen magic
  [[ "$(od -An -tx1 -j 0x202 -N4 "$bz" | tr -d ' \n')" == 48647253 ]] \
    || die "$bz is not a bzImage (no 'HdrS' at 0x202)"
  version=$(od -An -tu2 -j 0x206 -N2 "$bz" | tr -d ' ')
  ((version >= 0x208)) || die "$bz: boot protocol $version is older than 2.08 (no payload fields)"
  sects=$(od -An -tu1 -j 0x1f1 -N1 "$bz" | tr -d ' ')
  ((sects == 0)) && sects=4
  poff=$(od -An -tu4 -j 0x248 -N4 "$bz" | tr -d ' ')
  plen=$(od -An -tu4 -j 0x24c -N4 "$bz" | tr -d ' ')
  local start=$(((sects + 1) * 512 + poff))
  magic=$(od -An -tx1 -j "$start" -N6 "$bz" | tr -d ' \n')
  local -a dec
  case "$magic" in
    1f8b*)         dec=(gzip -dc) ;;
    fd377a585a00)  dec=(xz -dc --single-stream) ;;
    28b52ffd*)     dec=(zstd -dc -q) ;;
    425a68*)       dec=(bzip2 -dc) ;;
    5d0000*)       dec=(xz -dc --format=lzma) ;;
    02214c18*)     dec=(lz4 -dc) ;;
    894c5a*)       dec=(lzop -dc) ;;
    *) die "$bz: unknown compression (payload magic $magic at offset $start)" ;;
  esac
  command -v "${dec[0]}" >/dev/null || die "extracting vmlinux needs '${dec[0]}' (apt-get install it)"
  tail -c +"$((start + 1))" "$bz" | head -c "$plen" | "${dec[@]}" >"$dest" 2>/dev/null || true
  [[ "$(od -An -tx1 -N4 "$dest" | tr -d ' \n')" == 7f454c46 ]] \
    || die "$bz: decompressing the payload with '${dec[*]}' did not give an ELF file"
  # PVH boot needs the XEN_ELFNOTE_PHYS32_ENTRY note (CONFIG_PVH=y); check it where readelf exists.
  if command -v readelf >/dev/null && ! readelf -n "$dest" 2>/dev/null | grep -q 'Xen.*0x00000012'; then
    die "$dest has no PVH entry note (kernel built without CONFIG_PVH?)"
  fi
}

kernel_version=""
[[ -f "$out/kernel.version" ]] && kernel_version="$(cat "$out/kernel.version")"
kdir="$out/kernel/$kernel_version"
if ((refresh_kernel == 0)) && [[ -n "$kernel_version" && -f "$out/vmlinux" && -f "$kdir/lib/modules/$kernel_version/modules.dep" ]]; then
  say "kernel $kernel_version: cached ($out/vmlinux)"
else
  step=$(now)
  need apt-cache apt; need xz xz-utils
  # (awk reads to the end: an early exit would SIGPIPE the writer, a failure under pipefail)
  pkg="$(apt-cache depends linux-image-amd64 2>/dev/null | awk '$1 == "Depends:" && $2 ~ /^linux-image-[0-9]/ && !p { print $2; p = 1 }')"
  [[ -n "$pkg" ]] || die "'apt-cache depends linux-image-amd64' names no versioned kernel package (run apt-get update?)"
  kernel_version="${pkg#linux-image-}"
  say "kernel: downloading $pkg"
  tmp="$out/kernel.tmp"
  rm -rf "$tmp"; mkdir -p "$tmp"
  # apt-get download writes into the current directory; as root it warns that it runs unsandboxed.
  (cd "$tmp" && apt-get download -q "$pkg" >download.log 2>&1) \
    || { cat "$tmp/download.log" >&2; die "apt-get download $pkg failed"; }
  deb=("$tmp"/*.deb)
  [[ -f "${deb[0]}" ]] || die "apt-get download $pkg left no .deb in $tmp"
  say "kernel: unpacking $(basename "${deb[0]}")"
  dpkg -x "${deb[0]}" "$tmp/root" || die "dpkg -x ${deb[0]} failed"
  rm -f "${deb[0]}"; rm -rf "$tmp/root/usr/share"
  [[ -f "$tmp/root/boot/vmlinuz-$kernel_version" ]] || die "$pkg has no boot/vmlinuz-$kernel_version"
  [[ -d "$tmp/root/lib/modules/$kernel_version" ]] || die "$pkg has no lib/modules/$kernel_version"
  say "kernel: extracting vmlinux for PVH boot"
  extract_vmlinux "$tmp/root/boot/vmlinuz-$kernel_version" "$tmp/vmlinux"
  depmod -b "$tmp/root" "$kernel_version" || die "depmod -b $tmp/root $kernel_version failed"
  rm -rf "$out/kernel"; mkdir -p "$out/kernel"
  mv "$tmp/root" "$out/kernel/$kernel_version"
  mv "$tmp/vmlinux" "$out/vmlinux"
  rm -rf "$tmp"
  echo "$kernel_version" >"$out/kernel.version"
  kdir="$out/kernel/$kernel_version"
  rm -f "$out/initramfs.stamp"    # new kernel: new modules
  say "kernel $kernel_version: ready, $(mib "$out/vmlinux") vmlinux ($(elapsed "$step"))"
fi

# ---------------------------------------------------------------------------------------------
# Initramfs: rebuilt when the stamp of its inputs changes.
case "$compress" in gzip) initramfs="$out/initramfs.cpio.gz" ;; zstd) initramfs="$out/initramfs.cpio.zst" ;;
                    none) initramfs="$out/initramfs.cpio" ;; esac

stamp="$( {
  echo "kernel $kernel_version strip $strip compress $compress"
  echo "modules ${modules[*]}"
  sha256sum "$self" "$busybox_bin" "$kmod_bin" "${cxl_tools[@]}" "${bin_files[@]}" \
    "${rdma_tools[@]}" ${rxe_provider:+"$rxe_provider"} ${rxe_driver:+"$rxe_driver"}
} | sha256sum | cut -d' ' -f1)"

if ((rebuild == 0)) && [[ -f "$initramfs" && "$(cat "$out/initramfs.stamp" 2>/dev/null)" == "$stamp" ]]; then
  say "initramfs: cached, inputs unchanged ($initramfs)"
else
  step=$(now)
  say "initramfs: building (binaries: ${bin_files[*]})"
  stage="$out/initramfs.tmp"
  rm -rf "$stage"
  mkdir -p "$stage"/{bin,sbin,usr/bin,usr/sbin,lib/x86_64-linux-gnu,lib64,etc,proc,sys,dev,tmp,run,root,mnt}

  # Shared libraries of FILE, as the host's loader resolves them, copied (dereferenced: Debian's
  # merged /usr makes /lib a link, and library names are links) to the same absolute path.
  copy_libs() {
    local file="$1" line lib
    local -a libs=()
    while IFS= read -r line; do
      case "$line" in
        *"not found"*) die "$file needs ${line%% =>*} (ldd: not found)" ;;
        *" => /"*) lib="${line#*=> }"; libs+=("${lib%% (*}") ;;
        /*) libs+=("${line%% (*}") ;;
      esac
    done < <(ldd "$file" 2>/dev/null | sed 's/^[[:space:]]*//' || true)
    for lib in "${libs[@]}"; do
      [[ -e "$stage$lib" ]] && continue
      mkdir -p "$stage$(dirname "$lib")"
      cp -L "$lib" "$stage$lib" || die "cannot copy $lib (needed by $file)"
    done
  }

  # busybox with one link per applet; kmod provides the module tools (busybox's modprobe cannot
  # serve the kernel's request_module calls with full dependency handling).
  cp "$busybox_bin" "$stage/bin/busybox"
  kmod_tools=" modprobe insmod rmmod lsmod depmod modinfo "
  while IFS= read -r applet; do   # (no subshells here: ~400 applets)
    [[ "$applet" == */* && "$applet" != bin/busybox ]] || continue
    [[ "$kmod_tools" == *" ${applet##*/} "* ]] && continue
    [[ -e "$stage/$applet" || -L "$stage/$applet" ]] && continue
    [[ -d "$stage/${applet%/*}" ]] || mkdir -p "$stage/${applet%/*}"
    ln -s /bin/busybox "$stage/$applet"
  done < <("$busybox_bin" --list-full)
  cp "$kmod_bin" "$stage/bin/kmod"
  copy_libs "$kmod_bin"
  for t in $kmod_tools; do ln -sf /bin/kmod "$stage/sbin/$t"; done

  # The binaries, debug sections stripped (RelWithDebInfo nrx is ~30 MB, ~5 MB without).
  for f in "${bin_files[@]}"; do
    dest="$stage/usr/bin/$(basename "$f")"
    if ((strip)) && command -v objcopy >/dev/null; then
      objcopy --strip-debug "$f" "$dest" || die "objcopy --strip-debug $f failed"
    else
      cp "$f" "$dest"
    fi
    copy_libs "$f"
  done
  # The CXL tools (cxl create-region, ndctl create-namespace), unstripped as Debian ships them.
  for f in "${cxl_tools[@]}"; do
    cp "$f" "$stage/usr/bin/$(basename "$f")"
    copy_libs "$f"
  done
  # Soft-RoCE: rdma and ibv_devinfo, and the rxe provider with its driver file at the host's paths
  # (libibverbs dlopen()s the provider, so ldd of the tools does not name it: copy_libs it too).
  for f in "${rdma_tools[@]}"; do
    cp "$f" "$stage/usr/bin/$(basename "$f")"
    copy_libs "$f"
  done
  if [[ -n "$rxe_provider" ]]; then
    mkdir -p "$stage$(dirname "$rxe_provider")" "$stage$(dirname "$rxe_driver")"
    cp -L "$rxe_provider" "$stage$rxe_provider"
    cp -L "$rxe_driver" "$stage$rxe_driver"
    copy_libs "$rxe_provider"
  fi
  # libgcc_s is dlopen'ed by glibc for pthread_cancel and unwinding even where ldd does not list it.
  # awk reads to the end: exiting at the first match would SIGPIPE ldconfig once its cache outgrows
  # a pipe buffer, and under pipefail that fails this assignment (and the script, silently).
  libgcc="$(ldconfig -p | awk '/libgcc_s\.so\.1 .*x86-64/ && !p { print $NF; p = 1 }')"
  [[ -n "$libgcc" ]] || die "libgcc_s.so.1 not found (ldconfig -p); install libgcc-s1"
  [[ -e "$stage$libgcc" ]] || { mkdir -p "$stage$(dirname "$libgcc")"; cp -L "$libgcc" "$stage$libgcc"; }
  printf '%s\n' /lib/x86_64-linux-gnu /usr/lib/x86_64-linux-gnu /lib /usr/lib >"$stage/etc/ld.so.conf"
  ldconfig -r "$stage" 2>/dev/null || say "warning: ldconfig -r failed; the guest loader uses its default paths"

  # Kernel modules with their dependencies, as modprobe itself resolves them. -C /dev/null: not the
  # host's /etc/modprobe.d, whose `install` rules would hide modules (ndctl's nvdimm-security.conf
  # turns libnvdimm into an `install` line, and cxl_pmem, nd_pmem, dax_pmem would lack it).
  mroot="$kdir/lib/modules/$kernel_version"
  for m in "${modules[@]}"; do
    deps="$(modprobe -C /dev/null -d "$kdir" -S "$kernel_version" --show-depends "$m" 2>&1)" \
      || die "module $m: $deps"
    while read -r kind path _; do
      [[ "$kind" == insmod ]] || continue
      rel="${path#"$mroot"/}"
      [[ "$rel" != "$path" ]] || die "module $m: unexpected path $path"
      mkdir -p "$stage/lib/modules/$kernel_version/$(dirname "$rel")"
      cp -n "$path" "$stage/lib/modules/$kernel_version/$rel"
    done <<<"$deps"
  done
  for f in modules.order modules.builtin modules.builtin.modinfo; do
    [[ -f "$mroot/$f" ]] && cp "$mroot/$f" "$stage/lib/modules/$kernel_version/"
  done
  depmod -b "$stage" "$kernel_version" || die "depmod for the initramfs failed"

  # Guest helper: find, enable and name the ivshmem BAR (PCI 1af4:1110, BAR 2 = the shared memory).
  cat >"$stage/usr/bin/nrx_ivshmem_bar" <<'HELPER'
#!/bin/sh
# nrx_ivshmem_bar [--phys] [N]: enable the N-th ivshmem-plain device (PCI 1af4:1110, default 0)
# and print its shared-memory BAR file (/sys/bus/pci/devices/BDF/resource2, to mmap MAP_SHARED),
# or with --phys the BAR's physical address (for busybox devmem). Exit 1 if there is none.
phys=0
[ "${1:-}" = --phys ] && { phys=1; shift; }
want=${1:-0}; i=0
for d in /sys/bus/pci/devices/*; do
  [ "$(cat "$d/vendor")" = 0x1af4 ] && [ "$(cat "$d/device")" = 0x1110 ] || continue
  if [ "$i" = "$want" ]; then
    [ "$(cat "$d/enable")" = 1 ] || echo 1 >"$d/enable" || { echo "nrx_ivshmem_bar: cannot enable $d" >&2; exit 1; }
    if [ "$phys" = 1 ]; then sed -n 3p "$d/resource" | cut -d' ' -f1; else echo "$d/resource2"; fi
    exit 0
  fi
  i=$((i + 1))
done
echo "nrx_ivshmem_bar: no ivshmem device number $want (PCI 1af4:1110)" >&2
exit 1
HELPER
  # Byte access for scripts: sysfs resource2 only supports mmap (read/write give EIO), and busybox
  # has no mmap tool, so these go through /dev/mem at the BAR's physical address (busybox devmem;
  # allowed because no driver claims the BAR). One devmem process per byte: for short strings.
  cat >"$stage/usr/bin/nrx_ivshmem_poke" <<'HELPER'
#!/bin/sh
# nrx_ivshmem_poke OFFSET STRING [N]: write STRING's bytes (no terminating NUL) at byte OFFSET of
# the N-th ivshmem device's shared memory (default 0), in order, one byte at a time.
[ $# -ge 2 ] || { echo "usage: nrx_ivshmem_poke OFFSET STRING [N]" >&2; exit 2; }
base=$(nrx_ivshmem_bar --phys "${3:-0}") || exit 1
addr=$((base + $1))
for b in $(printf %s "$2" | od -An -v -tu1); do
  devmem "$addr" 8 "$b" || exit 1
  addr=$((addr + 1))
done
HELPER
  cat >"$stage/usr/bin/nrx_ivshmem_peek" <<'HELPER'
#!/bin/sh
# nrx_ivshmem_peek OFFSET LEN [N]: print up to LEN bytes from byte OFFSET of the N-th ivshmem
# device's shared memory (default 0), stopping at the first NUL (a C string), no newline added.
[ $# -ge 2 ] || { echo "usage: nrx_ivshmem_peek OFFSET LEN [N]" >&2; exit 2; }
base=$(nrx_ivshmem_bar --phys "${3:-0}") || exit 1
addr=$((base + $1)); end=$((addr + $2))
while [ "$addr" -lt "$end" ]; do
  b=$(($(devmem "$addr" 8))) || exit 1
  [ "$b" -eq 0 ] && break
  printf "\\$(printf %03o "$b")"
  addr=$((addr + 1))
done
HELPER
  chmod 755 "$stage/usr/bin/nrx_ivshmem_bar" "$stage/usr/bin/nrx_ivshmem_poke" "$stage/usr/bin/nrx_ivshmem_peek"

  # Guest helper of vm.sh --shm cxl: turn the CXL type-3 (pmem) device into /dev/dax0.0. The steps
  # and why `-M mem` (the page map in RAM, not in the file the VMs share) are in the notes.
  cat >"$stage/usr/bin/nrx_cxl_dax" <<'HELPER'
#!/bin/sh
# nrx_cxl_dax [--phys]: make the CXL type-3 device's memory a device-dax (idempotent: only when
# /dev/dax0.0 does not exist yet): load cxl_acpi cxl_pci cxl_mem cxl_pmem nd_pmem dax_pmem
# device_dax, `cxl create-region -m -d decoder0.0 -w 1 -t pmem mem0`, `ndctl create-namespace -r
# region0 -m devdax -M mem -a 4096 -f`. Prints /dev/dax0.0 (mmap it MAP_SHARED, offset and length
# 4 KiB aligned: -a 4096), or with --phys the physical address where its data starts (busybox devmem; the
# kernel command line needs iomem=relaxed nopat, which vm.sh --shm cxl sets: device_dax claims the
# range and maps it write-back). Its data starts 2 MiB into the host's shm file. Exit 1 with the
# failing step's output.
phys=0
[ "${1:-}" = --phys ] && phys=1
dev=/dev/dax0.0; sysdax=/sys/bus/dax/devices/dax0.0
fail() { echo "nrx_cxl_dax: $*" >&2; [ -s /run/nrx_cxl_dax.log ] && sed 's/^/  /' /run/nrx_cxl_dax.log >&2; exit 1; }
wait_for() {  # PATH TENTHS: wait until PATH exists
  n=0
  while [ ! -e "$1" ] && [ "$n" -lt "$2" ]; do sleep 0.1; n=$((n + 1)); done
  [ -e "$1" ]
}
if [ ! -e "$dev" ]; then
  # One set-up at a time (busybox has no flock): a lock directory, removed on exit.
  n=0
  until mkdir /run/nrx_cxl_dax.lock 2>/dev/null; do
    [ "$n" -lt 1200 ] || fail "another nrx_cxl_dax holds /run/nrx_cxl_dax.lock for 120 s"
    sleep 0.1; n=$((n + 1))
  done
  trap 'rmdir /run/nrx_cxl_dax.lock 2>/dev/null' EXIT
  if [ ! -e "$dev" ]; then
    { command -v cxl && command -v ndctl; } >/dev/null \
      || fail "no cxl/ndctl in the image (install ndctl on the host and rebuild it with deploy/image.sh)"
    : >/run/nrx_cxl_dax.log
    modprobe -a cxl_acpi cxl_pci cxl_mem cxl_pmem nd_pmem dax_pmem device_dax >>/run/nrx_cxl_dax.log 2>&1 \
      || fail "modprobe of the CXL/dax modules failed"
    # The drivers probe asynchronously: wait for the memdev, the root decoder and their drivers.
    wait_for /sys/bus/cxl/devices/mem0 300 || fail "no CXL memdev mem0 (QEMU without cxl-type3, or not --shm cxl?)"
    wait_for /sys/bus/cxl/devices/decoder0.0 300 || fail "no CXL root decoder decoder0.0 (cxl_acpi: no CFMWS window?)"
    wait_for /sys/bus/cxl/devices/mem0/driver 300 || fail "cxl_mem did not bind mem0"
    wait_for /sys/bus/cxl/devices/pmem0/driver 300 || fail "cxl_pmem did not bind pmem0"
    if [ ! -e /sys/bus/nd/devices/region0 ]; then
      cxl create-region -m -d decoder0.0 -w 1 -t pmem mem0 >>/run/nrx_cxl_dax.log 2>&1 \
        || fail "cxl create-region -m -d decoder0.0 -w 1 -t pmem mem0 failed"
      wait_for /sys/bus/nd/devices/region0 300 || fail "no nvdimm region0 after cxl create-region"
    fi
    ndctl create-namespace -r region0 -m devdax -M mem -a 4096 -f >>/run/nrx_cxl_dax.log 2>&1 \
      || fail "ndctl create-namespace -r region0 -m devdax -M mem -a 4096 -f failed"
    wait_for "$dev" 300 || fail "no $dev after ndctl create-namespace"
  fi
  rmdir /run/nrx_cxl_dax.lock; trap - EXIT
fi
if [ "$phys" = 1 ]; then
  [ -r "$sysdax/resource" ] || fail "$sysdax/resource is missing"
  printf '0x%x\n' "$(cat "$sysdax/resource")"
else
  echo "$dev"
fi
HELPER
  chmod 755 "$stage/usr/bin/nrx_cxl_dax"

  # Guest helper for soft-RoCE on the private network (vm.sh --net private): the rxe device rxe0 on
  # eth0, checked through libibverbs (ibv_devinfo loads the rxe provider) and the GID table.
  cat >"$stage/usr/bin/nrx_rxe" <<'HELPER'
#!/bin/sh
# nrx_rxe [--gid-index]: soft-RoCE on eth0 (idempotent: the device is added only when rxe0 does
# not exist yet): load rdma_rxe ib_uverbs rdma_ucm, `rdma link add rxe0 type rxe netdev eth0`,
# wait (10 s at most, polling every 0.1 s) until `ibv_devinfo -d rxe0` shows PORT_ACTIVE and port 1
# has a non-zero RoCE v2 GID (and, when eth0 has an IPv4 address, its ::ffff:a.b.c.d GID). Prints
#   rxe0 netdev=eth0 state=PORT_ACTIVE gid_index=N gid=G ipv4_gid_index=M ipv4_gid=G4
# (N: the first RoCE v2 GID; M: the RoCE v2 GID of eth0's IPv4 address, - without one), or with
# --gid-index only N. Exit 1 with the failing step's output.
dev=rxe0; netdev=eth0; port=/sys/class/infiniband/rxe0/ports/1; log=/run/nrx_rxe.log
only_index=0
case "${1:-}" in
  --gid-index) only_index=1 ;;
  "") ;;
  *) echo "usage: nrx_rxe [--gid-index]" >&2; exit 2 ;;
esac
fail() { echo "nrx_rxe: $*" >&2; [ -s "$log" ] && sed 's/^/  /' "$log" >&2; exit 1; }
centis() { read -r up _ </proc/uptime; echo $((${up%.*} * 100 + 1${up#*.} - 100)); }
{ command -v rdma && command -v ibv_devinfo; } >/dev/null \
  || fail "no rdma/ibv_devinfo in the image (install iproute2 ibverbs-utils ibverbs-providers on the host and rebuild it with deploy/image.sh)"
[ -e /sys/class/net/$netdev ] \
  || fail "no $netdev (start the VMs with deploy/vm.sh --net private: /init configures $netdev when NRX_IP is set)"
deadline=$(($(centis) + 1000))
if [ ! -e /sys/class/infiniband/$dev ]; then
  # One set-up at a time (busybox has no flock): a lock directory, removed on exit.
  until mkdir /run/nrx_rxe.lock 2>/dev/null; do
    [ "$(centis)" -lt "$deadline" ] || fail "another nrx_rxe holds /run/nrx_rxe.lock"
    sleep 0.1
  done
  trap 'rmdir /run/nrx_rxe.lock 2>/dev/null' EXIT
  if [ ! -e /sys/class/infiniband/$dev ]; then
    : >"$log"
    modprobe -a rdma_rxe ib_uverbs rdma_ucm >>"$log" 2>&1 || fail "modprobe rdma_rxe ib_uverbs rdma_ucm failed"
    until [ "$(cat /sys/class/net/$netdev/operstate 2>/dev/null)" = up ]; do
      [ "$(centis)" -lt "$deadline" ] || fail "$netdev is not up (operstate $(cat /sys/class/net/$netdev/operstate))"
      sleep 0.1
    done
    rdma link add $dev type rxe netdev $netdev >>"$log" 2>&1 \
      || fail "rdma link add $dev type rxe netdev $netdev failed"
  fi
  rmdir /run/nrx_rxe.lock; trap - EXIT
fi
: >"$log"
has_ipv4=0
ip -4 addr show dev $netdev 2>/dev/null | grep -q ' inet ' && has_ipv4=1
zero=0000:0000:0000:0000:0000:0000:0000:0000
while :; do
  state=$(ibv_devinfo -d $dev 2>&1 | tee "$log" | sed -n 's/^[[:space:]]*state:[[:space:]]*\([A-Z_]*\).*/\1/p' | head -n 1)
  gid_index=-; gid=-; ipv4_index=-; ipv4_gid=-
  if [ "$state" = PORT_ACTIVE ] && [ -d $port/gids ]; then
    # The GID table (1024 entries for rxe, filled from index 0): `read` is a shell builtin, no
    # process per entry. Unused entries read as zeros (their gid_attrs/types file cannot be read);
    # the scan stops after 16 unused entries in a row.
    set -- $port/gids/*; n=$#; i=0; unused=0
    while [ "$i" -lt "$n" ] && [ "$unused" -lt 16 ]; do
      g=$zero; t=""
      read -r g 2>/dev/null <$port/gids/$i
      if [ "$g" = "$zero" ]; then
        unused=$((unused + 1))
      else
        unused=0
        if read -r t 2>/dev/null <$port/gid_attrs/types/$i && [ "$t" = "RoCE v2" ]; then
          [ "$gid_index" = - ] && { gid_index=$i; gid=$g; }
          case "$g" in 0000:0000:0000:0000:0000:ffff:*) [ "$ipv4_index" = - ] && { ipv4_index=$i; ipv4_gid=$g; } ;; esac
        fi
      fi
      [ "$gid_index" != - ] && { [ "$ipv4_index" != - ] || [ "$has_ipv4" = 0 ]; } && break
      i=$((i + 1))
    done
    [ "$gid_index" != - ] && { [ "$ipv4_index" != - ] || [ "$has_ipv4" = 0 ]; } && break
  fi
  if [ "$(centis)" -ge "$deadline" ]; then
    [ "$state" = PORT_ACTIVE ] || fail "$dev: port 1 is ${state:-not listed by ibv_devinfo}, not PORT_ACTIVE, after 10 s"
    [ "$gid_index" != - ] || fail "$dev: port 1 has no non-zero RoCE v2 GID after 10 s"
    fail "$dev: port 1 has no RoCE v2 GID for the IPv4 address of $netdev after 10 s"
  fi
  sleep 0.1
done
if [ "$only_index" = 1 ]; then
  echo "$gid_index"
else
  echo "$dev netdev=$netdev state=$state gid_index=$gid_index gid=$gid ipv4_gid_index=$ipv4_index ipv4_gid=$ipv4_gid"
fi
HELPER
  chmod 755 "$stage/usr/bin/nrx_rxe"

  # /init: mount the basics, load qemu_fw_cfg, read the environment (opt/nrx/env) and the script
  # (opt/nrx/script) QEMU passes, configure eth0 when the environment has NRX_IP (vm.sh --net
  # private), run the script with sh, print the exit marker, power off.
  cat >"$stage/init" <<'INIT'
#!/bin/sh
# /init of the nrx guest, written by deploy/image.sh.
export PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mkdir -p /dev/shm /dev/pts
mount -t tmpfs tmpfs /dev/shm
mount -t tmpfs tmpfs /tmp
mount -t tmpfs tmpfs /run
finish() {
  sync
  echo "NRX-EXIT $1"
  poweroff -f
  sleep 10
}
modprobe qemu_fw_cfg || { echo "nrx-init: modprobe qemu_fw_cfg failed"; finish 125; }
fw=/sys/firmware/qemu_fw_cfg/by_name/opt/nrx
if [ -r "$fw/env/raw" ]; then
  cat "$fw/env/raw" >/etc/nrx.env
  set -a; . /etc/nrx.env; set +a
fi
if [ ! -r "$fw/script/raw" ]; then
  echo "nrx-init: no script: QEMU was started without -fw_cfg name=opt/nrx/script,file=..."
  finish 126
fi
cat "$fw/script/raw" >/run/nrx-script
# The private network (vm.sh --net private): virtio-net NIC eth0 with address NRX_IP/24.
if [ -n "${NRX_IP:-}" ]; then
  modprobe -a virtio_pci virtio_net || { echo "nrx-init: modprobe virtio_pci virtio_net failed"; finish 125; }
  ip link set lo up
  # The driver binds the NIC while modprobe runs; allow a slow probe all the same (up to 10 s).
  n=0
  while [ ! -e /sys/class/net/eth0 ] && [ "$n" -lt 100 ]; do sleep 0.1; n=$((n + 1)); done
  [ -e /sys/class/net/eth0 ] || { echo "nrx-init: no eth0 (QEMU started without a virtio-net NIC?)"; finish 125; }
  if ! ip addr add "$NRX_IP/24" dev eth0 || ! ip link set eth0 up; then
    echo "nrx-init: cannot give eth0 the address $NRX_IP/24"; finish 125
  fi
fi
echo; echo "NRX-BOOTED vm=${NRX_VM_INDEX:-?} uptime=$(cut -d' ' -f1 /proc/uptime)s"
cd /root
sh /run/nrx-script </dev/null
finish $?
INIT
  chmod 755 "$stage/init"
  echo "root:x:0:0:root:/root:/bin/sh" >"$stage/etc/passwd"
  echo "root:x:0:" >"$stage/etc/group"

  # The kernel opens /dev/console for /init before anything is mounted, so the archive needs that
  # node. It is appended as a hand-written newc entry (char 5:1), so building needs no root.
  newc_entry() {  # name mode(octal) rdevmajor rdevminor
    local name="$1" namesize=$((${#1} + 1))
    printf '070701%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X' \
      0 "$((8#$2))" 0 0 1 0 0 0 0 "$3" "$4" "$namesize" 0
    printf '%s\0' "$name"
    local pad=$(((4 - (110 + namesize) % 4) % 4))
    ((pad)) && head -c "$pad" /dev/zero
    return 0
  }
  case "$compress" in gzip) comp=(gzip -6 -n) ;; zstd) comp=(zstd -q -T0 -10) ;; none) comp=(cat) ;; esac
  {
    (cd "$stage" && find . -mindepth 1 | LC_ALL=C sort | cpio -o -H newc -R 0:0 --reproducible --quiet)
    newc_entry dev/console 20600 5 1
    newc_entry TRAILER!!! 0 0 0
  } | "${comp[@]}" >"$initramfs.tmp" || die "writing $initramfs failed"
  mv "$initramfs.tmp" "$initramfs"
  echo "$stamp" >"$out/initramfs.stamp"
  say "initramfs: built, $(mib "$initramfs") ($(elapsed "$step"))"
  rm -rf "$stage"
fi

say "image ready in $out ($(elapsed "$total_start")): vmlinux + $(basename "$initramfs"), kernel $kernel_version"
printf 'NRX_KERNEL=%q\nNRX_INITRAMFS=%q\nNRX_KERNEL_VERSION=%q\n' "$out/vmlinux" "$initramfs" "$kernel_version"
