//! Prometheus metrics: counters the daemon keeps as it serves, and the HTTP endpoint that
//! hands them out in the OpenMetrics text format (`settings.metrics_listen`, `--metrics ADDR`;
//! off unless set).
//!
//! Names follow Prometheus conventions (`ferrite_` prefix, `_total` for counters, base units:
//! `_bytes`, `_seconds`). Per LUN (labels `target`, `lun`: the target's LUN id): commands by
//! kind, bytes read and written, command latency, CHECK CONDITIONs by sense key, reservation
//! conflicts. Per target and portal group (`target`, `tpgt`): sessions, connections, logins
//! by outcome, digest errors, task management functions; per target, the state of each ALUA
//! group. And the process's resident memory.
//!
//! The data path touches only counters and histograms it resolved once per LUN ([`LuMetrics`]):
//! no label is hashed per command.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http_body_util::Full;
use hyper::body::Bytes;
use hyper::{Request, Response, StatusCode};
use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::{Family, MetricConstructor};
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::{Registry, Unit};
use tokio::net::TcpListener;
use tracing::{info, warn};

/// A command's kind, as the per-LUN counters split them.
#[allow(non_camel_case_types)]
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
pub enum Kind {
    read,
    write,
    other,
}

impl Kind {
    /// READ(6/10/12/16) are reads; the WRITE, WRITE AND VERIFY, WRITE SAME and COMPARE AND
    /// WRITE commands writes; everything else other.
    pub fn of(cdb: &[u8]) -> Kind {
        match cdb.first() {
            Some(0x08 | 0x28 | 0xa8 | 0x88) => Kind::read,
            Some(0x0a | 0x2a | 0xaa | 0x8a | 0x2e | 0xae | 0x8e | 0x41 | 0x93 | 0x89) => {
                Kind::write
            }
            _ => Kind::other,
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LunLabels {
    pub target: String,
    pub lun: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LunKindLabels {
    target: String,
    lun: String,
    kind: Kind,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SenseLabels {
    target: String,
    lun: String,
    sense_key: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PortLabels {
    pub target: String,
    pub tpgt: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LoginLabels {
    target: String,
    tpgt: String,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TmfLabels {
    target: String,
    tpgt: String,
    function: &'static str,
    response: &'static str,
}

/// Latency buckets: 20 µs to ~10 s, doubling.
#[derive(Clone)]
struct Buckets;

impl MetricConstructor<Histogram> for Buckets {
    fn new_metric(&self) -> Histogram {
        Histogram::new(exponential_buckets(20e-6, 2.0, 20))
    }
}

/// Every metric of the daemon.
pub struct Metrics {
    registry: Registry,
    commands: Family<LunKindLabels, Counter>,
    read_bytes: Family<LunLabels, Counter>,
    written_bytes: Family<LunLabels, Counter>,
    latency: Family<LunKindLabels, Histogram, Buckets>,
    check_conditions: Family<SenseLabels, Counter>,
    conflicts: Family<LunLabels, Counter>,
    sessions: Family<PortLabels, Gauge>,
    connections: Family<PortLabels, Gauge>,
    logins: Family<LoginLabels, Counter>,
    digest_errors: Family<PortLabels, Counter>,
    tmfs: Family<TmfLabels, Counter>,
    store_latency: Family<StoreLabels, Histogram, Buckets>,
    resident: Gauge,
    /// ALUA group states (a state set), filled from `alua_source` at each scrape.
    alua: Family<AluaLabels, Gauge>,
    alua_source: Mutex<Option<AluaSource>>,
    /// Every LUN's handles, for `ferrite admin stats`.
    luns: Mutex<BTreeMap<(String, u64), Arc<LuMetrics>>>,
}

/// Where a scrape reads the ALUA states: (target, group id, state) of every group now.
pub type AluaSource = Box<dyn Fn() -> Vec<(String, u16, scsi_core::AccessState)> + Send + Sync>;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AluaLabels {
    target: String,
    group: String,
    state: &'static str,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut m = Metrics {
            commands: Family::default(),
            read_bytes: Family::default(),
            written_bytes: Family::default(),
            latency: Family::new_with_constructor(Buckets),
            check_conditions: Family::default(),
            conflicts: Family::default(),
            sessions: Family::default(),
            connections: Family::default(),
            logins: Family::default(),
            digest_errors: Family::default(),
            tmfs: Family::default(),
            store_latency: Family::new_with_constructor(Buckets),
            resident: Gauge::default(),
            alua: Family::default(),
            alua_source: Mutex::new(None),
            registry: Registry::default(),
            luns: Mutex::new(BTreeMap::new()),
        };
        // Prometheus's own name for it (no `ferrite_` prefix).
        m.registry.register_with_unit(
            "process_resident_memory",
            "Resident set size of the daemon",
            Unit::Bytes,
            m.resident.clone(),
        );
        let r = m.registry.sub_registry_with_prefix("ferrite");
        r.register(
            "lun_commands",
            "SCSI commands completed, by kind",
            m.commands.clone(),
        );
        r.register_with_unit(
            "lun_read",
            "Bytes returned by READ commands",
            Unit::Bytes,
            m.read_bytes.clone(),
        );
        r.register_with_unit(
            "lun_written",
            "Data-out bytes of write commands (WRITE, WRITE AND VERIFY, WRITE SAME, COMPARE AND WRITE) that succeeded",
            Unit::Bytes,
            m.written_bytes.clone(),
        );
        r.register_with_unit(
            "lun_command_duration",
            "Time from a command's hand-off to the device server to its result, backstore included",
            Unit::Seconds,
            m.latency.clone(),
        );
        r.register(
            "lun_check_conditions",
            "Commands that ended in CHECK CONDITION, by sense key",
            m.check_conditions.clone(),
        );
        r.register(
            "lun_reservation_conflicts",
            "Commands that ended in RESERVATION CONFLICT",
            m.conflicts.clone(),
        );
        r.register("sessions", "Normal sessions logged in", m.sessions.clone());
        r.register(
            "connections",
            "Connections in full feature phase",
            m.connections.clone(),
        );
        r.register(
            "logins",
            "Login attempts, by outcome (success or the login status of the refusal)",
            m.logins.clone(),
        );
        r.register(
            "digest_errors",
            "PDUs received with a header or data digest error",
            m.digest_errors.clone(),
        );
        r.register_with_unit(
            "backstore_duration",
            "Time the backstore took per operation (read, write, flush, unmap)",
            Unit::Seconds,
            m.store_latency.clone(),
        );
        r.register(
            "alua_group_state",
            "ALUA target port groups: 1 for the access state each group is in, 0 for the others",
            m.alua.clone(),
        );
        r.register(
            "task_management",
            "Task management function requests answered, by function and response",
            m.tmfs.clone(),
        );
        m
    }

    /// The per-LUN handles for LUN `lun` of `target`.
    pub fn lun(self: &Arc<Self>, target: &str, lun: u64) -> Arc<LuMetrics> {
        let mut all = self.luns.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(m) = all.get(&(target.to_string(), lun)) {
            return m.clone();
        }
        let l = LunLabels {
            target: target.to_string(),
            lun: lun.to_string(),
        };
        let k = |kind| LunKindLabels {
            target: l.target.clone(),
            lun: l.lun.clone(),
            kind,
        };
        let m = Arc::new(LuMetrics {
            commands: [Kind::read, Kind::write, Kind::other]
                .map(|x| self.commands.get_or_create(&k(x)).clone()),
            latency: [Kind::read, Kind::write, Kind::other]
                .map(|x| self.latency.get_or_create(&k(x)).clone()),
            read_bytes: self.read_bytes.get_or_create(&l).clone(),
            written_bytes: self.written_bytes.get_or_create(&l).clone(),
            conflicts: self.conflicts.get_or_create(&l).clone(),
            labels: l,
            all: self.clone(),
            io: IoStats::default(),
        });
        all.insert((target.to_string(), lun), m.clone());
        m
    }

    /// What every LUN has done so far, by target and LUN.
    pub fn lun_stats(&self) -> Vec<(String, u64, IoSnapshot)> {
        let all = self.luns.lock().unwrap_or_else(|e| e.into_inner());
        all.iter()
            .map(|((t, l), m)| (t.clone(), *l, m.io.snapshot()))
            .collect()
    }

    /// The per-port handles for portal group `tpgt` of `target`.
    pub fn port(self: &Arc<Self>, target: &str, tpgt: u16) -> PortMetrics {
        PortMetrics {
            labels: PortLabels {
                target: target.to_string(),
                tpgt: tpgt.to_string(),
            },
            all: self.clone(),
        }
    }

    /// A login that ended without full feature phase (`target` and `tpgt` as far as known).
    pub fn login_failed(&self, target: Option<&str>, tpgt: u16, outcome: &'static str) {
        self.logins
            .get_or_create(&LoginLabels {
                target: target.unwrap_or("").to_string(),
                tpgt: tpgt.to_string(),
                outcome,
            })
            .inc();
    }

    /// Where scrapes read the ALUA states (the daemon's runtime).
    pub fn set_alua_source(&self, source: AluaSource) {
        *self.alua_source.lock().unwrap_or_else(|e| e.into_inner()) = Some(source);
    }

    /// The whole text exposition, with the process's memory and the ALUA states read now.
    pub fn encode(&self) -> String {
        self.resident.set(resident_bytes() as i64);
        if let Some(source) = &*self.alua_source.lock().unwrap_or_else(|e| e.into_inner()) {
            // Groups come and go with the configuration: only the current ones are exported.
            self.alua.clear();
            for (target, group, now) in source() {
                for st in scsi_core::AccessState::ALL {
                    let labels = AluaLabels {
                        target: target.clone(),
                        group: group.to_string(),
                        state: st.name(),
                    };
                    self.alua.get_or_create(&labels).set(i64::from(st == now));
                }
            }
        }
        let mut s = String::new();
        if let Err(e) = prometheus_client::encoding::text::encode(&mut s, &self.registry) {
            warn!("metrics encoding failed: {e}");
        }
        s
    }
}

/// What one LUN counts; resolved once, shared by every session that reaches the LUN.
pub struct LuMetrics {
    commands: [Counter; 3],
    latency: [Histogram; 3],
    read_bytes: Counter,
    written_bytes: Counter,
    conflicts: Counter,
    labels: LunLabels,
    all: Arc<Metrics>,
    /// The same counts, readable (`ferrite admin stats`).
    pub io: IoStats,
}

/// Commands, bytes and time of one LUN or one session, as plain counters.
#[derive(Debug, Default)]
pub struct IoStats {
    commands: [AtomicU64; 3],
    read_bytes: AtomicU64,
    written_bytes: AtomicU64,
    /// Sum of command durations, nanoseconds.
    busy_ns: AtomicU64,
}

/// A reading of [`IoStats`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct IoSnapshot {
    pub reads: u64,
    pub writes: u64,
    pub others: u64,
    pub read_bytes: u64,
    pub written_bytes: u64,
    pub busy_ns: u64,
}

impl IoStats {
    /// One command (see [`LuMetrics::record`]).
    pub fn record(&self, kind: Kind, took: Duration, good: bool, data_in: usize, data_out: usize) {
        self.commands[kind as usize].fetch_add(1, Ordering::Relaxed);
        self.busy_ns.fetch_add(
            took.as_nanos().min(u128::from(u64::MAX)) as u64,
            Ordering::Relaxed,
        );
        if good {
            match kind {
                Kind::read => self.read_bytes.fetch_add(data_in as u64, Ordering::Relaxed),
                Kind::write => self
                    .written_bytes
                    .fetch_add(data_out as u64, Ordering::Relaxed),
                Kind::other => 0,
            };
        }
    }

    pub fn snapshot(&self) -> IoSnapshot {
        let c = |i: usize| self.commands[i].load(Ordering::Relaxed);
        IoSnapshot {
            reads: c(0),
            writes: c(1),
            others: c(2),
            read_bytes: self.read_bytes.load(Ordering::Relaxed),
            written_bytes: self.written_bytes.load(Ordering::Relaxed),
            busy_ns: self.busy_ns.load(Ordering::Relaxed),
        }
    }
}

impl std::fmt::Debug for LuMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "LuMetrics({:?})", self.labels)
    }
}

/// SPC-4 §4.5.6 sense keys, as label values.
const SENSE_KEYS: [&str; 16] = [
    "no_sense",
    "recovered_error",
    "not_ready",
    "medium_error",
    "hardware_error",
    "illegal_request",
    "unit_attention",
    "data_protect",
    "blank_check",
    "vendor_specific",
    "copy_aborted",
    "aborted_command",
    "reserved",
    "volume_overflow",
    "miscompare",
    "completed",
];

impl LuMetrics {
    /// A command of `kind` ended with `status` (and `sense`) after `took`, having moved
    /// `data_in` bytes to the initiator and `data_out` bytes from it.
    pub fn record(
        &self,
        kind: Kind,
        took: Duration,
        status: u8,
        sense: &[u8],
        data_in: usize,
        data_out: usize,
    ) {
        let i = kind as usize;
        self.commands[i].inc();
        self.latency[i].observe(took.as_secs_f64());
        self.io.record(kind, took, status == 0, data_in, data_out);
        match status {
            0x00 => match kind {
                Kind::read => {
                    self.read_bytes.inc_by(data_in as u64);
                }
                Kind::write => {
                    self.written_bytes.inc_by(data_out as u64);
                }
                Kind::other => {}
            },
            0x02 => {
                // Fixed (70h/71h: byte 2) or descriptor (72h/73h: byte 1) format.
                let key = match sense.first().map(|b| b & 0x7f) {
                    Some(0x70 | 0x71) => sense.get(2),
                    Some(0x72 | 0x73) => sense.get(1),
                    _ => None,
                };
                let key = key.map_or("no_sense", |k| SENSE_KEYS[usize::from(k & 0x0f)]);
                self.all
                    .check_conditions
                    .get_or_create(&SenseLabels {
                        target: self.labels.target.clone(),
                        lun: self.labels.lun.clone(),
                        sense_key: key,
                    })
                    .inc();
            }
            0x18 => {
                self.conflicts.inc();
            }
            _ => {}
        }
    }
}

/// What one portal group of a target counts.
#[derive(Clone)]
pub struct PortMetrics {
    labels: PortLabels,
    all: Arc<Metrics>,
}

impl std::fmt::Debug for PortMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PortMetrics({:?})", self.labels)
    }
}

impl PortMetrics {
    pub fn login_succeeded(&self) {
        self.all
            .logins
            .get_or_create(&LoginLabels {
                target: self.labels.target.clone(),
                tpgt: self.labels.tpgt.clone(),
                outcome: "success",
            })
            .inc();
    }

    pub fn session_opened(&self) {
        self.all.sessions.get_or_create(&self.labels).inc();
    }

    pub fn session_closed(&self) {
        self.all.sessions.get_or_create(&self.labels).dec();
    }

    pub fn connection_opened(&self) {
        self.all.connections.get_or_create(&self.labels).inc();
    }

    pub fn connection_closed(&self) {
        self.all.connections.get_or_create(&self.labels).dec();
    }

    pub fn digest_error(&self) {
        self.all.digest_errors.get_or_create(&self.labels).inc();
    }
}

impl iscsi_proto::SessionObserver for PortMetrics {
    fn tmf(&self, function: u8, response: iscsi_wire::TmfResponse) {
        const FUNCTIONS: [&str; 15] = [
            "unknown",
            "abort_task",
            "abort_task_set",
            "clear_aca",
            "clear_task_set",
            "logical_unit_reset",
            "target_warm_reset",
            "target_cold_reset",
            "task_reassign",
            "query_task",
            "query_task_set",
            "i_t_nexus_reset",
            "query_asynchronous_event",
            "unknown",
            "unknown",
        ];
        let response = match response.0 {
            0 => "function_complete",
            1 => "task_does_not_exist",
            2 => "lun_does_not_exist",
            3 => "task_still_allegiant",
            4 => "reassignment_not_supported",
            5 => "not_supported",
            6 => "authorization_failed",
            _ => "rejected",
        };
        self.all
            .tmfs
            .get_or_create(&TmfLabels {
                target: self.labels.target.clone(),
                tpgt: self.labels.tpgt.clone(),
                function: FUNCTIONS
                    .get(usize::from(function))
                    .copied()
                    .unwrap_or("unknown"),
                response,
            })
            .inc();
    }
}

/// The outcome label of a login refused with `status` (RFC 7143 §11.13.5).
pub fn login_outcome(status: iscsi_wire::LoginStatus) -> &'static str {
    match (status.0, status.1) {
        (2, 0x01) => "authentication_failure",
        (2, 0x02) => "authorization_failure",
        (2, 0x03) => "target_not_found",
        (2, 0x04) => "target_removed",
        (2, 0x05) => "unsupported_version",
        (2, 0x06) => "too_many_connections",
        (2, 0x07) => "missing_parameter",
        (2, 0x08) => "cannot_include_in_session",
        (2, 0x09) => "session_type_not_supported",
        (2, 0x0a) => "session_does_not_exist",
        (2, 0x0b) => "invalid_during_login",
        (2, _) => "initiator_error",
        (3, 0x01) => "service_unavailable",
        (3, 0x02) => "out_of_resources",
        _ => "target_error",
    }
}

/// Resident set size from /proc/self/statm (0 where there is none).
fn resident_bytes() -> u64 {
    let pages = std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse::<u64>().ok())
        .unwrap_or(0);
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    pages * u64::try_from(page).unwrap_or(4096)
}

/// Serve `GET /metrics` on `addr` until the task is dropped.
pub async fn serve(metrics: Arc<Metrics>, addr: SocketAddr) -> anyhow::Result<()> {
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("metrics: listen on {addr}: {e}"))?;
    info!(%addr, "metrics listening (GET /metrics)");
    loop {
        let (sock, _) = listener.accept().await?;
        let m = metrics.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                let m = m.clone();
                async move { Ok::<_, std::convert::Infallible>(answer(&m, &req)) }
            });
            let io = hyper_util::rt::TokioIo::new(sock);
            // A scrape is small and quick; a peer that holds the connection idle is dropped.
            let conn = hyper::server::conn::http1::Builder::new()
                .keep_alive(true)
                .serve_connection(io, svc);
            let _ = tokio::time::timeout(Duration::from_secs(60), conn).await;
        });
    }
}

fn answer(m: &Metrics, req: &Request<hyper::body::Incoming>) -> Response<Full<Bytes>> {
    let (status, ctype, body) = match (req.method(), req.uri().path()) {
        (&hyper::Method::GET, "/metrics") => (
            StatusCode::OK,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            m.encode(),
        ),
        (&hyper::Method::GET, _) => (
            StatusCode::NOT_FOUND,
            "text/plain",
            "not found: try /metrics\n".to_string(),
        ),
        _ => (
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain",
            "GET only\n".to_string(),
        ),
    };
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    if let Ok(v) = hyper::header::HeaderValue::from_str(ctype) {
        r.headers_mut().insert(hyper::header::CONTENT_TYPE, v);
    }
    r
}

/// A backstore operation, as the backstore latency histograms split them.
#[allow(non_camel_case_types)]
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
enum StoreOp {
    read,
    write,
    flush,
    unmap,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StoreLabels {
    target: String,
    lun: String,
    op: StoreOp,
}

impl Metrics {
    /// `store` with every read, write, flush and unmap timed into
    /// `ferrite_backstore_duration_seconds{target, lun, op}`.
    pub fn timed_store(
        &self,
        target: &str,
        lun: u64,
        store: Arc<dyn backstore::Backstore>,
    ) -> Arc<dyn backstore::Backstore> {
        let h = |op| {
            self.store_latency
                .get_or_create(&StoreLabels {
                    target: target.to_string(),
                    lun: lun.to_string(),
                    op,
                })
                .clone()
        };
        Arc::new(TimedBackstore {
            ops: [
                h(StoreOp::read),
                h(StoreOp::write),
                h(StoreOp::flush),
                h(StoreOp::unmap),
            ],
            inner: store,
        })
    }
}

/// A backstore whose operations are timed (see [`Metrics::timed_store`]); everything else is
/// the inner store's, default methods included.
struct TimedBackstore {
    inner: Arc<dyn backstore::Backstore>,
    ops: [Histogram; 4],
}

impl std::fmt::Debug for TimedBackstore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.inner.fmt(f)
    }
}

impl TimedBackstore {
    fn time<R>(&self, op: StoreOp, f: impl FnOnce() -> R) -> R {
        let t0 = std::time::Instant::now();
        let r = f();
        self.ops[op as usize].observe(t0.elapsed().as_secs_f64());
        r
    }
}

impl backstore::Backstore for TimedBackstore {
    fn kind(&self) -> &'static str {
        self.inner.kind()
    }
    fn size(&self) -> u64 {
        self.inner.size()
    }
    fn refresh_size(&self) -> std::io::Result<u64> {
        self.inner.refresh_size()
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        self.time(StoreOp::read, || self.inner.read_at(buf, offset))
    }
    fn read_vec(&self, len: usize, offset: u64) -> std::io::Result<Vec<u8>> {
        self.time(StoreOp::read, || self.inner.read_vec(len, offset))
    }
    fn write_at(&self, buf: &[u8], offset: u64) -> std::io::Result<()> {
        self.time(StoreOp::write, || self.inner.write_at(buf, offset))
    }
    fn flush(&self) -> std::io::Result<()> {
        self.time(StoreOp::flush, || self.inner.flush())
    }
    fn unmap(&self, offset: u64, len: u64) -> std::io::Result<bool> {
        self.time(StoreOp::unmap, || self.inner.unmap(offset, len))
    }
    fn supports_unmap(&self) -> bool {
        self.inner.supports_unmap()
    }
    fn anchor(&self, offset: u64, len: u64) -> std::io::Result<()> {
        self.time(StoreOp::write, || self.inner.anchor(offset, len))
    }
    fn space(&self) -> std::io::Result<Option<backstore::Space>> {
        self.inner.space()
    }
    fn extent_at(&self, offset: u64) -> std::io::Result<Option<backstore::Extent>> {
        self.inner.extent_at(offset)
    }
    fn encrypted(&self) -> bool {
        self.inner.encrypted()
    }
    fn crypto_erase(&self) -> std::io::Result<()> {
        self.inner.crypto_erase()
    }
    fn compare_and_write(
        &self,
        offset: u64,
        compare: &[u8],
        data: &[u8],
    ) -> std::io::Result<Option<u64>> {
        self.time(StoreOp::write, || {
            self.inner.compare_and_write(offset, compare, data)
        })
    }
    fn as_async(&self) -> Option<&dyn backstore::AsyncBackstore> {
        self.inner
            .as_async()
            .map(|_| self as &dyn backstore::AsyncBackstore)
    }
}

/// The asynchronous operations, timed from submission to completion.
impl backstore::AsyncBackstore for TimedBackstore {
    fn read_async(&self, offset: u64, len: usize, done: backstore::Done<Vec<u8>>) {
        let Some(a) = self.inner.as_async() else {
            return done(backstore::Backstore::read_vec(self, len, offset));
        };
        let (h, t0) = (
            self.ops[StoreOp::read as usize].clone(),
            std::time::Instant::now(),
        );
        a.read_async(
            offset,
            len,
            Box::new(move |r| {
                h.observe(t0.elapsed().as_secs_f64());
                done(r)
            }),
        );
    }
    fn write_async(&self, data: Vec<u8>, offset: u64, done: backstore::Done<Vec<u8>>) {
        let Some(a) = self.inner.as_async() else {
            return done(backstore::Backstore::write_at(self, &data, offset).map(|()| data));
        };
        let (h, t0) = (
            self.ops[StoreOp::write as usize].clone(),
            std::time::Instant::now(),
        );
        a.write_async(
            data,
            offset,
            Box::new(move |r| {
                h.observe(t0.elapsed().as_secs_f64());
                done(r)
            }),
        );
    }
    fn flush_async(&self, done: backstore::Done<()>) {
        let Some(a) = self.inner.as_async() else {
            return done(backstore::Backstore::flush(self));
        };
        let (h, t0) = (
            self.ops[StoreOp::flush as usize].clone(),
            std::time::Instant::now(),
        );
        a.flush_async(Box::new(move |r| {
            h.observe(t0.elapsed().as_secs_f64());
            done(r)
        }));
    }
}
