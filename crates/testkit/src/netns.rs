//! A private L2 network of hosts in network namespaces, for failover and partition tests
//! (needs root, `ip` from iproute2; `.ci/run` installs it).
//!
//! The switch is a bridge in a namespace of its own; every host is a namespace with one veth
//! (`eth0`) plugged into it and an address `10.201.X.(10 + i)/24`, X chosen per lab. Nothing
//! touches the root namespace's interfaces or routes: every packet stays between namespaces
//! this lab made. Namespace names start with a prefix unique to the process and the lab
//! (`ft<pid>-<n>-`), so tests running in parallel never meet.
//!
//! - [`Lab::cut`] / [`Lab::heal`] unplug and replug a host's switch port (a partition; the
//!   host sees no link change);
//! - [`Lab::blackhole`] drops one host's traffic to one address only (cut off from etcd, still
//!   reachable by its initiators);
//! - [`Lab::command`] runs a program inside a host (`ip netns exec`);
//! - [`Lab::in_host`] runs a closure on a thread that entered the host's namespace: sockets it
//!   creates live there, whichever thread uses them later.
//!
//! Dropping the lab kills every process still running in its namespaces and deletes them.
//! Setting up three hosts takes about 0.1 s.

use std::fs::File;
use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::thread::JoinHandle;

static LABS: AtomicU32 = AtomicU32::new(0);

/// One lab network (see the module docs).
pub struct Lab {
    prefix: String,
    /// The third octet of the lab's 10.201.X.0/24.
    net: u8,
    hosts: Vec<String>,
}

/// Run `ip ARGS`, panicking with its error output if it fails.
fn ip(args: &[&str]) {
    let out = Command::new("ip")
        .args(args)
        .output()
        .expect("`ip` is missing: install the Debian package iproute2 (.ci/run does)");
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr).trim()
    );
}

/// Enter the network namespace `ns` on this thread only.
fn enter(ns: &str) -> std::io::Result<()> {
    let f = File::open(format!("/run/netns/{ns}"))?;
    // SAFETY: a plain system call on a file descriptor we own for its duration.
    let r = unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) };
    if r != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

impl Lab {
    /// Whether this process may build labs (root, `ip` present): tests that need one say so
    /// and skip when it cannot be.
    pub fn available() -> Result<(), String> {
        // SAFETY: no arguments, no memory.
        if unsafe { libc::geteuid() } != 0 {
            return Err("network namespace tests need root".into());
        }
        match Command::new("ip").arg("-V").output() {
            Ok(o) if o.status.success() => Ok(()),
            _ => Err("`ip` is missing (Debian iproute2)".into()),
        }
    }

    /// Whether labs can be made here; prints why not, and panics instead under CI (where a
    /// skipped lab test would pass without testing anything).
    pub fn usable() -> bool {
        match Lab::available() {
            Ok(()) => true,
            Err(e) => {
                assert!(!crate::in_ci(), "{e}");
                eprintln!("SKIPPED: {e}");
                false
            }
        }
    }

    /// A lab with these hosts (names of at most 8 letters or digits), all up and plugged in.
    pub fn new(hosts: &[&str]) -> Lab {
        Lab::available().unwrap_or_else(|e| panic!("{e}"));
        let n = LABS.fetch_add(1, Ordering::Relaxed);
        let pid = std::process::id();
        let lab = Lab {
            prefix: format!("ft{pid}-{n}-"),
            // Different labs never share a bridge, so a clash would be harmless; spread them
            // anyway so that a packet capture tells them apart.
            net: ((pid.wrapping_mul(7).wrapping_add(n)) % 250 + 1) as u8,
            hosts: hosts.iter().map(|h| h.to_string()).collect(),
        };
        assert!(hosts.len() <= 200);
        for h in hosts {
            assert!(
                !h.is_empty() && h.len() <= 8 && h.bytes().all(|b| b.is_ascii_alphanumeric()),
                "host name {h:?}"
            );
        }
        let sw = lab.switch();
        ip(&["netns", "add", &sw]);
        ip(&["-n", &sw, "link", "set", "lo", "up"]);
        ip(&[
            "-n",
            &sw,
            "link",
            "add",
            "br0",
            "type",
            "bridge",
            "stp_state",
            "0",
            "forward_delay",
            "0",
        ]);
        ip(&["-n", &sw, "link", "set", "br0", "up"]);
        for (i, h) in hosts.iter().enumerate() {
            let ns = lab.ns(h);
            let port = format!("p{i}");
            ip(&["netns", "add", &ns]);
            ip(&["-n", &ns, "link", "set", "lo", "up"]);
            ip(&[
                "link", "add", &port, "netns", &sw, "type", "veth", "peer", "name", "eth0",
                "netns", &ns,
            ]);
            ip(&["-n", &sw, "link", "set", &port, "master", "br0", "up"]);
            let a = format!("{}/24", lab.addr(h));
            ip(&["-n", &ns, "addr", "add", &a, "dev", "eth0"]);
            ip(&["-n", &ns, "link", "set", "eth0", "up"]);
            // Gratuitous ARP updates and creates entries; a host answers ARP only for the
            // addresses of the interface asked, and announces from the address it sends for.
            lab.sysctls(
                h,
                &[
                    ("net/ipv4/conf/all/arp_accept", "1"),
                    ("net/ipv4/conf/eth0/arp_accept", "1"),
                    ("net/ipv4/conf/all/arp_ignore", "1"),
                    ("net/ipv4/conf/all/arp_announce", "2"),
                ],
            );
        }
        // Until every host's link has carrier through the bridge.
        let t0 = std::time::Instant::now();
        for h in hosts {
            loop {
                let out = Command::new("ip")
                    .args(["-n", &lab.ns(h), "link", "show", "eth0"])
                    .output()
                    .unwrap();
                if String::from_utf8_lossy(&out.stdout).contains("state UP") {
                    break;
                }
                assert!(t0.elapsed().as_secs() < 10, "{h}'s eth0 never came up");
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
        }
        lab
    }

    fn switch(&self) -> String {
        format!("{}sw", self.prefix)
    }

    fn index(&self, host: &str) -> usize {
        self.hosts
            .iter()
            .position(|h| h == host)
            .unwrap_or_else(|| panic!("no host {host:?} in this lab"))
    }

    /// The namespace of `host`.
    pub fn ns(&self, host: &str) -> String {
        format!("{}{host}", self.prefix)
    }

    /// The address of `host` on its `eth0`.
    pub fn addr(&self, host: &str) -> Ipv4Addr {
        Ipv4Addr::new(10, 201, self.net, 10 + self.index(host) as u8)
    }

    /// An address of the lab's /24 no host has (`last` from 100 up): a floating portal's.
    pub fn spare_addr(&self, last: u8) -> Ipv4Addr {
        assert!(last >= 100, "below .100 the hosts' own addresses live");
        Ipv4Addr::new(10, 201, self.net, last)
    }

    /// Write sysctls (paths under /proc/sys) inside `host`'s namespace.
    pub fn sysctls(&self, host: &str, kv: &[(&str, &str)]) {
        let kv: Vec<(String, String)> = kv
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        self.in_host(host, move || {
            for (k, v) in kv {
                std::fs::write(format!("/proc/sys/{k}"), v)
                    .unwrap_or_else(|e| panic!("sysctl {k}: {e}"));
            }
        })
        .join()
        .expect("sysctl thread");
    }

    /// Unplug `host`'s switch port: nobody reaches it, it reaches nobody.
    pub fn cut(&self, host: &str) {
        let port = format!("p{}", self.index(host));
        ip(&["-n", &self.switch(), "link", "set", &port, "down"]);
    }

    /// Plug `host`'s switch port in again.
    pub fn heal(&self, host: &str) {
        let port = format!("p{}", self.index(host));
        ip(&["-n", &self.switch(), "link", "set", &port, "up"]);
    }

    /// `host` drops whatever it sends to `to` (a blackhole route in its namespace): cut off
    /// from that one peer, everyone else still reaches it and hears from it.
    pub fn blackhole(&self, host: &str, to: Ipv4Addr) {
        ip(&[
            "-n",
            &self.ns(host),
            "route",
            "add",
            "blackhole",
            &format!("{to}/32"),
        ]);
    }

    /// Take the blackhole route of [`Lab::blackhole`] away again.
    pub fn unblackhole(&self, host: &str, to: Ipv4Addr) {
        ip(&[
            "-n",
            &self.ns(host),
            "route",
            "del",
            "blackhole",
            &format!("{to}/32"),
        ]);
    }

    /// `program` to run inside `host` (`ip netns exec`, which execs it: the child's pid is the
    /// program's). Killed when the lab drops, if still running.
    pub fn command(&self, host: &str, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.ns(host)]).arg(program);
        c
    }

    /// Run `f` on a new thread inside `host`'s namespace: the sockets it creates belong there
    /// (they may be handed to other threads afterwards).
    pub fn in_host<T: Send + 'static>(
        &self,
        host: &str,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> JoinHandle<T> {
        let ns = self.ns(host);
        std::thread::Builder::new()
            .name(format!("in-{host}"))
            .spawn(move || {
                enter(&ns).unwrap_or_else(|e| panic!("enter namespace {ns}: {e}"));
                f()
            })
            .expect("spawn a thread")
    }

    /// The addresses on `host`'s `eth0` (`ip -br addr`), for assertions.
    pub fn addrs(&self, host: &str) -> Vec<String> {
        let out = Command::new("ip")
            .args([
                "-n",
                &self.ns(host),
                "-br",
                "-4",
                "addr",
                "show",
                "dev",
                "eth0",
            ])
            .output()
            .expect("ip");
        String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .skip(2)
            .map(str::to_string)
            .collect()
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        let mut all: Vec<String> = self.hosts.iter().map(|h| self.ns(h)).collect();
        all.push(self.switch());
        for ns in &all {
            let pids = Command::new("ip")
                .args(["netns", "pids", ns])
                .stderr(Stdio::null())
                .output();
            if let Ok(o) = pids {
                for pid in String::from_utf8_lossy(&o.stdout).split_whitespace() {
                    if let Ok(pid) = pid.parse::<i32>() {
                        // SAFETY: a signal to a process in a namespace this lab made.
                        unsafe { libc::kill(pid, libc::SIGKILL) };
                    }
                }
            }
        }
        for ns in &all {
            let _ = Command::new("ip")
                .args(["netns", "del", ns])
                .stderr(Stdio::null())
                .status();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::{TcpListener, TcpStream};
    use std::time::Duration;

    #[test]
    fn hosts_reach_each_other_until_cut_and_a_blackhole_hides_one_peer_only() {
        if !Lab::usable() {
            return;
        }
        let lab = Lab::new(&["a", "b", "c"]);
        let a = lab.addr("a");
        let l = lab
            .in_host("a", move || TcpListener::bind((a, 4000)).unwrap())
            .join()
            .unwrap();
        let server = std::thread::spawn(move || {
            for s in l.incoming().take(2) {
                let mut s = s.unwrap();
                let mut b = [0u8; 1];
                s.read_exact(&mut b).unwrap();
                s.write_all(&b).unwrap();
            }
        });
        let connect = |from: &str| {
            lab.in_host(from, move || {
                let mut s = TcpStream::connect_timeout(&(a, 4000).into(), Duration::from_secs(1))?;
                s.write_all(b"x")?;
                let mut b = [0u8; 1];
                s.read_exact(&mut b)?;
                Ok::<_, std::io::Error>(b[0])
            })
            .join()
            .unwrap()
        };
        assert_eq!(connect("b").unwrap(), b'x');
        // b cannot reach a any more; c still can.
        lab.blackhole("b", a);
        assert!(connect("b").is_err());
        assert_eq!(connect("c").unwrap(), b'x');
        lab.unblackhole("b", a);
        lab.cut("a");
        let nobody = lab
            .in_host("c", move || {
                TcpStream::connect_timeout(&(a, 4000).into(), Duration::from_millis(300)).is_err()
            })
            .join()
            .unwrap();
        assert!(nobody, "a is unplugged");
        lab.heal("a");
        drop(lab);
        drop(server);
    }

    #[test]
    fn processes_run_inside_a_host_and_die_with_the_lab() {
        if !Lab::usable() {
            return;
        }
        let lab = Lab::new(&["x"]);
        let out = lab
            .command("x", "ip")
            .args(["-br", "addr"])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains(&lab.addr("x").to_string()), "{text}");
        let mut child = lab.command("x", "sleep").arg("60").spawn().unwrap();
        let ns = lab.ns("x");
        // `ip netns exec` enters the namespace, then becomes `sleep` (same pid): only then is
        // it the namespace's to end.
        let inside = || {
            std::process::Command::new("ip")
                .args(["netns", "pids", &ns])
                .output()
                .is_ok_and(|o| {
                    String::from_utf8_lossy(&o.stdout)
                        .split_whitespace()
                        .any(|p| p == child.id().to_string())
                })
        };
        let t0 = std::time::Instant::now();
        while !inside() {
            assert!(
                t0.elapsed() < std::time::Duration::from_secs(10),
                "never entered"
            );
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        drop(lab);
        let st = child.wait().unwrap();
        assert!(!st.success(), "killed with the lab");
        assert!(!std::path::Path::new(&format!("/run/netns/{ns}")).exists());
    }
}
