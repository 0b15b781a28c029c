//! A clustered node against a real etcd (started here, `testkit::etcd`): it opens its portal
//! only once it holds its lease (the node key, bound to the lease, is in etcd); cut off from
//! etcd (SIGSTOP), it fences itself before its lease can end — portal closed, sessions dropped
//! — and `ferrite admin cluster` says so; when etcd is back it joins again and serves.

mod common;

use std::net::TcpStream;
use std::thread;
use std::time::{Duration, Instant};

use cluster::ClusterStore;
use common::initiator::{LoginOpts, Session};
use common::tpg::{admin_err, admin_ok, closed_within};
use common::{Daemon, Opts, IQN};
use testkit::etcd::Etcd;

const LEASE: u64 = 3;

fn clustered(etcd: &Etcd) -> Daemon {
    let config = format!(
        r#"
        [cluster]
        node = "node-a"
        endpoints = ["{}"]
        lease_secs = {LEASE}
        [[target]]
        name = "{IQN}"
        [[target.portal_group]]
        tag = 1
        portals = ["127.0.0.1:{{port}}"]
        [[target.lun]]
        id = 0
        backstore = "ram:16M"
        "#,
        etcd.endpoint
    );
    Daemon::start(Opts {
        config: Some(config),
        ..Opts::default()
    })
}

fn listening(d: &Daemon) -> bool {
    TcpStream::connect_timeout(&d.addr(), Duration::from_millis(200)).is_ok()
}

#[test]
fn a_node_serves_while_it_holds_its_lease_and_fences_itself_when_cut_off() {
    let etcd = Etcd::start();
    let d = clustered(&etcd);
    // Serving (Daemon::start waited for the portal): the node key lives with a lease.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let store = cluster::EtcdStore::new(vec![etcd.endpoint.clone()]);
    let (kv, _) = rt.block_on(store.get(b"/ferrite/nodes/node-a")).unwrap();
    let kv = kv.expect("the node key");
    assert!(kv.lease.is_some(), "{kv:?}");
    let out = admin_ok(&d, &["cluster"]);
    assert!(out.starts_with("node node-a serving"), "{out}");
    let lease = format!("{:x}", kv.lease.unwrap().0);
    assert!(
        out.contains(&format!("  member node-a lease {lease} since revision")),
        "{out}"
    );
    let mut s = Session::login(d.addr(), &LoginOpts::default()).unwrap();
    s.write10(0, &[7; 512], 512).unwrap();

    // Cut off from etcd: fenced within the lease (a renewal every second; the guard is 0.75 s).
    etcd.pause(true);
    let cut = Instant::now();
    let deadline = cut + Duration::from_secs(LEASE) + Duration::from_millis(500);
    while listening(&d) {
        assert!(
            Instant::now() < deadline,
            "still listening {:?} after the cut",
            cut.elapsed()
        );
        thread::sleep(Duration::from_millis(50));
    }
    let fenced_after = cut.elapsed();
    println!("portal closed {fenced_after:?} after etcd stopped answering (lease {LEASE} s)");
    assert!(
        fenced_after < Duration::from_secs(LEASE),
        "fenced only after {fenced_after:?}"
    );
    assert!(
        closed_within(&mut s, Duration::from_secs(2)),
        "the session is dropped"
    );
    let out = admin_ok(&d, &["cluster"]);
    assert!(out.starts_with("node node-a fenced"), "{out}");
    assert!(out.contains("  etcd: "), "etcd does not answer: {out}");

    // etcd back: the old lease ends, the node joins again and serves.
    etcd.pause(false);
    let back = Instant::now();
    while !listening(&d) {
        assert!(
            back.elapsed() < Duration::from_secs(30),
            "not serving again after {:?}:\n{}",
            back.elapsed(),
            d.log_text()
        );
        thread::sleep(Duration::from_millis(100));
    }
    println!("serving again {:?} after etcd came back", back.elapsed());
    let mut s = Session::login(d.addr(), &LoginOpts::default()).unwrap();
    assert_eq!(s.read10(0, 1, 512).unwrap(), vec![7; 512]);
    assert!(admin_ok(&d, &["cluster"]).starts_with("node node-a serving"));
}

#[test]
fn a_single_node_has_no_cluster_to_show() {
    let d = Daemon::start(Opts::default());
    let e = admin_err(&d, &["cluster"]);
    assert!(e.contains("not in a cluster"), "{e}");
}
