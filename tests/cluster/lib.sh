# What the VM tests of this folder share (sourced, not run): the preamble and options, messages,
# the skip checks (exit 77, ctest's SKIP_RETURN_CODE, with one "SKIP: ..." line on stdout), the
# `deploy/cluster.sh` steps of the cluster tests, and the rack tests' VM killed mid-run.
#
#   . "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
#   vm_test_init rack_test rack            # here, root, name; defaults for bin, dir, image
#   vms=3                                  # a default: the script takes --vms
#   script_option() {                      # the script's own options, if any
#     case "$1" in --log-test) log_test="${2:?--log-test needs a path}" ;; *) return 1 ;; esac
#   }
#   parse_options "$@"                     # --bin --dir --image --vms --help, then script_option
#   need_qemu; need_vm_network; need_binary "$bin" nrx

# Sets here (this folder), root (the repository), the test's name for its messages, and the
# defaults of --bin, --dir (build/cluster/RUN_DIR) and --image.
vm_test_init() {  # name, run directory under build/cluster
  here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
  root="$(cd "$here/../.." && pwd)"
  test_name="$1"
  bin="$root/build/bin/nrx"
  dir="$root/build/cluster/$2"
  image="$root/build/guest"
}

# A line on stdout, prefixed with the test's name.
say() { printf '%s: %s\n' "$test_name" "$*"; }
# A line on stderr, prefixed with the test's name.
note() { printf '%s: %s\n' "$test_name" "$*" >&2; }
# The test fails: the reason on stderr, exit 1.
die() { printf '%s: FAILED: %s\n' "$test_name" "$*" >&2; exit 1; }

# --help: the script's header comment (its lines after the #! line, up to the first other line).
print_help() { awk 'NR == 1 { next } !/^#/ { exit } { sub(/^# ?/, ""); print }' "$0"; }

# The options every test takes (--bin PATH, --dir DIR, --image DIR, -h/--help), and --vms N where
# the script has set a default for vms. Any other option goes to the script's `script_option
# OPTION VALUE` where it defines one (returning 1 for an option it does not know either); every
# option takes a value.
parse_options() {
  while (($#)); do
    case "$1" in
      --bin) bin="${2:?--bin needs a path}" ;;
      --dir) dir="${2:?--dir needs a directory}" ;;
      --image) image="${2:?--image needs a directory}" ;;
      --vms) [[ -v vms ]] || die "unknown option '$1' (see --help)"
             vms="${2:?--vms needs a number}" ;;
      -h|--help) print_help; exit 0 ;;
      *) declare -F script_option >/dev/null && script_option "$1" "${2-}" ||
           die "unknown option '$1' (see --help)" ;;
    esac
    shift 2
  done
}

# Skip without QEMU.
need_qemu() {
  if ! command -v qemu-system-x86_64 >/dev/null; then
    echo "SKIP: qemu-system-x86_64 is not installed (apt-get install qemu-system-x86)"
    exit 77
  fi
}

# Skip where the host cannot make the VMs' private network (`vm.sh --net private`).
need_vm_network() {
  if ((EUID != 0)) || ! command -v ip >/dev/null || [[ ! -c /dev/net/tun ]]; then
    echo "SKIP: the VM network needs root, ip (iproute2) and /dev/net/tun"
    exit 77
  fi
}

# Skip where the guest image cannot get soft-RoCE: the host's rdma tool, ibverbs and rxe provider.
need_rxe_provider() {
  local provider=(/usr/lib/x86_64-linux-gnu/libibverbs/librxe-rdmav*.so)
  if [[ ! -x /usr/bin/rdma || ! -x /usr/bin/ibv_devinfo || ! -f "${provider[0]}" || ! -f /etc/libibverbs.d/rxe.driver ]]; then
    echo "SKIP: the guest image needs rdma, ibv_devinfo and the rxe provider (apt-get install iproute2 ibverbs-utils ibverbs-providers)"
    exit 77
  fi
}

# Skip where the guest image cannot get the cxl and ndctl tools (for /dev/dax0.0).
need_cxl_tools() {
  if ! command -v cxl >/dev/null || ! command -v ndctl >/dev/null; then
    echo "SKIP: the guest image needs the cxl and ndctl tools (apt-get install ndctl)"
    exit 77
  fi
}

# Fails unless PATH is an executable (a binary of the build).
need_binary() {  # path, name
  [[ -x "$1" ]] || die "no $2 binary at $1 (build it first: ./nrx build)"
}

# Fails if a QEMU whose console is in CONSOLE_DIR still runs.
check_qemu_gone() {  # console directory, after what
  if pgrep -f "file:$1/vm[0-9]*.console" >/dev/null; then die "QEMU processes of $1 still run after $2"; fi
}

# deploy/cluster.sh COMMAND [options] with this test's binary and run directory.
cluster_sh() {
  NRX_BIN="$bin" "$root/deploy/cluster.sh" "$@" --dir "$dir" --bin "$bin"
}

# From here on the cluster goes down however the script ends (a failure, Ctrl-C, TERM).
cluster_down_on_exit() {
  trap 'rc=$?; cluster_sh down >/dev/null 2>&1 || true; exit $rc' EXIT
  trap 'exit 130' INT
  trap 'exit 143' TERM
}

# The last step: `down`, which must leave no QEMU behind.
cluster_down() {
  cluster_sh down || die "nrx cluster down failed"
  trap - EXIT
  check_qemu_gone "$dir/vms" down
}

# Checks `nrx cluster run kv` output: every one of VMS machines ok with NR-FS calls, equal digests.
check_kv_run() {  # run output, vms
  [[ $(grep -cE '^[0-9]+ +[0-9]+ +nrx-vm[0-9]+ +ok ' <<<"$1") -eq "$2" ]] || die "not every machine reported ok"
  grep -q 'has the same digests' <<<"$1" || die "the digests differ"
  local i
  for ((i = 0; i < $2; i++)); do
    grep -Eq " nrx-vm$i +ok +[1-9][0-9]* " <<<"$1" || die "vm$i made no NR-FS calls"
  done
}

# SIGKILLs the QEMU of node 1 while `nrx cluster run kv` runs and node 1 has made calls (so it
# appends), then checks that the run still succeeds: node 1 reported fenced, the other VMS - 1
# machines ok with equal digests, every entry it had applied kept. The run's output is in
# $dir/run2.out; sets victim (node 1's VM name) and killed (SECONDS at the kill).
kill_node1_mid_run() {  # vms
  local cl=(--dir "$dir") vpid runner deadline rc
  victim="$("$bin" cluster status "${cl[@]}" | awk '$1 == 1 {print $2}')"
  [[ "$victim" =~ ^nrx-vm[0-9]+$ ]] || die "cannot tell which VM is node 1"
  vpid="$(cat "$dir/vms/${victim#nrx-}.pid")"
  "$bin" cluster run kv "${cl[@]}" --seconds 12 --timeout 300 >"$dir/run2.out" 2>&1 &
  runner=$!
  deadline=$((SECONDS + 120))
  # A condition, not a time: node 1 runs and has made NR-FS calls.
  until "$bin" cluster status "${cl[@]}" | grep -Eq "^1 +$victim +live +[0-9.]+ +[0-9.]+ s +RUNNING +[1-9]"; do
    ((SECONDS < deadline)) || die "node 1 never ran its workload"
    kill -0 "$runner" 2>/dev/null || die "the run ended before node 1 ran: $(cat "$dir/run2.out")"
    sleep 0.2
  done
  kill -KILL "$vpid"
  killed=$SECONDS
  note "killed $victim (QEMU pid $vpid) mid-run"
  rc=0
  wait "$runner" || rc=$?
  cat "$dir/run2.out"
  [[ $rc -eq 0 ]] || die "the run with a killed VM failed (rc $rc)"
  grep -Eq "^1 +1 +$victim +fenced " "$dir/run2.out" || die "$victim was not reported fenced"
  [[ $(grep -cE '^[0-9]+ +[0-9]+ +nrx-vm[0-9]+ +ok ' "$dir/run2.out") -eq $(($1 - 1)) ]] || die "not every survivor reported ok"
  grep -q 'has the same digests' "$dir/run2.out" || die "the survivors' digests differ"
  grep -q "applied log entries on every survivor: kept" "$dir/run2.out" || die "entries the dead machine applied are missing"
}
