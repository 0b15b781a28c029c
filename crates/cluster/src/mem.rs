//! The single-node [`ClusterStore`]: everything in this process, for a Ferrite that is not in a
//! cluster and for tests. Same semantics as etcd (see the crate docs): one revision counter,
//! compare-and-swap, watches replayed from a bounded history, leases that a background task
//! expires.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use tokio::sync::{mpsc, Notify};
use tokio::time::Instant;

use crate::{
    check_sizes, ttl_secs, BoxFuture, Cas, ClusterStore, Error, Event, KeyValue, Lease, LeaseId,
    Result, Revision, Watch,
};

/// Changes remembered for watches that start in the past.
const HISTORY: usize = 4096;
/// Changes a watcher may have unread; one that falls further behind is ended (it reads again
/// and watches from there), so a stalled watcher cannot grow the store's memory.
const WATCH_BACKLOG: usize = HISTORY + 256;

#[derive(Debug)]
struct LeaseState {
    ttl: Duration,
    deadline: Instant,
}

struct Watcher {
    prefix: Vec<u8>,
    tx: mpsc::Sender<Result<Event>>,
}

#[derive(Default)]
struct State {
    revision: Revision,
    kvs: BTreeMap<Vec<u8>, KeyValue>,
    leases: HashMap<LeaseId, LeaseState>,
    next_lease: i64,
    history: VecDeque<Event>,
    /// Watches may start at this revision or later.
    remembered_from: Revision,
    watchers: Vec<Watcher>,
}

impl State {
    /// Record a change at the next revision and tell the watchers.
    fn commit(&mut self, make: impl FnOnce(Revision) -> Event) -> Revision {
        self.revision += 1;
        let ev = make(self.revision);
        self.watchers.retain(|w| {
            if !ev.key().starts_with(&w.prefix) {
                return !w.tx.is_closed();
            }
            // A full backlog ends the watch (the receiver sees its end and starts again).
            w.tx.try_send(Ok(ev.clone())).is_ok()
        });
        if self.history.len() == HISTORY {
            if let Some(old) = self.history.pop_front() {
                self.remembered_from = old.revision() + 1;
            }
        }
        self.history.push_back(ev);
        self.revision
    }

    fn delete(&mut self, key: &[u8]) -> Revision {
        self.kvs.remove(key);
        let key = key.to_vec();
        self.commit(|revision| Event::Delete { key, revision })
    }

    /// End every lease whose deadline has passed, deleting its keys.
    fn expire(&mut self, now: Instant) {
        let gone: Vec<LeaseId> = self
            .leases
            .iter()
            .filter(|(_, l)| l.deadline <= now)
            .map(|(&id, _)| id)
            .collect();
        for id in gone {
            self.end_lease(id);
        }
    }

    fn end_lease(&mut self, id: LeaseId) -> bool {
        if self.leases.remove(&id).is_none() {
            return false;
        }
        let keys: Vec<Vec<u8>> = self
            .kvs
            .values()
            .filter(|kv| kv.lease == Some(id))
            .map(|kv| kv.key.clone())
            .collect();
        for k in keys {
            self.delete(&k);
        }
        true
    }
}

struct Inner {
    state: Mutex<State>,
    /// Lease deadlines changed (or the store is gone): the reaper looks again.
    leases_changed: Arc<Notify>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.leases_changed.notify_one();
    }
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, State> {
        // Every step leaves the state consistent; a panic elsewhere does not poison it.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The single-node store (see the module docs). Cloning shares it.
#[derive(Clone)]
pub struct MemStore {
    inner: Arc<Inner>,
}

impl Default for MemStore {
    fn default() -> Self {
        Self::new()
    }
}

impl MemStore {
    /// A new, empty store (revision 1 is its first change). Must be called inside a Tokio
    /// runtime: a task of its own ends leases on time.
    pub fn new() -> MemStore {
        let inner = Arc::new(Inner {
            state: Mutex::new(State {
                remembered_from: 1,
                next_lease: 0x1000,
                ..State::default()
            }),
            leases_changed: Arc::new(Notify::new()),
        });
        tokio::spawn(reaper(Arc::downgrade(&inner), inner.leases_changed.clone()));
        MemStore { inner }
    }
}

/// Ends leases when their time is up; stops when the store is gone (its drop wakes it).
async fn reaper(inner: Weak<Inner>, changed: Arc<Notify>) {
    loop {
        // Registered before looking, so that no change between the look and the wait is missed.
        let notified = changed.notified();
        let next = {
            let Some(inner) = inner.upgrade() else { return };
            let mut st = inner.lock();
            st.expire(Instant::now());
            st.leases.values().map(|l| l.deadline).min()
        };
        match next {
            Some(deadline) => {
                tokio::select! {
                    _ = tokio::time::sleep_until(deadline) => {}
                    _ = notified => {}
                }
            }
            None => notified.await,
        }
    }
}

impl ClusterStore for MemStore {
    fn get<'a>(&'a self, key: &'a [u8]) -> BoxFuture<'a, Result<(Option<KeyValue>, Revision)>> {
        Box::pin(async move {
            let mut st = self.inner.lock();
            st.expire(Instant::now());
            Ok((st.kvs.get(key).cloned(), st.revision))
        })
    }

    fn list<'a>(&'a self, prefix: &'a [u8]) -> BoxFuture<'a, Result<(Vec<KeyValue>, Revision)>> {
        Box::pin(async move {
            let mut st = self.inner.lock();
            st.expire(Instant::now());
            let kvs = st
                .kvs
                .range(prefix.to_vec()..)
                .take_while(|(k, _)| k.starts_with(prefix))
                .map(|(_, v)| v.clone())
                .collect();
            Ok((kvs, st.revision))
        })
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
            let mut st = self.inner.lock();
            st.expire(Instant::now());
            let current = st.kvs.get(key).cloned();
            if current.as_ref().map_or(0, |kv| kv.mod_revision) != expect {
                return Ok(Cas::Conflict(current));
            }
            if let Some(id) = lease {
                if !st.leases.contains_key(&id) {
                    return Err(Error::NoLease(id));
                }
            }
            let create = current.as_ref().map(|kv| kv.create_revision);
            let rev = st.commit(|revision| {
                Event::Put(KeyValue {
                    key: key.to_vec(),
                    value: value.to_vec(),
                    create_revision: create.unwrap_or(revision),
                    mod_revision: revision,
                    lease,
                })
            });
            let kv = KeyValue {
                key: key.to_vec(),
                value: value.to_vec(),
                create_revision: create.unwrap_or(rev),
                mod_revision: rev,
                lease,
            };
            st.kvs.insert(key.to_vec(), kv);
            Ok(Cas::Done(rev))
        })
    }

    fn delete_if<'a>(&'a self, key: &'a [u8], expect: Revision) -> BoxFuture<'a, Result<Cas>> {
        Box::pin(async move {
            let mut st = self.inner.lock();
            st.expire(Instant::now());
            let current = st.kvs.get(key).cloned();
            match current {
                Some(kv) if kv.mod_revision == expect => Ok(Cas::Done(st.delete(key))),
                other => Ok(Cas::Conflict(other)),
            }
        })
    }

    fn watch<'a>(&'a self, prefix: &'a [u8], from: Revision) -> BoxFuture<'a, Result<Watch>> {
        Box::pin(async move {
            let mut st = self.inner.lock();
            st.expire(Instant::now());
            let from = if from == 0 { st.revision + 1 } else { from };
            if from < st.remembered_from {
                return Err(Error::Compacted {
                    oldest: st.remembered_from,
                });
            }
            let (tx, rx) = mpsc::channel(WATCH_BACKLOG);
            // The history fits the backlog, so the replay cannot fail.
            for ev in st
                .history
                .iter()
                .filter(|e| e.revision() >= from && e.key().starts_with(prefix))
            {
                let _ = tx.try_send(Ok(ev.clone()));
            }
            st.watchers.push(Watcher {
                prefix: prefix.to_vec(),
                tx,
            });
            Ok(Watch::new(rx))
        })
    }

    fn grant(&self, ttl: Duration) -> BoxFuture<'_, Result<Lease>> {
        Box::pin(async move {
            let ttl = Duration::from_secs(ttl_secs(ttl)?);
            let mut st = self.inner.lock();
            st.next_lease += 1;
            let id = LeaseId(st.next_lease);
            st.leases.insert(
                id,
                LeaseState {
                    ttl,
                    deadline: Instant::now() + ttl,
                },
            );
            drop(st);
            self.inner.leases_changed.notify_one();
            Ok(Lease { id, ttl })
        })
    }

    fn keep_alive(&self, id: LeaseId) -> BoxFuture<'_, Result<Duration>> {
        Box::pin(async move {
            let now = Instant::now();
            let mut st = self.inner.lock();
            st.expire(now);
            let l = st.leases.get_mut(&id).ok_or(Error::NoLease(id))?;
            l.deadline = now + l.ttl;
            let ttl = l.ttl;
            drop(st);
            self.inner.leases_changed.notify_one();
            Ok(ttl)
        })
    }

    fn revoke(&self, id: LeaseId) -> BoxFuture<'_, Result<()>> {
        Box::pin(async move {
            let mut st = self.inner.lock();
            if st.end_lease(id) {
                Ok(())
            } else {
                Err(Error::NoLease(id))
            }
        })
    }
}
