//! Page weight and server render time of every view with 1,000 and 10,000 hosts, over the
//! in-memory fixture (`assim_web::fixture::fleet`: rings of 40 hosts per switch, 1 % of the
//! hosts down, 2 % with a critical check, two checks, 40 packages and a dependency each).
//! Run: `cargo bench -p assim-web --bench pages`. Prints one row per view: HTML bytes, the
//! first screen's total (HTML + CSS + JS), and the median render time of 5 renders (handler
//! call to the finished body: store reads from memory, layout, templates).

use std::sync::Arc;
use std::time::{Duration, Instant};

use assim_web::fixture::{Fixture, fleet};
use assim_web::routes;
use axum::body::Body;
use axum::http::Request;

fn main() {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let css = assim_web::asset_bytes().0;
    let js = assim_web::asset_bytes().1;
    println!("assets: CSS {css} B, JS {js} B (uncompressed; cached for an hour)");
    println!("{:>6} {:<12} {:>11} {:>11}", "hosts", "view", "HTML bytes", "render ms");
    for hosts in [1_000usize, 10_000] {
        let src = Fixture(Arc::new(fleet(hosts, 40)));
        let host = "h00042".to_string();
        for (view, path) in [
            ("problems", "/".to_string()),
            ("hosts", "/hosts".to_string()),
            ("host", format!("/hosts/{host}")),
            ("topology", "/topology".to_string()),
            ("events", "/events".to_string()),
        ] {
            let mut times = Vec::new();
            let mut bytes = 0;
            for _ in 0..5 {
                let app = routes().with_state(src.clone());
                let req = Request::get(&path).body(Body::empty()).unwrap();
                let t = Instant::now();
                let body = rt.block_on(async {
                    let resp = tower_call(app, req).await;
                    axum::body::to_bytes(resp.into_body(), 256 << 20).await.unwrap()
                });
                times.push(t.elapsed());
                bytes = body.len();
            }
            times.sort();
            let median: Duration = times[times.len() / 2];
            println!("{hosts:>6} {view:<12} {bytes:>11} {:>11.1}", median.as_secs_f64() * 1000.0);
        }
    }
}

async fn tower_call(app: axum::Router, req: Request<Body>) -> axum::response::Response {
    use tower::ServiceExt as _;
    app.oneshot(req).await.unwrap()
}
