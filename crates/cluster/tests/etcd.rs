//! The etcd store against the conformance suite, on a throw-away single-member etcd that the
//! test starts (Debian `etcd-server`; `.ci/run` installs it) on free loopback ports, plain and
//! with TLS client certificates (made here with `openssl`), and what is particular to a remote
//! store: an endpoint that does not answer is skipped, none answering is `Unavailable`, a watch
//! sees changes another client makes, and without the right certificate nothing gets through.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cluster::{conformance, Cas, ClusterStore, Error, EtcdStore, EtcdTls};

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
    /// With TLS: the client's files (CA, certificate, key) and a second, unknown client's.
    tls: Option<(EtcdTls, EtcdTls)>,
}

fn openssl(dir: &std::path::Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("openssl is missing: install the Debian package openssl (.ci/run does)");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A CA, a server certificate for 127.0.0.1, a client certificate it signed, and a client
/// certificate from another CA (an outsider).
fn certificates(dir: &std::path::Path) -> (EtcdTls, EtcdTls) {
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    for ca in ["ca", "other-ca"] {
        let mut a = vec!["req", "-x509", "-days", "2", "-subj"];
        let subj = format!("/CN=ferrite test {ca}");
        a.push(&subj);
        a.extend_from_slice(&ec);
        let (k, c) = (format!("{ca}.key"), format!("{ca}.pem"));
        a.extend_from_slice(&["-keyout", &k, "-out", &c]);
        openssl(dir, &a);
    }
    std::fs::write(dir.join("server.ext"), "subjectAltName=IP:127.0.0.1\n").unwrap();
    std::fs::write(dir.join("client.ext"), "extendedKeyUsage=clientAuth\n").unwrap();
    for (name, ca, ext) in [
        ("server", "ca", "server.ext"),
        ("client", "ca", "client.ext"),
        ("outsider", "other-ca", "client.ext"),
    ] {
        let (k, r, c) = (
            format!("{name}.key"),
            format!("{name}.csr"),
            format!("{name}.pem"),
        );
        let subj = format!("/CN={name}");
        let mut a = vec!["req", "-new", "-subj", &subj];
        a.extend_from_slice(&ec);
        a.extend_from_slice(&["-keyout", &k, "-out", &r]);
        openssl(dir, &a);
        let (cak, cac) = (format!("{ca}.key"), format!("{ca}.pem"));
        openssl(
            dir,
            &[
                "x509",
                "-req",
                "-days",
                "2",
                "-in",
                &r,
                "-CA",
                &cac,
                "-CAkey",
                &cak,
                "-CAcreateserial",
                "-extfile",
                ext,
                "-out",
                &c,
            ],
        );
    }
    let files = |cert: &str| EtcdTls {
        ca: dir.join("ca.pem"),
        cert: dir.join(format!("{cert}.pem")),
        key: dir.join(format!("{cert}.key")),
    };
    (files("client"), files("outsider"))
}

impl Etcd {
    fn start() -> Etcd {
        Self::start_with(false)
    }

    /// With `tls`, etcd serves clients over TLS and demands a certificate its CA signed.
    fn start_with(tls: bool) -> Etcd {
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
        let certs = tls.then(|| certificates(&dir));
        let scheme = if tls { "https" } else { "http" };
        let mut cmd = Command::new("etcd");
        if tls {
            cmd.arg("--client-cert-auth")
                .arg(format!(
                    "--trusted-ca-file={}",
                    dir.join("ca.pem").display()
                ))
                .arg(format!("--cert-file={}", dir.join("server.pem").display()))
                .arg(format!("--key-file={}", dir.join("server.key").display()));
        }
        let child = cmd
            .arg("--data-dir")
            .arg(dir.join("data"))
            .args(["--name", "test"])
            .arg(format!("--listen-client-urls={scheme}://{endpoint}"))
            .arg(format!("--advertise-client-urls={scheme}://{endpoint}"))
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
            tls: certs,
        }
    }

    /// Wait until etcd answers a read (at most 20 s).
    async fn store(&self) -> EtcdStore {
        let s = match &self.tls {
            None => EtcdStore::new(vec![self.endpoint.clone()]),
            Some((mine, _)) => EtcdStore::with_tls(vec![self.endpoint.clone()], mine).unwrap(),
        };
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conforms_over_tls_with_client_certificates_and_refuses_the_rest() {
    let etcd = Etcd::start_with(true);
    let store = etcd.store().await;
    conformance::all(Arc::new(store)).await;
    let (mine, outsider) = etcd.tls.clone().unwrap();
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
