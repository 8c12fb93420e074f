#!/usr/bin/env bash
# netns-rig.sh — a multi-host test rig on one machine, made of Linux network namespaces.
#
#   sudo cluster/netns-rig.sh up N      # N "hosts": namespaces hv-node1..N
#   sudo cluster/netns-rig.sh status
#   sudo cluster/netns-rig.sh down      # removes everything `up` made; safe to repeat
#
# Layout (all private addresses, nothing routed anywhere else):
#
#   root namespace (coordinator side)          namespace hv-node<i>
#   hv-br0 10.77.0.1/24 (bridge) --- hv-veth<i> <==veth==> eth0 10.77.0.<i+1>/24, lo up
#
# Each namespace has only its loopback and a link route for 10.77.0.0/24 (no default route),
# so workers reach the coordinator at 10.77.0.1 and each other at 10.77.0.<i+1>, and nothing
# outside the rig. Each node has its own loopback, ports and interfaces, so the rig tests
# addresses, ports and hosts-file handling as on a real cluster; CPU, memory and filesystem
# are still shared.
#
# `up` prints a hosts file on stdout (the IPs as trailing comments), e.g.
#   sudo cluster/netns-rig.sh up 3 > /tmp/hosts.netns     (same as cluster/hosts.netns)
# The launcher starts each worker with the command template
#   ip netns exec {host} {cmd}
# i.e. `hv-coord launch --nodes cluster/hosts.netns --coord-address 10.77.0.1 --template 'ip netns exec {host} {cmd}'`;
# the coordinator stays in the root namespace and must listen on 10.77.0.1. `ip netns exec`
# needs root, so workers run as root unless the template adds `sudo -u USER` / `setpriv`.
#
# If traffic between nodes is dropped: with br_netfilter loaded and
# net.bridge.bridge-nf-call-iptables=1, iptables' FORWARD chain (Docker sets its policy to
# DROP) also filters bridged frames; `status` warns about that.
set -Eeuo pipefail

BR=hv-br0
NS_PREFIX=hv-node
NET=10.77.0            # /24; .1 is the bridge, .<i+1> is node i
PROG=$(basename "$0")

die() { echo "$PROG: $*" >&2; exit 1; }

need() {
    command -v ip >/dev/null 2>&1 || die "'ip' (iproute2) not found; install iproute2"
    [[ $(id -u) -eq 0 ]] || die "must run as root (network namespaces and bridges need CAP_NET_ADMIN); try: sudo $0 $*"
}

rig_namespaces() { ip netns list 2>/dev/null | awk '{print $1}' | grep -E "^${NS_PREFIX}[0-9]+\$" | sort -V || true; }

up() {
    local n=${1:-}
    [[ $n =~ ^[0-9]+$ ]] && (( n >= 1 && n <= 200 )) || die "usage: $PROG up N   (N = number of nodes, 1..200)"
    if ip link show "$BR" >/dev/null 2>&1 || [[ -n $(rig_namespaces) ]]; then
        die "a rig is already up (bridge $BR or namespaces ${NS_PREFIX}*); run '$PROG down' first"
    fi
    # Refuse to shadow a network this machine already uses.
    if [[ -n $(ip -4 route show "$NET.0/24") ]] || ip -4 -o addr show | grep -q " inet $NET\."; then
        die "$NET.0/24 is already in use on this machine (ip route / ip addr); edit NET in $0"
    fi
    trap 'echo "$PROG: up failed; removing what was made" >&2; down >/dev/null 2>&1 || true' ERR

    ip link add "$BR" type bridge
    ip addr add "$NET.1/24" dev "$BR"
    ip link set "$BR" up
    local i ns
    for (( i = 1; i <= n; i++ )); do
        ns=$NS_PREFIX$i
        ip netns add "$ns"
        ip link add "hv-veth$i" type veth peer name "hv-peer$i"
        ip link set "hv-peer$i" netns "$ns"
        ip -n "$ns" link set "hv-peer$i" name eth0
        ip -n "$ns" addr add "$NET.$((i + 1))/24" dev eth0
        ip -n "$ns" link set lo up
        ip -n "$ns" link set eth0 up
        ip link set "hv-veth$i" master "$BR"
        ip link set "hv-veth$i" up
    done
    trap - ERR

    echo "# hv netns rig: $n node(s); coordinator (root namespace, bridge $BR) at $NET.1"
    echo "# launcher template: ip netns exec {host} {cmd}"
    for (( i = 1; i <= n; i++ )); do
        echo "$NS_PREFIX$i slots=1   # $NET.$((i + 1))"
    done
}

down() {
    local ns
    # Deleting a namespace destroys its end of the veth pair, and with it the root end.
    for ns in $(rig_namespaces); do ip netns del "$ns"; done
    # Root ends left over from an interrupted `up` (peer not yet moved into a namespace).
    for dev in $(ip -o link show 2>/dev/null | awk -F': ' '{print $2}' | sed 's/@.*//' | grep -E '^hv-(veth|peer)[0-9]+$' || true); do
        ip link del "$dev" 2>/dev/null || true
    done
    if ip link show "$BR" >/dev/null 2>&1; then ip link del "$BR"; fi
    echo "$PROG: rig removed (namespaces ${NS_PREFIX}*, bridge $BR)" >&2
}

status() {
    local namespaces; namespaces=$(rig_namespaces)
    if ! ip link show "$BR" >/dev/null 2>&1 && [[ -z $namespaces ]]; then echo "no rig is up"; return 0; fi
    echo "bridge:"; ip -br addr show dev "$BR" 2>/dev/null || echo "  $BR missing"
    local ns
    for ns in $namespaces; do
        echo "$ns:"; ip -n "$ns" -br addr show | sed 's/^/  /'
    done
    if [[ $(cat /proc/sys/net/bridge/bridge-nf-call-iptables 2>/dev/null || echo 0) == 1 ]]; then
        echo "warning: net.bridge.bridge-nf-call-iptables=1: iptables FORWARD rules also filter traffic between nodes" >&2
    fi
}

cmd=${1:-}
shift || true
case $cmd in
    up)     need "$cmd" "$@"; up "$@" ;;
    down)   need "$cmd"; down ;;
    status) need "$cmd"; status ;;
    *)      echo "usage: $PROG up N | down | status" >&2; exit 2 ;;
esac
