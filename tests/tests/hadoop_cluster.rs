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

fn nodes(v: &Value) -> Vec<Value> {
    v["nodes"].as_array().cloned().unwrap_or_default()
}

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

    // --- delete leaves nothing ---------------------------------------------------------------
    c.shoal_ok(&["cluster", "delete", "hdp", "--wait"]);
    let left = c.leftovers(true);
    assert!(left.is_empty(), "left behind: {left:#?}");
}
