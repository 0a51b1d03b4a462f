//! Every metric name and label key, described once.
//!
//! The names are a contract with dashboards and alerts (DESIGN "Metrics").
//! Labels stay low-cardinality: pipeline, sink, table, op, kind, component (and column on the
//! one family that needs it, bounded by the schema).

/// Row changes read from the source (`pipeline`, `table`, `op`).
pub const SOURCE_EVENTS: &str = "tidemark_source_events_total";
/// Envelopes acknowledged by JetStream (`pipeline`).
pub const PUBLISHED_EVENTS: &str = "tidemark_published_events_total";
/// now − source commit time of the last event read (`pipeline`).
pub const SOURCE_LAG: &str = "tidemark_source_lag_seconds";
/// WAL / binlog bytes the source still retains for us (`pipeline`).
pub const SOURCE_SLOT_LAG: &str = "tidemark_source_slot_lag_bytes";
/// Publish → JetStream ack (`pipeline`).
pub const PUBLISH_LATENCY: &str = "tidemark_publish_latency_seconds";
/// Events committed to a sink's store (`pipeline`, `sink`, `op`).
pub const SINK_APPLIED: &str = "tidemark_sink_applied_events_total";
/// Events skipped by the position guard (`pipeline`, `sink`).
pub const SINK_DUPLICATES: &str = "tidemark_sink_duplicates_skipped_total";
/// Messages waiting in the sink's consumer (`pipeline`, `sink`).
pub const SINK_PENDING: &str = "tidemark_sink_pending_events";
/// One target transaction apply (`pipeline`, `sink`).
pub const SINK_APPLY_LATENCY: &str = "tidemark_sink_apply_latency_seconds";
/// Sink commit time − source commit time (`pipeline`, `sink`).
pub const END_TO_END_LATENCY: &str = "tidemark_end_to_end_latency_seconds";
/// Errors by `component` and `kind`, retried ones included.
pub const ERRORS: &str = "tidemark_errors_total";
/// Reconnects by `component`.
pub const RECONNECTS: &str = "tidemark_reconnects_total";
/// Snapshot rows read (`pipeline`, `table`).
pub const SNAPSHOT_ROWS: &str = "tidemark_snapshot_rows_total";
/// Estimated snapshot rows to read (`pipeline`, `table`).
pub const SNAPSHOT_ROWS_ESTIMATED: &str = "tidemark_snapshot_rows_estimated";
/// 1, with a `version` label.
pub const BUILD_INFO: &str = "tidemark_build_info";
/// Events sent to a sink's dead-letter subject (`pipeline`, `sink`).
pub const SINK_DEAD_LETTERS: &str = "tidemark_sink_dead_letters_total";
/// Events larger than NATS accepts, handled by the pipeline's `oversize` policy (`pipeline`).
pub const OVERSIZE_EVENTS: &str = "tidemark_oversize_events_total";

/// Non-NULL source values emitted as something else because they have no canonical form, such
/// as MySQL zero dates emitted as `null` (`pipeline`, `table`, `column`, `kind`).
pub const SOURCE_VALUES_SUBSTITUTED: &str = "tidemark_source_values_substituted_total";

/// 1 while a component (`<pipeline>/source`, `<pipeline>/sink/<name>`) is ready, else 0.
pub const COMPONENT_READY: &str = "tidemark_component_ready";

/// Label key: pipeline name.
pub const L_PIPELINE: &str = "pipeline";
/// Label key: sink name.
pub const L_SINK: &str = "sink";
/// Label key: `schema.table`.
pub const L_TABLE: &str = "table";
/// Label key: envelope op code.
pub const L_OP: &str = "op";
/// Label key: error kind.
pub const L_KIND: &str = "kind";
/// Label key: column name (only on [`SOURCE_VALUES_SUBSTITUTED`]: bounded by the schema, and a
/// series exists only for a column that actually had a substitution).
pub const L_COLUMN: &str = "column";
/// Label key: component (`source`, `publisher`, `sink`, `nats`).
pub const L_COMPONENT: &str = "component";

/// Histogram buckets for CDC latencies: 1 ms … 60 s.
pub const LATENCY_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

/// Registers descriptions for every family (call once at start-up, after installing the
/// recorder).
pub fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
    describe_counter!(SOURCE_EVENTS, "Row changes read from the source.");
    describe_counter!(PUBLISHED_EVENTS, "Envelopes acknowledged by JetStream.");
    describe_gauge!(
        SOURCE_LAG,
        Unit::Seconds,
        "Now minus source commit time of the last event read."
    );
    describe_gauge!(
        SOURCE_SLOT_LAG,
        Unit::Bytes,
        "WAL or binlog bytes the source retains for us."
    );
    describe_histogram!(PUBLISH_LATENCY, Unit::Seconds, "Publish to JetStream ack.");
    describe_counter!(SINK_APPLIED, "Events committed to a sink's store.");
    describe_counter!(
        SINK_DUPLICATES,
        "Events skipped by the sink's position guard."
    );
    describe_gauge!(SINK_PENDING, "Messages waiting in the sink's consumer.");
    describe_histogram!(
        SINK_APPLY_LATENCY,
        Unit::Seconds,
        "One sink transaction apply."
    );
    describe_histogram!(
        END_TO_END_LATENCY,
        Unit::Seconds,
        "Sink commit time minus source commit time."
    );
    describe_counter!(
        ERRORS,
        "Errors by component and kind, retried ones included."
    );
    describe_counter!(RECONNECTS, "Reconnects by component.");
    describe_counter!(SNAPSHOT_ROWS, "Snapshot rows read.");
    describe_gauge!(SNAPSHOT_ROWS_ESTIMATED, "Estimated snapshot rows to read.");
    describe_gauge!(BUILD_INFO, "Build information; always 1.");
    describe_counter!(
        SINK_DEAD_LETTERS,
        "Events sent to a sink's dead-letter subject."
    );
    describe_counter!(
        SOURCE_VALUES_SUBSTITUTED,
        "Source values without a canonical form (MySQL zero dates), emitted as null."
    );
    describe_counter!(
        OVERSIZE_EVENTS,
        "Events larger than the NATS server accepts, handled by the oversize policy."
    );
    describe_gauge!(
        COMPONENT_READY,
        "1 while a source or sink is ready (what /readyz reports), else 0."
    );
}

/// Envelope op codes: every op-labelled family is registered with each of them at start-up.
pub const OPS: [&str; 5] = ["c", "u", "d", "r", "t"];

/// Registers, at zero, every family of a pipeline's source side, so dashboards and alerts
/// see the series from start-up instead of after the first event (a `rate()` or an
/// "is it growing" alert needs a first sample). Table-labelled families are registered for
/// `exact_tables`, the configured table names without a glob; tables matched by a glob get
/// their series when the source first reads them. Call after installing the recorder.
pub fn register_source(pipeline: &str, exact_tables: &[String]) {
    let p = pipeline.to_owned();
    metrics::counter!(PUBLISHED_EVENTS, L_PIPELINE => p.clone()).increment(0);
    metrics::counter!(OVERSIZE_EVENTS, L_PIPELINE => p.clone()).increment(0);
    metrics::gauge!(SOURCE_LAG, L_PIPELINE => p.clone()).increment(0.0);
    metrics::gauge!(SOURCE_SLOT_LAG, L_PIPELINE => p.clone()).increment(0.0);
    let _ = metrics::histogram!(PUBLISH_LATENCY, L_PIPELINE => p.clone());
    for table in exact_tables {
        for op in OPS {
            metrics::counter!(SOURCE_EVENTS, L_PIPELINE => p.clone(), L_TABLE => table.clone(), L_OP => op)
                .increment(0);
        }
        metrics::counter!(SNAPSHOT_ROWS, L_PIPELINE => p.clone(), L_TABLE => table.clone())
            .increment(0);
        metrics::gauge!(SNAPSHOT_ROWS_ESTIMATED, L_PIPELINE => p.clone(), L_TABLE => table.clone())
            .increment(0.0);
    }
    metrics::counter!(RECONNECTS, L_COMPONENT => "source").increment(0);
}

/// Registers, at zero, every family of one sink (see [`register_source`]): applied events
/// for each op, duplicates, dead letters, pending, apply and end-to-end latency.
pub fn register_sink(pipeline: &str, sink: &str) {
    let (p, s) = (pipeline.to_owned(), sink.to_owned());
    for op in OPS {
        metrics::counter!(SINK_APPLIED, L_PIPELINE => p.clone(), L_SINK => s.clone(), L_OP => op)
            .increment(0);
    }
    metrics::counter!(SINK_DUPLICATES, L_PIPELINE => p.clone(), L_SINK => s.clone()).increment(0);
    metrics::counter!(SINK_DEAD_LETTERS, L_PIPELINE => p.clone(), L_SINK => s.clone()).increment(0);
    metrics::gauge!(SINK_PENDING, L_PIPELINE => p.clone(), L_SINK => s.clone()).increment(0.0);
    let _ = metrics::histogram!(SINK_APPLY_LATENCY, L_PIPELINE => p.clone(), L_SINK => s.clone());
    let _ = metrics::histogram!(END_TO_END_LATENCY, L_PIPELINE => p, L_SINK => s);
    metrics::counter!(RECONNECTS, L_COMPONENT => "sink").increment(0);
}

/// Counts one error of `component`/`kind` (retried or not).
pub fn error(component: &'static str, kind: &'static str) {
    metrics::counter!(ERRORS, L_COMPONENT => component, L_KIND => kind).increment(1);
}

/// Counts one reconnect of `component`.
pub fn reconnect(component: &'static str) {
    metrics::counter!(RECONNECTS, L_COMPONENT => component).increment(1);
}

/// Milliseconds since the Unix epoch, now.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}
