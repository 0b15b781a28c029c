//! A throw-away etcd member for tests (Debian `etcd-server`; `.ci/run` installs it): started on
//! free loopback ports (or inside a host of a [`crate::netns::Lab`], on its address) with its
//! data under the test's scratch directory, plain HTTP or TLS with client certificates (a CA, a
//! server certificate for its address, a client certificate, and an
//! outsider's from another CA, made with `openssl`), killed and removed on drop.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

/// The files of one TLS client: the CA to trust, its certificate and key (PEM).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsFiles {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// A loopback port nothing listens on right now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// One etcd member, killed (and its data removed) on drop.
pub struct Etcd {
    child: Child,
    pub dir: PathBuf,
    /// `127.0.0.1:PORT`.
    pub endpoint: String,
    /// With TLS: the client's files (CA, certificate, key) and a second, unknown client's.
    pub tls: Option<(TlsFiles, TlsFiles)>,
}

fn openssl(dir: &Path, args: &[&str]) {
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

/// A CA, a server certificate for `ip`, a client certificate it signed, and a client
/// certificate from another CA (an outsider).
fn certificates(dir: &Path, ip: &str) -> (TlsFiles, TlsFiles) {
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
    std::fs::write(dir.join("server.ext"), format!("subjectAltName=IP:{ip}\n")).unwrap();
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
    let files = |cert: &str| TlsFiles {
        ca: dir.join("ca.pem"),
        cert: dir.join(format!("{cert}.pem")),
        key: dir.join(format!("{cert}.key")),
    };
    (files("client"), files("outsider"))
}

impl Etcd {
    /// A plain-HTTP member.
    pub fn start() -> Etcd {
        Self::start_with(false)
    }

    /// With `tls`, etcd serves clients over TLS and demands a certificate its CA signed.
    pub fn start_with(tls: bool) -> Etcd {
        let (client, peer) = (free_port(), free_port());
        Self::spawn(Command::new("etcd"), "127.0.0.1", client, peer, tls)
    }

    /// A member inside `host` of a network lab, listening on that host's address (ports 2379
    /// and 2380: the namespace is the lab's own), over TLS if `tls` (the server certificate
    /// names that address). Killed with the lab at the latest.
    pub fn start_in(lab: &crate::netns::Lab, host: &str, tls: bool) -> Etcd {
        let ip = lab.addr(host).to_string();
        Self::spawn(lab.command(host, "etcd"), &ip, 2379, 2380, tls)
    }

    fn spawn(mut cmd: Command, ip: &str, client: u16, peer: u16, tls: bool) -> Etcd {
        let found = Command::new("etcd").arg("--version").output();
        assert!(
            found.is_ok_and(|o| o.status.success()),
            "etcd is missing: install the Debian package etcd-server (.ci/run does)"
        );
        let dir = std::env::temp_dir().join(format!("etcd-{}-{}", std::process::id(), free_port()));
        std::fs::create_dir_all(&dir).unwrap();
        let endpoint = format!("{ip}:{client}");
        let log = std::fs::File::create(dir.join("etcd.log")).unwrap();
        let certs = tls.then(|| certificates(&dir, ip));
        let scheme = if tls { "https" } else { "http" };
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
            .arg(format!("--listen-peer-urls=http://{ip}:{peer}"))
            .arg(format!("--initial-advertise-peer-urls=http://{ip}:{peer}"))
            .arg(format!("--initial-cluster=test=http://{ip}:{peer}"))
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
}

impl Drop for Etcd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Etcd {
    /// The member's log so far (for failure messages).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("etcd.log")).unwrap_or_default()
    }

    /// Pause (SIGSTOP) or resume (SIGCONT) the member: a partition from etcd, as its clients
    /// see it.
    pub fn pause(&self, paused: bool) {
        let sig = if paused { "-STOP" } else { "-CONT" };
        let pid = self.child.id().to_string();
        let ok = Command::new("kill").args([sig, &pid]).status();
        assert!(ok.is_ok_and(|s| s.success()), "kill {sig} {pid}");
    }
}
