//! A scripted HTTP/1.1 server on raw TCP (no HTTP library: it must be able to misbehave
//! in ways a library would not let it) and the agent configuration that points at it.
//!
//! Each connection gets one request, parsed here, and the test's script writes whatever
//! answer it wants on the socket, then the connection is closed.

#![allow(dead_code)] // each test file uses a part

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// A cluster key as the coordinator makes them; tests search the agent's output for it.
pub const KEY: &str = "5a0c1e9f4b7d2a86c3e1f09d8b6a4c2e7f1d3b5a9c8e0f2d4b6a8c0e1f3d5b7a";
/// The node's token; never to be logged either.
pub const TOKEN: &str = "node-token-7c4f9e2a1b8d";
/// The node id in the configuration and in [`plan_json`].
pub const NODE: &str = "node-0";

/// One request as the server read it.
#[derive(Debug, Clone)]
pub struct Request {
    /// `GET`, `PUT`, …
    pub method: String,
    /// The path, without the query.
    pub path: String,
    /// The query string (empty when there is none).
    pub query: String,
    /// Header names (lower-cased) and values.
    pub headers: Vec<(String, String)>,
    /// The body (by `Content-Length`).
    pub body: Vec<u8>,
}

impl Request {
    /// The value of query parameter `name`.
    pub fn param(&self, name: &str) -> Option<&str> {
        self.query
            .split('&')
            .filter_map(|kv| kv.split_once('='))
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v)
    }

    /// Whether this is the plan's long-poll.
    pub fn is_plan(&self) -> bool {
        self.method == "GET" && self.path == shoal_protocol::contract::plan_path(KEY)
    }

    /// Whether this is a status report of [`NODE`].
    pub fn is_status(&self) -> bool {
        self.method == "PUT" && self.path == shoal_protocol::contract::status_path(KEY, NODE)
    }
}

type Script = dyn Fn(&Request, &mut TcpStream) -> io::Result<()> + Send + Sync;

/// The server; it stops accepting when dropped.
pub struct Server {
    addr: SocketAddr,
    connections: Arc<AtomicUsize>,
    requests: Arc<Mutex<Vec<Request>>>,
    stop: Arc<AtomicBool>,
}

impl Server {
    /// Listens on a free loopback port and answers every request with `script`.
    pub fn start(
        script: impl Fn(&Request, &mut TcpStream) -> io::Result<()> + Send + Sync + 'static,
    ) -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind a loopback port");
        Server::on(listener, script)
    }

    /// Answers on `listener` with `script`.
    pub fn on(
        listener: TcpListener,
        script: impl Fn(&Request, &mut TcpStream) -> io::Result<()> + Send + Sync + 'static,
    ) -> Server {
        let addr = listener.local_addr().expect("local address");
        let script: Arc<Script> = Arc::new(script);
        let server = Server {
            addr,
            connections: Arc::default(),
            requests: Arc::default(),
            stop: Arc::default(),
        };
        let (connections, requests, stop) = (
            server.connections.clone(),
            server.requests.clone(),
            server.stop.clone(),
        );
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                if stop.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(mut stream) = stream else { continue };
                connections.fetch_add(1, Ordering::SeqCst);
                let (script, requests) = (script.clone(), requests.clone());
                std::thread::spawn(move || {
                    let _ = stream.set_read_timeout(Some(Duration::from_secs(30)));
                    let Ok(req) = read_request(&mut stream) else {
                        return;
                    };
                    requests.lock().expect("request log").push(req.clone());
                    let _ = script(&req, &mut stream);
                    let _ = stream.flush();
                });
            }
        });
        server
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }

    /// Requests read so far.
    pub fn requests(&self) -> Vec<Request> {
        self.requests.lock().expect("request log").clone()
    }

    /// How many requests so far matched `f`.
    pub fn count(&self, f: impl Fn(&Request) -> bool) -> usize {
        self.requests().iter().filter(|r| f(r)).count()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop so it sees the flag.
        let _ = TcpStream::connect(self.addr);
    }
}

fn read_request(stream: &mut TcpStream) -> io::Result<Request> {
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let mut parts = line.split_whitespace();
    let method = parts.next().unwrap_or_default().to_string();
    let target = parts.next().unwrap_or_default();
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let (path, query) = (path.to_string(), query.to_string());
    let mut headers = Vec::new();
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h)? == 0 || h.trim().is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            headers.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
        }
    }
    let len = headers
        .iter()
        .find(|(k, _)| k == "content-length")
        .and_then(|(_, v)| v.parse::<usize>().ok())
        .unwrap_or(0);
    let mut body = vec![0; len.min(1 << 20)];
    reader.read_exact(&mut body)?;
    Ok(Request {
        method,
        path,
        query,
        headers,
        body,
    })
}

/// Writes a whole answer: status line, `headers`, `Content-Length`, `body`.
pub fn respond(
    stream: &mut TcpStream,
    status: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> io::Result<()> {
    let mut head = format!("HTTP/1.1 {status}\r\nConnection: close\r\n");
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
    stream.write_all(head.as_bytes())?;
    stream.write_all(body)
}

/// A valid plan of generation `generation` listing [`NODE`] with no container.
pub fn plan_json(generation: u64) -> Vec<u8> {
    let plan = serde_json::json!({
        "schema": 1, "cluster": "hostile", "generation": generation,
        "domain": "shoal.internal",
        "network": {"overlay": "10.240.0.0/16", "vni": 42},
        "nodes": [{
            "id": NODE, "index": 0, "private_ip": "10.213.0.10",
            "slice": "10.240.1.0/24", "gateway": "10.240.1.1", "containers": []
        }]
    });
    serde_json::to_vec(&plan).expect("plan json")
}

/// Answers with [`plan_json`] and its generation header.
pub fn send_plan(stream: &mut TcpStream, generation: u64) -> io::Result<()> {
    let g = generation.to_string();
    respond(
        stream,
        "200 OK",
        &[
            ("Content-Type", "application/json"),
            (shoal_protocol::contract::GENERATION_HEADER, &g),
        ],
        &plan_json(generation),
    )
}

/// The agent's configuration for a coordinator at `url`.
pub fn config(url: &str, deadline_secs: u64) -> shoal_protocol::AgentConfig {
    shoal_protocol::AgentConfig {
        metadata_url: url.to_string(),
        cluster_key: KEY.to_string(),
        node_id: NODE.to_string(),
        node_token: TOKEN.to_string(),
        ca_cert_pem: None,
        deadline_secs,
    }
}

/// A directory removed when dropped.
pub struct TempDir(pub PathBuf);

impl TempDir {
    /// A fresh directory under the system's temporary directory.
    pub fn new(prefix: &str) -> TempDir {
        let dir = std::env::temp_dir().join(shoal_e2e::unique_name(prefix));
        std::fs::create_dir_all(&dir).expect("create a temporary directory");
        TempDir(dir)
    }

    /// Writes `cfg` as `agent.json` (mode 0600, as cloud-init does) and returns its path.
    pub fn write_config(&self, cfg: &shoal_protocol::AgentConfig) -> PathBuf {
        use std::os::unix::fs::OpenOptionsExt;
        let path = self.0.join("agent.json");
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .expect("create agent.json");
        f.write_all(&serde_json::to_vec(cfg).expect("config json"))
            .expect("write agent.json");
        path
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
