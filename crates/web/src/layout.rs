//! The page frame every view shares — head, navigation, live indicator, footer — the answer
//! headers (Content-Security-Policy and friends), the partial answer the live script fetches,
//! and the small pieces every view uses: times, ages, state badges, links to hosts.

use assim_api::CmaInfo;
use assim_cma::EventKind;
use assim_store::QueryError;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use maud::{DOCTYPE, Markup, PreEscaped, html};

use crate::operator::{Operator, Viewer};
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};

/// The embedded style sheet.
pub(crate) const CSS: &str = include_str!("../assets/app.css");
/// The embedded script (plain JavaScript, no library).
pub(crate) const JS: &str = include_str!("../assets/app.js");
/// The embedded icon.
const ICON: &str = include_str!("../assets/icon.svg");

/// The request header the live script sends to get only the inside of `<main>`.
pub(crate) const PARTIAL: &str = "x-assim-partial";

/// Scripts, styles, images and connections from this origin only; no inline code, no frames,
/// no plugins, forms post nowhere else.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
                   connect-src 'self'; base-uri 'none'; form-action 'self'; \
                   frame-ancestors 'none'";

/// Which view the navigation marks as current.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Nav {
    Problems,
    Hosts,
    Topology,
    Events,
    /// None of the views (sign-in, notices).
    None,
}

/// One page: its title, view, whether it updates live (and on which events), and its body.
#[derive(Debug)]
pub(crate) struct Page {
    pub title: String,
    pub nav: Nav,
    /// `Some(filter)`: the page re-renders when an event matching the filter arrives (an empty
    /// filter: any event).
    pub live: Option<String>,
    pub body: Markup,
}

/// The answer for `page`: the whole document, or only the inside of `<main>` when the live
/// script asks for it.
pub(crate) fn respond(
    viewer: &Viewer,
    status: StatusCode,
    page: Page,
    cma: Option<CmaInfo>,
) -> Response {
    let body = if viewer.partial { page.body } else { document(page, viewer, cma) };
    let mut resp = (status, body.into_string()).into_response();
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/html; charset=utf-8"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(header::VARY, HeaderValue::from_static("x-assim-partial"));
    security_headers(h);
    resp
}

fn security_headers(h: &mut HeaderMap) {
    h.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CSP));
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("same-origin"));
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
}

/// The event types the live script listens for (the SSE stream names each event by its type).
fn kinds() -> String {
    EventKind::ALL.iter().map(|k| k.name()).collect::<Vec<_>>().join(" ")
}

fn document(page: Page, viewer: &Viewer, cma: Option<CmaInfo>) -> Markup {
    let item = |nav: Nav, href: &str, label: &str| {
        html! {
            @if page.nav == nav {
                a href=(href) aria-current="page" { (label) }
            } @else {
                a href=(href) { (label) }
            }
        }
    };
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                meta name="color-scheme" content="light dark";
                title { (page.title) " · assim" }
                link rel="icon" href="/static/icon.svg" type="image/svg+xml";
                link rel="stylesheet" href="/static/app.css";
                script src="/static/app.js" defer {}
            }
            body {
                a.skip href="#main" { "Skip to content" }
                header {
                    nav aria-label="Views" {
                        span.brand { "assim" }
                        (item(Nav::Problems, "/", "Problems"))
                        (item(Nav::Hosts, "/hosts", "Hosts"))
                        (item(Nav::Topology, "/topology", "Topology"))
                        (item(Nav::Events, "/events", "Events"))
                    }
                    @if page.live.is_some() {
                        span #live .live role="status" { "static page (JavaScript off)" }
                    }
                    @match viewer.operator {
                        Some(Operator::Session) => {
                            form.signout method="post" action="/logout" {
                                span.operator #operator { "operator" } " "
                                button type="submit" { "Sign out" }
                            }
                        }
                        Some(Operator::Bearer) => { span.operator #operator title="the request carries the operator token" { "operator" } }
                        None => {
                            @if page.nav != Nav::None {
                                a.signin #signin href=(crate::operator::login_href(&viewer.path)) { "Sign in" }
                            }
                        }
                    }
                }
                @match &page.live {
                    Some(filter) => {
                        main #main data-live="1" data-filter=(filter) data-kinds=(kinds()) {
                            (page.body)
                        }
                    }
                    None => { main #main { (page.body) } }
                }
                footer {
                    @if let Some(c) = cma {
                        "CMA " (c.node_id) " · key " (c.fingerprint) " · version " (c.version)
                    }
                    " · times in UTC without JavaScript, in your zone with it (UTC on hover)"
                }
            }
        }
    }
}

/// `GET /static/app.css`.
pub(crate) async fn css() -> Response {
    asset("text/css; charset=utf-8", CSS)
}

/// `GET /static/app.js`.
pub(crate) async fn js() -> Response {
    asset("text/javascript; charset=utf-8", JS)
}

/// `GET /static/icon.svg`.
pub(crate) async fn icon() -> Response {
    asset("image/svg+xml", ICON)
}

fn asset(kind: &'static str, body: &'static str) -> Response {
    let mut resp = body.into_response();
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(kind));
    // The assets change only with the binary; an hour keeps reloads cheap and upgrades visible.
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("public, max-age=3600"));
    security_headers(h);
    resp
}

/// The page for a failed store call, with the API's status codes (503 busy, 422 too large, 500).
pub(crate) fn failed(req: &Viewer, nav: Nav, e: QueryError, cma: Option<CmaInfo>) -> Response {
    let status = match e {
        QueryError::Busy(_) => StatusCode::SERVICE_UNAVAILABLE,
        QueryError::TooLarge => StatusCode::UNPROCESSABLE_ENTITY,
        QueryError::Backend(_) => StatusCode::INTERNAL_SERVER_ERROR,
    };
    let body = html! {
        h1 { "This view could not be read" }
        p.error { (e.to_string()) }
        p { "Reload to try again." }
    };
    respond(req, status, Page { title: "Error".into(), nav, live: None, body }, cma)
}

/// Characters kept as they are in a path segment (RFC 3986 unreserved).
const SEGMENT: &AsciiSet = &NON_ALPHANUMERIC.remove(b'-').remove(b'.').remove(b'_').remove(b'~');

/// `text` percent-encoded for one path segment or query value.
pub(crate) fn enc(text: &str) -> String {
    utf8_percent_encode(text, SEGMENT).to_string()
}

/// The address of a host's page.
pub(crate) fn host_href(host: &str) -> String {
    format!("/hosts/{}", enc(host))
}

/// A link to a host's page.
pub(crate) fn host_link(host: &str) -> Markup {
    html! { a href=(host_href(host)) { (host) } }
}

/// The CSS class of a state name; only known names get their own colour.
pub(crate) fn state_class(state: &str) -> &'static str {
    match state {
        "up" | "ok" => "st-ok",
        "suspect" | "warning" | "late" => "st-warn",
        "down" | "critical" => "st-crit",
        "unreachable" | "unknown" => "st-unreach",
        "left" | "pending" => "st-idle",
        _ => "st-other",
    }
}

/// A state as a coloured badge (the text says it too, for readers who see no colour).
pub(crate) fn badge(state: &str) -> Markup {
    html! { span class={ "st " (state_class(state)) } { (state) } }
}

/// µs since the epoch as `YYYY-MM-DD HH:MM:SS`, UTC.
pub(crate) fn utc(micros: u64) -> String {
    let (y, m, d, hh, mm, ss) = civil(micros);
    format!("{y:04}-{m:02}-{d:02} {hh:02}:{mm:02}:{ss:02}")
}

/// µs since the epoch as RFC 3339 (`2026-12-04T02:30:21Z`).
fn rfc3339(micros: u64) -> String {
    let (y, m, d, hh, mm, ss) = civil(micros);
    format!("{y:04}-{m:02}-{d:02}T{hh:02}:{mm:02}:{ss:02}Z")
}

fn civil(micros: u64) -> (i64, i64, i64, u64, u64, u64) {
    assim_api::events::utc_fields(micros)
}

/// A time element: UTC text (the script shows it in the viewer's zone, UTC on hover); a dash
/// for 0 (never).
pub(crate) fn time(micros: u64) -> Markup {
    if micros == 0 {
        return html! { "—" };
    }
    html! { time datetime=(rfc3339(micros)) title={ (utc(micros)) " UTC" } { (utc(micros)) " UTC" } }
}

/// How long ago `since` was, coarse: `42 s`, `5 min`, `3 h 10 min`, `2 d 4 h`.
pub(crate) fn age(now: u64, since: u64) -> String {
    if since == 0 || since > now {
        return "just now".into();
    }
    let s = (now - since) / 1_000_000;
    match s {
        0..60 => format!("{s} s"),
        60..3600 => format!("{} min", s / 60),
        3600..86_400 => format!("{} h {} min", s / 3600, (s / 60) % 60),
        _ => format!("{} d {} h", s / 86_400, (s / 3600) % 24),
    }
}

/// Raw markup for the few places that build trusted markup themselves (the SVG's numbers).
pub(crate) fn trusted(s: String) -> PreEscaped<String> {
    PreEscaped(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_utc_with_a_machine_readable_form() {
        // 2026-12-04 02:30:21 UTC
        let t = 1_796_351_421_000_000;
        assert_eq!(utc(t), "2026-12-04 02:30:21");
        assert_eq!(rfc3339(t), "2026-12-04T02:30:21Z");
        let m = time(t).into_string();
        assert!(m.contains("datetime=\"2026-12-04T02:30:21Z\""), "{m}");
        assert_eq!(age(t, t - 90_000_000), "1 min");
        assert_eq!(age(t, t - 3 * 86_400_000_000), "3 d 0 h");
    }

    #[test]
    fn host_links_encode_the_name() {
        assert_eq!(host_href("a b/../c?d#e"), "/hosts/a%20b%2F..%2Fc%3Fd%23e");
        let m = host_link("<x\"y>").into_string();
        assert_eq!(m, "<a href=\"/hosts/%3Cx%22y%3E\">&lt;x&quot;y&gt;</a>");
    }
}
