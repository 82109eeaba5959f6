//! What an operator does from the page, and how the page knows who is asking.
//!
//! The page does not decide who is an operator: its host server's guard does (the CMA's
//! `api_access`: the `Authorization: Bearer` token, or a signed-in browser session whose form
//! posts come from this page's own origin) and marks the request with an [`Operator`]
//! extension. The [`Viewer`] extractor reads that mark; pages show "Run now" only to an
//! operator, and [`run`] refuses anyone else again (the guard is the gate, this is the belt).
//!
//! - `POST /hosts/{host}/run` with the form field `check`: runs the check now through
//!   [`WebSource::run_check`] — the same code path as the API's `POST /api/v1/checks/run` — and
//!   answers a result page (state, output, perfdata, duration) with a link back to the host and
//!   a button to run it again. A plain form post: it works with JavaScript off.
//! - [`login_page`]: the sign-in form the host server answers `GET /login` with (the token is
//!   posted once to `/login`; the server answers with a session cookie, never the token).
//! - [`notice`]: a short page for refusals (sign in first, a cross-site post, too many tries).

use std::convert::Infallible;

use assim_api::CheckRun;
use axum::Form;
use axum::extract::{FromRequestParts, Path, State};
use axum::http::StatusCode;
use axum::http::request::Parts;
use axum::response::Response;
use maud::{Markup, html};
use serde::Deserialize;

use crate::WebSource;
use crate::layout::{self, Nav, Page, badge, host_link};

/// Largest form body the page's posts accept (a check name, or a token and a return address).
pub const MAX_FORM: usize = 4096;
/// Longest host or check name accepted in a form.
const MAX_NAME: usize = 255;

/// The host server's guard established that the caller is an operator, and how.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Operator {
    /// The request carries the operator's token (`Authorization: Bearer`, e.g. added by a
    /// reverse proxy).
    Bearer,
    /// A browser session opened by signing in with the token (a cookie).
    Session,
}

/// Who asks for a page: whether the guard marked them an [`Operator`], whether the live script
/// wants only the inside of `<main>`, and the address asked for (the sign-in link returns
/// there).
#[derive(Clone, Debug, Default)]
pub struct Viewer {
    pub operator: Option<Operator>,
    pub partial: bool,
    /// Path and query of the request.
    pub path: String,
}

impl Viewer {
    /// An anonymous viewer of `/` (tests).
    pub fn anonymous() -> Viewer {
        Viewer { path: "/".into(), ..Viewer::default() }
    }

    /// A viewer signed in with a session (tests).
    pub fn signed_in() -> Viewer {
        Viewer { operator: Some(Operator::Session), ..Viewer::anonymous() }
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Viewer {
    type Rejection = Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Viewer, Infallible> {
        Ok(Viewer {
            operator: parts.extensions.get::<Operator>().copied(),
            partial: parts.headers.get(layout::PARTIAL).is_some_and(|v| v.as_bytes() == b"1"),
            path: parts.uri.path_and_query().map_or("/", |p| p.as_str()).to_string(),
        })
    }
}

/// The address of the sign-in page that returns to `next` (a path on this server).
pub fn login_href(next: &str) -> String {
    format!("/login?next={}", layout::enc(next))
}

/// Form of `POST /hosts/{host}/run`.
#[derive(Debug, Deserialize)]
pub(crate) struct RunForm {
    pub(crate) check: String,
}

/// The "Run now" button of one check (shown to operators only).
pub(crate) fn run_button(host: &str, check: &str) -> Markup {
    html! {
        form.run method="post" action={ (layout::host_href(host)) "/run" } {
            input type="hidden" name="check" value=(check);
            button type="submit" aria-label={ "Run " (check) " now" } { "Run now" }
        }
    }
}

/// `POST /hosts/{host}/run`.
pub(crate) async fn run<S: WebSource>(
    State(src): State<S>,
    viewer: Viewer,
    Path(host): Path<String>,
    Form(form): Form<RunForm>,
) -> Response {
    if viewer.operator.is_none() {
        return notice(
            &viewer,
            StatusCode::UNAUTHORIZED,
            "Sign in to run checks",
            "Running a check needs the CMA's operator token.",
            src.cma(),
        );
    }
    let check = form.check.trim().to_string();
    if host.is_empty() || host.len() > MAX_NAME || check.is_empty() || check.len() > MAX_NAME {
        return notice(
            &viewer,
            StatusCode::BAD_REQUEST,
            "Nothing to run",
            "Name a host and a check (1 to 255 bytes each).",
            src.cma(),
        );
    }
    let result = src.run_check(host.clone(), check.clone()).await;
    let (status, body) = match &result {
        Ok(r) => (StatusCode::OK, render_result(r, &host)),
        Err((status, text)) => (*status, render_failure(&host, &check, text)),
    };
    let page = Page { title: format!("Ran {check} on {host}"), nav: Nav::Hosts, live: None, body };
    layout::respond(&viewer, status, page, src.cma())
}

fn render_result(r: &CheckRun, host: &str) -> Markup {
    html! {
        h1 { "Ran " (r.check) " on " (host_link(host)) }
        div #run-result data-state=(r.state) data-check=(r.check) {
            p.summary { (badge(&r.state)) " in " (r.duration_ms) " ms, exit code "
                (r.exit_code.map_or("—".to_string(), |c| c.to_string())) "." }
            dl.facts {
                dt { "Output" } dd.output { (r.output) }
                @if !r.long_output.is_empty() { dt { "More output" } dd.output { pre { (r.long_output) } } }
                @if !r.perfdata.is_empty() { dt { "Perfdata" } dd.output { (r.perfdata) } }
            }
        }
        p.muted { "The check's state on the host page changes with its next scheduled result." }
        (run_button(host, &r.check))
        p { a href={ (layout::host_href(host)) "#checks" } { "Back to " (host) } }
    }
}

fn render_failure(host: &str, check: &str, text: &str) -> Markup {
    html! {
        h1 { "Could not run " (check) " on " (host_link(host)) }
        p.error #run-error { (text) }
        p { a href={ (layout::host_href(host)) "#checks" } { "Back to " (host) } }
    }
}

/// A short page: a title and one paragraph, with a sign-in link when the status is 401.
pub fn notice(
    viewer: &Viewer,
    status: StatusCode,
    title: &str,
    text: &str,
    cma: Option<assim_api::CmaInfo>,
) -> Response {
    let body = html! {
        h1 { (title) }
        p.error #notice { (text) }
        @if status == StatusCode::UNAUTHORIZED {
            p { a #signin-link href=(login_href(&viewer.path)) { "Sign in" } }
        }
    };
    let page = Page { title: title.to_string(), nav: Nav::None, live: None, body };
    layout::respond(viewer, status, page, cma)
}

/// The sign-in page: a form posting the operator token and the address to return to (`next`,
/// a path on this server) to `/login`; `error` says why the last try failed.
pub fn login_page(
    viewer: &Viewer,
    status: StatusCode,
    next: &str,
    error: Option<&str>,
    token_file: &str,
) -> Response {
    let body = html! {
        h1 { "Sign in" }
        @if let Some(e) = error { p.error #login-error role="alert" { (e) } }
        @if viewer.operator.is_some() { p #signed-in { "You are signed in as the operator." } }
        p {
            "Paste the CMA's operator token: the file " code { (token_file) } " on the CMA host "
            "(" code { "sudo cat " (token_file) } "), or the token set with " code { "--api-token" } ". "
            "The browser then keeps a session cookie (12 hours at most, 2 hours without use); the "
            "token itself is not stored."
        }
        form.login method="post" action="/login" {
            label for="token" { "Operator token" }
            input #token type="password" name="token" required autocomplete="off" spellcheck="false";
            input type="hidden" name="next" value=(next);
            button type="submit" { "Sign in" }
        }
    };
    let page = Page { title: "Sign in".into(), nav: Nav::None, live: None, body };
    layout::respond(viewer, status, page, None)
}
