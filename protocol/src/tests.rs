use super::*;
use std::time::Duration;

fn container(name: &str, node: &str, ip: &str) -> ContainerPlan {
    ContainerPlan {
        name: name.into(),
        hostname: format!("{name}-{node}.demo.shoal.internal"),
        image: "shoal/demo:1".into(),
        network: NetworkMode::Overlay,
        address: Some(ip.parse().expect("test address")),
        command: vec![],
        env: BTreeMap::new(),
        volumes: vec![],
        ports: vec![],
        registry_auth: None,
        ready: None,
        data_disks: None,
    }
}

fn sample() -> Plan {
    Plan {
        schema: SCHEMA_VERSION,
        cluster: "demo".into(),
        generation: 1,
        domain: "shoal.internal".into(),
        network: NetworkPlan {
            overlay: "10.240.0.0/16".parse().expect("cidr"),
            vni: 42,
            port: DEFAULT_VXLAN_PORT,
            mtu: None,
        },
        nodes: (0..3)
            .map(|i| NodePlan {
                id: format!("node-{i}"),
                index: i,
                private_ip: format!("10.213.0.{}", 10 + i).parse().expect("ip"),
                instance_id: None,
                slice: format!("10.240.{}.0/24", i + 1).parse().expect("cidr"),
                gateway: format!("10.240.{}.1", i + 1).parse().expect("ip"),
                containers: vec![container(
                    "agent",
                    &format!("node-{i}"),
                    &format!("10.240.{}.2", i + 1),
                )],
                leaving: false,
                drain: None,
                peer_drains: vec![],
                recipes: vec![],
                disks: vec![],
            })
            .collect(),
        liveness: None,
    }
}

fn field_of(err: PlanError) -> String {
    match err {
        PlanError::Invalid { field, .. } => field,
        other => panic!("expected Invalid, got {other:?}"),
    }
}

#[test]
fn sample_plan_round_trips_and_validates() {
    let plan = sample();
    let bytes = serde_json::to_vec(&plan).expect("serialize");
    let back = Plan::from_json(&bytes).expect("valid plan");
    assert_eq!(back, plan);
    assert_eq!(back.peers_of("node-1").len(), 2);
    assert_eq!(back.host_entries().len(), 3);
    assert_eq!(back.nodes[1].containers[0].docker_name(), "agent-node-1");
}

#[test]
fn unknown_fields_are_ignored() {
    let mut v = serde_json::to_value(sample()).expect("to value");
    v["added_by_a_newer_coordinator"] = serde_json::json!({"x": 1});
    v["nodes"][0]["future"] = serde_json::json!(true);
    let bytes = serde_json::to_vec(&v).expect("serialize");
    assert!(Plan::from_json(&bytes).is_ok());
}

#[test]
fn newer_schema_is_refused() {
    let mut p = sample();
    p.schema = 2;
    let err = Plan::from_json(&serde_json::to_vec(&p).expect("ser")).unwrap_err();
    assert!(matches!(err, PlanError::Schema { found: 2, .. }), "{err}");
}

#[test]
fn malformed_and_oversized_documents_are_refused() {
    assert!(matches!(
        Plan::from_json(b"{\"schema\": 1"),
        Err(PlanError::Malformed(_))
    ));
    assert!(matches!(
        Plan::from_json(b"[1,2,3]"),
        Err(PlanError::Malformed(_))
    ));
    let big = vec![b' '; MAX_PLAN_BYTES + 1];
    assert!(matches!(
        Plan::from_json(&big),
        Err(PlanError::TooLarge { .. })
    ));
}

#[test]
fn overlapping_slices_are_refused() {
    let mut p = sample();
    p.nodes[2].slice = "10.240.0.0/22".parse().expect("cidr");
    p.nodes[2].gateway = "10.240.0.1".parse().expect("ip");
    p.nodes[2].containers[0].address = Some("10.240.0.2".parse().expect("ip"));
    let err = p.validate().unwrap_err();
    assert!(err.to_string().contains("overlaps"), "{err}");
    assert_eq!(field_of(err), "nodes[2].slice");
}

#[test]
fn address_outside_its_slice_is_refused() {
    let mut p = sample();
    p.nodes[1].containers[0].address = Some("10.240.3.9".parse().expect("ip"));
    let err = p.validate().unwrap_err();
    assert!(
        err.to_string().contains("outside the node's slice"),
        "{err}"
    );
    assert_eq!(field_of(err), "nodes[1].containers[0].address");
}

#[test]
fn gateway_and_broadcast_addresses_are_refused() {
    let mut p = sample();
    p.nodes[0].containers[0].address = Some(p.nodes[0].gateway);
    assert_eq!(
        field_of(p.validate().unwrap_err()),
        "nodes[0].containers[0].address"
    );
    let mut p = sample();
    p.nodes[0].containers[0].address = Some("10.240.1.255".parse().expect("ip"));
    assert_eq!(
        field_of(p.validate().unwrap_err()),
        "nodes[0].containers[0].address"
    );
    let mut p = sample();
    p.nodes[0].gateway = "10.240.2.1".parse().expect("ip");
    assert_eq!(field_of(p.validate().unwrap_err()), "nodes[0].gateway");
}

#[test]
fn underlay_inside_overlay_is_refused() {
    let mut p = sample();
    p.nodes[0].private_ip = "10.240.200.1".parse().expect("ip");
    let err = p.validate().unwrap_err();
    assert!(err.to_string().contains("must not overlap"), "{err}");
}

#[test]
fn slice_outside_overlay_is_refused() {
    let mut p = sample();
    p.nodes[0].slice = "10.241.1.0/24".parse().expect("cidr");
    assert_eq!(field_of(p.validate().unwrap_err()), "nodes[0].slice");
}

#[test]
fn bad_names_are_refused() {
    for bad in ["Node-0", "-node", "node_0", "", &"a".repeat(64), "node.0"] {
        let mut p = sample();
        p.nodes[0].id = bad.to_string();
        assert_eq!(
            field_of(p.validate().unwrap_err()),
            "nodes[0].id",
            "{bad:?}"
        );
    }
    let mut p = sample();
    p.cluster = "../etc".into();
    assert_eq!(field_of(p.validate().unwrap_err()), "cluster");
    let mut p = sample();
    p.nodes[0].containers[0].hostname = "agent-node-0..demo".into();
    assert_eq!(
        field_of(p.validate().unwrap_err()),
        "nodes[0].containers[0].hostname"
    );
}

#[test]
fn duplicates_are_refused() {
    let mut p = sample();
    p.nodes[1].id = "node-0".into();
    assert_eq!(field_of(p.validate().unwrap_err()), "nodes[1].id");
    let mut p = sample();
    p.nodes[1].private_ip = p.nodes[0].private_ip;
    assert_eq!(field_of(p.validate().unwrap_err()), "nodes[1].private_ip");
    let mut p = sample();
    let dup = p.nodes[0].containers[0].hostname.clone();
    p.nodes[1].containers[0].hostname = dup;
    assert_eq!(
        field_of(p.validate().unwrap_err()),
        "nodes[1].containers[0].hostname"
    );
}

#[test]
fn vni_bounds_and_overlay_prefix_are_checked() {
    for vni in [0, 1 << 24] {
        let mut p = sample();
        p.network.vni = vni;
        assert_eq!(field_of(p.validate().unwrap_err()), "network.vni");
    }
    let mut p = sample();
    p.network.overlay = "10.240.0.1/16".parse().expect("cidr");
    assert_eq!(field_of(p.validate().unwrap_err()), "network.overlay");
}

#[test]
fn host_mode_containers_carry_no_address() {
    let mut p = sample();
    p.nodes[0].containers[0].network = NetworkMode::Host;
    assert_eq!(
        field_of(p.validate().unwrap_err()),
        "nodes[0].containers[0].address"
    );
    p.nodes[0].containers[0].address = None;
    p.validate().expect("host mode without address is valid");
    assert_eq!(p.host_entries()[0].1, p.nodes[0].private_ip);
}

#[test]
fn volume_path_tricks_are_refused() {
    let mut p = sample();
    p.nodes[0].containers[0].volumes.push(VolumePlan {
        source: "/var/lib/../../etc".into(),
        target: "/data".into(),
        read_only: false,
    });
    assert_eq!(
        field_of(p.validate().unwrap_err()),
        "nodes[0].containers[0].volumes"
    );
}

#[test]
fn registry_password_is_not_in_debug_output() {
    let auth = RegistryAuth {
        server: "r.example".into(),
        username: "u".into(),
        password: "hunter2".into(),
    };
    assert!(!format!("{auth:?}").contains("hunter2"));
}

fn probe(tcp: Option<u16>, http: Option<&str>, exec: Option<&[&str]>) -> ProbePlan {
    ProbePlan {
        tcp,
        http: http.map(String::from),
        exec: exec.map(|c| c.iter().map(|a| a.to_string()).collect()),
        json: BTreeMap::new(),
        body: None,
        interval_ms: 250,
        timeout_ms: 1000,
        deadline_ms: 60_000,
        live_interval_ms: None,
        failure_threshold: None,
    }
}

#[test]
fn probes_round_trip_and_validate() {
    let mut p = sample();
    let mut http = probe(None, Some("http://localhost:50070/jmx?qry=x"), None);
    http.json
        .insert("/beans/0/NumLiveDataNodes".into(), "2".into());
    p.nodes[0].containers[0].ready = Some(http);
    p.nodes[1].containers[0].ready = Some(probe(Some(8080), None, None));
    p.nodes[2].containers[0].ready = Some(probe(None, None, Some(&["shoal-demo", "ready"])));
    let bytes = serde_json::to_vec(&p).expect("serialize");
    let back = Plan::from_json(&bytes).expect("valid plan");
    assert_eq!(back, p);
    let kinds: Vec<String> = back
        .nodes
        .iter()
        .map(|n| n.containers[0].ready.as_ref().expect("probe").to_string())
        .collect();
    assert_eq!(
        kinds,
        [
            "http http://localhost:50070/jmx?qry=x",
            "tcp 8080",
            "exec shoal-demo ready"
        ]
    );
    // A plan without probes serializes as before (no "ready" key).
    let plain = serde_json::to_string(&sample()).expect("serialize");
    assert!(!plain.contains("ready"), "{plain}");
}

#[test]
fn bad_probes_are_refused_with_their_field() {
    let cases: Vec<(ProbePlan, &str, &str)> = vec![
        (
            probe(None, None, None),
            "ready",
            "exactly one of tcp, http, exec (0 given)",
        ),
        (
            probe(Some(80), Some("http://x/"), None),
            "ready",
            "(2 given)",
        ),
        (probe(Some(0), None, None), "ready.tcp", "port 0"),
        (
            probe(None, None, Some(&[])),
            "ready.exec",
            "the command is empty",
        ),
        (
            probe(None, None, Some(&[""])),
            "ready.exec",
            "the command is empty",
        ),
        (
            probe(None, Some("https://x/"), None),
            "ready.http",
            "https is not supported",
        ),
        (
            probe(None, Some("http:///x"), None),
            "ready.http",
            "needs a host",
        ),
        (
            probe(None, Some("http://a b/"), None),
            "ready.http",
            "no spaces",
        ),
        (
            ProbePlan {
                deadline_ms: 0,
                ..probe(Some(1), None, None)
            },
            "ready.deadline_ms",
            "outside",
        ),
        (
            ProbePlan {
                interval_ms: 0,
                ..probe(Some(1), None, None)
            },
            "ready.interval_ms",
            "outside",
        ),
        (
            ProbePlan {
                timeout_ms: 120_000,
                ..probe(Some(1), None, None)
            },
            "ready.timeout_ms",
            "at most the deadline",
        ),
        (
            ProbePlan {
                live_interval_ms: Some(5),
                ..probe(Some(1), None, None)
            },
            "ready.live_interval_ms",
            "neither 0",
        ),
        (
            ProbePlan {
                failure_threshold: Some(0),
                ..probe(Some(1), None, None)
            },
            "ready.failure_threshold",
            "outside 1..=1000",
        ),
        (
            ProbePlan {
                body: Some("x".into()),
                ..probe(Some(1), None, None)
            },
            "ready",
            "http probes only",
        ),
    ];
    for (bad, field, message) in cases {
        let mut p = sample();
        p.nodes[1].containers[0].ready = Some(bad.clone());
        let err = p.validate().unwrap_err();
        let text = err.to_string();
        assert!(text.contains(message), "{bad:?}: {text}");
        assert_eq!(
            field_of(err),
            format!("nodes[1].containers[0].{field}"),
            "{bad:?}"
        );
    }
    let mut bad_pointer = probe(None, Some("http://x/"), None);
    bad_pointer.json.insert("beans".into(), "1".into());
    assert!(bad_pointer.validate("f").is_err());
}

#[test]
fn an_unknown_probe_kind_from_a_newer_coordinator_is_refused() {
    // Unknown fields are ignored, so a probe of a kind this agent does not know arrives
    // as a probe of no kind: refused, rather than a container called ready untested.
    let mut v = serde_json::to_value(sample()).expect("to value");
    v["nodes"][0]["containers"][0]["ready"] = serde_json::json!({
        "grpc": 50051, "interval_ms": 250, "timeout_ms": 1000, "deadline_ms": 60000
    });
    let err = Plan::from_json(&serde_json::to_vec(&v).expect("ser")).unwrap_err();
    assert!(err.to_string().contains("exactly one of"), "{err}");
}

#[test]
fn phase_names_round_trip() {
    for p in Phase::ALL {
        let json = serde_json::to_string(&p).expect("ser");
        assert_eq!(json, format!("\"{}\"", p.as_str()));
        assert_eq!(Phase::parse(p.as_str()), Some(p));
    }
}

#[test]
fn status_reason_must_be_a_code() {
    let s = NodeStatus {
        phase: Phase::Failed,
        generation: 1,
        timings: vec![],
        error: Some(NodeFailure {
            reason: "Not A Code".into(),
            message: "x".into(),
        }),
        containers: vec![],
        agent_version: "0.1.0".into(),
        boot: None,
        peer_drains: vec![],
        recipes: vec![],
        disks: vec![],
    };
    assert!(s.validate().is_err());
}

fn boot_report() -> BootReport {
    let k = 1_700_000_000_000;
    BootReport {
        kernel_start_ms: k,
        stages: vec![
            BootStage {
                source: "kernel".into(),
                name: "kernel".into(),
                started_ms: k,
                duration_ms: Some(1700),
            },
            BootStage {
                source: "systemd".into(),
                name: "docker.service".into(),
                started_ms: k + 40_000,
                duration_ms: None,
            },
        ],
        cloud_init: Some(CloudInitOutcome {
            status: "running".into(),
            datasource: Some("DataSourceNoCloud [seed=/dev/vdb][dsmode=net]".into()),
            errors: vec![],
        }),
        agent_unit: Some("shoal-agent.service".into()),
    }
}

#[test]
fn a_status_without_boot_is_what_an_old_agent_sends() {
    let old =
        r#"{"phase":"ready","generation":1,"timings":[],"containers":[],"agent_version":"0.0.9"}"#;
    let s: NodeStatus = serde_json::from_str(old).expect("an old agent's report parses");
    assert_eq!(s.boot, None);
    assert!(s.validate().is_ok());
    // And no `boot` key is written when there is none, so older coordinators see the
    // document they always saw.
    assert!(!serde_json::to_string(&s).expect("ser").contains("boot"));
}

#[test]
fn boot_reports_round_trip_and_ignore_unknown_fields() {
    let s = NodeStatus {
        phase: Phase::Ready,
        generation: 1,
        timings: vec![],
        error: None,
        containers: vec![],
        agent_version: "0.1.0".into(),
        boot: Some(boot_report()),
        peer_drains: vec![],
        recipes: vec![],
        disks: vec![],
    };
    assert!(s.validate().is_ok());
    let mut v = serde_json::to_value(&s).expect("ser");
    assert_eq!(
        serde_json::from_value::<NodeStatus>(v.clone()).expect("de"),
        s
    );
    // A newer agent's additions, inside and beside the report, are ignored.
    v["boot"]["firmware_ms"] = 12.into();
    v["boot"]["stages"][0]["cpu"] = "x".into();
    v["boot"]["stages"][0]["source"] = "firmware".into();
    let back: NodeStatus = serde_json::from_value(v).expect("unknown fields ignored");
    assert!(back.validate().is_ok());
}

#[test]
fn bad_boot_reports_are_refused() {
    let with = |f: &dyn Fn(&mut BootReport)| {
        let mut b = boot_report();
        f(&mut b);
        NodeStatus {
            phase: Phase::Ready,
            generation: 1,
            timings: vec![],
            error: None,
            containers: vec![],
            agent_version: "0.1.0".into(),
            boot: Some(b),
            peer_drains: vec![],
            recipes: vec![],
            disks: vec![],
        }
        .validate()
        .expect_err("refused")
        .to_string()
    };
    assert!(with(&|b| b.stages[1].name = "<script>".into()).contains("boot.stages[1]"));
    assert!(with(&|b| b.stages[0].source = String::new()).contains("boot.stages[0]"));
    assert!(with(&|b| b.stages[0].name = "x".repeat(65)).contains("boot.stages[0]"));
    assert!(with(&|b| b.stages[1].started_ms = 5).contains("before the kernel"));
    assert!(with(&|b| b.stages[0].duration_ms = Some(u64::MAX)).contains("out of range"));
    assert!(with(&|b| {
        let s = b.stages[0].clone();
        b.stages = vec![s; MAX_BOOT_STAGES + 1];
    })
    .contains("more than 32"));
    assert!(with(&|b| {
        if let Some(c) = b.cloud_init.as_mut() {
            c.status = "done\n".into();
        }
    })
    .contains("cloud_init.status"));
    assert!(with(&|b| {
        if let Some(c) = b.cloud_init.as_mut() {
            c.errors = vec!["e".into(); MAX_CLOUD_INIT_ERRORS + 1];
        }
    })
    .contains("cloud_init.errors"));
    assert!(with(&|b| {
        if let Some(c) = b.cloud_init.as_mut() {
            c.errors = vec!["e".repeat(1025)];
        }
    })
    .contains("longer than 1024"));
    assert!(with(&|b| b.agent_unit = Some("a b".into())).contains("agent_unit"));
}

#[test]
fn image_tarball_names_are_flat_file_names() {
    assert_eq!(image_tarball_name("shoal/demo:1"), "shoal_demo_1.tar");
    assert_eq!(
        image_tarball_name("registry.example.com:5000/a/b:2.7"),
        "registry.example.com_5000_a_b_2.7.tar"
    );
    assert!(!image_tarball_name("../../etc/passwd").contains('/'));
}

#[test]
fn a_leaving_nodes_drain_hook_is_checked() {
    let mut plan = sample();
    plan.nodes[2].leaving = true;
    plan.nodes[2].drain = Some(DrainPlan {
        container: "agent".into(),
        exec: vec!["shoal-demo".into(), "drain".into()],
        timeout_secs: 600,
    });
    let bytes = serde_json::to_vec(&plan).expect("serialize");
    assert_eq!(Plan::from_json(&bytes).expect("valid"), plan);
    // A plan without the new fields reads as before: nobody leaves.
    let old = serde_json::to_vec(&sample()).expect("serialize");
    assert!(!String::from_utf8_lossy(&old).contains("leaving"));

    type Change = fn(&mut Plan);
    let bad: [(Change, &str); 4] = [
        (|p| p.nodes[2].leaving = false, "nodes[2].drain"),
        (
            |p| {
                if let Some(d) = p.nodes[2].drain.as_mut() {
                    d.container = "nope".into();
                }
            },
            "nodes[2].drain.container",
        ),
        (
            |p| {
                if let Some(d) = p.nodes[2].drain.as_mut() {
                    d.exec.clear();
                }
            },
            "nodes[2].drain.exec",
        ),
        (
            |p| {
                if let Some(d) = p.nodes[2].drain.as_mut() {
                    d.timeout_secs = 0;
                }
            },
            "nodes[2].drain.timeout_secs",
        ),
    ];
    for (change, field) in bad {
        let mut p = plan.clone();
        change(&mut p);
        assert_eq!(field_of(p.validate().expect_err(field)), field);
    }
}

#[test]
fn the_liveness_interval_is_bounded() {
    let mut plan = sample();
    plan.liveness = Some(LivenessPlan { report_secs: 5 });
    assert!(plan.validate().is_ok());
    for bad in [0, MAX_REPORT_SECS + 1] {
        plan.liveness = Some(LivenessPlan { report_secs: bad });
        assert_eq!(
            field_of(plan.validate().expect_err("bad interval")),
            "liveness.report_secs"
        );
    }
}

#[test]
fn peer_drains_travel_in_plan_and_status() {
    let mut p = sample();
    p.nodes[2].leaving = true;
    p.nodes[0].peer_drains.push(PeerDrainPlan {
        node: "node-2".into(),
        hook: DrainPlan {
            container: "agent".into(),
            exec: vec!["retire".into(), "agent-node-2.demo.shoal.internal".into()],
            timeout_secs: 60,
        },
    });
    let json = serde_json::to_string(&p).expect("json");
    // The hook's fields sit beside the node it drains (flattened), as docs/design.md
    // shows them.
    assert!(
        json.contains(r#""peer_drains":[{"node":"node-2","container":"agent","exec":["#),
        "{json}"
    );
    assert_eq!(Plan::from_json(json.as_bytes()).expect("valid"), p);
    // A plan from before the field reads as one without hooks.
    let old = serde_json::to_string(&sample()).expect("json");
    assert!(!old.contains("peer_drains"));
    assert!(Plan::from_json(old.as_bytes()).expect("valid").nodes[0]
        .peer_drains
        .is_empty());
    // Twice the same node, or a timeout of 0: refused, naming the field.
    let mut twice = p.clone();
    let again = twice.nodes[0].peer_drains[0].clone();
    twice.nodes[0].peer_drains.push(again);
    assert_eq!(
        field_of(twice.validate().expect_err("twice")),
        "nodes[0].peer_drains[1].node"
    );
    let mut zero = p.clone();
    zero.nodes[0].peer_drains[0].hook.timeout_secs = 0;
    assert_eq!(
        field_of(zero.validate().expect_err("0 s")),
        "nodes[0].peer_drains[0].timeout_secs"
    );

    let report = |message: String| NodeStatus {
        phase: Phase::Ready,
        generation: 3,
        timings: vec![],
        error: None,
        containers: vec![],
        agent_version: "0.1.0".into(),
        boot: None,
        peer_drains: vec![PeerDrainReport {
            node: "node-2".into(),
            generation: 3,
            ok: true,
            message,
        }],
        recipes: vec![],
        disks: vec![],
    };
    assert!(report("Decommission Status : Decommissioned".into())
        .validate()
        .is_ok());
    assert!(report("x".repeat(MAX_DRAIN_OUTPUT + 257))
        .validate()
        .is_err());
}

#[test]
fn liveness_defaults_follow_the_probe_interval_within_bounds() {
    let mut p = probe(Some(80), None, None);
    // Quick readiness tries (the demo's 50 ms) are slowed once the node is ready.
    p.interval_ms = 50;
    assert_eq!(p.live_interval(), Some(Duration::from_secs(1)));
    p.interval_ms = 2_500;
    assert_eq!(p.live_interval(), Some(Duration::from_millis(2_500)));
    p.interval_ms = 3_600_000;
    assert_eq!(p.live_interval(), Some(Duration::from_secs(10)));
    // Said outright, it is kept, however long; 0 turns liveness off.
    p.live_interval_ms = Some(60_000);
    assert_eq!(p.live_interval(), Some(Duration::from_secs(60)));
    p.live_interval_ms = Some(0);
    assert_eq!(p.live_interval(), None);
    assert_eq!(p.failure_threshold(), DEFAULT_FAILURE_THRESHOLD);
    p.failure_threshold = Some(5);
    assert_eq!(p.failure_threshold(), 5);
    assert!(p.validate("ready").is_ok());
}

#[test]
fn a_probe_written_before_liveness_reads_with_its_defaults() {
    // What a coordinator without liveness fields sends, with a field from the future.
    let text = r#"{"tcp":8080,"interval_ms":50,"timeout_ms":10000,"deadline_ms":300000,"success_threshold":2}"#;
    let p: ProbePlan = serde_json::from_str(text).expect("parses");
    assert_eq!((p.live_interval_ms, p.failure_threshold), (None, None));
    assert!(p.validate("ready").is_ok());
    // And one without them serializes without them (older agents see what they knew).
    let out = serde_json::to_string(&p).expect("serialize");
    assert!(
        !out.contains("live_interval") && !out.contains("failure"),
        "{out}"
    );
}

#[test]
fn recipes_are_checked_and_an_unknown_when_is_refused() {
    let mut plan = sample();
    plan.nodes[0].recipes = vec![
        RecipePlan {
            name: "prep".into(),
            when: RecipeWhen::PreContainers,
            script: "echo prep".into(),
            timeout_secs: 60,
            every_boot: false,
        },
        RecipePlan {
            name: "post".into(),
            when: RecipeWhen::PostReady,
            script: "echo post".into(),
            timeout_secs: 60,
            every_boot: true,
        },
    ];
    let bytes = serde_json::to_vec(&plan).expect("serialize");
    let json = String::from_utf8_lossy(&bytes).into_owned();
    assert!(json.contains(r#""when":"pre-containers""#), "{json}");
    assert_eq!(Plan::from_json(&bytes).expect("valid"), plan);
    // A plan without recipes reads as before.
    assert!(
        !String::from_utf8_lossy(&serde_json::to_vec(&sample()).expect("json")).contains("recipes")
    );
    let odd = json.replace("post-ready", "at-noon");
    assert!(matches!(
        Plan::from_json(odd.as_bytes()),
        Err(PlanError::Malformed(_))
    ));

    type Change = fn(&mut Plan);
    let bad: [(Change, &str); 6] = [
        (
            |p| p.nodes[0].recipes[1].name = "prep".into(),
            "nodes[0].recipes[1].name",
        ),
        (
            |p| p.nodes[0].recipes[0].name = "Prep!".into(),
            "nodes[0].recipes[0].name",
        ),
        (
            |p| p.nodes[0].recipes[0].script = " \n".into(),
            "nodes[0].recipes[0].script",
        ),
        (
            |p| p.nodes[0].recipes[0].script = "x".repeat(MAX_RECIPE_BYTES + 1),
            "nodes[0].recipes[0].script",
        ),
        (
            |p| p.nodes[0].recipes[1].timeout_secs = 0,
            "nodes[0].recipes[1].timeout_secs",
        ),
        (
            |p| {
                let r = p.nodes[0].recipes[0].clone();
                p.nodes[0].recipes = (0..=MAX_RECIPES)
                    .map(|i| RecipePlan {
                        name: format!("r{i}"),
                        ..r.clone()
                    })
                    .collect();
            },
            "nodes[0].recipes",
        ),
    ];
    for (change, field) in bad {
        let mut p = plan.clone();
        change(&mut p);
        assert_eq!(field_of(p.validate().expect_err(field)), field);
    }
}

#[test]
fn disks_are_checked() {
    let mut plan = sample();
    plan.nodes[0].disks = vec![
        DiskPlan {
            id: "loop:/var/lib/vm/disks/disk1.img".into(),
            size_gb: 1,
        },
        DiskPlan {
            id: "/dev/sdb".into(),
            size_gb: 1,
        },
        DiskPlan {
            id: "lun:0".into(),
            size_gb: 1,
        },
    ];
    plan.nodes[0].containers[0].data_disks = Some("/data".into());
    let bytes = serde_json::to_vec(&plan).expect("serialize");
    assert_eq!(Plan::from_json(&bytes).expect("valid"), plan);
    type Change = fn(&mut Plan);
    let bad: [(Change, &str); 5] = [
        (
            |p| p.nodes[0].disks[1].id = "loop:/var/lib/vm/disks/disk1.img".into(),
            "nodes[0].disks[1].id",
        ),
        (
            |p| p.nodes[0].disks[0].id = "nfs:server".into(),
            "nodes[0].disks[0].id",
        ),
        (
            |p| p.nodes[0].disks[2].id = "lun:999".into(),
            "nodes[0].disks[2].id",
        ),
        (
            |p| p.nodes[0].disks[0].size_gb = 0,
            "nodes[0].disks[0].size_gb",
        ),
        (
            |p| p.nodes[0].containers[0].data_disks = Some("data".into()),
            "nodes[0].containers[0].data_disks",
        ),
    ];
    for (change, field) in bad {
        let mut p = plan.clone();
        change(&mut p);
        assert_eq!(field_of(p.validate().expect_err(field)), field);
    }
    let mut many = plan.clone();
    many.nodes[0].disks = (0..=MAX_DISKS)
        .map(|i| DiskPlan {
            id: format!("lun:{i}"),
            size_gb: 1,
        })
        .collect();
    assert_eq!(
        field_of(many.validate().expect_err("25 disks")),
        "nodes[0].disks"
    );
}
