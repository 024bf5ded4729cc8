//! Console sessions and the checks on every write.
//!
//! - **Login** exchanges the operator token (compared in constant time) for a session:
//!   a fresh 256-bit id in a cookie (`HttpOnly`, `SameSite=Strict`, `Path=/`, and under
//!   TLS `Secure` with the `__Host-` prefix, so no other site or subdomain can set or
//!   read it) and a separate 256-bit CSRF token, which pages carry in a hidden field.
//! - **Sessions live in memory**, keyed by the SHA-256 of their id (a lookup's timing
//!   reveals nothing about ids; a memory dump holds no usable cookie). They end after
//!   [`SessionSettings::idle`] without a request, after [`SessionSettings::lifetime`]
//!   in any case, at logout, and when the coordinator restarts. At most
//!   [`SessionSettings::max_sessions`] are kept: a new login pushes out the least
//!   recently used.
//! - **Every write** (`POST`) must come from the console's own origin (`Origin` equal
//!   to the scheme and `Host` the request was made to; a browser always sends it on a
//!   `POST`, and a cross-site form cannot forge it), must not be marked cross-site by
//!   `Sec-Fetch-Site`, and must carry the session's CSRF token. `SameSite=Strict`
//!   already keeps the cookie off cross-site requests; these checks hold even where a
//!   browser or a proxy gets that wrong.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::http::{header, HeaderMap};
use sha2::{Digest, Sha256};

use crate::keys::{constant_time_eq, random_secret};

/// How long sessions last, and how many there may be.
#[derive(Debug, Clone)]
pub struct SessionSettings {
    /// A session unused this long ends.
    pub idle: Duration,
    /// A session ends this long after login, used or not.
    pub lifetime: Duration,
    /// Sessions kept at most; the least recently used goes first.
    pub max_sessions: usize,
}

impl Default for SessionSettings {
    fn default() -> Self {
        SessionSettings {
            // An open, visible console tab reconnects its event stream every few
            // minutes, which counts as use; a forgotten one ends within the hour.
            idle: Duration::from_secs(60 * 60),
            // A working day: then the token is asked for again.
            lifetime: Duration::from_secs(12 * 60 * 60),
            max_sessions: 256,
        }
    }
}

/// What a valid session gives a request.
#[derive(Debug, Clone)]
pub struct Session {
    /// The key the session is stored under (the SHA-256 of its id).
    key: [u8; 32],
    /// The token every form of this session carries.
    pub csrf: String,
}

#[derive(Debug)]
struct Entry {
    csrf: String,
    created: Instant,
    seen: Instant,
}

/// A new session, to hand to the browser.
#[derive(Debug)]
pub struct Login {
    /// The cookie's value.
    pub id: String,
    /// The session.
    pub session: Session,
}

/// Why a write was refused. The messages are shown to the operator.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WriteRefused {
    /// No `Origin` (and no `Referer`) header: not a browser form of this console.
    #[error(
        "the request has no Origin header; writes are taken only from the console's own pages"
    )]
    NoOrigin,
    /// `Origin` names another site.
    #[error("the request comes from {origin}, not from this console ({expected})")]
    CrossOrigin {
        /// The origin the browser named.
        origin: String,
        /// The console's origin.
        expected: String,
    },
    /// `Sec-Fetch-Site` says the request was made by another site.
    #[error(
        "the browser marked the request as {0}: writes are taken only from the console's own pages"
    )]
    CrossSite(String),
    /// The CSRF token is missing or wrong.
    #[error("the form's session token is missing or out of date: reload the page and try again")]
    BadCsrf,
}

/// The console's sessions.
#[derive(Debug)]
pub struct Sessions {
    token: String,
    secure: bool,
    settings: SessionSettings,
    entries: Mutex<HashMap<[u8; 32], Entry>>,
}

fn key_of(id: &str) -> [u8; 32] {
    Sha256::digest(id.as_bytes()).into()
}

impl Sessions {
    /// Sessions opened with `token`; `secure` when the console is served over TLS.
    pub fn new(token: &str, secure: bool, settings: SessionSettings) -> Sessions {
        Sessions {
            token: token.to_string(),
            secure,
            settings,
            entries: Mutex::new(HashMap::new()),
        }
    }

    /// Whether the console is served over TLS.
    pub fn secure(&self) -> bool {
        self.secure
    }

    /// The session cookie's name: `__Host-` prefixed under TLS (browsers then insist
    /// on `Secure`, `Path=/` and no `Domain`).
    pub fn cookie_name(&self) -> &'static str {
        if self.secure {
            "__Host-shoal-session"
        } else {
            "shoal-session"
        }
    }

    /// Opens a session if `given` is the operator token.
    pub fn login(&self, given: &str) -> Option<Login> {
        self.login_at(given, Instant::now())
    }

    fn login_at(&self, given: &str, now: Instant) -> Option<Login> {
        if !constant_time_eq(given.trim().as_bytes(), self.token.as_bytes()) {
            return None;
        }
        let id = random_secret();
        let key = key_of(&id);
        let csrf = random_secret();
        let mut entries = self.entries.lock().ok()?;
        entries.retain(|_, e| !self.expired(e, now));
        while entries.len() >= self.settings.max_sessions.max(1) {
            let oldest = entries.iter().min_by_key(|(_, e)| e.seen).map(|(k, _)| *k);
            match oldest {
                Some(k) => entries.remove(&k),
                None => break,
            };
        }
        entries.insert(
            key,
            Entry {
                csrf: csrf.clone(),
                created: now,
                seen: now,
            },
        );
        Some(Login {
            id,
            session: Session { key, csrf },
        })
    }

    fn expired(&self, e: &Entry, now: Instant) -> bool {
        now.saturating_duration_since(e.seen) >= self.settings.idle
            || now.saturating_duration_since(e.created) >= self.settings.lifetime
    }

    /// The session of a request's cookie, if valid; counts as use (resets the idle
    /// clock).
    pub fn find(&self, headers: &HeaderMap) -> Option<Session> {
        self.find_at(headers, Instant::now(), true)
    }

    /// Whether the session of a request's cookie is still valid, without counting it
    /// as use (an open event stream checks this before every update).
    pub fn still_valid(&self, session: &Session) -> bool {
        let now = Instant::now();
        self.entries
            .lock()
            .ok()
            .and_then(|e| e.get(&session.key).map(|e| !self.expired(e, now)))
            .unwrap_or(false)
    }

    /// When the session ends if it is not used before (`None`: it has ended).
    pub fn ends_at(&self, session: &Session) -> Option<Instant> {
        let now = Instant::now();
        let entries = self.entries.lock().ok()?;
        let e = entries.get(&session.key)?;
        if self.expired(e, now) {
            return None;
        }
        Some((e.seen + self.settings.idle).min(e.created + self.settings.lifetime))
    }

    fn find_at(&self, headers: &HeaderMap, now: Instant, touch: bool) -> Option<Session> {
        let id = cookie(headers, self.cookie_name())?;
        let key = key_of(id);
        let mut entries = self.entries.lock().ok()?;
        let e = entries.get_mut(&key)?;
        if self.expired(e, now) {
            entries.remove(&key);
            return None;
        }
        if touch {
            e.seen = now;
        }
        Some(Session {
            key,
            csrf: e.csrf.clone(),
        })
    }

    /// Ends a session.
    pub fn logout(&self, session: &Session) {
        if let Ok(mut entries) = self.entries.lock() {
            entries.remove(&session.key);
        }
    }

    /// Sessions open now.
    pub fn count(&self) -> usize {
        self.entries.lock().map(|e| e.len()).unwrap_or(0)
    }

    /// The `Set-Cookie` value that hands a browser its session.
    pub fn set_cookie(&self, login: &Login) -> String {
        format!(
            "{}={}; Path=/; HttpOnly; SameSite=Strict; Max-Age={}{}",
            self.cookie_name(),
            login.id,
            self.settings.lifetime.as_secs(),
            if self.secure { "; Secure" } else { "" }
        )
    }

    /// The `Set-Cookie` value that makes a browser forget its session.
    pub fn clear_cookie(&self) -> String {
        format!(
            "{}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0{}",
            self.cookie_name(),
            if self.secure { "; Secure" } else { "" }
        )
    }

    /// The checks on a write made with `session`: its origin, then its CSRF token.
    pub fn check_write(
        &self,
        headers: &HeaderMap,
        session: &Session,
        csrf: Option<&str>,
    ) -> Result<(), WriteRefused> {
        check_origin(headers, self.secure)?;
        match csrf {
            Some(t) if constant_time_eq(t.as_bytes(), session.csrf.as_bytes()) => Ok(()),
            _ => Err(WriteRefused::BadCsrf),
        }
    }
}

/// The value of cookie `name` in a request's `Cookie` headers.
pub fn cookie<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.trim())
}

/// The write came from a page of this console: `Origin` (or, lacking it, the origin of
/// `Referer`) is the scheme and `Host` of the request itself, and `Sec-Fetch-Site`, if
/// sent, is `same-origin`.
///
/// Comparing with `Host` rather than a configured name keeps the console usable under
/// whatever address the operator reaches it at. A page on another site cannot choose
/// the `Origin` its browser sends; a DNS-rebound name makes `Host` the attacker's too,
/// but that browser holds no session cookie for it (cookies are kept per host).
pub fn check_origin(headers: &HeaderMap, secure: bool) -> Result<(), WriteRefused> {
    let text = |name: header::HeaderName| headers.get(name).and_then(|v| v.to_str().ok());
    if let Some(site) = text(header::HeaderName::from_static("sec-fetch-site")) {
        if site != "same-origin" {
            return Err(WriteRefused::CrossSite(site.to_string()));
        }
    }
    let host = text(header::HOST).unwrap_or("");
    let expected = format!(
        "{}://{}",
        if secure { "https" } else { "http" },
        host.to_ascii_lowercase()
    );
    let origin = match text(header::ORIGIN) {
        Some(o) => o.to_ascii_lowercase(),
        None => match text(header::REFERER).and_then(origin_of) {
            Some(o) => o,
            None => return Err(WriteRefused::NoOrigin),
        },
    };
    if host.is_empty() || origin != expected {
        return Err(WriteRefused::CrossOrigin { origin, expected });
    }
    Ok(())
}

/// `scheme://host[:port]` of an absolute URL, lowercased.
fn origin_of(url: &str) -> Option<String> {
    let (scheme, rest) = url.split_once("://")?;
    let authority = rest.split(['/', '?', '#']).next()?;
    if authority.is_empty() || authority.contains('@') {
        return None;
    }
    Some(format!("{scheme}://{authority}").to_ascii_lowercase())
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;

    use super::*;

    const TOKEN: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    fn settings() -> SessionSettings {
        SessionSettings {
            idle: Duration::from_secs(60),
            lifetime: Duration::from_secs(600),
            max_sessions: 3,
        }
    }

    fn with_cookie(s: &Sessions, id: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        let v = format!("other=1; {}={id}; x=y", s.cookie_name());
        h.insert(header::COOKIE, HeaderValue::from_str(&v).expect("header"));
        h
    }

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, HeaderValue::from_str(v).expect("header"));
        }
        h
    }

    #[test]
    fn only_the_operator_token_opens_a_session() {
        let s = Sessions::new(TOKEN, false, settings());
        assert!(s.login("").is_none());
        assert!(s.login(&TOKEN[..63]).is_none());
        assert!(s.login(&format!("{TOKEN}0")).is_none());
        assert!(s.login(&TOKEN.to_uppercase()).is_none());
        assert_eq!(s.count(), 0);
        // Pasted with its trailing newline (`cat token`): still the token.
        let l = s.login(&format!("{TOKEN}\n")).expect("login");
        assert_ne!(l.id, TOKEN, "the cookie is not the token");
        assert_ne!(l.id, l.session.csrf, "the CSRF token is not the cookie");
        let found = s.find(&with_cookie(&s, &l.id)).expect("session");
        assert_eq!(found.csrf, l.session.csrf);
        // A made-up or altered cookie finds nothing.
        assert!(s.find(&with_cookie(&s, &random_secret())).is_none());
        let mut altered = l.id.clone().into_bytes();
        altered[0] = if altered[0] == b'a' { b'b' } else { b'a' };
        let altered = String::from_utf8(altered).expect("hex");
        assert!(s.find(&with_cookie(&s, &altered)).is_none());
        assert!(s.find(&HeaderMap::new()).is_none());
    }

    #[test]
    fn sessions_end_when_idle_after_their_lifetime_and_at_logout() {
        let s = Sessions::new(TOKEN, false, settings());
        let t0 = Instant::now();
        let l = s.login_at(TOKEN, t0).expect("login");
        let h = with_cookie(&s, &l.id);
        // Used every 50 s: idle never reaches 60 s...
        for i in 1..=11 {
            let t = t0 + Duration::from_secs(50 * i);
            assert!(s.find_at(&h, t, true).is_some(), "at {}s", 50 * i);
        }
        // ...but the lifetime (600 s) ends it anyway.
        assert!(s.find_at(&h, t0 + Duration::from_secs(600), true).is_none());
        assert_eq!(s.count(), 0, "an expired session is dropped when met");

        let l = s.login_at(TOKEN, t0).expect("login");
        let h = with_cookie(&s, &l.id);
        // Looking without touching does not keep it alive.
        assert!(s.find_at(&h, t0 + Duration::from_secs(30), false).is_some());
        assert!(s.find_at(&h, t0 + Duration::from_secs(61), true).is_none());

        let l = s.login(TOKEN).expect("login");
        let h = with_cookie(&s, &l.id);
        let found = s.find(&h).expect("session");
        assert!(s.still_valid(&found));
        s.logout(&found);
        assert!(!s.still_valid(&found));
        assert!(s.find(&h).is_none());
    }

    #[test]
    fn the_least_recently_used_session_makes_room() {
        let s = Sessions::new(TOKEN, false, settings());
        let t0 = Instant::now();
        let a = s.login_at(TOKEN, t0).expect("a");
        let b = s.login_at(TOKEN, t0 + Duration::from_secs(1)).expect("b");
        let c = s.login_at(TOKEN, t0 + Duration::from_secs(2)).expect("c");
        // a is used, so b is now the least recently used.
        assert!(s
            .find_at(&with_cookie(&s, &a.id), t0 + Duration::from_secs(3), true)
            .is_some());
        let d = s.login_at(TOKEN, t0 + Duration::from_secs(4)).expect("d");
        assert_eq!(s.count(), 3);
        let at = t0 + Duration::from_secs(5);
        assert!(s.find_at(&with_cookie(&s, &b.id), at, false).is_none());
        for l in [&a, &c, &d] {
            assert!(s.find_at(&with_cookie(&s, &l.id), at, false).is_some());
        }
    }

    #[test]
    fn cookies_are_http_only_same_site_strict_and_secure_under_tls() {
        let plain = Sessions::new(TOKEN, false, settings());
        let l = plain.login(TOKEN).expect("login");
        let c = plain.set_cookie(&l);
        assert!(c.starts_with(&format!("shoal-session={}; ", l.id)), "{c}");
        for part in ["Path=/", "HttpOnly", "SameSite=Strict", "Max-Age=600"] {
            assert!(c.contains(part), "{c} lacks {part}");
        }
        assert!(!c.contains("Secure"), "{c}");
        assert!(plain.clear_cookie().contains("Max-Age=0"));

        let tls = Sessions::new(TOKEN, true, settings());
        let l = tls.login(TOKEN).expect("login");
        let c = tls.set_cookie(&l);
        assert!(c.starts_with("__Host-shoal-session="), "{c}");
        assert!(c.ends_with("; Secure"), "{c}");
        assert!(!c.contains("Domain"), "{c}");
        // The plain cookie's name does not open a TLS console's session.
        let mut h = HeaderMap::new();
        h.insert(
            header::COOKIE,
            HeaderValue::from_str(&format!("shoal-session={}", l.id)).expect("header"),
        );
        assert!(tls.find(&h).is_none());
    }

    #[test]
    fn writes_need_their_own_origin_and_the_sessions_csrf_token() {
        let s = Sessions::new(TOKEN, false, settings());
        let l = s.login(TOKEN).expect("login");
        let csrf = l.session.csrf.clone();
        let same = headers(&[
            ("host", "127.0.0.1:8786"),
            ("origin", "http://127.0.0.1:8786"),
            ("sec-fetch-site", "same-origin"),
        ]);
        assert_eq!(s.check_write(&same, &l.session, Some(&csrf)), Ok(()));
        assert_eq!(
            s.check_write(&same, &l.session, None),
            Err(WriteRefused::BadCsrf)
        );
        assert_eq!(
            s.check_write(&same, &l.session, Some(&csrf[..63])),
            Err(WriteRefused::BadCsrf)
        );
        assert_eq!(
            s.check_write(&same, &l.session, Some(&random_secret())),
            Err(WriteRefused::BadCsrf)
        );
        // Another session's token is not this one's.
        let other = s.login(TOKEN).expect("other");
        assert_eq!(
            s.check_write(&same, &l.session, Some(&other.session.csrf)),
            Err(WriteRefused::BadCsrf)
        );

        // A cross-site form: its origin is refused before the token is looked at.
        let evil = headers(&[
            ("host", "127.0.0.1:8786"),
            ("origin", "http://evil.example"),
        ]);
        assert!(matches!(
            s.check_write(&evil, &l.session, Some(&csrf)),
            Err(WriteRefused::CrossOrigin { .. })
        ));
        // Same host, another port or scheme: another origin.
        for o in ["http://127.0.0.1:8787", "https://127.0.0.1:8786", "null"] {
            let h = headers(&[("host", "127.0.0.1:8786"), ("origin", o)]);
            assert!(
                matches!(
                    s.check_write(&h, &l.session, Some(&csrf)),
                    Err(WriteRefused::CrossOrigin { .. })
                ),
                "{o}"
            );
        }
        let h = headers(&[
            ("host", "127.0.0.1:8786"),
            ("origin", "http://127.0.0.1:8786"),
            ("sec-fetch-site", "cross-site"),
        ]);
        assert_eq!(
            s.check_write(&h, &l.session, Some(&csrf)),
            Err(WriteRefused::CrossSite("cross-site".into()))
        );
        // No Origin: the Referer's origin stands in; neither is a refusal.
        let h = headers(&[
            ("host", "127.0.0.1:8786"),
            ("referer", "http://127.0.0.1:8786/console/new?x=1"),
        ]);
        assert_eq!(s.check_write(&h, &l.session, Some(&csrf)), Ok(()));
        let h = headers(&[
            ("host", "127.0.0.1:8786"),
            ("referer", "http://127.0.0.1:8786@evil.example/"),
        ]);
        assert_eq!(
            s.check_write(&h, &l.session, Some(&csrf)),
            Err(WriteRefused::NoOrigin)
        );
        let h = headers(&[("host", "127.0.0.1:8786")]);
        assert_eq!(
            s.check_write(&h, &l.session, Some(&csrf)),
            Err(WriteRefused::NoOrigin)
        );
        // No Host: nothing to compare with.
        let h = headers(&[("origin", "http://127.0.0.1:8786")]);
        assert!(s.check_write(&h, &l.session, Some(&csrf)).is_err());

        // Under TLS the origin is https.
        let tls = Sessions::new(TOKEN, true, settings());
        let l = tls.login(TOKEN).expect("login");
        let h = headers(&[
            ("host", "shoal.example:8786"),
            ("origin", "https://shoal.example:8786"),
        ]);
        assert_eq!(
            tls.check_write(&h, &l.session, Some(&l.session.csrf)),
            Ok(())
        );
        let h = headers(&[
            ("host", "shoal.example:8786"),
            ("origin", "http://shoal.example:8786"),
        ]);
        assert!(tls
            .check_write(&h, &l.session, Some(&l.session.csrf))
            .is_err());
    }
}
