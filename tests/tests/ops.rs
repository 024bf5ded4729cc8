//! Operator tools end to end, against real local clusters: the boot timeline (text,
//! JSON, SVG rendered to PNG and looked at pixel by pixel), `shoal doctor` on this
//! machine and on broken set-ups, `/metrics`, progress on a terminal, `--json` on the
//! read commands, answers checked against the OpenAPI document, completions and the
//! manual page.
//!
//! Privileged tests: run through `scripts/test` as root
//! (`cargo test -p shoal-e2e --test ops -- --include-ignored --test-threads=1`).

use std::collections::BTreeMap;
use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use serde_json::Value;
use shoal_e2e::coordinator::{bin, image_dir, target_dir, TestCoordinator};
use shoal_e2e::{require_privileges, unique_name};

const TOOLS: &[&str] = &["ip", "nsenter", "dockerd", "curl"];
const BOOT: Duration = Duration::from_secs(180);

/// The timeline's stage colours (coordinator/src/view/timeline.rs) and the ready mark.
const STAGE_COLOURS: &[(&str, [u8; 3])] = &[
    ("vm-requested", [0xba, 0xb0, 0xac]),
    ("vm-running", [0x9c, 0x75, 0x5f]),
    ("agent-started", [0xb0, 0x7a, 0xa1]),
    ("plan-received", [0x4e, 0x79, 0xa7]),
    ("network", [0x76, 0xb7, 0xb2]),
    ("images", [0xed, 0xc9, 0x48]),
    ("containers", [0xf2, 0x8e, 0x2b]),
];
const READY: [u8; 3] = [0x59, 0xa1, 0x4f];

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn ok(out: &Output, what: &str) -> String {
    assert!(
        out.status.success(),
        "{what} failed ({}):\nstdout: {}\nstderr: {}",
        out.status,
        text(&out.stdout),
        text(&out.stderr)
    );
    text(&out.stdout)
}

fn create(c: &TestCoordinator, name: &str, nodes: u32) -> Value {
    let out = c.shoal(&[
        "cluster",
        "create",
        name,
        "--nodes",
        &nodes.to_string(),
        "--wait",
        "--json",
    ]);
    assert!(
        out.status.success(),
        "create --wait failed: {}\n{}\nserver log:\n{}",
        text(&out.stdout),
        text(&out.stderr),
        c.log_text()
    );
    // --json prints the cluster once it is AVAILABLE.
    let v: Value = serde_json::from_slice(&out.stdout).expect("create --json is JSON");
    assert_eq!(v["state"], "AVAILABLE", "{v:#}");
    v
}

/// A scratch directory removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new(tag: &str) -> Scratch {
        let p = std::env::temp_dir().join(unique_name(&format!("shoal-ops-{tag}-")));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).expect("scratch dir");
        Scratch(p)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A decoded PNG: width, height, RGB pixels.
struct Image {
    width: usize,
    height: usize,
    rgb: Vec<[u8; 3]>,
}

impl Image {
    fn at(&self, x: usize, y: usize) -> [u8; 3] {
        self.rgb[y * self.width + x]
    }

    /// Rows (top, bottom inclusive) where column `x` has `colour`, merged into bands.
    fn bands(&self, x: usize, colour: [u8; 3]) -> Vec<(usize, usize)> {
        let mut out: Vec<(usize, usize)> = Vec::new();
        for y in 0..self.height {
            if self.at(x, y) == colour {
                match out.last_mut() {
                    Some(b) if b.1 + 1 == y => b.1 = y,
                    _ => out.push((y, y)),
                }
            }
        }
        out
    }

    fn count(&self, rows: (usize, usize), colour: [u8; 3]) -> usize {
        (rows.0..=rows.1)
            .flat_map(|y| (0..self.width).map(move |x| (x, y)))
            .filter(|(x, y)| self.at(*x, *y) == colour)
            .count()
    }
}

/// Decodes an 8-bit RGB or RGBA, non-interlaced PNG (what rsvg-convert writes): the
/// chunks, zlib, and the five scanline filters.
fn decode_png(bytes: &[u8]) -> Image {
    assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n", "not a PNG");
    let mut pos = 8;
    let (mut width, mut height, mut channels) = (0usize, 0usize, 0usize);
    let mut idat = Vec::new();
    while pos + 8 <= bytes.len() {
        let len = u32::from_be_bytes(bytes[pos..pos + 4].try_into().expect("len")) as usize;
        let kind = &bytes[pos + 4..pos + 8];
        let data = &bytes[pos + 8..pos + 8 + len];
        match kind {
            b"IHDR" => {
                width = u32::from_be_bytes(data[0..4].try_into().expect("w")) as usize;
                height = u32::from_be_bytes(data[4..8].try_into().expect("h")) as usize;
                assert_eq!(data[8], 8, "bit depth");
                channels = match data[9] {
                    2 => 3,
                    6 => 4,
                    t => panic!("colour type {t} not handled"),
                };
                assert_eq!(data[12], 0, "interlaced PNG not handled");
            }
            b"IDAT" => idat.extend_from_slice(data),
            b"IEND" => break,
            _ => {}
        }
        pos += 12 + len;
    }
    let mut raw = Vec::new();
    flate2::read::ZlibDecoder::new(&idat[..])
        .read_to_end(&mut raw)
        .expect("zlib");
    let stride = width * channels;
    assert_eq!(raw.len(), height * (stride + 1), "scanline data size");
    let mut px = vec![0u8; height * stride];
    for y in 0..height {
        let filter = raw[y * (stride + 1)];
        let line = &raw[y * (stride + 1) + 1..(y + 1) * (stride + 1)];
        for i in 0..stride {
            let a = if i >= channels {
                px[y * stride + i - channels]
            } else {
                0
            };
            let b = if y > 0 { px[(y - 1) * stride + i] } else { 0 };
            let c = if y > 0 && i >= channels {
                px[(y - 1) * stride + i - channels]
            } else {
                0
            };
            let pred = match filter {
                0 => 0,
                1 => a,
                2 => b,
                3 => ((u16::from(a) + u16::from(b)) / 2) as u8,
                4 => {
                    let p = i16::from(a) + i16::from(b) - i16::from(c);
                    let (pa, pb, pc) = (
                        (p - i16::from(a)).abs(),
                        (p - i16::from(b)).abs(),
                        (p - i16::from(c)).abs(),
                    );
                    if pa <= pb && pa <= pc {
                        a
                    } else if pb <= pc {
                        b
                    } else {
                        c
                    }
                }
                f => panic!("filter {f}"),
            };
            px[y * stride + i] = line[i].wrapping_add(pred);
        }
    }
    let rgb = px.chunks(channels).map(|p| [p[0], p[1], p[2]]).collect();
    Image { width, height, rgb }
}

#[test]
#[ignore = "needs root, dockerd, iproute2, rsvg-convert"]
fn timeline_of_a_three_node_cluster_as_text_json_and_a_picture() {
    require_privileges(&[TOOLS, &["rsvg-convert"]].concat());
    let c = TestCoordinator::start();
    let name = "tl";
    create(&c, name, 3);

    // Text: a bar per node, each ending in its ready time, and the duration table.
    let out = ok(
        &c.shoal(&["cluster", "timeline", name, "--width", "100"]),
        "timeline",
    );
    assert!(
        out.starts_with(&format!("{name}: 3 nodes on local, AVAILABLE in ")),
        "{out}"
    );
    let bars: Vec<&str> = out.lines().filter(|l| l.contains('|')).collect();
    assert_eq!(bars.len(), 3, "{out}");
    for b in &bars {
        assert!(b.chars().count() <= 100, "wider than asked: {b}");
        assert!(b.trim_end().ends_with("ready"), "{b}");
        for g in ['=', 'N', 'I', 'C'] {
            assert!(b.contains(g), "{g} missing: {b}");
        }
    }
    assert!(out.contains("plan-received"), "legend: {out}");

    // JSON: every stage of every node, in order, none running.
    let v: Value = serde_json::from_str(&ok(
        &c.shoal(&["cluster", "timeline", name, "--json"]),
        "timeline --json",
    ))
    .expect("timeline --json is JSON");
    let available = v["time_to_available_ms"].as_u64().expect("available");
    for n in v["nodes"].as_array().expect("nodes") {
        let stages: Vec<&str> = n["segments"]
            .as_array()
            .expect("segments")
            .iter()
            .map(|s| s["stage"].as_str().expect("stage"))
            .collect();
        let expected: Vec<&str> = STAGE_COLOURS.iter().map(|(s, _)| *s).collect();
        assert_eq!(stages, expected, "{n:#}");
        let ready = n["ready_ms"].as_u64().expect("ready_ms");
        assert!(ready <= available + 50, "{n:#}");
    }

    // The picture: rendered by a real SVG renderer, then looked at.
    let dir = target_dir().join("ops");
    std::fs::create_dir_all(&dir).expect("target/ops");
    let svg = dir.join("timeline.svg");
    let png = dir.join("timeline.png");
    ok(
        &c.shoal(&[
            "cluster",
            "timeline",
            name,
            "--svg",
            svg.to_str().expect("utf-8"),
        ]),
        "timeline --svg",
    );
    let svg_text = std::fs::read_to_string(&svg).expect("svg");
    assert!(svg_text.contains(&format!("{name}: 3 nodes on local, AVAILABLE in")));
    ok(
        Command::new("rsvg-convert")
            .arg(&svg)
            .arg("-o")
            .arg(&png)
            .output()
            .as_ref()
            .expect("rsvg-convert"),
        "rsvg-convert",
    );
    let img = decode_png(&std::fs::read(&png).expect("png"));
    assert_eq!(img.width, 960);
    assert!((250..400).contains(&img.height), "height {}", img.height);
    // Rows: every node's bar starts at the plot's left edge (x = 150) with the
    // "VM requested" colour; the legend swatch of that colour is further left.
    let rows = img.bands(151, STAGE_COLOURS[0].1);
    assert_eq!(rows.len(), 3, "bands of the first stage at x=151: {rows:?}");
    for (i, row) in rows.iter().enumerate() {
        assert!(row.1 - row.0 >= 10, "row {i} too thin: {row:?}");
        for (stage, colour) in STAGE_COLOURS {
            assert!(
                img.count(*row, *colour) > 0,
                "no {stage} pixel in node-{i}'s row {row:?} (see {})",
                png.display()
            );
        }
        // The ready mark sits on the row (antialiased edges, exact core).
        let widened = (row.0.saturating_sub(3), row.1 + 3);
        assert!(img.count(widened, READY) > 0, "no ready mark on row {i}");
    }
    // Title text is dark on white: some dark pixels in the top band.
    assert!(
        img.count((5, 40), [0x22, 0x22, 0x22]) > 20,
        "no title drawn"
    );
    eprintln!("timeline picture: {}", png.display());

    // SVG to stdout.
    let out = ok(
        &c.shoal(&["cluster", "timeline", name, "--svg", "-"]),
        "svg -",
    );
    assert!(out.starts_with("<svg"));
    // An unknown cluster: the error says what to do next.
    let out = c.shoal(&["cluster", "timeline", "nope"]);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("shoal cluster list"),
        "{}",
        text(&out.stderr)
    );
}

fn doctor(state_dir: &Path, path: Option<&str>, extra: &[&str]) -> (i32, String, Value) {
    let run = |json: bool| {
        let mut cmd = Command::new(bin("shoal"));
        cmd.arg("--state-dir").arg(state_dir).arg("doctor");
        if !extra.contains(&"--image-dir") {
            cmd.arg("--image-dir").arg(image_dir());
        }
        cmd.args(extra);
        if json {
            cmd.arg("--json");
        }
        if let Some(p) = path {
            cmd.env("PATH", p);
        }
        cmd.env_remove("SHOAL_TOKEN")
            .env_remove("SHOAL_COORDINATOR");
        cmd.output().expect("run shoal doctor")
    };
    let out = run(false);
    let json = run(true);
    assert_eq!(
        out.status.code(),
        json.status.code(),
        "same verdict in JSON"
    );
    let v: Value = serde_json::from_slice(&json.stdout).expect("doctor --json is JSON");
    (out.status.code().unwrap_or(-1), text(&out.stdout), v)
}

fn check<'a>(v: &'a Value, name: &str) -> &'a Value {
    v["checks"]
        .as_array()
        .expect("checks")
        .iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no {name} check: {v:#}"))
}

#[test]
#[ignore = "needs root, dockerd, iproute2"]
fn doctor_passes_on_this_machine_and_names_what_is_broken() {
    require_privileges(&[TOOLS, &["iptables"]].concat());
    let c = TestCoordinator::start();

    // This machine, with a coordinator running: everything needed is there.
    let (code, out, v) = doctor(&c.state_dir, None, &[]);
    assert_eq!(code, 0, "{out}");
    assert_eq!(v["ok"], true);
    for name in [
        "root",
        "dockerd",
        "ip",
        "nsenter",
        "kernel-vxlan",
        "kernel-bridge",
        "demo-image",
        "state-dir",
        "token",
        "coordinator",
    ] {
        assert_eq!(check(&v, name)["status"], "ok", "{name}: {out}");
    }
    assert_eq!(check(&v, "forward-policy")["status"], "info");
    assert!(out.contains("ready for the local provider"), "{out}");
    // The throwaway namespace is gone.
    let netns = std::fs::read_dir("/run/netns")
        .map(|d| {
            d.flatten()
                .filter(|e| e.file_name().to_string_lossy().starts_with("shoal-doctor-"))
                .count()
        })
        .unwrap_or(0);
    assert_eq!(netns, 0, "doctor left a namespace behind");

    // A PATH without dockerd: blocking, with the package to install.
    let tools = Scratch::new("path");
    for t in ["ip", "nsenter", "iptables", "id"] {
        let p = shoal_e2e::which(t).expect("tool on PATH");
        std::os::unix::fs::symlink(&p, tools.0.join(t)).expect("symlink");
    }
    let (code, out, v) = doctor(&c.state_dir, tools.0.to_str(), &[]);
    assert_eq!(code, 1, "{out}");
    assert_eq!(check(&v, "dockerd")["status"], "fail");
    assert!(out.contains("FAIL  dockerd"), "{out}");
    assert!(out.contains("fix: apt-get install docker.io"), "{out}");
    assert!(out.contains("1 problem will stop a run"), "{out}");

    // A file where the state dir should be.
    let scratch = Scratch::new("state");
    let file = scratch.0.join("state");
    std::fs::write(&file, "not a directory").expect("file");
    let (code, out, v) = doctor(&file, None, &[]);
    assert_eq!(code, 1, "{out}");
    assert_eq!(check(&v, "state-dir")["status"], "fail");
    assert!(out.contains("is not a directory"), "{out}");

    // A world-readable token, and a state dir others may enter.
    let dir = scratch.0.join("open");
    std::fs::create_dir_all(&dir).expect("dir");
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    std::fs::write(
        dir.join("token"),
        "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef\n",
    )
    .expect("token");
    std::fs::set_permissions(dir.join("token"), std::fs::Permissions::from_mode(0o644))
        .expect("chmod");
    let (code, out, v) = doctor(&dir, None, &[]);
    assert_eq!(code, 1, "{out}");
    assert_eq!(check(&v, "token")["status"], "fail");
    assert!(
        out.contains(&format!("fix: chmod 600 {}", dir.join("token").display())),
        "{out}"
    );
    assert!(
        out.contains(&format!("fix: chmod 700 {}", dir.display())),
        "{out}"
    );
    // No coordinator there: a warning, not a failure.
    assert_eq!(check(&v, "coordinator")["status"], "warn");

    // No demo image yet: the coordinator builds it at first need from busybox-static
    // (issue #22), and doctor says so, with the script that builds it by hand.
    let empty = Scratch::new("images");
    let (code, out, v) = doctor(
        &c.state_dir,
        None,
        &["--image-dir", empty.0.to_str().expect("utf-8")],
    );
    assert_eq!(code, 0, "{out}");
    assert_eq!(check(&v, "demo-image")["status"], "info", "{out}");
    assert!(out.contains("at first need"), "{out}");
    assert!(out.contains("cloud-init/build-demo-image"), "{out}");

    // Azure with no credential stored.
    let (code, out, _) = doctor(&c.state_dir, None, &["--provider", "azure"]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("shoal credential create azure"), "{out}");
}

/// `name{labels} value` lines of a Prometheus text page.
fn samples(page: &str) -> BTreeMap<String, f64> {
    page.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| {
            let (k, v) = l.rsplit_once(' ').expect("sample");
            let v = if v == "+Inf" {
                f64::INFINITY
            } else {
                v.parse().expect("value")
            };
            (k.to_string(), v)
        })
        .collect()
}

fn curl(args: &[&str]) -> (String, String) {
    let out = Command::new("curl")
        .args(["-sS", "-w", "\n%{http_code}"])
        .args(args)
        .output()
        .expect("curl");
    let body = text(&out.stdout);
    let (body, code) = body.rsplit_once('\n').unwrap_or(("", ""));
    (code.to_string(), body.to_string())
}

#[test]
#[ignore = "needs root, dockerd, iproute2, curl"]
fn metrics_count_a_real_cluster() {
    require_privileges(TOOLS);
    let c = TestCoordinator::start();
    let api = c.api_url();
    let auth = format!("Authorization: Bearer {}", c.token());
    let (code, _) = curl(&[&format!("{api}/metrics")]);
    assert_eq!(code, "401", "/metrics is behind the token");

    create(&c, "mx", 2);
    let (code, page) = curl(&["-H", &auth, &format!("{api}/metrics")]);
    assert_eq!(code, "200");
    let s = samples(&page);
    assert_eq!(s["shoal_clusters{state=\"AVAILABLE\"}"], 1.0, "{page}");
    assert_eq!(s["shoal_nodes{phase=\"ready\"}"], 2.0, "{page}");
    assert_eq!(
        s["shoal_provider_calls_total{provider=\"local\",operation=\"create_nodes\"}"],
        1.0
    );
    assert_eq!(
        s["shoal_provider_errors_total{provider=\"local\",operation=\"create_nodes\"}"],
        0.0
    );
    assert_eq!(
        s["shoal_provider_call_duration_seconds_count{provider=\"local\",operation=\"create_nodes\"}"],
        1.0
    );
    assert_eq!(s["shoal_cluster_time_to_available_seconds_count"], 1.0);
    let t = s["shoal_cluster_time_to_available_seconds_sum"];
    assert!(t > 0.1 && t < BOOT.as_secs_f64(), "time to AVAILABLE {t}");
    assert_eq!(
        s["shoal_cluster_time_to_available_seconds_bucket{le=\"+Inf\"}"],
        1.0
    );
    // Every agent fetched the plan and reported its phases.
    assert!(
        s["shoal_metadata_requests_total{route=\"plan\",code=\"200\"}"] >= 2.0,
        "{page}"
    );
    assert!(
        s["shoal_metadata_requests_total{route=\"status\",code=\"204\"}"] >= 2.0 * 6.0,
        "{page}"
    );
    // Resident agents hold a long-poll each, waiting for a newer plan.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let (_, page) = curl(&["-H", &auth, &format!("{api}/metrics")]);
        let s = samples(&page);
        if s["shoal_metadata_long_polls_in_flight"] >= 2.0 {
            assert!(s["shoal_metadata_requests_in_flight"] >= 2.0, "{page}");
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no long-polls held: {page}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }

    ok(&c.shoal(&["cluster", "delete", "mx", "--wait"]), "delete");
    let (_, page) = curl(&["-H", &auth, &format!("{api}/metrics")]);
    let s = samples(&page);
    assert_eq!(s["shoal_clusters{state=\"DELETED\"}"], 1.0, "{page}");
    assert_eq!(s["shoal_nodes{phase=\"ready\"}"], 0.0, "{page}");
    assert_eq!(
        s["shoal_provider_calls_total{provider=\"local\",operation=\"delete_cluster\"}"],
        1.0
    );
}

#[test]
#[ignore = "needs root, dockerd, iproute2, script (util-linux)"]
fn waiting_draws_bars_on_a_terminal_and_every_read_command_speaks_json() {
    require_privileges(&[TOOLS, &["script"]].concat());
    let c = TestCoordinator::start();
    // `script` gives the CLI a pseudo-terminal, as a person's shell would.
    let cmd = format!(
        "{} --state-dir {} cluster create tty --nodes 2 --wait",
        bin("shoal").display(),
        c.state_dir.display()
    );
    let out = Command::new("script")
        .args(["-qfec", &cmd, "/dev/null"])
        .env("TERM", "xterm")
        .output()
        .expect("script");
    let screen = text(&out.stdout);
    assert!(out.status.success(), "{screen}\n{}", c.log_text());
    assert!(screen.contains("\x1b[2K"), "no redrawn lines: {screen:?}");
    assert!(
        screen.contains("\x1b[3A"),
        "block not redrawn in place: {screen:?}"
    );
    assert!(screen.contains("[2/2] ready"), "{screen:?}");
    assert!(
        screen.contains(&format!("[{}]", "#".repeat(21))),
        "no full bar: {screen:?}"
    );
    // Without a terminal: plain lines, no escapes.
    let out = c.shoal(&["cluster", "delete", "tty", "--wait"]);
    let err = text(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(!err.contains('\x1b'), "{err:?}");
    assert!(err.contains("DELETED"), "{err}");

    create(&c, "js", 1);
    for args in [
        &["cluster", "list", "--json"][..],
        &["cluster", "show", "js", "--json"],
        &["cluster", "timeline", "js", "--json"],
        &["user-data", "js", "--json"],
        &["credential", "list", "--json"],
        &[
            "doctor",
            "--json",
            "--image-dir",
            image_dir().to_str().expect("utf-8"),
        ],
    ] {
        let out = ok(&c.shoal(args), &format!("{args:?}"));
        let v: Value = serde_json::from_str(&out)
            .unwrap_or_else(|e| panic!("{args:?} --json is not JSON ({e}): {out}"));
        assert!(v.is_object() || v.is_array(), "{args:?}: {v}");
    }
    let v: Value = serde_json::from_str(&ok(&c.shoal(&["user-data", "js", "--json"]), "user-data"))
        .expect("json");
    assert!(v["user_data"]
        .as_str()
        .is_some_and(|u| u.starts_with("#cloud-config")));

    // Errors say what to do next.
    let out = c.shoal(&["cluster", "create", "js", "--nodes", "1"]);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("shoal cluster delete js --wait"),
        "{}",
        text(&out.stderr)
    );
    let out = c.shoal(&["cluster", "create", "az", "--provider", "azure"]);
    let err = text(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("--advertise-url URL"), "{err}");
    let out = c.shoal(&["cluster", "create", "x", "--provider", "nosuch"]);
    let err = text(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("known: aws, azure, local"), "{err}");
    let out = c.shoal(&["cluster", "show", "nope"]);
    assert!(
        text(&out.stderr).contains("shoal cluster list"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
#[ignore = "needs root, dockerd, iproute2, curl, and tests/openapi/run's venv"]
fn a_real_clusters_answers_match_the_openapi_document() {
    require_privileges(TOOLS);
    let python = target_dir().join("openapi-venv/bin/python");
    assert!(
        python.is_file(),
        "{} is missing: run tests/openapi/run first (scripts/test does)",
        python.display()
    );
    let c = TestCoordinator::start();
    create(&c, "oa", 2);
    let api = c.api_url();
    let auth = format!("Authorization: Bearer {}", c.token());
    let (_, doc) = curl(&["-H", &auth, &format!("{api}/v1/openapi.json")]);
    let scratch = Scratch::new("openapi");
    let doc_path = scratch.0.join("openapi.json");
    std::fs::write(&doc_path, &doc).expect("doc");
    // Each answer, with the schema of its documented 200 or 202 response.
    for (path, schema) in [
        ("/v1/health", "Health"),
        ("/v1/clusters", "ClusterList"),
        ("/v1/clusters/oa", "Cluster"),
    ] {
        let (code, body) = curl(&["-H", &auth, &format!("{api}{path}")]);
        assert_eq!(code, "200", "{path}: {body}");
        let file = scratch.0.join("body.json");
        std::fs::write(&file, &body).expect("body");
        let out = Command::new(&python)
            .arg("-c")
            .arg(VALIDATE)
            .arg(&doc_path)
            .arg(schema)
            .arg(&file)
            .output()
            .expect("python");
        assert!(
            out.status.success(),
            "{path} does not match schema {schema}: {}{}",
            text(&out.stdout),
            text(&out.stderr)
        );
    }
    let (code, body) = curl(&[
        "-H",
        &auth,
        &format!("{api}/v1/clusters/oa/user-data?node=node-1"),
    ]);
    assert_eq!(code, "200", "{body}");
    assert!(body.starts_with("#cloud-config"), "{body}");
}

/// Validates a JSON document against a schema of the OpenAPI document, with the
/// `jsonschema_rs` package schemathesis brings (`nullable` turned into JSON Schema).
const VALIDATE: &str = r##"
import json, sys, jsonschema_rs
doc = json.load(open(sys.argv[1]))
def fix(node):
    if isinstance(node, dict):
        node = {k: fix(v) for k, v in node.items()}
        if node.pop("nullable", False) and "type" in node:
            node["type"] = [node["type"], "null"]
        if "$ref" in node:
            node["$ref"] = node["$ref"].replace("#/components/schemas/", "#/$defs/")
        return node
    if isinstance(node, list):
        return [fix(v) for v in node]
    return node
defs = fix(doc["components"]["schemas"])
defs["ClusterList"] = {"type": "array", "items": {"$ref": "#/$defs/Cluster"}}
schema = {"$ref": "#/$defs/" + sys.argv[2], "$defs": defs}
body = json.load(open(sys.argv[3]))
jsonschema_rs.Draft202012Validator(schema, validate_formats=True).validate(body)
print("ok")
"##;

#[test]
#[ignore = "needs the built shoal binary (cargo build --workspace --bins) and bash"]
fn completions_and_the_manual_page_come_from_the_cli_definition() {
    let shoal = bin("shoal");
    let run = |args: &[&str]| {
        ok(
            &Command::new(&shoal).args(args).output().expect("shoal"),
            &format!("{args:?}"),
        )
    };

    // bash: load the script and ask it to complete, as bash does on TAB.
    let script = run(&["completions", "bash"]);
    let scratch = Scratch::new("compl");
    let file = scratch.0.join("shoal.bash");
    std::fs::write(&file, &script).expect("write");
    let complete = |words: &str, cword: usize| {
        let probe = format!(
            "source {}; COMP_WORDS=({words}); COMP_CWORD={cword}; COMP_LINE='{words}'; COMP_POINT=${{#COMP_LINE}}; _shoal shoal \"${{COMP_WORDS[$COMP_CWORD]}}\" \"${{COMP_WORDS[$COMP_CWORD-1]}}\"; printf '%s\\n' \"${{COMPREPLY[@]}}\"",
            file.display()
        );
        ok(
            &Command::new("bash")
                .arg("-c")
                .arg(&probe)
                .output()
                .expect("bash"),
            "bash completion",
        )
    };
    let top = complete("shoal ''", 1);
    for w in ["cluster", "doctor", "completions", "man", "serve"] {
        assert!(top.lines().any(|l| l == w), "{w} not offered: {top}");
    }
    let sub = complete("shoal cluster ''", 2);
    assert!(sub.lines().any(|l| l == "timeline"), "{sub}");
    let flags = complete("shoal doctor --provider ''", 3);
    for p in ["local", "aws", "azure"] {
        assert!(flags.lines().any(|l| l == p), "{p} not offered: {flags}");
    }
    for shell in ["zsh", "fish"] {
        let s = run(&["completions", shell]);
        assert!(
            s.contains("timeline") && s.contains("doctor"),
            "{shell}: {s}"
        );
    }

    // The manual page: roff a pager can show, and one page per command.
    let page = run(&["man"]);
    assert!(page.contains(".TH shoal 1"), "{page}");
    assert!(page.contains("doctor"), "{page}");
    if shoal_e2e::which("groff").is_some() {
        let file = scratch.0.join("shoal.1");
        std::fs::write(&file, &page).expect("write");
        let out = Command::new("groff")
            .args(["-man", "-Tutf8", "-ww"])
            .arg(&file)
            .output()
            .expect("groff");
        let shown = ok(&out, "groff");
        assert!(
            shown.contains("SUBCOMMANDS") || shown.contains("shoal-cluster"),
            "{shown}"
        );
        assert!(
            text(&out.stderr).trim().is_empty(),
            "groff warnings: {}",
            text(&out.stderr)
        );
    }
    let dir = scratch.0.join("man1");
    run(&["man", "--out-dir", dir.to_str().expect("utf-8")]);
    for p in [
        "shoal.1",
        "shoal-cluster.1",
        "shoal-cluster-timeline.1",
        "shoal-doctor.1",
    ] {
        assert!(dir.join(p).is_file(), "{p} not written");
    }
}
