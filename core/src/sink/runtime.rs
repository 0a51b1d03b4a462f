//! The sink runtime: consumer → position guard → writer transactions → acks.
//!
//! One *session* is one writer connection and one consumer positioned from the target's
//! offset. Within a session messages are handled strictly in stream order:
//!
//! * dead letters (header [`DEAD_LETTER_HEADER`]) and redeliveries are skipped;
//! * events of unselected tables are skipped, but their `source.tx.last` still closes the
//!   source transaction;
//! * events at or below the position guard are skipped and counted;
//! * everything else is applied inside the open target transaction.
//!
//! The target transaction commits only at a source-transaction boundary: once it holds
//! `batch_size` events, or as soon as no further message is immediately available (low
//! latency when the stream is quiet, large commits under load). A source transaction that
//! is still arriving keeps the target transaction open for as long as it takes. Messages are
//! acknowledged after the commit; inside a very large transaction they are acknowledged early
//! as flow control only (the resume point is the stored offset, not the consumer).
//!
//! Every writer call has a deadline (`timeout_secs`): a target behind a partition answers
//! nothing and reports nothing, so the deadline is the only way to notice it.
//!
//! Any error ends the session: the open transaction is rolled back, the writer dropped, and a
//! new session starts after a backoff (short for transient errors, slow for definite ones;
//! the sink never exits on its own). A definite error while applying triggers one *isolation*
//! pass: the same messages are replayed with every event applied on its own inside a
//! savepoint, which pinpoints the poison event. With `on_error = "halt"` the sink then stops
//! there (reporting table, position and cause, retrying slowly); with `"dead_letter"` the event
//! and its error are published to the sink's dead-letter subject and the sink goes on.

use super::consumer::{self, MAX_ACK_PENDING};
use super::dead_letter::{self, DeadLetter};
use super::parse::EnvelopeParser;
use super::tracker::{Tracker, Verdict, OP_CODES};
use super::{SinkContext, SinkWriter, DEAD_LETTER_HEADER};
use crate::backoff::Backoff;
use crate::config::{table_selected, OnError};
use crate::envelope::Envelope;
use crate::error::{display_chain, Classify, Failure, Retry};
use crate::metrics as m;
use crate::subject;
use async_nats::jetstream::consumer::{pull, PullConsumer};
use futures_util::{FutureExt as _, StreamExt as _};
use std::future::Future;
use std::time::{Duration, Instant};

/// Messages requested per pull (the client asks for more when half are consumed).
const FETCH_BATCH: usize = 2000;
/// Bytes requested per pull at least: bounds prefetched memory when envelopes are large.
/// The budget grows to one whole message of the largest size the stream accepts (see
/// [`fetch_bytes`]): a pull whose byte budget is below the next message's size never
/// delivers that message, and the sink would stall without an error.
const FETCH_BYTES: usize = 4 << 20;
/// Room for the subject, reply subject and headers the server counts beside the payload.
const FETCH_SLACK: usize = 64 << 10;

/// The byte budget of one pull: at least one whole message of the largest size the stream
/// can hold (the stream's `max_msg_size`, or the server's `max_payload`, whichever is larger,
/// since a message may have come through a server with a higher limit), and never below
/// [`FETCH_BYTES`].
pub(crate) fn fetch_bytes(stream_max_msg_size: i64, server_max_payload: usize) -> usize {
    let stream = usize::try_from(stream_max_msg_size).unwrap_or(0);
    stream
        .max(server_max_payload)
        .saturating_add(FETCH_SLACK)
        .max(FETCH_BYTES)
}
/// Inside an open source transaction, acknowledge early (flow control) once this many
/// messages are unacknowledged. Must stay well below the consumer's max_ack_pending.
const FLOW_ACK: usize = (MAX_ACK_PENDING as usize) / 4;
/// Record an offset-only commit when this many skipped messages lie past the stored offset.
const OFFSET_SPAN: u64 = 10_000;
/// Housekeeping period: pending gauge, offset-only commits.
const TICK: Duration = Duration::from_secs(2);
/// How long a shutdown waits for the final commit.
const SHUTDOWN_COMMIT_TIMEOUT: Duration = Duration::from_secs(6);

/// Why a session ended.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    /// NATS / JetStream trouble (transient: the client reconnects).
    #[error("nats: {what}: {message}")]
    Nats {
        /// The operation.
        what: &'static str,
        /// Cause.
        message: String,
    },
    /// The target store failed (connection, SQL, conversion …), classified by the writer.
    #[error("target: {0}")]
    Target(Failure),
    /// A definite error while applying a group of events: replay it event by event.
    #[error("target rejected a batch, isolating the failing event: {cause}")]
    NeedsIsolation {
        /// Replay in isolation through this stream sequence.
        through: u64,
        /// The error.
        cause: Failure,
    },
    /// An event the target rejects permanently (`on_error = "halt"`).
    #[error(
        "event rejected by the target (table {table}, pos {pos}, stream seq {stream_seq}): \
         {message}; the sink is halted at this event (fix the target or set \
         on_error = \"dead_letter\")"
    )]
    Poison {
        /// `schema.table` of the event.
        table: String,
        /// Its `source.pos`.
        pos: String,
        /// Its stream sequence.
        stream_seq: u64,
        /// The target's error.
        message: String,
        /// Metric label of the cause.
        kind: &'static str,
    },
    /// A message that is not a valid envelope (`on_error = "halt"`).
    #[error("message {stream_seq} on {subject} is not a valid envelope: {message}")]
    Malformed {
        /// Stream sequence.
        stream_seq: u64,
        /// Subject.
        subject: String,
        /// Parser error.
        message: String,
    },
    /// Messages this sink had not applied are gone from the stream (purged, deleted,
    /// expired by `max_age`, or the whole stream deleted and re-created): the target misses
    /// changes, so the sink halts instead of going on as if nothing happened.
    #[error(
        "stream {stream}: {what}; the target misses those changes and this sink is halted. \
         Recover (docs/operations.md, \"JetStream stream lost\"): stop the pipeline, reset this \
         sink's offsets (DELETE FROM tidemark_offsets WHERE pipeline = '{pipeline}' AND sink = \
         '{sink}'), truncate its tables if they must be exact, re-snapshot the source (drop the \
         Postgres slot, nats kv del <state bucket> source.{pipeline}) and start again"
    )]
    StreamLost {
        /// Stream name.
        stream: String,
        /// What was found.
        what: String,
        /// Pipeline name.
        pipeline: String,
        /// Sink name.
        sink: String,
    },
    /// Shutdown fired while waiting on the target.
    #[error("shutdown while waiting for the target")]
    Aborted,
    /// One target operation took longer than the sink's `timeout_secs`.
    #[error(
        "target did not answer within {secs} s (timeout_secs); connection presumed dead \
         (server down, network partition or half-open TCP), reconnecting"
    )]
    Timeout {
        /// The limit.
        secs: u64,
    },
}

impl Classify for SinkError {
    fn retry(&self) -> Retry {
        match self {
            SinkError::Nats { .. } | SinkError::Aborted | SinkError::Timeout { .. } => {
                Retry::Transient
            }
            SinkError::Target(f) | SinkError::NeedsIsolation { cause: f, .. } => f.retry,
            SinkError::Poison { .. }
            | SinkError::Malformed { .. }
            | SinkError::StreamLost { .. } => Retry::Definite,
        }
    }
    fn kind(&self) -> &'static str {
        match self {
            SinkError::Nats { .. } => "nats",
            SinkError::Target(f) | SinkError::NeedsIsolation { cause: f, .. } => f.kind,
            SinkError::Poison { kind, .. } => kind,
            SinkError::Malformed { .. } => "malformed",
            SinkError::StreamLost { .. } => "stream_lost",
            SinkError::Aborted => "shutdown",
            SinkError::Timeout { .. } => "timeout",
        }
    }
}

/// State that outlives a session.
#[derive(Debug, Default)]
struct Shared {
    /// Apply events up to this stream sequence one by one (isolation pass).
    isolate_through: Option<u64>,
    /// A session committed something (backoffs reset).
    progressed: bool,
    /// Creation time (Unix ns) of the stream this process's sessions read: a different one
    /// means the stream was deleted and re-created under the running sink.
    stream_created: Option<i128>,
}

/// Runs one sink until `ctx.shutdown` fires, then returns `Ok(())`.
///
/// Target or NATS outages, poison events and configuration mistakes in the target are
/// handled here (retry with backoff, readiness `not_ready` with the reason, error metrics):
/// the function does not return `Err` for them. The supervisor may still treat an `Err` as
/// "restart me with backoff".
pub async fn run<W: SinkWriter>(ctx: SinkContext) -> Result<(), Failure> {
    let component = ctx.component();
    ctx.health.not_ready(&component, "starting");
    let mut shared = Shared::default();
    let mut transient = Backoff::default_server();
    let mut definite = Backoff::new(Duration::from_secs(2), Duration::from_secs(60));
    tracing::info!(
        pipeline = %ctx.pipeline.name,
        sink = %ctx.sink.name,
        target = %crate::redact::url(&ctx.sink.url),
        "sink starting"
    );
    loop {
        if ctx.shutdown.is_cancelled() {
            return Ok(());
        }
        shared.progressed = false;
        let outcome = session::<W>(&ctx, &mut shared).await;
        if shared.progressed {
            transient.reset();
            definite.reset();
        }
        let err = match outcome {
            Ok(()) => {
                tracing::info!(pipeline = %ctx.pipeline.name, sink = %ctx.sink.name, "sink stopped");
                return Ok(());
            }
            Err(SinkError::Aborted) => return Ok(()),
            Err(SinkError::NeedsIsolation { through, cause }) => {
                m::error("sink", cause.kind);
                tracing::warn!(
                    pipeline = %ctx.pipeline.name,
                    sink = %ctx.sink.name,
                    through_stream_seq = through,
                    error = %cause,
                    "target rejected a batch; replaying it event by event to find the failing event"
                );
                shared.isolate_through = Some(through.max(shared.isolate_through.unwrap_or(0)));
                continue;
            }
            Err(e) => e,
        };
        m::error("sink", err.kind());
        let message = display_chain(&err);
        ctx.health.not_ready(&component, message.clone());
        let delay = match err.retry() {
            Retry::Transient => {
                tracing::warn!(
                    pipeline = %ctx.pipeline.name,
                    sink = %ctx.sink.name,
                    kind = err.kind(),
                    error = %message,
                    "sink interrupted; retrying"
                );
                transient.next_delay()
            }
            Retry::Definite => {
                tracing::error!(
                    pipeline = %ctx.pipeline.name,
                    sink = %ctx.sink.name,
                    kind = err.kind(),
                    error = %message,
                    "sink halted; retrying slowly until the cause is fixed"
                );
                definite.next_delay()
            }
        };
        tokio::select! {
            _ = ctx.shutdown.cancelled() => return Ok(()),
            _ = tokio::time::sleep(delay) => {}
        }
        m::reconnect("sink");
    }
}

/// Metric handles of one sink.
struct Meters {
    applied: [metrics::Counter; 5],
    duplicates: metrics::Counter,
    dead_letters: metrics::Counter,
    pending: metrics::Gauge,
    apply_latency: metrics::Histogram,
    end_to_end: metrics::Histogram,
}

impl Meters {
    fn new(pipeline: &str, sink: &str) -> Meters {
        let (p, s) = (pipeline.to_owned(), sink.to_owned());
        let applied = OP_CODES.map(|op| {
            metrics::counter!(m::SINK_APPLIED, m::L_PIPELINE => p.clone(), m::L_SINK => s.clone(), m::L_OP => op)
        });
        Meters {
            applied,
            duplicates: metrics::counter!(m::SINK_DUPLICATES, m::L_PIPELINE => p.clone(), m::L_SINK => s.clone()),
            dead_letters: metrics::counter!(m::SINK_DEAD_LETTERS, m::L_PIPELINE => p.clone(), m::L_SINK => s.clone()),
            pending: metrics::gauge!(m::SINK_PENDING, m::L_PIPELINE => p.clone(), m::L_SINK => s.clone()),
            apply_latency: metrics::histogram!(m::SINK_APPLY_LATENCY, m::L_PIPELINE => p.clone(), m::L_SINK => s.clone()),
            end_to_end: metrics::histogram!(m::END_TO_END_LATENCY, m::L_PIPELINE => p, m::L_SINK => s),
        }
    }
}

async fn session<W: SinkWriter>(ctx: &SinkContext, shared: &mut Shared) -> Result<(), SinkError> {
    let target = |e: W::Error| SinkError::Target(Failure::from_err(e));
    let mut writer = guarded(ctx, W::connect(&ctx.sink, &ctx.pipeline))
        .await?
        .map_err(target)?;
    let stored = guarded(ctx, writer.read_offset()).await?.map_err(target)?;
    let consumer_name = subject::consumer_name(&ctx.pipeline.name, &ctx.sink.name);
    let filter = subject::pipeline_wildcard(&ctx.pipeline.subject_prefix, &ctx.pipeline.name);
    let (consumer, max_msg_size) = consumer::prepare(
        &ctx.js,
        &ctx.pipeline.stream_name(),
        &consumer_name,
        &filter,
        stored.as_ref(),
        &mut shared.stream_created,
    )
    .await
    .map_err(|e| match e {
        SinkError::StreamLost { stream, what, .. } => SinkError::StreamLost {
            stream,
            what,
            pipeline: ctx.pipeline.name.clone(),
            sink: ctx.sink.name.clone(),
        },
        e => e,
    })?;
    let fetch = fetch_bytes(max_msg_size, ctx.js.client().max_payload());
    let messages = consumer
        .stream()
        .max_messages_per_batch(FETCH_BATCH)
        .max_bytes_per_batch(fetch)
        .expires(Duration::from_secs(30))
        .heartbeat(Duration::from_secs(5))
        .messages()
        .await
        .map_err(|e| SinkError::Nats {
            what: "start consuming",
            message: e.to_string(),
        })?;
    tracing::info!(
        pipeline = %ctx.pipeline.name,
        sink = %ctx.sink.name,
        consumer = %consumer_name,
        pos = stored.as_ref().and_then(|o| o.pos.as_deref()).unwrap_or("-"),
        fetch_bytes = fetch,
        stream_seq = stored.as_ref().map_or(0, |o| o.stream_seq),
        isolating_through = shared.isolate_through.unwrap_or(0),
        "sink session started"
    );
    let mut s = Session {
        ctx,
        writer,
        t: Tracker::new(stored),
        acks: Acks::default(),
        parser: EnvelopeParser::default(),
        client: ctx.js.client(),
        meters: Meters::new(&ctx.pipeline.name, &ctx.sink.name),
        shared,
        component: ctx.component(),
        ready: false,
        txn_started: Instant::now(),
        last_offset_write: Instant::now(),
    };
    let result = s.run(messages, &consumer).await;
    if result.is_err() && s.t.open {
        // Best effort: the connection is dropped right after, which rolls back as well.
        let _ = tokio::time::timeout(Duration::from_secs(5), s.writer.rollback()).await;
    }
    result
}

/// Runs `fut` (a writer call) unless shutdown fires first; gives up after the sink's
/// `timeout_secs`: a partition or half-open connection never answers and never errors, so
/// only a deadline gets the sink out of it.
async fn guarded<T>(ctx: &SinkContext, fut: impl Future<Output = T>) -> Result<T, SinkError> {
    let secs = ctx.sink.timeout_secs;
    tokio::select! {
        _ = ctx.shutdown.cancelled() => Err(SinkError::Aborted),
        v = tokio::time::timeout(Duration::from_secs(secs), fut) => {
            v.map_err(|_| SinkError::Timeout { secs })
        }
    }
}

/// Messages processed but not acknowledged yet. The consumer's ack policy is `All`: acking
/// the latest delivered message acknowledges every earlier one, so only its reply subject is
/// kept (one ack publish per commit instead of one per message).
#[derive(Debug, Default)]
struct Acks {
    /// Reply subject of the latest processed message (the highest delivery sequence).
    latest: Option<async_nats::Subject>,
    /// Messages processed since the last ack.
    count: usize,
}

impl Acks {
    fn push(&mut self, reply: Option<async_nats::Subject>) {
        if let Some(r) = reply {
            self.latest = Some(r);
            self.count += 1;
        }
    }

    fn is_empty(&self) -> bool {
        self.count == 0
    }

    fn len(&self) -> usize {
        self.count
    }

    fn clear(&mut self) {
        self.latest = None;
        self.count = 0;
    }

    fn take(&mut self) -> Option<async_nats::Subject> {
        self.count = 0;
        self.latest.take()
    }
}

struct Session<'a, W: SinkWriter> {
    ctx: &'a SinkContext,
    writer: W,
    t: Tracker,
    /// Messages processed but not yet acknowledged.
    acks: Acks,
    /// Envelope parser with its schema-block cache.
    parser: EnvelopeParser,
    client: async_nats::Client,
    meters: Meters,
    shared: &'a mut Shared,
    component: String,
    /// Readiness reported in this session.
    ready: bool,
    txn_started: Instant,
    last_offset_write: Instant,
}

impl<W: SinkWriter> Session<'_, W> {
    async fn run(
        &mut self,
        mut messages: pull::Stream,
        consumer: &PullConsumer,
    ) -> Result<(), SinkError> {
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let closable =
                self.t.at_boundary() && (self.t.open || !self.acks.is_empty() || !self.ready);
            let next = if closable {
                if tick.tick().now_or_never().is_some() {
                    self.on_tick(consumer).await?;
                }
                match messages.next().now_or_never() {
                    Some(next) => next,
                    None => {
                        self.on_idle().await?;
                        continue;
                    }
                }
            } else {
                tokio::select! {
                    biased;
                    _ = self.ctx.shutdown.cancelled() => return self.shutdown().await,
                    _ = tick.tick() => {
                        self.on_tick(consumer).await?;
                        continue;
                    }
                    next = messages.next() => next,
                }
            };
            if self.ctx.shutdown.is_cancelled() {
                return self.shutdown().await;
            }
            match next {
                Some(Ok(msg)) => self.handle(msg).await?,
                Some(Err(e)) => {
                    return Err(SinkError::Nats {
                        what: "consume",
                        message: e.to_string(),
                    })
                }
                None => {
                    return Err(SinkError::Nats {
                        what: "consume",
                        message: "message stream ended".into(),
                    })
                }
            }
        }
    }

    fn isolating(&self, seq: u64) -> bool {
        self.shared.isolate_through.is_some_and(|t| seq <= t)
    }

    /// Classifies a writer error raised while events are in the open transaction.
    fn apply_error(&self, e: W::Error) -> SinkError {
        let cause = Failure::from_err(e);
        let already = self
            .shared
            .isolate_through
            .is_some_and(|t| t >= self.t.last_seq);
        if cause.retry == Retry::Definite && !already {
            SinkError::NeedsIsolation {
                through: self.t.last_seq,
                cause,
            }
        } else {
            SinkError::Target(cause)
        }
    }

    async fn handle(&mut self, msg: async_nats::jetstream::Message) -> Result<(), SinkError> {
        let seq = msg
            .info()
            .map_err(|e| SinkError::Nats {
                what: "message metadata",
                message: e.to_string(),
            })?
            .stream_sequence;
        let reply = msg.reply.clone();
        if self.t.last_seq > 0 && seq > self.t.last_seq + 1 {
            // The consumer's filter covers every subject of the stream, so sequences arrive
            // without holes, unless deliveries were lost on a broken connection (the server
            // then redelivers them only after ack_wait, after later ones) or messages were
            // removed. Either way, never go on past a hole: restart the session at the stored
            // offset, where `consumer::prepare` tells a removal (definite) from a lost delivery.
            return Err(SinkError::Nats {
                what: "consume",
                message: format!(
                    "stream sequence jumped from {} to {seq} (deliveries lost on a broken \
                     connection, or messages removed); restarting at the stored position",
                    self.t.last_seq
                ),
            });
        }
        if self.t.see(seq).is_some() {
            // Redelivered after ack_wait while its transaction was still open: already handled.
            self.push_ack(reply);
            return Ok(());
        }
        let dead_letter = msg
            .headers
            .as_ref()
            .and_then(|h| h.get(DEAD_LETTER_HEADER))
            .is_some();
        if dead_letter {
            self.t.neutral(seq);
            self.push_ack(reply);
            return self.after_message().await;
        }
        let policy = msg
            .headers
            .as_ref()
            .and_then(|h| h.get(crate::oversize::OVERSIZE_HEADER))
            .map(|v| v.as_str().to_owned());
        let resolved = match policy {
            None => None,
            Some(policy) => match self.oversize(seq, &msg, &policy).await? {
                Some(payload) => Some(payload),
                None => {
                    self.push_ack(reply);
                    return self.after_message().await;
                }
            },
        };
        let payload: &[u8] = resolved.as_deref().unwrap_or(&msg.payload);
        let env = match self.parser.parse(payload) {
            Ok(env) => env,
            Err(e) => {
                let error = format!("not a valid envelope: {e}");
                match self.ctx.sink.on_error {
                    OnError::Halt => {
                        return Err(SinkError::Malformed {
                            stream_seq: seq,
                            subject: msg.subject.to_string(),
                            message: e.to_string(),
                        })
                    }
                    OnError::DeadLetter => {
                        m::error("sink", "malformed");
                        let table = self.table_of_subject(msg.subject.as_str());
                        self.dead_letter(seq, msg.subject.as_str(), &table, &msg.payload, &error)
                            .await?;
                        self.t.neutral(seq);
                        self.push_ack(reply);
                        return self.after_message().await;
                    }
                }
            }
        };
        let src = &env.source;
        if self.t.tx_switch(&src.tx.id) {
            tracing::warn!(
                pipeline = %self.ctx.pipeline.name,
                sink = %self.ctx.sink.name,
                open_tx = self.t.in_tx.as_deref().unwrap_or(""),
                new_tx = %src.tx.id,
                stream_seq = seq,
                "a new source transaction began before the previous one's last event; \
                 treating the previous one as complete"
            );
            self.t.close_tx_before(seq);
            if self.t.open && self.t.applied >= self.ctx.sink.batch_size {
                self.commit().await?;
            }
        }
        let selected = table_selected(&self.ctx.sink.tables, &src.schema, &src.table);
        let verdict = self
            .t
            .event(seq, selected, &src.pos, &src.tx.id, src.tx.last);
        match verdict {
            Verdict::Duplicate => self.meters.duplicates.increment(1),
            Verdict::Apply => {
                if !self.t.open {
                    self.begin().await?;
                }
                let applied = if self.isolating(seq) {
                    self.apply_isolated(seq, &msg, &env).await?
                } else {
                    match guarded(self.ctx, self.writer.apply(&env)).await? {
                        Ok(()) => true,
                        Err(e) => return Err(self.apply_error(e)),
                    }
                };
                if applied {
                    self.t
                        .applied(&src.pos, env.op, src.tx.last, src.snapshot, src.ts_ms);
                }
            }
            _ => {}
        }
        self.push_ack(reply);
        self.after_message().await
    }

    /// A message the source's `oversize` policy replaced. A reference: returns the envelope
    /// fetched from the object store. A dead-letter marker (or a reference that cannot be
    /// resolved under `on_error = "dead_letter"`): the change is skipped like an event of an
    /// unselected table (its transaction end still counts) and `None` is returned.
    async fn oversize(
        &mut self,
        seq: u64,
        msg: &async_nats::jetstream::Message,
        policy: &str,
    ) -> Result<Option<bytes::Bytes>, SinkError> {
        use crate::oversize::{self as ov, Marker, ResolveError};
        let malformed = |message: String| SinkError::Malformed {
            stream_seq: seq,
            subject: msg.subject.to_string(),
            message,
        };
        let marker = Marker::parse(&msg.payload)
            .map_err(|e| malformed(format!("not a valid {policy} marker: {e}")))?;
        let failed = if policy == ov::REFERENCE {
            match ov::resolve(&self.ctx.js, &marker).await {
                Ok(payload) => return Ok(Some(payload)),
                Err(ResolveError::Nats(message)) => {
                    return Err(SinkError::Nats {
                        what: "fetch an oversize event",
                        message,
                    })
                }
                Err(ResolveError::Missing(message)) => {
                    if self.ctx.sink.on_error == OnError::Halt {
                        return Err(malformed(format!("unresolvable reference: {message}")));
                    }
                    m::error("sink", "oversize");
                    let table = format!("{}.{}", marker.source.schema, marker.source.table);
                    self.dead_letter(seq, msg.subject.as_str(), &table, &msg.payload, &message)
                        .await?;
                    Some(message)
                }
            }
        } else {
            None
        };
        let src = &marker.source;
        if self.t.tx_switch(&src.tx.id) {
            self.t.close_tx_before(seq);
            if self.t.open && self.t.applied >= self.ctx.sink.batch_size {
                self.commit().await?;
            }
        }
        self.t.event(seq, false, &src.pos, &src.tx.id, src.tx.last);
        tracing::warn!(
            pipeline = %self.ctx.pipeline.name,
            sink = %self.ctx.sink.name,
            table = %format!("{}.{}", src.schema, src.table),
            pos = %src.pos,
            size = marker.oversize.size,
            stream_seq = seq,
            error = failed.as_deref().unwrap_or("-"),
            "skipped a change the source could not publish (too large for NATS, oversize = {policy})"
        );
        Ok(None)
    }

    /// Applies one event on its own; `Ok(false)` when it was dead-lettered.
    async fn apply_isolated(
        &mut self,
        seq: u64,
        msg: &async_nats::jetstream::Message,
        env: &Envelope,
    ) -> Result<bool, SinkError> {
        let err = match guarded(self.ctx, self.writer.apply_isolated(env)).await? {
            Ok(()) => return Ok(true),
            Err(e) => Failure::from_err(e),
        };
        if err.retry == Retry::Transient {
            return Err(SinkError::Target(err));
        }
        let table = format!("{}.{}", env.source.schema, env.source.table);
        match self.ctx.sink.on_error {
            OnError::Halt => Err(SinkError::Poison {
                table,
                pos: env.source.pos.clone(),
                stream_seq: seq,
                message: display_chain(&err),
                kind: err.kind,
            }),
            OnError::DeadLetter => {
                m::error("sink", err.kind);
                let error = format!(
                    "table {table}, pos {}, op {}: {}",
                    env.source.pos,
                    env.op.code(),
                    display_chain(&err)
                );
                // dead_letter logs it (WARN, or ERROR if the dead letter cannot be published).
                self.dead_letter(seq, msg.subject.as_str(), &table, &msg.payload, &error)
                    .await?;
                Ok(false)
            }
        }
    }

    async fn dead_letter(
        &mut self,
        seq: u64,
        subject_name: &str,
        table: &str,
        payload: &[u8],
        error: &str,
    ) -> Result<(), SinkError> {
        let p = &self.ctx.pipeline;
        let to = subject::dead_letter_subject(&p.subject_prefix, &p.name, &self.ctx.sink.name);
        let letter = DeadLetter {
            pipeline: &p.name,
            sink: &self.ctx.sink.name,
            stream_seq: seq,
            subject: subject_name,
            table,
            payload,
            error,
        };
        dead_letter::publish(&self.ctx.js, &to, &letter).await?;
        self.meters.dead_letters.increment(1);
        Ok(())
    }

    /// `schema.table` as the subject spells it (`<prefix>.<pipeline>.<schema>.<table>`), for
    /// a message whose envelope could not be read.
    fn table_of_subject(&self, subject_name: &str) -> String {
        let p = &self.ctx.pipeline;
        let all = subject::pipeline_wildcard(&p.subject_prefix, &p.name);
        all.strip_suffix('>')
            .and_then(|head| subject_name.strip_prefix(head))
            .unwrap_or("unknown")
            .to_owned()
    }

    /// Commit / ack decisions after each message.
    async fn after_message(&mut self) -> Result<(), SinkError> {
        if self.t.at_boundary() {
            if self.t.open {
                // While isolating, every source transaction commits on its own, so a halt at a
                // poison event keeps everything before its transaction.
                if self.t.applied >= self.ctx.sink.batch_size || self.isolating(self.t.last_seq) {
                    self.commit().await?;
                }
            } else if self.t.uncommitted_span() >= OFFSET_SPAN {
                self.commit().await?;
            } else if self.acks.len() >= FLOW_ACK {
                // Skipped messages only: ack them in bulk, not one by one.
                self.flush_acks().await?;
            }
        } else if self.acks.len() >= FLOW_ACK {
            // Flow control inside a large source transaction; the stored offset stays the
            // resume point.
            self.flush_acks().await?;
        }
        Ok(())
    }

    /// Nothing is immediately available and no source transaction is half-received.
    async fn on_idle(&mut self) -> Result<(), SinkError> {
        let offset_due = self.t.uncommitted_span() > 0 && self.last_offset_write.elapsed() >= TICK;
        if self.t.open || offset_due {
            self.commit().await?;
        }
        self.flush_acks().await?;
        if !self.ready {
            self.mark_ready();
        }
        Ok(())
    }

    async fn on_tick(&mut self, consumer: &PullConsumer) -> Result<(), SinkError> {
        // The client reconnects by itself and the pull stream just waits meanwhile: end the
        // session so the sink reports not-ready while NATS is away.
        if self.client.connection_state() != async_nats::connection::State::Connected {
            return Err(SinkError::Nats {
                what: "connection",
                message: "lost the connection to NATS; the client is reconnecting".into(),
            });
        }
        if let Ok(Ok(info)) =
            tokio::time::timeout(Duration::from_secs(2), consumer.get_info()).await
        {
            self.meters
                .pending
                .set((info.num_pending as f64) + (info.num_ack_pending as f64));
        }
        if self.t.at_boundary()
            && !self.t.open
            && self.t.uncommitted_span() > 0
            && self.last_offset_write.elapsed() >= TICK
        {
            self.commit().await?;
        }
        if self.t.open && !self.t.at_boundary() {
            tracing::debug!(
                pipeline = %self.ctx.pipeline.name,
                sink = %self.ctx.sink.name,
                open_secs = self.txn_started.elapsed().as_secs(),
                events = self.t.applied,
                "waiting for the rest of a source transaction"
            );
        }
        Ok(())
    }

    fn mark_ready(&mut self) {
        self.ready = true;
        self.ctx.health.ready(&self.component);
    }

    async fn begin(&mut self) -> Result<(), SinkError> {
        guarded(self.ctx, self.writer.begin())
            .await?
            .map_err(|e| SinkError::Target(Failure::from_err(e)))?;
        self.t.open = true;
        self.txn_started = Instant::now();
        Ok(())
    }

    /// Commits the open transaction (opening one for an offset-only commit), then acks.
    async fn commit(&mut self) -> Result<(), SinkError> {
        if !self.t.open {
            self.begin().await?;
        }
        let offset = self.t.next_offset();
        let res = guarded(
            self.ctx,
            self.writer.commit(&offset, self.t.committed.as_ref()),
        )
        .await?;
        if let Err(e) = res {
            return Err(self.apply_error(e));
        }
        self.finish_commit(offset).await
    }

    async fn finish_commit(&mut self, offset: super::Offset) -> Result<(), SinkError> {
        let now = crate::metrics::now_ms();
        self.meters
            .apply_latency
            .record(self.txn_started.elapsed().as_secs_f64());
        for (i, n) in self.t.ops.iter().enumerate() {
            if *n > 0 {
                if let Some(c) = self.meters.applied.get(i) {
                    c.increment(*n);
                }
            }
        }
        for ts in &self.t.source_ts {
            self.meters
                .end_to_end
                .record(((now - ts).max(0) as f64) / 1000.0);
        }
        tracing::debug!(
            pipeline = %self.ctx.pipeline.name,
            sink = %self.ctx.sink.name,
            events = self.t.applied,
            stream_seq = offset.stream_seq,
            pos = offset.pos.as_deref().unwrap_or("-"),
            "committed"
        );
        if self
            .shared
            .isolate_through
            .is_some_and(|t| offset.stream_seq >= t)
        {
            self.shared.isolate_through = None;
        }
        self.t.committed(offset);
        self.last_offset_write = Instant::now();
        self.shared.progressed = true;
        self.flush_acks().await?;
        if !self.ready {
            self.mark_ready();
        }
        Ok(())
    }

    fn push_ack(&mut self, reply: Option<async_nats::Subject>) {
        self.acks.push(reply);
    }

    /// Acknowledges every message processed so far with one ack of the latest (the consumer's
    /// ack policy is `All`).
    async fn flush_acks(&mut self) -> Result<(), SinkError> {
        if let Some(reply) = self.acks.take() {
            self.client
                .publish(reply, bytes::Bytes::from_static(b"+ACK"))
                .await
                .map_err(|e| SinkError::Nats {
                    what: "ack",
                    message: e.to_string(),
                })?;
        }
        Ok(())
    }

    /// Shutdown: commit if the open transaction is complete, else roll back; ack; flush.
    async fn shutdown(&mut self) -> Result<(), SinkError> {
        if self.t.open {
            if self.t.at_boundary() {
                let offset = self.t.next_offset();
                let res = tokio::time::timeout(
                    SHUTDOWN_COMMIT_TIMEOUT,
                    self.writer.commit(&offset, self.t.committed.as_ref()),
                )
                .await;
                match res {
                    Ok(Ok(())) => self.finish_commit(offset).await?,
                    Ok(Err(e)) => {
                        let f = Failure::from_err(e);
                        tracing::warn!(sink = %self.ctx.sink.name, error = %f, "final commit failed; it is replayed on restart");
                        self.acks.clear();
                        self.t.reset_txn();
                    }
                    Err(_) => {
                        tracing::warn!(sink = %self.ctx.sink.name, "final commit timed out; it is replayed on restart");
                        self.acks.clear();
                        self.t.reset_txn();
                    }
                }
            } else {
                let _ = tokio::time::timeout(SHUTDOWN_COMMIT_TIMEOUT, self.writer.rollback()).await;
                self.acks.clear();
                self.t.reset_txn();
            }
        } else if self.t.at_boundary() {
            self.flush_acks().await?;
        }
        let _ = tokio::time::timeout(Duration::from_secs(2), self.client.flush()).await;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fetch_budget_holds_one_whole_message() {
        // Default server (1 MB), no stream limit: the 4 MiB floor.
        assert_eq!(fetch_bytes(-1, 1 << 20), FETCH_BYTES);
        // A raised max_payload: one whole message of that size, plus room for headers.
        assert_eq!(fetch_bytes(0, 8 << 20), (8 << 20) + FETCH_SLACK);
        // A stream that accepts more than this server (another server published it).
        assert_eq!(fetch_bytes(64 << 20, 8 << 20), (64 << 20) + FETCH_SLACK);
    }
}
