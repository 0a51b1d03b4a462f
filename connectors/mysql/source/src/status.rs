//! `tidemark status` for a mysql source: the durable checkpoint and how much
//! binlog the server still holds behind it.

use crate::checkpoint::MysqlCheckpoint;
use crate::client;
use crate::runtime::Settings;
use tidemark_core::check::SourceStatus;
use tidemark_core::config::PipelineConfig;
use tidemark_core::error::Failure;
use tidemark_core::state::{source_key, StateStore};

/// Reads the checkpoint from the state store and the binlog sizes from the server.
pub async fn status(p: &PipelineConfig, state: &StateStore) -> Result<SourceStatus, Failure> {
    let stored = state
        .load::<MysqlCheckpoint>(&source_key(&p.name))
        .await
        .map_err(Failure::from_err)?
        .map(|v| v.value);
    let Some(ckpt) = stored else {
        return Ok(SourceStatus {
            position: None,
            lag_seconds: None,
            retained_bytes: None,
            detail: "no checkpoint yet (the initial snapshot has not completed)".into(),
        });
    };
    let settings = Settings::from_pipeline(p).map_err(Failure::from_err)?;
    let mut conn = settings.spec.sql().await.map_err(Failure::from_err)?;
    let logs = client::binary_logs(&mut conn)
        .await
        .map_err(Failure::from_err)?;
    let _ = conn.disconnect().await;
    let retained = client::bytes_after(&logs, &ckpt.file, ckpt.pos);
    let file_known = logs.iter().any(|(f, _)| *f == ckpt.file);
    let lag = if retained == 0 {
        Some(0.0)
    } else if ckpt.ts_ms > 0 {
        Some(((tidemark_core::metrics::now_ms() - ckpt.ts_ms).max(0) as f64) / 1000.0)
    } else {
        None
    };
    let mut detail = format!(
        "snapshot {}, server_id {}",
        if ckpt.snapshot_done {
            "done"
        } else {
            "pending"
        },
        ckpt.server_id
            .map(|i| i.to_string())
            .unwrap_or_else(|| "?".into())
    );
    if !file_known {
        detail.push_str(&format!(
            "; WARNING: binlog {} is no longer on the server (purged): a re-snapshot is needed",
            ckpt.file
        ));
    }
    Ok(SourceStatus {
        position: Some(ckpt.describe()),
        lag_seconds: lag,
        retained_bytes: Some(retained),
        detail,
    })
}
