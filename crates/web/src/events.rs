//! The event list (`/events?filter=…&limit=N`): the newest events matching a filter in the
//! bus's filter language (`assim_bus::filter`), newest first, live (the page listens to the SSE
//! stream with the same filter); then the durable subscriptions with their positions and their
//! sinks' dead letters. A filter that does not parse is shown with the place of the problem.

use assim_bus::Filter;
use assim_cma::Event;
use assim_store::{DeadLetter, EventLog, QueryError, SubscriptionRecord};
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::Response;
use maud::{Markup, html};
use serde::Deserialize;

use crate::WebSource;
use crate::hosts::badge_kind;
use crate::layout::{self, Nav, Page, host_link, time};
use crate::operator::Viewer;

/// Events shown by default, and at most.
const DEFAULT_LIMIT: usize = 200;
const MAX_LIMIT: usize = 1000;
/// Events examined per page at most (a very selective filter shows what it found among them).
const MAX_SCAN: usize = 20_000;
/// Events read per store call.
const BATCH: u64 = 1000;
/// Subscriptions listed, and dead letters per subscription.
const MAX_SUBSCRIPTIONS: usize = 50;
const DEAD_LETTERS: usize = 5;

/// Query of `/events`.
#[derive(Debug, Default, Deserialize)]
pub struct EventsQuery {
    #[serde(default)]
    filter: String,
    limit: Option<usize>,
}

#[derive(Debug)]
struct Data {
    events: Vec<Event>,
    examined: usize,
    last: u64,
    subscriptions: Vec<(SubscriptionRecord, Vec<DeadLetter>)>,
}

/// The newest `limit` events matching `filter`, newest first, examining at most [`MAX_SCAN`].
fn gather(log: &dyn EventLog, filter: &Filter, limit: usize) -> Result<Data, QueryError> {
    let last = log.last_event_id()?;
    let mut events = Vec::new();
    let mut examined = 0;
    let mut hi = last;
    while events.len() < limit && examined < MAX_SCAN && hi > 0 {
        let lo = hi.saturating_sub(BATCH);
        let batch = log.events_since(lo, (hi - lo) as usize)?;
        examined += batch.len();
        for e in batch.into_iter().rev() {
            if events.len() < limit && filter.matches(&e) {
                events.push(e);
            }
        }
        hi = lo;
    }
    let mut subscriptions = Vec::new();
    for s in log.subscriptions()?.into_iter().take(MAX_SUBSCRIPTIONS) {
        let dead = log.dead_letters(&s.name, DEAD_LETTERS)?;
        subscriptions.push((s, dead));
    }
    Ok(Data { events, examined, last, subscriptions })
}

/// `GET /events`.
pub(crate) async fn page<S: WebSource>(
    State(src): State<S>,
    req: Viewer,
    Query(q): Query<EventsQuery>,
) -> Response {
    let limit = q.limit.unwrap_or(DEFAULT_LIMIT).clamp(1, MAX_LIMIT);
    let (filter, error) = match Filter::parse(&q.filter) {
        Ok(f) => (f, None),
        Err(e) => (Filter::all(), Some(e.render(&q.filter))),
    };
    let status = if error.is_some() { StatusCode::BAD_REQUEST } else { StatusCode::OK };
    let data = if error.is_some() {
        None
    } else {
        let f = filter.clone();
        match src.events(move |log| gather(log, &f, limit)).await {
            Ok(d) => Some(d),
            Err(e) => return layout::failed(&req, Nav::Events, e, src.cma()),
        }
    };
    let body = render(&q.filter, error.as_deref(), data.as_ref(), limit);
    let live = if error.is_none() { Some(filter.text().to_string()) } else { None };
    let page = Page { title: "Events".into(), nav: Nav::Events, live, body };
    layout::respond(&req, status, page, src.cma())
}

fn render(text: &str, error: Option<&str>, d: Option<&Data>, limit: usize) -> Markup {
    html! {
        h1 { "Events" }
        form.search method="get" action="/events" role="search" {
            label for="filter" { "Filter" }
            input #filter type="search" name="filter" value=(text) size="48"
                placeholder="type:host.* severity>=warning" autocomplete="off" spellcheck="false";
            button type="submit" { "Apply" }
        }
        p.muted {
            "Examples: " code { "type:host.*" } ", " code { "host:db*" } ", " code { "severity>=warning" } ", "
            code { "/raid/i and not host:lab*" } ", " code { "type:service.* and check=http" } "."
        }
        @if let Some(e) = error {
            pre.error #filter-error { (e) }
        }
        @if let Some(d) = d {
            p.summary #events-summary {
                (d.events.len()) " event" @if d.events.len() != 1 { "s" }
                @if !text.trim().is_empty() { " matching" }
                ", newest first, of the newest " (d.examined) " (last id " (d.last) ")."
                @if d.events.len() == limit { " Showing the newest " (limit) "." }
            }
            div.scroll { table.events #event-table {
                thead { tr { th { "Time" } th { "Type" } th { "Host" } th { "Text" } th { "Id" } } }
                tbody { @for e in &d.events {
                    tr.event data-kind=(e.kind.name()) data-host=(e.hostname) {
                        td { (time(e.time.0)) }
                        td { (badge_kind(e)) }
                        td { @if !e.hostname.is_empty() { (host_link(&e.hostname)) } }
                        td.output { (e.text) }
                        td { (e.id) }
                    }
                } }
            } }
            h2 { "Durable subscriptions" }
            @if d.subscriptions.is_empty() { p.muted { "None. Create one with " code { "assim subscribe" } " or PUT /api/v1/subscriptions/NAME." } } @else {
                div.scroll { table #subscription-table {
                    thead { tr { th { "Name" } th { "Filter" } th { "Position" } th { "Behind" } th { "Sink" } th { "Dead letters" } } }
                    tbody { @for (s, dead) in &d.subscriptions {
                        tr {
                            td { (s.name) }
                            td { code { (s.filter) } }
                            td { (s.cursor) }
                            td { (d.last.saturating_sub(s.cursor)) }
                            td.output { (s.sink.as_deref().unwrap_or("pull (API)")) }
                            td {
                                @if dead.is_empty() { span.muted { "none" } }
                                @for l in dead {
                                    "event " (l.event_id) " after " (l.attempts) " attempts: " span.output { (l.error) } " (" (time(l.at)) ")" br;
                                }
                            }
                        }
                    } }
                } }
            }
        }
    }
}
