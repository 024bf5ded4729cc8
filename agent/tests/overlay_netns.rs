//! The overlay, against the real kernel: throwaway network namespaces stand in for VMs,
//! a veth (or a "cloud" bridge in a namespace of its own) for the underlay, and a plain
//! Linux bridge `shoal0` for the one Docker would create. The agent's netlink handle is
//! opened inside each namespace from this process through `netns::connect_in`, which
//! also exercises the dedicated-thread design: no test thread may end up elsewhere.
//!
//! Results are checked as an operator would: `ip -j -d link show shoal-vx`,
//! `bridge -j fdb show dev shoal-vx`, and a ping across the overlay.
//!
//! Run with `cargo test -p shoal-agent -- --include-ignored` as root.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::process::Command;

use serde_json::Value;
use shoal_agent::netns;
use shoal_agent::overlay::{self, VxlanSpec};
use shoal_e2e::{link_pair, require_privileges, run, unique_name, TestNetns};
use shoal_protocol::reason;

const TOOLS: &[&str] = &["ip", "bridge", "nsenter", "busybox"];
const VNI: u32 = 4242;
/// The name of the dedicated thread `netns::connect_in` uses; it alone may briefly sit
/// in another namespace.
const NETNS_THREAD: &str = "shoal-netns";

/// The network namespace of every thread of this process except `connect_in`'s own.
fn thread_namespaces() -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for task in std::fs::read_dir("/proc/self/task").expect("list threads") {
        let task = task.expect("thread entry").path();
        let comm = std::fs::read_to_string(task.join("comm")).unwrap_or_default();
        if comm.trim() == NETNS_THREAD {
            continue;
        }
        // A thread may end between listing and reading.
        if let Ok(ns) = std::fs::read_link(task.join("ns/net")) {
            out.insert(ns.display().to_string());
        }
    }
    out
}

/// Records the test process's namespace and checks, at the end, that every thread is
/// still in it and that no overlay device leaked into it.
struct HostCheck {
    namespace: String,
}

impl HostCheck {
    fn start() -> HostCheck {
        let namespace = std::fs::read_link("/proc/self/ns/net")
            .expect("own namespace")
            .display()
            .to_string();
        assert_eq!(thread_namespaces(), BTreeSet::from([namespace.clone()]));
        HostCheck { namespace }
    }

    fn verify(self) {
        assert_eq!(
            thread_namespaces(),
            BTreeSet::from([self.namespace.clone()]),
            "a thread of the test process changed network namespace"
        );
        let host = Command::new("ip")
            .args(["link", "show", overlay::VXLAN_NAME])
            .output()
            .expect("ip");
        assert!(
            !host.status.success(),
            "{} appeared in the host namespace",
            overlay::VXLAN_NAME
        );
    }
}

async fn handle_in(ns: &TestNetns) -> rtnetlink::Handle {
    let (connection, handle) = netns::connect_in(&ns.path())
        .await
        .expect("netlink socket inside the namespace");
    tokio::spawn(connection);
    handle
}

/// The stand-in for Docker's bridge: `shoal0` carrying the node's gateway address,
/// left down as Docker may leave it (converge must bring it up).
fn add_bridge(ns: &TestNetns, cidr: &str) {
    ns.ip(&["link", "add", overlay::BRIDGE_NAME, "type", "bridge"]);
    ns.ip(&["addr", "add", cidr, "dev", overlay::BRIDGE_NAME]);
}

fn spec(local: &str, mtu: Option<u32>) -> VxlanSpec {
    VxlanSpec {
        name: overlay::VXLAN_NAME.to_string(),
        vni: VNI,
        port: 4789,
        local: local.parse().expect("address"),
        underlay: "eth0".to_string(),
        mtu,
    }
}

fn ips(list: &[&str]) -> Vec<Ipv4Addr> {
    list.iter().map(|s| s.parse().expect("address")).collect()
}

fn has_link(ns: &TestNetns, name: &str) -> bool {
    ns.command("ip")
        .args(["link", "show", name])
        .output()
        .expect("ip")
        .status
        .success()
}

fn vxlan_json(ns: &TestNetns) -> Value {
    let links = ns.ip_json(&["-d", "link", "show", overlay::VXLAN_NAME]);
    links[0].clone()
}

/// The device as `ip -d link show` reports it, without the bridge port's running
/// timers (they tick on their own): what must not change when nothing is changed.
fn stable(mut link: Value) -> Value {
    if let Some(port) = link["linkinfo"]["info_slave_data"].as_object_mut() {
        port.retain(|key, _| !key.ends_with("_timer"));
    }
    link
}

/// The destinations of the all-zeros entries, as `bridge fdb show` lists them.
fn zero_entries(ns: &TestNetns) -> Vec<String> {
    let mut out: Vec<String> = fdb_own_entries(ns)
        .iter()
        .filter(|e| e["mac"] == "00:00:00:00:00:00")
        .map(|e| e["dst"].as_str().expect("dst").to_string())
        .collect();
    out.sort();
    out
}

/// The entries of the VXLAN device's own table (not the bridge's, which learns MACs
/// as traffic flows).
fn fdb_own_entries(ns: &TestNetns) -> Vec<Value> {
    let fdb = ns.bridge_json(&["fdb", "show", "dev", overlay::VXLAN_NAME]);
    fdb.as_array()
        .expect("fdb list")
        .iter()
        .filter(|e| e.get("master").is_none())
        .cloned()
        .collect()
}

/// Pings `address` from `ns`, allowing a few tries for ARP over a fresh tunnel.
fn pings(ns: &TestNetns, address: &str) -> bool {
    (0..3).any(|_| {
        ns.command("busybox")
            .args(["ping", "-c1", "-W2", address])
            .output()
            .expect("busybox ping")
            .status
            .success()
    })
}

fn assert_vxlan(ns: &TestNetns, local: &str, mtu: u64) {
    let link = vxlan_json(ns);
    let data = &link["linkinfo"]["info_data"];
    assert_eq!(link["linkinfo"]["info_kind"], "vxlan", "{link}");
    assert_eq!(data["id"], VNI, "{link}");
    assert_eq!(data["port"], 4789, "{link}");
    assert_eq!(data["local"], local, "{link}");
    assert_eq!(data["link"], "eth0", "{link}");
    assert_eq!(data["learning"], false, "{link}");
    assert_eq!(link["master"], overlay::BRIDGE_NAME, "{link}");
    assert_eq!(link["mtu"], mtu, "{link}");
    let flags = link["flags"].as_array().expect("flags");
    assert!(flags.contains(&Value::from("UP")), "{link}");
}

/// A "cloud": a bridge in a namespace of its own, with one veth per node named `eth0`
/// inside the node, carrying the node's underlay address.
fn cloud(nodes: &[(&TestNetns, &str)]) -> TestNetns {
    let cloud = TestNetns::new("ovc");
    cloud.ip(&["link", "add", "vpc", "type", "bridge"]);
    cloud.ip(&["link", "set", "vpc", "up"]);
    for (ns, cidr) in nodes {
        let outside = unique_name("vo");
        let inside = unique_name("vi");
        run(Command::new("ip").args([
            "link", "add", &outside, "type", "veth", "peer", "name", &inside,
        ]));
        run(Command::new("ip").args(["link", "set", &outside, "netns", cloud.name()]));
        run(Command::new("ip").args(["link", "set", &inside, "netns", ns.name()]));
        cloud.ip(&["link", "set", &outside, "master", "vpc", "up"]);
        ns.ip(&["link", "set", &inside, "name", "eth0"]);
        ns.ip(&["addr", "add", cidr, "dev", "eth0"]);
        ns.ip(&["link", "set", "eth0", "up"]);
    }
    cloud
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root, ip, bridge, nsenter and busybox"]
async fn two_nodes_are_joined_and_a_rerun_changes_nothing() {
    require_privileges(TOOLS);
    let host = HostCheck::start();
    let a = TestNetns::new("ova");
    let b = TestNetns::new("ovb");
    link_pair(&a, "192.0.2.1/24", &b, "192.0.2.2/24");
    add_bridge(&a, "10.240.1.1/16");
    add_bridge(&b, "10.240.2.1/16");
    let (ha, hb) = (handle_in(&a).await, handle_in(&b).await);

    let ra = overlay::converge_link(
        &ha,
        &spec("192.0.2.1", None),
        "shoal0",
        &ips(&["192.0.2.2"]),
    )
    .await
    .expect("converge node a");
    let rb = overlay::converge_link(
        &hb,
        &spec("192.0.2.2", None),
        "shoal0",
        &ips(&["192.0.2.1"]),
    )
    .await
    .expect("converge node b");
    for r in [&ra, &rb] {
        assert!(r.changed && r.vxlan_created, "{r:?}");
        assert_eq!(r.mtu, 1450, "underlay 1500 minus 50: {r:?}");
        assert!(r.fdb_removed.is_empty(), "{r:?}");
    }
    assert_eq!(ra.fdb_added, ips(&["192.0.2.2"]));
    assert_eq!(rb.fdb_added, ips(&["192.0.2.1"]));

    assert_vxlan(&a, "192.0.2.1", 1450);
    assert_vxlan(&b, "192.0.2.2", 1450);
    assert_eq!(zero_entries(&a), ["192.0.2.2"]);
    assert_eq!(zero_entries(&b), ["192.0.2.1"]);
    let bridge = &a.ip_json(&["link", "show", "shoal0"])[0];
    assert!(
        bridge["flags"]
            .as_array()
            .expect("flags")
            .contains(&Value::from("UP")),
        "converge brings the bridge up: {bridge}"
    );
    assert!(
        pings(&a, "10.240.2.1"),
        "no ping from a to b across the overlay"
    );
    assert!(
        pings(&b, "10.240.1.1"),
        "no ping from b to a across the overlay"
    );

    // Idempotence: nothing changes, and an operator sees exactly the same state.
    let link_before = stable(vxlan_json(&a));
    let fdb_before = fdb_own_entries(&a);
    let again = overlay::converge_link(
        &ha,
        &spec("192.0.2.1", None),
        "shoal0",
        &ips(&["192.0.2.2"]),
    )
    .await
    .expect("rerun");
    assert!(!again.changed, "{again:?}");
    assert!(!again.vxlan_created && again.fdb_added.is_empty() && again.fdb_removed.is_empty());
    assert_eq!(stable(vxlan_json(&a)), link_before);
    assert_eq!(fdb_own_entries(&a), fdb_before);
    assert!(pings(&a, "10.240.2.1"));

    host.verify();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root, ip, bridge, nsenter and busybox"]
async fn peers_added_and_removed_change_only_their_entries() {
    require_privileges(TOOLS);
    let host = HostCheck::start();
    let a = TestNetns::new("ova");
    let b = TestNetns::new("ovb");
    let c = TestNetns::new("ovc");
    let _cloud = cloud(&[
        (&a, "192.0.2.1/24"),
        (&b, "192.0.2.2/24"),
        (&c, "192.0.2.3/24"),
    ]);
    add_bridge(&a, "10.240.1.1/16");
    add_bridge(&b, "10.240.2.1/16");
    add_bridge(&c, "10.240.3.1/16");
    let (ha, hb, hc) = (
        handle_in(&a).await,
        handle_in(&b).await,
        handle_in(&c).await,
    );

    // Two nodes first.
    overlay::converge_link(
        &ha,
        &spec("192.0.2.1", None),
        "shoal0",
        &ips(&["192.0.2.2"]),
    )
    .await
    .expect("a with b");
    overlay::converge_link(
        &hb,
        &spec("192.0.2.2", None),
        "shoal0",
        &ips(&["192.0.2.1"]),
    )
    .await
    .expect("b with a");
    assert!(pings(&a, "10.240.2.1"));

    // Node c joins: a gains exactly one entry.
    let joined = overlay::converge_link(
        &ha,
        &spec("192.0.2.1", None),
        "shoal0",
        &ips(&["192.0.2.2", "192.0.2.3"]),
    )
    .await
    .expect("a with b and c");
    assert!(joined.changed && !joined.vxlan_created, "{joined:?}");
    assert_eq!(joined.fdb_added, ips(&["192.0.2.3"]));
    assert!(joined.fdb_removed.is_empty());
    assert_eq!(zero_entries(&a), ["192.0.2.2", "192.0.2.3"]);
    overlay::converge_link(
        &hc,
        &spec("192.0.2.3", None),
        "shoal0",
        &ips(&["192.0.2.1", "192.0.2.2"]),
    )
    .await
    .expect("c with a and b");
    assert!(pings(&a, "10.240.3.1"), "no ping from a to the new node c");
    assert!(
        pings(&a, "10.240.2.1"),
        "b must stay reachable while c joins"
    );

    // Node b leaves: exactly its entry goes, c's stays and still carries traffic.
    let left = overlay::converge_link(
        &ha,
        &spec("192.0.2.1", None),
        "shoal0",
        &ips(&["192.0.2.3"]),
    )
    .await
    .expect("a with c only");
    assert!(left.changed && !left.vxlan_created, "{left:?}");
    assert!(left.fdb_added.is_empty());
    assert_eq!(left.fdb_removed, ips(&["192.0.2.2"]));
    assert_eq!(zero_entries(&a), ["192.0.2.3"]);
    assert!(
        pings(&a, "10.240.3.1"),
        "c must stay reachable when b leaves"
    );
    assert!(
        !a.command("busybox")
            .args(["ping", "-c1", "-W1", "10.240.2.1"])
            .output()
            .expect("ping")
            .status
            .success(),
        "b is no longer a peer of a: nothing may reach it"
    );

    host.verify();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root, ip, bridge, nsenter and busybox"]
async fn a_device_with_other_settings_is_fixed() {
    require_privileges(TOOLS);
    let host = HostCheck::start();
    let a = TestNetns::new("ova");
    let b = TestNetns::new("ovb");
    link_pair(&a, "192.0.2.1/24", &b, "192.0.2.2/24");
    add_bridge(&a, "10.240.1.1/16");
    let ha = handle_in(&a).await;

    // A leftover with another VNI, learning on, and an entry for a stranger.
    a.ip(&[
        "link",
        "add",
        "shoal-vx",
        "type",
        "vxlan",
        "id",
        "7",
        "local",
        "192.0.2.1",
        "dev",
        "eth0",
        "dstport",
        "4789",
    ]);
    run(a.command("bridge").args([
        "fdb",
        "append",
        "00:00:00:00:00:00",
        "dev",
        "shoal-vx",
        "dst",
        "192.0.2.99",
    ]));
    let fixed = overlay::converge_link(
        &ha,
        &spec("192.0.2.1", None),
        "shoal0",
        &ips(&["192.0.2.2"]),
    )
    .await
    .expect("recreate");
    assert!(fixed.vxlan_created && fixed.changed, "{fixed:?}");
    assert_vxlan(&a, "192.0.2.1", 1450);
    assert_eq!(
        zero_entries(&a),
        ["192.0.2.2"],
        "the recreated device starts clean"
    );

    // A wrong MTU is corrected in place; a device taken off the bridge is put back.
    let index_before = vxlan_json(&a)["ifindex"].clone();
    a.ip(&["link", "set", "shoal-vx", "mtu", "1300", "nomaster"]);
    let repaired = overlay::converge_link(
        &ha,
        &spec("192.0.2.1", None),
        "shoal0",
        &ips(&["192.0.2.2"]),
    )
    .await
    .expect("repair");
    assert!(repaired.changed && !repaired.vxlan_created, "{repaired:?}");
    assert_vxlan(&a, "192.0.2.1", 1450);
    assert_eq!(vxlan_json(&a)["ifindex"], index_before, "repaired in place");

    // A stale entry added behind the agent's back is removed, the peer's is kept.
    run(a.command("bridge").args([
        "fdb",
        "append",
        "00:00:00:00:00:00",
        "dev",
        "shoal-vx",
        "dst",
        "192.0.2.77",
    ]));
    let cleaned = overlay::converge_link(
        &ha,
        &spec("192.0.2.1", None),
        "shoal0",
        &ips(&["192.0.2.2"]),
    )
    .await
    .expect("clean");
    assert_eq!(cleaned.fdb_removed, ips(&["192.0.2.77"]));
    assert!(cleaned.fdb_added.is_empty());
    assert_eq!(zero_entries(&a), ["192.0.2.2"]);

    // An explicit (planned) MTU below the maximum is honoured.
    let planned = overlay::converge_link(
        &ha,
        &spec("192.0.2.1", Some(1400)),
        "shoal0",
        &ips(&["192.0.2.2"]),
    )
    .await
    .expect("planned mtu");
    assert_eq!(planned.mtu, 1400);
    assert_vxlan(&a, "192.0.2.1", 1400);

    host.verify();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root, ip, bridge, nsenter and busybox"]
async fn a_failed_step_leaves_nothing_behind() {
    require_privileges(TOOLS);
    let host = HostCheck::start();
    let a = TestNetns::new("ova");
    let b = TestNetns::new("ovb");
    link_pair(&a, "192.0.2.1/24", &b, "192.0.2.2/24");
    let ha = handle_in(&a).await;
    let peers = ips(&["192.0.2.2"]);

    // No bridge at all: refused up front, naming it.
    let err = overlay::converge_link(&ha, &spec("192.0.2.1", None), "shoal0", &peers)
        .await
        .expect_err("no bridge");
    assert!(err.to_string().contains("shoal0"), "{err}");
    assert_eq!(err.reason(), reason::NETWORK_FAILED);
    assert!(!has_link(&a, "shoal-vx"));

    // A "bridge" that cannot take ports: the device is created, enslaving fails, and
    // the new device is removed again.
    a.ip(&[
        "link", "add", "notabr", "type", "veth", "peer", "name", "notabr-p",
    ]);
    let err = overlay::converge_link(&ha, &spec("192.0.2.1", None), "notabr", &peers)
        .await
        .expect_err("not a bridge");
    let text = err.to_string();
    assert!(
        text.contains("shoal-vx") && text.contains("notabr"),
        "{text}"
    );
    assert_eq!(err.reason(), reason::NETWORK_FAILED);
    assert!(
        !has_link(&a, "shoal-vx"),
        "the half-made device was left behind"
    );

    // An MTU the underlay cannot carry: refused before anything is made.
    add_bridge(&a, "10.240.1.1/16");
    let err = overlay::converge_link(&ha, &spec("192.0.2.1", Some(1480)), "shoal0", &peers)
        .await
        .expect_err("mtu too big");
    assert!(err.to_string().contains("eth0"), "{err}");
    assert!(!has_link(&a, "shoal-vx"));

    // A missing underlay is named.
    let mut no_underlay = spec("192.0.2.1", None);
    no_underlay.underlay = "eth9".into();
    let err = overlay::converge_link(&ha, &no_underlay, "shoal0", &peers)
        .await
        .expect_err("no underlay");
    assert!(err.to_string().contains("eth9"), "{err}");

    // A device this call did not create is not deleted when a later step fails.
    overlay::converge_link(&ha, &spec("192.0.2.1", None), "shoal0", &peers)
        .await
        .expect("good run");
    let err = overlay::converge_link(&ha, &spec("192.0.2.1", None), "notabr", &peers)
        .await
        .expect_err("not a bridge");
    assert!(err.to_string().contains("notabr"), "{err}");
    assert!(
        has_link(&a, "shoal-vx"),
        "a pre-existing device must survive"
    );
    assert_eq!(zero_entries(&a), ["192.0.2.2"]);

    host.verify();
}

/// A dockerd of its own inside a namespace, as a VM runs it (started through
/// `nsenter --net=`, since `ip netns exec` remounts /sys and dockerd then fails).
/// Dropping it removes its containers, stops it and removes every trace.
struct TestDockerd {
    child: std::process::Child,
    /// Data root and log (on disk).
    root: std::path::PathBuf,
    /// Exec root, pid file and socket (short paths: a socket path must stay < 108 bytes).
    run_dir: std::path::PathBuf,
}

impl TestDockerd {
    fn start(ns: &TestNetns) -> TestDockerd {
        let name = unique_name("sd");
        let root = std::env::temp_dir().join(format!("shoal-test-{name}"));
        let run_dir = std::path::PathBuf::from(format!("/run/shoal-test-{name}"));
        std::fs::create_dir_all(root.join("data")).expect("data root");
        std::fs::create_dir_all(&run_dir).expect("exec root");
        let log = std::fs::File::create(root.join("dockerd.log")).expect("log file");
        let child = Command::new("nsenter")
            .arg(format!("--net={}", ns.path().display()))
            .arg("--")
            .arg("dockerd")
            .arg("--data-root")
            .arg(root.join("data"))
            .arg("--exec-root")
            .arg(run_dir.join("e"))
            .arg("--pidfile")
            .arg(run_dir.join("d.pid"))
            .arg("-H")
            .arg(format!("unix://{}", run_dir.join("d.sock").display()))
            .arg("--iptables=true")
            .stdin(std::process::Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("start dockerd");
        let dockerd = TestDockerd {
            child,
            root,
            run_dir,
        };
        let ready = (0..120).any(|_| {
            let up = dockerd
                .cli()
                .arg("version")
                .output()
                .is_ok_and(|o| o.status.success());
            if !up {
                std::thread::sleep(std::time::Duration::from_millis(250));
            }
            up
        });
        assert!(
            ready,
            "dockerd did not answer within 30 s: {}",
            std::fs::read_to_string(dockerd.root.join("dockerd.log")).unwrap_or_default()
        );
        dockerd
    }

    /// The endpoint, as the agent's configuration names it.
    fn host(&self) -> String {
        format!("unix://{}", self.run_dir.join("d.sock").display())
    }

    /// The docker CLI, pointed at this engine.
    fn cli(&self) -> Command {
        let mut c = Command::new("docker");
        c.arg("-H").arg(self.host());
        c
    }

    /// `docker network inspect shoal`, or `None` if there is no such network.
    fn network(&self) -> Option<Value> {
        let out = self
            .cli()
            .args(["network", "inspect", overlay::NETWORK_NAME])
            .output()
            .expect("docker network inspect");
        if !out.status.success() {
            return None;
        }
        let list: Value = serde_json::from_slice(&out.stdout).expect("inspect JSON");
        Some(list[0].clone())
    }

    /// Imports a one-binary image (Debian's static busybox), as no registry is reachable.
    fn import_busybox(&self, tag: &str) {
        let rootfs = self.root.join("rootfs");
        std::fs::create_dir_all(rootfs.join("bin")).expect("rootfs");
        std::fs::copy(
            shoal_e2e::which("busybox").expect("busybox"),
            rootfs.join("bin/busybox"),
        )
        .expect("copy busybox");
        let tarball = self.root.join("rootfs.tar");
        run(Command::new("tar")
            .arg("-C")
            .arg(&rootfs)
            .arg("-cf")
            .arg(&tarball)
            .arg("."));
        run(self.cli().arg("import").arg(&tarball).arg(tag));
    }
}

impl Drop for TestDockerd {
    fn drop(&mut self) {
        // Containers first (they may ignore SIGTERM: `rm -f` kills them).
        if let Ok(out) = self.cli().args(["ps", "-aq"]).output() {
            let ids = String::from_utf8_lossy(&out.stdout).into_owned();
            for id in ids.split_whitespace() {
                let _ = self.cli().args(["rm", "-f", id]).output();
            }
        }
        let pid = nix::unistd::Pid::from_raw(i32::try_from(self.child.id()).unwrap_or(0));
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let stopped = (0..80).any(|_| {
            let done = matches!(self.child.try_wait(), Ok(Some(_)));
            if !done {
                std::thread::sleep(std::time::Duration::from_millis(250));
            }
            done
        });
        if !stopped {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        // dockerd leaves mounts (overlay layers, netns files) when it dies hard.
        let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        let mut ours: Vec<&str> = mounts
            .lines()
            .filter_map(|l| l.split(' ').nth(4))
            .filter(|m| {
                m.starts_with(&*self.root.to_string_lossy())
                    || m.starts_with(&*self.run_dir.to_string_lossy())
            })
            .collect();
        ours.sort_unstable_by(|a, b| b.cmp(a));
        for mount in ours {
            let _ = nix::mount::umount2(mount, nix::mount::MntFlags::MNT_DETACH);
        }
        let _ = std::fs::remove_dir_all(&self.root);
        let _ = std::fs::remove_dir_all(&self.run_dir);
    }
}

fn two_node_plan(mtu: Option<u32>) -> shoal_protocol::Plan {
    let mut network = serde_json::json!({
        "overlay": "10.240.0.0/16", "vni": VNI, "port": 4789
    });
    if let Some(mtu) = mtu {
        network["mtu"] = mtu.into();
    }
    let plan = serde_json::json!({
        "schema": 1,
        "cluster": "demo",
        "generation": 1,
        "domain": "shoal.test",
        "network": network,
        "nodes": [
            {"id": "node-0", "index": 0, "private_ip": "192.0.2.1",
             "slice": "10.240.1.0/24", "gateway": "10.240.1.1"},
            {"id": "node-1", "index": 1, "private_ip": "192.0.2.2",
             "slice": "10.240.2.0/24", "gateway": "10.240.2.1"}
        ]
    });
    shoal_protocol::Plan::from_json(plan.to_string().as_bytes()).expect("valid plan")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root, ip, bridge, nsenter, busybox, tar, dockerd and docker"]
async fn converge_with_a_real_dockerd_builds_the_network_and_the_tunnel() {
    require_privileges(&[
        "ip", "bridge", "nsenter", "busybox", "tar", "dockerd", "docker",
    ]);
    let host = HostCheck::start();
    let a = TestNetns::new("ova");
    let b = TestNetns::new("ovb");
    link_pair(&a, "192.0.2.1/24", &b, "192.0.2.2/24");
    let dockerd = TestDockerd::start(&a);
    let docker = shoal_agent::docker::connect(&dockerd.host())
        .await
        .expect("connect to the test dockerd");
    let (ha, hb) = (handle_in(&a).await, handle_in(&b).await);

    let plan = two_node_plan(None);
    let report = overlay::converge(&docker, &ha, &plan, "node-0")
        .await
        .expect("converge node-0");
    assert!(
        report.changed && report.network_created && report.vxlan_created,
        "{report:?}"
    );
    assert_eq!(report.fdb_added, ips(&["192.0.2.2"]));
    assert_eq!(report.mtu, 1450);

    // What an operator sees: the Docker network…
    let network = dockerd.network().expect("network shoal");
    assert_eq!(network["Driver"], "bridge");
    let ipam = &network["IPAM"]["Config"][0];
    assert_eq!(ipam["Subnet"], "10.240.0.0/16", "{network}");
    assert_eq!(ipam["IPRange"], "10.240.1.0/24", "{network}");
    assert_eq!(ipam["Gateway"], "10.240.1.1", "{network}");
    assert_eq!(
        network["Options"]["com.docker.network.bridge.name"],
        "shoal0"
    );
    assert_eq!(network["Options"]["com.docker.network.driver.mtu"], "1450");
    assert_eq!(network["Labels"]["io.shoal.cluster"], "demo");
    // …its bridge carrying the tunnel, and the tunnel's replication list.
    assert_vxlan(&a, "192.0.2.1", 1450);
    let ports = a.ip_json(&["link", "show", "master", "shoal0"]);
    assert!(
        ports
            .as_array()
            .expect("ports")
            .iter()
            .any(|p| p["ifname"] == "shoal-vx"),
        "{ports}"
    );
    assert_eq!(zero_entries(&a), ["192.0.2.2"]);

    // The other node (a plain bridge standing in for its Docker) reaches a container
    // started on node-0's Docker network, across the tunnel, at its planned address.
    add_bridge(&b, "10.240.2.1/16");
    overlay::converge_link(
        &hb,
        &spec("192.0.2.2", None),
        "shoal0",
        &ips(&["192.0.2.1"]),
    )
    .await
    .expect("converge the peer");
    dockerd.import_busybox("shoal-test/busybox:1");
    run(dockerd.cli().args([
        "run",
        "-d",
        "--name",
        "c1",
        "--network",
        "shoal",
        "--ip",
        "10.240.1.10",
        "shoal-test/busybox:1",
        "/bin/busybox",
        "sleep",
        "600",
    ]));
    assert!(
        pings(&b, "10.240.1.1"),
        "node-0's gateway is unreachable over the overlay"
    );
    assert!(
        pings(&b, "10.240.1.10"),
        "the container is unreachable over the overlay"
    );

    // A rerun with the same plan changes nothing.
    let again = overlay::converge(&docker, &ha, &plan, "node-0")
        .await
        .expect("rerun");
    assert!(
        !again.changed && !again.network_created && !again.vxlan_created,
        "{again:?}"
    );
    assert!(again.fdb_added.is_empty() && again.fdb_removed.is_empty());

    // A new MTU: the network is recreated (its container removed, for the container
    // step to recreate), the tunnel kept, resized and attached to the new bridge.
    let resized = overlay::converge(&docker, &ha, &two_node_plan(Some(1400)), "node-0")
        .await
        .expect("converge with a new MTU");
    assert!(
        resized.changed && resized.network_created && !resized.vxlan_created,
        "{resized:?}"
    );
    assert_eq!(resized.mtu, 1400);
    let network = dockerd.network().expect("network shoal");
    assert_eq!(network["Options"]["com.docker.network.driver.mtu"], "1400");
    let left = dockerd
        .cli()
        .args(["ps", "-aq"])
        .output()
        .expect("docker ps");
    assert!(
        left.stdout.is_empty(),
        "the old network's container was not removed"
    );
    assert_vxlan(&a, "192.0.2.1", 1400);
    // Docker gave the new bridge a new random MAC: the peer's ARP entry for node-0's
    // gateway is stale until the kernel re-probes (tens of seconds). Containers keep
    // their IP-derived MACs, so only the gateway address is affected; see
    // docs/network.md.
    b.ip(&["neigh", "flush", "dev", "shoal0"]);
    assert!(
        pings(&b, "10.240.1.1"),
        "the recreated bridge is not on the overlay"
    );

    // The bridge deleted behind Docker's back: the network is recreated to get it back.
    a.ip(&["link", "del", "shoal0"]);
    let healed = overlay::converge(&docker, &ha, &two_node_plan(Some(1400)), "node-0")
        .await
        .expect("converge without a bridge");
    assert!(
        healed.network_created && !healed.vxlan_created,
        "{healed:?}"
    );
    assert_vxlan(&a, "192.0.2.1", 1400);

    // Teardown removes both, and is safe to repeat.
    overlay::teardown(&docker, &ha).await.expect("teardown");
    assert!(!has_link(&a, "shoal-vx") && !has_link(&a, "shoal0"));
    assert!(dockerd.network().is_none());
    overlay::teardown(&docker, &ha)
        .await
        .expect("second teardown");

    host.verify();
}
