//! The Linux kernel initiator (open-iscsi) with dm-multipath, in a QEMU guest
//! (`common::guest`), against one target with two portal groups on two loopback ports and one
//! 128 MiB LUN. The guest logs in through both groups and multipathd makes one map of two
//! paths, whose WWID is the LUN's NAA designator as `sg_vpd -p di` and `/dev/disk/by-id` show
//! it; `ferrite admin sessions` shows the guest's two sessions, one per group. fio writes 32 MiB
//! of random 4 KiB blocks through the map and reads them back checked (crc32c); then the
//! session that carries the map's I/O is logged out in the middle of another verified fio run,
//! which completes on the other path, and is logged in again. Finally `mpathpersist` registers
//! a key through the map (one registration per path, `ferrite admin pr-show` shows both target
//! ports), reserves Write Exclusive – Registrants Only, reads the reservation back and releases
//! it. The `multipath -ll` output of each step is printed.
//!
//! The assertions hold whatever path groups and priorities multipath chooses: today (TPGS=0)
//! it is failover with constant priorities.

mod common;

use std::time::Duration;

use serde_json::Value;

use common::guest::{Guest, GuestOpts, HOST_FROM_GUEST};
use common::tpg::admin_json;
use common::{Daemon, Opts, IQN};

/// The guest's side of the test.
const SCRIPT: &str = include_str!("guest/multipath-smoke.sh");

/// Maps for every disk with a WWID (`find_multipaths no`: the Debian default, `strict`, only
/// makes maps for WWIDs it has seen before), named mpathN; the guest's own virtio disk is left
/// alone.
const MULTIPATH_CONF: &str = r#"defaults {
    user_friendly_names yes
    find_multipaths no
}
blacklist {
    devnode "^vd[a-z]"
}
"#;

/// Boot (about 12 s under TCG) and the first logins and map; generous for a loaded machine.
const FIRST_STEP: Duration = Duration::from_secs(300);
/// Any later step.
const STEP: Duration = Duration::from_secs(300);

#[test]
fn dm_multipath_over_two_portal_groups() {
    let config = format!(
        r#"
        [[target]]
        name = "{IQN}"
        [[target.portal_group]]
        tag = 1
        portals = ["127.0.0.1:{{port}}"]
        [[target.portal_group]]
        tag = 2
        portals = ["127.0.0.1:{{xport0}}"]
        [[target.lun]]
        id = 0
        backstore = "ram:128M"
        "#
    );
    let d = Daemon::start(Opts {
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

    // One map, two paths.
    let ll = g.wait_marker("two-paths", FIRST_STEP);
    println!("---- multipath -ll with both paths\n{ll}");
    // The target's view meanwhile: one session per portal group, both from the guest.
    let sessions = admin_json(&d, &["sessions"]);
    let mut tags: Vec<u64> = sessions
        .as_array()
        .expect("sessions array")
        .iter()
        .filter(|s| s["initiator"] == initiator.as_str())
        .map(|s| s["tpg_tag"].as_u64().expect("tpg_tag"))
        .collect();
    tags.sort_unstable();
    if tags != [1, 2] {
        g.fail(&format!(
            "expected one session through each portal group, found groups {tags:?}: {sessions:#}"
        ));
    }
    g.signal("sessions-checked");

    // Reserved through the map: the key registered on both I_T nexuses.
    g.wait_marker("reserved", STEP);
    let pr = admin_json(&d, &["pr-show", IQN, "0"]);
    let st = &pr["luns"][0]["state"];
    let mut ports: Vec<u64> = st["registrations"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|r| r["key"] == 1 && r["who"]["initiator"] == initiator.as_str())
        .filter_map(|r| r["who"]["port"].as_u64())
        .collect();
    ports.sort_unstable();
    let held = &st["reservation"]["Single"];
    if ports != [1, 2]
        || held["ty"] != "WriteExclusiveRegistrantsOnly"
        || held["holder"]["initiator"] != initiator.as_str()
    {
        g.fail(&format!(
            "expected key 0x1 registered through relative ports 1 and 2 and a Write Exclusive – \
             Registrants Only reservation held by {initiator}: {pr:#}"
        ));
    }
    g.signal("pr-checked");

    let out = g.finish(STEP).success();
    println!("---- guest output\n{}", out.output);
    let ll1 = out.file("multipath-ll-1");
    let ll2 = out.file("multipath-ll-2");
    let ll3 = out.file("multipath-ll-3");
    println!(
        "---- multipath -ll after the logout of {}",
        out.file("lost-portal").trim()
    );
    println!("{ll2}");
    println!("---- multipath -ll after the login again\n{ll3}");

    // Exactly one map, with two paths, both up; one while a session was gone.
    let wwid = map_wwid(&ll1).unwrap_or_else(|| panic!("no map in multipath -ll:\n{ll1}"));
    assert_eq!(maps(&ll1), 1, "one map:\n{ll1}");
    assert_eq!(up_paths(&ll1), 2, "two working paths:\n{ll1}");
    assert_eq!(maps(&ll2), 1, "{ll2}");
    assert_eq!(paths(&ll2), 1, "one path left after the logout:\n{ll2}");
    assert_eq!(up_paths(&ll2), 1, "{ll2}");
    assert_eq!(maps(&ll3), 1, "{ll3}");
    assert_eq!(up_paths(&ll3), 2, "both paths again:\n{ll3}");
    for step in ["paths-1", "paths-3"] {
        let p = out.file(step);
        let up = p.lines().filter(|l| l.contains("active ready")).count();
        assert_eq!(up, 2, "multipathd show paths:\n{p}");
    }

    // The map's WWID is the LUN's NAA designator (scsi_id's "3" + NAA), the same through both
    // target ports, and udev named the disk and the map by it.
    let maps_raw = out.file("maps");
    assert_eq!(
        maps_raw.split_whitespace().collect::<Vec<_>>(),
        [map_name(&ll1), wwid.as_str(), "2"],
        "multipathd show maps"
    );
    for (vpd, id) in [("vpd-di-1", "wwid-1"), ("vpd-di-2", "wwid-2")] {
        let vpd = out.file(vpd);
        let naa = naa(&vpd).unwrap_or_else(|| panic!("no NAA designator in sg_vpd -p di:\n{vpd}"));
        assert_eq!(format!("3{naa}"), wwid, "sg_vpd -p di:\n{vpd}");
        assert_eq!(out.file(id).trim(), wwid, "scsi_id");
    }
    let by_id = out.file("by-id");
    for link in [format!("scsi-{wwid}"), format!("dm-uuid-mpath-{wwid}")] {
        assert!(
            by_id.lines().any(|l| l.trim() == link),
            "/dev/disk/by-id/{link} missing:\n{by_id}"
        );
    }

    // fio: every write done and every block read back intact, across the logout too.
    for (name, size) in [
        ("fio-1.json", 32u64 << 20),
        ("fio-2.json", 16 << 20),
        ("fio-3.json", 8 << 20),
    ] {
        let text = out.file(name);
        let v: Value = serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("{name} is not fio JSON ({e}):\n{text}"));
        let job = &v["jobs"][0];
        assert_eq!(job["error"], 0, "{name}: {text}");
        assert_eq!(job["write"]["io_bytes"], size, "{name}: {text}");
        assert_eq!(
            job["read"]["io_bytes"], size,
            "{name}: verify reads: {text}"
        );
    }

    // Persistent reservations through the map.
    let keys = out.file("pr-keys");
    assert_eq!(
        keys.lines().filter(|l| l.trim() == "0x1").count(),
        2,
        "key 0x1 once per path:\n{keys}"
    );
    let resv = out.file("pr-reservation");
    assert!(
        resv.contains("Key = 0x1") && resv.contains("Write Exclusive, registrants only"),
        "mpathpersist --in -r:\n{resv}"
    );
    let released = out.file("pr-released");
    assert!(
        released.contains("NO reservation held"),
        "after the release:\n{released}"
    );
    let after = out.file("pr-keys-after");
    assert!(
        after.contains("0 registered reservation key"),
        "after unregistering:\n{after}"
    );
}

/// `multipath -ll`'s map lines: "NAME (WWID) dm-N VENDOR,PRODUCT".
fn map_lines(ll: &str) -> impl Iterator<Item = &str> {
    ll.lines().filter(|l| {
        let mut w = l.split_whitespace();
        matches!((w.next(), w.next(), w.next()),
            (Some(_), Some(id), Some(dm)) if id.starts_with('(') && dm.starts_with("dm-"))
    })
}

fn maps(ll: &str) -> usize {
    map_lines(ll).count()
}

fn map_name(ll: &str) -> &str {
    map_lines(ll)
        .next()
        .and_then(|l| l.split_whitespace().next())
        .unwrap_or("")
}

fn map_wwid(ll: &str) -> Option<String> {
    let l = map_lines(ll).next()?;
    let id = l.split_whitespace().nth(1)?;
    Some(id.trim_matches(|c| c == '(' || c == ')').to_string())
}

/// `multipath -ll`'s path lines: "... H:C:T:L sdX MAJ:MIN DM-STATE CHECKER-STATE ONLINE".
fn path_lines(ll: &str) -> impl Iterator<Item = Vec<&str>> {
    ll.lines().filter_map(|l| {
        let w: Vec<&str> = l.split_whitespace().collect();
        let i = w.iter().position(|t| t.matches(':').count() == 3)?;
        w.get(i + 1)
            .filter(|d| d.starts_with("sd"))
            .map(|_| w[i..].to_vec())
    })
}

fn paths(ll: &str) -> usize {
    path_lines(ll).count()
}

fn up_paths(ll: &str) -> usize {
    path_lines(ll)
        .filter(|w| w.get(3..6) == Some(&["active", "ready", "running"][..]))
        .count()
}

/// The addressed logical unit's NAA designator in `sg_vpd -p di` output, lower-case hex
/// without "0x".
fn naa(vpd: &str) -> Option<String> {
    let mut lines = vpd
        .lines()
        .skip_while(|l| !l.contains("designator type: NAA"));
    lines.next()?;
    let v = lines.next()?.trim().strip_prefix("0x")?;
    Some(v.to_ascii_lowercase())
}
