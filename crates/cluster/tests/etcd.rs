//! The etcd store against the conformance suite, on a throw-away single-member etcd that the
//! test starts (Debian `etcd-server`; `.ci/run` installs it) on free loopback ports, plain and
//! with TLS client certificates (made here with `openssl`), and what is particular to a remote
//! store: an endpoint that does not answer is skipped, none answering is `Unavailable`, a watch
//! sees changes another client makes, and without the right certificate nothing gets through.

use std::sync::Arc;
use std::time::{Duration, Instant};

use cluster::{conformance, Cas, ClusterStore, Error, EtcdStore, EtcdTls};
use testkit::etcd::{free_port, Etcd, TlsFiles};

fn tls(f: &TlsFiles) -> EtcdTls {
    EtcdTls {
        ca: f.ca.clone(),
        cert: f.cert.clone(),
        key: f.key.clone(),
    }
}

/// Wait until etcd answers a read (at most 20 s).
async fn store(etcd: &Etcd) -> EtcdStore {
    let s = match &etcd.tls {
        None => EtcdStore::new(vec![etcd.endpoint.clone()]),
        Some((mine, _)) => EtcdStore::with_tls(vec![etcd.endpoint.clone()], &tls(mine)).unwrap(),
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match s.get(b"/ready").await {
            Ok(_) => return s,
            Err(e) if Instant::now() > deadline => {
                panic!("etcd did not come up: {e}\n{}", etcd.log())
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conforms() {
    let etcd = Etcd::start();
    let store = store(&etcd).await;
    conformance::all(Arc::new(store)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoints_are_tried_in_order_and_another_clients_changes_are_watched() {
    let etcd = Etcd::start();
    let ready = store(&etcd).await;
    // A dead endpoint first: skipped.
    let dead = format!("127.0.0.1:{}", free_port());
    let s = EtcdStore::new(vec![dead.clone(), etcd.endpoint.clone()]);
    let mut w = s.watch(b"/other/", 0).await.unwrap();
    let r = match ready.put_if(b"/other/k", b"v", 0, None).await.unwrap() {
        Cas::Done(r) => r,
        c => panic!("{c:?}"),
    };
    let e = tokio::time::timeout(Duration::from_secs(10), w.next())
        .await
        .expect("an event")
        .expect("open watch")
        .unwrap();
    assert_eq!(e.revision(), r);
    // Nothing answering: Unavailable, quickly.
    let none = EtcdStore::new(vec![dead]);
    let t0 = Instant::now();
    assert!(matches!(none.get(b"/x").await, Err(Error::Unavailable(_))));
    assert!(t0.elapsed() < Duration::from_secs(6));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conforms_over_tls_with_client_certificates_and_refuses_the_rest() {
    let etcd = Etcd::start_with(true);
    let store = store(&etcd).await;
    conformance::all(Arc::new(store)).await;
    let (mine, outsider) = etcd.tls.clone().unwrap();
    let (mine, outsider) = (tls(&mine), tls(&outsider));
    let ep = vec![etcd.endpoint.clone()];
    // A client certificate from another CA, or plain HTTP: nothing gets through.
    let other = EtcdStore::with_tls(ep.clone(), &outsider).unwrap();
    assert!(matches!(other.get(b"/x").await, Err(Error::Unavailable(_))));
    let plain = EtcdStore::new(ep.clone());
    assert!(matches!(plain.get(b"/x").await, Err(Error::Unavailable(_))));
    // A missing or broken key file is refused up front, naming the file, never its content.
    let bad = EtcdTls {
        key: mine.ca.clone(),
        ..mine.clone()
    };
    match EtcdStore::with_tls(ep.clone(), &bad) {
        Err(Error::Invalid(m)) => {
            assert!(m.contains("ca.pem") && !m.contains("BEGIN"), "{m}");
        }
        other => panic!("a certificate as the key: {other:?}"),
    }
    let missing = EtcdTls {
        cert: mine.cert.with_file_name("nowhere.pem"),
        ..mine
    };
    assert!(matches!(
        EtcdStore::with_tls(ep, &missing),
        Err(Error::Invalid(_))
    ));
}
