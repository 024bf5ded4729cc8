#!/usr/bin/env bash
# shell-agent.sh: the 2014 way, as a baseline for bench/run.
#
# Does the job of `shoal-agent run --once` the way Cloudbreak's 2014 user-data did it:
# curl polls the metadata endpoint (every 5 s, 60 tries), jq reads the answer, and the
# host is set up with `ip`, `bridge` and the docker CLI. The job is the agent's own,
# so the two can be timed against each other and must leave the same state: the
# Docker bridge network `shoal` (bridge `shoal0`, the node's slice and gateway, the
# overlay MTU), the VXLAN device `shoal-vx` enslaved to it with one all-zeros FDB
# entry per peer, every image present (loaded from its baked tarball if missing), and
# the node's containers with their planned address, FQDN, host entries of every other
# container, environment, ports, volumes and restart policy. At the end it reports
# `ready` to the coordinator.
#
# It is written as well as a shell script can be: one jq call parses the plan into
# shell variables, `ip -batch` and `bridge -batch` make one process each for all the
# netlink work, the docker CLI is called once per object and containers are started
# in parallel. What it does not do (the agent does): validate the plan before acting,
# undo a half-made network on failure, report each phase with timings, check that the
# containers stay up, converge again on later changes.
#
# Usage: shell-agent.sh [--fetch-only] CONFIG
#   CONFIG: the agent configuration (/etc/shoal/agent.json).
#   --fetch-only: stop once the plan is fetched and print `plan-received <unix µs>`
#                 (bench/run times 5 s polling with it).
# Environment: DOCKER_HOST (the docker CLI's), SHELL_AGENT_IMAGE_DIR (baked tarballs,
# default /var/lib/shoal/images), SHELL_AGENT_POLL (seconds between polls, default 5).
set -euo pipefail

fetch_only=0
if [ "${1:-}" = "--fetch-only" ]; then
    fetch_only=1
    shift
fi
[ $# -eq 1 ] || {
    echo "usage: $0 [--fetch-only] CONFIG" >&2
    exit 2
}
cfg=$1
image_dir=${SHELL_AGENT_IMAGE_DIR:-/var/lib/shoal/images}
poll=${SHELL_AGENT_POLL:-5}

die() {
    echo "shell-agent: $*" >&2
    exit 1
}

IFS=$'\t' read -r url key node token < <(jq -r '[.metadata_url, .cluster_key, .node_id, .node_token] | @tsv' "$cfg")
url=${url%/}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
# The coordinator's CA, when its metadata API serves TLS (the default).
tls=()
if jq -e '.ca_cert_pem' "$cfg" >/dev/null 2>&1; then
    jq -r '.ca_cert_pem' "$cfg" >"$work/ca.pem"
    tls=(--cacert "$work/ca.pem")
fi
plan=$work/plan.json

# The 2014 loop: 204 until the plan is ready, then 200 with it.
tries=0
while :; do
    code=$(curl -sS "${tls[@]}" -o "$plan" -w '%{http_code}' "$url/metadata/v1/$key" 2>/dev/null) || code=000
    [ "$code" = 200 ] && break
    tries=$((tries + 1))
    [ "$tries" -lt 60 ] || die "no plan after 60 tries (last answer: HTTP $code)"
    sleep "$poll"
done
if [ "$fetch_only" -eq 1 ]; then
    echo "plan-received $(date +%s%6N)"
    exit 0
fi

# Set by the eval below.
cluster='' generation='' overlay='' vni='' port='' planned_mtu='' private_ip='' slice='' gateway=''
uses_overlay=0 peers=() images=() runs=()
# One jq call turns the plan into shell assignments (quoted with @sh) and one
# `docker run` command line per container.
eval "$(jq -r --arg node "$node" '
  . as $p
  | ([$p.nodes[] | select(.id == $node)] | first // error("node \($node) is not in the plan")) as $n
  | [$p.nodes[] as $m | $m.containers[]
      | {fqdn: .hostname, ip: (if .network == "host" then $m.private_ip else (.address // $m.private_ip) end)}] as $hosts
  | "cluster=\($p.cluster | @sh)",
    "generation=\($p.generation)",
    "overlay=\($p.network.overlay | @sh)",
    "vni=\($p.network.vni)",
    "port=\($p.network.port // 4789)",
    "planned_mtu=\($p.network.mtu // "" | tostring | @sh)",
    "private_ip=\($n.private_ip | @sh)",
    "slice=\($n.slice | @sh)",
    "gateway=\($n.gateway | @sh)",
    "uses_overlay=\(if any($n.containers[]; .network != "host") then 1 else 0 end)",
    "peers=(\([$p.nodes[] | select(.id != $node) | .private_ip | @sh] | join(" ")))",
    "images=(\([$n.containers[].image] | unique | map(@sh) | join(" ")))",
    "runs=()",
    ($n.containers[] as $c
     | ($c.hostname | split(".")) as $parts
     | ($parts[0]) as $short
     | ([$hosts[] | (.fqdn | split(".")[0]) as $s
         | if .fqdn == $c.hostname and $c.network == "host" and $s != .fqdn
           then "--add-host=\(.fqdn) \($s):\(.ip)"
           else "--add-host=\(.fqdn):\(.ip)",
                (if $s != .fqdn and .fqdn != $c.hostname then "--add-host=\($s):\(.ip)" else empty end)
           end]) as $add_hosts
     | (["docker", "run", "-d", "--name", $short,
         "--hostname", $short]
        + (if ($parts | length) > 1 then ["--domainname", ($parts[1:] | join("."))] else [] end)
        + ["--restart", "unless-stopped",
           "--label", "io.shoal.cluster=\($p.cluster)",
           "--label", "io.shoal.node=\($node)",
           "--label", "io.shoal.container=\($c.name)"]
        + (if $c.network == "host" then ["--network", "host"]
           else ["--network", "shoal"] + (if $c.address then ["--ip", $c.address] else [] end)
                + [($c.ports // [])[] | "--publish=\(.host // .container):\(.container)/\(.protocol // "tcp")"]
           end)
        + $add_hosts
        + [($c.env // {}) | to_entries[] | "--env=\(.key)=\(.value)"]
        + [($c.volumes // [])[] | "--volume=\(.source):\(.target):\(if .read_only then "ro" else "rw" end)"]
        + [$c.image] + ($c.command // [])) as $argv
     | "runs+=(\($argv | @sh | @sh))")
' "$plan")"

if [ "$uses_overlay" -eq 1 ]; then
    # The underlay: the interface holding this node's private address.
    dev=$(ip -o -4 addr show | awk -v ip="$private_ip" '{ split($4, a, "/"); if (a[1] == ip) { print $2; exit } }')
    [ -n "$dev" ] || die "no interface holds $private_ip"
    umtu=$(ip -o link show dev "$dev" | awk '{ for (i = 1; i < NF; i++) if ($i == "mtu") print $(i + 1) }')
    mtu=${planned_mtu:-$((umtu - 50))}
    docker network create --driver bridge --subnet "$overlay" --ip-range "$slice" \
        --gateway "$gateway" -o com.docker.network.bridge.name=shoal0 \
        -o com.docker.network.driver.mtu="$mtu" --label io.shoal.cluster="$cluster" \
        shoal >/dev/null 2>"$work/net.err" ||
        grep -q 'already exists' "$work/net.err" || die "docker network create: $(cat "$work/net.err")"
    {
        ip link show shoal-vx >/dev/null 2>&1 ||
            echo "link add shoal-vx type vxlan id $vni local $private_ip dev $dev dstport $port nolearning"
        echo "link set shoal-vx mtu $mtu"
        echo "link set shoal-vx master shoal0"
        echo "link set shoal-vx up"
        echo "link set shoal0 up"
    } | ip -batch -
    if [ ${#peers[@]} -gt 0 ]; then
        # -force goes on past entries that already exist (a rerun); any other error fails.
        if ! printf 'fdb append 00:00:00:00:00:00 dev shoal-vx dst %s\n' "${peers[@]}" |
            bridge -force -batch - 2>"$work/fdb.err"; then
            if grep -v -e 'File exists' -e '^Command failed' "$work/fdb.err" | grep -q .; then
                die "bridge fdb: $(cat "$work/fdb.err")"
            fi
        fi
    fi
fi

for image in "${images[@]}"; do
    if ! docker image inspect "$image" >/dev/null 2>&1; then
        tarball=$image_dir/${image//[^A-Za-z0-9._-]/_}.tar
        [ -f "$tarball" ] || die "image $image is neither present nor baked in ($tarball)"
        docker load -q -i "$tarball" >/dev/null
    fi
done

# Start every container at once; wait for each and fail if any failed.
pids=()
for i in "${!runs[@]}"; do
    eval "${runs[$i]}" >"$work/run.$i.out" 2>&1 &
    pids+=($!)
done
for i in "${!pids[@]}"; do
    wait "${pids[$i]}" || die "$(cat "$work/run.$i.out")"
done

printf 'Authorization: Bearer %s\n' "$token" >"$work/auth"
curl -sS "${tls[@]}" -f -X PUT -H @"$work/auth" -H 'Content-Type: application/json' \
    --data "{\"phase\":\"ready\",\"generation\":$generation}" \
    "$url/metadata/v1/$key/nodes/$node/status" >/dev/null 2>&1 || die "reporting ready failed"
