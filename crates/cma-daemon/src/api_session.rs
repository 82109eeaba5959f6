//! Browser sessions of the web page: how a person at a browser proves they are the operator.
//!
//! - `GET /login?next=PATH`: a form for the operator token (the file `DATA_DIR/api.token`, or
//!   the `--api-token`). `POST /login` with `token` and `next` checks the token like a bearer
//!   token (SHA-256, constant-time) and answers `303` to `next` (a path on this server) with a
//!   cookie `assim_session=ID; HttpOnly; SameSite=Strict; Path=/; Max-Age=43200` (`Secure` when
//!   the form was posted over https: its `Origin` says so). `ID` is 32 random bytes (hex) made
//!   for this session; the token is never sent back or stored in the browser.
//! - The CMA keeps sessions in memory only (a restart signs everyone out): at most
//!   [`MAX_SESSIONS`] (a new one evicts the one closest to expiry), each valid for
//!   [`SESSION_LIFETIME`] and dropped after [`SESSION_IDLE`] without a request. It stores the
//!   SHA-256 of each id, not the id. Time is the monotonic clock: a wall-clock step neither
//!   extends nor ends a session.
//! - Wrong tokens: each is logged, and after [`MAX_FAILED_SIGN_INS`] failures within
//!   [`FAILURE_WINDOW`] sign-in answers `429` until the window has passed (tokens are 256 random
//!   bits; this bounds guessing at a configured `--api-token` too).
//! - `POST /logout` ends the session and clears the cookie.
//!
//! Forms posted to the page (sign-in, sign-out, "Run now") are accepted only when their
//! `Origin` (or, without one, their `Referer`) names the host the request was sent to
//! ([`same_origin`]): with `SameSite=Strict` that stops cross-site request forgery, also when a
//! reverse proxy adds the bearer token to every request. What a session may do is decided in
//! [`crate::api_access`].

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use axum::Form;
use axum::Router;
use axum::extract::{DefaultBodyLimit, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use sha2::{Digest as _, Sha256};

use crate::api::ApiState;
use assim_web::Viewer;

/// The session cookie's name.
pub const COOKIE: &str = "assim_session";
/// Sessions kept at most.
pub const MAX_SESSIONS: usize = 64;
/// A session ends this long after sign-in.
pub const SESSION_LIFETIME: Duration = Duration::from_secs(12 * 3600);
/// A session ends after this long without a request.
pub const SESSION_IDLE: Duration = Duration::from_secs(2 * 3600);
/// Failed sign-ins accepted within [`FAILURE_WINDOW`]; past that, `429`.
pub const MAX_FAILED_SIGN_INS: usize = 10;
/// The window of [`MAX_FAILED_SIGN_INS`].
pub const FAILURE_WINDOW: Duration = Duration::from_secs(60);
/// Longest `next` address kept.
const MAX_NEXT: usize = 1024;

#[derive(Clone, Copy, Debug)]
struct Session {
    created: Instant,
    used: Instant,
}

impl Session {
    fn expires(&self) -> Instant {
        (self.created + SESSION_LIFETIME).min(self.used + SESSION_IDLE)
    }
}

/// The open sessions and recent failed sign-ins. Pure: every call takes `now`.
#[derive(Debug, Default)]
pub struct Sessions {
    /// SHA-256 of the session id → the session.
    open: HashMap<[u8; 32], Session>,
    failures: VecDeque<Instant>,
}

fn id_hash(id: &str) -> [u8; 32] {
    Sha256::digest(id.as_bytes()).into()
}

/// Whether `id` looks like one of ours (64 lower-case hex digits); anything else is ignored
/// without a lookup.
fn well_formed(id: &str) -> bool {
    id.len() == 64 && id.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

impl Sessions {
    /// Opens a session with the id `id` (made by the caller from 32 random bytes), evicting the
    /// one closest to its end when [`MAX_SESSIONS`] are open.
    pub fn open(&mut self, now: Instant, id: &str) {
        self.expire(now);
        if self.open.len() >= MAX_SESSIONS
            && let Some(oldest) = self.open.iter().min_by_key(|(_, s)| s.expires()).map(|(k, _)| *k)
        {
            self.open.remove(&oldest);
        }
        self.open.insert(id_hash(id), Session { created: now, used: now });
    }

    /// Whether `id` is an open session; a valid one counts as used now.
    pub fn check(&mut self, now: Instant, id: &str) -> bool {
        if !well_formed(id) {
            return false;
        }
        let key = id_hash(id);
        match self.open.get_mut(&key) {
            Some(s) if s.expires() > now => {
                s.used = now;
                true
            }
            Some(_) => {
                self.open.remove(&key);
                false
            }
            None => false,
        }
    }

    /// Ends the session `id` (no effect when it is not open).
    pub fn close(&mut self, id: &str) {
        self.open.remove(&id_hash(id));
    }

    /// Sessions open (expired ones may still be counted until the next [`Sessions::open`]).
    pub fn len(&self) -> usize {
        self.open.len()
    }

    /// Whether no session is open.
    pub fn is_empty(&self) -> bool {
        self.open.is_empty()
    }

    fn expire(&mut self, now: Instant) {
        self.open.retain(|_, s| s.expires() > now);
    }

    /// Records a failed sign-in.
    pub fn failed(&mut self, now: Instant) {
        self.forget_failures(now);
        self.failures.push_back(now);
    }

    /// Whether sign-in is refused for now (too many recent failures).
    pub fn blocked(&mut self, now: Instant) -> bool {
        self.forget_failures(now);
        self.failures.len() >= MAX_FAILED_SIGN_INS
    }

    fn forget_failures(&mut self, now: Instant) {
        while self.failures.front().is_some_and(|t| now.duration_since(*t) >= FAILURE_WINDOW) {
            self.failures.pop_front();
        }
    }
}

/// A new session id: 32 random bytes from the OS, as hex.
fn new_id() -> String {
    let mut bytes = [0u8; 32];
    rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut bytes);
    hex::encode(bytes)
}

/// The value of the session cookie in the request, if any.
pub fn session_cookie(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE)
        .map(|(_, value)| value.trim())
}

/// The scheme and authority of an `Origin` or `Referer` value (`None` for `null` or anything
/// not http(s)).
fn origin_of(value: &str) -> Option<(&str, &str)> {
    let (scheme, rest) = value.split_once("://")?;
    if !scheme.eq_ignore_ascii_case("http") && !scheme.eq_ignore_ascii_case("https") {
        return None;
    }
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    (!authority.is_empty() && !authority.contains('@')).then_some((scheme, authority))
}

/// The request's own host (`Host`, or the HTTP/2 authority).
fn request_host<'a>(headers: &'a HeaderMap, uri: &'a axum::http::Uri) -> Option<&'a str> {
    headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .or_else(|| uri.authority().map(|a| a.as_str()))
}

/// Whether a form post comes from a page of this server: its `Origin` — or, when the browser
/// sent none, its `Referer` — names the same host and port the request was sent to. A request
/// with neither is refused (browsers send `Origin` with every form post).
pub fn same_origin(headers: &HeaderMap, uri: &axum::http::Uri) -> bool {
    let Some(host) = request_host(headers, uri) else { return false };
    let from = headers
        .get(header::ORIGIN)
        .or_else(|| headers.get(header::REFERER))
        .and_then(|v| v.to_str().ok())
        .and_then(origin_of);
    from.is_some_and(|(_, authority)| authority.eq_ignore_ascii_case(host.trim()))
}

/// Whether the form was posted over https (its `Origin` or `Referer` says so).
fn posted_over_https(headers: &HeaderMap) -> bool {
    headers
        .get(header::ORIGIN)
        .or_else(|| headers.get(header::REFERER))
        .and_then(|v| v.to_str().ok())
        .and_then(origin_of)
        .is_some_and(|(scheme, _)| scheme.eq_ignore_ascii_case("https"))
}

/// The path (and query) of the request's `Referer`, when it is a path on this server; else `/`.
pub fn referer_path(headers: &HeaderMap) -> &str {
    let Some(r) = headers.get(header::REFERER).and_then(|v| v.to_str().ok()) else { return "/" };
    let Some((_, rest)) = r.split_once("://") else { return "/" };
    match rest.find('/') {
        Some(i) => local_path(&rest[i..]),
        None => "/",
    }
}

/// `next` if it is a path on this server (`/…`, not `//…` or `/\…`, printable ASCII, not too
/// long), else `/`: sign-in never sends the browser elsewhere.
pub fn local_path(next: &str) -> &str {
    let ok = next.starts_with('/')
        && !next.starts_with("//")
        && !next.starts_with("/\\")
        && next.len() <= MAX_NEXT
        && next.bytes().all(|b| b.is_ascii_graphic());
    if ok { next } else { "/" }
}

/// The routes (merged into the API's router, behind its guard).
pub fn routes() -> Router<ApiState> {
    Router::new()
        .route(
            "/login",
            get(login_form).post(login).layer(DefaultBodyLimit::max(assim_web::operator::MAX_FORM)),
        )
        .route("/logout", post(logout).layer(DefaultBodyLimit::max(assim_web::operator::MAX_FORM)))
}

/// Query of `GET /login`.
#[derive(Debug, Default, Deserialize)]
pub struct LoginQuery {
    #[serde(default)]
    next: String,
}

/// Form of `POST /login`.
#[derive(Debug, Deserialize)]
pub struct LoginForm {
    token: String,
    #[serde(default)]
    next: String,
}

async fn login_form(
    State(state): State<ApiState>,
    viewer: Viewer,
    Query(q): Query<LoginQuery>,
) -> Response {
    let file = state.access.token_file().display().to_string();
    assim_web::operator::login_page(&viewer, StatusCode::OK, local_path(&q.next), None, &file)
}

async fn login(
    State(state): State<ApiState>,
    viewer: Viewer,
    headers: HeaderMap,
    Form(form): Form<LoginForm>,
) -> Response {
    let now = Instant::now();
    let next = local_path(&form.next).to_string();
    let file = state.access.token_file().display().to_string();
    if state.access.sessions().blocked(now) {
        tracing::warn!("web sign-in refused: too many wrong tokens in the last minute");
        return assim_web::operator::login_page(
            &viewer,
            StatusCode::TOO_MANY_REQUESTS,
            &next,
            Some("Too many wrong tokens in the last minute; wait a minute and try again."),
            &file,
        );
    }
    if !state.access.token_matches(&form.token) {
        state.access.sessions().failed(now);
        tracing::warn!("web sign-in with a wrong token");
        return assim_web::operator::login_page(
            &viewer,
            StatusCode::UNAUTHORIZED,
            &next,
            Some("That is not the CMA's operator token."),
            &file,
        );
    }
    let id = new_id();
    state.access.sessions().open(now, &id);
    tracing::info!("web sign-in: a browser session opened");
    let secure = if posted_over_https(&headers) { "; Secure" } else { "" };
    let cookie = format!(
        "{COOKIE}={id}; HttpOnly; SameSite=Strict; Path=/; Max-Age={}{secure}",
        SESSION_LIFETIME.as_secs()
    );
    redirect(&next, &cookie)
}

async fn logout(State(state): State<ApiState>, headers: HeaderMap) -> Response {
    if let Some(id) = session_cookie(&headers) {
        state.access.sessions().close(id);
    }
    redirect("/", &format!("{COOKIE}=; HttpOnly; SameSite=Strict; Path=/; Max-Age=0"))
}

fn redirect(to: &str, cookie: &str) -> Response {
    let mut r = StatusCode::SEE_OTHER.into_response();
    let h = r.headers_mut();
    if let Ok(v) = HeaderValue::from_str(to) {
        h.insert(header::LOCATION, v);
    }
    if let Ok(v) = HeaderValue::from_str(cookie) {
        h.insert(header::SET_COOKIE, v);
    }
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u8) -> String {
        hex::encode([n; 32])
    }

    #[test]
    fn sessions_end_after_their_lifetime_and_when_idle() {
        let t0 = Instant::now();
        let mut s = Sessions::default();
        s.open(t0, &id(1));
        assert!(s.check(t0, &id(1)));
        assert!(!s.check(t0, &id(2)), "an id never opened");
        assert!(!s.check(t0, "not-hex"), "a malformed id");
        // Used every hour: alive until the lifetime ends.
        let mut t = t0;
        for _ in 0..11 {
            t += Duration::from_secs(3600);
            assert!(s.check(t, &id(1)), "used within the idle time");
        }
        assert!(!s.check(t0 + SESSION_LIFETIME, &id(1)), "past its lifetime");
        assert!(s.is_empty(), "an expired session is dropped when seen");
        // Idle too long.
        s.open(t0, &id(3));
        assert!(!s.check(t0 + SESSION_IDLE, &id(3)));
        // Closed.
        s.open(t0, &id(4));
        s.close(&id(4));
        assert!(!s.check(t0, &id(4)));
    }

    #[test]
    fn sessions_are_bounded_and_evict_the_one_closest_to_its_end() {
        let t0 = Instant::now();
        let mut s = Sessions::default();
        for n in 0..MAX_SESSIONS as u8 {
            s.open(t0 + Duration::from_secs(u64::from(n)), &id(n));
        }
        assert_eq!(s.len(), MAX_SESSIONS);
        // Session 0 is the oldest; using it makes 1 the closest to its end.
        let t = t0 + Duration::from_secs(100);
        assert!(s.check(t, &id(0)));
        s.open(t, &id(200));
        assert_eq!(s.len(), MAX_SESSIONS);
        assert!(s.check(t, &id(0)) && s.check(t, &id(200)));
        assert!(!s.check(t, &id(1)), "evicted");
    }

    #[test]
    fn too_many_failed_sign_ins_block_for_a_window() {
        let t0 = Instant::now();
        let mut s = Sessions::default();
        for i in 0..MAX_FAILED_SIGN_INS {
            assert!(!s.blocked(t0), "{i}");
            s.failed(t0);
        }
        assert!(s.blocked(t0 + Duration::from_secs(59)));
        assert!(!s.blocked(t0 + FAILURE_WINDOW));
    }

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, v.parse().unwrap());
        }
        h
    }

    #[test]
    fn form_posts_must_come_from_the_same_host() {
        let uri: axum::http::Uri = "/hosts/n1/run".parse().unwrap();
        let ok = |pairs: &[(&'static str, &str)]| same_origin(&headers(pairs), &uri);
        assert!(ok(&[("host", "127.0.0.1:7947"), ("origin", "http://127.0.0.1:7947")]));
        assert!(ok(&[("host", "cma.example:443"), ("origin", "https://CMA.example:443")]));
        assert!(ok(&[("host", "127.0.0.1:7947"), ("referer", "http://127.0.0.1:7947/hosts/n1")]));
        for bad in [
            &[("host", "127.0.0.1:7947"), ("origin", "http://evil.example")][..],
            &[("host", "127.0.0.1:7947"), ("origin", "http://127.0.0.1:7948")],
            &[("host", "127.0.0.1:7947"), ("origin", "null")],
            &[("host", "127.0.0.1:7947"), ("origin", "http://127.0.0.1:7947@evil.example")],
            &[
                ("host", "127.0.0.1:7947"),
                ("referer", "http://evil.example/?http://127.0.0.1:7947"),
            ],
            &[("host", "127.0.0.1:7947")],
            &[("host", "127.0.0.1:7947"), ("origin", "file://127.0.0.1:7947")],
            // An Origin wins over a Referer that would match.
            &[
                ("host", "127.0.0.1:7947"),
                ("origin", "http://evil.example"),
                ("referer", "http://127.0.0.1:7947/"),
            ],
        ] {
            assert!(!ok(bad), "{bad:?}");
        }
    }

    #[test]
    fn cookies_and_return_addresses_are_parsed_strictly() {
        let h = headers(&[("cookie", "a=b; assim_session=abc ; c=d")]);
        assert_eq!(session_cookie(&h), Some("abc"));
        assert_eq!(session_cookie(&headers(&[("cookie", "assim_sessionX=1")])), None);
        assert_eq!(local_path("/hosts/n1?pkg=a#checks"), "/hosts/n1?pkg=a#checks");
        for bad in ["//evil.example/", "/\\evil.example", "http://evil.example/", "", "/a b"] {
            assert_eq!(local_path(bad), "/", "{bad}");
        }
    }
}
