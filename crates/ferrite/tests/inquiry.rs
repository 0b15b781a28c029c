//! SCSI identity and capacity through libiscsi's tools: standard INQUIRY, the VPD pages
//! 0x00 / 0x80 / 0x83, and READ CAPACITY(16) for both logical block sizes.

mod common;

use std::time::Duration;

use common::{field, run, Daemon, Opts, IQN};

const LIMIT: Duration = Duration::from_secs(60);

#[test]
fn standard_inquiry() {
    let d = Daemon::start(Opts::default());
    let out = run("iscsi-inq", &[&d.url(0)], LIMIT).ok();
    assert_eq!(
        field(&out.stdout, "Vendor:"),
        Some("FERRITE"),
        "{}",
        out.describe()
    );
    assert_eq!(
        field(&out.stdout, "Peripheral Device Type:"),
        Some("DIRECT_ACCESS"),
        "{}",
        out.describe()
    );
    assert_eq!(
        field(&out.stdout, "Peripheral Qualifier:"),
        Some("CONNECTED"),
        "{}",
        out.describe()
    );
}

// iscsi-inq reads --pagecode as a decimal integer ("0x80" would parse as 0), so pages go in decimal.

#[test]
fn vpd_supported_pages() {
    let d = Daemon::start(Opts::default());
    let out = run("iscsi-inq", &["-e", "1", "-c", "0", &d.url(0)], LIMIT).ok();
    for page in ["Page:0x00", "Page:0x80", "Page:0x83"] {
        assert!(
            out.stdout.contains(page),
            "{page} not listed: {}",
            out.describe()
        );
    }
}

#[test]
fn vpd_unit_serial_number() {
    let d = Daemon::start(Opts::default());
    let out = run("iscsi-inq", &["-e", "1", "-c", "128", &d.url(0)], LIMIT).ok();
    let serial = field(&out.stdout, "Unit Serial Number:")
        .unwrap_or_else(|| panic!("no serial: {}", out.describe()));
    let serial = serial.trim_start_matches('[').trim_end_matches(']');
    assert!(
        !serial.trim().is_empty(),
        "empty serial: {}",
        out.describe()
    );
    // The same LUN answers the same serial on every session.
    let again = run("iscsi-inq", &["-e", "1", "-c", "128", &d.url(0)], LIMIT).ok();
    assert_eq!(out.stdout, again.stdout);
}

#[test]
fn vpd_device_identification() {
    let d = Daemon::start(Opts::default());
    let out = run("iscsi-inq", &["-e", "1", "-c", "131", &d.url(0)], LIMIT).ok();
    assert!(
        out.stdout.contains("Page Code:(0x83)"),
        "{}",
        out.describe()
    );
    assert!(
        out.stdout.contains("DEVICE DESIGNATOR #0"),
        "no designator: {}",
        out.describe()
    );
    // SPC-4 §7.8.6: a logical-unit designator (NAA, EUI-64, …) must be present.
    assert!(
        out.stdout.contains("Association:(0) LOGICAL_UNIT"),
        "no LU designator: {}",
        out.describe()
    );
    assert!(
        out.stdout.contains(&format!("Designator:[{IQN}")),
        "target name not among designators: {}",
        out.describe()
    );
}

fn check_capacity(block_size: u32) {
    let d = Daemon::start(Opts {
        luns: vec!["ram:64M".into()],
        block_size,
        ..Opts::default()
    });
    let out = run("iscsi-readcapacity16", &[&d.url(0)], LIMIT).ok();
    let blocks = (64u64 << 20) / block_size as u64;
    assert_eq!(
        field(&out.stdout, "RETURNED LOGICAL BLOCK ADDRESS:"),
        Some((blocks - 1).to_string().as_str()),
        "{}",
        out.describe()
    );
    assert_eq!(
        field(&out.stdout, "LOGICAL BLOCK LENGTH IN BYTES:"),
        Some(block_size.to_string().as_str()),
        "{}",
        out.describe()
    );
    assert_eq!(
        field(&out.stdout, "Total size:"),
        Some((64u64 << 20).to_string().as_str()),
        "{}",
        out.describe()
    );
}

#[test]
fn read_capacity16_512() {
    check_capacity(512);
}

#[test]
fn read_capacity16_4096() {
    check_capacity(4096);
}
