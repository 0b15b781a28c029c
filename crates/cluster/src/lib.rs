//! Ferrite's cluster state: a versioned key-value store with compare-and-swap on a revision,
//! watches and leases, the model etcd offers (issue "Clusters on etcd"). The daemon keeps what
//! every node must agree on (membership, portal owners, persistent reservations, ALUA states)
//! behind [`ClusterStore`]; the consensus is the store's, never ours.
//!
//! Semantics every implementation keeps (and [`conformance`] checks):
//! - one **revision** counter for the whole store, raised by every change (one change, one
//!   revision); every key remembers the revision of its last change (`mod_revision`) and of its
//!   creation (`create_revision`);
//! - [`ClusterStore::put_if`] and [`ClusterStore::delete_if`] succeed only if the key's
//!   `mod_revision` is the expected one (0: the key must not exist), so concurrent writers
//!   cannot lose each other's updates;
//! - a **watch** on a prefix from a revision delivers every change with a revision at or above
//!   it, in revision order, without gaps; one that starts below what the store still remembers
//!   fails with [`Error::Compacted`] (read the prefix again, then watch from its revision + 1);
//! - a **lease** expires when not kept alive within its TTL; the keys put with it are deleted
//!   then (and on revoke), each deletion an event watchers see. A store may keep a lease longer
//!   than its TTL (etcd resets every lease to its full TTL when its leader changes), never
//!   shorter: holders count from their last successful keep-alive.
//!
//! [`MemStore`] is the single-node implementation (one process, nothing to agree with);
//! [`EtcdStore`] keeps the state in etcd through its JSON gateway.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

pub mod conformance;
mod etcd;
mod mem;

pub use etcd::{EtcdStore, EtcdTls};
pub use mem::MemStore;

/// A store-wide revision: raised by every change.
pub type Revision = u64;

/// A boxed future, so that [`ClusterStore`] can be used as a trait object.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A lease's identity.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LeaseId(pub i64);

/// One key as the store has it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyValue {
    pub key: Vec<u8>,
    pub value: Vec<u8>,
    pub create_revision: Revision,
    pub mod_revision: Revision,
    /// The lease the key lives with, if any.
    pub lease: Option<LeaseId>,
}

/// One change, as a watch delivers it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    Put(KeyValue),
    /// The key is gone (deleted, or its lease ended) at `revision`.
    Delete {
        key: Vec<u8>,
        revision: Revision,
    },
}

impl Event {
    pub fn revision(&self) -> Revision {
        match self {
            Event::Put(kv) => kv.mod_revision,
            Event::Delete { revision, .. } => *revision,
        }
    }

    pub fn key(&self) -> &[u8] {
        match self {
            Event::Put(kv) => &kv.key,
            Event::Delete { key, .. } => key,
        }
    }
}

/// What a compare-and-swap did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Cas {
    /// Done, at this revision.
    Done(Revision),
    /// Not done: the key's current state (None: it does not exist).
    Conflict(Option<KeyValue>),
}

/// A granted lease.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Lease {
    pub id: LeaseId,
    pub ttl: Duration,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Error {
    /// The watch asked for revisions the store no longer remembers.
    Compacted { oldest: Revision },
    /// The lease does not exist (expired or revoked).
    NoLease(LeaseId),
    /// The store cannot be reached or answered nonsense; the operation may or may not have
    /// happened (read again before deciding).
    Unavailable(String),
    /// A request the store refuses (too large, bad TTL).
    Invalid(String),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Compacted { oldest } => {
                write!(f, "revision compacted (the store remembers from {oldest})")
            }
            Error::NoLease(id) => write!(f, "lease {:x} does not exist", id.0),
            Error::Unavailable(m) => write!(f, "cluster store unavailable: {m}"),
            Error::Invalid(m) => write!(f, "invalid request: {m}"),
        }
    }
}

impl std::error::Error for Error {}

pub type Result<T> = std::result::Result<T, Error>;

/// A stream of changes under a prefix (see the crate docs). Dropping it ends the watch.
pub struct Watch {
    rx: tokio::sync::mpsc::Receiver<Result<Event>>,
}

impl Watch {
    /// A watch fed by `rx` (implementations make them).
    pub fn new(rx: tokio::sync::mpsc::Receiver<Result<Event>>) -> Watch {
        Watch { rx }
    }

    /// The next change; `None` when the store ended the watch (reconnect: read, then watch
    /// again from the read's revision + 1). An `Err` ends it too.
    pub async fn next(&mut self) -> Option<Result<Event>> {
        self.rx.recv().await
    }
}

/// Keys and values are bounded: what one node writes must not be able to fill the store.
pub const MAX_KEY: usize = 1024;
pub const MAX_VALUE: usize = 1 << 20;

/// The cluster's shared state (see the crate docs).
pub trait ClusterStore: Send + Sync {
    /// The key now, with the store's revision at the time of the read.
    fn get<'a>(&'a self, key: &'a [u8]) -> BoxFuture<'a, Result<(Option<KeyValue>, Revision)>>;

    /// Every key under `prefix`, in key order, with the store's revision of that snapshot.
    fn list<'a>(&'a self, prefix: &'a [u8]) -> BoxFuture<'a, Result<(Vec<KeyValue>, Revision)>>;

    /// Put `value` at `key` if the key's `mod_revision` is `expect` (0: the key must not
    /// exist), bound to `lease` if given.
    fn put_if<'a>(
        &'a self,
        key: &'a [u8],
        value: &'a [u8],
        expect: Revision,
        lease: Option<LeaseId>,
    ) -> BoxFuture<'a, Result<Cas>>;

    /// Delete `key` if its `mod_revision` is `expect`.
    fn delete_if<'a>(&'a self, key: &'a [u8], expect: Revision) -> BoxFuture<'a, Result<Cas>>;

    /// Changes under `prefix` from revision `from` on (see the crate docs).
    fn watch<'a>(&'a self, prefix: &'a [u8], from: Revision) -> BoxFuture<'a, Result<Watch>>;

    /// A new lease of `ttl` (whole seconds, at least one).
    fn grant(&self, ttl: Duration) -> BoxFuture<'_, Result<Lease>>;

    /// Renew `id` to its full TTL; `Err(NoLease)` once it is gone.
    fn keep_alive(&self, id: LeaseId) -> BoxFuture<'_, Result<Duration>>;

    /// End `id` now, deleting its keys.
    fn revoke(&self, id: LeaseId) -> BoxFuture<'_, Result<()>>;
}

/// Check a key and value against the bounds (every implementation refuses the same).
pub(crate) fn check_sizes(key: &[u8], value: &[u8]) -> Result<()> {
    if key.is_empty() || key.len() > MAX_KEY {
        return Err(Error::Invalid(format!(
            "key of {} bytes (1..={MAX_KEY})",
            key.len()
        )));
    }
    if value.len() > MAX_VALUE {
        return Err(Error::Invalid(format!(
            "value of {} bytes (at most {MAX_VALUE})",
            value.len()
        )));
    }
    Ok(())
}

/// A lease's TTL in whole seconds, as etcd counts it (at least 1).
pub(crate) fn ttl_secs(ttl: Duration) -> Result<u64> {
    let s = ttl.as_secs();
    if s == 0 || s > 3600 * 24 {
        return Err(Error::Invalid(format!("lease TTL {ttl:?} (1 s to 1 day)")));
    }
    Ok(s)
}
