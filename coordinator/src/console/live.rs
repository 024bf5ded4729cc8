//! Live pages: a server-sent event stream per open page, fed by the engine's change
//! counter ([`crate::engine::Engine::changes`]).
//!
//! A stream costs nothing while nothing changes: it waits on the counter (no polling
//! of the store), and the keep-alive comment every 15 s is its only traffic. When the
//! counter moves, it waits until [`MIN_GAP`] has passed since its last update (so a
//! burst of agent reports makes one render, not one per report), renders the page's
//! live fragments with the same functions the page itself uses, and sends them only if
//! they differ from what it sent last. While a cluster is on its way somewhere, its
//! page also re-renders every [`TICK`], because the stage running now ends at "now".
//!
//! Streams end after [`MAX_STREAM`] (the browser reconnects at once and gets a fresh
//! render), and when the session does, even with nothing changing (the page is told
//! with a `session-ended` event, and goes to the login page).
//! The page's script closes its stream while the tab is hidden, so tabs in the
//! background hold no connection.

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
/// How long one stream lasts before the browser is made to reconnect.
pub const MAX_STREAM: Duration = Duration::from_secs(5 * 60);
/// How long the browser waits before reconnecting.
const RETRY: Duration = Duration::from_secs(2);

/// One render of a page's live parts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rendered {
    /// The fragments as a JSON object: the `data-live` region's name → its HTML.
    pub json: String,
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
    last: Option<String>,
    ticking: bool,
    last_sent: Option<Instant>,
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
            if let Some(sent) = self.last_sent {
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
                tokio::time::sleep_until(sent + MIN_GAP).await;
            }
            // Seen before rendering: a change made while rendering wakes the next wait.
            self.changes.borrow_and_update();
            if !self.sessions.still_valid(&self.session) {
                self.done = true;
                return Some(Event::default().event("session-ended").data("log in again"));
            }
            let r = (self.render)().await;
            self.ticking = r.ticking;
            let first = self.last.is_none();
            self.last_sent = Some(Instant::now());
            if self.last.as_deref() == Some(r.json.as_str()) {
                continue;
            }
            let event = Event::default().event("update").data(&r.json);
            self.last = Some(r.json);
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
        last: None,
        ticking: false,
        last_sent: None,
        ends: Instant::now() + MAX_STREAM,
        done: false,
    };
    let events = stream::unfold(feed, |mut feed| async move {
        let e = feed.next().await?;
        Some((Ok(e), feed))
    });
    Sse::new(events).keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
}
