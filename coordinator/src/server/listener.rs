//! Serving a router on a TCP listener, with or without TLS, defended against clients
//! that hold resources: a cap on concurrent connections per source address and in all,
//! a deadline for the TLS handshake and for reading request headers (slowloris), a cap
//! on header size, a deadline on every request (slow bodies), and a per-source token
//! bucket answering `429 Too Many Requests` with `Retry-After`.
//!
//! axum's own `serve` has none of these knobs, so connections are driven here with
//! hyper's HTTP/1 server directly; each request gets the peer's address as axum's
//! `ConnectInfo`.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{ConnectInfo, Request, State};
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;
use tower::ServiceExt;

/// The default cap on concurrent metadata connections (`serve --max-conns`): each
/// resident agent holds one, its long-poll, so this leaves room for 10,000 agents and
/// their status reports.
pub const DEFAULT_MAX_CONNS: usize = 16_384;

/// Open files kept for everything but metadata connections: the store, the operator
/// API's connections, the local provider's processes and namespaces.
pub const RESERVED_FILES: u64 = 1024;

/// Raises this process's soft open-file limit (up to the hard one) so that `max_conns`
/// connections fit beside [`RESERVED_FILES`]. Returns the connections that fit, and
/// when that is fewer than asked, why, with what to change: one file descriptor per
/// connection, and a listener at the limit fails its `accept` calls instead of
/// refusing politely.
pub fn fit_open_files(max_conns: usize) -> (usize, Option<String>) {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let wanted = max_conns as u64 + RESERVED_FILES;
    let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) else {
        return (max_conns, None);
    };
    let target = wanted.min(hard);
    if target > soft && setrlimit(Resource::RLIMIT_NOFILE, target, hard).is_err() {
        return fitted(max_conns, soft, wanted);
    }
    if target < wanted {
        return fitted(max_conns, target, wanted);
    }
    (max_conns, None)
}

fn fitted(max_conns: usize, limit: u64, wanted: u64) -> (usize, Option<String>) {
    let fit = limit.saturating_sub(RESERVED_FILES).max(1) as usize;
    (
        fit.min(max_conns),
        Some(format!(
            "the open-file limit is {limit} (ulimit -n; hard limit included), so the metadata listener takes {fit} connections, not --max-conns {max_conns}: each resident agent holds one; raise the limit to {wanted} (systemd: LimitNOFILE={wanted}) or lower --max-conns"
        )),
    )
}

/// The limits of one listener.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Requests per second a source may sustain (token bucket refill rate); 0 turns
    /// rate limiting off.
    pub rate_per_sec: f64,
    /// Requests a source may make in a burst (bucket size).
    pub burst: f64,
    /// Concurrent connections from one source address.
    pub max_conns_per_source: usize,
    /// Concurrent connections in all.
    pub max_conns: usize,
    /// Time allowed for the TLS handshake.
    pub handshake_timeout: Duration,
    /// Time allowed for a request's headers to arrive (also bounds an idle keep-alive).
    pub header_read_timeout: Duration,
    /// Largest buffered request head (headers), bytes.
    pub max_header_bytes: usize,
    /// Longest a `GET` may take (the metadata long-poll is held up to 60 s).
    pub get_timeout: Duration,
    /// Longest any other request may take, body upload included.
    pub other_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            // An agent makes a long-poll every 30 s and a handful of status reports per
            // convergence: 20/s with bursts of 40 is far above that, yet bounds a flood.
            rate_per_sec: 20.0,
            burst: 40.0,
            max_conns_per_source: 64,
            max_conns: 4096,
            handshake_timeout: Duration::from_secs(10),
            header_read_timeout: Duration::from_secs(10),
            max_header_bytes: 16 << 10,
            get_timeout: crate::metadata::MAX_WAIT + Duration::from_secs(10),
            other_timeout: Duration::from_secs(20),
        }
    }
}

/// Token buckets per source address.
#[derive(Debug)]
pub struct RateLimiter {
    rate: f64,
    burst: f64,
    buckets: Mutex<HashMap<IpAddr, Bucket>>,
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    last: Instant,
}

/// Buckets kept before idle ones are swept.
const SWEEP_AT: usize = 4096;

impl RateLimiter {
    /// A limiter refilling `rate` tokens per second up to `burst`.
    pub fn new(rate: f64, burst: f64) -> RateLimiter {
        RateLimiter {
            rate,
            burst: burst.max(1.0),
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Takes a token for `ip`: `Ok(())`, or `Err(seconds to wait)`.
    pub fn check(&self, ip: IpAddr) -> Result<(), u64> {
        self.check_at(ip, Instant::now())
    }

    fn check_at(&self, ip: IpAddr, now: Instant) -> Result<(), u64> {
        if self.rate <= 0.0 {
            return Ok(());
        }
        let Ok(mut buckets) = self.buckets.lock() else {
            return Ok(());
        };
        if buckets.len() >= SWEEP_AT {
            // Full buckets carry no state worth keeping.
            let (rate, burst) = (self.rate, self.burst);
            buckets.retain(|_, b| {
                b.tokens + now.saturating_duration_since(b.last).as_secs_f64() * rate < burst
            });
        }
        let b = buckets.entry(ip).or_insert(Bucket {
            tokens: self.burst,
            last: now,
        });
        let refill = now.saturating_duration_since(b.last).as_secs_f64() * self.rate;
        b.tokens = (b.tokens + refill).min(self.burst);
        b.last = now;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            Ok(())
        } else {
            let wait = ((1.0 - b.tokens) / self.rate).ceil();
            Err((wait as u64).max(1))
        }
    }
}

/// Middleware: the per-source rate limit (`429` with `Retry-After`).
pub async fn rate_limit(
    State(limiter): State<Arc<RateLimiter>>,
    req: Request,
    next: Next,
) -> Response {
    let ip = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip());
    if let Some(ip) = ip {
        if let Err(wait) = limiter.check(ip) {
            tracing::debug!(source = %ip, "rate limited");
            let mut resp = (
                StatusCode::TOO_MANY_REQUESTS,
                [(header::CONTENT_TYPE, "application/json")],
                r#"{"error":"too many requests from this address; retry later"}"#,
            )
                .into_response();
            if let Ok(v) = HeaderValue::from_str(&wait.to_string()) {
                resp.headers_mut().insert(header::RETRY_AFTER, v);
            }
            return resp;
        }
    }
    next.run(req).await
}

/// Middleware: a deadline on the whole request, body upload included (`408`).
pub async fn request_deadline(
    State(limits): State<Arc<Limits>>,
    req: Request,
    next: Next,
) -> Response {
    let limit = if req.method() == Method::GET {
        limits.get_timeout
    } else {
        limits.other_timeout
    };
    match tokio::time::timeout(limit, next.run(req)).await {
        Ok(r) => r,
        Err(_) => (
            StatusCode::REQUEST_TIMEOUT,
            [(header::CONTENT_TYPE, "application/json")],
            r#"{"error":"the request took too long"}"#,
        )
            .into_response(),
    }
}

/// Adds the rate limit and the request deadline to a router.
pub fn defend(router: Router, limits: &Limits) -> Router {
    let limiter = Arc::new(RateLimiter::new(limits.rate_per_sec, limits.burst));
    router
        .layer(axum::middleware::from_fn_with_state(
            Arc::new(limits.clone()),
            request_deadline,
        ))
        .layer(axum::middleware::from_fn_with_state(limiter, rate_limit))
}

/// Counts open connections per source.
#[derive(Debug, Default)]
struct Conns {
    per_source: HashMap<IpAddr, usize>,
    total: usize,
}

/// Releases a connection slot when dropped.
struct Slot {
    conns: Arc<Mutex<Conns>>,
    ip: IpAddr,
}

impl Drop for Slot {
    fn drop(&mut self) {
        if let Ok(mut c) = self.conns.lock() {
            c.total = c.total.saturating_sub(1);
            if let Some(n) = c.per_source.get_mut(&self.ip) {
                *n -= 1;
                if *n == 0 {
                    c.per_source.remove(&self.ip);
                }
            }
        }
    }
}

fn take_slot(conns: &Arc<Mutex<Conns>>, ip: IpAddr, limits: &Limits) -> Option<Slot> {
    let mut c = conns.lock().ok()?;
    let mine = c.per_source.get(&ip).copied().unwrap_or(0);
    if mine >= limits.max_conns_per_source || c.total >= limits.max_conns {
        return None;
    }
    c.total += 1;
    c.per_source.insert(ip, mine + 1);
    Some(Slot {
        conns: conns.clone(),
        ip,
    })
}

/// Serves `router` on `listener` until `stop` turns true; TLS when `tls` is given.
/// Connections still open then are dropped (agents retry).
pub async fn serve(
    listener: TcpListener,
    tls: Option<Arc<rustls::ServerConfig>>,
    router: Router,
    limits: Limits,
    stop: watch::Receiver<bool>,
) -> std::io::Result<()> {
    serve_with(
        listener,
        tls,
        router,
        limits,
        stop,
        Arc::default(),
        Driver::Hyper,
    )
    .await
}

/// Serves the metadata router: [`serve`], with every connection driven by
/// [`super::h1`] (no per-connection buffers while a long-poll is held), counting in
/// `served` the connections it serves: accepted within the limits and, with TLS,
/// through the handshake (a handshake costs far more than a request on a kept
/// connection; this is how an operator sees their rate).
pub async fn serve_metadata(
    listener: TcpListener,
    tls: Option<Arc<rustls::ServerConfig>>,
    router: Router,
    limits: Limits,
    stop: watch::Receiver<bool>,
    served: Arc<AtomicU64>,
) -> std::io::Result<()> {
    serve_with(listener, tls, router, limits, stop, served, Driver::Lean).await
}

/// How often [`release_after_bursts`] looks.
const BURST_CHECK: Duration = Duration::from_secs(10);

/// New connections since the last release that make a burst worth releasing after.
const BURST_CONNECTIONS: u64 = 256;

/// Gives the heap's free memory back to the system once a burst of new metadata
/// connections is over (fewer than 10 new ones in the last [`BURST_CHECK`], at least
/// [`BURST_CONNECTIONS`] since the last release). A fleet booting at once makes
/// thousands of TLS handshakes and plan writes together; their buffers are freed when
/// they end, but glibc's allocator keeps the pages (10,000 agents: 369 MiB resident
/// after their boot, 277 MiB once released; docs/benchmarks.md). A steady fleet makes
/// no new connections, so this never runs there (it briefly locks each allocator
/// arena).
pub async fn release_after_bursts(served: Arc<AtomicU64>, stop: watch::Receiver<bool>) {
    after_bursts(served, stop, BURST_CHECK, || async {
        let _ = tokio::task::spawn_blocking(release_free_memory).await;
    })
    .await
}

/// Runs `release` once each burst of new connections counted in `served` is over,
/// looking `every` so often.
async fn after_bursts<F, Fut>(
    served: Arc<AtomicU64>,
    mut stop: watch::Receiver<bool>,
    every: Duration,
    mut release: F,
) where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let mut released_at = served.load(Ordering::Relaxed);
    let mut last = released_at;
    loop {
        tokio::select! {
            () = tokio::time::sleep(every) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        let now = served.load(Ordering::Relaxed);
        let quiet = now.saturating_sub(last) < 10;
        last = now;
        if quiet && now.saturating_sub(released_at) >= BURST_CONNECTIONS {
            released_at = now;
            release().await;
        }
    }
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn release_free_memory() {
    let started = Instant::now();
    // SAFETY: malloc_trim has no preconditions; it takes the allocator's own locks.
    unsafe {
        libc::malloc_trim(0);
    }
    tracing::debug!(
        elapsed_ms = started.elapsed().as_millis() as u64,
        "released free heap memory after a burst of connections"
    );
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn release_free_memory() {}

/// Which HTTP/1 implementation drives a listener's connections.
#[derive(Debug, Clone, Copy)]
enum Driver {
    /// hyper's server (the operator API: event streams, the console).
    Hyper,
    /// [`super::h1`] (the metadata API: thousands of held long-polls).
    Lean,
}

async fn serve_with(
    listener: TcpListener,
    tls: Option<Arc<rustls::ServerConfig>>,
    router: Router,
    limits: Limits,
    mut stop: watch::Receiver<bool>,
    served: Arc<AtomicU64>,
    driver: Driver,
) -> std::io::Result<()> {
    let acceptor = tls.map(TlsAcceptor::from);
    let limits = Arc::new(limits);
    let conns = Arc::new(Mutex::new(Conns::default()));
    let mut tasks = JoinSet::new();
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = stop.wait_for(|s| *s) => break,
        };
        // Reap finished connection tasks so the set does not grow.
        while tasks.try_join_next().is_some() {}
        let (tcp, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // Out of file descriptors and the like: wait instead of spinning.
                tracing::warn!(error = %e, "accepting a connection failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Some(slot) = take_slot(&conns, peer.ip(), &limits) else {
            tracing::debug!(source = %peer.ip(), "connection refused: too many open");
            drop(tcp);
            continue;
        };
        let _ = tcp.set_nodelay(true);
        let router = router.clone();
        let limits = limits.clone();
        let acceptor = acceptor.clone();
        let served = served.clone();
        tasks.spawn(async move {
            let _slot = slot;
            match acceptor {
                Some(acc) => {
                    match tokio::time::timeout(limits.handshake_timeout, acc.accept(tcp)).await {
                        Ok(Ok(stream)) => {
                            served.fetch_add(1, Ordering::Relaxed);
                            drive(driver, stream, peer, router, &limits).await
                        }
                        Ok(Err(e)) => {
                            tracing::debug!(source = %peer, error = %e, "TLS handshake failed")
                        }
                        Err(_) => tracing::debug!(source = %peer, "TLS handshake timed out"),
                    }
                }
                None => {
                    served.fetch_add(1, Ordering::Relaxed);
                    drive(driver, tcp, peer, router, &limits).await
                }
            }
        });
    }
    tasks.abort_all();
    while tasks.join_next().await.is_some() {}
    Ok(())
}

async fn drive<I>(driver: Driver, io: I, peer: SocketAddr, router: Router, limits: &Limits)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    match driver {
        // Boxed: hyper's connection state is large, and every metadata connection's
        // task would be as large as the larger of the two.
        Driver::Hyper => Box::pin(serve_conn(io, peer, router, limits)).await,
        Driver::Lean => {
            let conn = super::h1::ConnLimits {
                head_timeout: limits.header_read_timeout,
                max_head_bytes: limits.max_header_bytes,
                body_timeout: limits.other_timeout,
            };
            super::h1::serve_conn(io, peer, router, conn).await
        }
    }
}

async fn serve_conn<I>(io: I, peer: SocketAddr, router: Router, limits: &Limits)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let svc = hyper::service::service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| {
        req.extensions_mut().insert(ConnectInfo(peer));
        router.clone().oneshot(req.map(axum::body::Body::new))
    });
    let result = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        // Not `half_close(true)`, though it saves hyper's read buffer of each held
        // long-poll (12.5 KiB instead of 22 KiB): hyper then stops reading the
        // connection while a request is in flight and misses the agent closing it, and
        // every agent drops its long-poll for each liveness report. With 1,000
        // simulated agents, 5,445 abandoned long-polls were held until their wait ran
        // out, 192 MiB (docs/benchmarks.md, section 13).
        .header_read_timeout(limits.header_read_timeout)
        .max_buf_size(limits.max_header_bytes.max(8192))
        .serve_connection(TokioIo::new(io), svc)
        .await;
    if let Err(e) = result {
        tracing::debug!(source = %peer, error = %e, "connection ended with an error");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_bucket_allows_a_burst_then_refills_at_the_rate() {
        let l = RateLimiter::new(10.0, 5.0);
        let ip: IpAddr = "10.0.0.1".parse().expect("ip");
        let other: IpAddr = "10.0.0.2".parse().expect("ip");
        let t0 = Instant::now();
        for _ in 0..5 {
            assert_eq!(l.check_at(ip, t0), Ok(()));
        }
        assert_eq!(l.check_at(ip, t0), Err(1));
        // Another source has its own bucket.
        assert_eq!(l.check_at(other, t0), Ok(()));
        // 0.25 s later, two tokens came back.
        let t1 = t0 + Duration::from_millis(250);
        assert_eq!(l.check_at(ip, t1), Ok(()));
        assert_eq!(l.check_at(ip, t1), Ok(()));
        assert!(l.check_at(ip, t1).is_err());
        // Off when the rate is 0.
        let off = RateLimiter::new(0.0, 0.0);
        for _ in 0..1000 {
            assert!(off.check_at(ip, t0).is_ok());
        }
    }

    #[test]
    fn buckets_of_idle_sources_are_swept() {
        let l = RateLimiter::new(100.0, 2.0);
        let t0 = Instant::now();
        for i in 0..SWEEP_AT as u32 {
            let ip = IpAddr::from(std::net::Ipv4Addr::from(i));
            assert!(l.check_at(ip, t0).is_ok());
        }
        let later = t0 + Duration::from_secs(5);
        assert!(l.check_at("192.0.2.1".parse().expect("ip"), later).is_ok());
        assert!(l.buckets.lock().expect("lock").len() < 10);
    }

    #[tokio::test]
    async fn the_heap_is_released_once_after_a_burst_and_never_in_a_steady_fleet() {
        let every = Duration::from_millis(100);
        let served = Arc::new(AtomicU64::new(0));
        let releases = Arc::new(AtomicU64::new(0));
        let (stop_tx, stop) = watch::channel(false);
        let task = tokio::spawn(after_bursts(served.clone(), stop, every, {
            let releases = releases.clone();
            move || {
                releases.fetch_add(1, Ordering::SeqCst);
                async {}
            }
        }));
        // A steady fleet: no new connections, no release.
        tokio::time::sleep(every * 4).await;
        assert_eq!(releases.load(Ordering::SeqCst), 0);
        // A boot storm (3,000 connections), then quiet: released once.
        served.fetch_add(3000, Ordering::SeqCst);
        tokio::time::sleep(every * 5).await;
        assert_eq!(releases.load(Ordering::SeqCst), 1);
        // Steady again, with a few reconnections: no more.
        served.fetch_add(100, Ordering::SeqCst);
        tokio::time::sleep(every * 5).await;
        assert_eq!(releases.load(Ordering::SeqCst), 1);
        stop_tx.send_replace(true);
        task.await.expect("ends when stopped");
    }

    #[test]
    fn connection_slots_are_capped_per_source_and_released() {
        let limits = Limits {
            max_conns_per_source: 2,
            max_conns: 3,
            ..Limits::default()
        };
        let conns = Arc::new(Mutex::new(Conns::default()));
        let a: IpAddr = "10.0.0.1".parse().expect("ip");
        let b: IpAddr = "10.0.0.2".parse().expect("ip");
        let s1 = take_slot(&conns, a, &limits).expect("1");
        let _s2 = take_slot(&conns, a, &limits).expect("2");
        assert!(take_slot(&conns, a, &limits).is_none());
        let _s3 = take_slot(&conns, b, &limits).expect("b");
        assert!(take_slot(&conns, b, &limits).is_none(), "total cap");
        drop(s1);
        assert!(take_slot(&conns, a, &limits).is_some());
    }
}
