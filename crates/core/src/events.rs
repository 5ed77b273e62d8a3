//! The lifecycle timeline (CONTRACT.md, Events): every service records what it does as events
//! in its own database, stamped with simulated time and the correlation id of the request chain.
//!
//! Recording is cheap on hot paths: an event gets its sequence number and time at once and is
//! handed to a writer task that inserts in batches (multi-row statements, no secondary indexes).
//! Readers (and the live stream, which polls) see it once written. Retention is bounded per
//! service.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use sqlx::SqlitePool;
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use tokio::sync::{Notify, mpsc, oneshot};

use crate::Clock;

tokio::task_local! {
    /// The correlation id of the request being served (or of the outbox work being delivered).
    static CORRELATION: String;
}

/// Runs `future` with `id` as the current correlation id.
pub async fn with_correlation<F: std::future::Future>(id: String, future: F) -> F::Output {
    CORRELATION.scope(id, future).await
}

/// The current correlation id, if a request chain set one.
pub fn current_correlation() -> Option<String> {
    CORRELATION.try_with(Clone::clone).ok()
}

/// Header that carries the correlation id across misim's own service hops.
pub const CORRELATION_HEADER: &str = "x-ms-correlation-request-id";

/// Axum middleware: serves the request inside its correlation id, taken from the caller
/// (`x-ms-correlation-request-id`, else `client-request-id` / `x-ms-client-request-id` when
/// they are GUIDs) or made fresh.
pub async fn correlate(
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let id = [
        CORRELATION_HEADER,
        "client-request-id",
        "x-ms-client-request-id",
    ]
    .iter()
    .find_map(|name| {
        request
            .headers()
            .get(*name)
            .and_then(|v| v.to_str().ok())
            .filter(|v| uuid::Uuid::parse_str(v).is_ok())
            .map(str::to_string)
    })
    .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
    with_correlation(id, next.run(request)).await
}

/// Adds the current correlation id to a call to a peer service.
pub fn propagate(request: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
    match current_correlation() {
        Some(id) => request.header(CORRELATION_HEADER, id),
        None => request,
    }
}

/// A response body fed by a channel (server-sent events): it ends when the sender is dropped,
/// and dropping it (the client went away) tells the sender to stop.
pub fn channel_body(receiver: mpsc::Receiver<bytes::Bytes>) -> axum::body::Body {
    axum::body::Body::new(ChannelBody { receiver })
}

struct ChannelBody {
    receiver: mpsc::Receiver<bytes::Bytes>,
}

impl http_body::Body for ChannelBody {
    type Data = bytes::Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        self.receiver
            .poll_recv(cx)
            .map(|chunk| chunk.map(|bytes| Ok(http_body::Frame::data(bytes))))
    }
}

/// One recorded step.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Event {
    /// Order within its service.
    pub seq: i64,
    /// Simulated time, RFC 3339.
    pub time: String,
    pub service: String,
    pub kind: String,
    pub correlation_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vm_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub principal_id: Option<String>,
    /// One readable sentence.
    pub summary: String,
    #[serde(default, skip_serializing_if = "Value::is_null")]
    pub details: Value,
}

/// What a service says happened; the log adds sequence, time, service and correlation.
#[derive(Debug, Clone, Default)]
pub struct Draft {
    pub kind: &'static str,
    pub summary: String,
    pub vm_id: Option<String>,
    pub resource_id: Option<String>,
    pub principal_id: Option<String>,
    pub details: Value,
}

impl Draft {
    pub fn new(kind: &'static str, summary: impl Into<String>) -> Self {
        Self {
            kind,
            summary: summary.into(),
            ..Self::default()
        }
    }

    pub fn vm(mut self, vm_id: impl Into<String>) -> Self {
        self.vm_id = Some(vm_id.into());
        self
    }

    pub fn resource(mut self, resource_id: impl Into<String>) -> Self {
        self.resource_id = Some(resource_id.into());
        self
    }

    pub fn principal(mut self, principal_id: impl Into<String>) -> Self {
        self.principal_id = Some(principal_id.into());
        self
    }

    pub fn details(mut self, details: Value) -> Self {
        self.details = details;
        self
    }
}

/// Which events a reader wants. Matching on VM: its id, its resource id, or a principal.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct EventFilter {
    /// Only events after this sequence number.
    pub after: i64,
    pub vm_id: Option<String>,
    pub resource_id: Option<String>,
    pub principals: Vec<String>,
    /// A kind, or a prefix ending in `.` (`imds.`).
    pub kind: Option<String>,
    pub correlation_id: Option<String>,
    pub limit: i64,
}

pub const DEFAULT_LIMIT: i64 = 1000;
pub const MAX_LIMIT: i64 = 10_000;

impl EventFilter {
    /// From a query string's parameters (`after`, `vm_id`, `resource_id`, `principal` (comma
    /// list), `kind`, `correlation_id`, `limit`).
    pub fn from_query(query: &HashMap<String, String>) -> Result<Self, String> {
        let number = |name: &str, default: i64, max: i64| -> Result<i64, String> {
            match query.get(name) {
                None => Ok(default),
                Some(text) => text
                    .parse::<i64>()
                    .ok()
                    .filter(|n| (0..=max).contains(n))
                    .ok_or_else(|| format!("'{name}' must be a number from 0 to {max}")),
            }
        };
        let text = |name: &str| query.get(name).filter(|v| !v.is_empty()).cloned();
        Ok(Self {
            after: number("after", 0, i64::MAX)?,
            vm_id: text("vm_id"),
            resource_id: text("resource_id"),
            principals: query
                .get("principal")
                .map(|p| {
                    p.split(',')
                        .filter(|s| !s.is_empty())
                        .map(str::to_string)
                        .collect()
                })
                .unwrap_or_default(),
            kind: text("kind"),
            correlation_id: text("correlation_id"),
            limit: match number("limit", DEFAULT_LIMIT, MAX_LIMIT)? {
                0 => DEFAULT_LIMIT,
                n => n,
            },
        })
    }

    /// The same filter as query parameters (for a peer's internal events API).
    pub fn to_query(&self, after: i64) -> Vec<(&'static str, String)> {
        let mut query = vec![
            ("after", after.to_string()),
            ("limit", self.limit.to_string()),
        ];
        for (name, value) in [
            ("vm_id", &self.vm_id),
            ("resource_id", &self.resource_id),
            ("kind", &self.kind),
            ("correlation_id", &self.correlation_id),
        ] {
            if let Some(value) = value {
                query.push((name, value.clone()));
            }
        }
        if !self.principals.is_empty() {
            query.push(("principal", self.principals.join(",")));
        }
        query
    }

    fn is_about_vm(&self) -> bool {
        self.vm_id.is_some() || self.resource_id.is_some() || !self.principals.is_empty()
    }

    /// Whether `event` passes (for live subscribers; the store filters in SQL).
    pub fn matches(&self, event: &Event) -> bool {
        let eq = |a: &Option<String>, b: &Option<String>| matches!((a, b), (Some(a), Some(b)) if a.eq_ignore_ascii_case(b));
        if event.seq <= self.after {
            return false;
        }
        if self.is_about_vm()
            && !(eq(&self.vm_id, &event.vm_id)
                || eq(&self.resource_id, &event.resource_id)
                || event
                    .principal_id
                    .as_ref()
                    .is_some_and(|p| self.principals.iter().any(|q| q.eq_ignore_ascii_case(p))))
        {
            return false;
        }
        if let Some(kind) = &self.kind {
            let hit = if kind.ends_with('.') {
                event.kind.starts_with(kind.as_str())
            } else {
                &event.kind == kind
            };
            if !hit {
                return false;
            }
        }
        if let Some(correlation) = &self.correlation_id
            && !correlation.eq_ignore_ascii_case(&event.correlation_id)
        {
            return false;
        }
        true
    }
}

enum Message {
    Event(Box<Event>),
    Flush(oneshot::Sender<()>),
}

/// A service's event log.
#[derive(Clone)]
pub struct EventLog {
    inner: Arc<Inner>,
}

struct Inner {
    service: &'static str,
    clock: Arc<Clock>,
    seq: AtomicI64,
    recording: std::sync::atomic::AtomicBool,
    writer: mpsc::UnboundedSender<Message>,
    /// Ends the writer's gathering window early: a reader waits for what is recorded.
    flush_requested: Arc<Notify>,
    pool: SqlitePool,
}

/// Events kept per service; older ones are pruned.
pub const DEFAULT_RETENTION: i64 = 50_000;

impl EventLog {
    /// Opens the log on the service's database (table `events`) and starts its writer.
    pub async fn open(
        pool: SqlitePool,
        service: &'static str,
        clock: Arc<Clock>,
        retention: i64,
    ) -> Result<Self, sqlx::Error> {
        let last: Option<i64> = sqlx::query_scalar("SELECT MAX(seq) FROM events")
            .fetch_one(&pool)
            .await?;
        let (writer, queue) = mpsc::unbounded_channel();
        let flush_requested = Arc::new(Notify::new());
        tokio::spawn(write_events(
            pool.clone(),
            queue,
            flush_requested.clone(),
            retention.max(100),
        ));
        Ok(Self {
            inner: Arc::new(Inner {
                service,
                clock,
                seq: AtomicI64::new(last.unwrap_or(0)),
                recording: std::sync::atomic::AtomicBool::new(true),
                writer,
                flush_requested,
                pool,
            }),
        })
    }

    pub fn service(&self) -> &'static str {
        self.inner.service
    }

    /// Records a step; the correlation id is the current request chain's (or a new one).
    pub fn record(&self, draft: Draft) {
        if !self.inner.recording.load(Ordering::Relaxed) {
            return;
        }
        let correlation_id =
            current_correlation().unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
        self.record_with(draft, correlation_id);
    }

    /// Turns recording off or on: only benchmarks do, to measure what recording costs.
    pub fn set_recording(&self, on: bool) {
        self.inner.recording.store(on, Ordering::Relaxed);
    }

    pub fn record_with(&self, draft: Draft, correlation_id: String) {
        let seq = self.inner.seq.fetch_add(1, Ordering::AcqRel) + 1;
        let time = self.inner.clock.now_rfc3339();
        let event = Event {
            seq,
            time,
            service: self.inner.service.to_string(),
            kind: draft.kind.to_string(),
            correlation_id,
            vm_id: draft.vm_id,
            resource_id: draft.resource_id,
            principal_id: draft.principal_id,
            summary: one_line(draft.summary),
            details: draft.details,
        };
        let _ = self.inner.writer.send(Message::Event(Box::new(event)));
    }

    /// Everything recorded so far has reached the database.
    pub async fn flush(&self) {
        let (done, wait) = oneshot::channel();
        if self.inner.writer.send(Message::Flush(done)).is_ok() {
            // Ends the writer's gathering window. `notify_one` keeps a permit when the writer is
            // not waiting yet (inserting, or between its queue and its sleep), so the flush is
            // never missed; a permit left over only cuts one later window short.
            self.inner.flush_requested.notify_one();
            let _ = wait.await;
        }
    }

    /// Stored events passing `filter`, oldest first.
    pub async fn list(&self, filter: &EventFilter) -> Result<Vec<Event>, sqlx::Error> {
        self.flush().await;
        let mut query = sqlx::QueryBuilder::new(
            "SELECT seq, time, kind, correlation_id, vm_id, resource_id, principal_id, summary, details FROM events WHERE seq > ",
        );
        query.push_bind(filter.after);
        if filter.is_about_vm() {
            query.push(" AND (0");
            if let Some(vm) = &filter.vm_id {
                query
                    .push(" OR vm_id = ")
                    .push_bind(vm.clone())
                    .push(" COLLATE NOCASE");
            }
            if let Some(resource) = &filter.resource_id {
                query
                    .push(" OR resource_id = ")
                    .push_bind(resource.clone())
                    .push(" COLLATE NOCASE");
            }
            for principal in &filter.principals {
                query
                    .push(" OR principal_id = ")
                    .push_bind(principal.clone())
                    .push(" COLLATE NOCASE");
            }
            query.push(")");
        }
        if let Some(kind) = &filter.kind {
            if kind.ends_with('.') {
                query
                    .push(" AND substr(kind, 1, length(")
                    .push_bind(kind.clone())
                    .push(")) = ")
                    .push_bind(kind.clone());
            } else {
                query.push(" AND kind = ").push_bind(kind.clone());
            }
        }
        if let Some(correlation) = &filter.correlation_id {
            query
                .push(" AND correlation_id = ")
                .push_bind(correlation.clone())
                .push(" COLLATE NOCASE");
        }
        query
            .push(" ORDER BY seq LIMIT ")
            .push_bind(filter.limit.clamp(1, MAX_LIMIT));
        let rows: Vec<EventRow> = query.build_query_as().fetch_all(&self.inner.pool).await?;
        Ok(rows
            .into_iter()
            .map(|row| row.into_event(self.inner.service))
            .collect())
    }
}

#[derive(sqlx::FromRow)]
struct EventRow {
    seq: i64,
    time: String,
    kind: String,
    correlation_id: String,
    vm_id: Option<String>,
    resource_id: Option<String>,
    principal_id: Option<String>,
    summary: String,
    details: String,
}

impl EventRow {
    fn into_event(self, service: &str) -> Event {
        Event {
            seq: self.seq,
            time: self.time,
            service: service.to_string(),
            kind: self.kind,
            correlation_id: self.correlation_id,
            vm_id: self.vm_id,
            resource_id: self.resource_id,
            principal_id: self.principal_id,
            summary: self.summary,
            details: serde_json::from_str(&self.details).unwrap_or(Value::Null),
        }
    }
}

/// A summary on one line with single spaces: upstream messages (AADSTS) carry CR/LF.
fn one_line(summary: String) -> String {
    let regular = !summary.starts_with(' ')
        && !summary.ends_with(' ')
        && !summary.contains("  ")
        && summary.chars().all(|c| c == ' ' || !c.is_whitespace());
    if regular {
        return summary;
    }
    summary.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// How long the writer gathers events before a transaction, and the most it writes in one.
const BATCH_WINDOW: std::time::Duration = std::time::Duration::from_millis(25);
const MAX_BATCH: usize = 2048;

/// The writer: inserts what arrives in batches (one transaction each) and prunes old events.
async fn write_events(
    pool: SqlitePool,
    mut queue: mpsc::UnboundedReceiver<Message>,
    flush_requested: Arc<Notify>,
    retention: i64,
) {
    let mut since_prune = 0usize;
    let mut backlog = false;
    while let Some(first) = queue.recv().await {
        let mut batch = Vec::new();
        let mut flushes = Vec::new();
        let take = |message, batch: &mut Vec<Event>, flushes: &mut Vec<_>| match message {
            Message::Event(event) => batch.push(*event),
            Message::Flush(done) => flushes.push(done),
        };
        take(first, &mut batch, &mut flushes);
        // Gather for a moment: one transaction per many events is what keeps recording cheap
        // under load (a transaction each cost a fifth of the token path). The writer sleeps
        // the window out rather than waking for each event (a context switch per event);
        // a reader's flush ends the wait at once, and the live stream's budget allows the rest.
        if !backlog && flushes.is_empty() {
            tokio::select! {
                _ = tokio::time::sleep(BATCH_WINDOW) => {}
                _ = flush_requested.notified() => {}
            }
        }
        let mut taken = 1;
        while taken < MAX_BATCH
            && let Ok(message) = queue.try_recv()
        {
            take(message, &mut batch, &mut flushes);
            taken += 1;
        }
        backlog = taken >= MAX_BATCH;
        if !batch.is_empty() {
            let (count, last) = (batch.len(), batch.last().map_or(0, |e| e.seq));
            if let Err(error) = insert(&pool, batch).await {
                tracing::warn!(%error, "events could not be stored");
            }
            since_prune += count;
            if since_prune >= 1000 {
                since_prune = 0;
                let _ = sqlx::query("DELETE FROM events WHERE seq <= ?")
                    .bind(last - retention)
                    .execute(&pool)
                    .await;
            }
        }
        for done in flushes {
            let _ = done.send(());
        }
    }
}

async fn insert(pool: &SqlitePool, batch: Vec<Event>) -> Result<(), sqlx::Error> {
    let mut tx = pool.begin_with("BEGIN IMMEDIATE").await?;
    // Multi-row statements: one round through SQLite per 100 events, not per event. The
    // events' strings are moved into the statement's arguments: bound by reference, sqlx
    // copied each of them once more to hand them to its SQLite thread.
    let mut events = batch.into_iter();
    while events.len() > 0 {
        let mut query = sqlx::QueryBuilder::new(
            "INSERT OR REPLACE INTO events (seq, time, kind, correlation_id, vm_id, resource_id, principal_id, summary, details) ",
        );
        query.push_values(events.by_ref().take(100), |mut row, event| {
            // serde_json's writer; `Value`'s Display goes through a formatter adapter and cost
            // more than the rest of the row.
            let details = serde_json::to_string(&event.details).unwrap_or_else(|_| "null".into());
            row.push_bind(event.seq)
                .push_bind(event.time)
                .push_bind(event.kind)
                .push_bind(event.correlation_id)
                .push_bind(event.vm_id)
                .push_bind(event.resource_id)
                .push_bind(event.principal_id)
                .push_bind(event.summary)
                .push_bind(details);
        });
        query.build().execute(&mut *tx).await?;
    }
    tx.commit().await
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn log() -> EventLog {
        let pool = sqlx::sqlite::SqlitePoolOptions::new()
            .max_connections(1)
            .connect("sqlite::memory:")
            .await
            .expect("pool");
        sqlx::query(include_str!(
            "../../../migrations/imds/0002_imds_events.sql"
        ))
        .execute(&pool)
        .await
        .expect("table");
        EventLog::open(pool, "imds", Arc::new(Clock::default()), 100)
            .await
            .expect("log")
    }

    #[test]
    fn summaries_are_one_line() {
        assert_eq!(one_line("issued a token".into()), "issued a token");
        assert_eq!(
            one_line(" AADSTS7000215: bad\r\nTrace  ID:\tx ".into()),
            "AADSTS7000215: bad Trace ID: x"
        );
    }

    #[tokio::test]
    async fn records_filters_and_keeps_the_correlation_of_the_chain() {
        let log = log().await;
        with_correlation("c-1".into(), async {
            log.record(
                Draft::new("imds.token.requested", "asked")
                    .vm("vm-a")
                    .principal("p-a"),
            );
        })
        .await;
        log.record(Draft::new("imds.credential.installed", "installed").vm("vm-b"));

        let all = log
            .list(&EventFilter {
                limit: 10,
                ..Default::default()
            })
            .await
            .expect("list");
        assert_eq!(all.iter().map(|e| e.seq).collect::<Vec<_>>(), vec![1, 2]);
        assert_eq!(all[0].correlation_id, "c-1", "the chain's id");
        assert_ne!(all[1].correlation_id, "c-1", "outside a chain a fresh id");

        let vm_a = EventFilter {
            vm_id: Some("VM-A".into()),
            limit: 10,
            ..Default::default()
        };
        let hits = log.list(&vm_a).await.expect("list");
        assert_eq!(hits.len(), 1);
        assert!(vm_a.matches(&hits[0]));
        let by_kind = EventFilter {
            kind: Some("imds.credential.".into()),
            limit: 10,
            ..Default::default()
        };
        assert_eq!(log.list(&by_kind).await.expect("list")[0].seq, 2);
        let after = EventFilter {
            after: 1,
            limit: 10,
            ..Default::default()
        };
        assert_eq!(log.list(&after).await.expect("list").len(), 1);
    }

    #[tokio::test]
    async fn every_field_comes_back_as_recorded() {
        let log = log().await;
        let details = serde_json::json!({"quote": "a \"b\" \\ c\n", "unicode": "é€😀", "nested": [1, -2, 3.5, null, true], "big": 9_007_199_254_740_993_i64});
        log.record_with(
            Draft::new("imds.token.requested", "a “quoted” summary, é")
                .vm("vm-1")
                .resource("/subscriptions/s/x")
                .principal("p-1")
                .details(details.clone()),
            "c-1".into(),
        );
        log.record_with(
            Draft::new("imds.credential.installed", "bare"),
            "c-2".into(),
        );
        log.record_with(
            Draft::new("aad.token.issued", "a string").details(Value::String("just text".into())),
            "c-3".into(),
        );
        log.flush().await;
        let all = log
            .list(&EventFilter {
                limit: 10,
                ..Default::default()
            })
            .await
            .expect("list");
        assert_eq!(all.len(), 3);
        let full = &all[0];
        assert_eq!(
            (
                full.kind.as_str(),
                full.summary.as_str(),
                full.correlation_id.as_str()
            ),
            ("imds.token.requested", "a “quoted” summary, é", "c-1")
        );
        assert_eq!(full.vm_id.as_deref(), Some("vm-1"));
        assert_eq!(full.resource_id.as_deref(), Some("/subscriptions/s/x"));
        assert_eq!(full.principal_id.as_deref(), Some("p-1"));
        assert_eq!(full.details, details);
        assert_eq!(full.service, "imds");
        assert!(!full.time.is_empty());
        let bare = &all[1];
        assert_eq!(
            (&bare.vm_id, &bare.resource_id, &bare.principal_id),
            (&None, &None, &None)
        );
        assert_eq!(bare.details, Value::Null);
        assert_eq!(all[2].details, Value::String("just text".into()));
    }

    #[tokio::test]
    async fn retention_is_bounded() {
        let log = log().await;
        for i in 0..1200 {
            log.record(Draft::new("imds.token.requested", format!("#{i}")));
        }
        log.flush().await;
        let kept = log
            .list(&EventFilter {
                limit: MAX_LIMIT,
                ..Default::default()
            })
            .await
            .expect("list");
        // Pruned once about 1000 had arrived (at a batch boundary) down to the newest 100.
        assert!(
            (100..=400).contains(&kept.len()),
            "{} kept, oldest {:?}",
            kept.len(),
            kept.first().map(|e| e.seq)
        );
        assert_eq!(kept.last().map(|e| e.seq), Some(1200));
    }

    #[test]
    fn query_parameters_are_checked() {
        let query = |pairs: &[(&str, &str)]| {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect::<HashMap<_, _>>()
        };
        assert!(EventFilter::from_query(&query(&[("after", "-1")])).is_err());
        assert!(EventFilter::from_query(&query(&[("limit", "999999")])).is_err());
        assert!(EventFilter::from_query(&query(&[("limit", "ten")])).is_err());
        let filter =
            EventFilter::from_query(&query(&[("principal", "a,b"), ("after", "7")])).expect("ok");
        assert_eq!(filter.principals, vec!["a", "b"]);
        assert_eq!(filter.limit, DEFAULT_LIMIT);
        let round = EventFilter::from_query(
            &filter
                .to_query(7)
                .into_iter()
                .map(|(k, v)| (k.to_string(), v))
                .collect(),
        )
        .expect("round trip");
        assert_eq!(round, filter);
    }
}
