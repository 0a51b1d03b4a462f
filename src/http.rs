//! The operations endpoint: `GET /metrics`, `/healthz`, `/readyz`.
//!
//! A tiny HTTP/1.1 responder (one request per connection) is all Prometheus
//! and orchestrators need; it keeps a web framework out of the build.

use metrics_exporter_prometheus::PrometheusHandle;
use std::time::Duration;
use tidemark_core::health::Health;
use tidemark_core::CancellationToken;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};

/// Installs the Prometheus recorder with CDC latency buckets and describes every family.
pub fn install_recorder() -> Result<PrometheusHandle, String> {
    let recorder = metrics_exporter_prometheus::PrometheusBuilder::new()
        .set_buckets(tidemark_core::metrics::LATENCY_BUCKETS)
        .map_err(|e| e.to_string())?
        .build_recorder();
    let handle = recorder.handle();
    metrics::set_global_recorder(recorder).map_err(|e| e.to_string())?;
    tidemark_core::metrics::describe();
    metrics::gauge!(tidemark_core::metrics::BUILD_INFO, "version" => env!("CARGO_PKG_VERSION"))
        .set(1.0);
    Ok(handle)
}

/// Serves until `shutdown`. Binding errors are returned at once so `run` can report them.
pub async fn serve(
    listen: &str,
    handle: PrometheusHandle,
    health: Health,
    shutdown: CancellationToken,
) -> std::io::Result<tokio::task::JoinHandle<()>> {
    let listener = TcpListener::bind(listen).await?;
    tracing::info!(listen = %listener.local_addr()?, "metrics endpoint listening");
    Ok(tokio::spawn(async move {
        let upkeep = handle.clone();
        let mut tick = tokio::time::interval(Duration::from_secs(5));
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tick.tick() => upkeep.run_upkeep(),
                accepted = listener.accept() => {
                    if let Ok((stream, _)) = accepted {
                        let (handle, health) = (handle.clone(), health.clone());
                        tokio::spawn(async move {
                            let _ = tokio::time::timeout(
                                Duration::from_secs(10),
                                respond(stream, &handle, &health),
                            )
                            .await;
                        });
                    }
                }
            }
        }
    }))
}

async fn respond(
    mut stream: TcpStream,
    handle: &PrometheusHandle,
    health: &Health,
) -> std::io::Result<()> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") && buf.len() < 16 * 1024 {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let head = String::from_utf8_lossy(&buf);
    let mut parts = head.split_whitespace();
    let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let path = path.split('?').next().unwrap_or("");
    let (status, content_type, body) = match (method, path) {
        ("GET", "/metrics") => ("200 OK", "text/plain; version=0.0.4", handle.render()),
        ("GET", "/healthz") => ("200 OK", "text/plain", "ok\n".to_owned()),
        ("GET", "/readyz") => {
            let (ready, failing) = health.report();
            let body = serde_json::json!({
                "ready": ready,
                "not_ready": failing
                    .iter()
                    .map(|(k, v)| serde_json::json!({"component": k, "reason": v}))
                    .collect::<Vec<_>>(),
            })
            .to_string();
            (
                if ready {
                    "200 OK"
                } else {
                    "503 Service Unavailable"
                },
                "application/json",
                body,
            )
        }
        ("GET", _) => ("404 Not Found", "text/plain", "not found\n".to_owned()),
        _ => (
            "405 Method Not Allowed",
            "text/plain",
            "method not allowed\n".to_owned(),
        ),
    };
    let response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(response.as_bytes()).await?;
    stream.write_all(body.as_bytes()).await?;
    stream.shutdown().await
}
