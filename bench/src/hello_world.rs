//! The reference for the load benchmarks: a bare axum endpoint that reads the request body and
//! answers 202 with a small JSON body, on the same Tokio runtime settings as `gantry serve`
//! (multi-threaded, one worker per core). Whatever Gantry costs beyond HTTP shows up as the
//! ratio to this.
//!
//!     hello-world [ADDR]   (default 127.0.0.1:0; prints "listening on http://ADDR")

use axum::body::Bytes;
use axum::http::StatusCode;

fn main() -> anyhow::Result<()> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:0".into());
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(async move {
            let listener = tokio::net::TcpListener::bind(&addr).await?;
            println!("listening on http://{}", listener.local_addr()?);
            let app = axum::Router::new().fallback(|body: Bytes| async move {
                let _ = body.len();
                (StatusCode::ACCEPTED, r#"{"status":"accepted"}"#)
            });
            axum::serve(listener, app).await?;
            Ok(())
        })
}
