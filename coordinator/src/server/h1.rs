//! A lean HTTP/1.1 connection driver for the metadata listener, where every resident
//! agent holds a long-poll: 10,000 agents are 10,000 connections with a request in
//! flight at all times.
//!
//! hyper's HTTP/1 server keeps, per connection, an 8 KiB write buffer from the start and
//! an 8 KiB read buffer, and the request's headers are slices of that read buffer: a
//! held request pins it, and hyper reserves a second one to watch the connection while
//! the request is in flight (its `half_close` avoids the second only by no longer
//! noticing a client that hangs up). Here a connection holds bytes only while it reads
//! a request or writes an answer: the head is parsed (httparse, as hyper does) into an
//! owned `http::Request`, the read buffer is freed, and while the router works (a
//! long-poll waits) the connection is watched for the client hanging up with reads of
//! at most [`WATCH_BYTES`]. What a held long-poll costs is then the TLS session, the
//! request and the router's future.
//!
//! The listener's limits apply as with hyper ([`ConnLimits`]): a deadline for each request head (which
//! also bounds an idle keep-alive), a cap on its size (`431`), a deadline for a body
//! (`408`); the router's middleware adds the rest. Request bodies need a
//! `Content-Length` (`411` otherwise: agents always send one); `Expect: 100-continue`
//! is honoured. Responses of a known size get a `Content-Length`, others are chunked.

use std::net::SocketAddr;
use std::time::Duration;

use axum::body::{Body, Bytes, HttpBody as _};
use axum::extract::ConnectInfo;
use axum::http::{
    header, HeaderMap, HeaderName, HeaderValue, Method, Request, StatusCode, Version,
};
use axum::response::IntoResponse as _;
use axum::Router;
use futures_util::StreamExt as _;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tower::ServiceExt as _;

/// What bounds a connection (the listener's `Limits` say).
#[derive(Debug, Clone, Copy)]
pub struct ConnLimits {
    /// Time allowed for a request's head to arrive (also bounds an idle keep-alive).
    pub head_timeout: Duration,
    /// Largest request head, bytes (`431` beyond).
    pub max_head_bytes: usize,
    /// Time allowed for a request's body to arrive (`408` beyond), and for an answer to
    /// be written.
    pub body_timeout: Duration,
}

/// The most a connection reads while its request is in flight (to see the client hang
/// up, or keep the start of a pipelined request).
pub const WATCH_BYTES: usize = 64;

/// Headers a request may have.
const MAX_HEADERS: usize = 64;

/// The largest request body read at all; the router's own limits are lower (the
/// metadata API takes 64 KiB) and answer `413` for what is between.
pub const MAX_BODY_BYTES: usize = 1 << 20;

/// How long, and for how many bytes, a refused request's connection is read before it
/// is closed.
const LINGER: Duration = Duration::from_secs(1);
const LINGER_BYTES: usize = 256 << 10;

/// Bytes read at a time while a head or body arrives.
const READ_CHUNK: usize = 2048;

/// How a request head ended.
enum Head {
    /// The head is `buf[..len]`.
    Complete(usize),
    /// The client closed, or the connection failed, before a whole head.
    Gone,
    /// The head grew past the cap.
    TooLarge,
}

/// Serves HTTP/1.1 requests on `io` with `router` until the client closes, a limit
/// ends the connection, or a request asks to close it.
pub async fn serve_conn<I>(mut io: I, peer: SocketAddr, router: Router, limits: ConnLimits)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    // A connection's task is as large as this future's largest state, for as long as
    // the connection lives: writing an answer is boxed and a refusal keeps its linger
    // buffer on the heap (their states are only passed through), so a held request's
    // state (the router's future and the watch) is the largest: 1,720 bytes over a
    // duplex stream.
    //
    // Bytes read and not yet used: empty (no allocation) between requests unless a
    // client pipelines.
    let mut buf: Vec<u8> = Vec::new();
    loop {
        let len = match tokio::time::timeout(
            limits.head_timeout,
            read_head(&mut io, &mut buf, limits.max_head_bytes),
        )
        .await
        {
            Ok(Head::Complete(len)) => len,
            Ok(Head::TooLarge) => {
                let _ = refuse(
                    &mut io,
                    StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                    "request headers too large",
                )
                .await;
                return;
            }
            // Silent past the deadline (slow headers, an idle keep-alive), or gone.
            Ok(Head::Gone) | Err(_) => return,
        };
        let parsed = parse_head(&buf[..len]);
        buf.drain(..len);
        let (mut req, body_len, keep_alive, continue_expected) = match parsed {
            Ok(p) => p,
            Err((status, message)) => {
                let _ = refuse(&mut io, status, message).await;
                return;
            }
        };
        // The body: read whole before the router sees the request, under its deadline.
        let body = if body_len == 0 {
            Bytes::new()
        } else {
            let continued = !continue_expected
                || !buf.is_empty()
                || (io.write_all(b"HTTP/1.1 100 Continue\r\n\r\n").await.is_ok()
                    && io.flush().await.is_ok());
            if !continued {
                return;
            }
            match tokio::time::timeout(limits.body_timeout, read_body(&mut io, &mut buf, body_len))
                .await
            {
                Ok(Some(b)) => b,
                Ok(None) => return,
                Err(_) => {
                    let _ = refuse(
                        &mut io,
                        StatusCode::REQUEST_TIMEOUT,
                        "the request took too long",
                    )
                    .await;
                    return;
                }
            }
        };
        if buf.is_empty() {
            // Nothing pipelined: hold no read buffer while the request is served.
            buf = Vec::new();
        }
        req.extensions_mut().insert(ConnectInfo(peer));
        let head_only = req.method() == Method::HEAD;
        let call = router.clone().oneshot(req.map(|()| Body::from(body)));
        tokio::pin!(call);
        let resp = loop {
            let room = buf.len() < limits.max_head_bytes;
            tokio::select! {
                r = &mut call => match r {
                    Ok(r) => break r,
                    Err(never) => match never {},
                },
                gone = watch(&mut io, &mut buf), if room => {
                    if gone {
                        // The client hung up (an agent ending its long-poll): drop the
                        // request, which ends its wait.
                        return;
                    }
                }
            }
        };
        let wrote = tokio::time::timeout(
            limits.body_timeout,
            Box::pin(write_response(&mut io, resp, keep_alive, head_only)),
        )
        .await;
        if !matches!(wrote, Ok(Ok(true))) {
            let _ = io.shutdown().await;
            return;
        }
    }
}

/// Reads until `buf` holds a whole request head (up to and with its blank line).
async fn read_head<I: AsyncRead + Unpin>(io: &mut I, buf: &mut Vec<u8>, max: usize) -> Head {
    let mut scanned = 0;
    loop {
        // Blank lines before a request are ignored (RFC 9112, 2.2).
        let lead = buf
            .iter()
            .take_while(|b| matches!(b, b'\r' | b'\n'))
            .count();
        if lead > 0 {
            buf.drain(..lead);
            scanned = 0;
        }
        if let Some(end) = find_head_end(buf, scanned) {
            return if end > max {
                Head::TooLarge
            } else {
                Head::Complete(end)
            };
        }
        if buf.len() > max {
            return Head::TooLarge;
        }
        scanned = buf.len().saturating_sub(3);
        buf.reserve(READ_CHUNK);
        match io.read_buf(buf).await {
            Ok(0) | Err(_) => return Head::Gone,
            Ok(_) => {}
        }
    }
}

/// The end of the head (after `\r\n\r\n`), looking from `from`.
fn find_head_end(buf: &[u8], from: usize) -> Option<usize> {
    buf.get(from..)?
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|i| from + i + 4)
}

type Parsed = (Request<()>, usize, bool, bool);

/// The request of a head, its body's length, whether the connection stays open after
/// it, and whether the client waits for `100 Continue`.
fn parse_head(head: &[u8]) -> Result<Parsed, (StatusCode, &'static str)> {
    let bad = (StatusCode::BAD_REQUEST, "malformed request");
    let mut slots = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut p = httparse::Request::new(&mut slots);
    match p.parse(head) {
        Ok(httparse::Status::Complete(_)) => {}
        Ok(httparse::Status::Partial) => return Err(bad),
        Err(httparse::Error::TooManyHeaders) => {
            return Err((
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                "too many request headers",
            ))
        }
        Err(_) => return Err(bad),
    }
    let version = match p.version {
        Some(1) => Version::HTTP_11,
        Some(0) => Version::HTTP_10,
        _ => return Err(bad),
    };
    let method = Method::from_bytes(p.method.unwrap_or("").as_bytes()).map_err(|_| bad)?;
    let uri: axum::http::Uri = p.path.unwrap_or("").parse().map_err(|_| bad)?;
    let mut headers = HeaderMap::with_capacity(p.headers.len());
    for h in p.headers.iter() {
        let name = HeaderName::from_bytes(h.name.as_bytes()).map_err(|_| bad)?;
        let value = HeaderValue::from_bytes(h.value).map_err(|_| bad)?;
        headers.append(name, value);
    }
    if headers.contains_key(header::TRANSFER_ENCODING) {
        return Err((
            StatusCode::LENGTH_REQUIRED,
            "request bodies need a Content-Length",
        ));
    }
    let mut body_len: Option<usize> = None;
    for v in headers.get_all(header::CONTENT_LENGTH) {
        let n = v
            .to_str()
            .ok()
            .filter(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|s| s.parse::<usize>().ok())
            .ok_or(bad)?;
        if body_len.is_some_and(|m| m != n) {
            return Err(bad);
        }
        body_len = Some(n);
    }
    let body_len = body_len.unwrap_or(0);
    if body_len > MAX_BODY_BYTES {
        return Err((StatusCode::PAYLOAD_TOO_LARGE, "request body too large"));
    }
    let connection = |token: &str| {
        headers.get_all(header::CONNECTION).iter().any(|v| {
            v.to_str()
                .is_ok_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
        })
    };
    let keep_alive = match version {
        Version::HTTP_10 => connection("keep-alive"),
        _ => !connection("close"),
    };
    let continue_expected = headers
        .get(header::EXPECT)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
    let mut req = Request::new(());
    *req.method_mut() = method;
    *req.uri_mut() = uri;
    *req.version_mut() = version;
    *req.headers_mut() = headers;
    Ok((req, body_len, keep_alive, continue_expected))
}

/// Reads a body of `len` bytes, starting with what `buf` already holds; `None` if the
/// client went away.
async fn read_body<I: AsyncRead + Unpin>(
    io: &mut I,
    buf: &mut Vec<u8>,
    len: usize,
) -> Option<Bytes> {
    while buf.len() < len {
        buf.reserve((len - buf.len()).min(READ_CHUNK * 8));
        match io.read_buf(buf).await {
            Ok(0) | Err(_) => return None,
            Ok(_) => {}
        }
    }
    let rest = buf.split_off(len);
    Some(Bytes::from(std::mem::replace(buf, rest)))
}

/// Waits for the client while its request is in flight: `true` once it has closed (or
/// failed); `false` when it sent bytes (kept in `buf`, at most [`WATCH_BYTES`] a read).
async fn watch<I: AsyncRead + Unpin>(io: &mut I, buf: &mut Vec<u8>) -> bool {
    let mut chunk = [0u8; WATCH_BYTES];
    match io.read(&mut chunk).await {
        Ok(0) | Err(_) => true,
        Ok(n) => {
            buf.extend_from_slice(&chunk[..n]);
            false
        }
    }
}

/// Writes `resp`; `Ok(true)` if the connection may serve another request.
async fn write_response<I: AsyncWrite + Unpin>(
    io: &mut I,
    resp: axum::response::Response,
    keep_alive: bool,
    head_only: bool,
) -> std::io::Result<bool> {
    let (parts, body) = resp.into_parts();
    let status = parts.status;
    let bodiless = status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED;
    let exact = body.size_hint().exact();
    let mut head = Vec::with_capacity(256);
    head.extend_from_slice(b"HTTP/1.1 ");
    head.extend_from_slice(status.as_str().as_bytes());
    head.push(b' ');
    head.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes());
    head.extend_from_slice(b"\r\n");
    for (name, value) in &parts.headers {
        if name == header::CONTENT_LENGTH
            || name == header::TRANSFER_ENCODING
            || name == header::CONNECTION
        {
            continue;
        }
        push_header(&mut head, name.as_str().as_bytes(), value.as_bytes());
    }
    if !parts.headers.contains_key(header::DATE) {
        push_header(
            &mut head,
            b"date",
            httpdate::fmt_http_date(std::time::SystemTime::now()).as_bytes(),
        );
    }
    if !keep_alive {
        push_header(&mut head, b"connection", b"close");
    }
    if bodiless {
        head.extend_from_slice(b"\r\n");
        io.write_all(&head).await?;
    } else if let Some(n) = exact {
        push_header(&mut head, b"content-length", n.to_string().as_bytes());
        head.extend_from_slice(b"\r\n");
        io.write_all(&head).await?;
        if !head_only && n > 0 {
            let bytes = axum::body::to_bytes(body, usize::MAX)
                .await
                .map_err(std::io::Error::other)?;
            io.write_all(&bytes).await?;
        }
    } else {
        push_header(&mut head, b"transfer-encoding", b"chunked");
        head.extend_from_slice(b"\r\n");
        io.write_all(&head).await?;
        if !head_only {
            let mut frames = body.into_data_stream();
            while let Some(chunk) = frames.next().await {
                let chunk = chunk.map_err(std::io::Error::other)?;
                if chunk.is_empty() {
                    continue;
                }
                io.write_all(format!("{:x}\r\n", chunk.len()).as_bytes())
                    .await?;
                io.write_all(&chunk).await?;
                io.write_all(b"\r\n").await?;
                io.flush().await?;
            }
            io.write_all(b"0\r\n\r\n").await?;
        }
    }
    io.flush().await?;
    Ok(keep_alive)
}

fn push_header(head: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    head.extend_from_slice(name);
    head.extend_from_slice(b": ");
    head.extend_from_slice(value);
    head.extend_from_slice(b"\r\n");
}

/// Answers `status` with a JSON error and closes: for requests refused before the
/// router sees them.
async fn refuse<I: AsyncRead + AsyncWrite + Unpin>(
    io: &mut I,
    status: StatusCode,
    message: &str,
) -> std::io::Result<()> {
    let answer = (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        serde_json::json!({ "error": message }).to_string(),
    )
        .into_response();
    write_response(io, answer, false, false).await?;
    io.shutdown().await?;
    // Read what the client still sends for a moment before closing: closing with
    // unread bytes resets the connection, and the client may lose the answer.
    let mut sink = vec![0u8; 1024];
    let _ = tokio::time::timeout(LINGER, async {
        let mut left = LINGER_BYTES;
        while left > 0 {
            match io.read(&mut sink).await {
                Ok(0) | Err(_) => break,
                Ok(n) => left = left.saturating_sub(n),
            }
        }
    })
    .await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;

    use axum::routing::{get, put};
    use tokio::io::DuplexStream;

    use super::*;

    struct SetOnDrop(Arc<AtomicBool>);

    impl Drop for SetOnDrop {
        fn drop(&mut self) {
            self.0.store(true, Ordering::SeqCst);
        }
    }

    /// A router: `/` answers "hello", `/echo` answers its body, `/stream` a body of
    /// unknown size, `/hold` never answers (and says when it is dropped).
    fn app(dropped: Arc<AtomicBool>) -> Router {
        Router::new()
            .route("/", get(|| async { "hello" }))
            .route("/echo", put(|body: Bytes| async move { body }))
            .route(
                "/stream",
                get(|| async {
                    let parts = futures_util::stream::iter(
                        ["one ", "two"].map(|s| Ok::<_, std::io::Error>(Bytes::from(s))),
                    );
                    Body::from_stream(parts)
                }),
            )
            .route(
                "/hold",
                get(move || {
                    let guard = SetOnDrop(dropped.clone());
                    async move {
                        let _guard = guard;
                        std::future::pending::<()>().await;
                        "never"
                    }
                }),
            )
    }

    fn limits() -> ConnLimits {
        ConnLimits {
            head_timeout: Duration::from_secs(2),
            body_timeout: Duration::from_secs(2),
            max_head_bytes: 1024,
        }
    }

    /// The client's end of a connection served by [`serve_conn`], and the task.
    fn connect(dropped: Arc<AtomicBool>) -> (DuplexStream, tokio::task::JoinHandle<()>) {
        let (client, server) = tokio::io::duplex(1 << 16);
        let peer: SocketAddr = "192.0.2.7:4000".parse().expect("addr");
        let task =
            tokio::spawn(async move { serve_conn(server, peer, app(dropped), limits()).await });
        (client, task)
    }

    async fn read_all(c: &mut DuplexStream) -> String {
        let mut out = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), c.read_to_end(&mut out)).await;
        String::from_utf8_lossy(&out).into_owned()
    }

    #[tokio::test]
    async fn pipelined_requests_on_a_kept_connection_are_answered_in_order() {
        let (mut c, task) = connect(Arc::default());
        c.write_all(b"GET / HTTP/1.1\r\nHost: a\r\n\r\nPUT /echo HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nworldGET / HTTP/1.1\r\nConnection: close\r\n\r\n")
            .await
            .expect("write");
        let text = read_all(&mut c).await;
        let answers: Vec<&str> = text.matches("HTTP/1.1 200 OK").collect();
        assert_eq!(answers.len(), 3, "{text}");
        let hello = text.find("\r\n\r\nhello").expect("first body");
        let world = text.find("\r\n\r\nworld").expect("echoed body");
        assert!(hello < world, "{text}");
        assert!(text.contains("content-length: 5\r\n"), "{text}");
        assert!(text.contains("connection: close\r\n"), "{text}");
        assert!(text.contains("date: "), "{text}");
        // Closed after the request that asked for it.
        tokio::time::timeout(Duration::from_secs(2), task)
            .await
            .expect("ended")
            .expect("task");
    }

    #[tokio::test]
    async fn a_held_request_is_dropped_when_the_client_hangs_up() {
        let dropped = Arc::new(AtomicBool::new(false));
        let (mut c, task) = connect(dropped.clone());
        c.write_all(b"GET /hold HTTP/1.1\r\nHost: a\r\n\r\n")
            .await
            .expect("write");
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(
            !dropped.load(Ordering::SeqCst),
            "dropped while the client is there"
        );
        drop(c);
        tokio::time::timeout(Duration::from_secs(2), task)
            .await
            .expect("ended")
            .expect("task");
        assert!(
            dropped.load(Ordering::SeqCst),
            "the held request outlived its client"
        );
    }

    #[tokio::test]
    async fn bodies_of_unknown_size_are_sent_chunked() {
        let (mut c, _task) = connect(Arc::default());
        c.write_all(b"GET /stream HTTP/1.1\r\nConnection: close\r\n\r\n")
            .await
            .expect("write");
        let text = read_all(&mut c).await;
        assert!(text.contains("transfer-encoding: chunked\r\n"), "{text}");
        assert!(
            text.ends_with("\r\n\r\n4\r\none \r\n3\r\ntwo\r\n0\r\n\r\n"),
            "{text}"
        );
    }

    #[tokio::test]
    async fn expect_continue_is_answered_before_the_body_is_read() {
        let (mut c, _task) = connect(Arc::default());
        c.write_all(
            b"PUT /echo HTTP/1.1\r\nContent-Length: 2\r\nExpect: 100-continue\r\nConnection: close\r\n\r\n",
        )
            .await
            .expect("write");
        let mut first = [0u8; 25];
        tokio::time::timeout(Duration::from_secs(2), c.read_exact(&mut first))
            .await
            .expect("in time")
            .expect("read");
        assert_eq!(&first, b"HTTP/1.1 100 Continue\r\n\r\n");
        c.write_all(b"ok").await.expect("body");
        let text = read_all(&mut c).await;
        assert!(
            text.starts_with("HTTP/1.1 200 OK") && text.ends_with("\r\n\r\nok"),
            "{text}"
        );
    }

    #[tokio::test]
    async fn bad_requests_get_a_clear_answer_and_the_connection_closed() {
        let big = format!("GET / HTTP/1.1\r\nX-Big: {}\r\n\r\n", "x".repeat(2000));
        let cases: [(&[u8], &str); 7] = [
            (big.as_bytes(), "431"),
            (b"NOT A REQUEST\r\n\r\n", "400"),
            (b"GET / HTTP/1.1\r\nContent-Length: 12a\r\n\r\n", "400"),
            (
                b"PUT /echo HTTP/1.1\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nabc",
                "400",
            ),
            (
                b"PUT /echo HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nab\r\n0\r\n\r\n",
                "411",
            ),
            (
                b"PUT /echo HTTP/1.1\r\nContent-Length: 99999999\r\n\r\n",
                "413",
            ),
            (
                b"PUT /echo HTTP/1.1\r\nContent-Length: 10\r\n\r\nabc",
                "408",
            ),
        ];
        for (request, code) in cases {
            let (mut c, task) = connect(Arc::default());
            c.write_all(request).await.expect("write");
            let text = read_all(&mut c).await;
            assert!(
                text.starts_with(&format!("HTTP/1.1 {code} ")),
                "{code} for {:?}: {text}",
                String::from_utf8_lossy(request)
            );
            assert!(text.contains("\"error\""), "{text}");
            tokio::time::timeout(Duration::from_secs(5), task)
                .await
                .expect("closed")
                .expect("task");
        }
    }

    #[tokio::test]
    async fn an_idle_or_slow_client_is_closed_after_the_head_deadline() {
        let (mut c, task) = connect(Arc::default());
        c.write_all(b"GET / HTTP/1.1\r\nX-Slow: ")
            .await
            .expect("write");
        let started = std::time::Instant::now();
        let text = read_all(&mut c).await;
        assert!(text.is_empty(), "{text}");
        tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .expect("closed")
            .expect("task");
        assert!(
            started.elapsed() < Duration::from_secs(4),
            "{:?}",
            started.elapsed()
        );
    }

    #[tokio::test]
    async fn http_1_0_closes_after_its_answer_unless_kept_alive() {
        let (mut c, task) = connect(Arc::default());
        c.write_all(b"GET / HTTP/1.0\r\n\r\n").await.expect("write");
        let text = read_all(&mut c).await;
        assert!(
            text.starts_with("HTTP/1.1 200 OK") && text.ends_with("hello"),
            "{text}"
        );
        tokio::time::timeout(Duration::from_secs(2), task)
            .await
            .expect("closed")
            .expect("task");
        let (mut c, task) = connect(Arc::default());
        c.write_all(b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
            .await
            .expect("write");
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(
            !task.is_finished(),
            "a kept-alive HTTP/1.0 connection was closed"
        );
    }
}
