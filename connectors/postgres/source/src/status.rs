//! `tidemark status` for a Postgres source: the durable checkpoint from the
//! KV bucket, and what the server says about the slot (WAL retained, lag).
//!
//! The checkpoint is what a restart would resume from; the slot's figures say
//! what that costs the server. A server that cannot be reached still leaves
//! the checkpoint worth showing, so that case is reported in `detail`, not as
//! an error.

use crate::catalog;
use crate::client::sql_connect;
use crate::config::PgSettings;
use crate::source::SourceCheckpoint;
use tidemark_core::check::SourceStatus;
use tidemark_core::config::PipelineConfig;
use tidemark_core::error::Failure;
use tidemark_core::state::{source_key, StateStore};

/// Reads the pipeline's checkpoint and the slot's state.
pub async fn status(p: &PipelineConfig, state: &StateStore) -> Result<SourceStatus, Failure> {
    let settings = PgSettings::from_pipeline(p).map_err(Failure::from_err)?;
    let stored = state
        .load::<SourceCheckpoint>(&source_key(&p.name))
        .await
        .map_err(Failure::from_err)?;
    let mut st = SourceStatus::default();
    let mut detail = Vec::new();
    match &stored {
        Some(v) => {
            st.position = Some(v.value.lsn.clone());
            detail.push(if v.value.snapshot_done {
                "snapshot done".to_string()
            } else {
                "initial snapshot in progress (or interrupted)".to_string()
            });
        }
        None => detail.push("no checkpoint yet".into()),
    }
    match sql_connect(&settings).await {
        Err(e) => detail.push(format!("postgres unreachable: {e}")),
        Ok(sql) => match catalog::slot(&sql, &settings.slot).await {
            Ok(Some(slot)) => {
                st.retained_bytes = slot.retained_bytes.map(|b| b.max(0.0) as u64);
                detail.push(format!(
                    "slot {} {}, confirmed {}",
                    settings.slot,
                    if slot.active { "active" } else { "inactive" },
                    slot.confirmed_flush_lsn.as_deref().unwrap_or("-")
                ));
                if let Some(pid) = slot.active_pid {
                    let lag = sql
                        .query_opt(
                            "SELECT extract(epoch FROM coalesce(flush_lag, interval '0'))::float8
                                   FROM pg_stat_replication WHERE pid = $1",
                            &[&pid],
                        )
                        .await;
                    if let Ok(Some(row)) = lag {
                        st.lag_seconds = row.try_get::<_, f64>(0).ok();
                    }
                }
            }
            Ok(None) => detail.push(format!("slot {} does not exist", settings.slot)),
            Err(e) => detail.push(format!("cannot read slot: {e}")),
        },
    }
    st.detail = detail.join("; ");
    Ok(st)
}
