//! A real Hadoop cluster on the local provider: the `hadoop` blueprint on the image
//! `cloud-init/build-hadoop-image` makes (HDFS 2.7.3 and Spark 3.5.3 standalone), three
//! VMs (namespaces with a dockerd each), checked the way an operator would: HDFS's and
//! Spark's own answers (NameNode JMX, the Spark master's JSON, Spark's event log), a file
//! written on one node and read on another, a DataNode killed and back. Privileged: run
//! through `scripts/test` as root; the image is built (or taken from its cache) first.

use std::time::{Duration, Instant};

use serde_json::Value;
use shoal_e2e::coordinator::{hadoop_image_dir, TestCoordinator};
use shoal_e2e::hadoop::{exec, get_json, md5, namenode_state, wait_until, TOOLS};
use shoal_e2e::require_privileges;
use shoal_e2e::vm::{device_at, device_numbers, entered_since, nodes, now_ms};

#[test]
#[ignore = "needs root, dockerd, iproute2, debootstrap and a JDK (the hadoop image)"]
fn hadoop_cluster_serves_hdfs_and_spark_across_three_vms() {
    require_privileges(TOOLS);
    let images = hadoop_image_dir();
    let c = TestCoordinator::start_with_images(&images, &[]);

    // --- AVAILABLE only once HDFS and Spark answer --------------------------------------
    let t0 = Instant::now();
    let out = c.shoal(&[
        "cluster",
        "create",
        "hdp",
        "--nodes",
        "3",
        "--blueprint",
        "hadoop",
        "--wait",
    ]);
    assert!(
        out.status.success(),
        "create --wait failed: {}\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        c.log_text()
    );
    eprintln!(
        "hadoop cluster AVAILABLE after {:.1} s",
        t0.elapsed().as_secs_f64()
    );
    let v = c.show("hdp");
    assert_eq!(v["state"], "AVAILABLE");
    let ns = nodes(&v);
    assert_eq!(ns.len(), 3);
    let master_ip = ns[0]["private_ip"].as_str().expect("ip").to_string();
    // Asked right away, through the ports node-0 publishes: the NameNode is out of safe
    // mode with both workers' DataNodes live, and the Spark master has both workers.
    let (state, live) = namenode_state(&master_ip);
    assert_eq!(state["FSState"], "Operational", "{state:#}");
    assert_eq!(state["NumLiveDataNodes"], 2, "{state:#}");
    for n in &ns[1..] {
        let dn = format!(
            "datanode-{}.hdp.shoal.internal",
            n["id"].as_str().expect("id")
        );
        assert!(
            live.keys().any(|k| k.starts_with(&dn)),
            "{dn} not live: {live:?}"
        );
    }
    let spark = get_json(&format!("http://{master_ip}:8080/json/"));
    assert_eq!(spark["status"], "ALIVE", "{spark:#}");
    assert_eq!(spark["aliveworkers"], 2, "{spark:#}");
    // The configuration came from the plan: replication is the number of DataNodes.
    let repl = exec(
        &c,
        &ns[1],
        "datanode-node-1",
        "grep dfs.replication /run/shoal-hadoop/conf/hdfs-site.xml",
    );
    assert!(repl.contains("<value>2</value>"), "{repl}");

    // --- a file written on one node reads back the same on another ------------------------
    let put = exec(
        &c,
        &ns[1],
        "datanode-node-1",
        "head -c 3000000 /dev/urandom >/tmp/f && shoal-hadoop hdfs dfs -put /tmp/f /check.bin && md5sum </tmp/f",
    );
    let got = exec(
        &c,
        &ns[2],
        "datanode-node-2",
        "shoal-hadoop hdfs dfs -cat /check.bin | md5sum",
    );
    assert_eq!(md5(&put), md5(&got), "written {put}, read {got}");
    assert_eq!(md5(&put).len(), 32, "{put}");
    let stat = exec(
        &c,
        &ns[2],
        "datanode-node-2",
        "shoal-hadoop hdfs dfs -stat '%r %b' /check.bin",
    );
    assert_eq!(stat.trim(), "2 3000000", "replication and size");

    // --- the DataNodes keep their blocks on their node's data disks ---------------------
    assert_eq!(
        ns[0]["disks"].as_array().map_or(0, Vec::len),
        0,
        "the master has none"
    );
    for n in &ns[1..] {
        let id = n["id"].as_str().expect("id");
        let mounts: Vec<&str> = n["disks"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|d| d["mount"].as_str())
            .collect();
        // Under the VM's own root on the local provider (docs/blueprints.md).
        assert!(
            mounts.len() == 2
                && mounts[0].ends_with("/root/hadoopfs/fs1")
                && mounts[1].ends_with("/root/hadoopfs/fs2"),
            "{id}: {n:#}"
        );
        let dn = format!("datanode-{id}");
        let conf = exec(
            &c,
            n,
            &dn,
            "grep dfs.datanode.data.dir /run/shoal-hadoop/conf/hdfs-site.xml",
        );
        assert!(
            conf.contains("<value>file:///hadoopfs/1/dn,file:///hadoopfs/2/dn</value>"),
            "{id}: {conf}"
        );
        // In the container, both are ext4 mounts (the node's disks, not its overlay
        // file system), and the file's one block (replication 2: on both DataNodes) is
        // on one of them; nothing is kept in the default directory.
        let seen = exec(
            &c,
            n,
            &dn,
            "awk '$2 ~ /^[/]hadoopfs[/]/ { print $2, $3 }' /proc/self/mounts | sort; \
             find /hadoopfs/1/dn /hadoopfs/2/dn -name 'blk_*' ! -name '*.meta' | wc -l; \
             ls -A /data/dn 2>/dev/null | wc -l",
        );
        let lines: Vec<&str> = seen.lines().collect();
        assert_eq!(
            lines[..2],
            ["/hadoopfs/1 ext4", "/hadoopfs/2 ext4"],
            "{id}: {seen}"
        );
        assert_eq!(
            lines[2..],
            ["1", "0"],
            "{id}: block files on the disks, files in /data/dn: {seen}"
        );
    }

    // --- a Spark job over an HDFS file, its tasks on both workers --------------------------
    let words = "alpha beta beta gamma gamma gamma";
    exec(
        &c,
        &ns[0],
        "spark-master-node-0",
        &format!("for i in $(seq 20000); do echo '{words}'; done >/tmp/words && shoal-hadoop hdfs dfs -put /tmp/words /words.txt"),
    );
    let job = exec(
        &c,
        &ns[0],
        "spark-master-node-0",
        "shoal-hadoop wordcount /words.txt /counts 4 2>/tmp/job.log",
    );
    assert!(job.contains("words: 120000, distinct: 3"), "{job}");
    assert!(
        job.contains("gamma\t60000") && job.contains("alpha\t20000"),
        "{job}"
    );
    let counts = exec(
        &c,
        &ns[2],
        "datanode-node-2",
        "shoal-hadoop hdfs dfs -cat '/counts/part-*' | sort",
    );
    assert_eq!(counts, "alpha\t20000\nbeta\t40000\ngamma\t60000\n");
    // Spark's own record of where the tasks ran: its event log.
    let log = exec(
        &c,
        &ns[0],
        "spark-master-node-0",
        "cat /tmp/spark-events/app-*",
    );
    let mut hosts = std::collections::BTreeSet::new();
    let mut tasks = 0;
    for line in log.lines() {
        let e: Value = serde_json::from_str(line).expect("event log lines are JSON");
        if e["Event"] == "SparkListenerTaskEnd" {
            tasks += 1;
            assert_eq!(e["Task End Reason"]["Reason"], "Success", "{e:#}");
            hosts.insert(e["Task Info"]["Host"].as_str().expect("host").to_string());
        }
    }
    assert!(tasks >= 8, "{tasks} tasks");
    assert!(hosts.len() >= 2, "every task ran on {hosts:?}");
    for h in &hosts {
        assert!(h.starts_with("spark-worker-node-"), "{h}");
    }

    // --- a DataNode killed comes back, and HDFS reports it live again ----------------------
    let dn_ip = ns[1]["containers"]
        .as_array()
        .and_then(|cs| cs.iter().find(|x| x["name"] == "datanode"))
        .and_then(|x| x["address"].as_str())
        .expect("datanode address")
        .to_string();
    let registrations = |c: &TestCoordinator| {
        let out = c.docker(&ns[0], &["logs", "namenode-node-0"]);
        let text = String::from_utf8_lossy(&out.stderr).into_owned()
            + &String::from_utf8_lossy(&out.stdout);
        text.matches(&format!(
            "registerDatanode: from DatanodeRegistration({dn_ip}:50010"
        ))
        .count()
    };
    let before = registrations(&c);
    assert_eq!(before, 1, "the DataNode registered once so far");
    let started = |c: &TestCoordinator| {
        String::from_utf8_lossy(
            &c.docker(
                &ns[1],
                &[
                    "inspect",
                    "-f",
                    "{{.State.Running}} {{.State.StartedAt}}",
                    "datanode-node-1",
                ],
            )
            .stdout,
        )
        .trim()
        .to_string()
    };
    let was = started(&c);
    let out = c.docker(&ns[1], &["kill", "datanode-node-1"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    wait_until(
        "the killed DataNode running again",
        Duration::from_secs(120),
        || {
            let now = started(&c);
            (!(now.starts_with("true") && now != was)).then_some(now)
        },
    );
    wait_until(
        "the DataNode registered and live again",
        Duration::from_secs(120),
        || {
            let (state, live) = namenode_state(&master_ip);
            let entry = live
                .iter()
                .find(|(k, _)| k.starts_with("datanode-node-1."))
                .map(|(_, v)| v.clone());
            let fresh = entry
                .as_ref()
                .and_then(|e| e["lastContact"].as_i64())
                .is_some_and(|s| s <= 3);
            let ok = registrations(&c) > before && state["NumLiveDataNodes"] == 2 && fresh;
            (!ok).then(|| {
                format!(
                    "registrations {}, {state}, node-1: {entry:?}",
                    registrations(&c)
                )
            })
        },
    );
    wait_until("node-1 ready again", Duration::from_secs(120), || {
        let v = c.show("hdp");
        (nodes(&v)[1]["phase"] != "ready").then(|| format!("{}", nodes(&v)[1]["phase"]))
    });
    let again = exec(
        &c,
        &ns[1],
        "datanode-node-1",
        "shoal-hadoop hdfs dfs -cat /check.bin | md5sum",
    );
    assert_eq!(md5(&again), md5(&put));
    assert_eq!(c.show("hdp")["state"], "AVAILABLE");

    // --- a worker rebooted: its DataNode is back on its own disks, the blocks kept -------
    // Docker starts the DataNode again before the agent mounts the disks; it refuses the
    // empty mount points, and the agent restarts it once the disks are mounted.
    let since = now_ms();
    c.shoal_ok(&["cluster", "reboot", "hdp", "--node", "node-2"]);
    wait_until(
        "hdp AVAILABLE after node-2's reboot",
        Duration::from_secs(180),
        || {
            let v = c.show("hdp");
            let (state, _) = namenode_state(&master_ip);
            let ok = entered_since(&v, "DEGRADED", since)
                && v["state"] == "AVAILABLE"
                && state["NumLiveDataNodes"] == 2;
            (!ok).then(|| format!("{} {state}", v["state"]))
        },
    );
    let v = c.show("hdp");
    let n2 = &nodes(&v)[2];
    // For the record: what the DataNode and the agent did at that boot.
    let log =
        std::fs::read_to_string(n2["agent_log"].as_str().expect("agent_log")).unwrap_or_default();
    let dn_log = c.docker(n2, &["logs", "datanode-node-2"]);
    eprintln!(
        "after node-2's reboot: the agent restarted {} container(s) holding empty mount points; the DataNode refused {} unmounted disk director(ies)",
        log.matches("restarting it: it was started before").count(),
        String::from_utf8_lossy(&dn_log.stderr).matches("its disk is not mounted yet").count()
    );
    let seen = exec(
        &c,
        n2,
        "datanode-node-2",
        "cat /proc/self/mountinfo; find /hadoopfs/1/dn /hadoopfs/2/dn -name 'blk_*' ! -name '*.meta' | wc -l",
    );
    for (i, d) in n2["disks"].as_array().into_iter().flatten().enumerate() {
        let device = d["device"].as_str().expect("device");
        let want = device_numbers(device);
        let target = format!("/hadoopfs/{}", i + 1);
        let got = device_at(&seen, &target);
        assert_eq!(
            got.as_deref(),
            Some(want.as_str()),
            "{target} is not {device}: {seen}"
        );
    }
    assert!(
        seen.lines()
            .last()
            .and_then(|l| l.trim().parse::<u32>().ok())
            >= Some(1),
        "node-2's blocks on its disks after the reboot: {seen}"
    );
    let back = exec(
        &c,
        n2,
        "datanode-node-2",
        "shoal-hadoop hdfs dfs -cat /check.bin | md5sum",
    );
    assert_eq!(md5(&back), md5(&put));

    // --- delete leaves nothing ---------------------------------------------------------------
    c.shoal_ok(&["cluster", "delete", "hdp", "--wait"]);
    let left = c.leftovers(true);
    assert!(left.is_empty(), "left behind: {left:#?}");
    let loops = shoal_e2e::vm::loop_devices_left_under(&c.state_dir.display().to_string());
    assert!(loops.is_empty(), "loop devices left: {loops:?}");
}
