//! The etcd store against the conformance suite, on a throw-away single-member etcd that the
//! test starts (Debian `etcd-server`; `.ci/run` installs it) on free loopback ports, and what is
//! particular to a remote store: an endpoint that does not answer is skipped, none answering is
//! `Unavailable`, and a watch sees changes another client makes.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cluster::{conformance, Cas, ClusterStore, Error, EtcdStore};

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// One etcd member, killed (and its data removed) on drop.
struct Etcd {
    child: Child,
    dir: PathBuf,
    endpoint: String,
}

impl Etcd {
    fn start() -> Etcd {
        let found = Command::new("etcd").arg("--version").output();
        assert!(
            found.is_ok_and(|o| o.status.success()),
            "etcd is missing: install the Debian package etcd-server (.ci/run does)"
        );
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!(
            "etcd-{}-{}",
            std::process::id(),
            free_port()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let (client, peer) = (free_port(), free_port());
        let endpoint = format!("127.0.0.1:{client}");
        let log = std::fs::File::create(dir.join("etcd.log")).unwrap();
        let child = Command::new("etcd")
            .arg("--data-dir")
            .arg(dir.join("data"))
            .args(["--name", "test"])
            .arg(format!("--listen-client-urls=http://{endpoint}"))
            .arg(format!("--advertise-client-urls=http://{endpoint}"))
            .arg(format!("--listen-peer-urls=http://127.0.0.1:{peer}"))
            .arg(format!(
                "--initial-advertise-peer-urls=http://127.0.0.1:{peer}"
            ))
            .arg(format!("--initial-cluster=test=http://127.0.0.1:{peer}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn etcd");
        Etcd {
            child,
            dir,
            endpoint,
        }
    }

    /// Wait until etcd answers a read (at most 20 s).
    async fn store(&self) -> EtcdStore {
        let s = EtcdStore::new(vec![self.endpoint.clone()]);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            match s.get(b"/ready").await {
                Ok(_) => return s,
                Err(e) if Instant::now() > deadline => panic!(
                    "etcd did not come up: {e}\n{}",
                    std::fs::read_to_string(self.dir.join("etcd.log")).unwrap_or_default()
                ),
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conforms() {
    let etcd = Etcd::start();
    let store = etcd.store().await;
    conformance::all(Arc::new(store)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoints_are_tried_in_order_and_another_clients_changes_are_watched() {
    let etcd = Etcd::start();
    let ready = etcd.store().await;
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
