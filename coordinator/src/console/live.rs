//! Live pages: a server-sent event stream per open page, fed by the engine's change
//! counter ([`crate::engine::Engine::changes`]).
//!
//! A stream costs nothing while nothing changes: it waits on the counter (no polling
//! of the store), and the keep-alive comment every 15 s is its only traffic. When the
//! counter moves, it renders the page's live regions with the same functions the page
//! itself uses, and sends those that differ from what it sent last. Renders are paced:
//! the next comes no sooner than [`MIN_GAP`] after the last, nor sooner than the last
//! one's size at [`PACE_BYTES_PER_SEC`] (so a burst of agent reports makes one render,
//! not one per report, and a 1,000-node cluster's page, megabytes of HTML, costs a tab
//! no more than a small one does). While a cluster is on its way somewhere, its page
//! also re-renders every [`TICK`] (paced the same way), because the stage running now
//! ends at "now".
//!
//! Streams end after [`MAX_STREAM`] (the browser reconnects at once and gets a fresh
//! render), and when the session does, even with nothing changing (the page is told
//! with a `session-ended` event, and goes to the login page).
//! The page's script closes its stream while the tab is hidden, so tabs in the
//! background hold no connection.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::response::sse::{Event, KeepAlive, Sse};
use futures_util::future::BoxFuture;
use futures_util::stream::{self, Stream};
use tokio::sync::watch;
use tokio::time::Instant;

use super::session::{Session, Sessions};

/// The shortest time between two updates of one stream.
pub const MIN_GAP: Duration = Duration::from_millis(500);
/// How often a page of something in flight re-renders with nothing changed.
pub const TICK: Duration = Duration::from_secs(1);
/// Renders of one stream are paced to at most this many bytes of HTML a second.
pub const PACE_BYTES_PER_SEC: f64 = 256.0 * 1024.0;
/// How long one stream lasts before the browser is made to reconnect.
pub const MAX_STREAM: Duration = Duration::from_secs(5 * 60);
/// How long the browser waits before reconnecting.
const RETRY: Duration = Duration::from_secs(2);

/// One render of a page's live parts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rendered {
    /// Each `data-live` region's name and HTML.
    pub regions: Vec<(&'static str, String)>,
    /// Whether to re-render every [`TICK`] even with nothing changed.
    pub ticking: bool,
}

/// Renders a page's live parts.
pub type Render = Box<dyn Fn() -> BoxFuture<'static, Rendered> + Send + Sync>;

struct Feed {
    changes: watch::Receiver<u64>,
    sessions: Arc<Sessions>,
    session: Session,
    render: Render,
    /// What each region was last sent as.
    last: BTreeMap<&'static str, String>,
    ticking: bool,
    /// When the next render may be (`None` before the first).
    next_at: Option<Instant>,
    ends: Instant,
    done: bool,
}

impl Feed {
    /// The next event to send, or `None` when the stream is over.
    async fn next(&mut self) -> Option<Event> {
        if self.done {
            return None;
        }
        loop {
            if let Some(at) = self.next_at {
                let ticking = self.ticking;
                let tick = async move {
                    if ticking {
                        tokio::time::sleep(TICK).await
                    } else {
                        std::future::pending::<()>().await
                    }
                };
                // The session may end while nothing changes: wake then, to say so.
                let session_ends = self
                    .sessions
                    .ends_at(&self.session)
                    .map_or_else(Instant::now, Instant::from_std);
                tokio::select! {
                    r = self.changes.changed() => {
                        if r.is_err() {
                            return None;
                        }
                    }
                    _ = tick => {}
                    _ = tokio::time::sleep_until(session_ends) => {}
                    _ = tokio::time::sleep_until(self.ends) => return None,
                }
                tokio::time::sleep_until(at).await;
            }
            // Seen before rendering: a change made while rendering wakes the next wait.
            self.changes.borrow_and_update();
            if !self.sessions.still_valid(&self.session) {
                self.done = true;
                return Some(Event::default().event("session-ended").data("log in again"));
            }
            let r = (self.render)().await;
            self.ticking = r.ticking;
            let size: usize = r.regions.iter().map(|(_, html)| html.len()).sum();
            let pace = Duration::from_secs_f64(size as f64 / PACE_BYTES_PER_SEC);
            self.next_at = Some(Instant::now() + pace.max(MIN_GAP));
            let first = self.last.is_empty();
            let mut changed = serde_json::Map::new();
            for (name, html) in r.regions {
                if self.last.get(name) != Some(&html) {
                    changed.insert(name.to_string(), serde_json::Value::String(html.clone()));
                    self.last.insert(name, html);
                }
            }
            if changed.is_empty() {
                continue;
            }
            let event = Event::default()
                .event("update")
                .data(serde_json::Value::Object(changed).to_string());
            return Some(if first { event.retry(RETRY) } else { event });
        }
    }
}

/// The event stream of a page whose live parts `render` makes.
pub fn stream(
    changes: watch::Receiver<u64>,
    sessions: Arc<Sessions>,
    session: Session,
    render: Render,
) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let feed = Feed {
        changes,
        sessions,
        session,
        render,
        last: BTreeMap::new(),
        ticking: false,
        next_at: None,
        ends: Instant::now() + MAX_STREAM,
        done: false,
    };
    let events = stream::unfold(feed, |mut feed| async move {
        let e = feed.next().await?;
        Some((Ok(e), feed))
    });
    Sse::new(events).keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;
    use crate::console::session::SessionSettings;

    const TOKEN: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    /// A feed whose render returns region `a` (the number of renders so far, unless
    /// `big`: then that many KiB) and region `b` (always the same).
    fn feed(big: bool) -> (watch::Sender<u64>, Feed, Arc<AtomicUsize>) {
        let (tx, rx) = watch::channel(0);
        let sessions = Arc::new(Sessions::new(TOKEN, false, SessionSettings::default()));
        let session = sessions.login(TOKEN).expect("login").session;
        let renders = Arc::new(AtomicUsize::new(0));
        let n = renders.clone();
        let render: Render = Box::new(move || {
            let i = n.fetch_add(1, Ordering::SeqCst) + 1;
            Box::pin(async move {
                let a = if big {
                    format!("{i}{}", "x".repeat(i * 256 * 1024))
                } else {
                    i.to_string()
                };
                Rendered {
                    regions: vec![("a", a), ("b", "same".into())],
                    ticking: false,
                }
            })
        });
        let f = Feed {
            changes: rx,
            sessions,
            session,
            render,
            last: BTreeMap::new(),
            ticking: false,
            next_at: None,
            ends: Instant::now() + MAX_STREAM,
            done: false,
        };
        (tx, f, renders)
    }

    fn data(e: &Event) -> String {
        // Event has no getter: its wire form is what the browser gets.
        format!("{e:?}")
    }

    #[tokio::test]
    async fn the_first_update_is_whole_and_later_ones_carry_what_changed() {
        let (tx, mut f, renders) = feed(false);
        let first = data(&f.next().await.expect("first"));
        assert!(first.contains("same"), "{first}");
        // Many changes at once: one render, a while later, with region a only.
        let t = Instant::now();
        for _ in 0..100 {
            tx.send_modify(|n| *n += 1);
        }
        let second = data(&f.next().await.expect("second"));
        assert!(t.elapsed() >= MIN_GAP - Duration::from_millis(20));
        assert!(!second.contains("same"), "b did not change: {second}");
        assert_eq!(renders.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn big_renders_are_paced_by_their_size() {
        let (tx, mut f, _) = feed(true);
        let _ = f.next().await.expect("first: 256 KiB");
        let t = Instant::now();
        tx.send_modify(|n| *n += 1);
        let _ = f.next().await.expect("second");
        // 256 KiB at 256 KiB/s: a second, not MIN_GAP.
        assert!(
            t.elapsed() >= Duration::from_millis(950),
            "{:?}",
            t.elapsed()
        );
    }

    #[tokio::test]
    async fn a_logged_out_session_ends_the_stream() {
        let (tx, mut f, _) = feed(false);
        let _ = f.next().await.expect("first");
        f.sessions.logout(&f.session);
        tx.send_modify(|n| *n += 1);
        assert!(data(&f.next().await.expect("ended")).contains("session-ended"));
        assert!(f.next().await.is_none());
    }
}
