//! The CMA's web page: server-rendered HTML over the same read seams and answer types as the
//! HTTP API (`assim_store::Queries`, `assim_store::EventLog`, `assim-api` rows), mounted by the
//! CMA's HTTP server at `/` on the API's listener, behind the API's guard (Host header, token).
//!
//! Every page is complete HTML that works with JavaScript off (links and GET forms; an
//! operator's "Run now" buttons are plain form posts).
//! A small embedded script (`assets/app.js`, no library, no build step) adds what needs it:
//! times in the viewer's zone (UTC stays on hover), instant filtering of the host table, and
//! live updates — it listens to the API's SSE stream (`/api/v1/events/stream`) and re-fetches
//! the page's `<main>` (the same route with `X-Assim-Partial: 1`) when an event arrives, so the
//! server renders every state and there is no second renderer in JavaScript. Templates are
//! `maud` (compiled into the binary, escaping every interpolated string: host names, check
//! output and event text are hostile input). Assets are embedded with `include_str!` and served
//! under `/static/`; every answer carries a strict Content-Security-Policy (scripts and styles
//! from this origin only, no inline code).
//!
//! Layout:
//! - [`WebSource`]: what the pages need from their host server (store calls on blocking
//!   threads); the CMA daemon implements it for its `ApiState`.
//! - [`routes`]: the router (`/`, `/hosts`, `/hosts/{host}`, `/topology`, `/events`,
//!   `/static/…`).
//! - [`operator`]: who is asking ([`Viewer`], [`Operator`], set by the host server's guard),
//!   the sign-in page the host server answers `/login` with, and "Run now" (`POST
//!   /hosts/{host}/run`) with its result page.
//! - `layout`: the page frame, navigation, times, state badges, headers.
//! - [`problems`]: the first screen — what is broken now, sorted by severity then age, and
//!   what recovered lately.
//! - `hosts`: the host table and the host page.
//! - [`topology`]: the SVG of switches, hosts, rings and dependencies, laid out on the server.
//! - `events`: the event list with the bus's filter language, subscriptions, dead letters.
//! - [`fixture`]: an in-memory [`WebSource`] with made-up fleets, for tests and the page bench.

#![forbid(unsafe_code)]

use std::future::Future;

use assim_api::{CheckRun, CmaInfo};
use assim_store::{EventLog, Queries, QueryError};
use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::StatusCode;
use axum::routing::{get, post};

mod events;
pub mod fixture;
mod hosts;
mod layout;
pub mod operator;
pub mod problems;
pub mod topology;

/// What the pages read, and how: the host server runs each store call on a blocking thread
/// behind its own bounds (the CMA's API runs them through its read gates).
pub trait WebSource: Clone + Send + Sync + 'static {
    /// Runs `f` with a read handle of the topology/status store on a blocking thread.
    fn read<T, F>(&self, f: F) -> impl Future<Output = Result<T, QueryError>> + Send
    where
        T: Send + 'static,
        F: FnOnce(&dyn Queries) -> Result<T, QueryError> + Send + 'static;

    /// Runs `f` with an event-log handle on a blocking thread.
    fn events<T, F>(&self, f: F) -> impl Future<Output = Result<T, QueryError>> + Send
    where
        T: Send + 'static,
        F: FnOnce(&dyn EventLog) -> Result<T, QueryError> + Send + 'static;

    /// Facts about the CMA for the page footer.
    fn cma(&self) -> Option<CmaInfo> {
        None
    }

    /// Runs `check` on `host` now, as the API's `POST /api/v1/checks/run` does (the same code
    /// path): its result, or the status and text of the refusal. Called only for an operator.
    fn run_check(
        &self,
        host: String,
        check: String,
    ) -> impl Future<Output = Result<CheckRun, (StatusCode, String)>> + Send {
        let _ = (host, check);
        async {
            Err((StatusCode::SERVICE_UNAVAILABLE, "this server cannot run checks".to_string()))
        }
    }

    /// µs since the epoch: "now" for ages and the recovered window (a parameter, so tests and
    /// the bench render a fixed instant).
    fn now_micros(&self) -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_micros() as u64)
            .unwrap_or(0)
    }
}

pub use operator::{Operator, Viewer};

/// The sizes of the embedded style sheet and script, in bytes (the page bench reports them).
pub fn asset_bytes() -> (usize, usize) {
    (layout::CSS.len(), layout::JS.len())
}

/// The page's routes; merge them into a router whose guard protects them like the API.
pub fn routes<S: WebSource>() -> Router<S> {
    Router::new()
        .route("/", get(problems::page::<S>))
        .route("/hosts", get(hosts::table::<S>))
        .route("/hosts/{host}", get(hosts::page::<S>))
        .route("/topology", get(topology::page::<S>))
        .route("/events", get(events::page::<S>))
        .route(
            "/hosts/{host}/run",
            post(operator::run::<S>).layer(DefaultBodyLimit::max(operator::MAX_FORM)),
        )
        .route("/static/app.css", get(layout::css))
        .route("/static/app.js", get(layout::js))
        .route("/static/icon.svg", get(layout::icon))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use assim_cma::EventKind;
    use axum::extract::{Path, Query, State};
    use axum::http::StatusCode;
    use axum::response::Response;

    use crate::Viewer;
    use crate::fixture::{Fixture, fleet};

    async fn body(r: Response) -> (StatusCode, String) {
        let status = r.status();
        let bytes = axum::body::to_bytes(r.into_body(), 64 << 20).await.unwrap();
        (status, String::from_utf8(bytes.to_vec()).unwrap())
    }

    const EVIL_HOST: &str = "<script>alert(1)</script>";
    const EVIL_OUTPUT: &str = "<img src=x onerror=alert(2)> & \"quoted\"";

    /// A fleet whose first host has a hostile name and whose every check output is hostile.
    fn hostile() -> Fixture {
        let mut d = fleet(12, 4);
        d.nodes[0].hostname = EVIL_HOST.into();
        d.nodes[0].state = "down".into();
        for s in &mut d.services {
            if s.node == d.nodes[0].id {
                s.host = EVIL_HOST.into();
            }
            s.output = EVIL_OUTPUT.into();
            s.state = "critical".into();
        }
        for r in &mut d.rings {
            for m in &mut r.members {
                if m.node == d.nodes[0].id.to_string() {
                    m.host = EVIL_HOST.into();
                }
            }
        }
        d.push_event(EventKind::HostDown, EVIL_HOST, d.now - 5, EVIL_OUTPUT);
        Fixture(Arc::new(d))
    }

    fn assert_escaped(page: &str, html: &str) {
        assert!(!html.contains("<script>alert"), "{page}: a host name became a script");
        assert!(!html.contains("<img src=x"), "{page}: check output became markup");
        assert!(!html.contains("<script>") || html.matches("<script").count() == 1, "{page}");
        assert!(
            html.contains("&lt;script&gt;alert(1)&lt;/script&gt;")
                || html.contains("&lt;img src=x onerror=alert(2)&gt;"),
            "{page}: the hostile text is shown, escaped"
        );
    }

    #[tokio::test]
    async fn hostile_names_and_output_are_escaped_on_every_page() {
        let src = hostile();
        let h = Viewer::anonymous();
        let pages = [
            ("problems", crate::problems::page(State(src.clone()), h.clone()).await),
            (
                "hosts",
                crate::hosts::table(State(src.clone()), h.clone(), Query(Default::default())).await,
            ),
            (
                "host",
                crate::hosts::page(
                    State(src.clone()),
                    h.clone(),
                    Path(EVIL_HOST.to_string()),
                    Query(Default::default()),
                )
                .await,
            ),
            (
                "topology",
                crate::topology::page(State(src.clone()), h.clone(), Query(Default::default()))
                    .await,
            ),
            (
                "events",
                crate::events::page(State(src.clone()), h.clone(), Query(Default::default())).await,
            ),
        ];
        for (name, resp) in pages {
            let csp = resp.headers().get("content-security-policy").cloned();
            let (status, html) = body(resp).await;
            assert_eq!(status, StatusCode::OK, "{name}: {html}");
            assert!(csp.is_some_and(|v| v.to_str().unwrap().contains("script-src 'self'")));
            assert_escaped(name, &html);
            // The only script is the embedded file.
            assert_eq!(html.matches("<script").count(), 1, "{name}");
            assert!(html.contains("<script src=\"/static/app.js\" defer></script>"), "{name}");
        }
    }

    #[tokio::test]
    async fn the_partial_answer_is_the_inside_of_main() {
        let src = Fixture(Arc::new(fleet(8, 4)));
        let h = Viewer { partial: true, ..Viewer::anonymous() };
        let (_, part) = body(crate::problems::page(State(src.clone()), h).await).await;
        assert!(part.starts_with("<h1>Problems</h1>"), "{part}");
        assert!(!part.contains("<html"));
        let (_, full) = body(crate::problems::page(State(src), Viewer::anonymous()).await).await;
        assert!(full.starts_with("<!DOCTYPE html>"));
        assert!(full.contains("data-live=\"1\""), "the problems page is live");
    }

    #[tokio::test]
    async fn an_unknown_host_is_a_404_and_a_bad_filter_a_400_that_points_at_it() {
        let src = Fixture(Arc::new(fleet(4, 4)));
        let r = crate::hosts::page(
            State(src.clone()),
            Viewer::anonymous(),
            Path("nope".into()),
            Query(Default::default()),
        )
        .await;
        let (status, html) = body(r).await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert!(html.contains("<code>nope</code>"));
        let q: crate::events::EventsQuery =
            serde_json::from_value(serde_json::json!({"filter": "type:host.* and (a=b"})).unwrap();
        let (status, html) =
            body(crate::events::page(State(src), Viewer::anonymous(), Query(q)).await).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert!(html.contains("id=\"filter-error\""), "{html}");
    }

    #[tokio::test]
    async fn the_event_filter_narrows_the_list() {
        let src = Fixture(Arc::new(fleet(300, 40)));
        let count = |html: &str| html.matches("<tr class=\"event\"").count();
        let all: crate::events::EventsQuery =
            serde_json::from_value(serde_json::json!({})).unwrap();
        let (_, html) =
            body(crate::events::page(State(src.clone()), Viewer::anonymous(), Query(all)).await)
                .await;
        assert_eq!(count(&html), 200, "the newest 200 by default");
        let q: crate::events::EventsQuery =
            serde_json::from_value(serde_json::json!({"filter": "type:host.down"})).unwrap();
        let (_, html) =
            body(crate::events::page(State(src), Viewer::anonymous(), Query(q)).await).await;
        assert_eq!(count(&html), 3, "h00099, h00199, h00299 are down");
        assert!(html.contains("data-filter=\"type:host.down\""), "live with the same filter");
    }

    #[tokio::test]
    async fn run_now_is_offered_to_an_operator_only_and_its_answers_are_escaped() {
        let src = hostile();
        let host_page = |viewer: Viewer| {
            crate::hosts::page(
                State(src.clone()),
                viewer,
                Path(EVIL_HOST.to_string()),
                Query(Default::default()),
            )
        };
        let (_, html) = body(host_page(Viewer::anonymous()).await).await;
        assert_eq!(html.matches("<form class=\"run\"").count(), 0, "no button: {html}");
        assert!(html.contains("id=\"signin\""), "a way to sign in");
        let (_, html) = body(host_page(Viewer::signed_in()).await).await;
        assert_eq!(html.matches("<form class=\"run\"").count(), 2, "one per check");
        assert!(html.contains("action=\"/hosts/%3Cscript%3Ealert%281%29%3C%2Fscript%3E/run\""));
        assert!(html.contains("action=\"/logout\""), "and a way to sign out");
        assert_escaped("host page (operator)", &html);

        let run = |viewer: Viewer, check: &str| {
            crate::operator::run(
                State(src.clone()),
                viewer,
                Path(EVIL_HOST.to_string()),
                axum::Form(crate::operator::RunForm { check: check.to_string() }),
            )
        };
        let (status, html) = body(run(Viewer::anonymous(), "ssh").await).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "the page refuses too, not only the guard");
        assert!(html.contains("/login?next="), "{html}");
        let (status, html) = body(run(Viewer::signed_in(), "ssh").await).await;
        assert_eq!(status, StatusCode::OK, "{html}");
        assert!(html.contains("id=\"run-result\" data-state=\"critical\""), "{html}");
        assert_escaped("run result", &html);
        let (status, html) = body(run(Viewer::signed_in(), "<b>nope</b>").await).await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert!(html.contains("&lt;b&gt;nope&lt;/b&gt;") && !html.contains("<b>nope"), "{html}");
        let (status, _) = body(run(Viewer::signed_in(), " ").await).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
    }
}
