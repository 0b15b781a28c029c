//! The behaviour every [`ClusterStore`] must have (see the crate docs), as checks any
//! implementation's tests run against a fresh store: `conformance::all(&store).await`. Each check
//! works under a prefix of its own, so a shared store (etcd) serves them all; a failure panics
//! naming the rule.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::{timeout, Instant};

use crate::{Cas, ClusterStore, Error, Event, Revision, Watch, MAX_KEY, MAX_VALUE};

/// Longest wait for one watch event.
const EVENT: Duration = Duration::from_secs(10);

/// Every check, one after the other.
pub async fn all(store: Arc<dyn ClusterStore>) {
    compare_and_swap(&*store, b"/conf/cas/").await;
    lists_are_ordered_and_prefixed(&*store, b"/conf/list/").await;
    no_update_is_lost(store.clone(), b"/conf/race/").await;
    watches_see_every_change_in_order(&*store, b"/conf/watch/").await;
    watches_replay_from_a_past_revision(&*store, b"/conf/replay/").await;
    leases_end_their_keys(&*store, b"/conf/lease/").await;
    bounds(&*store).await;
}

fn key(prefix: &[u8], name: &str) -> Vec<u8> {
    let mut k = prefix.to_vec();
    k.extend_from_slice(name.as_bytes());
    k
}

fn done(c: Cas, what: &str) -> Revision {
    match c {
        Cas::Done(r) => r,
        Cas::Conflict(cur) => panic!("{what}: expected success, got a conflict with {cur:?}"),
    }
}

async fn next(w: &mut Watch, what: &str) -> Event {
    match timeout(EVENT, w.next()).await {
        Ok(Some(Ok(e))) => e,
        Ok(Some(Err(e))) => panic!("{what}: watch failed: {e}"),
        Ok(None) => panic!("{what}: watch ended"),
        Err(_) => panic!("{what}: no event within {EVENT:?}"),
    }
}

/// Put only over the expected revision; revisions rise; create revision stays.
pub async fn compare_and_swap(s: &dyn ClusterStore, p: &[u8]) {
    let k = key(p, "a");
    let (none, r0) = s.get(&k).await.unwrap();
    assert_eq!(none, None, "a fresh key is absent");
    let r1 = done(s.put_if(&k, b"one", 0, None).await.unwrap(), "create");
    assert!(r1 > r0, "a change raises the revision ({r0} -> {r1})");
    let (kv, rr) = s.get(&k).await.unwrap();
    let kv = kv.expect("created key");
    assert!(rr >= r1, "a read after a write sees its revision");
    assert_eq!(
        (kv.value.as_slice(), kv.create_revision, kv.mod_revision),
        (&b"one"[..], r1, r1)
    );
    // "Must not exist" fails now, and so does a stale revision.
    match s.put_if(&k, b"again", 0, None).await.unwrap() {
        Cas::Conflict(Some(cur)) => assert_eq!(cur.value, b"one"),
        other => panic!("create over an existing key: {other:?}"),
    }
    match s.put_if(&k, b"stale", r1 - 1, None).await.unwrap() {
        Cas::Conflict(Some(cur)) => assert_eq!(cur.mod_revision, r1),
        other => panic!("put with a stale revision: {other:?}"),
    }
    let r2 = done(s.put_if(&k, b"two", r1, None).await.unwrap(), "update");
    assert!(r2 > r1);
    let kv = s.get(&k).await.unwrap().0.unwrap();
    assert_eq!(
        (kv.value.as_slice(), kv.create_revision, kv.mod_revision),
        (&b"two"[..], r1, r2)
    );
    // Delete: only at the current revision.
    assert!(matches!(
        s.delete_if(&k, r1).await.unwrap(),
        Cas::Conflict(Some(_))
    ));
    let r3 = done(s.delete_if(&k, r2).await.unwrap(), "delete");
    assert!(r3 > r2);
    assert_eq!(s.get(&k).await.unwrap().0, None);
    assert_eq!(s.delete_if(&k, r3).await.unwrap(), Cas::Conflict(None));
    // A key created again starts over.
    let r4 = done(s.put_if(&k, b"three", 0, None).await.unwrap(), "re-create");
    let kv = s.get(&k).await.unwrap().0.unwrap();
    assert_eq!((kv.create_revision, kv.mod_revision), (r4, r4));
    done(s.delete_if(&k, r4).await.unwrap(), "clean up");
}

/// `list` returns exactly the prefix's keys, in key order.
pub async fn lists_are_ordered_and_prefixed(s: &dyn ClusterStore, p: &[u8]) {
    for name in ["b", "a", "c/d", "c"] {
        done(
            s.put_if(&key(p, name), name.as_bytes(), 0, None)
                .await
                .unwrap(),
            "list setup",
        );
    }
    // A neighbour that shares the prefix's bytes but not the prefix.
    let mut outside = p[..p.len() - 1].to_vec();
    outside.extend_from_slice(b"x");
    done(
        s.put_if(&outside, b"x", 0, None).await.unwrap(),
        "list setup",
    );
    let (kvs, rev) = s.list(p).await.unwrap();
    let names: Vec<&[u8]> = kvs.iter().map(|kv| &kv.key[p.len()..]).collect();
    assert_eq!(names, [&b"a"[..], b"b", b"c", b"c/d"]);
    assert!(kvs.iter().all(|kv| kv.mod_revision <= rev));
    let (sub, _) = s.list(&key(p, "c/")).await.unwrap();
    assert_eq!(sub.len(), 1);
}

/// Many writers raise one counter with compare-and-swap loops: no increment is lost.
pub async fn no_update_is_lost(s: Arc<dyn ClusterStore>, p: &'static [u8]) {
    const WRITERS: u64 = 4;
    const EACH: u64 = 25;
    let k = key(p, "counter");
    done(s.put_if(&k, b"0", 0, None).await.unwrap(), "counter");
    let mut tasks = Vec::new();
    for _ in 0..WRITERS {
        let (s, k) = (s.clone(), k.clone());
        tasks.push(tokio::spawn(async move {
            let mut conflicts = 0u32;
            for _ in 0..EACH {
                let (mut cur, _) = s.get(&k).await.unwrap();
                loop {
                    let kv = cur.expect("counter exists");
                    let n: u64 = std::str::from_utf8(&kv.value).unwrap().parse().unwrap();
                    let next = (n + 1).to_string();
                    match s.put_if(&k, next.as_bytes(), kv.mod_revision, None).await {
                        Ok(Cas::Done(_)) => break,
                        Ok(Cas::Conflict(now)) => {
                            conflicts += 1;
                            cur = now;
                        }
                        Err(e) => panic!("counter: {e}"),
                    }
                }
            }
            conflicts
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let kv = s.get(&k).await.unwrap().0.unwrap();
    assert_eq!(
        std::str::from_utf8(&kv.value).unwrap(),
        (WRITERS * EACH).to_string(),
        "every compare-and-swap increment counted once"
    );
}

/// A watch from now sees every change under its prefix, in revision order, and nothing else.
pub async fn watches_see_every_change_in_order(s: &dyn ClusterStore, p: &[u8]) {
    let (_, now) = s.get(p).await.unwrap();
    let mut w = s.watch(p, now + 1).await.unwrap();
    let a = key(p, "a");
    let r1 = done(s.put_if(&a, b"1", 0, None).await.unwrap(), "watched put");
    let mut outside = p[..p.len() - 1].to_vec();
    outside.extend_from_slice(b"-other");
    let ro = done(
        s.put_if(&outside, b"x", 0, None).await.unwrap(),
        "unwatched",
    );
    let r2 = done(s.put_if(&a, b"2", r1, None).await.unwrap(), "watched put");
    let r3 = done(s.delete_if(&a, r2).await.unwrap(), "watched delete");
    let e1 = next(&mut w, "first").await;
    assert!(matches!(&e1, Event::Put(kv) if kv.value == b"1" && kv.mod_revision == r1));
    let e2 = next(&mut w, "second").await;
    assert!(matches!(&e2, Event::Put(kv) if kv.value == b"2" && kv.mod_revision == r2));
    let e3 = next(&mut w, "third").await;
    assert_eq!(
        e3,
        Event::Delete {
            key: a.clone(),
            revision: r3
        }
    );
    // Nothing from outside the prefix.
    assert!(
        timeout(Duration::from_millis(300), w.next()).await.is_err(),
        "an event from outside the prefix (revision {ro})"
    );
    done(s.delete_if(&outside, ro).await.unwrap(), "clean up");
}

/// A watch from a revision in the past replays what happened since.
pub async fn watches_replay_from_a_past_revision(s: &dyn ClusterStore, p: &[u8]) {
    let k = key(p, "k");
    let r1 = done(s.put_if(&k, b"1", 0, None).await.unwrap(), "put");
    let r2 = done(s.put_if(&k, b"2", r1, None).await.unwrap(), "put");
    let mut w = s.watch(p, r1).await.unwrap();
    let e1 = next(&mut w, "replayed first").await;
    let e2 = next(&mut w, "replayed second").await;
    assert_eq!((e1.revision(), e2.revision()), (r1, r2));
    let r3 = done(s.put_if(&k, b"3", r2, None).await.unwrap(), "put");
    assert_eq!(next(&mut w, "live").await.revision(), r3);
}

/// Keys live as long as their lease: kept alive they stay, left alone they go (as a delete
/// event) within about one TTL, revoked they go at once; a gone lease cannot be renewed or
/// used.
pub async fn leases_end_their_keys(s: &dyn ClusterStore, p: &[u8]) {
    let ttl = Duration::from_secs(2);
    let lease = s.grant(ttl).await.unwrap();
    assert!(lease.ttl >= ttl, "granted {:?}", lease.ttl);
    let k = key(p, "member");
    let (_, now) = s.get(p).await.unwrap();
    let mut w = s.watch(p, now + 1).await.unwrap();
    let r = done(
        s.put_if(&k, b"alive", 0, Some(lease.id)).await.unwrap(),
        "put with lease",
    );
    let kv = s.get(&k).await.unwrap().0.unwrap();
    assert_eq!(kv.lease, Some(lease.id));
    assert_eq!(next(&mut w, "put").await.revision(), r);
    // Kept alive past its TTL, the key stays.
    let start = Instant::now();
    while start.elapsed() < ttl + Duration::from_secs(1) {
        let left = s.keep_alive(lease.id).await.unwrap();
        assert!(left >= ttl - Duration::from_secs(1), "renewed to {left:?}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(s.get(&k).await.unwrap().0.is_some(), "a kept lease's key");
    // Left alone, it goes: a delete event within about one TTL (stores may add a little).
    let left_alone = Instant::now();
    match next(&mut w, "lease expiry").await {
        Event::Delete { key: gone, .. } => assert_eq!(gone, k),
        other => panic!("lease expiry: {other:?}"),
    }
    let took = left_alone.elapsed();
    assert!(
        took >= ttl - Duration::from_millis(600) && took <= 3 * ttl,
        "key gone {took:?} after the last keep-alive (TTL {ttl:?})"
    );
    assert_eq!(s.get(&k).await.unwrap().0, None);
    assert_eq!(s.keep_alive(lease.id).await, Err(Error::NoLease(lease.id)));
    assert!(matches!(
        s.put_if(&k, b"late", 0, Some(lease.id)).await,
        Err(Error::NoLease(_))
    ));
    // Revoked: the keys go now.
    let l2 = s.grant(Duration::from_secs(30)).await.unwrap();
    let r = done(
        s.put_if(&k, b"again", 0, Some(l2.id)).await.unwrap(),
        "put with lease",
    );
    assert_eq!(next(&mut w, "put").await.revision(), r);
    s.revoke(l2.id).await.unwrap();
    assert!(matches!(next(&mut w, "revoke").await, Event::Delete { .. }));
    assert_eq!(s.get(&k).await.unwrap().0, None);
}

/// Keys and values are bounded.
pub async fn bounds(s: &dyn ClusterStore) {
    let long = vec![b'k'; MAX_KEY + 1];
    assert!(matches!(
        s.put_if(&long, b"v", 0, None).await,
        Err(Error::Invalid(_))
    ));
    let big = vec![0u8; MAX_VALUE + 1];
    assert!(matches!(
        s.put_if(b"/conf/big", &big, 0, None).await,
        Err(Error::Invalid(_))
    ));
    assert!(matches!(
        s.grant(Duration::from_millis(10)).await,
        Err(Error::Invalid(_))
    ));
}
