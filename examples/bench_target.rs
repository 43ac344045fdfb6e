//! A trivial HTTP server for measuring `raftlog bench` itself: it answers every request
//! with `200 ok` and does nothing else, so the generator's ceiling on this machine shows.
//!
//! ```text
//! cargo run --release --example bench_target -- 127.0.0.1:18999 &
//! raftlog bench --endpoints 127.0.0.1:18999 --clients 64 --duration 10 --warmup 2
//! ```
//!
//! One thread (`current_thread`), so on a 2-core machine the generator has the other core.

use std::convert::Infallible;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:18999".to_string());
    let listener = tokio::net::TcpListener::bind(&addr)
        .await
        .map_err(|e| format!("cannot listen on {addr}: {e}"))?;
    eprintln!("bench_target: answering 200 on {addr}");
    loop {
        let (stream, _) = listener.accept().await?;
        let _ = stream.set_nodelay(true);
        tokio::spawn(async move {
            let service = service_fn(|request: Request<hyper::body::Incoming>| async move {
                // Read the body as a real server would, then answer.
                let _ = request.into_body().collect().await;
                Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"ok"))))
            });
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}
