//! What the server tells its operators: `/metrics` and the request log.
//!
//! One [`Telemetry`] per server owns a `prometheus-client` registry (no global recorder, so
//! several servers in one process keep their own figures) with:
//! - the HTTP series, kept by [`observe`], the outermost middleware: requests by method, route
//!   and status, and their latency by method and route. The route is the path's template
//!   (`/v1/locks/{name}`), never the path itself, so the series stay as few as the routes (and
//!   no secret lease id ends up in a label or a log line); a path no route matches counts as
//!   `unmatched`. For `GET /v1/events` the latency is the time to the stream's start;
//! - the connection series, kept by the listener (`listen`);
//! - the store's series, read from [`Store::stats`] at each scrape ([`StoreCollector`]):
//!   totals of the table, events by kind (grants, releases, expiries, revocations, queue
//!   entries and exits, job transitions), the commit latency histogram, leadership. None has a
//!   per-lock label: their number does not grow with the locks.
//!
//! The request log is one `info` line per request (target `baton::request`: method, route,
//! status, duration, key id, request id), off with `--no-request-log`. Every request runs in a
//! span carrying its request id, so anything logged while it is served names it too; the id
//! is the request's `x-request-id` when it sends a plausible one, else a fresh one, and is
//! sent back in the answer's `x-request-id`.

use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderValue, Method};
use axum::middleware::Next;
use axum::response::Response;
use baton_core::JobState;
use baton_store::{COMMIT_BUCKETS_MICROS, QUEUE_EXITS, Store};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use tracing::Instrument as _;

/// The request id header, read and answered.
pub const REQUEST_ID_HEADER: &str = "x-request-id";
/// The longest request id taken from a client; a longer (or odd) one is replaced.
const REQUEST_ID_MAX: usize = 64;
/// The bounds of the request latency histogram, in seconds: from half a millisecond to a
/// whole long-poll (`wait_ms` is at most 60 s).
const REQUEST_BUCKETS: [f64; 16] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    60.0,
];

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteStatus {
    method: &'static str,
    route: String,
    status: u16,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteOnly {
    method: &'static str,
    route: String,
}

/// Subscribers of `GET /v1/events` connected now. This and [`DROPPED`] are counted by the
/// event pumps (`events`) and reported here in `/metrics`.
pub static SUBSCRIBERS: AtomicU64 = AtomicU64::new(0);
/// Subscribers dropped for falling behind since start.
pub static DROPPED: AtomicU64 = AtomicU64::new(0);

/// The key id a request was authenticated with, left in the answer's extensions by
/// authentication for the request log.
#[derive(Debug, Clone)]
pub(crate) struct KeySeen(pub String);

/// One server's figures and request log settings. See the module documentation.
pub struct Telemetry {
    registry: Registry,
    requests: Family<RouteStatus, Counter>,
    latency: Family<RouteOnly, Histogram>,
    /// Connections open now (the listener keeps it).
    pub(crate) connections: Gauge,
    /// Connections refused at the connection limit.
    pub(crate) refused: Counter,
    request_log: bool,
    request_ids: RequestIds,
}

impl std::fmt::Debug for Telemetry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Telemetry")
            .field("request_log", &self.request_log)
            .finish()
    }
}

impl Telemetry {
    /// The registry of a server over `store`; `request_log` turns the per-request log line on.
    pub fn new(store: Arc<dyn Store>, request_log: bool) -> Telemetry {
        let mut registry = Registry::default();
        let requests = Family::<RouteStatus, Counter>::default();
        registry.register(
            "baton_http_requests",
            "HTTP requests answered, by method, route template and status",
            requests.clone(),
        );
        let latency: Family<RouteOnly, Histogram> =
            Family::new_with_constructor(|| Histogram::new(REQUEST_BUCKETS));
        registry.register(
            "baton_http_request_duration_seconds",
            "Time from a request's arrival to its answer's head, by method and route template \
             (long-polls included: they last up to their wait_ms)",
            latency.clone(),
        );
        let connections = Gauge::default();
        registry.register(
            "baton_connections",
            "Client connections open now",
            connections.clone(),
        );
        let refused = Counter::default();
        registry.register(
            "baton_connections_refused",
            "Connections refused because --max-connections were open",
            refused.clone(),
        );
        registry.register_collector(Box::new(StoreCollector { store }));
        Telemetry {
            registry,
            requests,
            latency,
            connections,
            refused,
            request_log,
            request_ids: RequestIds::new(),
        }
    }

    /// The registry as Prometheus/OpenMetrics text.
    pub fn encode(&self) -> String {
        let mut text = String::new();
        if prometheus_client::encoding::text::encode(&mut text, &self.registry).is_err() {
            // Encoding into a String cannot fail but for a collector's error; say so.
            text.push_str("# the metrics could not be encoded\n");
        }
        text
    }
}

/// Unique request ids without a random draw per request: a random prefix per process and a
/// counter.
struct RequestIds {
    prefix: String,
    next: AtomicU64,
}

impl RequestIds {
    fn new() -> RequestIds {
        let mut bytes = [0u8; 4];
        // Without a random source the ids are still unique within the process.
        let _ = getrandom::fill(&mut bytes);
        let prefix = bytes.iter().fold(String::new(), |mut text, byte| {
            let _ = write!(text, "{byte:02x}");
            text
        });
        RequestIds {
            prefix,
            next: AtomicU64::new(1),
        }
    }

    fn fresh(&self) -> String {
        let number = self.next.fetch_add(1, Ordering::Relaxed);
        format!("{}-{number}", self.prefix)
    }
}

/// A client's request id is kept when it is short and plain (letters, digits, `-`, `_`, `.`,
/// `:`), so that it can be logged and echoed as is.
fn plausible_request_id(value: &HeaderValue) -> Option<String> {
    let text = value.to_str().ok()?;
    let plain = !text.is_empty()
        && text.len() <= REQUEST_ID_MAX
        && text
            .bytes()
            .all(|byte| byte.is_ascii_alphanumeric() || b"-_.:".contains(&byte));
    plain.then(|| text.to_owned())
}

/// Methods as labels: the ones the API knows, everything else `other`.
fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::DELETE => "DELETE",
        Method::PUT => "PUT",
        Method::PATCH => "PATCH",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        _ => "other",
    }
}

/// The outermost middleware: times and counts every request, logs it, and gives it an id.
pub(crate) async fn observe(
    State(telemetry): State<Arc<Telemetry>>,
    mut request: Request,
    next: Next,
) -> Response {
    let started = Instant::now();
    let method = method_label(request.method());
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |path| path.as_str().to_owned());
    let request_id = request
        .headers()
        .get(REQUEST_ID_HEADER)
        .and_then(plausible_request_id)
        .unwrap_or_else(|| telemetry.request_ids.fresh());
    if let Ok(value) = HeaderValue::from_str(&request_id) {
        request.headers_mut().insert(REQUEST_ID_HEADER, value);
    }
    let span = tracing::info_span!("request", request_id = %request_id);
    let mut response = next.run(request).instrument(span).await;
    let elapsed = started.elapsed();
    let status = response.status().as_u16();
    telemetry
        .requests
        .get_or_create(&RouteStatus {
            method,
            route: route.clone(),
            status,
        })
        .inc();
    telemetry
        .latency
        .get_or_create(&RouteOnly {
            method,
            route: route.clone(),
        })
        .observe(elapsed.as_secs_f64());
    if telemetry.request_log {
        let key = response
            .extensions()
            .get::<KeySeen>()
            .map_or("-", |key| key.0.as_str());
        tracing::info!(
            target: "baton::request",
            method,
            route = %route,
            status,
            duration_ms = elapsed.as_micros() as f64 / 1e3,
            key,
            request_id = %request_id,
            "request"
        );
    }
    if let Ok(value) = HeaderValue::from_str(&request_id) {
        response.headers_mut().insert(REQUEST_ID_HEADER, value);
    }
    response
}

/// The store's series, read at each scrape.
struct StoreCollector {
    store: Arc<dyn Store>,
}

impl std::fmt::Debug for StoreCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoreCollector")
            .field("store", &self.store.kind())
            .finish()
    }
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StoreLabel {
    store: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StoreState {
    store: &'static str,
    state: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StoreReason {
    store: &'static str,
    reason: &'static str,
}

/// A histogram from counts kept elsewhere (the engine's commit buckets).
#[derive(Debug)]
struct BucketCounts {
    sum: f64,
    count: u64,
    buckets: Vec<(f64, u64)>,
}

impl EncodeMetric for BucketCounts {
    fn encode(
        &self,
        mut encoder: prometheus_client::encoding::MetricEncoder,
    ) -> Result<(), std::fmt::Error> {
        encoder.encode_histogram::<prometheus_client::encoding::NoLabelSet>(
            self.sum,
            self.count,
            &self.buckets,
            None,
        )
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Histogram
    }
}

impl Collector for StoreCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let stats = self.store.stats();
        let store = self.store.kind();
        let label = StoreLabel { store };
        let gauge = |encoder: &mut DescriptorEncoder,
                     name: &str,
                     help: &str,
                     value: i64|
         -> Result<(), std::fmt::Error> {
            let mut metric = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
            ConstGauge::new(value).encode(metric.encode_family(&label)?)
        };
        let count = |value: u64| i64::try_from(value).unwrap_or(i64::MAX);
        let size = |value: usize| i64::try_from(value).unwrap_or(i64::MAX);
        gauge(
            &mut encoder,
            "baton_locks",
            "Locks known",
            count(stats.locks),
        )?;
        gauge(
            &mut encoder,
            "baton_leases",
            "Live leases (holders)",
            count(stats.leases),
        )?;
        gauge(
            &mut encoder,
            "baton_waiters",
            "Queued tickets (waiters)",
            count(stats.waiters),
        )?;
        gauge(
            &mut encoder,
            "baton_locks_delayed",
            "Locks with a lock-delay in force (a slot held back after an expiry or revocation)",
            size(stats.gauges.locks_delayed),
        )?;
        {
            let mut metric = encoder.encode_descriptor(
                "baton_jobs",
                "Job records kept, by state",
                None,
                MetricType::Gauge,
            )?;
            for (index, state) in JobState::ALL.iter().enumerate() {
                let labels = StoreState {
                    store,
                    state: state.as_str(),
                };
                ConstGauge::new(size(stats.gauges.jobs[index]))
                    .encode(metric.encode_family(&labels)?)?;
            }
        }
        let counter = |encoder: &mut DescriptorEncoder,
                       name: &str,
                       help: &str,
                       value: u64|
         -> Result<(), std::fmt::Error> {
            let mut metric = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
            ConstCounter::new(value).encode(metric.encode_family(&label)?)
        };
        counter(
            &mut encoder,
            "baton_transitions",
            "Transitions run against the lock table",
            stats.transitions,
        )?;
        counter(
            &mut encoder,
            "baton_commits",
            "Durable commits (each shared by every request that arrived while the previous one ran)",
            stats.commits,
        )?;
        counter(
            &mut encoder,
            "baton_committed_changes",
            "Changes written by durable commits",
            stats.committed_changes,
        )?;
        {
            let mut metric = encoder.encode_descriptor(
                "baton_commit_seconds",
                "Time spent in durable commits (the sum of baton_commit_duration_seconds)",
                None,
                MetricType::Counter,
            )?;
            ConstCounter::new(stats.commit_micros as f64 / 1e6)
                .encode(metric.encode_family(&label)?)?;
        }
        counter(
            &mut encoder,
            "baton_lease_grants",
            "Leases granted (directly, or to a queued waiter)",
            stats.events.granted,
        )?;
        counter(
            &mut encoder,
            "baton_lease_releases",
            "Leases released by their holders",
            stats.events.released,
        )?;
        counter(
            &mut encoder,
            "baton_lease_expiries",
            "Leases that expired because their holders stopped renewing",
            stats.events.expired,
        )?;
        counter(
            &mut encoder,
            "baton_lease_revocations",
            "Leases revoked by an administrator",
            stats.events.revoked,
        )?;
        counter(
            &mut encoder,
            "baton_queue_joins",
            "Waiters that joined a queue",
            stats.events.queued,
        )?;
        {
            let mut metric = encoder.encode_descriptor(
                "baton_queue_exits",
                "Waiters that left a queue without a grant, by reason (lapsed, cancelled, departed)",
                None,
                MetricType::Counter,
            )?;
            for (index, exit) in QUEUE_EXITS.iter().enumerate() {
                let labels = StoreReason {
                    store,
                    reason: exit.as_str(),
                };
                ConstCounter::new(stats.events.left_queue[index])
                    .encode(metric.encode_family(&labels)?)?;
            }
        }
        {
            let mut metric = encoder.encode_descriptor(
                "baton_job_transitions",
                "Jobs that entered each state (the final ones are the outcomes: succeeded, \
                 failed, cancelled, lost, timed_out, skipped, coalesced)",
                None,
                MetricType::Counter,
            )?;
            for (index, state) in JobState::ALL.iter().enumerate() {
                let labels = StoreState {
                    store,
                    state: state.as_str(),
                };
                ConstCounter::new(stats.events.jobs[index])
                    .encode(metric.encode_family(&labels)?)?;
            }
        }
        {
            let commits: u64 = stats.commit_buckets.iter().sum();
            let buckets = COMMIT_BUCKETS_MICROS
                .iter()
                .map(|micros| *micros as f64 / 1e6)
                .chain(std::iter::once(f64::INFINITY))
                .zip(stats.commit_buckets.iter().copied())
                .collect();
            let histogram = BucketCounts {
                sum: stats.commit_micros as f64 / 1e6,
                count: commits,
                buckets,
            };
            let mut metric = encoder.encode_descriptor(
                "baton_commit_duration_seconds",
                "Durable commits by how long each took (the memory store commits nothing)",
                None,
                MetricType::Histogram,
            )?;
            histogram.encode(metric.encode_family(&label)?)?;
        }
        counter(
            &mut encoder,
            "baton_event_subscribers_dropped",
            "Subscribers of GET /v1/events dropped for falling behind",
            DROPPED.load(Ordering::Relaxed),
        )?;
        gauge(
            &mut encoder,
            "baton_event_subscribers",
            "Subscribers of GET /v1/events connected now",
            count(SUBSCRIBERS.load(Ordering::Relaxed)),
        )?;
        if let Some(leadership) = self.store.leadership() {
            gauge(
                &mut encoder,
                "baton_active",
                "1 while this server is the active one of its database, 0 while it is a standby",
                i64::from(leadership.active),
            )?;
            gauge(
                &mut encoder,
                "baton_leader_epoch",
                "The newest leadership epoch this server knows",
                leadership.epoch,
            )?;
            counter(
                &mut encoder,
                "baton_takeovers",
                "How many times this server became the active one",
                leadership.takeovers,
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn request_ids_from_clients_are_kept_only_when_plain_and_short() {
        let keep = |text: &str| plausible_request_id(&HeaderValue::from_str(text).unwrap());
        assert_eq!(keep("abc-123_x.y:z"), Some("abc-123_x.y:z".into()));
        assert_eq!(keep("has space"), None);
        assert_eq!(keep(""), None);
        assert_eq!(keep(&"a".repeat(REQUEST_ID_MAX)), Some("a".repeat(64)));
        assert_eq!(keep(&"a".repeat(REQUEST_ID_MAX + 1)), None);
        assert_eq!(keep("quote\"d"), None);
    }

    #[test]
    fn fresh_request_ids_differ() {
        let ids = RequestIds::new();
        assert_ne!(ids.fresh(), ids.fresh());
    }
}
