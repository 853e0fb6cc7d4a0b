#!/bin/sh
# Starts one ringkv node in a StatefulSet pod.
#
# ringkv member addresses are ip:port (no DNS names), so the seed members' addresses are
# resolved here, at start: ordinals 0..SEEDS-1 are the [[members]] that seed a new cluster,
# every higher ordinal is a pod the autoscaler added, which starts with --addr and --join and
# becomes a member once the autoscaler commits its join.
#
# Environment (set by deploy/ringkv.yaml): POD_NAME, POD_IP, NAMESPACE from the downward API;
# optional SERVICE (headless Service, default ringkv), SEEDS (default 3), LISTEN_PORT (7400),
# TEMPLATE (the ConfigMap's cluster.toml), CONFIG (the file written, default /tmp/cluster.toml),
# DATA_DIR (the volume, default /data). RINGKV__CLUSTER__COOKIE (from a Secret) overrides the
# template's cookie: ringkv reads RINGKV__<SECTION>__<KEY> over the file.
set -eu

: "${POD_NAME:?POD_NAME must be set from metadata.name}"
: "${POD_IP:?POD_IP must be set from status.podIP}"
: "${NAMESPACE:?NAMESPACE must be set from metadata.namespace}"
SERVICE=${SERVICE:-ringkv}
SEEDS=${SEEDS:-3}
LISTEN_PORT=${LISTEN_PORT:-7400}
TEMPLATE=${TEMPLATE:-/etc/ringkv/cluster.toml}
CONFIG=${CONFIG:-/tmp/cluster.toml}
DATA_DIR=${DATA_DIR:-/data}

SET=${POD_NAME%-*}        # ringkv-4 -> ringkv
ORDINAL=${POD_NAME##*-}   # ringkv-4 -> 4
case "$ORDINAL" in
    '' | *[!0-9]*) echo "entrypoint: $POD_NAME is not a StatefulSet pod name (NAME-N)" >&2; exit 2 ;;
esac

# Seed IPs seen at the last start, so a restarting pod is not held up by a seed that is being
# rescheduled: a node that already has its ring (placement.rmp) uses [[members]] only as a
# fallback contact list, while a brand-new cluster needs every seed's current address.
CACHE="$DATA_DIR/.seed-ips"
mkdir -p "$DATA_DIR"
touch "$CACHE"
if [ -d "$DATA_DIR/$POD_NAME" ]; then RESTART=1; else RESTART=0; fi

# Prints the IPv4/IPv6 address NAME resolves to, waiting until it does (a pod's DNS record
# appears once it has an IP: the Service publishes not-ready addresses). On a restart, falls
# back to the cached address after 60 s.
resolve() {
    name=$1
    waited=0
    while :; do
        # getent prints "IP NAME..."; take the first word of the first line.
        ip=$(getent hosts "$name" | { read -r first _ || true; echo "${first:-}"; })
        if [ -n "$ip" ]; then echo "$ip"; return 0; fi
        cached=$(sed -n "s/^$name //p" "$CACHE")
        if [ "$RESTART" = 1 ] && [ -n "$cached" ] && [ "$waited" -ge 60 ]; then
            echo "entrypoint: $name does not resolve; using its last address $cached" >&2
            echo "$cached"
            return 0
        fi
        if [ $((waited % 20)) -eq 0 ]; then echo "entrypoint: waiting for $name to resolve" >&2; fi
        sleep 2
        waited=$((waited + 2))
    done
}

# host:port for an IP, bracketing IPv6.
hostport() {
    case "$1" in *:*) echo "[$1]:$LISTEN_PORT" ;; *) echo "$1:$LISTEN_PORT" ;; esac
}

# A pod that comes back with another IP is still known to the ring by its old one (the ring
# records ip:port); say so loudly, since peers cannot reach it until it is replaced.
if [ -f "$DATA_DIR/.pod-ip" ] && [ "$(cat "$DATA_DIR/.pod-ip")" != "$POD_IP" ]; then
    echo "entrypoint: WARNING: $POD_NAME was $(cat "$DATA_DIR/.pod-ip") and is now $POD_IP;" \
        "the ring still names the old address (see docs/kubernetes.md, Limitations)" >&2
fi
echo "$POD_IP" > "$DATA_DIR/.pod-ip"

MEMBERS=""
NEWCACHE="$CACHE.new"
: > "$NEWCACHE"
i=0
while [ "$i" -lt "$SEEDS" ]; do
    seed="$SET-$i"
    if [ "$seed" = "$POD_NAME" ]; then
        ip=$POD_IP
    else
        ip=$(resolve "$seed.$SERVICE.$NAMESPACE.svc.cluster.local")
    fi
    echo "$seed.$SERVICE.$NAMESPACE.svc.cluster.local $ip" >> "$NEWCACHE"
    MEMBERS="$MEMBERS
[[members]]
id = \"$seed\"
addr = \"$(hostport "$ip")\"
"
    if [ "$i" -eq 0 ]; then FIRST=$(hostport "$ip"); fi
    i=$((i + 1))
done
mv "$NEWCACHE" "$CACHE"

# The template carries every section but [[members]]; members go last so no key of a later
# section is taken as a member's.
{ cat "$TEMPLATE"; echo "$MEMBERS"; } > "$CONFIG"
echo "entrypoint: wrote $CONFIG; seeds: $(sed -n 's/^addr = "\(.*\)"$/\1/p' "$CONFIG" | tr '\n' ' ')" >&2

if [ "$ORDINAL" -lt "$SEEDS" ]; then
    exec ringkv --config "$CONFIG" node --node "$POD_NAME"
fi
# An added pod: it fetches the ring from the first seed and holds no data until the
# autoscaler (on the claimant) commits its join.
exec ringkv --config "$CONFIG" node --node "$POD_NAME" --addr "$(hostport "$POD_IP")" --join "$FIRST"
