//! [`ClusterStore`] on etcd (3.4 or newer) through its JSON gateway (`POST /v3/kv/range`,
//! `/v3/kv/txn`, `/v3/watch`, `/v3/lease/...`): HTTP/1.1 and JSON, keys and values in base64,
//! 64-bit numbers as strings. Chosen over the gRPC client (`etcd-client`: tonic and prost, some
//! 90 more crates, `protoc` at build time, about 60 s more to a clean build) because the daemon
//! already has hyper and the cluster's traffic is small control-plane requests.
//!
//! Compare-and-swap is one etcd transaction comparing the key's `mod_revision`; a watch is one
//! long-lived streaming request whose newline-separated JSON results become [`Event`]s. Every
//! request tries the endpoints in order and uses the first that answers.
//!
//! The link is TLS with a client certificate ([`EtcdTls`]; etcd started with
//! `--client-cert-auth`): the cluster's state decides who may write to shared LUNs, so nobody
//! unauthenticated may change it. Plain HTTP ([`EtcdStore::new`]) is for tests on loopback.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use http_body_util::{BodyExt, Full};
use hyper::body::{Body as _, Bytes};
use hyper::Request;
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio::sync::mpsc;

use crate::{
    check_sizes, ttl_secs, BoxFuture, Cas, ClusterStore, Error, Event, KeyValue, Lease, LeaseId,
    Result, Revision, Watch,
};

/// The largest answer read whole (a `list` of many keys); etcd's own request limit is 1.5 MiB.
const MAX_RESPONSE: usize = 64 << 20;
/// One watch result line, at most.
const MAX_WATCH_LINE: usize = 8 << 20;
/// Connecting and answering, at most (a watch waits longer: it streams).
const TIMEOUT: Duration = Duration::from_secs(5);
/// Unread watch events per watch before it is ended (as `MemStore`'s).
const WATCH_BACKLOG: usize = 4096;

/// An etcd cluster, by its client endpoints (`host:port`).
#[derive(Clone)]
pub struct EtcdStore {
    endpoints: Vec<String>,
    tls: Option<tokio_rustls::TlsConnector>,
}

impl std::fmt::Debug for EtcdStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdStore")
            .field("endpoints", &self.endpoints)
            .field("tls", &self.tls.is_some())
            .finish()
    }
}

/// The files of a TLS link to etcd: the CA that signed etcd's server certificates, and this
/// node's client certificate and key (PEM).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EtcdTls {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl EtcdTls {
    /// The rustls client configuration: only servers the CA signed, this client's certificate.
    fn client_config(&self) -> Result<rustls::ClientConfig> {
        use rustls_pki_types::pem::PemObject;
        use rustls_pki_types::{CertificateDer, PrivateKeyDer};
        let bad = |what: &str, p: &Path, e: &dyn std::fmt::Display| {
            Error::Invalid(format!("{what} {}: {e}", p.display()))
        };
        let mut roots = rustls::RootCertStore::empty();
        for c in CertificateDer::pem_file_iter(&self.ca).map_err(|e| bad("CA", &self.ca, &e))? {
            let c = c.map_err(|e| bad("CA", &self.ca, &e))?;
            roots.add(c).map_err(|e| bad("CA", &self.ca, &e))?;
        }
        if roots.is_empty() {
            return Err(bad("CA", &self.ca, &"no certificate"));
        }
        let chain = CertificateDer::pem_file_iter(&self.cert)
            .map_err(|e| bad("certificate", &self.cert, &e))?
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(|e| bad("certificate", &self.cert, &e))?;
        // The key's text never reaches an error message: only its path.
        let key = PrivateKeyDer::from_pem_file(&self.key)
            .map_err(|_| bad("key", &self.key, &"not a PEM private key"))?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| Error::Invalid(e.to_string()))?
            .with_root_certificates(roots)
            .with_client_auth_cert(chain, key)
            .map_err(|e| bad("certificate and key", &self.cert, &e))
    }
}

fn b64(b: &[u8]) -> String {
    B64.encode(b)
}

fn unb64(v: &Value) -> Result<Vec<u8>> {
    match v.as_str() {
        None => Ok(Vec::new()),
        Some(s) => B64
            .decode(s)
            .map_err(|e| Error::Unavailable(format!("etcd sent bad base64: {e}"))),
    }
}

/// A JSON gateway number: a string (int64), or absent for 0.
fn num(v: &Value) -> u64 {
    match v {
        Value::String(s) => s.parse().unwrap_or(0),
        Value::Number(n) => n.as_u64().unwrap_or(0),
        _ => 0,
    }
}

fn signed(v: &Value) -> i64 {
    match v {
        Value::String(s) => s.parse().unwrap_or(0),
        Value::Number(n) => n.as_i64().unwrap_or(0),
        _ => 0,
    }
}

/// The end of the key range that is exactly `prefix` (etcd's `range_end`): the prefix with
/// its last byte below 0xFF raised by one; all keys for an empty or all-0xFF prefix.
fn range_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xFF {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

fn kv_from(v: &Value) -> Result<KeyValue> {
    let lease = signed(&v["lease"]);
    Ok(KeyValue {
        key: unb64(&v["key"])?,
        value: unb64(&v["value"])?,
        create_revision: num(&v["create_revision"]),
        mod_revision: num(&v["mod_revision"]),
        lease: (lease != 0).then_some(LeaseId(lease)),
    })
}

fn header_revision(v: &Value) -> Revision {
    num(&v["header"]["revision"])
}

/// The key as the failure branch of a compare-and-swap transaction read it (None: absent).
fn failed_txn_key(v: &Value) -> Result<Option<KeyValue>> {
    v["responses"][0]["response_range"]["kvs"]
        .as_array()
        .and_then(|a| a.first())
        .map(kv_from)
        .transpose()
}

/// etcd's "lease not found" (gRPC NotFound, code 5, with this message).
fn lease_missing(v: &Value) -> bool {
    let msg = v["error"]
        .as_str()
        .or_else(|| v["message"].as_str())
        .unwrap_or("");
    msg.contains("lease not found")
}

impl EtcdStore {
    /// A store on these client endpoints (`host:port`, tried in order), plain HTTP: for tests
    /// on loopback only.
    pub fn new(endpoints: Vec<String>) -> EtcdStore {
        EtcdStore {
            endpoints,
            tls: None,
        }
    }

    /// A store on these endpoints over TLS with this node's client certificate (the way a
    /// cluster talks to etcd).
    pub fn with_tls(endpoints: Vec<String>, tls: &EtcdTls) -> Result<EtcdStore> {
        let config = tls.client_config()?;
        Ok(EtcdStore {
            endpoints,
            tls: Some(tokio_rustls::TlsConnector::from(Arc::new(config))),
        })
    }

    /// An HTTP/1.1 connection to the first endpoint that accepts one.
    async fn connect(
        &self,
    ) -> Result<(hyper::client::conn::http1::SendRequest<Full<Bytes>>, String)> {
        let mut last = String::from("no endpoints");
        for ep in &self.endpoints {
            let tcp = match tokio::time::timeout(TIMEOUT, TcpStream::connect(ep)).await {
                Ok(Ok(t)) => t,
                Ok(Err(e)) => {
                    last = format!("{ep}: {e}");
                    continue;
                }
                Err(_) => {
                    last = format!("{ep}: connect timed out");
                    continue;
                }
            };
            let _ = tcp.set_nodelay(true);
            let shaken = match &self.tls {
                None => handshake(tcp).await,
                Some(tls) => {
                    let host = ep.rsplit_once(':').map_or(ep.as_str(), |(h, _)| h);
                    let host = host.trim_start_matches('[').trim_end_matches(']');
                    let name = match rustls_pki_types::ServerName::try_from(host.to_string()) {
                        Ok(n) => n,
                        Err(e) => {
                            last = format!("{ep}: {e}");
                            continue;
                        }
                    };
                    match tokio::time::timeout(TIMEOUT, tls.connect(name, tcp)).await {
                        Ok(Ok(stream)) => handshake(stream).await,
                        Ok(Err(e)) => Err(e.to_string()),
                        Err(_) => Err("TLS handshake timed out".to_string()),
                    }
                }
            };
            match shaken {
                Ok(sender) => return Ok((sender, ep.clone())),
                Err(e) => last = format!("{ep}: {e}"),
            }
        }
        Err(Error::Unavailable(last))
    }

    fn request(ep: &str, path: &str, body: &Value) -> Result<Request<Full<Bytes>>> {
        Request::post(path)
            .header(hyper::header::HOST, ep)
            .header(hyper::header::CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(body.to_string())))
            .map_err(|e| Error::Invalid(e.to_string()))
    }

    /// One request, its whole JSON answer (an error answer too: the caller decides).
    async fn call(&self, path: &str, body: Value) -> Result<(bool, Value)> {
        let work = async {
            let (mut sender, ep) = self.connect().await?;
            let resp = sender
                .send_request(Self::request(&ep, path, &body)?)
                .await
                .map_err(|e| Error::Unavailable(format!("{ep}{path}: {e}")))?;
            let ok = resp.status().is_success();
            let limited = http_body_util::Limited::new(resp.into_body(), MAX_RESPONSE);
            let bytes = limited
                .collect()
                .await
                .map_err(|e| Error::Unavailable(format!("{ep}{path}: {e}")))?
                .to_bytes();
            let v: Value = serde_json::from_slice(&bytes)
                .map_err(|e| Error::Unavailable(format!("{ep}{path}: not JSON ({e})")))?;
            Ok((ok, v))
        };
        tokio::time::timeout(TIMEOUT, work)
            .await
            .map_err(|_| Error::Unavailable(format!("{path}: no answer within {TIMEOUT:?}")))?
    }

    /// A call that must succeed.
    async fn ok(&self, path: &str, body: Value) -> Result<Value> {
        let (ok, v) = self.call(path, body).await?;
        if ok {
            Ok(v)
        } else {
            Err(Error::Unavailable(format!("{path}: {v}")))
        }
    }

    async fn range(&self, key: &[u8], end: Option<Vec<u8>>) -> Result<(Vec<KeyValue>, Revision)> {
        let mut body = json!({ "key": b64(key) });
        if let Some(end) = end {
            body["range_end"] = json!(b64(&end));
        }
        let v = self.ok("/v3/kv/range", body).await?;
        let kvs = v["kvs"]
            .as_array()
            .into_iter()
            .flatten()
            .map(kv_from)
            .collect::<Result<Vec<_>>>()?;
        Ok((kvs, header_revision(&v)))
    }
}

impl ClusterStore for EtcdStore {
    fn get<'a>(&'a self, key: &'a [u8]) -> BoxFuture<'a, Result<(Option<KeyValue>, Revision)>> {
        Box::pin(async move {
            let (mut kvs, rev) = self.range(key, None).await?;
            Ok((kvs.pop(), rev))
        })
    }

    fn list<'a>(&'a self, prefix: &'a [u8]) -> BoxFuture<'a, Result<(Vec<KeyValue>, Revision)>> {
        Box::pin(async move { self.range(prefix, Some(range_end(prefix))).await })
    }

    fn put_if<'a>(
        &'a self,
        key: &'a [u8],
        value: &'a [u8],
        expect: Revision,
        lease: Option<LeaseId>,
    ) -> BoxFuture<'a, Result<Cas>> {
        Box::pin(async move {
            check_sizes(key, value)?;
            let mut put = json!({ "key": b64(key), "value": b64(value) });
            if let Some(l) = lease {
                put["lease"] = json!(l.0.to_string());
            }
            let txn = json!({
                "compare": [{ "key": b64(key), "target": "MOD", "result": "EQUAL",
                              "mod_revision": expect.to_string() }],
                "success": [{ "request_put": put }],
                "failure": [{ "request_range": { "key": b64(key) } }],
            });
            let (ok, v) = self.call("/v3/kv/txn", txn).await?;
            if !ok {
                if let Some(l) = lease.filter(|_| lease_missing(&v)) {
                    return Err(Error::NoLease(l));
                }
                return Err(Error::Unavailable(format!("/v3/kv/txn: {v}")));
            }
            if v["succeeded"].as_bool().unwrap_or(false) {
                return Ok(Cas::Done(header_revision(&v)));
            }
            Ok(Cas::Conflict(failed_txn_key(&v)?))
        })
    }

    fn delete_if<'a>(&'a self, key: &'a [u8], expect: Revision) -> BoxFuture<'a, Result<Cas>> {
        Box::pin(async move {
            // A key that does not exist has nothing to delete (etcd's comparison with 0 would
            // succeed and delete nothing).
            if expect == 0 {
                return Ok(Cas::Conflict(self.get(key).await?.0));
            }
            let txn = json!({
                "compare": [{ "key": b64(key), "target": "MOD", "result": "EQUAL",
                              "mod_revision": expect.to_string() }],
                "success": [{ "request_delete_range": { "key": b64(key) } }],
                "failure": [{ "request_range": { "key": b64(key) } }],
            });
            let v = self.ok("/v3/kv/txn", txn).await?;
            if v["succeeded"].as_bool().unwrap_or(false) {
                return Ok(Cas::Done(header_revision(&v)));
            }
            Ok(Cas::Conflict(failed_txn_key(&v)?))
        })
    }

    fn watch<'a>(&'a self, prefix: &'a [u8], from: Revision) -> BoxFuture<'a, Result<Watch>> {
        Box::pin(async move {
            let from = if from == 0 {
                self.get(prefix).await?.1 + 1
            } else {
                from
            };
            let (mut sender, ep) = self.connect().await?;
            let body = json!({ "create_request": {
                "key": b64(prefix), "range_end": b64(&range_end(prefix)),
                "start_revision": from.to_string(),
            }});
            let resp = tokio::time::timeout(
                TIMEOUT,
                sender.send_request(Self::request(&ep, "/v3/watch", &body)?),
            )
            .await
            .map_err(|_| Error::Unavailable(format!("{ep}/v3/watch: no answer")))?
            .map_err(|e| Error::Unavailable(format!("{ep}/v3/watch: {e}")))?;
            if !resp.status().is_success() {
                return Err(Error::Unavailable(format!(
                    "{ep}/v3/watch: HTTP {}",
                    resp.status()
                )));
            }
            let mut lines = Lines::new(resp.into_body());
            // The first result says the watch exists, or why not.
            let first = tokio::time::timeout(TIMEOUT, lines.next())
                .await
                .map_err(|_| Error::Unavailable(format!("{ep}/v3/watch: not created")))??;
            let r = &first["result"];
            if r["canceled"].as_bool().unwrap_or(false) || num(&r["compact_revision"]) > 0 {
                let oldest = num(&r["compact_revision"]);
                return Err(if oldest > 0 {
                    Error::Compacted { oldest }
                } else {
                    Error::Unavailable(format!("{ep}/v3/watch: {first}"))
                });
            }
            let (tx, rx) = mpsc::channel(WATCH_BACKLOG);
            // The first line may already carry events.
            let pending = events(r)?;
            tokio::spawn(pump(lines, pending, tx));
            Ok(Watch::new(rx))
        })
    }

    fn grant(&self, ttl: Duration) -> BoxFuture<'_, Result<Lease>> {
        Box::pin(async move {
            let secs = ttl_secs(ttl)?;
            let v = self
                .ok("/v3/lease/grant", json!({ "TTL": secs.to_string() }))
                .await?;
            let id = signed(&v["ID"]);
            if id == 0 {
                return Err(Error::Unavailable(format!("lease grant: {v}")));
            }
            Ok(Lease {
                id: LeaseId(id),
                ttl: Duration::from_secs(num(&v["TTL"])),
            })
        })
    }

    fn keep_alive(&self, id: LeaseId) -> BoxFuture<'_, Result<Duration>> {
        Box::pin(async move {
            let v = self
                .ok("/v3/lease/keepalive", json!({ "ID": id.0.to_string() }))
                .await?;
            // A lease that is gone comes back with no (or a non-positive) TTL.
            let ttl = signed(&v["result"]["TTL"]);
            if ttl <= 0 {
                return Err(Error::NoLease(id));
            }
            Ok(Duration::from_secs(ttl as u64))
        })
    }

    fn revoke(&self, id: LeaseId) -> BoxFuture<'_, Result<()>> {
        Box::pin(async move {
            let (ok, v) = self
                .call("/v3/lease/revoke", json!({ "ID": id.0.to_string() }))
                .await?;
            if ok {
                Ok(())
            } else if lease_missing(&v) {
                Err(Error::NoLease(id))
            } else {
                Err(Error::Unavailable(format!("lease revoke: {v}")))
            }
        })
    }
}

/// The HTTP/1.1 handshake on `io`; its connection runs on a task of its own.
async fn handshake<T>(
    io: T,
) -> std::result::Result<hyper::client::conn::http1::SendRequest<Full<Bytes>>, String>
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (sender, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(io))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(sender)
}

/// The events of one watch result.
fn events(r: &Value) -> Result<Vec<Event>> {
    let mut out = Vec::new();
    for e in r["events"].as_array().into_iter().flatten() {
        let kv = kv_from(&e["kv"])?;
        out.push(if e["type"].as_str() == Some("DELETE") {
            Event::Delete {
                key: kv.key,
                revision: kv.mod_revision,
            }
        } else {
            Event::Put(kv)
        });
    }
    Ok(out)
}

/// Forward a watch's events until the stream ends, the receiver goes or falls too far behind.
async fn pump(mut lines: Lines, pending: Vec<Event>, tx: mpsc::Sender<Result<Event>>) {
    for e in pending {
        if tx.try_send(Ok(e)).is_err() {
            return;
        }
    }
    loop {
        let v = tokio::select! {
            v = lines.next() => v,
            _ = tx.closed() => return,
        };
        let v = match v {
            Ok(v) => v,
            Err(e) => {
                let _ = tx.try_send(Err(e));
                return;
            }
        };
        let r = &v["result"];
        if r["canceled"].as_bool().unwrap_or(false) {
            let oldest = num(&r["compact_revision"]);
            let e = if oldest > 0 {
                Error::Compacted { oldest }
            } else {
                Error::Unavailable(format!("watch canceled: {v}"))
            };
            let _ = tx.try_send(Err(e));
            return;
        }
        match events(r) {
            Ok(evs) => {
                for e in evs {
                    if tx.try_send(Ok(e)).is_err() {
                        return;
                    }
                }
            }
            Err(e) => {
                let _ = tx.try_send(Err(e));
                return;
            }
        }
    }
}

/// A streaming body cut into JSON values, one per line.
struct Lines {
    body: hyper::body::Incoming,
    buf: Vec<u8>,
}

impl Lines {
    fn new(body: hyper::body::Incoming) -> Lines {
        Lines {
            body,
            buf: Vec::new(),
        }
    }

    async fn next(&mut self) -> Result<Value> {
        loop {
            if let Some(i) = self.buf.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = self.buf.drain(..=i).collect();
                if line.iter().all(u8::is_ascii_whitespace) {
                    continue;
                }
                return serde_json::from_slice(&line)
                    .map_err(|e| Error::Unavailable(format!("watch: not JSON ({e})")));
            }
            if self.buf.len() > MAX_WATCH_LINE {
                return Err(Error::Unavailable("watch: line too long".into()));
            }
            if self.body.is_end_stream() {
                return Err(Error::Unavailable("watch: stream ended".into()));
            }
            match self.body.frame().await {
                Some(Ok(f)) => {
                    if let Ok(d) = f.into_data() {
                        self.buf.extend_from_slice(&d);
                    }
                }
                Some(Err(e)) => return Err(Error::Unavailable(format!("watch: {e}"))),
                None => {
                    // A last value without its newline.
                    if self.buf.iter().all(u8::is_ascii_whitespace) {
                        return Err(Error::Unavailable("watch: stream ended".into()));
                    }
                    let line = std::mem::take(&mut self.buf);
                    return serde_json::from_slice(&line)
                        .map_err(|e| Error::Unavailable(format!("watch: not JSON ({e})")));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn range_ends() {
        assert_eq!(range_end(b"/a/"), b"/a0".to_vec());
        assert_eq!(range_end(b"a\xff"), b"b".to_vec());
        assert_eq!(range_end(b"\xff\xff"), vec![0]);
        assert_eq!(range_end(b""), vec![0]);
    }

    #[test]
    fn gateway_numbers_and_defaults() {
        let v = json!({ "kv": { "key": b64(b"k"), "mod_revision": "7", "create_revision": "3" } });
        let kv = kv_from(&v["kv"]).unwrap();
        assert_eq!(
            (
                kv.key,
                kv.value,
                kv.create_revision,
                kv.mod_revision,
                kv.lease
            ),
            (b"k".to_vec(), Vec::new(), 3, 7, None)
        );
        let r = json!({ "events": [
            { "kv": { "key": b64(b"a"), "value": b64(b"1"), "mod_revision": "4", "lease": "99" } },
            { "type": "DELETE", "kv": { "key": b64(b"a"), "mod_revision": "5" } }
        ]});
        let e = events(&r).unwrap();
        assert!(matches!(&e[0], Event::Put(kv) if kv.lease == Some(LeaseId(99))));
        assert_eq!(
            e[1],
            Event::Delete {
                key: b"a".to_vec(),
                revision: 5
            }
        );
        assert!(unb64(&json!("%%%")).is_err());
    }
}
