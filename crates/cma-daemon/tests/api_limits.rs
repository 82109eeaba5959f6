//! Issue 16 item 12: what one API client can hold is bounded. A real API server over a real
//! (empty) SQLite store, with small limits so the bounds are reached quickly: held requests
//! (event streams, long-polls) past the bound get `503` with `Retry-After` and free their place
//! when closed; connections past the bound wait in the kernel's backlog; an idle connection is
//! closed; a filter asking for too many regexes is a `400` that says so.

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

use assim_cma_daemon::api::{ApiState, CmaInfo};
use assim_cma_daemon::api_limits::Limits;
use assim_cma_daemon::metrics::SharedMetrics;
use assim_wire::NodeId;

const TOKEN: &str = "operator-token-for-writes";

async fn server(limits: Limits) -> (SocketAddr, tokio::task::JoinHandle<()>, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cma.sqlite");
    assim_store_sqlite::Store::open(&path).unwrap();
    let (_tx, last_event) = tokio::sync::watch::channel(0);
    let info = CmaInfo {
        node_id: NodeId::from_slice(&[7; 16]).unwrap(),
        fingerprint: "fp".into(),
        listen: "127.0.0.1:1984".parse().unwrap(),
        version: "test".into(),
    };
    let access = assim_cma_daemon::api_access::ApiAccess::new(
        TOKEN,
        None,
        "127.0.0.1:0".parse().unwrap(),
        &[],
        &[],
    );
    let state = ApiState::new(path, Arc::new(SharedMetrics::default()), last_event, access, info)
        .unwrap()
        .with_limits(limits);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    // Keep the sender alive for the server's life: a closed channel ends every long-poll.
    let task = tokio::spawn(async move {
        let _tx = _tx;
        assim_cma_daemon::api::serve(listener, state).await;
    });
    (addr, task, dir)
}

/// Sends a GET and returns the connection and the response head (status line and headers).
fn open(addr: SocketAddr, path: &str) -> (TcpStream, String) {
    let mut c = TcpStream::connect(addr).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(c, "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: keep-alive\r\n\r\n").unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match c.read(&mut byte) {
            Ok(1) => head.push(byte[0]),
            other => panic!("GET {path}: {other:?} after {:?}", String::from_utf8_lossy(&head)),
        }
    }
    (c, String::from_utf8(head).unwrap())
}

fn status(head: &str) -> u16 {
    head.split(' ').nth(1).unwrap().parse().unwrap()
}

/// Reads the rest of a `Connection: close`-less short answer's body (best effort).
fn body(c: &mut TcpStream) -> String {
    c.set_read_timeout(Some(Duration::from_millis(500))).unwrap();
    let mut buf = vec![0u8; 4096];
    let n = c.read(&mut buf).unwrap_or(0);
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn item_12_held_requests_past_the_bound_get_503_and_free_their_place() {
    let limits = Limits { held: 3, ..Limits::default() };
    let (addr, task, _dir) = server(limits).await;
    tokio::task::spawn_blocking(move || {
        let mut streams = Vec::new();
        for _ in 0..2 {
            let (c, head) = open(addr, "/api/v1/events/stream?filter=type:host.*");
            assert_eq!(status(&head), 200, "{head}");
            streams.push(c);
        }
        // A long-poll that has to wait takes the third place...
        let (poll, head) = {
            let mut c = TcpStream::connect(addr).unwrap();
            write!(c, "GET /api/v1/events?since=0&wait=5 HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
                .unwrap();
            std::thread::sleep(Duration::from_millis(300));
            (c, String::new())
        };
        assert!(head.is_empty());
        // ...so a fourth held request, stream or long-poll, is refused at once.
        let (mut c, head) = open(addr, "/api/v1/events/stream");
        assert_eq!(status(&head), 503, "{head}");
        assert!(head.to_ascii_lowercase().contains("retry-after: 2"), "{head}");
        assert!(body(&mut c).contains("already hold"));
        let (_c, head) = open(addr, "/api/v1/events?since=0&wait=30&filter=type:host.*");
        assert_eq!(status(&head), 503, "{head}");
        // Reads that do not wait are still answered.
        let (_c, head) = open(addr, "/api/v1/events?since=0");
        assert_eq!(status(&head), 200, "{head}");
        // Closing a stream frees its place (the server notices at its next keep-alive or
        // scan; the long-poll's place frees when the client goes away and the wait ends).
        drop(streams.pop());
        drop(poll);
        let deadline = Instant::now() + Duration::from_secs(40);
        loop {
            let (_c, head) = open(addr, "/api/v1/events/stream");
            if status(&head) == 200 {
                break;
            }
            assert!(Instant::now() < deadline, "a closed stream never gave its place back");
            std::thread::sleep(Duration::from_millis(500));
        }
    })
    .await
    .unwrap();
    task.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn item_12_connections_are_bounded_and_idle_ones_closed() {
    let limits = Limits { connections: 2, idle: Duration::from_secs(1), ..Limits::default() };
    let (addr, task, _dir) = server(limits).await;
    tokio::task::spawn_blocking(move || {
        // Two silent connections take both slots; a third is accepted by the kernel but not
        // served until the idle timeout closes one of the first two.
        let mut idle: Vec<TcpStream> = (0..2).map(|_| TcpStream::connect(addr).unwrap()).collect();
        std::thread::sleep(Duration::from_millis(100));
        let t0 = Instant::now();
        let (_c, head) = open(addr, "/healthz");
        assert_eq!(status(&head), 200, "{head}");
        let waited = t0.elapsed();
        assert!(
            waited >= Duration::from_millis(700),
            "served after {waited:?}, before a slot freed"
        );
        // The idle connections were closed by the server: reading gives end of file.
        for c in &mut idle {
            c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            let mut b = [0u8; 1];
            assert_eq!(c.read(&mut b).unwrap_or(0), 0, "an idle connection stayed open");
        }
    })
    .await
    .unwrap();
    task.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn item_12_a_filter_with_too_many_regexes_is_refused() {
    let (addr, task, _dir) = server(Limits::default()).await;
    tokio::task::spawn_blocking(move || {
        let filter = vec!["/a/"; 100].join("%20or%20");
        let (mut c, head) = open(addr, &format!("/api/v1/events?filter={filter}"));
        assert_eq!(status(&head), 400, "{head}");
        let text = body(&mut c);
        assert!(text.contains("at most 8"), "{text}");
    })
    .await
    .unwrap();
    task.abort();
}
