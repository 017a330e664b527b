# Shell helpers shared by the bring-up scripts; each defines log() before sourcing this file.

wait_for() {  # wait_for SECONDS DESCRIPTION COMMAND...: until COMMAND succeeds, or log and fail
  local deadline=$((SECONDS + $1)) what=$2; shift 2
  until "$@" >/dev/null 2>&1; do
    if [ $SECONDS -ge $deadline ]; then log "timed out waiting for $what"; return 1; fi
    sleep 0.2
  done
}

# The nodes' network, for the multi-host scripts; each sets BRIDGE, BRIDGE_MAC, SUBMIT_ADDRESS and
# NODES and defines node_address() before calling these.

namespaces_up() {  # the bridge with the submit host's address, and each node's namespace on it (idempotent)
  if ! ip link show "$BRIDGE" >/dev/null 2>&1; then
    log "creating bridge $BRIDGE ($SUBMIT_ADDRESS/24)"
    ip link add "$BRIDGE" type bridge
  fi
  [ "$(cat "/sys/class/net/$BRIDGE/address")" = "$BRIDGE_MAC" ] || ip link set "$BRIDGE" address "$BRIDGE_MAC"
  ip -4 addr show dev "$BRIDGE" | grep -q "inet $SUBMIT_ADDRESS/" || ip addr add "$SUBMIT_ADDRESS/24" dev "$BRIDGE"
  ip link set "$BRIDGE" up

  local node
  for node in "${NODES[@]}"; do
    if ! ip netns list | grep -qw "^$node"; then
      log "creating network namespace $node ($(node_address "$node"))"
      ip netns add "$node"
    fi
    if ! ip netns exec "$node" ip link show eth0 >/dev/null 2>&1; then
      ip link del "veth-$node" 2>/dev/null || true  # left over from a namespace deleted under a node
      ip link add "veth-$node" type veth peer name eth0 netns "$node"
      # The new eth0 has a new MAC: forget the old one, or the submit host keeps sending there.
      ip neigh flush to "$(node_address "$node")" dev "$BRIDGE" 2>/dev/null || true
    fi
    ip link set "veth-$node" master "$BRIDGE"
    ip link set "veth-$node" up   # also undoes a test's `ip link set veth-NODE down`
    ip netns exec "$node" ip link set lo up
    ip netns exec "$node" ip -4 addr show dev eth0 | grep -q "inet $(node_address "$node")/" ||
      ip netns exec "$node" ip addr add "$(node_address "$node")/24" dev eth0
    ip netns exec "$node" ip link set eth0 up
  done
}

namespaces_down() {  # each node's namespace, its hosts file and its link, then the bridge
  local node
  for node in "${NODES[@]}"; do
    ip link del "veth-$node" 2>/dev/null || true
    ip netns del "$node" 2>/dev/null || true
    rm -rf "/etc/netns/$node"
  done
  rmdir /etc/netns 2>/dev/null || true
  ip link del "$BRIDGE" 2>/dev/null || true
}
