//! A throw-away Ceph cluster (`testkit::ceph`) for scripts: `bench/rbd.sh` runs
//! `cargo run --release -p testkit --example ceph`, reads `CEPH_CONF=<path>` from its first line
//! of output, and closes its standard input to stop it (the cluster's daemons and files go
//! then, also when the script is killed, since its end of the pipe closes with it).

use std::io::Read;

fn main() {
    let Some(ceph) = testkit::ceph::Ceph::start() else {
        std::process::exit(1);
    };
    println!("CEPH_CONF={}", ceph.conf().display());
    let mut sink = Vec::new();
    let _ = std::io::stdin().read_to_end(&mut sink);
    drop(ceph);
}
