//! What one API client can hold (issue 16 item 12), so that no client, however abusive, grows
//! the CMA's memory or starves its other clients:
//!
//! | resource | bound | over the bound |
//! |---|---|---|
//! | TCP connections | [`MAX_CONNECTIONS`] open at once | not accepted until one closes |
//! | an idle connection | [`IDLE_TIMEOUT`] without a byte either way | closed |
//! | held requests (long-polls with `wait`, SSE streams) | [`MAX_HELD`] units at once: 1 each, plus [`UNITS_PER_REGEX`] per regex in its filter | `503`, `Retry-After` |
//! | store calls | [`API_HANDLES`] running, [`MAX_QUEUED_READS`] waiting (asynchronously, no thread each) | `503`, `Retry-After` |
//! | rows in one answer | [`assim_store::MAX_ANSWER_ROWS`] | `422`, "narrow the query" |
//! | events examined by one store call | [`SCAN_PER_CALL`]; one request at most `MAX_SCAN` (api_bus) | the cursor to continue from |
//! | a filter | 4 KiB, 8 regexes of bounded size (`assim_bus::filter`) | `400` naming the problem |
//!
//! A held request waits on a watch channel, not on a thread or a store handle, so the only
//! per-request cost is its task and its filter. A filter's regexes dominate that (up to
//! 128 KiB of program each, `assim_bus::filter`), hence the weight: 256 plain streams, or 28
//! streams whose filters hold 8 regexes each; never more than 256 regexes (32 MiB of programs)
//! held at once. SSE streams send a keep-alive comment every
//! 15 s, which keeps a live stream from counting as idle; a long-poll is held at most 60 s,
//! half the idle timeout.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use assim_store::QueryError;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::{Instant, Sleep};

/// Store handles the API keeps per seam, and so the store calls running at once per seam.
pub const API_HANDLES: usize = 4;
/// Store calls waiting for a handle, per seam, before new ones are refused.
pub const MAX_QUEUED_READS: usize = 256;
/// Units of held requests (long-polls and SSE streams) at once; see [`UNITS_PER_REGEX`].
pub const MAX_HELD: usize = 256;
/// What each regex of a held request's filter adds to its one unit.
pub const UNITS_PER_REGEX: usize = 1;
/// TCP connections open at once (each costs tens of KiB of buffers and state).
pub const MAX_CONNECTIONS: usize = 512;
/// A connection with no traffic either way for this long is closed.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(120);
/// Events one store call examines for a filtered read; a request makes several calls (up to
/// `api_bus::MAX_SCAN` events), giving the handle back between them so other readers interleave.
pub const SCAN_PER_CALL: usize = 10_000;

/// The bounds of one API server; [`Limits::default`] is the table above.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    pub connections: usize,
    pub idle: Duration,
    pub held: usize,
    pub queued_reads: usize,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            connections: MAX_CONNECTIONS,
            idle: IDLE_TIMEOUT,
            held: MAX_HELD,
            queued_reads: MAX_QUEUED_READS,
        }
    }
}

/// Seconds a refused client is told to wait.
const RETRY_AFTER_SECS: u64 = 2;

/// The gate in front of one seam's store handles: [`API_HANDLES`] permits, and a count of
/// callers waiting for one.
#[derive(Debug)]
pub struct ReadGate {
    permits: Arc<Semaphore>,
    waiting: AtomicUsize,
    max_waiting: usize,
}

impl ReadGate {
    pub fn new(running: usize, max_waiting: usize) -> ReadGate {
        ReadGate {
            permits: Arc::new(Semaphore::new(running.max(1))),
            waiting: AtomicUsize::new(0),
            max_waiting,
        }
    }

    /// A permit to run one store call, waiting (asynchronously) behind at most
    /// `max_waiting` others; `None` when the queue is full.
    pub async fn enter(&self) -> Option<OwnedSemaphorePermit> {
        if let Ok(p) = self.permits.clone().try_acquire_owned() {
            return Some(p);
        }
        if self.waiting.fetch_add(1, Ordering::AcqRel) >= self.max_waiting {
            self.waiting.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        let p = self.permits.clone().acquire_owned().await.ok();
        self.waiting.fetch_sub(1, Ordering::AcqRel);
        p
    }
}

/// Permits for held requests (long-polls and SSE streams).
#[derive(Clone, Debug)]
pub struct HeldGate {
    permits: Arc<Semaphore>,
    max: usize,
}

impl HeldGate {
    pub fn new(max: usize) -> HeldGate {
        HeldGate { permits: Arc::new(Semaphore::new(max)), max }
    }

    /// A permit to hold one request whose filter compiled `regexes` regexes, or why not (a
    /// `503` answer).
    pub fn hold(&self, regexes: usize) -> Result<OwnedSemaphorePermit, Busy> {
        let units = 1 + regexes * UNITS_PER_REGEX;
        let refused = || {
            Busy(format!(
                "long-polls and event streams already hold {} of {} places, and this one needs \
                 {units} (1, plus {UNITS_PER_REGEX} per regex in its filter); close one, use \
                 fewer regexes, or retry later",
                self.open(),
                self.max
            ))
        };
        let units32 = u32::try_from(units).map_err(|_| refused())?;
        self.permits.clone().try_acquire_many_owned(units32).map_err(|_| refused())
    }

    /// Held requests now open (for tests and metrics).
    pub fn open(&self) -> usize {
        self.max.saturating_sub(self.permits.available_permits())
    }
}

/// The answer to a failed store call: `503` when the API is busy, `422` when the answer would be
/// too large, `500` when the store failed.
pub fn failed(e: QueryError) -> Response {
    match e {
        QueryError::Busy(why) => busy(why),
        QueryError::TooLarge => {
            (StatusCode::UNPROCESSABLE_ENTITY, format!("{e}\n")).into_response()
        }
        QueryError::Backend(_) => {
            (StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")).into_response()
        }
    }
}

/// A refusal for lack of room; answered as [`busy`].
#[derive(Debug)]
pub struct Busy(pub String);

impl IntoResponse for Busy {
    fn into_response(self) -> Response {
        busy(&self.0)
    }
}

impl From<Busy> for Response {
    fn from(b: Busy) -> Response {
        b.into_response()
    }
}

/// A `503 Service Unavailable` with `Retry-After` and the reason.
pub fn busy(reason: &str) -> Response {
    (
        StatusCode::SERVICE_UNAVAILABLE,
        [(header::RETRY_AFTER, RETRY_AFTER_SECS.to_string())],
        format!("the CMA's API is busy: {reason}\n"),
    )
        .into_response()
}

/// The HTTP listener with a bound on open connections and an idle timeout on each.
#[derive(Debug)]
pub struct BoundedListener {
    inner: TcpListener,
    slots: Arc<Semaphore>,
    idle: Duration,
}

impl BoundedListener {
    pub fn new(inner: TcpListener, max_connections: usize, idle: Duration) -> BoundedListener {
        BoundedListener { inner, slots: Arc::new(Semaphore::new(max_connections)), idle }
    }
}

impl axum::serve::Listener for BoundedListener {
    type Io = BoundedStream;
    type Addr = std::net::SocketAddr;

    async fn accept(&mut self) -> (BoundedStream, std::net::SocketAddr) {
        // Wait for a free slot before accepting: the kernel's backlog holds the rest.
        let slot = self.slots.clone().acquire_owned().await.expect("the slots are never closed");
        loop {
            match self.inner.accept().await {
                Ok((io, addr)) => {
                    let _ = io.set_nodelay(true);
                    let idle = self.idle;
                    let stream = BoundedStream {
                        io,
                        _slot: slot,
                        idle,
                        timer: Box::pin(tokio::time::sleep(idle)),
                    };
                    return (stream, addr);
                }
                Err(e) => {
                    // Out of file descriptors and the like: wait instead of spinning.
                    tracing::warn!(error = %e, "HTTP API accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }

    fn local_addr(&self) -> io::Result<std::net::SocketAddr> {
        self.inner.local_addr()
    }
}

/// One accepted connection: holds its slot until dropped, and fails with `TimedOut` once it
/// has been idle (no byte read or written) for the idle timeout.
#[derive(Debug)]
pub struct BoundedStream {
    io: TcpStream,
    _slot: OwnedSemaphorePermit,
    idle: Duration,
    timer: Pin<Box<Sleep>>,
}

impl BoundedStream {
    fn touched(&mut self) {
        self.timer.as_mut().reset(Instant::now() + self.idle);
    }

    fn idle_expired(&mut self, cx: &mut Context<'_>) -> bool {
        self.timer.as_mut().poll(cx).is_ready()
    }
}

fn timed_out() -> io::Error {
    io::Error::new(io::ErrorKind::TimedOut, "HTTP connection idle for too long")
}

impl AsyncRead for BoundedStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        match Pin::new(&mut self.io).poll_read(cx, buf) {
            Poll::Ready(r) => {
                if buf.filled().len() > before {
                    self.touched();
                }
                Poll::Ready(r)
            }
            Poll::Pending if self.idle_expired(cx) => Poll::Ready(Err(timed_out())),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl AsyncWrite for BoundedStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        match Pin::new(&mut self.io).poll_write(cx, data) {
            Poll::Ready(Ok(n)) => {
                if n > 0 {
                    self.touched();
                }
                Poll::Ready(Ok(n))
            }
            Poll::Ready(e) => Poll::Ready(e),
            Poll::Pending if self.idle_expired(cx) => Poll::Ready(Err(timed_out())),
            Poll::Pending => Poll::Pending,
        }
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn item_12_the_read_queue_is_bounded() {
        let gate = Arc::new(ReadGate::new(1, 2));
        let running = gate.enter().await.expect("a free handle");
        // Two may wait (asynchronously), the third is refused at once.
        let (g1, g2) = (gate.clone(), gate.clone());
        let w1 = tokio::spawn(async move { g1.enter().await.is_some() });
        let w2 = tokio::spawn(async move { g2.enter().await.is_some() });
        while gate.waiting.load(Ordering::Acquire) < 2 {
            tokio::task::yield_now().await;
        }
        assert!(gate.enter().await.is_none(), "a third waiter must be refused");
        drop(running);
        assert!(w1.await.unwrap() && w2.await.unwrap(), "the waiters get their turn");
        assert!(gate.enter().await.is_some());
    }

    #[test]
    fn item_12_held_requests_are_bounded() {
        let gate = HeldGate::new(4);
        let a = gate.hold(0).unwrap();
        let _b = gate.hold(0).unwrap();
        // A filter with regexes weighs more: two regexes need three places, two are left.
        let refused = gate.hold(2).unwrap_err();
        assert!(refused.0.contains("needs 3"), "{}", refused.0);
        let refused = refused.into_response();
        assert_eq!(refused.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert!(refused.headers().contains_key(header::RETRY_AFTER));
        drop(a);
        let _c = gate.hold(2).expect("a closed request frees its place");
        assert_eq!(gate.open(), 4);
        assert!(gate.hold(0).is_err());
    }
}
