//! The single-node store against the conformance suite, and what is particular to it: a watch
//! that starts before the remembered history, a watcher that stops reading.

use std::sync::Arc;
use std::time::Duration;

use cluster::{conformance, Cas, ClusterStore, Error, MemStore};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conforms() {
    conformance::all(Arc::new(MemStore::new())).await;
}

#[tokio::test]
async fn old_revisions_are_forgotten_and_say_so() {
    let s = MemStore::new();
    let mut rev = 0;
    for i in 0..5000u32 {
        rev = match s
            .put_if(b"/k", i.to_string().as_bytes(), rev, None)
            .await
            .unwrap()
        {
            Cas::Done(r) => r,
            c => panic!("{c:?}"),
        };
    }
    match s.watch(b"/", 1).await {
        Err(Error::Compacted { oldest }) => assert!(oldest > 1 && oldest <= rev),
        Ok(_) => panic!("a watch from revision 1 after 5000 changes"),
        Err(e) => panic!("{e}"),
    }
    // From within what is remembered it works.
    let mut w = s.watch(b"/", rev).await.unwrap();
    assert_eq!(w.next().await.unwrap().unwrap().revision(), rev);
}

#[tokio::test]
async fn a_watcher_that_stops_reading_is_ended_not_buffered_forever() {
    let s = MemStore::new();
    let mut w = s.watch(b"/", 0).await.unwrap();
    let mut rev = 0;
    for i in 0..6000u32 {
        rev = match s
            .put_if(b"/k", i.to_string().as_bytes(), rev, None)
            .await
            .unwrap()
        {
            Cas::Done(r) => r,
            c => panic!("{c:?}"),
        };
    }
    // What it could hold, then the end (read again and watch from there).
    let mut got = 0;
    while let Some(e) = w.next().await {
        e.unwrap();
        got += 1;
    }
    assert!(got > 0 && got < 6000, "{got} events");
}

#[tokio::test(start_paused = true)]
async fn leases_end_on_time_without_any_other_call() {
    let s = MemStore::new();
    let l = s.grant(Duration::from_secs(5)).await.unwrap();
    s.put_if(b"/m", b"x", 0, Some(l.id)).await.unwrap();
    let mut w = s.watch(b"/", 0).await.unwrap();
    tokio::time::sleep(Duration::from_millis(4900)).await;
    assert!(
        tokio::time::timeout(Duration::from_millis(50), w.next())
            .await
            .is_err(),
        "nothing before the TTL"
    );
    let e = tokio::time::timeout(Duration::from_secs(1), w.next()).await;
    assert!(
        matches!(e, Ok(Some(Ok(cluster::Event::Delete { .. })))),
        "{e:?}"
    );
}
