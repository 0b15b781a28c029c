//! ALUA with the Linux kernel initiator (open-iscsi, scsi_dh_alua, dm-multipath) in a QEMU guest
//! (`common::guest`): one target, two portal groups on two loopback ports in two ALUA groups
//! (1 active/optimized, 2 active/non-optimized), one file LUN, and the multipath.conf stanza the
//! README gives for Ferrite.
//!
//! - `multipath -ll` shows one map with `hwhandler='1 alua'` and two path groups, prio 50 and
//!   10; `sg_rtpg`, `sg_inq` and `sg_vpd` show the groups, TPGS and the designators;
//! - while fio writes with verification through the map, `ferrite admin set-alua` swaps the two
//!   states: the I/O moves to portal group 2 (the target counts each session's commands);
//! - group 2 goes standby, then unavailable: the I/O carries on through group 1;
//! - fio ends without an error and every block it wrote read back intact;
//! - the daemon restarts: the states come back (from the saved configuration) and the guest's
//!   paths with them;
//! - both groups active again, `mpathpersist` registers, reserves and releases through the map.
//!
//! The `multipath -ll` output of every step is printed.

mod common;

use std::thread;
use std::time::{Duration, Instant};

use common::guest::{Guest, GuestOpts, HOST_FROM_GUEST};
use common::tpg::{admin_json, admin_ok};
use common::{Daemon, Opts, IQN};

const SCRIPT: &str = include_str!("guest/alua.sh");

/// The README's stanza for Ferrite's LUNs, plus test settings: maps for every WWID, named
/// mpathN, the guest's own disk left alone, and a short checker interval.
const MULTIPATH_CONF: &str = r#"defaults {
    user_friendly_names yes
    find_multipaths no
    polling_interval 2
}
blacklist {
    devnode "^vd[a-z]"
}
devices {
    device {
        vendor "FERRITE"
        product "Virtual Disk"
        hardware_handler "1 alua"
        prio alua
        path_grouping_policy group_by_prio
        failback immediate
        path_checker tur
        no_path_retry 12
    }
}
"#;

const FIRST_STEP: Duration = Duration::from_secs(300);
const STEP: Duration = Duration::from_secs(180);

/// Commands (reads + writes + others) each portal group's sessions of `initiator` ran so far.
fn commands_by_group(d: &Daemon, initiator: &str) -> [u64; 2] {
    let mut n = [0u64; 2];
    for s in admin_json(d, &["sessions"])
        .as_array()
        .into_iter()
        .flatten()
    {
        if s["initiator"] != initiator {
            continue;
        }
        let io = &s["io"];
        let c = io["writes"].as_u64().unwrap_or(0) + io["reads"].as_u64().unwrap_or(0);
        match s["tpg_tag"].as_u64() {
            Some(1) => n[0] += c,
            Some(2) => n[1] += c,
            _ => {}
        }
    }
    n
}

/// Wait until, over a 3 s window, only portal group `busy` (1 or 2) carries reads and writes.
fn wait_io_on(d: &Daemon, g: &Guest, initiator: &str, busy: usize, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(90);
    let mut last = (Vec::new(), [0u64; 2]);
    while Instant::now() < deadline {
        let a = commands_by_group(d, initiator);
        thread::sleep(Duration::from_secs(3));
        let b = commands_by_group(d, initiator);
        let delta = [b[0] - a[0], b[1] - a[1]];
        if delta[busy - 1] > 0 && delta[2 - busy] == 0 {
            println!("{what}: commands in 3 s by portal group: {delta:?}");
            return;
        }
        last = (vec![a, b], delta);
    }
    g.fail(&format!(
        "{what}: I/O did not settle on portal group {busy}: last 3 s {:?} ({:?})",
        last.1, last.0
    ));
}

/// (group id, state, who set it) as `ferrite admin targets` shows them.
fn alua_states(d: &Daemon) -> Vec<(u64, String, String)> {
    let v = admin_json(d, &["targets"]);
    v["targets"][0]["alua_groups"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|g| {
            (
                g["id"].as_u64().unwrap(),
                g["state"].as_str().unwrap().to_string(),
                g["changed_by"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

fn set_alua(d: &Daemon, states: &[&str]) {
    let mut args = vec!["set-alua", IQN];
    args.extend_from_slice(states);
    let t0 = Instant::now();
    admin_ok(d, &args);
    println!("set-alua {states:?}: answered after {:?}", t0.elapsed());
}

#[test]
fn alua_states_steer_dm_multipath_and_survive_a_restart() {
    let config = format!(
        r#"
        [[target]]
        name = "{IQN}"
        alua_transition_secs = 1
        [[target.portal_group]]
        tag = 1
        portals = ["127.0.0.1:{{port}}"]
        [[target.portal_group]]
        tag = 2
        portals = ["127.0.0.1:{{xport0}}"]
        [[target.lun]]
        id = 0
        backstore = "file:{{dir}}/lun0.img:128M"
        [[target.alua_group]]
        id = 1
        portal_groups = [1]
        state = "active/optimized"
        [[target.alua_group]]
        id = 2
        portal_groups = [2]
        state = "active/non-optimized"
        "#
    );
    let mut d = Daemon::start(Opts {
        config: Some(config),
        extra_portals: vec!["127.0.0.1".into()],
        ..Opts::default()
    });
    let (port1, port2) = (d.port, d.extra_ports[0]);
    let mut g = Guest::start_with(
        SCRIPT,
        GuestOpts::default()
            .env("IQN", IQN)
            .env("PORTAL1", &format!("{HOST_FROM_GUEST}:{port1}"))
            .env("PORTAL2", &format!("{HOST_FROM_GUEST}:{port2}"))
            .multipath_conf(MULTIPATH_CONF)
            .unique_initiator(),
    );
    let initiator = g.initiator().to_string();

    // Both paths are up; undo what Linux may have chosen with SET TARGET PORT GROUPS while
    // they came up one at a time (see alua.sh).
    g.wait_marker("paths-up", FIRST_STEP);
    set_alua(&d, &["1=active/optimized", "2=active/non-optimized"]);
    g.signal("initial-states");
    let ll = g.wait_marker("ready", STEP);
    println!("---- 1. both groups active, group 1 optimized\n{ll}");
    g.wait_marker("io-running", STEP);
    wait_io_on(&d, &g, &initiator, 1, "start");

    set_alua(&d, &["1=active/non-optimized", "2=active/optimized"]);
    wait_io_on(&d, &g, &initiator, 2, "after the swap");
    g.signal("swapped");
    let ll = g.wait_marker("step-swapped", STEP);
    println!("---- 2. states swapped\n{ll}");

    set_alua(&d, &["2=standby"]);
    wait_io_on(&d, &g, &initiator, 1, "group 2 standby");
    g.signal("standby");
    let ll = g.wait_marker("step-standby", STEP);
    println!("---- 3. group 2 standby\n{ll}");

    set_alua(&d, &["2=unavailable"]);
    wait_io_on(&d, &g, &initiator, 1, "group 2 unavailable");
    g.signal("unavailable");
    let ll = g.wait_marker("step-unavailable", STEP);
    println!("---- 4. group 2 unavailable\n{ll}");

    g.signal("stop-io");
    g.wait_marker("io-done", STEP);

    // Restart: the states come from the saved configuration (the operator's, and whatever the
    // guest chose itself with SET TARGET PORT GROUPS).
    let before = alua_states(&d);
    println!("ALUA states before the restart: {before:?}");
    assert_eq!(before[1].1, "unavailable");
    let path = d.config_path();
    d.restart(&path);
    let after: Vec<(u64, String)> = alua_states(&d)
        .into_iter()
        .map(|(i, s, _)| (i, s))
        .collect();
    let before: Vec<(u64, String)> = before.into_iter().map(|(i, s, _)| (i, s)).collect();
    assert_eq!(after, before, "states after the restart");
    // The guest's sessions come back (iscsid reconnects both).
    let deadline = Instant::now() + Duration::from_secs(120);
    let sessions = |d: &Daemon| {
        admin_json(d, &["sessions"])
            .as_array()
            .into_iter()
            .flatten()
            .filter(|s| s["initiator"] == initiator.as_str())
            .count()
    };
    while sessions(&d) < 2 {
        if Instant::now() > deadline {
            g.fail("the guest did not log in again after the restart");
        }
        thread::sleep(Duration::from_millis(500));
    }
    g.signal("restarted");
    let ll = g.wait_marker("step-restarted", STEP);
    println!("---- 5. after a restart of the daemon\n{ll}");

    set_alua(&d, &["1=active/optimized", "2=active/non-optimized"]);
    g.signal("healthy");
    let out = g.finish(STEP).success();
    println!("---- 6. both active again\n{}", out.file("ll-6"));
    println!("---- guest output\n{}", out.output);
    // What the kernel did: ALUA state reports, SET TARGET PORT GROUPS, dm-multipath path events.
    let dmesg = out.file("dmesg");
    let kernel: Vec<&str> = dmesg
        .lines()
        .filter(|l| l.contains("alua") || l.contains("multipath:") || l.contains("Asymmetric"))
        .collect();
    println!("---- kernel (alua, multipath)\n{}", kernel.join("\n"));

    // 1. The map: ALUA hardware handler, two path groups, 50 for group 1, 10 for group 2.
    let (d1, d2) = {
        let disks = out.file("disks");
        let mut w = disks.split_whitespace().map(String::from);
        (w.next().unwrap(), w.next().unwrap())
    };
    let ll1 = out.file("ll-1");
    assert!(ll1.contains("hwhandler='1 alua'"), "{ll1}");
    assert_eq!(
        groups(&ll1),
        vec![(50, vec![d1.clone()]), (10, vec![d2.clone()])],
        "{ll1}"
    );
    assert_eq!(active_group(&ll1), Some(50), "{ll1}");
    let dh = out.file("hwhandler");
    assert_eq!(
        dh.lines().filter(|l| l.trim() == "alua").count(),
        2,
        "dh_state of both disks: {dh}"
    );
    // sg3-utils: TPGS, the groups and their states, the designators.
    let inq = out.file("inq-1");
    assert!(inq.contains("TPGS=3"), "sg_inq:\n{inq}");
    for f in ["rtpg-1", "rtpg-2"] {
        let r = out.file(f);
        assert!(r.contains("target port group id : 0x1"), "{f}:\n{r}");
        assert!(r.contains("target port group id : 0x2"), "{f}:\n{r}");
        assert!(r.contains("active/optimized"), "{f}:\n{r}");
        assert!(r.contains("active/non optimized"), "{f}:\n{r}");
    }
    let ext = out.file("rtpg-ext-2");
    assert!(ext.contains("transition time"), "sg_rtpg -e:\n{ext}");
    for (f, port, group) in [("vpd-di-1", 1, 1), ("vpd-di-2", 2, 2)] {
        let v = out.file(f);
        assert!(
            v.contains(&format!("Relative target port: 0x{port}")),
            "{f}:\n{v}"
        );
        assert!(
            v.contains(&format!("Target port group: 0x{group}")),
            "{f}:\n{v}"
        );
    }
    // 2.-4. Priorities after each change, and which group carried the I/O (checked above).
    assert_eq!(
        groups(&out.file("ll-2")),
        vec![(50, vec![d2.clone()]), (10, vec![d1.clone()])]
    );
    assert_eq!(active_group(&out.file("ll-2")), Some(50));
    // Group 1 is active/non-optimized (10) unless Linux, initializing its path group when
    // group 2 went away, made it active/optimized (50) with SET TARGET PORT GROUPS.
    let ll3 = out.file("ll-3");
    let g3 = groups(&ll3);
    assert_eq!(g3.len(), 2, "{ll3}");
    assert!(
        matches!(g3[0].0, 10 | 50) && g3[0].1 == [d1.clone()],
        "{ll3}"
    );
    assert_eq!(g3[1], (1, vec![d2.clone()]), "{ll3}");
    assert_eq!(active_group(&ll3), Some(g3[0].0), "{ll3}");
    let rtpg3 = out.file("rtpg-3");
    assert!(rtpg3.contains("standby"), "{rtpg3}");
    // 5. After the restart, the target reports the same states.
    let rtpg5 = out.file("rtpg-5");
    assert!(rtpg5.contains("unavailable"), "{rtpg5}");
    // fio: every round without error, every write read back.
    let rounds = out.verified_fio_rounds(32 << 20).len();
    println!("fio: {rounds} verified rounds of 32 MiB, no error");
    // 6. Persistent reservations through the map.
    let keys = out.file("pr-keys");
    assert_eq!(
        keys.lines().filter(|l| l.trim() == "0x1").count(),
        2,
        "{keys}"
    );
    let resv = out.file("pr-reservation");
    assert!(
        resv.contains("Key = 0x1") && resv.contains("Write Exclusive, registrants only"),
        "{resv}"
    );
    let released = out.file("pr-released");
    assert!(released.contains("there is NO reservation"), "{released}");
}

/// The path groups of `multipath -ll`: (prio, devices), in order.
fn groups(ll: &str) -> Vec<(u32, Vec<String>)> {
    let mut v: Vec<(u32, Vec<String>)> = Vec::new();
    for line in ll.lines() {
        if let Some(i) = line.find("prio=") {
            let p = line[i + 5..]
                .split_whitespace()
                .next()
                .and_then(|p| p.parse().ok())
                .unwrap_or(u32::MAX);
            v.push((p, Vec::new()));
        } else if let Some(dev) = line
            .split_whitespace()
            .skip_while(|w| !w.contains(':') || w.matches(':').count() != 3)
            .nth(1)
        {
            if let Some(last) = v.last_mut() {
                last.1.push(dev.to_string());
            }
        }
    }
    v
}

/// The priority of the path group marked `status=active`.
fn active_group(ll: &str) -> Option<u32> {
    ll.lines()
        .find(|l| l.contains("status=active"))
        .and_then(|l| l.split("prio=").nth(1))
        .and_then(|p| p.split_whitespace().next())
        .and_then(|p| p.parse().ok())
}
