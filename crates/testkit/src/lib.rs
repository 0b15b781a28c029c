//! Ferrite's test peers, shared by unit tests, integration tests, fuzz targets and benches so
//! that each of them does not grow its own login builder and `Directory` stub.
//!
//! - [`pdu`]: builders for the PDUs an initiator sends (Login, SCSI Command, Data-Out, NOP-Out,
//!   Task Management, Text, Logout, SNACK) as `iscsi_wire` values, with sensible defaults, and
//!   [`pdu::raw`] to hand them to an engine the way the daemon's decoder does.
//! - [`engine`]: a scripted, sans-IO peer for `iscsi_proto::Connection`: a configurable
//!   [`engine::Dir`], a login to full feature phase (a leading login, or an MC/S join by TSIH
//!   and CID), and drains of what the engine produced.
//! - [`initiator`]: a blocking initiator over a `TcpStream` for whole-system tests against the
//!   running daemon, written independently of `iscsi-wire` and `iscsi-proto`.
//!
//! **Test code only.** No production crate (`iscsi-wire`, `iscsi-proto`, `scsi-core`,
//! `backstore`, `ferrite`) may have it under `[dependencies]`; `[dev-dependencies]`, the fuzz
//! crate and the bench crate may. It is `publish = false`.
//!
//! `iscsi-proto`'s own unit tests (`src/conn/tests.rs`) cannot use it: testkit depends on
//! iscsi-proto, so a unit test of iscsi-proto would see two copies of its types (the crate under
//! test and the one testkit links). Its integration tests (`crates/iscsi-proto/tests/`) can.

pub mod ceph;
pub mod engine;
pub mod etcd;
pub mod initiator;
pub mod netns;
pub mod pdu;

/// Whether this runs under CI (`CI` set, and not to `false` or `0`): a test that cannot find
/// what it needs fails there instead of skipping.
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "false" && v != "0")
}
