#!/usr/bin/python3
"""Shoal's benchmarks (run through bench/run; see docs/benchmarks.md).

Eleven measurements, each against the approach Shoal replaces or against its target:

1. cluster     time to AVAILABLE of local demo clusters (3 and 10 nodes), by phase:
               readiness probes against the old 1 s settle check
2. agent       shoal-agent against bench/shell-agent.sh (curl + jq + ip + bridge + the
               docker CLI) on the same prepared VM namespaces and dockerds
3. readiness   plan ready -> every agent holds it: long-poll against 5 s polling
4. metadata    the coordinator's metadata router against nginx serving the same plan
               bytes (wrk), and the memory of 10,000 held long-polls
5. footprint   the static agent's size, peak RSS and CPU time while converging
6. status      1,000 agents reporting at once to a real `shoal serve`: reports/s, latency
               and fsyncs per report, against the coordinator before its store took
               reports off the async workers with group commit (commit dd7d294)
7. console     what watching a cluster costs the coordinator: the web console's event
               streams (five tabs) against polling the API every second, idle and
               while 1,000 agents report
8. scale       +1 and +5 nodes on a running local cluster to AVAILABLE, each existing
               node's reconvergence and whether any container restarted, against
               creating a cluster of the new size from nothing
9. hadoop      time to AVAILABLE of a 3-node hadoop cluster (HDFS and Spark answering),
               by phase; the images phase with the shared image template against each
               VM loading the tarball
11. hadoop-scale  a hadoop cluster of one worker scaled to three (to AVAILABLE, to three
               DataNodes live) and a worker with a replica of every block removed:
               HDFS decommissioning first (the blueprint's drain hook) against deleting
               the VM straight away and leaving HDFS to re-replicate
15. disks      a 2-node cluster's time to AVAILABLE with 0 and with 2 data disks per node
               (loop devices formatted and mounted by the agent), side by side
10. qemu       real VMs (the qemu provider, TCG here): the OS's own boot stages
               (kernel, systemd, cloud-init, Docker) of 1 and 2 VMs beside the agent's,
               and what Shoal adds on top of the OS (Docker ready -> node ready).
               Not in the default set (minutes per run): `--only qemu`.
11. health     a node made silent (SIGSTOP) → lost, and back; its agent and dockerd
               SIGKILLed → restarted by the VM's init, DEGRADED → AVAILABLE; its VXLAN
               device, an FDB entry and its bridge deleted → healed; the server's page taken away
               (its probe failing, the container running) → unhealthy, and back; httpd
               killed → container-exited; a reboot; a repair, against what an operator
               had without them (nothing healed) and a new cluster; the agent's CPU
               with a probe kept up against one with none

Figures are medians of several runs with min and max. Nothing here fails on a number;
it fails only when a benchmark itself breaks (a cluster fails, states differ, a tool
is missing). Python's standard library only.
"""

import argparse
import datetime as dt
import http.client
import json
import os
import random
import re
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
TARGET = Path(os.environ.get("CARGO_TARGET_DIR", REPO / "target"))
RELEASE = TARGET / "release"
STATIC_AGENT = TARGET / "x86_64-unknown-linux-musl" / "release" / "shoal-agent"
OUT = TARGET / "bench"
IMAGES = TARGET / "images"
DEMO_BLUEPRINT = REPO / "coordinator" / "blueprints" / "demo.toml"
HADOOP_IMAGE = "shoal_hadoop_1.tar"
SHELL_AGENT = REPO / "bench" / "shell-agent.sh"
CLUSTER = "bench"
DEMO_IMAGE = "shoal/demo:1"


class BenchError(Exception):
    """A benchmark broke (not a slow figure: a failure to measure)."""


def log(msg):
    print(f"bench: {msg}", file=sys.stderr, flush=True)


def now_us():
    return time.time_ns() // 1000


def run(cmd, check=True, **kw):
    """Runs a command, capturing output; raises BenchError with stderr on failure."""
    p = subprocess.run(cmd, capture_output=True, text=True, **kw)
    if check and p.returncode != 0:
        raise BenchError(f"{' '.join(map(str, cmd))} failed ({p.returncode}): {p.stderr.strip()}")
    return p


def netns(ns, cmd):
    return ["nsenter", f"--net=/run/netns/{ns}", "--"] + [str(c) for c in cmd]


# ---------------------------------------------------------------------------------
# Figures


def summary(values, unit="ms", digits=0):
    """'median (min-max)' of values, or '-' when there are none."""
    values = [v for v in values if v is not None]
    if not values:
        return "-"
    fmt = f"{{:.{digits}f}}"
    med = fmt.format(statistics.median(values))
    if len(values) == 1:
        return f"{med} {unit}".strip()
    return f"{med} {unit} ({fmt.format(min(values))}–{fmt.format(max(values))})".strip()


def percentile(values, p):
    if not values:
        return None
    s = sorted(values)
    k = max(0, min(len(s) - 1, int(round(p / 100 * len(s) + 0.5)) - 1))
    return s[k]


class Report:
    """Markdown sections, written to stdout and target/bench/results.md."""

    def __init__(self):
        self.sections = []
        self.raw = {}

    def section(self, title, lines):
        self.sections.append((title, lines))

    def markdown(self, header):
        out = [header, ""]
        for title, lines in self.sections:
            out += [f"### {title}", ""] + lines + [""]
        return "\n".join(out)


def table(head, rows):
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    out += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return out


def machine():
    cpu = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = "?"
    try:
        kb = int(Path("/proc/meminfo").read_text().split()[1])
        mem = f"{kb / 1048576:.1f} GiB"
    except (OSError, ValueError, IndexError):
        pass
    kernel = os.uname().release
    commit = run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], check=False).stdout.strip()
    return f"{os.cpu_count()} cores ({cpu}), {mem} RAM, Linux {kernel}, commit {commit or '?'}"


def load():
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "?"


# ---------------------------------------------------------------------------------
# Docker over its unix socket


class UnixHTTP(http.client.HTTPConnection):
    def __init__(self, path, timeout=60):
        super().__init__("docker", timeout=timeout)
        self.path = str(path)

    def connect(self):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(self.timeout)
        s.connect(self.path)
        self.sock = s


def docker_api(sock, method, path, body=None, ok=(200, 201, 204)):
    c = UnixHTTP(sock)
    try:
        data = json.dumps(body).encode() if body is not None else None
        headers = {"Content-Type": "application/json"} if data is not None else {}
        c.request(method, path, body=data, headers=headers)
        r = c.getresponse()
        text = r.read()
        if r.status not in ok:
            raise BenchError(f"docker {method} {path}: HTTP {r.status}: {text[:300]!r}")
        return json.loads(text) if text else None
    finally:
        c.close()


def docker_ping(sock):
    try:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(1)
        s.connect(str(sock))
        s.sendall(b"GET /_ping HTTP/1.0\r\nHost: docker\r\n\r\n")
        data = s.recv(64)
        s.close()
        return b" 200 " in data
    except OSError:
        return False


def docker_cli(sock, *args, check=True):
    return run(["docker", "-H", f"unix://{sock}", *args], check=check)


def container_hosts(sock, name):
    """The names a container resolves through /etc/hosts, as {name: address}."""
    text = docker_cli(sock, "exec", name, "cat", "/etc/hosts", check=False).stdout
    out = {}
    for line in text.splitlines():
        words = line.split("#", 1)[0].split()
        for w in words[1:]:
            out[w] = words[0]
    return out


# ---------------------------------------------------------------------------------
# The metadata endpoint alone (coordinator/examples/metadata_bench.rs)


class MetadataServer:
    """The coordinator's metadata router serving a synthetic cluster."""

    def __init__(self, workdir, nodes, listen="127.0.0.1:0", first_ip="10.215.0.10", hold=False, workers=None,
                 extra=()):
        self.dir = Path(workdir)
        shutil.rmtree(self.dir, ignore_errors=True)
        self.dir.mkdir(parents=True)
        cmd = [
            str(RELEASE / "examples" / "metadata_bench"),
            "--dir", str(self.dir), "--listen", listen, "--nodes", str(nodes),
            "--first-ip", first_ip,
        ]
        if hold:
            cmd.append("--hold")
        if workers:
            cmd += ["--workers", str(workers)]
        cmd += list(extra)
        self.err = open(self.dir / "server.log", "w")
        self.p = subprocess.Popen(
            cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.err, text=True, bufsize=1
        )
        line = self.p.stdout.readline().split()
        if len(line) != 2 or line[0] != "listening":
            raise BenchError(f"metadata_bench did not start: {(self.dir / 'server.log').read_text()}")
        self.addr = line[1]
        self.url = f"http://{self.addr}"
        self.key = (self.dir / "key").read_text().strip()
        self.plan_path = self.dir / "plan.json"

    def plan(self):
        return json.loads(self.plan_path.read_text())

    def config(self, node):
        return self.dir / "agents" / f"{node}.json"

    def command(self, cmd):
        self.p.stdin.write(cmd + "\n")
        self.p.stdin.flush()
        return self.p.stdout.readline().strip()

    def publish(self):
        words = self.command("publish").split()
        if words[:1] != ["published"] or len(words) != 2:
            raise BenchError(f"publish: {words}")
        return int(words[1])

    def stats(self):
        w = self.command("stats").split()
        return int(w[1]), int(w[3])

    @property
    def pid(self):
        return self.p.pid

    def stop(self):
        if self.p.poll() is None:
            try:
                self.p.stdin.close()
            except OSError:
                pass
            try:
                self.p.wait(5)
            except subprocess.TimeoutExpired:
                self.p.kill()
                self.p.wait()
        self.err.close()


# ---------------------------------------------------------------------------------
# Prepared VMs: namespaces on a VPC bridge, one dockerd each (as the local provider)


class Lab:
    """K simulated VMs: each a namespace with eth0 on a VPC bridge and its own dockerd."""

    def __init__(self, prefix, octet, nodes):
        self.prefix = prefix
        self.vpc_ns = f"{prefix}-vpc"
        self.host_link = f"{prefix}-vpc"
        self.gateway = f"10.217.{octet}.1"
        self.first_ip = f"10.217.{octet}.10"
        self.nodes = [
            {
                "id": f"node-{i}",
                "ns": f"{prefix}-n{i}",
                "ip": f"10.217.{octet}.{10 + i}",
                "dir": OUT / "lab" / prefix / f"n{i}",
                "exec_root": Path(f"/run/shoal-bench/{prefix}-{i}"),
            }
            for i in range(nodes)
        ]
        for n in self.nodes:
            n["sock"] = n["dir"] / "docker.sock"
        self.dockerds = []

    def up(self):
        ns = self.vpc_ns
        run(["ip", "netns", "add", ns])
        run(["ip", "-n", ns, "link", "add", "vpc0", "type", "bridge"])
        run(["ip", "-n", ns, "link", "set", "vpc0", "up"])
        run(["ip", "link", "add", self.host_link, "type", "veth", "peer", "name", "uplink", "netns", ns])
        run(["ip", "-n", ns, "link", "set", "uplink", "master", "vpc0", "up"])
        run(["ip", "addr", "add", f"{self.gateway}/24", "dev", self.host_link])
        run(["ip", "link", "set", self.host_link, "up"])
        for i, n in enumerate(self.nodes):
            run(["ip", "netns", "add", n["ns"]])
            peer = f"{self.prefix}v{i}"
            run(["ip", "-n", ns, "link", "add", peer, "type", "veth", "peer", "name", "eth0", "netns", n["ns"]])
            run(["ip", "-n", ns, "link", "set", peer, "master", "vpc0", "up"])
            for step in (
                ["link", "set", "lo", "up"],
                ["addr", "add", f"{n['ip']}/24", "dev", "eth0"],
                ["link", "set", "eth0", "up"],
                ["route", "add", "default", "via", self.gateway],
            ):
                run(["ip", "-n", n["ns"], *step])
            n["dir"].mkdir(parents=True, exist_ok=True)
            n["exec_root"].mkdir(parents=True, exist_ok=True)
            (n["dir"] / "daemon.json").write_text("{}\n")
            logf = open(n["dir"] / "dockerd.log", "w")
            p = subprocess.Popen(
                netns(n["ns"], [
                    "dockerd", f"--data-root={n['dir'] / 'docker'}", f"--exec-root={n['exec_root']}",
                    f"--pidfile={n['dir'] / 'dockerd.pid'}", f"--config-file={n['dir'] / 'daemon.json'}",
                    f"--host=unix://{n['sock']}", "--iptables=true", "--userland-proxy=false",
                    "--log-level=warn",
                ]),
                stdin=subprocess.DEVNULL, stdout=logf, stderr=logf, start_new_session=True,
            )
            self.dockerds.append((p, logf))
        deadline = time.monotonic() + 120
        for n in self.nodes:
            while not docker_ping(n["sock"]):
                if time.monotonic() > deadline:
                    raise BenchError(f"dockerd of {n['ns']} not up: {(n['dir'] / 'dockerd.log').read_text()[-2000:]}")
                time.sleep(0.1)

    def reset(self, n, images):
        """Back to a fresh VM: no containers, network or VXLAN device (nor images)."""
        ids = docker_cli(n["sock"], "ps", "-aq", "--filter", f"label=io.shoal.cluster={CLUSTER}").stdout.split()
        if ids:
            docker_cli(n["sock"], "rm", "-f", *ids)
        docker_cli(n["sock"], "network", "rm", "shoal", check=False)
        run(["ip", "-n", n["ns"], "link", "del", "shoal-vx"], check=False)
        if images == "cold":
            docker_cli(n["sock"], "rmi", "-f", DEMO_IMAGE, check=False)
        elif not docker_cli(n["sock"], "image", "inspect", DEMO_IMAGE, check=False).returncode == 0:
            docker_cli(n["sock"], "load", "-q", "-i", str(IMAGES / "shoal_demo_1.tar"))

    def snapshot(self, n):
        """What a user would check: containers, the network, the VXLAN device, its FDB."""
        ids = docker_cli(n["sock"], "ps", "-aq", "--filter", f"label=io.shoal.cluster={CLUSTER}").stdout.split()
        containers = []
        if ids:
            for c in json.loads(docker_cli(n["sock"], "inspect", *ids).stdout):
                nets = c["NetworkSettings"]["Networks"] or {}
                containers.append({
                    "name": c["Name"].lstrip("/"),
                    "running": c["State"]["Running"],
                    "image": c["Config"]["Image"],
                    "cmd": c["Config"]["Cmd"],
                    "hostname": c["Config"]["Hostname"],
                    "domainname": c["Config"]["Domainname"],
                    "env": sorted(c["Config"]["Env"] or []),
                    # What resolves inside, however it got there (Docker's
                    # ExtraHosts, or a hosts file mounted over /etc/hosts).
                    "hosts": container_hosts(n["sock"], c["Name"].lstrip("/")),
                    "restart": c["HostConfig"]["RestartPolicy"]["Name"],
                    "network_mode": c["HostConfig"]["NetworkMode"],
                    "ip": (nets.get("shoal") or {}).get("IPAddress"),
                    "ports": c["HostConfig"]["PortBindings"] or {},
                    "binds": sorted(b for b in c["HostConfig"]["Binds"] or [] if ":/etc/hosts:" not in b),
                })
        containers.sort(key=lambda c: c["name"])
        net = json.loads(docker_cli(n["sock"], "network", "inspect", "shoal", check=False).stdout or "[]")
        network = None
        if net:
            net = net[0]
            network = {
                "driver": net["Driver"],
                "ipam": [{k: v for k, v in cfg.items() if k in ("Subnet", "IPRange", "Gateway")} for cfg in net["IPAM"]["Config"]],
                "bridge": net["Options"].get("com.docker.network.bridge.name"),
                "mtu": net["Options"].get("com.docker.network.driver.mtu"),
                "label": (net.get("Labels") or {}).get("io.shoal.cluster"),
            }
        link = json.loads(run(["ip", "-n", n["ns"], "-d", "-j", "link", "show", "shoal-vx"], check=False).stdout or "[]")
        vxlan = None
        if link:
            link = link[0]
            data = link.get("linkinfo", {}).get("info_data", {})
            vxlan = {
                "vni": data.get("id"), "local": data.get("local"), "port": data.get("port"),
                "learning": data.get("learning"), "master": link.get("master"), "mtu": link.get("mtu"),
                "up": "UP" in link.get("flags", []),
            }
        fdb = json.loads(run(["bridge", "-n", n["ns"], "-j", "fdb", "show", "dev", "shoal-vx"], check=False).stdout or "[]")
        peers = sorted(e["dst"] for e in fdb if e.get("mac") == "00:00:00:00:00:00" and e.get("dst"))
        bridge = json.loads(run(["ip", "-n", n["ns"], "-j", "link", "show", "shoal0"], check=False).stdout or "[]")
        bridge_up = bool(bridge) and "UP" in bridge[0].get("flags", [])
        return {"containers": containers, "network": network, "vxlan": vxlan, "fdb": peers, "bridge_up": bridge_up}

    def down(self):
        for n in self.nodes:
            if n["sock"].exists() and docker_ping(n["sock"]):
                ids = docker_cli(n["sock"], "ps", "-aq", check=False).stdout.split()
                if ids:
                    docker_cli(n["sock"], "rm", "-f", *ids, check=False)
        for p, logf in self.dockerds:
            if p.poll() is None:
                p.terminate()
        for p, logf in self.dockerds:
            try:
                p.wait(20)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
            logf.close()
        for n in self.nodes:
            nspath = Path(f"/run/netns/{n['ns']}")
            if nspath.exists():
                ino = nspath.stat().st_ino
                for pid in pids_in_netns(ino):
                    try:
                        os.kill(pid, signal.SIGKILL)
                    except OSError:
                        pass
        for n in self.nodes:
            for root in (n["dir"], n["exec_root"]):
                unmount_under(root)
            run(["ip", "netns", "del", n["ns"]], check=False)
            shutil.rmtree(n["dir"], ignore_errors=True)
            shutil.rmtree(n["exec_root"], ignore_errors=True)
        run(["ip", "link", "del", self.host_link], check=False)
        run(["ip", "netns", "del", self.vpc_ns], check=False)
        shutil.rmtree(OUT / "lab" / self.prefix, ignore_errors=True)


def pids_in_netns(ino):
    me = os.getpid()
    out = []
    for e in os.listdir("/proc"):
        if not e.isdigit() or int(e) == me:
            continue
        try:
            if os.stat(f"/proc/{e}/ns/net").st_ino == ino:
                out.append(int(e))
        except OSError:
            pass
    return out


def unmount_under(root):
    root = str(root)
    try:
        mounts = [l.split()[4] for l in Path("/proc/self/mountinfo").read_text().splitlines()]
    except OSError:
        return
    for m in sorted((m for m in mounts if m == root or m.startswith(root + "/")), key=len, reverse=True):
        run(["umount", "-l", m], check=False)


# ---------------------------------------------------------------------------------
# 1. Cluster time to AVAILABLE


class Coordinator:
    """A real `shoal serve` (release build) with its own state, VPC and name prefix."""

    def __init__(self, prefix, octet, images=None, extra=()):
        images = IMAGES if images is None else images
        self.state = OUT / "coordinator" / prefix
        shutil.rmtree(self.state, ignore_errors=True)
        self.state.mkdir(parents=True)
        self.prefix = prefix
        self.logf = open(self.state / "serve.log", "w")
        self.p = subprocess.Popen(
            [
                str(RELEASE / "shoal"), "--state-dir", str(self.state), "serve",
                "--api-listen", "127.0.0.1:0", "--local-vpc", f"10.216.{octet}.0/24",
                "--local-prefix", prefix, "--agent-bin", str(RELEASE / "shoal-agent"),
                "--image-dir", str(images), *extra,
            ],
            stdin=subprocess.DEVNULL, stdout=self.logf, stderr=self.logf,
            env={**os.environ, "RUST_LOG": "info"},
        )
        # It loads the images into its template before it serves (not measured).
        deadline = time.monotonic() + 600
        while not (self.state / "api.json").exists():
            if self.p.poll() is not None or time.monotonic() > deadline:
                raise BenchError(f"shoal serve did not start: {(self.state / 'serve.log').read_text()[-2000:]}")
            time.sleep(0.05)
        self.url = json.loads((self.state / "api.json").read_text())["url"]
        self.token = (self.state / "token").read_text().strip()

    def api(self, method, path, body=None):
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.url + path, data=data, method=method)
        req.add_header("Authorization", f"Bearer {self.token}")
        if data:
            req.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(req, timeout=30) as r:
                text = r.read()
                return json.loads(text) if text else None
        except urllib.error.HTTPError as e:
            raise BenchError(f"{method} {path}: HTTP {e.code}: {e.read()[:500]!r}") from None

    def stop(self):
        if self.p.poll() is None:
            self.p.terminate()
            try:
                self.p.wait(30)
            except subprocess.TimeoutExpired:
                self.p.kill()
                self.p.wait()
        self.logf.close()


def dockerd_watch(node_socks, ready, stop):
    """Polls each node's docker socket every 10 ms; records when it first answers."""
    while not stop.is_set():
        pending = [n for n in node_socks if n not in ready]
        if not pending:
            return
        for n in pending:
            if docker_ping(node_socks[n]):
                ready[n] = now_us() / 1000
        time.sleep(0.01)


def first_timing(node, phase):
    for t in node.get("timings", []):
        if t["phase"] == phase:
            return t
    return None


def image_dir(name, tarballs):
    """A directory of its own holding these tarballs of target/images (hard links): a
    coordinator loads every tarball of its image directory into its template."""
    d = OUT / "images" / name
    shutil.rmtree(d, ignore_errors=True)
    d.mkdir(parents=True)
    for t in tarballs:
        os.link(IMAGES / t, d / t)
    return d


def settle_blueprint():
    """The demo blueprint without its readiness probes: ready means the containers
    stayed up for the 1 s settle check (how every cluster was judged before probes)."""
    lines = [l for l in DEMO_BLUEPRINT.read_text().splitlines() if not l.startswith("ready =")]
    text = "\n".join(lines).replace('name = "demo"', 'name = "demo-settle"', 1)
    if "ready =" in text:
        raise BenchError("the demo blueprint's probes could not be removed for the settle variant")
    return text


def wait_available(coord, name, timeout, interval, each=None):
    """Polls the cluster until AVAILABLE (calling `each(view)` on every poll); raises on
    FAILED or after `timeout` seconds. Returns the last view."""
    deadline = time.monotonic() + timeout
    while True:
        view = coord.api("GET", f"/v1/clusters/{name}")
        if each:
            each(view)
        if view["state"] == "AVAILABLE":
            return view
        if view["state"] == "FAILED":
            raise BenchError(f"cluster {name} FAILED: {view.get('reason')}")
        if time.monotonic() > deadline:
            raise BenchError(f"cluster {name} not AVAILABLE after {timeout}s: {json.dumps(view)[:2000]}")
        time.sleep(interval())


def cluster_run(coord, name, nodes, timeout, blueprint="demo", blueprint_toml=None):
    t0 = time.time() * 1000
    req = {"name": name, "provider": "local", "nodes": nodes}
    if blueprint_toml is not None:
        req["blueprint_toml"] = blueprint_toml
    else:
        req["blueprint"] = blueprint
    coord.api("POST", "/v1/clusters", req)
    ready, stop = {}, threading.Event()
    watcher = []

    def watch(view):
        if not watcher and all("docker_socket" in n for n in view["nodes"]):
            socks = {n["id"]: n["docker_socket"] for n in view["nodes"]}
            watcher.append(threading.Thread(target=dockerd_watch, args=(socks, ready, stop), daemon=True))
            watcher[0].start()

    try:
        view = wait_available(coord, name, timeout, lambda: 0.1 if watcher else 0.02, watch)
        wall = time.time() * 1000 - t0
        if watcher:
            watcher[0].join(5)
    finally:
        stop.set()
    created = view["created_ms"]
    per_node = []
    for n in view["nodes"]:
        req = n.get("requested_ms") or created
        t = {p: first_timing(n, p) for p in ("agent-started", "plan-received", "network", "images", "containers", "ready")}
        if any(v is None for v in t.values()):
            raise BenchError(f"{name}/{n['id']}: timings incomplete: {n.get('timings')}")
        probing = first_timing(n, "probing")
        per_node.append({
            "vm": (n["running_ms"] or req) - req,
            "dockerd": (ready[n["id"]] - req) if n["id"] in ready else None,
            "agent_started": t["agent-started"]["started_ms"] - req,
            "plan_received": t["plan-received"]["started_ms"] - req,
            "docker_wait": t["network"]["started_ms"] - t["plan-received"]["started_ms"],
            "network": t["network"]["duration_ms"],
            "images": t["images"]["duration_ms"],
            "containers": t["containers"]["duration_ms"],
            "probing": probing["duration_ms"] if probing else None,
            "ready": t["ready"]["started_ms"] - req,
        })
    return {"total": view["time_to_available_ms"], "wall": wall, "nodes": per_node}


def cluster_delete(coord, name, timeout=120):
    coord.api("DELETE", f"/v1/clusters/{name}")
    deadline = time.monotonic() + timeout
    while True:
        v = coord.api("GET", f"/v1/clusters/{name}")
        if v["state"] == "DELETED":
            return
        if time.monotonic() > deadline:
            raise BenchError(f"cluster {name} not deleted after {timeout}s: {v.get('reason')}")
        time.sleep(0.2)


PHASE_LABELS = [
    ("vm", "VM running (namespace, veth, data root seeded, dockerd and agent spawned)", "at"),
    ("agent_started", "agent started (first report)", "at"),
    ("dockerd", "dockerd answers `/_ping` (polled every 10 ms)", "at"),
    ("plan_received", "plan received", "at"),
    ("docker_wait", "agent waiting for dockerd after the plan", "for"),
    ("network", "network phase (Docker network, VXLAN, FDB)", "for"),
    ("images", "images phase", "for"),
    ("containers", "containers phase (create, start; the 1 s settle without probes)", "for"),
    ("probing", "probing phase (readiness probes)", "for"),
    ("ready", "ready reported", "at"),
]


def phase_table(columns):
    """Per-node milestones and phases, one column per (label, runs)."""
    head = ["milestone / phase"] + [label for label, _ in columns]
    body = []
    for key, label, kind in PHASE_LABELS:
        row = [f"{label} ({'+' if kind == 'at' else 'takes'})"]
        for _, runs in columns:
            row.append(summary([n[key] for r in runs for n in r["nodes"]]))
        body.append(row)
    return table(head, body)


def cluster_series(coord, series, runs, log_prefix):
    """Runs each (key, nodes, kwargs) of `series` `runs` times, interleaved, deleting each
    cluster before the next."""
    results = {key: [] for key, _, _ in series}
    for r in range(runs):
        for key, size, kw in series:
            name = f"{key}{r}"
            log(f"{log_prefix}: {key}, run {r + 1}/{runs}")
            opts = {k: v for k, v in kw.items() if k != "timeout"}
            res = cluster_run(coord, name, size, timeout=kw.get("timeout", 60 + 15 * size), **opts)
            log(f"{log_prefix}: {key} AVAILABLE in {res['total']} ms")
            results[key].append(res)
            cluster_delete(coord, name)
    return results


def bench_cluster(rep, args, prefix, octet):
    runs = 1 if args.quick else args.runs
    # State of earlier runs' coordinators (logs, tokens) goes; this run's stays for a look.
    shutil.rmtree(OUT / "coordinator", ignore_errors=True)
    series = [("p3-", 3, {}), ("s3-", 3, {"blueprint_toml": settle_blueprint()})]
    if not args.quick:
        series.append(("p10-", 10, {}))
    coord = Coordinator(prefix, octet, image_dir("demo", ["shoal_demo_1.tar"]))
    try:
        results = cluster_series(coord, series, runs, "cluster")
    finally:
        coord.stop()
    rep.raw["cluster"] = results
    rep.raw["cluster_demo3_probes"] = [r["total"] for r in results["p3-"]]
    names = {"p3-": "3 nodes, readiness probes", "s3-": "3 nodes, 1 s settle check (no probes)",
             "p10-": "10 nodes, readiness probes"}
    target = {"p3-": 1500, "s3-": None, "p10-": 15000}
    rows = []
    for key, _, _ in series:
        totals = [r["total"] for r in results[key]]
        t = target[key]
        rows.append([names[key], summary(totals), f"< {t} ms" if t else "(the way before probes)",
                     ("met" if statistics.median(totals) < t else "missed") if t else ""])
    lines = ["Time from `POST /v1/clusters` to AVAILABLE, as the coordinator records it "
             f"(`time_to_available_ms`); {runs} run(s) each, interleaved, deleted between runs. "
             "The demo blueprint's probes (the server answers HTTP; the server lists each node's "
             "agent) against the same blueprint without them, where a node is ready once its "
             "containers stayed up for 1 s.", ""]
    lines += table(["demo blueprint", "to AVAILABLE: median (min–max)", "target", ""], rows)
    lines += ["", "Per node, from the moment its VM was requested (median over every node of "
              "every run, min–max): when each milestone was reached, and how long the agent's "
              "phases took.", ""]
    lines += phase_table([(names[key], results[key]) for key, _, _ in series])
    rep.section("1. Cluster time to AVAILABLE (local provider, demo blueprint)", lines)


def bench_disks(rep, args, prefix, octet):
    """A cluster's boot with 0 and with 2 data disks per node (local provider: sparse
    files as loop devices; the agent formats each with mkfs.ext4 and mounts it), side by
    side in one run, interleaved."""
    runs = 1 if args.quick else args.runs
    plain = settle_blueprint()
    size_gb = 20
    with_disks = re.sub(r"^(count = .*)$", rf"\1\ndisks = {{ count = 2, size_gb = {size_gb} }}",
                        plain, flags=re.M).replace('name = "demo-settle"', 'name = "demo-disks"', 1)
    if with_disks.count("disks = {") != 2:
        raise BenchError("the demo blueprint's groups could not be given disks")
    series = [("n0-", 2, {"blueprint_toml": plain}), ("n2-", 2, {"blueprint_toml": with_disks})]
    coord = Coordinator(prefix, octet, image_dir("demo", ["shoal_demo_1.tar"]))
    try:
        results = cluster_series(coord, series, runs, "disks")
    finally:
        coord.stop()
    rep.raw["disks"] = results
    names = {"n0-": "no data disk", "n2-": f"2 data disks of {size_gb} GiB per node"}
    rows = [[names[k], summary([r["total"] for r in results[k]]),
             summary([n["images"] for r in results[k] for n in r["nodes"]])] for k, _, _ in series]
    lines = [f"Time from `POST /v1/clusters` to AVAILABLE of a 2-node cluster (the demo blueprint "
             f"without probes, 1 s settle check), {runs} run(s) each, interleaved, deleted between "
             "runs: without data disks, and with two per node (sparse files attached as loop "
             "devices by the provider before the VM boots; the agent probes each with `blkid -p`, "
             "formats it with `mkfs.ext4` and mounts it). The agent mounts disks after the images "
             "phase and before the containers phase, so their cost shows in the images phase's "
             "span (it ends when the containers phase begins).", ""]
    lines += table(["cluster of 2 nodes", "to AVAILABLE: median (min–max)",
                    "images phase + disks, per node"], rows)
    rep.section("15. Data disks: boot with 0 and 2 disks per node (local provider)", lines)


def bench_hadoop(rep, args, prefix, octet):
    runs = 1 if args.quick else args.runs
    log("hadoop: building the hadoop image (cached under target/cache/hadoop-image)")
    out = run([str(REPO / "cloud-init" / "build-hadoop-image"), str(IMAGES)])
    built = out.stdout.strip()
    hadoop = {"timeout": 600}
    results, before = {}, {}
    coord = Coordinator(prefix + "h", octet, image_dir("hadoop", [HADOOP_IMAGE]))
    try:
        results = cluster_series(coord, [("h3-", 3, {**hadoop, "blueprint": "hadoop"})], runs, "hadoop")
    finally:
        coord.stop()
    # The images phase as it was: every VM's agent loads the tarball into its fresh
    # dockerd (--local-images load). Quick runs measure it on the demo image only.
    load_series = [("dl3-", 3, {})]
    if not args.quick:
        load_series.append(("hl3-", 3, {**hadoop, "blueprint": "hadoop"}))
    images = image_dir("both", ["shoal_demo_1.tar", HADOOP_IMAGE] if not args.quick else ["shoal_demo_1.tar"])
    coord = Coordinator(prefix + "l", octet, images, extra=["--local-images", "load"])
    try:
        before = cluster_series(coord, load_series, 1 if args.quick else min(args.runs, 2), "images")
    finally:
        coord.stop()
    shared_demo = rep.raw.get("cluster", {}).get("p3-", [])
    rep.raw["hadoop"] = {"shared": results, "load": before, "image": built}
    totals = [r["total"] for r in results["h3-"]]
    demo = rep.raw.get("cluster_demo3_probes") or []
    rows = [["3 nodes, hadoop (HDFS and Spark answering)", summary(totals), "< 20000 ms",
             "met" if statistics.median(totals) < 20000 else "missed"]]
    if demo:
        rows.append(["3 nodes, demo (benchmark 1, same run)", summary(demo), "", ""])
    lines = [
        f"The `hadoop` blueprint on the image `cloud-init/build-hadoop-image` makes (`{built}`): "
        "NameNode, SecondaryNameNode and Spark master on node-0, a DataNode and a Spark worker on "
        "each other node. AVAILABLE is when every node's probes passed: the NameNode out of safe "
        "mode with as many live DataNodes as the plan has, the Spark master ALIVE with every "
        f"worker registered. {runs} run(s), deleted between runs.", ""]
    lines += table(["cluster", "to AVAILABLE: median (min–max)", "target", ""], rows)
    lines += ["", "Per node (median over every node of every run, min–max):", ""]
    lines += phase_table([("hadoop, 3 nodes", results["h3-"])])
    lines += ["", "The images phase with the shared image template (each VM's dockerd starts with "
              "the images, its data root seeded by hard links) against each VM's agent loading the "
              "tarball into its fresh dockerd (`shoal serve --local-images load`, how local VMs got "
              "their images before), per node:", ""]
    cols = []
    if "hl3-" in before:
        cols.append(("hadoop, tarball loaded", before["hl3-"]))
    cols.append(("hadoop, shared template", results["h3-"]))
    cols.append(("demo, tarball loaded", before["dl3-"]))
    if shared_demo:
        cols.append(("demo, shared template", shared_demo))
    head = ["per node"] + [c for c, _ in cols]
    body = []
    for key, label in [("images", "images phase"), ("vm", "VM running (+)"), ("dockerd", "dockerd answers (+)"),
                       ("docker_wait", "agent waiting for dockerd"), ("ready", "ready reported (+)")]:
        body.append([label] + [summary([n[key] for r in rs for n in r["nodes"]]) for _, rs in cols])
    lines += table(head, body)
    rep.section("9. Hadoop cluster time to AVAILABLE, and images at boot", lines)


# ---------------------------------------------------------------------------------
# 2 and 5. The agent against the shell script; the agent's footprint


def expected_state(plan, node_id, gateway_mtu=1500):
    """What the plan says a node must end with (checked on both implementations)."""
    node = next(n for n in plan["nodes"] if n["id"] == node_id)
    return {
        "containers": sorted(c["hostname"].split(".")[0] for c in node["containers"]),
        "ips": sorted(c["address"] for c in node["containers"] if c.get("address")),
        "fdb": sorted(n["private_ip"] for n in plan["nodes"] if n["id"] != node_id),
    }


def check_state(snap, plan, node_id):
    want = expected_state(plan, node_id)
    got = {
        "containers": [c["name"] for c in snap["containers"]],
        "ips": sorted(c["ip"] for c in snap["containers"] if c["ip"]),
        "fdb": snap["fdb"],
    }
    problems = [f"{k}: want {want[k]}, got {got[k]}" for k in want if want[k] != got[k]]
    if not all(c["running"] for c in snap["containers"]):
        problems.append("not every container runs")
    if not snap["vxlan"] or not snap["vxlan"]["up"] or snap["vxlan"]["master"] != "shoal0":
        problems.append(f"VXLAN device wrong: {snap['vxlan']}")
    if not snap["bridge_up"]:
        problems.append("bridge shoal0 is down")
    return problems


def docker_floor(n, plan, node_id):
    """Docker's own cost of the node's job: the same network and container requests the
    agent makes (containers concurrently, as the agent), sent straight to the API with
    no checks (ms of API time)."""
    node = next(x for x in plan["nodes"] if x["id"] == node_id)
    hosts = []
    for m in plan["nodes"]:
        for c in m["containers"]:
            hosts.append((c["hostname"], c.get("address") or m["private_ip"]))
    t0 = time.perf_counter()
    docker_api(n["sock"], "POST", "/networks/create", {
        "Name": "shoal", "Driver": "bridge",
        "IPAM": {"Driver": "default", "Config": [{"Subnet": plan["network"]["overlay"], "IPRange": node["slice"], "Gateway": node["gateway"]}]},
        "Options": {"com.docker.network.bridge.name": "shoal0", "com.docker.network.driver.mtu": "1450"},
        "Labels": {"io.shoal.cluster": CLUSTER},
    })
    errors = []

    def one(c):
        try:
            create_start(c)
        except BenchError as e:
            errors.append(e)

    def create_start(c):
        short, _, domain = c["hostname"].partition(".")
        extra = []
        for fqdn, ip in hosts:
            s = fqdn.split(".")[0]
            extra.append(f"{fqdn}:{ip}")
            if fqdn != c["hostname"]:
                extra.append(f"{s}:{ip}")
        body = {
            "Image": c["image"], "Cmd": c["command"], "Hostname": short, "Domainname": domain,
            "Env": [f"{k}={v}" for k, v in c.get("env", {}).items()],
            "Labels": {"io.shoal.cluster": CLUSTER, "io.shoal.node": node_id, "io.shoal.container": c["name"]},
            "HostConfig": {"NetworkMode": "shoal", "RestartPolicy": {"Name": "unless-stopped"}, "ExtraHosts": extra},
            "NetworkingConfig": {"EndpointsConfig": {"shoal": {"IPAMConfig": {"IPv4Address": c["address"]}}}},
        }
        docker_api(n["sock"], "POST", f"/containers/create?name={short}", body)
        docker_api(n["sock"], "POST", f"/containers/{short}/start")

    # Concurrently, as the agent does.
    threads = [threading.Thread(target=one, args=(c,)) for c in node["containers"]]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return (time.perf_counter() - t0) * 1000


def timed(cmd, ns, logpath, env):
    """Runs cmd in namespace ns under GNU time; returns (wall ms, peak RSS MiB, CPU ms).

    GNU time forks the command from a small process, so the peak RSS it reports is the
    command's own (a process forked from this Python one would inherit Python's high
    water mark); CPU time covers every descendant waited for (curl, jq, docker …)."""
    rusage = Path(str(logpath) + ".time")
    full = netns(ns, ["/usr/bin/time", "-f", "%M", "-o", rusage, *cmd])
    with open(logpath, "w") as logf:
        t0 = time.perf_counter()
        p = subprocess.Popen(full, stdin=subprocess.DEVNULL, stdout=logf, stderr=logf, env=env)
        # wait4 gives CPU time in µs (GNU time prints 10 ms steps): that of GNU time
        # (negligible) and of everything it waited for.
        _, status, ru = os.wait4(p.pid, 0)
        wall = (time.perf_counter() - t0) * 1000
    p.returncode = os.waitstatus_to_exitcode(status)
    if p.returncode != 0:
        raise BenchError(f"{Path(str(cmd[0])).name} in {ns} exited {p.returncode}: {Path(logpath).read_text()[-2000:]}")
    peak_kib = int(rusage.read_text().split()[-1])
    return wall, peak_kib / 1024, (ru.ru_utime + ru.ru_stime) * 1000


def run_agent(lab, n, md, agent_bin, logname):
    cmd = [agent_bin, "run", "--once", "--config", md.config(n["id"]),
           "--docker-host", f"unix://{n['sock']}", "--image-dir", IMAGES,
           "--state-dir", n["dir"] / "agent-state"]
    return timed(cmd, n["ns"], n["dir"] / logname, {**os.environ, "RUST_LOG": "info"})


def run_shell(lab, n, md, logname):
    env = {**os.environ, "DOCKER_HOST": f"unix://{n['sock']}", "SHELL_AGENT_IMAGE_DIR": str(IMAGES)}
    return timed(["bash", SHELL_AGENT, md.config(n["id"])], n["ns"], n["dir"] / logname, env)


def agent_phases(md, node_id):
    """The agent's reported timings of its last convergence, from the store."""
    import sqlite3

    db = sqlite3.connect(f"file:{md.dir / 'state' / 'shoal.db'}?mode=ro", uri=True)
    try:
        row = db.execute("SELECT status FROM nodes WHERE cluster = ? AND id = ?", (CLUSTER, node_id)).fetchone()
    finally:
        db.close()
    status = json.loads(row[0]) if row and row[0] else {}
    out = {}
    for t in status.get("timings", []):
        out[t["phase"]] = t.get("duration_ms")
    return out


def bench_agent(rep, args, prefix, octet):
    nodes = 3
    runs = 1 if args.quick else args.runs
    agent_bin = STATIC_AGENT if STATIC_AGENT.is_file() else RELEASE / "shoal-agent"
    lab = Lab(prefix, octet, nodes)
    md = None
    data = {v: {"agent": [], "shell": [], "floor": [], "agent_rss": [], "agent_cpu": [], "shell_cpu": [],
                "shell_rss": [], "phases": []} for v in ("warm", "cold")}
    try:
        log("agent: preparing 3 VM namespaces with a dockerd each")
        lab.up()
        md = MetadataServer(OUT / "lab" / prefix / "md", nodes, listen=f"{lab.gateway}:0", first_ip=lab.first_ip)
        plan = md.plan()
        reference = {}
        variants = ["warm"] if args.quick else ["warm", "cold"]
        for r in range(runs):
            for variant in variants:
                order = ["agent", "shell"]
                random.shuffle(order)
                for n in lab.nodes:
                    # Docker's own cost first: the floor the agent's overhead is measured over.
                    if variant == "warm":
                        lab.reset(n, "warm")
                        data["warm"]["floor"].append(docker_floor(n, plan, n["id"]))
                    for impl in order:
                        lab.reset(n, variant)
                        if impl == "agent":
                            wall, rss, cpu = run_agent(lab, n, md, agent_bin, "agent.log")
                            data[variant]["phases"].append(agent_phases(md, n["id"]))
                        else:
                            wall, rss, cpu = run_shell(lab, n, md, "shell.log")
                        data[variant][impl].append(wall)
                        data[variant][f"{impl}_rss"].append(rss)
                        data[variant][f"{impl}_cpu"].append(cpu)
                        snap = lab.snapshot(n)
                        problems = check_state(snap, plan, n["id"])
                        if problems:
                            raise BenchError(f"{impl} on {n['id']} did not reach the planned state: {problems}")
                        ref = reference.setdefault(n["id"], (impl, snap))
                        if ref[1] != snap:
                            raise BenchError(
                                f"{impl} and {ref[0]} left {n['id']} in different states:\n"
                                f"{json.dumps(ref[1], indent=1)}\n{json.dumps(snap, indent=1)}")
                d = data[variant]
                log(f"agent: run {r + 1}/{runs}, {variant}: agent {summary(d['agent'])}, shell {summary(d['shell'])}")
        for n in lab.nodes:
            lab.reset(n, "warm")
    finally:
        if md:
            md.stop()
        lab.down()
    rep.raw["agent"] = data
    rows = []
    for variant in variants:
        d = data[variant]
        a, s = d["agent"], d["shell"]
        # The agent's readiness probes (the shell script checks nothing), paired per run.
        settle = [x - (p.get("probing") or 0) for x, p in zip(a, d["phases"])]
        ratio = statistics.median(s) / statistics.median(a)
        ratio_settle = statistics.median(s) / statistics.median(settle)
        label = "images present" if variant == "warm" else "images loaded from the baked tarball"
        rows.append([label, summary(a), summary(s), f"{ratio:.2f}×", f"{ratio_settle:.2f}×"])
    lines = [
        f"One node at a time, {nodes} prepared VM namespaces (own dockerd each), the plan of a "
        f"{nodes}-node demo cluster served by the coordinator's metadata router; "
        f"{runs} run(s) × {nodes} nodes per figure, the two in random order, every node reset "
        "(containers, network, VXLAN device removed) before each. Whole process, start to "
        "exit: fetch, parse, network, images, containers, report. Both must leave the same "
        "state (containers, addresses, host entries, network, VXLAN device, FDB entries), "
        "checked after every run.",
        "",
    ]
    lines += table(["", "shoal-agent --once", "shell-agent.sh", "shell ÷ agent", "shell ÷ (agent − probing)"], rows)
    w = data["warm"]
    floor = w["floor"]
    # Each agent run is paired with the Docker-only run made just before it on the
    # same node, so drift in the machine's load cancels out.
    ph = w["phases"]
    overhead = [a - (p.get("probing") or 0) - f for a, p, f in zip(w["agent"], ph, floor)]
    lines += [
        "",
        "The agent reports ready once the demo blueprint's readiness probes pass (the server "
        "answers; the server lists this node's agent); the shell script, like the 2014 scripts, "
        "checks nothing. The last column leaves the agent's probing phase out.",
        "",
    ]
    bound = statistics.median(w["shell"]) / statistics.median(floor)
    lines += table(["images present", "median (min–max)"], [
        ["Docker's own cost (the same network create and container create + start requests, containers concurrently, sent straight to the API by this harness)", summary(floor)],
        ["shell ÷ Docker's own (what a zero-cost agent would reach, roughly)", f"{bound:.2f}×"],
        ["agent wall time beyond it (agent − probing − Docker's own, paired per run)", summary(overhead)],
        ["agent phase: network", summary([p.get("network") for p in ph])],
        ["agent phase: images", summary([p.get("images") for p in ph])],
        ["agent phase: containers", summary([p.get("containers") for p in ph])],
        ["agent phase: probing (readiness probes)", summary([p.get("probing") for p in ph])],
        ["agent CPU time (user + system)", summary(w["agent_cpu"])],
        ["shell-agent.sh CPU time (bash, curl, jq, ip, bridge, docker CLI)", summary(w["shell_cpu"])],
        ["agent peak RSS", summary(w["agent_rss"], "MiB", 1)],
        ["shell-agent.sh peak RSS (its largest process)", summary(w["shell_rss"], "MiB", 1)],
    ])
    rep.section("2. Agent against the 2014 approach (shell script)", lines)
    rep.raw["footprint_rss"] = w["agent_rss"]
    rep.raw["footprint_cpu"] = w["agent_cpu"]
    rep.raw["footprint_agent_bin"] = str(agent_bin)


def bench_footprint(rep, args):
    agent = STATIC_AGENT
    rows = []
    if agent.is_file():
        size = agent.stat().st_size
        rows.append(["static binary size (`scripts/build-static-agent`)", f"{size / 1048576:.2f} MiB", "< 8 MiB",
                     "met" if size < 8 << 20 else "missed"])
    else:
        rows.append(["static binary size", "not built (run scripts/build-static-agent)", "< 8 MiB", ""])
    rss = rep.raw.get("footprint_rss") or []
    cpu = rep.raw.get("footprint_cpu") or []
    if rss:
        rows.append(["peak RSS while converging (`--once`, images present)", summary(rss, "MiB", 1), "< 15 MiB",
                     "met" if statistics.median(rss) < 15 else "missed"])
        rows.append(["CPU time of one convergence (user + system)", summary(cpu), "", ""])
    lines = [f"Binary measured: `{rep.raw.get('footprint_agent_bin', agent)}`; peak RSS and "
             "CPU time (user + system) of the agent process as GNU time (`/usr/bin/time -f %M`) "
             "reports them, from the runs of benchmark 2.", ""]
    lines += table(["", "median (min–max)", "target", ""], rows)
    rep.section("5. Agent footprint", lines)


# ---------------------------------------------------------------------------------
# 3. Readiness latency


TS = re.compile(r"^(\S+Z)\s+INFO .*plan received")


def plan_received_us(path):
    for line in Path(path).read_text(errors="replace").splitlines():
        m = TS.match(line)
        if m:
            return int(dt.datetime.fromisoformat(m.group(1).replace("Z", "+00:00")).timestamp() * 1_000_000)
    return None


def bench_readiness(rep, args):
    k = 3 if args.quick else 10
    rounds = 1 if args.quick else args.runs
    agent_bin = RELEASE / "shoal-agent"
    longpoll, polled = [], []
    for r in range(rounds):
        # Long-poll: real agents wait on the real router; the plan is published while they wait.
        md = MetadataServer(OUT / "readiness", k, hold=True)
        procs = []
        try:
            for i in range(k):
                logp = md.dir / f"agent-{i}.log"
                p = subprocess.Popen(
                    [str(agent_bin), "run", "--once", "--config", str(md.config(f"node-{i}")),
                     "--docker-host", f"unix://{md.dir}/no-docker.sock", "--image-dir", str(md.dir)],
                    stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=open(logp, "w"),
                    env={**os.environ, "RUST_LOG": "info"})
                procs.append((p, logp))
            deadline = time.monotonic() + 30
            while md.stats()[0] < k:
                if time.monotonic() > deadline:
                    raise BenchError("agents never all long-polled")
                time.sleep(0.05)
            time.sleep(0.2)
            t0 = md.publish()
            deadline = time.monotonic() + 30
            got = {}
            while len(got) < k:
                for i, (p, logp) in enumerate(procs):
                    if i not in got:
                        t = plan_received_us(logp)
                        if t is not None:
                            got[i] = t
                if time.monotonic() > deadline:
                    raise BenchError(f"only {len(got)} of {k} agents received the plan")
                time.sleep(0.02)
            longpoll += [(t - t0) / 1000 for t in got.values()]
        finally:
            for p, _ in procs:
                p.kill()
                p.wait()
            md.stop()
        # 5 s polling, as 2014: pollers start at random moments before the plan is ready.
        md = MetadataServer(OUT / "readiness", k, hold=True)
        procs = []
        try:
            start = time.monotonic()
            offsets = sorted(random.uniform(0, 5) for _ in range(k))
            for i, off in enumerate(offsets):
                time.sleep(max(0, start + off - time.monotonic()))
                procs.append(subprocess.Popen(
                    ["bash", str(SHELL_AGENT), "--fetch-only", str(md.config(f"node-{i}"))],
                    stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                    env={**os.environ, "SHELL_AGENT_POLL": "5"}))
            time.sleep(max(0, start + 5 - time.monotonic()))
            t0 = md.publish()
            for p in procs:
                out, err = p.communicate(timeout=30)
                words = out.split()
                if p.returncode != 0 or words[:1] != ["plan-received"]:
                    raise BenchError(f"5 s poller failed ({p.returncode}): {out} {err}")
                polled.append((int(words[1]) - t0) / 1000)
        finally:
            for p in procs:
                if p.poll() is None:
                    p.kill()
                    p.wait()
            md.stop()
        log(f"readiness: round {r + 1}/{rounds}: long-poll max {max(longpoll):.1f} ms, 5 s polling max {max(polled):.0f} ms")
    rep.raw["readiness"] = {"longpoll": longpoll, "polled": polled}

    def row(name, v):
        return [name, len(v), f"{statistics.median(v):.1f} ms", f"{percentile(v, 99):.1f} ms", f"{max(v):.1f} ms"]

    lines = [
        f"{k} agents wait for a plan that is not ready yet; it is published; each agent's "
        "`plan received` log line (µs timestamps, after the plan is parsed and validated) "
        f"minus the publication time. {rounds} round(s). Long-poll: the real `shoal-agent`. "
        "5 s polling: `bench/shell-agent.sh --fetch-only` (the 2014 loop: curl, then "
        "`sleep 5`), each started at a random moment in the 5 s before publication. "
        "Target: p99 within 20 ms.",
        "",
    ]
    lines += table(["", "samples", "median", "p99", "max"], [row("long-poll (shoal-agent)", longpoll),
                                                              row("fixed 5 s polling (2014)", polled)])
    rep.section("3. Readiness latency", lines)


# ---------------------------------------------------------------------------------
# 4. Metadata serving


NGINX_CONF = """
worker_processes auto;
user root;
daemon off;
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    sendfile on;
    tcp_nopush on;
    tcp_nodelay on;
    keepalive_timeout 65;
    keepalive_requests 1000000;
    default_type application/json;
    client_body_temp_path {dir}/tmp;
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        root {dir}/www;
        location / {{ }}
    }}
}}
"""


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def wrk(url, seconds, conns):
    out = run(["wrk", "-t2", f"-c{conns}", f"-d{seconds}s", "--latency", url]).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))

    def lat(p):
        m = re.search(rf"^\s+{p}%\s+([\d.]+)(us|ms|s)\s*$", out, re.M)
        v, u = float(m.group(1)), m.group(2)
        return v / 1000 if u == "us" else v * 1000 if u == "s" else v

    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if errors:
        raise BenchError(f"wrk saw {errors.group(1)} error answers from {url}")
    return {"rps": rps, "p50": lat(50), "p99": lat(99)}


def fetch(url):
    with urllib.request.urlopen(url, timeout=10) as r:
        return r.read()


def hold_long_polls(n_polls, extra):
    """Opens n_polls connections, each holding a long-poll; returns the server's RSS
    before and while they are held."""
    md = MetadataServer(OUT / "longpoll", 3, extra=extra)
    socks = []
    try:
        time.sleep(0.3)
        _, rss0 = md.stats()
        host, port_s = md.addr.rsplit(":", 1)
        req = (f"GET /metadata/v1/{md.key}?wait=60&after=1 HTTP/1.1\r\nHost: {host}\r\n\r\n").encode()
        for _ in range(n_polls):
            s = socket.create_connection((host, int(port_s)), timeout=10)
            s.sendall(req)
            socks.append(s)
        deadline = time.monotonic() + 30
        while md.stats()[0] < n_polls:
            if time.monotonic() > deadline:
                raise BenchError(f"only {md.stats()[0]} of {n_polls} long-polls held")
            time.sleep(0.1)
        time.sleep(0.5)
        waiting, rss1 = md.stats()
    finally:
        for s in socks:
            s.close()
        md.stop()
    return {"rss0_kib": rss0, "rss1_kib": rss1, "held": waiting}


def bench_metadata(rep, args):
    seconds = 3 if args.quick else 10
    runs = 1 if args.quick else args.runs
    conns = 50
    md = MetadataServer(OUT / "metadata", 100)
    ndir = OUT / "nginx"
    shutil.rmtree(ndir, ignore_errors=True)
    (ndir / "www" / "metadata" / "v1").mkdir(parents=True)
    (ndir / "tmp").mkdir()
    shutil.copy(md.plan_path, ndir / "www" / "metadata" / "v1" / md.key)
    port = free_port()
    (ndir / "nginx.conf").write_text(NGINX_CONF.format(dir=ndir, port=port))
    nginx = subprocess.Popen(["nginx", "-p", str(ndir), "-e", str(ndir / "error.log"), "-c", str(ndir / "nginx.conf")],
                             stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    # The same router on a single-threaded runtime: shows what tokio's cross-thread
    # wake-ups cost when server and load generator share two cores.
    md1 = MetadataServer(OUT / "metadata-1", 100, workers=1)
    coord_url = f"{md.url}/metadata/v1/{md.key}"
    coord1_url = f"{md1.url}/metadata/v1/{md1.key}"
    nginx_url = f"http://127.0.0.1:{port}/metadata/v1/{md.key}"
    servers = (("coordinator", coord_url), ("coordinator, 1 worker thread", coord1_url), ("nginx", nginx_url))
    res = {who: [] for who, _ in servers}
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                body = fetch(nginx_url)
                break
            except OSError:
                if nginx.poll() is not None or time.monotonic() > deadline:
                    raise BenchError(f"nginx did not start: {nginx.stderr.read() if nginx.stderr else ''}")
                time.sleep(0.05)
        if body != fetch(coord_url) or body != fetch(coord1_url):
            raise BenchError("nginx and the coordinator do not serve the same bytes")
        size = len(body)
        for r in range(runs):
            for who, url in servers:
                log(f"metadata: wrk against {who}, run {r + 1}/{runs}")
                res[who].append(wrk(url, seconds, conns))
    finally:
        nginx.terminate()
        try:
            nginx.wait(10)
        except subprocess.TimeoutExpired:
            nginx.kill()
            nginx.wait()
        md.stop()
        md1.stop()

    # 10,000 held long-polls, served as `shoal serve` serves them (its own HTTP/1
    # driver, server/h1.rs), as it served them before (axum::serve), and by hyper's
    # HTTP/1 server with half-closed connections allowed.
    # Each connection is a file descriptor here and in the server.
    n_polls = min(10000, resource.getrlimit(resource.RLIMIT_NOFILE)[0] - 500)
    polls = {}
    for variant, extra in (("shoal", ()), ("axum::serve", ("--server", "axum")),
                           ("half_close", ("--server", "half-close"))):
        log(f"metadata: {n_polls} long-polls ({variant})")
        polls[variant] = hold_long_polls(n_polls, extra)
    rep.raw["metadata"] = {"wrk": res, "plan_bytes": size, "longpoll": polls}

    def med(who, k):
        return statistics.median(x[k] for x in res[who])

    ratio = med("coordinator", "rps") / med("nginx", "rps")
    ratio1 = med("coordinator, 1 worker thread", "rps") / med("nginx", "rps")
    rows = []
    for who, _ in servers:
        rows.append([who, summary([x["rps"] for x in res[who]], "req/s"), summary([x["p50"] for x in res[who]], "ms", 2),
                     summary([x["p99"] for x in res[who]], "ms", 2)])
    lines = [
        f"The plan of a 100-node demo cluster ({size} bytes), built by `shoal::engine::planner::build` "
        "and served by the coordinator's own metadata router (`coordinator/examples/metadata_bench.rs`) "
        "or by Debian's nginx from a file with the same bytes. "
        f"`wrk -t2 -c{conns} -d{seconds}s --latency` on loopback, {runs} run(s) each, alternating. "
        "Same machine for server and load generator (2 cores shared).",
        "",
    ]
    lines += table(["server", "requests/s", "p50 latency", "p99 latency"], rows)
    lines += ["", f"Coordinator throughput: **{ratio * 100:.0f}%** of nginx's (target ≥ 80%); "
              f"on one worker thread {ratio1 * 100:.0f}%.", ""]
    body = []
    for variant, label in (("shoal", "`shoal serve`'s metadata listener (server/h1.rs)"),
                           ("axum::serve", "`axum::serve` (hyper; as `shoal serve` before)"),
                           ("half_close", "hyper HTTP/1, `half_close(true)`")):
        p = polls[variant]
        grow = p["rss1_kib"] - p["rss0_kib"]
        body.append([label, f"{p['rss0_kib'] / 1024:.1f} MiB", f"{p['rss1_kib'] / 1024:.1f} MiB ({p['held']} held)",
                     f"**{grow / 1024:.1f} MiB** ({grow * 1024 / max(p['held'], 1):.0f} bytes each)",
                     "met" if grow / 1024 < 100 else "missed"])
    lines += [f"{n_polls:,} long-polls (`?wait=60&after=1`, one connection each) held at once; "
              "the coordinator's RSS before and while holding them (target: < 100 MiB):", ""]
    lines += table(["served by", "RSS before", "RSS holding them", "growth", ""], body)
    rep.section("4. Metadata serving", lines)


# ---------------------------------------------------------------------------------
# 6. Status reports against a real `shoal serve`, before and after group commit

# main before issue #12: every report a transaction of its own (one fsync each), run on
# a tokio worker under a std mutex.
BASELINE_COMMIT = "dd7d294"


def baseline_shoal():
    """`shoal` as it was at BASELINE_COMMIT, built once into target/bench-baseline
    (seeded with this tree's release artifacts, so only Shoal's own crates compile).
    None when the commit is not in this clone (a shallow CI clone)."""
    base = TARGET / "bench-baseline"
    binary = base / "target" / "release" / "shoal"
    stamp = base / "commit"
    if binary.exists() and stamp.exists() and stamp.read_text().strip() == BASELINE_COMMIT:
        return binary
    if run(["git", "-C", str(REPO), "cat-file", "-e", BASELINE_COMMIT + "^{commit}"], check=False).returncode:
        log(f"status: commit {BASELINE_COMMIT} is not in this clone; no baseline")
        return None
    src = base / "src"
    shutil.rmtree(src, ignore_errors=True)
    src.mkdir(parents=True)
    run(["bash", "-c", f"git -C '{REPO}' archive {BASELINE_COMMIT} | tar -x -C '{src}'"])
    if not (base / "target" / "release").exists() and RELEASE.exists():
        (base / "target").mkdir(parents=True, exist_ok=True)
        run(["cp", "-a", str(RELEASE), str(base / "target" / "release")])
    log(f"status: building the baseline coordinator ({BASELINE_COMMIT}, release; once, then cached)")
    run(["cargo", "build", "--release", "--quiet", "-p", "shoal", "--bin", "shoal"], cwd=src,
        env={**os.environ, "CARGO_TARGET_DIR": str(base / "target")})
    stamp.write_text(BASELINE_COMMIT)
    return binary


def strace_fsyncs(path):
    """fsync + fdatasync calls in a `strace -c` summary."""
    n = 0
    for line in Path(path).read_text().splitlines():
        f = line.split()
        if f and f[-1] in ("fsync", "fdatasync") and len(f) >= 5:
            n += int(f[3])
    return n


class SeededServe:
    """`binary` serving a CREATING cluster of `nodes` nodes (`bench`, its plan published),
    seeded by `metadata_bench --seed-only` in `work`; the agents' configurations are in
    `work/agents`. A context manager: the server stops on exit."""

    def __init__(self, binary, work, nodes, prefix, octet, label, env=None):
        self.binary, self.work, self.nodes, self.prefix, self.octet, self.label = (
            binary, work, nodes, prefix, octet, label)
        # SHOAL_STORE_URL here seeds and serves from PostgreSQL instead of SQLite.
        self.env = env or {}
        self.state = work / "state"
        self.port = None
        self.p = None
        self.logf = None

    def __enter__(self):
        shutil.rmtree(self.work, ignore_errors=True)
        self.work.mkdir(parents=True)
        self.state.mkdir(mode=0o700)
        run([str(RELEASE / "examples" / "metadata_bench"), "--dir", str(self.work), "--nodes", str(self.nodes),
             "--first-ip", "10.217.0.10", "--seed-only"], env={**os.environ, **self.env})
        self.port = free_port()
        self.logf = open(self.work / "serve.log", "w")
        self.p = subprocess.Popen(
            [str(self.binary), "--state-dir", str(self.state), "serve", "--api-listen", "127.0.0.1:0",
             "--metadata-listen", f"127.0.0.1:{self.port}", "--rate-limit", "0",
             "--max-conns-per-source", "10000", "--local-vpc", f"10.216.{self.octet}.0/24",
             "--local-prefix", self.prefix],
            stdin=subprocess.DEVNULL, stdout=self.logf, stderr=self.logf,
            env={**os.environ, "RUST_LOG": "warn", **self.env})
        deadline = time.monotonic() + 30
        while not (self.state / "api.json").exists():
            if self.p.poll() is not None or time.monotonic() > deadline:
                self.__exit__(None, None, None)
                raise BenchError(f"{self.label}: shoal serve did not start: "
                                 f"{(self.work / 'serve.log').read_text()[-2000:]}")
            time.sleep(0.05)
        return self

    def __exit__(self, *exc):
        if self.p:
            self.p.terminate()
            try:
                self.p.wait(30)
            except subprocess.TimeoutExpired:
                self.p.kill()
                self.p.wait()
        if self.logf:
            self.logf.close()

    def load(self, rounds, same=False):
        """Every agent reports `rounds` times, all at once (status_load; each report
        different, or with `same` the same one again, as liveness reports are); its JSON line."""
        out = json.loads(run([str(RELEASE / "examples" / "status_load"), "--url", f"https://127.0.0.1:{self.port}",
                              "--ca", str(self.state / "ca.pem"), "--agents", str(self.work / "agents"),
                              "--rounds", str(rounds)] + (["--same"] if same else [])).stdout)
        # A coordinator that drops some reports under the load is a figure (the
        # "not delivered" column); one that takes none is a broken benchmark.
        if out["errors"] >= out["reports"]:
            raise BenchError(f"{self.label}: all {out['errors']} reports failed")
        return out

    def api(self):
        """The operator API's (host, port) and token."""
        url = json.loads((self.state / "api.json").read_text())["url"]
        host, port = url.removeprefix("http://").split(":")
        return host, int(port), (self.state / "token").read_text().strip()

    def cpu_seconds(self):
        """The server's CPU time so far (user + system)."""
        f = Path(f"/proc/{self.p.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")


def status_run(binary, label, nodes, rounds, prefix, octet, same=False):
    """Seeds a CREATING cluster of `nodes` nodes, serves it with `binary`, and has every
    node report `rounds` times at once (the same report again with `same`, as liveness
    reports are); then again under strace to count fsyncs."""
    with SeededServe(binary, OUT / "status" / label, nodes, prefix, octet, label) as srv:
        out = srv.load(rounds, same)
        trace = srv.work / "strace.txt"
        st = subprocess.Popen(["strace", "-f", "-c", "-e", "trace=fsync,fdatasync", "-o", str(trace),
                               "-p", str(srv.p.pid)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(1.0)
        traced = srv.load(2, same)
        st.send_signal(signal.SIGINT)
        st.wait(30)
        out["fsyncs"] = strace_fsyncs(trace)
        out["traced_reports"] = traced["reports"]
        out["fsyncs_per_report"] = out["fsyncs"] / max(traced["reports"], 1)
        return out


def bench_status(rep, args, prefix, octet):
    nodes = 200 if args.quick else 1000
    rounds = 2 if args.quick else 5
    runs = 1 if args.quick else args.runs
    if shutil.which("strace") is None:
        raise BenchError("strace is missing (bench/run installs it)")
    variants = [("after", RELEASE / "shoal"), ("liveness", RELEASE / "shoal")]
    base = None if args.quick else baseline_shoal()
    if base:
        variants.insert(0, ("before", base))
    res = {v: [] for v, _ in variants}
    for r in range(runs):
        for label, binary in variants:
            log(f"status: {nodes} agents x {rounds} reports ({label}), run {r + 1}/{runs}")
            res[label].append(status_run(binary, label, nodes, rounds, f"{prefix}{label[0]}", octet,
                                         same=label == "liveness"))
    rep.raw["status"] = res
    names = {"before": f"before (`{BASELINE_COMMIT}`: one transaction and fsync per report, on the async workers)",
             "after": "after (a database thread, group commit)",
             "liveness": "after, liveness reports (each agent's same report again: only its last-seen time is written)"}
    rows = []
    for label, _ in variants:
        x = res[label]
        rows.append([names[label], summary([v["per_sec"] for v in x], "reports/s"),
                     summary([v["p50_ms"] for v in x], "ms", 1), summary([v["p99_ms"] for v in x], "ms", 1),
                     summary([v["first_round_p99_ms"] for v in x], "ms", 0),
                     summary([v["fsyncs_per_report"] for v in x], "", 3),
                     summary([v["errors"] for v in x], "", 0)])
    lines = [
        f"{nodes} simulated agents (`coordinator/examples/status_load.rs`, one HTTPS client each) report "
        f"{rounds} times each, all at once, to a real `shoal serve` holding a CREATING cluster of {nodes} nodes "
        "(seeded by `metadata_bench --seed-only`), TLS with the coordinator's CA, rate limit off. "
        "fsyncs are counted by `strace -f -c -e trace=fsync,fdatasync` on the coordinator in a second pass "
        f"of 2 reports per agent. {runs} run(s), alternating.",
        "",
    ]
    lines += table(["coordinator", "reports/s", "p50", "p99", "p99 of the first report (TLS handshake)",
                    "fsyncs per report", f"not delivered (of {nodes * rounds})"], rows)
    if not base:
        lines += ["", "(No baseline in this run: --quick, or the baseline commit is not in this clone.)"]
    rep.section("6. Status reports", lines)




# ---------------------------------------------------------------------------------
# 14. Several coordinators on PostgreSQL

class Postgres:
    """A throwaway PostgreSQL server of Debian's postgresql (as tests/src/postgres.rs):
    initdb as the postgres user, a Unix socket in a directory of its own, no TCP."""

    PASSWORD = "bench-pg-secret"

    def __init__(self, work):
        self.dir = work
        bins = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"),
                      key=lambda p: int(p.parent.parent.name))
        if not bins:
            raise BenchError("PostgreSQL's server binaries are missing (scripts/install-deps installs postgresql)")
        self.bin = bins[-1].parent

    def __enter__(self):
        shutil.rmtree(self.dir, ignore_errors=True)
        self.dir.mkdir(parents=True)
        shutil.chown(self.dir, "postgres", "postgres")
        pw = self.dir / "pw"
        pw.write_text(self.PASSWORD)
        shutil.chown(pw, "postgres")
        as_pg = ["runuser", "-u", "postgres", "--"]
        run(as_pg + [str(self.bin / "initdb"), "--auth-local=scram-sha-256", "--username=shoal", "--locale=C",
                     "--encoding=UTF8", "--pwfile", str(pw), "-D", str(self.dir / "data")], cwd=self.dir)
        pw.unlink()
        run(as_pg + [str(self.bin / "pg_ctl"), "-D", str(self.dir / "data"), "-l", str(self.dir / "server.log"),
                     "-o", f"-c listen_addresses='' -c unix_socket_directories='{self.dir}' -c max_connections=200",
                     "-w", "-t", "60", "start"], cwd=self.dir)
        return self

    def __exit__(self, *exc):
        run(["runuser", "-u", "postgres", "--", str(self.bin / "pg_ctl"), "-D", str(self.dir / "data"),
             "-m", "fast", "-w", "stop"], check=False, cwd=self.dir)
        shutil.rmtree(self.dir, ignore_errors=True)

    def url(self, db):
        host = str(self.dir).replace("/", "%2F")
        return f"postgresql://shoal:{self.PASSWORD}@{host}/{db}"

    def create(self, db):
        run(["psql", "-h", str(self.dir), "-U", "shoal", "-d", "postgres", "-v", "ON_ERROR_STOP=1",
             "-c", f'CREATE DATABASE "{db}"'], env={**os.environ, "PGPASSWORD": self.PASSWORD})


def serve_sim(state, log_path, env, prefix, octet):
    """`shoal serve` with the sim provider on `state`; returns (process, api url)."""
    api = state / "api.json"
    api.unlink(missing_ok=True)
    logf = open(log_path, "a")
    p = subprocess.Popen(
        [str(RELEASE / "shoal"), "--state-dir", str(state), "serve", "--api-listen", "127.0.0.1:0",
         "--metadata-listen", "127.0.0.1:0", "--enable-sim-provider", "--local-vpc", f"10.216.{octet}.0/24",
         "--local-prefix", prefix],
        stdin=subprocess.DEVNULL, stdout=logf, stderr=logf, env={**os.environ, "RUST_LOG": "info", **env})
    deadline = time.monotonic() + 30
    while not api.exists():
        if p.poll() is not None or time.monotonic() > deadline:
            p.kill()
            raise BenchError(f"shoal serve did not start: {Path(log_path).read_text()[-2000:]}")
        time.sleep(0.02)
    return p, json.loads(api.read_text())["url"]


def shoal_cli(state, url, *args):
    return run([str(RELEASE / "shoal"), "--state-dir", str(state), *args],
               env={**os.environ, "SHOAL_COORDINATOR": url})


def created_until_plan(state, url, name, timeout=60):
    """Asks `url` for a 3-node sim cluster; seconds until its plan is published."""
    t0 = time.monotonic()
    shoal_cli(state, url, "cluster", "create", name, "--provider", "sim", "--nodes", "3")
    while time.monotonic() - t0 < timeout:
        v = json.loads(shoal_cli(state, url, "cluster", "show", name, "--json").stdout)
        if v.get("generation", 0) >= 1:
            return time.monotonic() - t0
        time.sleep(0.05)
    raise BenchError(f"cluster {name} got no plan within {timeout} s")


def wait_api(url, state, timeout=60):
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if run([str(RELEASE / "shoal"), "--state-dir", str(state), "cluster", "list"], check=False,
               env={**os.environ, "SHOAL_COORDINATOR": url}).returncode == 0:
            return
        time.sleep(0.02)
    raise BenchError(f"{url} did not answer")


def failover_run(pg, work, prefix, octet, i):
    """Two coordinators on one database: the leader killed with SIGKILL; seconds until the
    follower took the lease, and until a creation asked of it then had its plan."""
    db = f"fail{i}"
    pg.create(db)
    env = {"SHOAL_STORE_URL": pg.url(db)}
    state = work / f"state{i}"
    shutil.rmtree(state, ignore_errors=True)
    state.mkdir(parents=True)
    a, _ = serve_sim(state, work / f"a{i}.log", env, prefix, octet)
    t0 = time.monotonic()
    while "leading" not in (work / f"a{i}.log").read_text():
        if time.monotonic() - t0 > 30:
            a.kill()
            raise BenchError("the first coordinator never took the lease")
        time.sleep(0.02)
    b, b_url = serve_sim(state, work / f"b{i}.log", env, prefix, octet)
    try:
        time.sleep(4)
        t0 = time.monotonic()
        a.kill()
        a.wait()
        while "took the lease" not in (work / f"b{i}.log").read_text():
            if time.monotonic() - t0 > 60:
                raise BenchError("the follower never took the lease")
            time.sleep(0.02)
        took = time.monotonic() - t0
        plan = created_until_plan(state, b_url, f"f{i}")
        return {"lease_s": took, "resumed_s": took + plan}
    finally:
        for p in (a, b):
            if p.poll() is None:
                p.terminate()
                p.wait(30)


def restart_run(work, prefix, octet, i):
    """One coordinator on SQLite, killed with SIGKILL and started again at once (what
    systemd's Restart= does): seconds until its API answered again, and until a creation
    asked of it then had its plan."""
    state = work / f"sqlite{i}"
    shutil.rmtree(state, ignore_errors=True)
    state.mkdir(parents=True)
    a, _ = serve_sim(state, work / f"s{i}.log", {}, prefix, octet)
    time.sleep(1)
    t0 = time.monotonic()
    a.kill()
    a.wait()
    a, url = serve_sim(state, work / f"s{i}.log", {}, prefix, octet)
    try:
        wait_api(url, state)
        up = time.monotonic() - t0
        plan = created_until_plan(state, url, f"r{i}")
        return {"lease_s": up, "resumed_s": up + plan}
    finally:
        a.terminate()
        a.wait(30)


def bench_postgres(rep, args, prefix, octet):
    runs = 1 if args.quick else min(args.runs, 3)
    nodes = 200 if args.quick else 1000
    rounds = 2 if args.quick else 5
    work = OUT / "postgres"
    # The logs are searched for the takeover: none may be left from an earlier run.
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    res = {"failover": [], "restart": [], "status": {"sqlite": [], "postgres": [], "sqlite-liveness": [],
                                                      "postgres-liveness": []}}
    with Postgres(work / "pg") as pg:
        for r in range(runs):
            log(f"postgres: failover, run {r + 1}/{runs}")
            res["failover"].append(failover_run(pg, work, prefix + "p", octet, r))
            log(f"postgres: SQLite restart, run {r + 1}/{runs}")
            res["restart"].append(restart_run(work, prefix + "q", octet, r))
            for store in ("sqlite", "postgres"):
                for same in (False, True):
                    label = store + ("-liveness" if same else "")
                    env = {}
                    if store == "postgres":
                        db = f"status{r}{'l' if same else ''}"
                        pg.create(db)
                        env = {"SHOAL_STORE_URL": pg.url(db)}
                    log(f"postgres: {nodes} agents x {rounds} reports ({label}), run {r + 1}/{runs}")
                    with SeededServe(RELEASE / "shoal", work / f"status-{label}", nodes, prefix + "s", octet,
                                     label, env) as srv:
                        res["status"][label].append(srv.load(rounds, same))
    rep.raw["postgres"] = res
    rows = [
        ["two coordinators on PostgreSQL: the leader killed (SIGKILL)",
         summary([v["lease_s"] for v in res["failover"]], "s", 1),
         summary([v["resumed_s"] for v in res["failover"]], "s", 1)],
        ["one coordinator on SQLite: killed (SIGKILL) and started again at once (systemd Restart=)",
         summary([v["lease_s"] for v in res["restart"]], "s", 1),
         summary([v["resumed_s"] for v in res["restart"]], "s", 1)],
    ]
    lines = [
        "Failover: two `shoal serve` (release build, sim provider) on one database of a throwaway PostgreSQL "
        f"{'' if not res['failover'] else ''}server (Unix socket, same machine), sharing a state directory; the "
        "leader is killed with SIGKILL 4 s after both started; measured until the follower's log says it took the "
        "lease, and until a 3-node creation asked of it then has its plan published. Beside it, what a user would "
        "otherwise run: one coordinator on SQLite, killed and started again at once, as systemd's `Restart=` does "
        "(which needs the machine itself to survive).",
        "",
    ]
    lines += table(["setup", "driving again (lease taken / API answers)", "a creation asked then has its plan"], rows)
    names = {"sqlite": "SQLite (group commit)", "postgres": "PostgreSQL (one transaction per report)",
             "sqlite-liveness": "SQLite, liveness reports", "postgres-liveness": "PostgreSQL, liveness reports"}
    srows = []
    for label in ("sqlite", "postgres", "sqlite-liveness", "postgres-liveness"):
        x = res["status"][label]
        srows.append([names[label], summary([v["per_sec"] for v in x], "reports/s"),
                      summary([v["p50_ms"] for v in x], "ms", 1), summary([v["p99_ms"] for v in x], "ms", 1),
                      summary([v["errors"] for v in x], "", 0)])
    lines += [
        "",
        f"Status reports: {nodes} simulated agents (`status_load`) report {rounds} times each, all at once, to one "
        "`shoal serve` holding a CREATING cluster seeded by `metadata_bench --seed-only` into SQLite or into "
        "PostgreSQL (same machine, Unix socket, fsync on, default settings). Liveness rows: the same report again. "
        f"{runs} run(s).",
        "",
    ]
    lines += table(["store", "reports/s", "p50", "p99", f"not delivered (of {nodes * rounds})"], srows)
    rep.section("14. Several coordinators on PostgreSQL", lines)


# ---------------------------------------------------------------------------------
# 13. One coordinator, many agents (the sim provider and shoal-agent-sim)

SIM_BLUEPRINT = (REPO / "bench" / "agent-sim" / "simdemo.toml").read_text()


def proc_rss_kib(pid):
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def proc_cpu_seconds(pid):
    f = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")


def metric(coord, name):
    req = urllib.request.Request(coord.url + "/metrics")
    req.add_header("Authorization", f"Bearer {coord.token}")
    with urllib.request.urlopen(req, timeout=30) as r:
        for line in r.read().decode().splitlines():
            if line.startswith(name + " ") or line.startswith(name + "{"):
                return float(line.rsplit(" ", 1)[1])
    return None


class Sim:
    """shoal-agent-sim over a directory of agent configurations; `stats()` asks it for
    its figures (a JSON line)."""

    def __init__(self, agents_dir, sources, extra=()):
        self.p = subprocess.Popen(
            [str(RELEASE / "shoal-agent-sim"), "--agents", str(agents_dir), "--sources", sources, *extra],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)

    def stats(self):
        self.p.stdin.write("stats\n")
        self.p.stdin.flush()
        line = self.p.stdout.readline()
        if not line:
            raise BenchError("shoal-agent-sim ended early")
        return json.loads(line)

    def stop(self):
        if self.p.poll() is None:
            try:
                self.p.stdin.close()
            except OSError:
                pass
            try:
                self.p.wait(60)
            except subprocess.TimeoutExpired:
                self.p.kill()
                self.p.wait()


def wait_states(coord, names, state, timeout, what, generation=0):
    """Polls the cluster list (no nodes) every 0.5 s until every named cluster has been
    in `state` (with at least `generation`) at one poll or another; returns the seconds
    it took."""
    t0 = time.monotonic()
    seen = set()
    while True:
        listed = {c["name"]: c for c in coord.api("GET", "/v1/clusters")}
        states = {n: c["state"] for n, c in listed.items()}
        seen |= {n for n in names
                 if states.get(n) == state and (listed[n].get("generation") or 0) >= generation}
        if seen >= set(names):
            return time.monotonic() - t0
        bad = [n for n in names if states.get(n) == "FAILED"]
        if bad:
            raise BenchError(f"{what}: {bad} FAILED")
        if time.monotonic() - t0 > timeout:
            raise BenchError(f"{what}: not all {state} after {timeout}s: {states}")
        time.sleep(0.5)


def sim_coordinator(prefix, octet, extra=()):
    """A release `shoal serve` offering the sim provider, its metadata listener on a
    free loopback port."""
    return Coordinator(prefix, octet, extra=("--enable-sim-provider", "--metadata-listen",
                                              f"127.0.0.1:{free_port()}", *extra))


def create_sim_clusters(coord, clusters, nodes):
    """Creates the clusters on the sim provider and waits until each has its plan (and
    so its agents' configurations written)."""
    for c in clusters:
        coord.api("POST", "/v1/clusters", {"name": c, "provider": "sim", "nodes": nodes,
                                           "blueprint_toml": SIM_BLUEPRINT})
    wait_states(coord, clusters, "CREATING", 300, "plans", generation=1)


def fleet_run(size, per_cluster, prefix, octet, sources, extra_serve=(), extra_sim=()):
    """`size` simulated agents in clusters of `per_cluster` nodes on one coordinator:
    boot, steady state (every agent holding its long-poll, liveness reports), a new plan
    to every agent (a scale down of each cluster), a burst of status reports, delete."""
    clusters = [f"f{i}" for i in range(max(1, size // per_cluster))]
    n = size // len(clusters)
    coord = sim_coordinator(prefix, octet, extra_serve)
    out = {"agents": n * len(clusters), "clusters": len(clusters), "per_cluster": n}
    sim = burst = None
    try:
        pid = coord.p.pid
        out["rss_idle_mib"] = proc_rss_kib(pid) / 1024
        t0 = time.monotonic()
        create_sim_clusters(coord, clusters, n)
        out["create_s"] = time.monotonic() - t0
        agents = coord.state / "sim" / "agents"
        log(f"agents: {out['agents']} simulated agents boot")
        t0 = time.monotonic()
        sim = Sim(agents, sources, extra_sim)
        out["boot_s"] = wait_states(coord, clusters, "AVAILABLE", 900, "boot")
        boot = sim.stats()
        out["boot_report_ms"] = boot["report_ms"]
        out["boot_errors"] = boot["errors"]
        # Steady state: every agent holds its long-poll and sends a liveness report
        # every report_secs (5 s by default).
        time.sleep(10)
        conns0 = metric(coord, "shoal_metadata_connections_total") or 0
        s0, c0, w0 = sim.stats(), proc_cpu_seconds(pid), time.monotonic()
        time.sleep(20)
        s1, c1, w1 = sim.stats(), proc_cpu_seconds(pid), time.monotonic()
        out["steady_conns_per_sec"] = ((metric(coord, "shoal_metadata_connections_total") or 0) - conns0) / (w1 - w0)
        out["held_long_polls"] = metric(coord, "shoal_metadata_long_polls_in_flight")
        out["rss_held_mib"] = proc_rss_kib(pid) / 1024
        reports = s1["reports"] - s0["reports"]
        out["steady_reports_per_sec"] = reports / (w1 - w0)
        out["steady_cpu_share"] = (c1 - c0) / (w1 - w0)
        out["cpu_us_per_report_steady"] = (c1 - c0) / max(reports, 1) * 1e6
        out["steady_errors"] = {k: v - s0["errors"].get(k, 0) for k, v in s1["errors"].items()
                                if v - s0["errors"].get(k, 0)}
        out["lost_steady"] = metric(coord, "shoal_nodes_lost_total")
        # A new plan to every agent: each cluster loses its last node (its drain hook
        # reported done by its simulated agent), so every agent gets two generations:
        # 2 (the node leaving) and 3 (without it).
        log("agents: a scale down of every cluster (a new plan to every agent)")
        bytes0 = sim.stats()["plan_bytes"]
        t0 = time.monotonic()
        refused = 0
        for c in clusters:
            # A cluster shown DEGRADED (a node lost) refuses a scale (409): asked again
            # until it is AVAILABLE.
            until = time.monotonic() + 300
            while True:
                try:
                    coord.api("POST", f"/v1/clusters/{c}/scale", {"remove": [f"node-{n - 1}"]})
                    break
                except BenchError as e:
                    if "HTTP 408" in str(e):
                        # The answer took longer than the API's 20 s deadline: the
                        # change may be recorded all the same.
                        out["scale_timeouts"] = out.get("scale_timeouts", 0) + 1
                        if coord.api("GET", f"/v1/clusters/{c}").get("changes", [{}])[-1].get("id", 1) > 1:
                            break
                    elif "HTTP 409" not in str(e) or time.monotonic() > until:
                        raise
                    refused += 1
                    time.sleep(0.5)
        out["scale_refused"] = refused
        deadline = time.monotonic() + 600
        while True:
            after = sim.stats()
            got = (after["delivery_ms"].get("3") or {}).get("count", 0)
            if got >= out["agents"] or time.monotonic() > deadline:
                break
            time.sleep(1)
        out["scale_s"] = time.monotonic() - t0
        out["delivery_ms"] = after["delivery_ms"].get("2")
        out["delivered_3"] = got
        # Two generations to every agent (and a little more to the leaving ones).
        out["plan_bytes_per_agent_generation"] = (after["plan_bytes"] - bytes0) / max(2 * out["agents"], 1)
        # A burst of reports while every agent still holds its long-poll: each agent's
        # configuration once more, 5 reports each, all at once.
        log("agents: a burst of 5 reports per agent")
        out["burst"], out["cpu_us_per_report_burst"] = reporting_sim(
            pid, agents, sources, "--mode", "reports", "--rounds", "5")
        out["rss_after_burst_mib"] = proc_rss_kib(pid) / 1024
        # Sustained reports: the agents of one cluster (1,000) send 5,000 reports a
        # second in all for 20 s, each on the connection it keeps (opened first), while
        # every agent of the boot simulator still holds its long-poll.
        # At most 5 a second per agent: each agent has its own source address, and the
        # per-source rate limit is 20/s (the quick run's 200 agents ask 1,000/s).
        out["rate_asked"] = min(RATE_REPORTS, 5 * n)
        log(f"agents: {out['rate_asked']}/s sustained for {RATE_SECONDS} s")
        # One directory per cluster, named <cluster>-<uid>.
        first = sorted(agents.glob(f"{clusters[0]}-*"))[0]
        out["rate"], out["cpu_us_per_report_rate"] = reporting_sim(
            pid, first, sources, "--mode", "rate", "--rate", str(out["rate_asked"]), "--seconds", str(RATE_SECONDS))
        out["lost_total"] = metric(coord, "shoal_nodes_lost_total")
        db = sum(f.stat().st_size for f in coord.state.glob("shoal.db*"))
        out["db_mib"] = db / (1 << 20)
        t0 = time.monotonic()
        for c in clusters:
            coord.api("DELETE", f"/v1/clusters/{c}")
        wait_states(coord, clusters, "DELETED", 600, "delete")
        out["delete_s"] = time.monotonic() - t0
    finally:
        if sim:
            sim.stop()
        coord.stop()
    return out


RATE_REPORTS = 5000
RATE_SECONDS = 20


def reporting_sim(pid, agents_dir, sources, *mode):
    """A second shoal-agent-sim (`mode`: `--mode reports` or `--mode rate` and its
    arguments) over `agents_dir`, from its own loopback range, while the boot simulator
    runs: its final figures, and the coordinator's (`pid`) CPU time per report."""
    c0 = proc_cpu_seconds(pid)
    out = run([str(RELEASE / "shoal-agent-sim"), "--agents", str(agents_dir), *mode,
               "--sources", burst_sources(sources)]).stdout
    c1 = proc_cpu_seconds(pid)
    figures = json.loads(out.strip().splitlines()[-1])
    kept = {k: figures[k] for k in ("agents", "reports", "reports_per_sec", "report_ms", "errors", "seconds")}
    return kept, (c1 - c0) / max(figures["reports"], 1) * 1e6


def burst_sources(sources):
    """Another /16 of loopback for the burst's clients (the boot simulator's agents keep
    theirs)."""
    a, b = sources.split(".")[:2]
    return f"{a}.{(int(b) + 1) % 256}.0.0/16"


def bench_agents(rep, args, prefix, octet):
    sizes = [200] if args.quick else [1000, 10000]
    base = 40 + octet % 100
    res = {}
    runs = [(s, s, (), ()) for s in sizes]
    compare = not args.quick and not args.agents_sizes_only
    if compare:
        # 1,000 agents asking for plans as they are (the agent before it asked for gzip).
        runs.insert(1, ("1000, plans not gzipped", 1000, (), ("--no-gzip",)))
        # The same 10,000 agents with liveness reports every 30 s (lost after 120 s).
        runs.append(("10000, reports every 30 s", 10000, ("--report-interval", "30", "--lost-after", "120"), ()))
    for i, (key, size, extra, sim_extra) in enumerate(runs):
        log(f"agents: {key} simulated agents")
        res[key] = fleet_run(size, 1000 if size >= 1000 else size, f"{prefix}{i}", octet,
                             f"127.{base + 2 * i}.0.0/16", extra_serve=extra, extra_sim=sim_extra)
        # Kept as each run ends: a later run that breaks loses nothing before it.
        (OUT / "agents-partial.json").write_text(json.dumps({str(k): v for k, v in res.items()}, indent=1))
    old = None
    if compare:
        # What 10,000 agents met before this change: at most 4,096 connections.
        log("agents: 10000 simulated agents, --max-conns 4096 (the former default)")
        old = fleet_run_refused(10000, f"{prefix}o", octet, f"127.{base + 6}.0.0/16")
    rep.raw["agents"] = {"runs": {str(k): v for k, v in res.items()}, "old_cap": old}
    keys = [k for k, _, _, _ in runs]

    def title(k):
        r = res[k]
        every = "30 s" if "30 s" in str(k) else "5 s (default)"
        plain = ", plans not gzipped" if "gzipped" in str(k) else ""
        return f"{r['agents']:,} agents ({r['clusters']} × {r['per_cluster']:,} nodes), liveness every {every}{plain}"

    head = ["figure"] + [title(k) for k in keys]

    def row(label, f):
        return [label] + [f(res[k]) for k in keys]

    def ms(d, k):
        return "-" if not d else f"{d[k]:.0f} ms"

    rows = [
        row("coordinator RSS, idle / every agent holding its long-poll / after the burst",
            lambda r: f"{r['rss_idle_mib']:.0f} / {r['rss_held_mib']:.0f} / {r['rss_after_burst_mib']:.0f} MiB"),
        row("long-polls held (metrics)", lambda r: f"{r['held_long_polls']:.0f}" if r["held_long_polls"] is not None else "-"),
        row("RSS per held long-poll", lambda r: f"{(r['rss_held_mib'] - r['rss_idle_mib']) * 1024 / max(r['agents'], 1):.1f} KiB"),
        row("clusters created (plans published)", lambda r: f"{r['create_s']:.1f} s"),
        row("boot: simulator start → every cluster AVAILABLE (each at least once)", lambda r: f"{r['boot_s']:.1f} s"),
        row("boot reports: p50 / p99 (5 per agent, all at once)",
            lambda r: f"{ms(r['boot_report_ms'], 'p50')} / {ms(r['boot_report_ms'], 'p99')}"),
        row("plan published → every agent has it: p50 / p99 / max",
            lambda r: f"{ms(r['delivery_ms'], 'p50')} / {ms(r['delivery_ms'], 'p99')} / {ms(r['delivery_ms'], 'max')}"),
        row("plan bytes sent per agent per generation (its cluster's whole plan)",
            lambda r: f"{r['plan_bytes_per_agent_generation'] / 1024:.0f} KiB"),
        row("scale down of every cluster → every agent has the plan without the removed node",
            lambda r: f"{r['scale_s']:.1f} s ({r['delivered_3']:,} agents)"),
        row("nodes marked lost (silent past --lost-after): in the steady state / in all",
            lambda r: f"{r['lost_steady'] or 0:.0f} / {r['lost_total'] or 0:.0f}"),
        row("steady state: liveness reports/s, coordinator CPU", lambda r: f"{r['steady_reports_per_sec']:.0f}/s, {100 * r['steady_cpu_share']:.0f} % of a core"),
        row("steady state: new metadata connections/s (TLS handshakes)",
            lambda r: f"{r['steady_conns_per_sec']:.1f}/s"),
        row("CPU time per report: steady / burst", lambda r: f"{r['cpu_us_per_report_steady']:.0f} / {r['cpu_us_per_report_burst']:.0f} µs"),
        row("burst of reports (5 per agent, new connections, polls held): reports/s",
            lambda r: f"{r['burst']['reports_per_sec']:.0f}/s"),
        row("burst: p50 / p99 / max", lambda r: f"{ms(r['burst']['report_ms'], 'p50')} / {ms(r['burst']['report_ms'], 'p99')} / {ms(r['burst']['report_ms'], 'max')}"),
        row(f"sustained for {RATE_SECONDS} s (one cluster's agents, kept connections, polls held): reports/s asked, got",
            lambda r: f"{r['rate_asked']:,}/s, {r['rate']['reports_per_sec']:,.0f}/s ({r['rate']['agents']:,} agents)"),
        row("sustained: p50 / p99 / max", lambda r: f"{ms(r['rate']['report_ms'], 'p50')} / {ms(r['rate']['report_ms'], 'p99')} / {ms(r['rate']['report_ms'], 'max')}"),
        row("CPU time per report, sustained", lambda r: f"{r['cpu_us_per_report_rate']:.0f} µs"),
        row("scale requests over the API's 20 s deadline (408), of one per cluster",
            lambda r: f"{r.get('scale_timeouts', 0)}"),
        row("errors (boot; steady; burst; sustained)", lambda r: f"{sum(r['boot_errors'].values())}; {sum(r['steady_errors'].values())}; {sum(r['burst']['errors'].values())}; {sum(r['rate']['errors'].values())}"),
        row("database (shoal.db, -wal, -shm)", lambda r: f"{r['db_mib']:.1f} MiB"),
        row("delete every cluster", lambda r: f"{r['delete_s']:.1f} s"),
    ]
    lines = [
        "One release `shoal serve --enable-sim-provider` per size; clusters of the demo blueprint's "
        "shape (one server, the rest workers with a drain hook) on the `sim` provider, which records "
        "VMs and writes each node's agent configuration; `shoal-agent-sim` (bench/agent-sim) runs one "
        "simulated agent per node, each with its own HTTPS client and loopback source address, "
        "speaking the real protocol: long-poll (`wait=30`), five phase reports per plan, a liveness "
        "report every `--report-interval` seconds sent, as the real agent does, on the connection of a long-poll "
        "asked to end when the report is due (no new connection), and plans asked for gzipped (one run "
        "with `--no-gzip`, as agents asked before). The simulator runs on the "
        "same 2 cores as the coordinator: every figure includes that competition. One run per size.",
        "",
    ]
    lines += table(head, rows)
    if old:
        lines += ["", f"With `--max-conns 4096` (the cap before this change) and 10,000 agents: "
                  f"{old['ready']:,} of {old['agents']:,} agents got their plan and reported ready within "
                  f"{old['waited_s']:.0f} s; the others' connections were refused "
                  f"({old['connect_errors']:,} failed connections)."]
    rep.section("13. One coordinator, many agents", lines)


def fleet_run_refused(size, prefix, octet, sources):
    """10,000 agents against the former connection cap: how many get in."""
    clusters = [f"f{i}" for i in range(size // 1000)]
    coord = sim_coordinator(prefix, octet, ("--max-conns", "4096"))
    sim = None
    try:
        create_sim_clusters(coord, clusters, 1000)
        sim = Sim(coord.state / "sim" / "agents", sources)
        t0 = time.monotonic()
        time.sleep(60)
        s = sim.stats()
        return {"agents": s["agents"], "ready": s["ready"], "waited_s": time.monotonic() - t0,
                "connect_errors": sum(v for k, v in s["errors"].items() if "connect" in k or "request" in k)}
    finally:
        if sim:
            sim.stop()
        for c in clusters:
            try:
                coord.api("DELETE", f"/v1/clusters/{c}")
            except BenchError:
                pass
        try:
            wait_states(coord, clusters, "DELETED", 600, "delete")
        except BenchError:
            pass
        coord.stop()


# ---------------------------------------------------------------------------------
# 7. Scaling a running cluster


def started_containers(view):
    """Per node: each container's id, start time and restart count (what a restart
    or a replacement would change)."""
    out = {}
    for n in view["nodes"]:
        ids = docker_cli(n["docker_socket"], "ps", "-q", "--no-trunc").stdout.split()
        if ids:
            text = docker_cli(n["docker_socket"], "inspect", "--format",
                              "{{.Id}} {{.State.StartedAt}} {{.RestartCount}}", *ids).stdout
            out[n["id"]] = sorted(text.split("\n"))
    return out


def scale_to(coord, name, workers, timeout=180):
    """Scales the demo workers to `workers`; returns the cluster once the change ended."""
    v = coord.api("POST", f"/v1/clusters/{name}/scale", {"nodes": workers})
    change = next((c for c in reversed(v.get("changes", [])) if c["outcome"] == "running"), None)
    if change is None:
        raise BenchError(f"scale of {name} to {workers} workers started no change")
    deadline = time.monotonic() + timeout
    while True:
        v = coord.api("GET", f"/v1/clusters/{name}")
        ch = next(c for c in v["changes"] if c["id"] == change["id"])
        if ch["outcome"] == "done" and v["state"] == "AVAILABLE":
            return v, ch
        if ch["outcome"] == "failed":
            raise BenchError(f"scale of {name} failed: {ch.get('reason')}")
        if time.monotonic() > deadline:
            raise BenchError(f"scale of {name} not done after {timeout}s: {json.dumps(ch)}")
        time.sleep(0.02)


def bench_scale(rep, args, prefix, octet):
    runs = 1 if args.quick else args.runs
    steps = [1, 5]
    shutil.rmtree(OUT / "coordinator", ignore_errors=True)
    coord = Coordinator(prefix, octet)
    res = {k: [] for k in steps}
    downs = {k: [] for k in steps}
    fresh = {k: [] for k in steps}
    name = "sc"
    try:
        log("scale: a 3-node demo cluster")
        cluster_run(coord, name, 3, timeout=120)
        for r in range(runs):
            for k in steps:
                log(f"scale: +{k}, run {r + 1}/{runs}")
                before = coord.api("GET", f"/v1/clusters/{name}")
                old = {n["id"] for n in before["nodes"]}
                started = started_containers(before)
                v, ch = scale_to(coord, name, 2 + k)
                after = started_containers(v)
                restarted = sum(1 for n in old if after.get(n) != started.get(n))
                conv = {c["node"]: c["at_ms"] - ch["published_ms"] for c in ch["converged"]}
                res[k].append({
                    "available": ch["done_ms"] - ch["asked_ms"],
                    "published": ch["published_ms"] - ch["asked_ms"],
                    "existing": [conv[n] for n in old if n in conv],
                    "new": [conv[n] for n in conv if n not in old],
                    "restarted": restarted,
                })
                v, ch = scale_to(coord, name, 2)
                downs[k].append(ch["done_ms"] - ch["asked_ms"])
        for r in range(runs):
            for k in steps:
                other = f"f{k}r{r}"
                log(f"scale: the alternative, a {3 + k}-node cluster from nothing, run {r + 1}/{runs}")
                fresh[k].append(cluster_run(coord, other, 3 + k, timeout=60 + 15 * (3 + k))["total"])
                cluster_delete(coord, other)
        cluster_delete(coord, name)
    finally:
        coord.stop()
    rep.raw["scale"] = {"up": res, "down": downs, "fresh": fresh}
    rows = []
    for k in steps:
        x = res[k]
        avail = [v["available"] for v in x]
        rows.append([
            f"+{k} node{'s' if k > 1 else ''} (3 → {3 + k})",
            summary(avail),
            f"{max(avail)} ms",
            summary([v["published"] for v in x]),
            summary([e for v in x for e in v["existing"]]),
            f"{max(e for v in x for e in v['existing'])} ms",
            str(sum(v["restarted"] for v in x)),
            summary(fresh[k]),
            summary(downs[k]),
        ])
    lines = [
        "A running 3-node demo cluster (local provider, release build) scaled up by 1 and by 5 "
        f"workers and back, {runs} run(s) each, alternating. From the coordinator's own record of "
        "the change (`changes` in `show`): asked → every node ready on the new plan (AVAILABLE), "
        "asked → plan published (the new VMs made and addressed), and for each node that was "
        "there before, the plan's publication → its `ready` on it (its reconvergence: FDB entries "
        "and hosts files of the new peers). Restarts are counted from Docker (container id, start "
        "time and restart count of every container on the nodes that stay). The alternative an "
        "operator without scaling has: delete and create a cluster of the new size; the scale "
        "down (drain hooks, VMs deleted, a plan without them) is shown for reference.",
        "",
    ]
    lines += table(["change", "to AVAILABLE: median (min–max)", "max", "plan published after",
                    "existing node reconverged", "max", "containers restarted",
                    "alternative: new cluster of that size", "scale back down"], rows)
    lines += ["", "Targets: +1 node < 2000 ms; an existing node's reconvergence < 100 ms with no "
              "container restarted."]
    rep.section("8. Scaling a running cluster (local provider, demo blueprint)", lines)


# ---------------------------------------------------------------------------------
# 12. Scaling a hadoop cluster: decommissioning first against deleting straight away


def hdfs_state(ip):
    """The NameNode's FSNamesystem and FSNamesystemState figures, in one dict (its JMX on
    the master node's port 50070)."""
    url = f"http://{ip}:50070/jmx?qry=Hadoop:service=NameNode,name=FSNamesystem*"
    with urllib.request.urlopen(url, timeout=10) as r:
        out = {}
        for bean in json.loads(r.read())["beans"]:
            out.update(bean)
        return out


def hdfs_live(ip):
    url = f"http://{ip}:50070/jmx?qry=Hadoop:service=NameNode,name=NameNodeInfo"
    with urllib.request.urlopen(url, timeout=10) as r:
        return json.loads(json.loads(r.read())["beans"][0]["LiveNodes"])


def fsck_short(sock):
    """Blocks `hdfs fsck /` (run in the NameNode's container) finds short of a replica:
    under-replicated plus missing. Exact at the moment it runs, unlike the NameNode's
    UnderReplicatedBlocks metric, which is refreshed only now and then."""
    out = docker_cli(sock, "exec", "namenode-node-0", "shoal-hadoop", "hdfs", "fsck", "/", check=False).stdout
    under = re.search(r"Under-replicated blocks:\s+(\d+)", out)
    if under is None:
        raise BenchError(f"fsck printed no summary: {out[-500:]}")
    missing = re.search(r"MISSING BLOCKS:\s+(\d+)", out)
    return int(under.group(1)) + (int(missing.group(1)) if missing else 0)


def change_done(coord, name, change_id, timeout):
    deadline = time.monotonic() + timeout
    while True:
        v = coord.api("GET", f"/v1/clusters/{name}")
        ch = next(c for c in v["changes"] if c["id"] == change_id)
        if ch["outcome"] == "done" and v["state"] == "AVAILABLE":
            return v, ch
        if ch["outcome"] == "failed":
            raise BenchError(f"change {change_id} of {name} failed: {ch.get('reason')}")
        if time.monotonic() > deadline:
            raise BenchError(f"change {change_id} of {name} not done after {timeout}s")
        time.sleep(0.1)


def poll_until(what, timeout, check):
    deadline = time.monotonic() + timeout
    while True:
        got = check()
        if got:
            return got
        if time.monotonic() > deadline:
            raise BenchError(f"{what}: not after {timeout}s")
        time.sleep(0.2)


def hadoop_scale_run(coord, name, blueprint_toml, mb):
    """A master and one worker; `mb` MB in 1 MB blocks, replication 2; workers 1 -> 3,
    then node-1 removed. Times in ms from each scale's request."""
    out = {}
    t = cluster_run(coord, name, 2, timeout=600, blueprint_toml=blueprint_toml)
    out["create"] = t["total"]
    try:
        hadoop_scale_steps(coord, name, mb, out)
    finally:
        cluster_delete(coord, name, timeout=300)
    return out


def hadoop_scale_steps(coord, name, mb, out):
    v = coord.api("GET", f"/v1/clusters/{name}")
    ip = v["nodes"][0]["private_ip"]
    master = v["nodes"][0]["docker_socket"]
    docker_cli(v["nodes"][1]["docker_socket"], "exec", "datanode-node-1", "bash", "-c",
               f"head -c {mb * 1000000} /dev/urandom >/tmp/f && shoal-hadoop hdfs dfs -D dfs.replication=2 "
               "-D dfs.blocksize=1048576 -put /tmp/f /kept.bin")
    t0 = time.monotonic()
    v = coord.api("POST", f"/v1/clusters/{name}/scale", {"group": "workers", "nodes": 3})
    change = next(c for c in reversed(v["changes"]) if c["outcome"] == "running")
    poll_until("3 DataNodes live", 180, lambda: len(hdfs_live(ip)) == 3)
    out["up_live"] = (time.monotonic() - t0) * 1000
    poll_until("every block with 2 replicas", 180, lambda: fsck_short(master) == 0)
    out["up_replicated"] = (time.monotonic() - t0) * 1000
    _, ch = change_done(coord, name, change["id"], 180)
    out["up_available"] = ch["done_ms"] - ch["asked_ms"]
    # Down: node-1 holds a replica of every block (it held the only one before).
    t0 = time.monotonic()
    v = coord.api("POST", f"/v1/clusters/{name}/scale", {"remove": ["node-1"]})
    change = next(c for c in reversed(v["changes"]) if c["outcome"] == "running")
    _, ch = change_done(coord, name, change["id"], 900)
    out["down_available"] = ch["done_ms"] - ch["asked_ms"]
    # From the VM's deletion on: how many blocks HDFS finds short of a replica (with the
    # drain, node-1's replicas were copied before; without, HDFS learns only when it
    # declares the DataNode dead, 30 s on, and copies from the one replica left), until
    # it has two on live DataNodes again.
    # fsck takes a few seconds (a client JVM): the figures are as fine as that.
    worst, dead = [0], []

    def settled():
        live = hdfs_state(ip)["NumLiveDataNodes"]
        if live == 2 and not dead:
            dead.append(time.monotonic())
        short = fsck_short(master)
        worst[0] = max(worst[0], short)
        return bool(dead) and short == 0
    poll_until("HDFS settled on 2 DataNodes", 300, settled)
    out["down_settled"] = (time.monotonic() - t0) * 1000
    out["down_short"] = worst[0]
    out["down_dead"] = (dead[0] - t0) * 1000


def bench_hadoop_scale(rep, args, prefix, octet):
    runs = 1 if args.quick else min(args.runs, 3)
    mb = 8 if args.quick else 32
    log("hadoop-scale: building the hadoop image (cached under target/cache/hadoop-image)")
    run([str(REPO / "cloud-init" / "build-hadoop-image"), str(IMAGES)])
    shipped = (REPO / "coordinator" / "blueprints" / "hadoop.toml").read_text()
    no_drain = "\n".join(l for l in shipped.splitlines() if not l.startswith("drain = ")) + "\n"
    if no_drain == shipped:
        raise BenchError("the hadoop blueprint has no drain hook to leave out")
    variants = [("decommission first (the blueprint's drain hook)", "hd", shipped),
                ("VM deleted straight away (no drain hook)", "hn", no_drain)]
    res = {label: [] for label, _, _ in variants}
    coord = Coordinator(prefix, octet, image_dir("hadoop", [HADOOP_IMAGE]))
    try:
        for r in range(runs):
            for label, key, toml in variants:
                log(f"hadoop-scale: {label}, run {r + 1}/{runs}")
                res[label].append(hadoop_scale_run(coord, f"{key}{r}", toml, mb))
                log(f"hadoop-scale: {res[label][-1]}")
    finally:
        coord.stop()
    rep.raw["hadoop_scale"] = res
    label0 = variants[0][0]
    up = res[label0]
    lines = [
        f"A hadoop cluster (local provider, release build) of a master and one worker, {mb} MB written "
        "with replication 2 in 1 MB blocks (the one worker holds the only replica of each), the workers "
        "scaled 1 → 3, then node-1 (a replica of every block) removed. Side by side, in the same run: "
        "the shipped blueprint, whose workers' drain hook has the NameNode decommission the DataNode "
        "before its VM goes, and the same blueprint without the hook, the VM deleted at once (what a "
        "scale did before the hook; HDFS then declares the DataNode dead after 30 s and copies its "
        f"blocks from the one replica left). {runs} run(s) each; times from the scale's request.",
        "",
    ]
    lines += table(["scale up 1 → 3 workers (shipped blueprint)", "median (min–max)"], [
        ["to AVAILABLE (the coordinator's record)", summary([x["up_available"] for x in up])],
        ["to 3 DataNodes live (NameNode JMX)", summary([x["up_live"] for x in up])],
        ["to every block with 2 replicas (fsck)", summary([x["up_replicated"] for x in up])],
        ["for reference: creating the 2-node cluster", summary([x["create"] for x in up])],
    ])
    lines += [""]
    lines += table(["remove node-1", "to AVAILABLE (VM gone)", "to node-1 declared dead",
                    "to HDFS settled (node-1 dead, fsck: every block with 2 live replicas)",
                    f"blocks short of a replica after the VM went (most fsck saw; the file has {-(-mb * 1000000 // 1048576)})"],
                   [[label, summary([x["down_available"] for x in res[label]]),
                     summary([x["down_dead"] for x in res[label]]),
                     summary([x["down_settled"] for x in res[label]]),
                     summary([x["down_short"] for x in res[label]], unit="", digits=0)] for label, _, _ in variants])
    rep.section("12. Scaling a hadoop cluster: decommissioning against deleting at once", lines)


# ---------------------------------------------------------------------------------
# 7. Watching a cluster: the console's event streams against polling the API


class Watcher(threading.Thread):
    """One browser tab's worth of watching: a console event stream (`sse` path, with the
    session cookie), or `GET path` with the bearer token every `every` seconds (what a
    dashboard or `watch shoal cluster show` does). Counts updates and bytes received."""

    def __init__(self, host, port, path, cookie=None, token=None, every=None):
        super().__init__(daemon=True)
        self.host, self.port, self.path, self.cookie, self.token, self.every = host, port, path, cookie, token, every
        self.stop = threading.Event()
        self.updates = 0
        self.bytes = 0
        self.error = None
        self.conn = None

    def run(self):
        try:
            self.conn = http.client.HTTPConnection(self.host, self.port, timeout=60)
            if self.every is None:
                self.conn.request("GET", self.path, headers={"Cookie": self.cookie, "Accept": "text/event-stream"})
                r = self.conn.getresponse()
                if r.status != 200:
                    raise BenchError(f"{self.path}: {r.status}")
                while not self.stop.is_set():
                    line = r.fp.readline()
                    if not line:
                        break
                    self.bytes += len(line)
                    if line.startswith(b"event: update"):
                        self.updates += 1
            else:
                while not self.stop.is_set():
                    self.conn.request("GET", self.path, headers={"Authorization": f"Bearer {self.token}"})
                    r = self.conn.getresponse()
                    body = r.read()
                    if r.status != 200:
                        raise BenchError(f"{self.path}: {r.status}")
                    self.bytes += len(body)
                    self.updates += 1
                    self.stop.wait(self.every)
        except (OSError, ValueError, http.client.HTTPException) as e:
            if not self.stop.is_set():
                self.error = e
        except BenchError as e:
            self.error = e

    def finish(self):
        self.stop.set()
        try:
            if self.conn and self.conn.sock:
                self.conn.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.join(10)
        if self.error:
            raise BenchError(f"watcher {self.path}: {self.error}")


def console_login(host, port, token):
    """A console session's cookie, as a browser gets it."""
    c = http.client.HTTPConnection(host, port, timeout=10)
    c.request("POST", "/console/login", body=f"token={token}",
              headers={"Content-Type": "application/x-www-form-urlencoded", "Origin": f"http://{host}:{port}"})
    r = c.getresponse()
    r.read()
    if r.status != 303:
        raise BenchError(f"console login: {r.status}")
    return r.getheader("Set-Cookie").split(";")[0]


def bench_console(rep, args, prefix, octet):
    nodes = 200 if args.quick else 1000
    tabs = 5
    window = 3 if args.quick else 8
    # Eight windows a run: three runs are enough to see the spread.
    runs = 1 if args.quick else min(args.runs, 3)
    variants = [
        ("none", "no watcher", None),
        ("sse-list", f"{tabs} console tabs on the list (event streams)", "/console/events"),
        ("sse-cluster", f"{tabs} console tabs on the cluster's page (event streams)", "/console/clusters/bench/events"),
        ("poll", f"{tabs} pollers of `GET /v1/clusters/bench` every 1 s (the API)", "/v1/clusters/bench"),
    ]
    res = {(v, busy): [] for v, _, _ in variants for busy in (False, True)}
    with SeededServe(RELEASE / "shoal", OUT / "console", nodes, prefix, octet, "console") as srv:
        host, port, token = srv.api()
        cookie = console_login(host, port, token)
        for r in range(runs):
            for busy in (False, True):
                for key, _, path in variants:
                    log(f"console: {key}, {'agents reporting' if busy else 'idle'}, run {r + 1}/{runs}")
                    ws = []
                    if path:
                        ws = [Watcher(host, port, path, cookie=cookie) if path.startswith("/console")
                              else Watcher(host, port, path, token=token, every=1.0) for _ in range(tabs)]
                    for w in ws:
                        w.start()
                    time.sleep(1.0)  # connected, first render sent
                    before = sum(w.updates for w in ws), sum(w.bytes for w in ws)
                    cpu0, t0 = srv.cpu_seconds(), time.monotonic()
                    reports = 0
                    while time.monotonic() - t0 < window:
                        if busy:
                            reports += srv.load(1)["reports"]
                        else:
                            time.sleep(0.2)
                    cpu, wall = srv.cpu_seconds() - cpu0, time.monotonic() - t0
                    updates = sum(w.updates for w in ws) - before[0]
                    got = sum(w.bytes for w in ws) - before[1]
                    for w in ws:
                        w.finish()
                    res[(key, busy)].append({"cpu_ms_per_s": cpu * 1000 / wall, "reports_per_s": reports / wall,
                                             "updates_per_tab_s": updates / max(len(ws), 1) / wall,
                                             "kb_per_tab_s": got / 1024 / max(len(ws), 1) / wall})
    rep.raw["console"] = {f"{k}-{'busy' if b else 'idle'}": v for (k, b), v in res.items()}
    rows = []
    for key, name, _ in variants:
        for busy in (False, True):
            x = res[(key, busy)]
            base = res[("none", busy)]
            extra = [a["cpu_ms_per_s"] - b["cpu_ms_per_s"] for a, b in zip(x, base)]
            rows.append([name, f"agents reporting ({summary([v['reports_per_s'] for v in x], '/s')})" if busy else "idle",
                         summary([v["cpu_ms_per_s"] for v in x], "ms/s", 1),
                         "-" if key == "none" else summary(extra, "ms/s", 1),
                         "-" if key == "none" else summary([v["updates_per_tab_s"] for v in x], "/s", 2),
                         "-" if key == "none" else summary([v["kb_per_tab_s"] for v in x], "KiB/s", 1)])
    lines = [
        f"A real `shoal serve` (release) holding a CREATING cluster of {nodes} nodes (seeded by "
        f"`metadata_bench --seed-only`), watched for {window} s by {tabs} clients at once in each way, idle and "
        f"while every agent reports once after the other without pause (`status_load --rounds 1` in a loop). "
        "CPU is the coordinator's (user + system, from /proc), per second of wall time; \"extra\" is over "
        "the same load with no watcher. Updates: events received (streams) or answers (pollers) per client. "
        f"{runs} run(s).",
        "",
    ]
    lines += table(["watching", "load", "coordinator CPU", "extra CPU", "updates per client", "received per client"], rows)
    rep.section("7. Watching a cluster: console streams against polling", lines)


# ---------------------------------------------------------------------------------


# ---------------------------------------------------------------------------------
# 6. Real VMs: the qemu provider


VM_IMAGE = TARGET / "vm-image" / "current"


def boot_stage(node, name):
    """A stage of the OS's boot report: (start, end) in ms since the VM's request, on
    the VM's own clock for both ends (end None while it runs)."""
    req = node.get("requested_ms") or 0
    for st in (node.get("boot") or {}).get("stages", []):
        if st["name"] == name:
            start = st["started_ms"] - req
            d = st.get("duration_ms")
            return start, (start + d if d is not None else None)
    return None


def qemu_run(coord, name, nodes, timeout):
    t0 = time.time() * 1000
    coord.api("POST", "/v1/clusters", {"name": name, "provider": "qemu", "nodes": nodes, "blueprint": "demo"})
    view = wait_available(coord, name, timeout, lambda: 1)
    wall = time.time() * 1000 - t0
    total = view["time_to_available_ms"]
    # cloud-init's last stage may end after the node is ready: wait for its result.
    deadline = time.monotonic() + 300
    while not all(((n.get("boot") or {}).get("cloud_init") or {}).get("status") not in (None, "running")
                  for n in view["nodes"]):
        if time.monotonic() > deadline:
            raise BenchError(f"cluster {name}: cloud-init unfinished: {json.dumps(view['nodes'])[:2000]}")
        time.sleep(2)
        view = coord.api("GET", f"/v1/clusters/{name}")
    per_node = []
    for n in view["nodes"]:
        status = ((n.get("boot") or {}).get("cloud_init") or {}).get("status")
        if status != "done":
            raise BenchError(f"{name}/{n['id']}: cloud-init {status}: {n.get('boot')}")
        req = n.get("requested_ms") or view["created_ms"]
        t = {p: first_timing(n, p) for p in ("agent-started", "plan-received", "network", "images", "containers", "ready")}
        if any(v is None for v in t.values()):
            raise BenchError(f"{name}/{n['id']}: timings incomplete: {n.get('timings')}")
        st = {k: boot_stage(n, k) for k in (
            "kernel", "initrd", "userspace", "systemd-networkd-wait-online.service", "docker.service",
            "shoal-agent.service", "init-local", "init", "modules-config", "modules-final")}
        if st["docker.service"] is None or st["docker.service"][1] is None:
            raise BenchError(f"{name}/{n['id']}: no Docker start in the boot report: {n.get('boot')}")
        dur = lambda k: (st[k][1] - st[k][0]) if st[k] and st[k][1] is not None else None
        end = lambda k: st[k][1] if st[k] else None
        ready = t["ready"]["started_ms"] - req
        per_node.append({
            "vm": (n["running_ms"] or req) - req,
            "kernel": dur("kernel"),
            "initrd": dur("initrd"),
            "userspace": dur("userspace"),
            "network_online": end("systemd-networkd-wait-online.service"),
            "ci_local": dur("init-local"),
            "ci_init": dur("init"),
            "ci_config": dur("modules-config"),
            "ci_final": dur("modules-final"),
            "ci_done": end("modules-final"),
            "docker_start": dur("docker.service"),
            "docker_ready": end("docker.service"),
            "agent_unit": st["shoal-agent.service"][0] if st["shoal-agent.service"] else None,
            "agent_started": t["agent-started"]["started_ms"] - req,
            "plan_received": t["plan-received"]["started_ms"] - req,
            "network": t["network"]["duration_ms"],
            "images": t["images"]["duration_ms"],
            "containers": t["containers"]["duration_ms"],
            "ready": ready,
            "shoal": ready - end("docker.service"),
        })
    return {"total": total, "wall": wall, "nodes": per_node}


def bench_qemu(rep, args, prefix):
    if not (VM_IMAGE / "manifest.json").is_file():
        raise BenchError(f"{VM_IMAGE} is missing: build it with cloud-init/build-vm-image")
    runs = 1 if args.quick else min(args.runs, 3)
    in_use = run(["ip", "-o", "-4", "addr", "show"]).stdout
    octet = next(o for o in range(250, 1, -1) if f" 10.219.{o}.1/" not in in_use and f" 10.216.{o}.1/" not in in_use)
    coord = Coordinator(prefix, octet, extra=["--qemu-vpc", f"10.219.{octet}.0/24", "--qemu-image", str(VM_IMAGE)])
    results = {}
    accel = "?"
    try:
        for size in (1, 2):
            results[size] = []
            for r in range(runs):
                name = f"q{size}r{r}"
                log(f"qemu: {size} VM(s), run {r + 1}/{runs} (minutes under TCG)")
                res = qemu_run(coord, name, size, timeout=900)
                view = coord.api("GET", f"/v1/clusters/{name}")
                accel = view["nodes"][0].get("accel", accel)
                log(f"qemu: {size} VM(s) AVAILABLE in {res['total']} ms")
                results[size].append(res)
                cluster_delete(coord, name, timeout=180)
    finally:
        coord.stop()
    rep.raw["qemu"] = results
    s1 = lambda v: summary(v, "s", 1)
    sec = lambda vals: [v / 1000 if v is not None else None for v in vals]
    lines = [f"Real VMs of the qemu provider under {accel.upper()}, the demo blueprint, {runs} run(s) each. "
             "The OS's stages come from each VM's own report (kernel start from /proc/uptime, systemd's "
             "timestamps, cloud-init's status.json), the agent's from its phase timings; both on the VM's "
             "clock. Times marked + are since the VM was requested (the coordinator's clock, so they carry "
             "the guest clock's offset, about a second); the others are lengths. Median over every node of "
             "every run (min–max).", ""]
    rows = [["to AVAILABLE (coordinator)"] + [s1(sec([r["total"] for r in results[k]])) for k in (1, 2)]]
    labels = [
        ("kernel", "kernel (to the initrd)"),
        ("initrd", "initrd"),
        ("userspace", "systemd start-up (to every start-up job done)"),
        ("ci_local", "cloud-init init-local"),
        ("ci_init", "cloud-init init (network)"),
        ("network_online", "+ network online"),
        ("docker_start", "Docker starting (docker.service)"),
        ("docker_ready", "+ Docker ready"),
        ("agent_unit", "+ agent unit started"),
        ("agent_started", "+ agent's first report"),
        ("plan_received", "+ plan received"),
        ("network", "agent: network phase"),
        ("images", "agent: images phase (present in the baked Docker store)"),
        ("containers", "agent: containers phase (create, start, 1 s settle)"),
        ("ready", "+ node ready"),
        ("shoal", "**Shoal on top of the OS: Docker ready → node ready**"),
        ("ci_config", "cloud-init modules-config"),
        ("ci_final", "cloud-init modules-final"),
        ("ci_done", "+ cloud-init done"),
    ]
    for key, label in labels:
        rows.append([label] + [s1(sec([n[key] for r in results[k] for n in r["nodes"]])) for k in (1, 2)])
    lines += table(["stage", "1 VM", "2 VMs at once"], rows)
    shoal = statistics.median([n["shoal"] for k in (1, 2) for r in results[k] for n in r["nodes"]])
    lines += ["", f"Target: Docker ready → node ready < 5 s under TCG: {'met' if shoal < 5000 else 'missed'} "
              f"(median {shoal / 1000:.1f} s)."]
    rep.section(f"10. Real VMs (qemu provider, {accel.upper()}): the OS's boot and Shoal's part", lines)


# ---------------------------------------------------------------------------------
# 11. Health: a silent node marked lost, faults healed, repair


def vm_pid(node, name):
    """The live pid in a node's VM directory's `name` pid file, or None."""
    try:
        pid = int((Path(node["agent_log"]).parent / name).read_text().strip())
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (OSError, ValueError):
        return None
    return None if ") Z " in stat else pid


def poll(what, limit, f, every=0.02):
    """Polls `f` until it returns something truthy; (it, ms taken)."""
    t0 = time.monotonic()
    while True:
        v = f()
        if v:
            return v, (time.monotonic() - t0) * 1000
        if time.monotonic() - t0 > limit:
            raise BenchError(f"health: {what}: not within {limit}s")
        time.sleep(every)


def degraded_then_available(view, since_ms, needle):
    """(DEGRADED at, the AVAILABLE after it) in the cluster's record of states, for the
    first DEGRADED since `since_ms` whose reason contains `needle`; None until both are
    there."""
    events = view.get("events") or []
    for i, e in enumerate(events):
        if e["state"] == "DEGRADED" and e["at_ms"] >= since_ms and needle in (e.get("reason") or ""):
            after = next((a for a in events[i + 1:] if a["state"] == "AVAILABLE"), None)
            return (e["at_ms"], after["at_ms"]) if after else None
    return None


def fdb_peers(ns):
    p = run(netns(ns, ["bridge", "-j", "fdb", "show", "dev", "shoal-vx"]), check=False)
    try:
        entries = json.loads(p.stdout or "[]")
    except ValueError:
        return []
    return sorted(e["dst"] for e in entries if e.get("mac") == "00:00:00:00:00:00" and "dst" in e)


def bench_health(rep, args, prefix, octet):
    runs = 1 if args.quick else args.runs
    report_s, lost_s = 1, 4
    coord = Coordinator(prefix, octet, extra=["--report-interval", str(report_s), "--lost-after", str(lost_s)])
    keys = ("lost", "back", "agent", "agent_avail", "dockerd", "dockerd_degraded", "dockerd_avail",
            "vx_healed", "vx_degraded", "vx_avail", "fdb_healed", "fdb_avail", "br_healed", "br_degraded", "br_avail", "probe_unhealthy",
            "probe_degraded", "probe_back", "exit_degraded", "exit_avail", "cpu_probed", "cpu_plain",
            "reboot_agent", "reboot_avail", "repair", "fresh")
    res = {k: [] for k in keys}
    name = "hl"

    def show():
        return coord.api("GET", f"/v1/clusters/{name}")

    def node(v, nid):
        return next(n for n in v["nodes"] if n["id"] == nid)

    def fault_record(since, needle, limit=60):
        v, _ = poll(f"DEGRADED ({needle}) then AVAILABLE", limit,
                    lambda: degraded_then_available(show(), since, needle), 0.05)
        return v

    try:
        log("health: a 3-node demo cluster")
        cluster_run(coord, name, 3, timeout=120)
        for r in range(runs):
            log(f"health: run {r + 1}/{runs}")
            n2 = node(show(), "node-2")
            ns = n2["netns"]
            peers = sorted(n["private_ip"] for n in show()["nodes"] if n["id"] != "node-2")

            # Silent: frozen until marked lost, then resumed until AVAILABLE.
            agent = vm_pid(n2, "agent.pid")
            os.kill(agent, signal.SIGSTOP)
            _, ms = poll("lost", 30, lambda: node(show(), "node-2")["phase"] == "lost", 0.05)
            res["lost"].append(ms)
            os.kill(agent, signal.SIGCONT)
            _, ms = poll("back", 30, lambda: show()["state"] == "AVAILABLE", 0.02)
            res["back"].append(ms)

            # The agent killed: restarted by the VM's init. Its new process reports from
            # the start (DEGRADED), then ready: the AVAILABLE after that DEGRADED, not
            # the state the poll may still see from before.
            since = time.time() * 1000
            t0 = time.monotonic()
            os.kill(agent, signal.SIGKILL)
            poll("agent restarted", 10, lambda: (vm_pid(n2, "agent.pid") or agent) != agent, 0.005)
            res["agent"].append((time.monotonic() - t0) * 1000)
            _, up = fault_record(since, "node-2")
            res["agent_avail"].append(up - since)

            # dockerd killed: restarted by the init; the node dockerd-down meanwhile.
            dockerd = vm_pid(n2, "dockerd.pid")
            since = time.time() * 1000
            t0 = time.monotonic()
            os.kill(dockerd, signal.SIGKILL)
            poll("dockerd restarted", 10, lambda: (vm_pid(n2, "dockerd.pid") or dockerd) != dockerd, 0.005)
            res["dockerd"].append((time.monotonic() - t0) * 1000)
            down, up = fault_record(since, "dockerd-down")
            res["dockerd_degraded"].append(down - since)
            res["dockerd_avail"].append(up - since)

            # The VXLAN device deleted; then one FDB entry.
            since = time.time() * 1000
            t0 = time.monotonic()
            run(["ip", "-n", ns, "link", "del", "shoal-vx"])
            poll("shoal-vx back", 10, lambda: fdb_peers(ns) == peers, 0.005)
            res["vx_healed"].append((time.monotonic() - t0) * 1000)
            down, up = fault_record(since, "shoal-vx")
            res["vx_degraded"].append(down - since)
            res["vx_avail"].append(up - since)
            since = time.time() * 1000
            t0 = time.monotonic()
            run(netns(ns, ["bridge", "fdb", "del", "00:00:00:00:00:00", "dev", "shoal-vx", "dst", peers[0]]))
            poll("FDB entry back", 10, lambda: fdb_peers(ns) == peers, 0.005)
            res["fdb_healed"].append((time.monotonic() - t0) * 1000)
            _, up = fault_record(since, "FDB")
            res["fdb_avail"].append(up - since)
            # The bridge deleted: Docker's network made again, then the VXLAN device.
            since = time.time() * 1000
            t0 = time.monotonic()
            run(["ip", "-n", ns, "link", "del", "shoal0"])
            poll("shoal0 back", 10, lambda: run(["ip", "-n", ns, "link", "show", "shoal0"], check=False).returncode == 0
                 and fdb_peers(ns) == peers, 0.005)
            res["br_healed"].append((time.monotonic() - t0) * 1000)
            down, up = fault_record(since, "shoal0")
            res["br_degraded"].append(down - since)
            res["br_avail"].append(up - since)

            # The server's page taken away (httpd answers 404, the container runs on):
            # only its probe, kept up once the node is ready, can tell. Then put back.
            n0 = node(show(), "node-0")
            sock = n0["docker_socket"]
            server = next(k["hostname"].split(".")[0] for k in n0["containers"] if k["name"] == "server")
            www = "/var/lib/shoal-demo/www"
            since = time.time() * 1000
            t0 = time.monotonic()
            docker_cli(sock, "exec", server, "mv", f"{www}/index.html", f"{www}/off.html")
            poll("probe-failed", 30, lambda: (lambda n: n["phase"] == "unhealthy"
                                              and (n.get("error") or {}).get("reason") == "probe-failed")(
                node(show(), "node-0")), 0.02)
            res["probe_unhealthy"].append((time.monotonic() - t0) * 1000)
            t0 = time.monotonic()
            docker_cli(sock, "exec", server, "mv", f"{www}/off.html", f"{www}/index.html")
            poll("AVAILABLE after the page is back", 30, lambda: show()["state"] == "AVAILABLE", 0.02)
            res["probe_back"].append((time.monotonic() - t0) * 1000)
            down, _ = fault_record(since, "probe-failed")
            res["probe_degraded"].append(down - since)

            # httpd killed: the container exits and Docker's restart policy starts it.
            since = time.time() * 1000
            docker_cli(sock, "exec", server, "killall", "httpd")
            down, up = fault_record(since, "container-exited")
            res["exit_degraded"].append(down - since)
            res["exit_avail"].append(up - since)

            # What keeping a probe up costs the agent: CPU time over 10 s of a node whose
            # server probe is tried every second, beside node-2's (no probe kept up).
            def cpu_ms(n):
                pid = vm_pid(n, "agent.pid")
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
                return (int(fields[11]) + int(fields[12])) * 1000 / os.sysconf("SC_CLK_TCK")
            poll("AVAILABLE before the CPU sample", 30, lambda: show()["state"] == "AVAILABLE", 0.05)
            a0, b0 = cpu_ms(n0), cpu_ms(n2)
            time.sleep(10)
            res["cpu_probed"].append((cpu_ms(n0) - a0) / 10)
            res["cpu_plain"].append((cpu_ms(n2) - b0) / 10)

            # A reboot: every process of the VM killed, booted again from its user-data.
            agent = vm_pid(n2, "agent.pid")
            since = time.time() * 1000
            t0 = time.monotonic()
            coord.api("POST", f"/v1/clusters/{name}/nodes/node-2/reboot")
            poll("agent after the reboot", 60, lambda: (vm_pid(n2, "agent.pid") or agent) != agent, 0.01)
            res["reboot_agent"].append((time.monotonic() - t0) * 1000)
            _, up = fault_record(since, "node-2")
            res["reboot_avail"].append(up - since)

            # Repair: lost first, then a new VM for the same node.
            before = node(show(), "node-2").get("incarnation", 0)
            agent = vm_pid(n2, "agent.pid")
            os.kill(agent, signal.SIGSTOP)
            poll("lost again", 30, lambda: node(show(), "node-2")["phase"] == "lost", 0.05)
            t0 = time.monotonic()
            coord.api("POST", f"/v1/clusters/{name}/repair", {"nodes": ["node-2"]})
            poll("repaired", 120, lambda: (lambda v: v["state"] == "AVAILABLE"
                                             and node(v, "node-2").get("incarnation", 0) > before)(show()), 0.05)
            res["repair"].append((time.monotonic() - t0) * 1000)
        for r in range(runs):
            other = f"hf{r}"
            log(f"health: the alternative, a 3-node cluster from nothing, run {r + 1}/{runs}")
            res["fresh"].append(cluster_run(coord, other, 3, timeout=120)["total"])
            cluster_delete(coord, other)
        cluster_delete(coord, name)
    except BaseException:
        # Leave no VM behind (the cluster, and a fresh one if one was being made).
        for leftover in [name] + [f"hf{r}" for r in range(runs)]:
            try:
                cluster_delete(coord, leftover)
            except BenchError:
                pass
        raise
    finally:
        coord.stop()
    rep.raw["health"] = res

    def mx(k):
        return f"{max(res[k]):.0f} ms"

    never = "without #15: never"
    rows = [
        [f"agent frozen (SIGSTOP) → marked lost (timeout {lost_s} s, reports every {report_s} s)",
         summary(res["lost"]), mx("lost"), f"{lost_s} s + one sweep (1 s) + its time", never + " (shown ready)"],
        ["agent resumed (SIGCONT) → AVAILABLE", summary(res["back"]), mx("back"), "", ""],
        ["agent SIGKILLed → running again (the VM's init)", summary(res["agent"]), mx("agent"), "< 5 s", never],
        ["agent SIGKILLed → AVAILABLE (reconverged, reported ready)", summary(res["agent_avail"]),
         mx("agent_avail"), "", ""],
        ["dockerd SIGKILLed → running again (the VM's init)", summary(res["dockerd"]), mx("dockerd"), "< 5 s", never],
        ["dockerd SIGKILLed → DEGRADED (`dockerd-down`)", summary(res["dockerd_degraded"]),
         mx("dockerd_degraded"), "", never + " (shown AVAILABLE)"],
        ["dockerd SIGKILLed → AVAILABLE (dockerd answering, containers back, probes)",
         summary(res["dockerd_avail"]), mx("dockerd_avail"), "< 10 s", ""],
        ["`shoal-vx` deleted → back with its FDB entries (kernel, polled every 5 ms)",
         summary(res["vx_healed"]), mx("vx_healed"), "< 2 s", never + " (until the next plan generation)"],
        ["`shoal-vx` deleted → DEGRADED (`network-device-missing`)", summary(res["vx_degraded"]),
         mx("vx_degraded"), "", never + " (shown AVAILABLE)"],
        ["`shoal-vx` deleted → AVAILABLE", summary(res["vx_avail"]), mx("vx_avail"), "< 2 s", ""],
        ["an FDB entry deleted → back", summary(res["fdb_healed"]), mx("fdb_healed"), "< 2 s",
         never + " (until the next plan generation)"],
        ["an FDB entry deleted → AVAILABLE", summary(res["fdb_avail"]), mx("fdb_avail"), "< 2 s", ""],
        ["`shoal0` (the bridge) deleted → back with `shoal-vx` and its entries", summary(res["br_healed"]),
         mx("br_healed"), "< 2 s", never + " (until the next plan generation)"],
        ["`shoal0` deleted → DEGRADED (`network-device-missing`)", summary(res["br_degraded"]), mx("br_degraded"),
         "", never + " (shown AVAILABLE)"],
        ["`shoal0` deleted → AVAILABLE (the containers' endpoints made again, probed)", summary(res["br_avail"]),
         mx("br_avail"), "", ""],
        ["server's page taken away (probe failing, container running) → node `unhealthy` (`probe-failed`)",
         summary(res["probe_unhealthy"]), mx("probe_unhealthy"), "3 × 1 s + a try", never + " (shown ready)"],
        ["… → DEGRADED (the coordinator's record)", summary(res["probe_degraded"]), mx("probe_degraded"), "", ""],
        ["page back → AVAILABLE", summary(res["probe_back"]), mx("probe_back"), "1 s + a try", ""],
        ["httpd killed (the container exits, restarted by Docker) → DEGRADED (`container-exited`)",
         summary(res["exit_degraded"]), mx("exit_degraded"), "", "before: not reported (only the reconvergence)"],
        ["httpd killed → AVAILABLE", summary(res["exit_avail"]), mx("exit_avail"), "", ""],
        ["agent CPU, node with the server's probe kept up (1 HTTP try/s), per s idle",
         summary(res["cpu_probed"], "ms", 1), f"{max(res['cpu_probed']):.1f} ms", "",
         f"a node with no probe kept up: {summary(res['cpu_plain'], 'ms', 1)}"],
        ["`cluster reboot` of the node → its agent started", summary(res["reboot_agent"]), mx("reboot_agent"),
         "< 15 s", "before the fix of the stale /run: 17–19 s"],
        ["`cluster reboot` of the node → AVAILABLE", summary(res["reboot_avail"]), mx("reboot_avail"), "", ""],
        ["lost node repaired → AVAILABLE (old VM deleted, new one ready)", summary(res["repair"]),
         mx("repair"), "", f"a new 3-node cluster: {summary(res['fresh'])}, max {mx('fresh')}"],
    ]
    lines = [
        f"A 3-node demo cluster (local provider, release build), `shoal serve --report-interval {report_s} "
        f"--lost-after {lost_s}`; node-2 is the one hit (node-0, the server's, for its probe and its exit), "
        f"{runs} run(s), each fault in turn. Times from the "
        "fault (the signal sent, the command run) to what an operator would check: the operator API "
        "(polled every 20–50 ms), the cluster's record of states (`events`: the DEGRADED with the fault's "
        "reason and the AVAILABLE after it, stamped by the coordinator), the kernel (`ip`, `bridge`), or the "
        "VM's pid file naming a new live process. The alternative: what an operator had without issue #15 "
        "(no liveness, no healing: the fault stays, the cluster shown AVAILABLE), and for a repair a new "
        "cluster of the same size.",
        "",
    ]
    lines += table(["fault → outcome", "median (min–max)", "max", "bound", "alternative"], rows)
    rep.section("11. Health: liveness, healing, restarts, reboot, repair (local provider, demo blueprint)", lines)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="one iteration of each, small sizes (CI)")
    ap.add_argument("--runs", type=int, default=5, help="runs per figure (default 5)")
    ap.add_argument("--agents-sizes-only", action="store_true",
                    help="agents: only 1,000 and 10,000 agents at the default liveness, without the "
                         "comparison runs (plans not gzipped, reports every 30 s, the former connection cap)")
    ap.add_argument("--only", action="append", choices=["cluster", "agent", "readiness", "metadata", "footprint", "status", "console", "scale", "hadoop", "qemu", "health", "hadoop-scale", "agents", "postgres", "disks"],
                    help="run only these benchmarks (repeatable)")
    args = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("bench: run as root (namespaces, dockerd, nginx)")
    # 10,000 long-polls need as many sockets in this process and in the server.
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    OUT.mkdir(parents=True, exist_ok=True)
    only = set(args.only or ["cluster", "agent", "readiness", "metadata", "footprint", "status", "console", "scale", "hadoop", "health", "hadoop-scale", "agents", "postgres", "disks"])
    if "footprint" in only:
        only.add("agent")
    tag = f"sb{os.getpid() % 1000}"
    octet = os.getpid() % 250 + 1
    rep = Report()
    load_before = load()
    started = time.monotonic()
    failed = None

    def on_term(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    try:
        if "cluster" in only:
            bench_cluster(rep, args, tag + "c", octet)
        if "agent" in only:
            bench_agent(rep, args, tag + "a", octet)
        if "readiness" in only:
            bench_readiness(rep, args)
        if "metadata" in only:
            bench_metadata(rep, args)
        if "footprint" in only:
            bench_footprint(rep, args)
        if "status" in only:
            bench_status(rep, args, tag + "s", (octet + 100) % 250 + 1)
        if "console" in only:
            bench_console(rep, args, tag + "w", (octet + 150) % 250 + 1)
        if "scale" in only:
            bench_scale(rep, args, tag + "k", (octet + 50) % 250 + 1)
        if "hadoop" in only:
            bench_hadoop(rep, args, tag + "c", octet)
        if "hadoop-scale" in only:
            bench_hadoop_scale(rep, args, tag + "d", (octet + 200) % 250 + 1)
        if "qemu" in only:
            bench_qemu(rep, args, tag + "q")
        if "health" in only:
            bench_health(rep, args, tag + "h", (octet + 200) % 250 + 1)
        if "agents" in only:
            bench_agents(rep, args, tag + "f", (octet + 220) % 250 + 1)
        if "postgres" in only:
            bench_postgres(rep, args, tag + "g", (octet + 230) % 250 + 1)
        if "disks" in only:
            bench_disks(rep, args, tag + "b", (octet + 240) % 250 + 1)
    except (BenchError, KeyboardInterrupt) as e:
        failed = e
    rep.sections.sort(key=lambda s: int(s[0].split(".", 1)[0]))
    header = "\n".join([
        f"## Results{' (--quick: one run each, small sizes; not comparable)' if args.quick else ''}",
        "",
        f"- when: {dt.datetime.now(dt.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}, "
        f"{time.monotonic() - started:.0f} s",
        f"- machine: {machine()}",
        f"- load average (1, 5, 15 min) before: {load_before}; after: {load()}",
        f"- command: `bench/run{' --quick' if args.quick else ''}`",
    ])
    md = rep.markdown(header)
    (OUT / "results.md").write_text(md + "\n")
    (OUT / "results.json").write_text(json.dumps(rep.raw, indent=1, default=str) + "\n")
    print(md)
    if failed:
        print(f"bench: FAILED: {failed}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
