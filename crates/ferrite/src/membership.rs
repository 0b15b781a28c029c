//! Cluster membership and self-fencing (`[cluster]`, issue 10).
//!
//! A clustered node serves only while it holds a lease in the cluster store (etcd) with its
//! node key (`<prefix>nodes/<node>`). It renews the lease every third of its TTL. If it cannot
//! for so long that the lease might end within the guard time, it **fences itself** before
//! the store can consider it gone: it stops its portals, drops every session, refuses every
//! new write to its backstores, waits for the writes in flight to finish and flushes the
//! backstores (so that nothing cached reaches a shared medium later). If that does not finish
//! before the lease could end, the process aborts: a node that cannot prove it has stopped
//! writing must not be running when another node takes over.
//!
//! Counting is conservative: the lease is taken as renewed at the moment the renewal was
//! *sent* (the store restarts its TTL when it receives it, later), and etcd only ever keeps a
//! lease longer (a leader change resets it to its full TTL), never shorter.
//!
//! A node starts fenced and joins first: it waits until no live node holds its name (its own
//! previous run's lease included), then takes the key and opens its portals. After a fence it
//! joins again the same way.

use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use cluster::{Cas, ClusterStore, Error, Lease};
use tokio::time::Instant;
use tracing::{error, info, warn};

/// Whether this node may write, and how many writes are under way.
#[derive(Debug)]
pub struct Fence {
    fenced: AtomicBool,
    inflight: AtomicU64,
    /// A write was let through since the last [`Fence::take_dirty`].
    dirty: AtomicBool,
}

/// A write under way (see [`Fence::enter`]); dropping it ends the write's count.
pub struct Writing<'a>(&'a Fence);

impl Drop for Writing<'_> {
    fn drop(&mut self) {
        self.0.inflight.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A [`Writing`] that owns its fence: an asynchronous write holds it until it completes.
pub struct OwnedWriting(Arc<Fence>);

impl Drop for OwnedWriting {
    fn drop(&mut self) {
        self.0.inflight.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Fence {
    pub fn new(fenced: bool) -> Fence {
        Fence {
            fenced: AtomicBool::new(fenced),
            inflight: AtomicU64::new(0),
            dirty: AtomicBool::new(false),
        }
    }

    pub fn is_fenced(&self) -> bool {
        self.fenced.load(Ordering::SeqCst)
    }

    /// A write may start: counted until the guard drops; `None` once fenced. Counting before
    /// looking (both sequentially consistent) means a fence that has seen no count will see
    /// no write start after it was raised.
    pub fn enter(&self) -> Option<Writing<'_>> {
        self.inflight.fetch_add(1, Ordering::SeqCst);
        if self.fenced.load(Ordering::SeqCst) {
            self.inflight.fetch_sub(1, Ordering::SeqCst);
            return None;
        }
        self.dirty.store(true, Ordering::SeqCst);
        Some(Writing(self))
    }

    /// As [`Fence::enter`], for a write that completes later, elsewhere.
    pub fn enter_owned(self: &Arc<Self>) -> Option<OwnedWriting> {
        let w = self.enter()?;
        std::mem::forget(w);
        Some(OwnedWriting(self.clone()))
    }

    /// Whether a write went through since the last call (and forget it).
    pub fn take_dirty(&self) -> bool {
        self.dirty.swap(false, Ordering::SeqCst)
    }

    pub fn raise(&self) {
        self.fenced.store(true, Ordering::SeqCst);
    }

    pub fn lower(&self) {
        self.fenced.store(false, Ordering::SeqCst);
    }

    pub fn inflight(&self) -> u64 {
        self.inflight.load(Ordering::SeqCst)
    }

    /// Wait until no write is under way, at most until `until`; whether that happened.
    pub async fn drained(&self, until: Instant) -> bool {
        loop {
            if self.inflight() == 0 {
                return true;
            }
            if Instant::now() >= until {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }
}

/// A backstore whose changes pass the node's [`Fence`]: once fenced, writes, unmaps, anchors
/// and crypto erases fail (the initiator gets a write error, if its session is still there); reads and
/// flushes go on. Everything else is the inner store's.
#[derive(Debug)]
pub struct FencedBackstore {
    pub inner: Arc<dyn backstore::Backstore>,
    pub fence: Arc<Fence>,
}

fn fenced_error() -> io::Error {
    io::Error::other("this node is fenced: it lost its cluster lease")
}

impl backstore::Backstore for FencedBackstore {
    fn kind(&self) -> &'static str {
        self.inner.kind()
    }
    fn size(&self) -> u64 {
        self.inner.size()
    }
    fn refresh_size(&self) -> io::Result<u64> {
        self.inner.refresh_size()
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.inner.read_at(buf, offset)
    }
    fn read_vec(&self, len: usize, offset: u64) -> io::Result<Vec<u8>> {
        self.inner.read_vec(len, offset)
    }
    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        let _w = self.fence.enter().ok_or_else(fenced_error)?;
        self.inner.write_at(buf, offset)
    }
    fn flush(&self) -> io::Result<()> {
        self.inner.flush()
    }
    fn unmap(&self, offset: u64, len: u64) -> io::Result<bool> {
        let _w = self.fence.enter().ok_or_else(fenced_error)?;
        self.inner.unmap(offset, len)
    }
    fn supports_unmap(&self) -> bool {
        self.inner.supports_unmap()
    }
    fn anchor(&self, offset: u64, len: u64) -> io::Result<()> {
        let _w = self.fence.enter().ok_or_else(fenced_error)?;
        self.inner.anchor(offset, len)
    }
    fn space(&self) -> io::Result<Option<backstore::Space>> {
        self.inner.space()
    }
    fn extent_at(&self, offset: u64) -> io::Result<Option<backstore::Extent>> {
        self.inner.extent_at(offset)
    }
    fn encrypted(&self) -> bool {
        self.inner.encrypted()
    }
    fn compare_and_write(
        &self,
        offset: u64,
        compare: &[u8],
        data: &[u8],
    ) -> io::Result<Option<u64>> {
        let _w = self.fence.enter().ok_or_else(fenced_error)?;
        self.inner.compare_and_write(offset, compare, data)
    }
    fn as_async(&self) -> Option<&dyn backstore::AsyncBackstore> {
        self.inner
            .as_async()
            .map(|_| self as &dyn backstore::AsyncBackstore)
    }
    fn crypto_erase(&self) -> io::Result<()> {
        // A new data key changes what every block reads as: a write like any other.
        let _w = self.fence.enter().ok_or_else(fenced_error)?;
        self.inner.crypto_erase()
    }
}

/// The asynchronous path passes the same fence: a write counts as in flight until it
/// completes, so fencing waits for it as for a synchronous one.
impl backstore::AsyncBackstore for FencedBackstore {
    fn read_async(&self, offset: u64, len: usize, done: backstore::Done<Vec<u8>>) {
        match self.inner.as_async() {
            Some(a) => a.read_async(offset, len, done),
            None => done(self.inner.read_vec(len, offset)),
        }
    }
    fn write_async(&self, data: Vec<u8>, offset: u64, done: backstore::Done<Vec<u8>>) {
        let Some(w) = self.fence.enter_owned() else {
            return done(Err(fenced_error()));
        };
        match self.inner.as_async() {
            Some(a) => a.write_async(
                data,
                offset,
                Box::new(move |r| {
                    drop(w);
                    done(r)
                }),
            ),
            None => {
                let r = self.inner.write_at(&data, offset).map(|()| data);
                drop(w);
                done(r)
            }
        }
    }
    fn flush_async(&self, done: backstore::Done<()>) {
        match self.inner.as_async() {
            Some(a) => a.flush_async(done),
            None => done(self.inner.flush()),
        }
    }
}

/// What the daemon does when membership changes (implemented by `server::Daemon`).
pub trait Serving: Send + Sync {
    /// Open the portals and take sessions (the node holds `lease`).
    fn start_serving(
        self: Arc<Self>,
        lease: cluster::LeaseId,
    ) -> crate::server::BoxFut<'static, anyhow::Result<()>>;
    /// Close the portals and drop every session (the fence is already raised).
    fn stop_serving(self: Arc<Self>) -> crate::server::BoxFut<'static, ()>;
    /// Make every backstore's completed writes durable.
    fn flush_all(&self);
    /// The node holds this lease now (what its floating portals' keys live with, `portals`);
    /// called before `start_serving`. `stop_serving` forgets it.
    fn set_lease(self: Arc<Self>, _lease: cluster::LeaseId) -> crate::server::BoxFut<'static, ()> {
        Box::pin(async {})
    }
}

/// The guard: fence this long before the lease could end at the earliest.
pub fn guard(ttl: Duration) -> Duration {
    (ttl / 4).max(Duration::from_millis(500))
}

/// The node key.
pub fn node_key(prefix: &str, node: &str) -> Vec<u8> {
    format!("{prefix}nodes/{node}").into_bytes()
}

/// Join, serve while the lease holds, fence when it may not, join again; forever.
pub async fn run<S: Serving + 'static>(
    serving: Arc<S>,
    fence: Arc<Fence>,
    store: Arc<dyn ClusterStore>,
    prefix: String,
    node: String,
    ttl: Duration,
) {
    let key = node_key(&prefix, &node);
    loop {
        let (lease, renewed) = join(&*store, &key, &node, ttl).await;
        fence.lower();
        serving.clone().set_lease(lease.id).await;
        if let Err(e) = serving.clone().start_serving(lease.id).await {
            error!("cluster: joined, but the portals do not open: {e:#}");
        }
        info!(node = %node, lease = format!("{:x}", lease.id.0), "cluster: joined, serving");
        let renewed = hold(&*store, lease, renewed, ttl).await;
        // The lease may end at `renewed + ttl`: everything must have stopped by then.
        let ends = renewed + ttl;
        warn!(node = %node, "cluster: lease in doubt, fencing this node");
        fence.raise();
        serving.clone().stop_serving().await;
        let quiet_by = ends - Duration::from_millis(100).min(ttl / 10);
        if !fence.drained(quiet_by).await {
            error!(
                inflight = fence.inflight(),
                "cluster: writes still under way when the lease may end; aborting the process"
            );
            std::process::abort();
        }
        // What the writes left in caches goes to the medium while the lease still holds
        // (a partner may write the same blocks once it is gone).
        let flushed = if fence.take_dirty() {
            let s = serving.clone();
            tokio::time::timeout_at(quiet_by, tokio::task::spawn_blocking(move || s.flush_all()))
                .await
                .is_ok()
        } else {
            true
        };
        if !flushed {
            error!(
                "cluster: the backstores' flush did not end within the lease; aborting the process \
                 (cached writes may still reach a shared medium)"
            );
            std::process::abort();
        }
        info!(
            node = %node,
            "cluster: fenced (portals closed, sessions dropped, no write under way, flushed)"
        );
        // Let the lease go for good before joining again (a new lease, a new key).
        tokio::time::sleep_until(ends).await;
    }
}

/// Take the node key under a new lease, waiting while anyone (a previous run of this node
/// included) holds it. Returns the lease and when its grant was sent.
async fn join(store: &dyn ClusterStore, key: &[u8], node: &str, ttl: Duration) -> (Lease, Instant) {
    let mut said = false;
    loop {
        let sent = Instant::now();
        let attempt = async {
            let lease = store.grant(ttl).await?;
            let value = format!("{{\"node\":\"{node}\",\"pid\":{}}}", std::process::id());
            match store
                .put_if(key, value.as_bytes(), 0, Some(lease.id))
                .await?
            {
                Cas::Done(_) => Ok(Some(lease)),
                Cas::Conflict(_) => {
                    let _ = store.revoke(lease.id).await;
                    Ok(None)
                }
            }
        };
        match attempt.await {
            // A slow answer (a store that was away) leaves little of the lease as we count
            // it: renew at once, counting from now.
            Ok(Some(lease)) if sent.elapsed() > ttl / 3 => {
                let again = Instant::now();
                match store.keep_alive(lease.id).await {
                    Ok(_) if again.elapsed() < ttl / 3 => return (lease, again),
                    _ => {
                        let _ = store.revoke(lease.id).await;
                    }
                }
            }
            Ok(Some(lease)) => return (lease, sent),
            Ok(None) => {
                if !said {
                    warn!(
                        node,
                        "cluster: the node name is held by a live lease; waiting for it to end"
                    );
                    said = true;
                }
            }
            Err::<_, Error>(e) => {
                if !said {
                    warn!("cluster: cannot join yet: {e}");
                    said = true;
                }
            }
        }
        tokio::time::sleep((ttl / 4).max(Duration::from_millis(250))).await;
    }
}

/// Renew the lease every third of its TTL until a renewal fails for good or too late to be
/// sure; returns when the last successful renewal was sent.
async fn hold(
    store: &dyn ClusterStore,
    lease: Lease,
    mut renewed: Instant,
    ttl: Duration,
) -> Instant {
    let fence_at = |renewed: Instant| renewed + ttl - guard(ttl);
    loop {
        let next = (renewed + ttl / 3).min(fence_at(renewed));
        tokio::time::sleep_until(next).await;
        loop {
            let deadline = fence_at(renewed);
            let now = Instant::now();
            if now >= deadline {
                return renewed;
            }
            let sent = now;
            match tokio::time::timeout(deadline - now, store.keep_alive(lease.id)).await {
                Ok(Ok(_)) => {
                    renewed = sent;
                    break;
                }
                Ok(Err(Error::NoLease(_))) => {
                    warn!("cluster: the store says our lease is gone");
                    return renewed;
                }
                Ok(Err(e)) => {
                    warn!("cluster: lease renewal failed: {e}");
                    tokio::time::sleep(Duration::from_millis(200).min(deadline - Instant::now()))
                        .await;
                }
                Err(_) => return renewed,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_raised_fence_lets_no_write_start_and_counts_those_under_way() {
        let f = Fence::new(false);
        let w = f.enter().expect("open");
        assert_eq!(f.inflight(), 1);
        f.raise();
        assert!(f.enter().is_none());
        assert_eq!(f.inflight(), 1, "a refused write is not counted");
        drop(w);
        assert_eq!(f.inflight(), 0);
        f.lower();
        assert!(f.take_dirty(), "a write went through");
        assert!(!f.take_dirty());
        assert!(f.enter().is_some());
        assert!(f.take_dirty());
    }

    #[test]
    fn racing_writers_never_slip_past_a_raised_fence() {
        // Writers enter and, while inside, check the fence was not raised before they entered
        // while the raiser saw nobody inside.
        for _ in 0..50 {
            let f = Arc::new(Fence::new(false));
            let seen_empty = Arc::new(AtomicBool::new(false));
            let mut ts = Vec::new();
            for _ in 0..3 {
                let (f, seen_empty) = (f.clone(), seen_empty.clone());
                ts.push(std::thread::spawn(move || {
                    for _ in 0..2000 {
                        if let Some(_w) = f.enter() {
                            assert!(
                                !seen_empty.load(Ordering::SeqCst),
                                "a write started after the fence was raised and drained"
                            );
                        }
                    }
                }));
            }
            std::thread::yield_now();
            f.raise();
            while f.inflight() != 0 {
                std::hint::spin_loop();
            }
            seen_empty.store(true, Ordering::SeqCst);
            for t in ts {
                t.join().unwrap();
            }
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_node_fences_before_its_lease_can_end_and_joins_again() {
        let store: Arc<dyn ClusterStore> = Arc::new(cluster::MemStore::new());
        let ttl = Duration::from_secs(4);
        let lease = store.grant(ttl).await.unwrap();
        let t0 = Instant::now();
        // Nobody answers renewals (the store's lease is revoked behind the node's back).
        store.revoke(lease.id).await.unwrap();
        let renewed = hold(&*store, lease, t0, ttl).await;
        assert_eq!(renewed, t0);
        assert!(Instant::now() < t0 + ttl - guard(ttl) + Duration::from_millis(1));
        // Joining takes the key; a second joiner waits for it.
        let key = node_key("/f/", "a");
        let (l, _) = join(&*store, &key, "a", ttl).await;
        let (kv, _) = store.get(&key).await.unwrap();
        assert_eq!(kv.unwrap().lease, Some(l.id));
        let second = tokio::time::timeout(Duration::from_secs(2), join(&*store, &key, "a", ttl));
        assert!(second.await.is_err(), "a second holder of the name");
    }
}
