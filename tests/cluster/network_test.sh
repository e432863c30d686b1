#!/usr/bin/env bash
# Cluster network test: 3 QEMU VMs (--vms N) on the private network of `deploy/vm.sh --net private`
# (a bridge at 10.77.0.1 and one tap per VM in a network namespace of the run). The host starts a
# TCP listener inside the namespace (`vm.sh exec`, python3) on 10.77.0.1; each VM pings the host
# and every other VM, sends its index to the listener, then waits until every VM has reported (so
# no VM powers off while a peer still pings it). Checks every VM's exit code, that the listener got
# every index from the right address, and that `down` deleted the namespace. Exit 77 (ctest
# SKIP_RETURN_CODE) where qemu-system-x86_64 is not installed or the host cannot make the network.
#
#   tests/cluster/network_test.sh [--vms N] [--bin PATH] [--dir DIR] [--image DIR]
set -euo pipefail

. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
vm_test_init network_test network
vms=3
port=7700
parse_options "$@"
[[ "$vms" =~ ^[0-9]+$ && "$vms" -ge 2 && "$vms" -le 245 ]] || die "--vms must be a number from 2 to 245"

need_qemu
need_vm_network
command -v python3 >/dev/null || { echo "SKIP: the host-side listener needs python3"; exit 77; }
need_binary "$bin" nrx
dir="$(realpath -m "$dir")"
vm=("$root/deploy/vm.sh")

start=$SECONDS
listener=""
cleanup() {
  local rc=$?
  trap - EXIT
  if [[ -n "$listener" ]] && kill -0 "$listener" 2>/dev/null; then
    kill "$listener" 2>/dev/null || true
    wait "$listener" 2>/dev/null || true
  fi
  "${vm[@]}" down --dir "$dir" || rc=1
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# The guest's script (busybox sh). Every wait has a deadline on the guest's uptime clock.
mkdir -p "$dir"
cat >"$dir/network_guest.sh" <<'GUEST'
set -u
port=$NRX_NET_TEST_PORT
end=$(($(cut -d. -f1 /proc/uptime) + 60))
time_left() { [ "$(cut -d. -f1 /proc/uptime)" -lt "$end" ]; }
fail() { echo "net: FAIL: $*"; exit 1; }
echo "net: vm $NRX_VM_INDEX of $NRX_VMS is $NRX_IP; host $NRX_HOST_IP; peers $NRX_PEERS"
ip addr show dev eth0 | grep -q "inet $NRX_IP/24" || { ip addr; fail "eth0 does not have $NRX_IP/24"; }
n=0
for peer in $NRX_HOST_IP $NRX_PEERS; do
  [ "$peer" = "$NRX_IP" ] && continue
  tries=1
  # A peer may still be booting: retry until the deadline.
  until ping -c 1 -W 5 "$peer" >/dev/null 2>&1; do
    time_left || fail "no ping reply from $peer after $tries tries"
    tries=$((tries + 1)); sleep 0.2
  done
  n=$((n + 1))
  echo "net: ping $peer ok (try $tries)"
done
# The host's listener starts once every VM has booted: retry until it answers.
tries=1
until [ "$(echo "$NRX_VM_INDEX" | nc -w 5 "$NRX_HOST_IP" "$port" 2>/dev/null)" = "ok $NRX_VM_INDEX" ]; do
  time_left || fail "the host's listener $NRX_HOST_IP:$port did not take index $NRX_VM_INDEX ($tries tries)"
  tries=$((tries + 1)); sleep 0.2
done
echo "net: sent index $NRX_VM_INDEX to $NRX_HOST_IP:$port (try $tries)"
# Barrier: every VM reports after its pings, so once all have reported no one still pings us.
until [ "$(echo wait | nc -w 5 "$NRX_HOST_IP" "$port" 2>/dev/null)" = "all $NRX_VMS" ]; do
  time_left || fail "not every VM reported to the host"
  sleep 0.2
done
echo "net: done: $n pings answered, all $NRX_VMS VMs reported"
GUEST

# The host's listener: one line per connection. A number is a VM's index: recorded with the
# sender's address, answered `ok N`. `wait` is answered `all N` once N distinct VMs reported
# (else `have K`). It stops when killed or after its time limit.
cat >"$dir/listener.py" <<'LISTENER'
import socket, sys, time
host, port, log_path, ready_path, vms, limit = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], int(sys.argv[5]), float(sys.argv[6])
srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind((host, port))
srv.listen(16)
srv.settimeout(0.5)
with open(ready_path, "w") as f:
    f.write("ready\n")
got = {}
deadline = time.monotonic() + limit
with open(log_path, "a") as log:
    while time.monotonic() < deadline:
        try:
            conn, (peer, _) = srv.accept()
        except socket.timeout:
            continue
        with conn:
            conn.settimeout(5)
            data = b""
            try:
                while b"\n" not in data and len(data) < 64:
                    chunk = conn.recv(64)
                    if not chunk:
                        break
                    data += chunk
            except OSError:
                continue
            line = data.decode(errors="replace").strip()
            if line == "wait":
                reply = f"all {vms}" if len(got) >= vms else f"have {len(got)}"
            elif line.isdigit():
                got[int(line)] = peer
                log.write(f"{line} {peer}\n")
                log.flush()
                reply = f"ok {line}"
            else:
                reply = "?"
            try:
                conn.sendall((reply + "\n").encode())
            except OSError:
                pass
LISTENER

"${vm[@]}" up --vms "$vms" --net private --shm none --dir "$dir" --image "$image" --bin "$bin" \
  --script "$dir/network_guest.sh" --env "NRX_NET_TEST_PORT=$port" --boot-timeout 120 ||
  die "deploy/vm.sh up failed (consoles in $dir)"
netns="$(sed -n 's/^NETNS=//p' "$dir/cluster.env")"
[[ -n "$netns" ]] || die "$dir/cluster.env records no network namespace (NETNS)"

rm -f "$dir/listener.log" "$dir/listener.ready"
"${vm[@]}" exec --dir "$dir" -- python3 "$dir/listener.py" 10.77.0.1 "$port" \
  "$dir/listener.log" "$dir/listener.ready" "$vms" 150 &
listener=$!
deadline=$((SECONDS + 15))
until [[ -f "$dir/listener.ready" ]]; do
  kill -0 "$listener" 2>/dev/null || die "the listener (vm.sh exec -- python3) exited before it listened"
  ((SECONDS < deadline)) || die "the listener did not listen on 10.77.0.1:$port within 15 s"
  sleep 0.05
done
say "listener on 10.77.0.1:$port in namespace $netns"

wait_rc=0
"${vm[@]}" wait --dir "$dir" --timeout 120 || wait_rc=$?
((wait_rc == 0)) || die "not every VM exited 0 (consoles in $dir)"

# Every index, once, from the address of that VM.
for ((i = 0; i < vms; i++)); do
  grep -qxF "$i 10.77.0.$((10 + i))" "$dir/listener.log" ||
    die "the listener has no index $i from 10.77.0.$((10 + i)) (got: $(tr '\n' ',' <"$dir/listener.log"))"
  grep -aq "net: done: $vms pings answered" "$dir/vm$i.console" ||
    die "vm$i did not report $vms answered pings (console: $dir/vm$i.console)"
done
got="$(cut -d' ' -f1 "$dir/listener.log" | sort -n | uniq | tr '\n' ',' | sed 's/,$//')"

kill "$listener" 2>/dev/null || true
wait "$listener" 2>/dev/null || true
listener=""
trap - EXIT
"${vm[@]}" down --dir "$dir" || die "deploy/vm.sh down failed"
if ip netns list | awk '{ print $1 }' | grep -qxF "$netns"; then die "the namespace $netns still exists after down"; fi
check_qemu_gone "$dir" down
say "passed in $((SECONDS - start)) s: $vms VMs pinged the host and each other, the listener got $got"
