//! Persistent reservations through the device server: CDB bytes in, status / sense / data out.
//!
//! The conflict walk (`conflict_table_walk`) takes its expectations from an independent
//! transcription of the SPC-4 §5.13.1 and SBC-4 tables of commands allowed in the presence of
//! various reservations (columns below), not from
//! `PrState::conflicts`.

use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread;
use std::time::Duration;

use backstore::{Backstore, RamBackstore};

use super::*;
use crate::opcodes::TABLE;
use crate::{
    lun_to_wire, DeviceServer, LogicalUnit, LuConfig, Nexus, ScsiRequest, ScsiResponse, ScsiStatus,
    TargetPort, TaskAborter, TaskAttr,
};

pub(super) const IQN_A: &str = "iqn.2026-11.io.example:node-a";
pub(super) const IQN_B: &str = "iqn.2026-11.io.example:node-b";
pub(super) const IQN_C: &str = "iqn.2026-11.io.example:node-c";

pub(super) fn port(id: u16) -> Arc<TargetPort> {
    Arc::new(TargetPort {
        target_name: "iqn.2026-11.io.ferrite:pr".into(),
        tpg_tag: id,
        relative_port_id: id,
    })
}

pub(super) fn nx(name: &str, isid: u64, port_id: u16) -> Nexus {
    Nexus {
        initiator_name: name.into(),
        isid,
        target_port: port(port_id),
    }
}

pub(super) struct H {
    pub srv: DeviceServer,
    pub lu: Arc<LogicalUnit>,
    pub store: Arc<MemPrStore>,
}

pub(super) fn cfg(name_only: bool) -> LuConfig {
    LuConfig {
        report_power_on_ua: false,
        thin: true,
        pr_match_initiator_name_only: name_only,
        ..LuConfig::default()
    }
}

fn setup_on(cfg: LuConfig, backing: Arc<dyn Backstore>, store: Option<Arc<MemPrStore>>) -> H {
    let lu = Arc::new(LogicalUnit::new(cfg, backing).unwrap());
    let store = store.unwrap_or_default();
    lu.set_pr_store(store.clone()).unwrap();
    let srv = DeviceServer::new();
    srv.add_lun(0, lu.clone()).unwrap();
    H { srv, lu, store }
}

pub(super) fn setup_with(name_only: bool) -> H {
    setup_on(cfg(name_only), Arc::new(RamBackstore::new(1 << 20)), None)
}

fn setup() -> H {
    setup_with(false)
}

pub(super) fn exec(h: &H, n: &Nexus, cdb: &[u8], data: &[u8]) -> ScsiResponse {
    h.srv.execute(&ScsiRequest {
        nexus: n,
        lun: lun_to_wire(0),
        cdb,
        data_out: data,
        expected_data_in: 0,
        attr: TaskAttr::Simple,
        cancel: None,
    })
}

pub(super) fn prout_cdb(sa: u8, scope_type: u8, len: u32) -> Vec<u8> {
    let mut c = vec![0x5F, sa, scope_type, 0, 0, 0, 0, 0, 0, 0];
    c[5..9].copy_from_slice(&len.to_be_bytes());
    c
}

pub(super) fn basic_list(key: u64, sark: u64, flags: u8) -> Vec<u8> {
    let mut p = vec![0u8; 24];
    p[0..8].copy_from_slice(&key.to_be_bytes());
    p[8..16].copy_from_slice(&sark.to_be_bytes());
    p[20] = flags;
    p
}

/// PERSISTENT RESERVE OUT with the basic 24-byte parameter list.
pub(super) fn prout(
    h: &H,
    n: &Nexus,
    sa: u8,
    ty: u8,
    key: u64,
    sark: u64,
    flags: u8,
) -> ScsiResponse {
    exec(h, n, &prout_cdb(sa, ty, 24), &basic_list(key, sark, flags))
}

pub(super) fn prin(h: &H, n: &Nexus, sa: u8, alloc: u16) -> ScsiResponse {
    let mut c = vec![0x5E, sa, 0, 0, 0, 0, 0, 0, 0, 0];
    c[7..9].copy_from_slice(&alloc.to_be_bytes());
    exec(h, n, &c, &[])
}

pub(super) fn good(r: &ScsiResponse) {
    assert_eq!(r.status, ScsiStatus::GOOD, "sense {:02x?}", r.sense);
}

pub(super) fn is_conflict(r: &ScsiResponse) -> bool {
    r.status == ScsiStatus::RESERVATION_CONFLICT
}

pub(super) fn sense_of(r: &ScsiResponse) -> (u8, u8, u8) {
    assert_eq!(r.status, ScsiStatus::CHECK_CONDITION);
    (r.sense[2] & 0x0F, r.sense[12], r.sense[13])
}

/// (PRGENERATION, keys).
pub(super) fn read_keys(h: &H, n: &Nexus) -> (u32, Vec<u64>) {
    let r = prin(h, n, 0, 8192);
    good(&r);
    let d = &r.data_in;
    let gen = u32::from_be_bytes(d[0..4].try_into().unwrap());
    let len = u32::from_be_bytes(d[4..8].try_into().unwrap()) as usize;
    assert_eq!(len, d.len() - 8);
    (
        gen,
        d[8..]
            .chunks(8)
            .map(|c| u64::from_be_bytes(c.try_into().unwrap()))
            .collect(),
    )
}

/// (key, type) of the reservation, if any.
pub(super) fn read_resv(h: &H, n: &Nexus) -> Option<(u64, u8)> {
    let r = prin(h, n, 1, 8192);
    good(&r);
    let d = &r.data_in;
    match u32::from_be_bytes(d[4..8].try_into().unwrap()) {
        0 => None,
        16 => {
            assert_eq!(d[21] >> 4, 0, "scope");
            Some((
                u64::from_be_bytes(d[8..16].try_into().unwrap()),
                d[21] & 0x0F,
            ))
        }
        l => panic!("READ RESERVATION additional length {l}"),
    }
}

/// Every pending unit attention of `n`, drained with REQUEST SENSE.
pub(super) fn drain_ua(h: &H, n: &Nexus) -> Vec<(u8, u8)> {
    let mut out = Vec::new();
    loop {
        let r = exec(h, n, &[0x03, 0, 0, 0, 18, 0], &[]);
        good(&r);
        if r.data_in[2] & 0x0F == 0 {
            return out;
        }
        assert_eq!(r.data_in[2] & 0x0F, 0x06);
        out.push((r.data_in[12], r.data_in[13]));
    }
}

const WRITE10: [u8; 10] = [0x2A, 0, 0, 0, 0, 1, 0, 0, 1, 0];
const READ10: [u8; 10] = [0x28, 0, 0, 0, 0, 1, 0, 0, 1, 0];

fn write(h: &H, n: &Nexus) -> ScsiResponse {
    exec(h, n, &WRITE10, &[0x77; 512])
}

fn read(h: &H, n: &Nexus) -> ScsiResponse {
    exec(h, n, &READ10, &[])
}

const REGISTER: u8 = 0;
const RESERVE: u8 = 1;
const RELEASE: u8 = 2;
const CLEAR: u8 = 3;
const PREEMPT: u8 = 4;
const PREEMPT_ABORT: u8 = 5;
const REG_IGNORE: u8 = 6;
const REG_MOVE: u8 = 7;

const WE: u8 = 1;
const EA: u8 = 3;
const WE_RO: u8 = 5;
const EA_RO: u8 = 6;
const WE_AR: u8 = 7;
const EA_AR: u8 = 8;
const TYPES: [u8; 6] = [WE, EA, WE_RO, EA_RO, WE_AR, EA_AR];

const ASC_RESV_PREEMPTED: (u8, u8) = (0x2A, 0x03);
const ASC_RESV_RELEASED: (u8, u8) = (0x2A, 0x04);
const ASC_REGS_PREEMPTED: (u8, u8) = (0x2A, 0x05);

// ---------------------------------------------------------------------------------------------
// The conflict table
// ---------------------------------------------------------------------------------------------

/// The columns of the SPC-4 / SBC-4 reservation tables, "persistent reservation held by another
/// I_T nexus": Write Exclusive; Exclusive Access; registered I_T nexus under a Registrants Only
/// or All Registrants type; unregistered under WE-RO / WE-AR; unregistered under EA-RO / EA-AR.
/// `true` = Conflict.
const COL_ALLOWED: [bool; 5] = [false, false, false, false, false];
const COL_READ: [bool; 5] = [false, true, false, false, true];
const COL_WRITE: [bool; 5] = [true, true, false, true, true];

fn column(ty: u8, registered: bool) -> usize {
    match (ty, registered) {
        (WE, _) => 0,
        (EA, _) => 1,
        (_, true) => 2,
        (WE_RO | WE_AR, false) => 3,
        (EA_RO | EA_AR, false) => 4,
        _ => unreachable!(),
    }
}

/// The row of the standard's tables for a command, by name; `None` for commands the tables
/// do not list by name (their declared class is used).
fn row(name: &str) -> Option<&'static [bool; 5]> {
    const ALLOWED: &[&str] = &[
        // SPC-4 §5.13.1.
        "INQUIRY",
        "REPORT LUNS",
        "REQUEST SENSE",
        "TEST UNIT READY",
        "LOG SENSE",
        "PERSISTENT RESERVE IN",
        "REPORT TARGET PORT GROUPS",
        "READ MEDIA SERIAL NUMBER",
        // SBC-4.
        "READ CAPACITY",
    ];
    const READS: &[&str] = &[
        "READ(",
        "VERIFY(",
        "PRE-FETCH(",
        "READ DEFECT DATA",
        "GET LBA STATUS",
        "MODE SENSE",
        "READ BUFFER",
        "REPORT SUPPORTED OPERATION CODES",
        "REPORT SUPPORTED TASK MANAGEMENT FUNCTIONS",
    ];
    const WRITES: &[&str] = &[
        "WRITE",
        "MODE SELECT",
        "UNMAP",
        "COMPARE AND WRITE",
        "SYNCHRONIZE CACHE",
        "ORWRITE",
        "SANITIZE",
        "EXTENDED COPY",
        "RECEIVE COPY RESULTS",
        "FORMAT UNIT",
        "LOG SELECT",
        "SEND DIAGNOSTIC",
        "RECEIVE DIAGNOSTIC",
    ];
    if ALLOWED.iter().any(|p| name.starts_with(p)) {
        Some(&COL_ALLOWED)
    } else if READS.iter().any(|p| name.starts_with(p)) {
        Some(&COL_READ)
    } else if WRITES.iter().any(|p| name.starts_with(p)) {
        Some(&COL_WRITE)
    } else {
        None
    }
}

/// A CDB for `d` with every field zero (the walk only asks whether it conflicts).
fn zero_cdb(d: &crate::opcodes::OpDesc) -> Vec<u8> {
    let mut c = vec![0u8; d.cdb_len()];
    c[0] = d.opcode;
    if let Some(sa) = d.sa {
        c[1] = sa;
    }
    c
}

#[test]
fn every_table_entry_has_the_standards_class() {
    for d in TABLE {
        let declared = match d.pr {
            Class::Allowed => Some(&COL_ALLOWED),
            Class::Read => Some(&COL_READ),
            Class::Write => Some(&COL_WRITE),
            _ => None,
        };
        match (row(d.name), declared) {
            (Some(want), Some(got)) => assert_eq!(want, got, "{}", d.name),
            (Some(_), None) => panic!("{}: the standard lists a fixed row", d.name),
            (None, _) => {}
        }
    }
    let class = |name: &str| TABLE.iter().find(|d| d.name == name).unwrap().pr;
    assert_eq!(class("PREVENT ALLOW MEDIUM REMOVAL"), Class::PreventAllow);
    assert_eq!(class("START STOP UNIT"), Class::StartStop);
    assert_eq!(class("RESERVE(6)"), Class::Own);
    assert_eq!(class("RELEASE(10)"), Class::Own);
    for d in TABLE.iter().filter(|d| d.opcode == 0x5F) {
        assert_eq!(d.pr, Class::Own, "{}", d.name);
    }
}

/// Each reservation type × every command of the opcode table × holder / registrant / other.
#[test]
fn conflict_table_walk() {
    let holder = nx(IQN_A, 1, 1);
    let registrant = nx(IQN_B, 2, 1);
    let other = nx(IQN_C, 3, 2);
    for ty in TYPES {
        let h = setup();
        good(&prout(&h, &holder, REG_IGNORE, 0, 0, 0xA, 0));
        good(&prout(&h, &registrant, REG_IGNORE, 0, 0, 0xB, 0));
        good(&prout(&h, &holder, RESERVE, ty, 0xA, 0, 0));
        for d in TABLE.iter().filter(|d| d.available(&h.lu)) {
            // Variants of the commands whose row depends on CDB fields.
            let mut cases: Vec<(Vec<u8>, &[bool; 5])> = Vec::new();
            match d.pr {
                Class::Own => continue, // their own rules: tested below
                Class::PreventAllow => {
                    let mut c = zero_cdb(d);
                    cases.push((c.clone(), &COL_ALLOWED));
                    c[4] = 0x01;
                    cases.push((c, &COL_WRITE));
                }
                Class::StartStop => {
                    let mut c = zero_cdb(d);
                    c[4] = 0x01; // START = 1, POWER CONDITION 0h
                    cases.push((c.clone(), &COL_ALLOWED));
                    c[4] = 0x00; // START = 0
                    cases.push((c.clone(), &COL_WRITE));
                    c[4] = 0x11; // a power condition
                    cases.push((c, &COL_WRITE));
                }
                Class::Allowed => cases.push((zero_cdb(d), row(d.name).unwrap_or(&COL_ALLOWED))),
                Class::Read => cases.push((zero_cdb(d), row(d.name).unwrap_or(&COL_READ))),
                Class::Write => cases.push((zero_cdb(d), row(d.name).unwrap_or(&COL_WRITE))),
            }
            for (cdb, want) in cases {
                for (who, n) in [
                    ("holder", &holder),
                    ("registrant", &registrant),
                    ("other", &other),
                ] {
                    let is_holder = who == "holder" || (who == "registrant" && ty >= WE_AR);
                    let expect = !is_holder && want[column(ty, who == "registrant")];
                    let r = exec(&h, n, &cdb, &[]);
                    assert_eq!(
                        is_conflict(&r),
                        expect,
                        "type {ty}, {} {cdb:02x?} from the {who}: {:?} {:02x?}",
                        d.name,
                        r.status,
                        r.sense
                    );
                }
            }
        }
        // Nothing in the walk changed the reservation.
        assert_eq!(
            read_resv(&h, &other),
            Some((if ty >= WE_AR { 0 } else { 0xA }, ty))
        );
    }
}

#[test]
fn no_reservation_no_conflict() {
    let h = setup();
    let a = nx(IQN_A, 1, 1);
    let b = nx(IQN_B, 2, 1);
    good(&prout(&h, &a, REG_IGNORE, 0, 0, 0xA, 0));
    // Registrations alone restrict nothing.
    good(&write(&h, &b));
    good(&read(&h, &b));
}

// ---------------------------------------------------------------------------------------------
// PERSISTENT RESERVE OUT service actions
// ---------------------------------------------------------------------------------------------

#[test]
fn register_unregister_and_generation() {
    let h = setup();
    let a = nx(IQN_A, 1, 1);
    let b = nx(IQN_B, 2, 1);
    assert_eq!(read_keys(&h, &a), (0, vec![]));
    // Unregistered, RESERVATION KEY must be zero.
    assert!(is_conflict(&prout(&h, &a, REGISTER, 0, 5, 0xA, 0)));
    // Unregistered with SARK zero: nothing happens, generation unchanged.
    good(&prout(&h, &a, REGISTER, 0, 0, 0, 0));
    assert_eq!(read_keys(&h, &a), (0, vec![]));
    good(&prout(&h, &a, REGISTER, 0, 0, 0xA, 0));
    good(&prout(&h, &b, REG_IGNORE, 0, 0x1234, 0xB, 0));
    assert_eq!(read_keys(&h, &a), (2, vec![0xA, 0xB]));
    // Registered: the RESERVATION KEY must be its own.
    assert!(is_conflict(&prout(&h, &a, REGISTER, 0, 0xB, 0xC, 0)));
    assert_eq!(
        read_keys(&h, &a).0,
        2,
        "a conflict does not bump the generation"
    );
    good(&prout(&h, &a, REGISTER, 0, 0xA, 0xC, 0));
    // REGISTER AND IGNORE EXISTING KEY: any RESERVATION KEY.
    good(&prout(&h, &b, REG_IGNORE, 0, 0x999, 0xD, 0));
    assert_eq!(read_keys(&h, &a), (4, vec![0xC, 0xD]));
    // Unregister.
    good(&prout(&h, &a, REGISTER, 0, 0xC, 0, 0));
    assert_eq!(read_keys(&h, &a), (5, vec![0xD]));
    // SPEC_I_PT from a registered I_T nexus: INVALID FIELD IN CDB.
    let t = encode_tid(IQN_C, Some(3));
    let mut list = basic_list(0xD, 0xE, 0x08);
    list.extend_from_slice(&(t.len() as u32).to_be_bytes());
    list.extend_from_slice(&t);
    let r = exec(&h, &b, &prout_cdb(REGISTER, 0, list.len() as u32), &list);
    assert_eq!(sense_of(&r), (0x05, 0x24, 0x00));
    // No unit attentions from any of it.
    assert!(drain_ua(&h, &a).is_empty());
    assert!(drain_ua(&h, &b).is_empty());
}

fn encode_tid(name: &str, isid: Option<u64>) -> Vec<u8> {
    codec::encode_transport_id(name, isid)
}

#[test]
fn parameter_list_errors() {
    let h = setup();
    let a = nx(IQN_A, 1, 1);
    // PARAMETER LIST LENGTH not 24.
    let r = exec(&h, &a, &prout_cdb(REG_IGNORE, 0, 20), &[0; 20]);
    assert_eq!(sense_of(&r), (0x05, 0x1A, 0x00));
    let r = exec(&h, &a, &prout_cdb(REG_IGNORE, 0, 28), &[0; 28]);
    assert_eq!(sense_of(&r), (0x05, 0x1A, 0x00));
    // Less data than announced.
    let r = exec(&h, &a, &prout_cdb(REG_IGNORE, 0, 24), &[0; 12]);
    assert_eq!(sense_of(&r), (0x05, 0x1A, 0x00));
    // SPEC_I_PT with REGISTER AND IGNORE EXISTING KEY.
    let r = prout(&h, &a, REG_IGNORE, 0, 0, 0xA, 0x08);
    assert_eq!(sense_of(&r), (0x05, 0x26, 0x00));
    // Unknown service action (REPLACE LOST RESERVATION, 08h, is not offered).
    let r = prout(&h, &a, 0x08, 0, 0, 0xA, 0);
    assert_eq!(sense_of(&r), (0x05, 0x24, 0x00));
    assert_eq!(&r.sense[15..18], &[0xCC, 0x00, 0x01]);
    // PERSISTENT RESERVE IN with an unknown service action.
    for sa in 4..0x20 {
        assert_eq!(sense_of(&prin(&h, &a, sa, 100)), (0x05, 0x24, 0x00));
    }
    // Reserved CDB bytes.
    let mut c = prout_cdb(REG_IGNORE, 0, 24);
    c[3] = 1;
    assert_eq!(
        sense_of(&exec(&h, &a, &c, &basic_list(0, 1, 0))),
        (0x05, 0x24, 0x00)
    );
    assert_eq!(read_keys(&h, &a), (0, vec![]));
}

#[test]
fn reserve_and_release() {
    let h = setup();
    let a = nx(IQN_A, 1, 1);
    let b = nx(IQN_B, 2, 1);
    let c = nx(IQN_C, 3, 1);
    for n in [&a, &b, &c] {
        assert!(drain_ua(&h, n).is_empty());
    }
    // Unregistered: conflict.
    assert!(is_conflict(&prout(&h, &a, RESERVE, WE, 0, 0, 0)));
    good(&prout(&h, &a, REG_IGNORE, 0, 0, 0xA, 0));
    good(&prout(&h, &b, REG_IGNORE, 0, 0, 0xB, 0));
    // Wrong key: conflict. Bad scope or type: INVALID FIELD IN CDB.
    assert!(is_conflict(&prout(&h, &a, RESERVE, WE, 0xB, 0, 0)));
    let r = prout(&h, &a, RESERVE, 0x10 | WE, 0xA, 0, 0);
    assert_eq!(sense_of(&r), (0x05, 0x24, 0x00));
    for bad in [0, 2, 4, 9, 15] {
        let r = prout(&h, &a, RESERVE, bad, 0xA, 0, 0);
        assert_eq!(sense_of(&r), (0x05, 0x24, 0x00), "type {bad}");
    }
    good(&prout(&h, &a, RESERVE, WE_RO, 0xA, 0, 0));
    // RESERVE does not change the generation.
    assert_eq!(read_keys(&h, &a).0, 2);
    assert_eq!(read_resv(&h, &c), Some((0xA, WE_RO)));
    // The holder again, same type: GOOD; another type: conflict; another I_T nexus: conflict.
    good(&prout(&h, &a, RESERVE, WE_RO, 0xA, 0, 0));
    assert!(is_conflict(&prout(&h, &a, RESERVE, EA, 0xA, 0, 0)));
    assert!(is_conflict(&prout(&h, &b, RESERVE, WE_RO, 0xB, 0, 0)));
    // A registered non-holder releasing: GOOD, nothing happens.
    good(&prout(&h, &b, RELEASE, WE_RO, 0xB, 0, 0));
    assert_eq!(read_resv(&h, &c), Some((0xA, WE_RO)));
    // The holder with the wrong type: INVALID RELEASE OF PERSISTENT RESERVATION.
    let r = prout(&h, &a, RELEASE, WE, 0xA, 0, 0);
    assert_eq!(sense_of(&r), (0x05, 0x26, 0x04));
    // Released: a Registrants Only type tells the other registrants (not the releaser, not
    // the unregistered).
    good(&prout(&h, &a, RELEASE, WE_RO, 0xA, 0, 0));
    assert_eq!(read_resv(&h, &c), None);
    assert_eq!(drain_ua(&h, &b), vec![ASC_RESV_RELEASED]);
    assert!(drain_ua(&h, &a).is_empty());
    assert!(drain_ua(&h, &c).is_empty());
    // Releasing nothing: GOOD.
    good(&prout(&h, &a, RELEASE, WE_RO, 0xA, 0, 0));
    // Write Exclusive: no unit attention on release.
    good(&prout(&h, &a, RESERVE, WE, 0xA, 0, 0));
    good(&prout(&h, &a, RELEASE, WE, 0xA, 0, 0));
    assert!(drain_ua(&h, &b).is_empty());
    // All Registrants: key 0, every registrant holds it and may release it.
    good(&prout(&h, &a, RESERVE, EA_AR, 0xA, 0, 0));
    assert_eq!(read_resv(&h, &c), Some((0, EA_AR)));
    good(&prout(&h, &b, RESERVE, EA_AR, 0xB, 0, 0));
    good(&prout(&h, &b, RELEASE, EA_AR, 0xB, 0, 0));
    assert_eq!(read_resv(&h, &c), None);
    assert_eq!(drain_ua(&h, &a), vec![ASC_RESV_RELEASED]);
    assert!(drain_ua(&h, &b).is_empty());
    assert_eq!(read_keys(&h, &a).0, 2);
}

#[test]
fn unregistering_the_holder() {
    for (ty, ua_b) in [(WE, false), (WE_RO, true), (EA_RO, true)] {
        let h = setup();
        let a = nx(IQN_A, 1, 1);
        let b = nx(IQN_B, 2, 1);
        good(&prout(&h, &a, REG_IGNORE, 0, 0, 0xA, 0));
        good(&prout(&h, &b, REG_IGNORE, 0, 0, 0xB, 0));
        good(&prout(&h, &a, RESERVE, ty, 0xA, 0, 0));
        good(&prout(&h, &a, REGISTER, 0, 0xA, 0, 0));
        let want: Vec<(u8, u8)> = if ua_b {
            vec![ASC_RESV_RELEASED]
        } else {
            vec![]
        };
        assert_eq!(drain_ua(&h, &b), want, "type {ty}");
        assert!(drain_ua(&h, &a).is_empty());
        assert_eq!(read_resv(&h, &b), None, "type {ty}");
    }
    // All Registrants: the reservation stays while anyone is registered.
    let h = setup();
    let a = nx(IQN_A, 1, 1);
    let b = nx(IQN_B, 2, 1);
    good(&prout(&h, &a, REG_IGNORE, 0, 0, 0xA, 0));
    good(&prout(&h, &b, REG_IGNORE, 0, 0, 0xB, 0));
    good(&prout(&h, &a, RESERVE, WE_AR, 0xA, 0, 0));
    good(&prout(&h, &a, REGISTER, 0, 0xA, 0, 0));
    assert_eq!(read_resv(&h, &b), Some((0, WE_AR)));
    assert!(is_conflict(&write(&h, &a)));
    good(&write(&h, &b));
    good(&prout(&h, &b, REGISTER, 0, 0xB, 0, 0));
    assert_eq!(read_resv(&h, &b), None);
}

#[test]
fn clear() {
    let h = setup();
    let a = nx(IQN_A, 1, 1);
    let a2 = nx(IQN_A, 1, 2);
    let b = nx(IQN_B, 2, 1);
    let c = nx(IQN_C, 3, 1);
    for n in [&a, &a2, &b, &c] {
        drain_ua(&h, n);
    }
    assert!(is_conflict(&prout(&h, &a, CLEAR, 0, 0, 0, 0)));
    good(&prout(&h, &a, REG_IGNORE, 0, 0, 0xA, 0));
    good(&prout(&h, &b, REG_IGNORE, 0, 0, 0xB, 0));
    good(&prout(&h, &a, RESERVE, EA, 0xA, 0, 0));
    assert!(is_conflict(&prout(&h, &b, CLEAR, 0, 0xA, 0, 0)));
    good(&prout(&h, &b, CLEAR, 0, 0xB, 0, 0));
    assert_eq!(read_keys(&h, &c), (3, vec![]));
    assert_eq!(read_resv(&h, &c), None);
    // RESERVATIONS PREEMPTED for the other registered I_T nexus only: not the sender, not
    // A's I_T nexus through the other port (never registered), not C.
    assert_eq!(drain_ua(&h, &a), vec![ASC_RESV_PREEMPTED]);
    assert!(drain_ua(&h, &a2).is_empty());
    assert!(drain_ua(&h, &b).is_empty());
    assert!(drain_ua(&h, &c).is_empty());
    good(&write(&h, &c));
}

#[test]
fn preempt_registrations_without_a_reservation() {
    let h = setup();
    let a = nx(IQN_A, 1, 1);
    let b = nx(IQN_B, 2, 1);
    let c = nx(IQN_C, 3, 1);
    for n in [&a, &b, &c] {
        drain_ua(&h, n);
    }
    good(&prout(&h, &a, REG_IGNORE, 0, 0, 0xA, 0));
    good(&prout(&h, &b, REG_IGNORE, 0, 0, 0xB, 0));
    good(&prout(&h, &c, REG_IGNORE, 0, 0, 0xA, 0));
    // SARK zero without a reservation: INVALID FIELD IN PARAMETER LIST.
    let r = prout(&h, &b, PREEMPT, EA, 0xB, 0, 0);
    assert_eq!(sense_of(&r), (0x05, 0x26, 0x00));
    // A key nobody has: conflict.
    assert!(is_conflict(&prout(&h, &b, PREEMPT, EA, 0xB, 0x77, 0)));
    assert_eq!(read_keys(&h, &b).0, 3);
    // Removes every registration with key A (two I_T nexuses), creates no reservation.
    good(&prout(&h, &b, PREEMPT, EA, 0xB, 0xA, 0));
    assert_eq!(read_keys(&h, &b), (4, vec![0xB]));
    assert_eq!(read_resv(&h, &b), None);
    assert_eq!(drain_ua(&h, &a), vec![ASC_REGS_PREEMPTED]);
    assert_eq!(drain_ua(&h, &c), vec![ASC_REGS_PREEMPTED]);
    assert!(drain_ua(&h, &b).is_empty());
}

#[test]
fn preempt_the_holder() {
    let h = setup();
    let a = nx(IQN_A, 1, 1);
    let b = nx(IQN_B, 2, 1);
    let c = nx(IQN_C, 3, 1);
    let d = nx(IQN_C, 4, 2);
    for n in [&a, &b, &c, &d] {
        drain_ua(&h, n);
    }
    good(&prout(&h, &a, REG_IGNORE, 0, 0, 0xA, 0));
    good(&prout(&h, &b, REG_IGNORE, 0, 0, 0xB, 0));
    good(&prout(&h, &c, REG_IGNORE, 0, 0, 0xC, 0));
    good(&prout(&h, &a, RESERVE, WE, 0xA, 0, 0));
    // SARK zero with a non-All-Registrants reservation: INVALID FIELD IN PARAMETER LIST.
    let r = prout(&h, &b, PREEMPT, WE, 0xB, 0, 0);
    assert_eq!(sense_of(&r), (0x05, 0x26, 0x00));
    // Taking over needs a valid type.
    let r = prout(&h, &b, PREEMPT, 0x2, 0xB, 0xA, 0);
    assert_eq!(sense_of(&r), (0x05, 0x24, 0x00));
    // Preempting a non-holder's key leaves the reservation alone.
    good(&prout(&h, &b, PREEMPT, EA, 0xB, 0xC, 0));
    assert_eq!(read_resv(&h, &b), Some((0xA, WE)));
    assert_eq!(drain_ua(&h, &c), vec![ASC_REGS_PREEMPTED]);
    assert!(drain_ua(&h, &a).is_empty());
    good(&prout(&h, &c, REG_IGNORE, 0, 0, 0xC, 0));
    // Preempting the holder: B holds it now, with the new type; A is gone; C (still
    // registered) learns the type changed.
    good(&prout(&h, &b, PREEMPT, WE_RO, 0xB, 0xA, 0));
    assert_eq!(read_resv(&h, &b), Some((0xB, WE_RO)));
    assert_eq!(read_keys(&h, &b), (6, vec![0xB, 0xC]));
    assert_eq!(drain_ua(&h, &a), vec![ASC_REGS_PREEMPTED]);
    assert_eq!(drain_ua(&h, &c), vec![ASC_RESV_RELEASED]);
    assert!(drain_ua(&h, &b).is_empty());
    assert!(drain_ua(&h, &d).is_empty());
    // A is fenced: writes conflict, reads do not (Write Exclusive - Registrants Only).
    assert!(is_conflict(&write(&h, &a)));
    good(&read(&h, &a));
    good(&write(&h, &c));
    // The holder preempting itself changes the type (same key: nothing removed).
    good(&prout(&h, &b, PREEMPT, EA_RO, 0xB, 0xB, 0));
    assert_eq!(read_resv(&h, &b), Some((0xB, EA_RO)));
    assert_eq!(read_keys(&h, &b), (7, vec![0xB, 0xC]));
    assert_eq!(drain_ua(&h, &c), vec![ASC_RESV_RELEASED]);
    assert!(is_conflict(&read(&h, &a)));
}

#[test]
fn preempt_all_registrants() {
    let h = setup();
    let a = nx(IQN_A, 1, 1);
    let b = nx(IQN_B, 2, 1);
    let c = nx(IQN_C, 3, 1);
    for n in [&a, &b, &c] {
        drain_ua(&h, n);
    }
    good(&prout(&h, &a, REG_IGNORE, 0, 0, 0xA, 0));
    good(&prout(&h, &b, REG_IGNORE, 0, 0, 0xB, 0));
    good(&prout(&h, &c, REG_IGNORE, 0, 0, 0xC, 0));
    good(&prout(&h, &a, RESERVE, EA_AR, 0xA, 0, 0));
    // A key: only those registrations go, the reservation stays.
    good(&prout(&h, &b, PREEMPT, EA_AR, 0xB, 0xC, 0));
    assert_eq!(read_resv(&h, &b), Some((0, EA_AR)));
    assert_eq!(drain_ua(&h, &c), vec![ASC_REGS_PREEMPTED]);
    // SARK zero: everyone else goes, the sender holds the new reservation.
    good(&prout(&h, &b, PREEMPT, WE, 0xB, 0, 0));
    assert_eq!(read_resv(&h, &b), Some((0xB, WE)));
    assert_eq!(read_keys(&h, &b), (5, vec![0xB]));
    assert_eq!(drain_ua(&h, &a), vec![ASC_REGS_PREEMPTED]);
    assert!(drain_ua(&h, &b).is_empty());
}

/// A test aborter that records its calls.
#[derive(Default)]
struct Recorder(Mutex<Vec<(u64, Vec<Nexus>)>>);

impl TaskAborter for Recorder {
    fn abort_tasks(&self, _lu: &LogicalUnit, lun: u64, nexuses: &[Nexus]) {
        self.0.lock().unwrap().push((lun, nexuses.to_vec()));
    }
}

#[test]
fn preempt_and_abort_calls_the_aborter_for_exactly_the_preempted() {
    let h = setup();
    let rec = Arc::new(Recorder::default());
    h.srv.set_task_aborter(rec.clone());
    let a = nx(IQN_A, 1, 1);
    let a2 = nx(IQN_A, 7, 2);
    let b = nx(IQN_B, 2, 1);
    let c = nx(IQN_C, 3, 1);
    for n in [&a, &a2, &b, &c] {
        drain_ua(&h, n);
    }
    good(&prout(&h, &a, REG_IGNORE, 0, 0, 0xA, 0));
    good(&prout(&h, &a2, REG_IGNORE, 0, 0, 0xA, 0));
    good(&prout(&h, &b, REG_IGNORE, 0, 0, 0xB, 0));
    good(&prout(&h, &c, REG_IGNORE, 0, 0, 0xC, 0));
    good(&prout(&h, &a, RESERVE, WE_RO, 0xA, 0, 0));
    // PREEMPT (without abort) does not call it.
    good(&prout(&h, &b, PREEMPT, WE_RO, 0xB, 0xC, 0));
    assert!(rec.0.lock().unwrap().is_empty());
    good(&prout(&h, &b, PREEMPT_ABORT, WE_RO, 0xB, 0xA, 0));
    let calls = rec.0.lock().unwrap().clone();
    assert_eq!(calls.len(), 1);
    assert_eq!(calls[0].0, lun_to_wire(0));
    let mut got = calls[0].1.clone();
    got.sort_by_key(|n| n.isid);
    assert_eq!(got, vec![a.clone(), a2.clone()]);
    assert_eq!(drain_ua(&h, &a), vec![ASC_REGS_PREEMPTED]);
    assert_eq!(drain_ua(&h, &a2), vec![ASC_REGS_PREEMPTED]);
    assert!(is_conflict(&write(&h, &a)));
    good(&read(&h, &a2));
}

/// A backstore whose writes wait at a gate the test opens.
#[derive(Debug)]
struct Gated {
    inner: RamBackstore,
    closed: Mutex<bool>,
    cv: Condvar,
    entered: AtomicBool,
}

impl Gated {
    fn open(&self) {
        *self.closed.lock().unwrap() = false;
        self.cv.notify_all();
    }
}

impl Backstore for Gated {
    fn kind(&self) -> &'static str {
        "gated"
    }
    fn size(&self) -> u64 {
        self.inner.size()
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.inner.read_at(buf, offset)
    }
    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.entered.store(true, Ordering::SeqCst);
        let mut closed = self.closed.lock().unwrap();
        while *closed {
            closed = self.cv.wait(closed).unwrap();
        }
        self.inner.write_at(buf, offset)
    }
    fn flush(&self) -> io::Result<()> {
        Ok(())
    }
    fn unmap(&self, offset: u64, len: u64) -> io::Result<bool> {
        self.inner.unmap(offset, len)
    }
    fn supports_unmap(&self) -> bool {
        false
    }
}

#[test]
fn preempt_and_abort_waits_for_the_preempted_nexus_writes_in_flight() {
    let gated = Arc::new(Gated {
        inner: RamBackstore::new(1 << 20),
        closed: Mutex::new(true),
        cv: Condvar::new(),
        entered: AtomicBool::new(false),
    });
    let h = Arc::new(setup_on(cfg(false), gated.clone(), None));
    let a = nx(IQN_A, 1, 1);
    let b = nx(IQN_B, 2, 1);
    good(&prout(&h, &a, REG_IGNORE, 0, 0, 0xA, 0));
    good(&prout(&h, &b, REG_IGNORE, 0, 0, 0xB, 0));
    good(&prout(&h, &a, RESERVE, WE_RO, 0xA, 0, 0));
    // A's write passes the reservation check and blocks in the backstore.
    let (h1, a1) = (h.clone(), a.clone());
    let writer = thread::spawn(move || write(&h1, &a1));
    while !gated.entered.load(Ordering::SeqCst) {
        thread::sleep(Duration::from_millis(1));
    }
    // B preempts and aborts A: not done while A's write still runs.
    let done = Arc::new(AtomicBool::new(false));
    let (h2, b2, done2) = (h.clone(), b.clone(), done.clone());
    let preempter = thread::spawn(move || {
        let r = prout(&h2, &b2, PREEMPT_ABORT, WE_RO, 0xB, 0xA, 0);
        done2.store(true, Ordering::SeqCst);
        r
    });
    // The preemption is committed (A is no longer registered) ...
    while h.lu.pr_state().registrations.len() != 1 {
        thread::sleep(Duration::from_millis(1));
    }
    // ... but the command does not complete while A's write runs.
    thread::sleep(Duration::from_millis(100));
    assert!(
        !done.load(Ordering::SeqCst),
        "PREEMPT AND ABORT completed before the write"
    );
    // Meanwhile the new state already applies: A's next write conflicts, B's works — B's
    // write does not wait for A's (it is not in the preempted set).
    assert_eq!(drain_ua(&h, &a), vec![ASC_REGS_PREEMPTED]);
    assert!(is_conflict(&exec(&h, &a, &WRITE10, &[1; 512])));
    gated.open();
    good(&writer.join().unwrap());
    good(&preempter.join().unwrap());
    assert!(done.load(Ordering::SeqCst));
    good(&write(&h, &b));
}

#[test]
fn spec_i_pt_registers_the_transport_ids() {
    let h = setup();
    let a = nx(IQN_A, 1, 1);
    let b = nx(IQN_B, 0x42, 1);
    let b_other_isid = nx(IQN_B, 0x43, 1);
    let c = nx(IQN_C, 9, 1);
    let c_port2 = nx(IQN_C, 9, 2);
    let mut list = basic_list(0, 0xA, 0x08 | 0x01);
    let tb = encode_tid(IQN_B, Some(0x42));
    let tc = encode_tid(IQN_C, None);
    list.extend_from_slice(&((tb.len() + tc.len()) as u32).to_be_bytes());
    list.extend_from_slice(&tb);
    list.extend_from_slice(&tc);
    good(&exec(
        &h,
        &a,
        &prout_cdb(REGISTER, 0, list.len() as u32),
        &list,
    ));
    assert_eq!(read_keys(&h, &a), (1, vec![0xA, 0xA, 0xA]));
    good(&prout(&h, &a, RESERVE, WE_RO, 0xA, 0, 0));
    // Registered through the TransportIDs, on the port the command came through.
    good(&write(&h, &b));
    good(&write(&h, &c));
    assert!(is_conflict(&write(&h, &b_other_isid)));
    assert!(is_conflict(&write(&h, &c_port2)));
    // B may use its registration (key 0xA).
    good(&prout(&h, &b, REGISTER, 0, 0xA, 0xB, 0));
    assert_eq!(read_keys(&h, &a).1, vec![0xA, 0xB, 0xA]);
    // An I_T nexus that is registered already: INVALID FIELD IN PARAMETER LIST, nothing made.
    let d = nx("iqn.2026-11.io.example:node-d", 1, 1);
    let mut list = basic_list(0, 0xD, 0x08);
    let tb = encode_tid(IQN_B, Some(0x42));
    list.extend_from_slice(&(tb.len() as u32).to_be_bytes());
    list.extend_from_slice(&tb);
    let r = exec(&h, &d, &prout_cdb(REGISTER, 0, list.len() as u32), &list);
    assert_eq!(sense_of(&r), (0x05, 0x26, 0x00));
    assert_eq!(u16::from_be_bytes([r.sense[16], r.sense[17]]), 28);
    assert_eq!(read_keys(&h, &a).1.len(), 3);
    // READ FULL STATUS: format 01b for B, 00b for C.
    let r = prin(&h, &a, 3, 8192);
    good(&r);
    let descs = full_status(&r.data_in);
    assert_eq!(descs.len(), 3);
    assert_eq!(descs[1].tid_name, format!("{IQN_B},i,0x000000000042"));
    assert_eq!(descs[1].tid_format, 1);
    assert_eq!(descs[2].tid_name, IQN_C);
    assert_eq!(descs[2].tid_format, 0);
}

#[derive(Debug, PartialEq, Eq)]
pub(super) struct FullStatus {
    pub key: u64,
    pub all_tg_pt: bool,
    pub holder: bool,
    pub scope_type: u8,
    pub rel_port: u16,
    pub tid_format: u8,
    pub tid_name: String,
}

pub(super) fn full_status(d: &[u8]) -> Vec<FullStatus> {
    let len = u32::from_be_bytes(d[4..8].try_into().unwrap()) as usize;
    assert_eq!(len, d.len() - 8);
    let mut out = Vec::new();
    let mut at = 8;
    while at < d.len() {
        let dl = u32::from_be_bytes(d[at + 20..at + 24].try_into().unwrap()) as usize;
        let t = &d[at + 24..at + 24 + dl];
        assert_eq!(t[0] & 0x0F, 5, "iSCSI protocol identifier");
        assert_eq!(usize::from(u16::from_be_bytes([t[2], t[3]])), dl - 4);
        let name_end = t[4..].iter().position(|&b| b == 0).unwrap();
        out.push(FullStatus {
            key: u64::from_be_bytes(d[at..at + 8].try_into().unwrap()),
            all_tg_pt: d[at + 12] & 0x02 != 0,
            holder: d[at + 12] & 0x01 != 0,
            scope_type: d[at + 13],
            rel_port: u16::from_be_bytes([d[at + 18], d[at + 19]]),
            tid_format: t[0] >> 6,
            tid_name: String::from_utf8(t[4..4 + name_end].to_vec()).unwrap(),
        });
        at += 24 + dl;
    }
    out
}

#[test]
fn all_tg_pt_registers_every_target_port() {
    let h = setup();
    let a1 = nx(IQN_A, 1, 1);
    let a2 = nx(IQN_A, 1, 2);
    let a_other = nx(IQN_A, 2, 2);
    let b = nx(IQN_B, 2, 1);
    good(&prout(&h, &a1, REG_IGNORE, 0, 0, 0xA, 0x04));
    // Through the other port the same initiator port is registered: it may reserve.
    good(&prout(&h, &a2, RESERVE, WE_RO, 0xA, 0, 0));
    good(&prout(&h, &b, REG_IGNORE, 0, 0, 0xB, 0));
    good(&write(&h, &a1));
    assert!(is_conflict(&write(&h, &a_other)));
    let r = prin(&h, &b, 3, 8192);
    let descs = full_status(&r.data_in);
    assert_eq!(
        descs[0],
        FullStatus {
            key: 0xA,
            all_tg_pt: true,
            holder: true,
            scope_type: WE_RO,
            rel_port: 0,
            tid_format: 1,
            tid_name: format!("{IQN_A},i,0x000000000001"),
        }
    );
    assert_eq!(
        descs[1],
        FullStatus {
            key: 0xB,
            all_tg_pt: false,
            holder: false,
            scope_type: 0,
            rel_port: 1,
            tid_format: 1,
            tid_name: format!("{IQN_B},i,0x000000000002"),
        }
    );
    // One registration: unregistering through port 1 removes it for port 2 too, and with it
    // the reservation held through port 2.
    good(&prout(&h, &a1, REGISTER, 0, 0xA, 0, 0));
    assert_eq!(drain_ua(&h, &b), vec![ASC_RESV_RELEASED]);
    assert_eq!(read_keys(&h, &b).1, vec![0xB]);
    assert_eq!(read_resv(&h, &b), None);
    // ALL_TG_PT naming I_T nexuses that are registered already.
    good(&prout(&h, &a2, REG_IGNORE, 0, 0, 0xA, 0));
    let r = prout(&h, &a1, REG_IGNORE, 0, 0, 0xA, 0x04);
    assert_eq!(sense_of(&r), (0x05, 0x26, 0x00));
}

#[test]
fn register_and_move() {
    let h = setup();
    let a = nx(IQN_A, 1, 1);
    let b = nx(IQN_B, 2, 2);
    let c = nx(IQN_C, 3, 1);
    let list = |key: u64, sark: u64, flags: u8, port: u16, name: &str, isid: Option<u64>| {
        let t = encode_tid(name, isid);
        let mut p = vec![0u8; 24];
        p[0..8].copy_from_slice(&key.to_be_bytes());
        p[8..16].copy_from_slice(&sark.to_be_bytes());
        p[17] = flags;
        p[18..20].copy_from_slice(&port.to_be_bytes());
        p[20..24].copy_from_slice(&(t.len() as u32).to_be_bytes());
        p.extend_from_slice(&t);
        p
    };
    let mv = |n: &Nexus, p: Vec<u8>| exec(&h, n, &prout_cdb(REG_MOVE, 0, p.len() as u32), &p);
    good(&prout(&h, &a, REG_IGNORE, 0, 0, 0xA, 0));
    good(&prout(&h, &c, REG_IGNORE, 0, 0, 0xC, 0));
    // Not the holder (no reservation): conflict.
    assert!(is_conflict(&mv(&a, list(0xA, 0xB, 0, 2, IQN_B, Some(2)))));
    good(&prout(&h, &a, RESERVE, WE, 0xA, 0, 0));
    assert!(is_conflict(&mv(&c, list(0xC, 0xB, 0, 2, IQN_B, Some(2)))));
    // SARK zero; the sender's own I_T nexus; relative port 0.
    assert_eq!(
        sense_of(&mv(&a, list(0xA, 0, 0, 2, IQN_B, Some(2)))),
        (0x05, 0x26, 0x00)
    );
    assert_eq!(
        sense_of(&mv(&a, list(0xA, 0xB, 0, 1, IQN_A, Some(1)))),
        (0x05, 0x26, 0x00)
    );
    assert_eq!(
        sense_of(&mv(&a, list(0xA, 0xB, 0, 0, IQN_B, Some(2)))),
        (0x05, 0x26, 0x00)
    );
    let gen = read_keys(&h, &a).0;
    good(&mv(&a, list(0xA, 0xB, 0x02, 2, IQN_B, Some(2))));
    assert_eq!(read_keys(&h, &c), (gen + 1, vec![0xC, 0xB]));
    assert_eq!(read_resv(&h, &c), Some((0xB, WE)));
    good(&write(&h, &b));
    assert!(is_conflict(&write(&h, &a)));
    let descs = full_status(&prin(&h, &c, 3, 8192).data_in);
    assert_eq!(descs[1].rel_port, 2);
    assert!(descs[1].holder);
    // All Registrants reservations cannot move.
    good(&prout(&h, &b, RELEASE, WE, 0xB, 0, 0));
    good(&prout(&h, &b, RESERVE, WE_AR, 0xB, 0, 0));
    assert!(is_conflict(&mv(&b, list(0xB, 0xA, 0, 1, IQN_A, Some(1)))));
}

#[test]
fn name_only_option_matches_every_isid() {
    let h = setup_with(true);
    let a1 = nx(IQN_A, 1, 1);
    let a9 = nx(IQN_A, 9, 1);
    let a_port2 = nx(IQN_A, 9, 2);
    let b = nx(IQN_B, 2, 1);
    good(&prout(&h, &a1, REG_IGNORE, 0, 0, 0xA, 0));
    good(&prout(&h, &a1, RESERVE, WE, 0xA, 0, 0));
    // open-iscsi logged in again with another ISID: still registered, still the holder.
    good(&write(&h, &a9));
    good(&prout(&h, &a9, RELEASE, WE, 0xA, 0, 0));
    assert!(is_conflict(&prout(&h, &a9, REGISTER, 0, 0, 0xB, 0)));
    // Still per target port.
    assert!(is_conflict(&prout(&h, &a_port2, RESERVE, WE, 0xA, 0, 0)));
    // TransportIDs of a name-only registration have no ISID (format 00b).
    let descs = full_status(&prin(&h, &b, 3, 8192).data_in);
    assert_eq!(
        (descs[0].tid_format, descs[0].tid_name.as_str()),
        (0, IQN_A)
    );
    // Without the option the other ISID is another I_T nexus.
    let h = setup();
    good(&prout(&h, &a1, REG_IGNORE, 0, 0, 0xA, 0));
    good(&prout(&h, &a1, RESERVE, WE, 0xA, 0, 0));
    assert!(is_conflict(&write(&h, &a9)));
}

#[test]
fn report_capabilities_and_truncation() {
    let h = setup();
    let a = nx(IQN_A, 1, 1);
    let r = prin(&h, &a, 2, 100);
    good(&r);
    assert_eq!(r.data_in, vec![0, 8, 0x1D, 0x90, 0xEA, 0x01, 0, 0]);
    good(&prout(&h, &a, REG_IGNORE, 0, 0, 0xA, 0x01));
    assert_eq!(prin(&h, &a, 2, 100).data_in[3], 0x91, "PTPL_A");
    // READ KEYS cut to the allocation length keeps ADDITIONAL LENGTH.
    let r = prin(&h, &a, 0, 8);
    assert_eq!(r.data_in, vec![0, 0, 0, 1, 0, 0, 0, 8]);
    assert_eq!(prin(&h, &a, 0, 0).data_in.len(), 0);
    // Without a store APTPL cannot be honoured: PTPL_C = 0 and APTPL = 1 is refused.
    let lu = Arc::new(LogicalUnit::new(cfg(false), Arc::new(RamBackstore::new(1 << 20))).unwrap());
    let srv = DeviceServer::new();
    srv.add_lun(0, lu.clone()).unwrap();
    let h2 = H {
        srv,
        lu,
        store: Arc::new(MemPrStore::new()),
    };
    assert_eq!(prin(&h2, &a, 2, 100).data_in[2], 0x1C);
    let r = prout(&h2, &a, REG_IGNORE, 0, 0, 0xA, 0x01);
    assert_eq!(sense_of(&r), (0x05, 0x26, 0x00));
    assert_eq!(&r.sense[15..18], &[0x88, 0, 20]);
    good(&prout(&h2, &a, REG_IGNORE, 0, 0, 0xA, 0));
}

#[test]
fn rsoc_lists_the_service_actions() {
    let h = setup();
    let a = nx(IQN_A, 1, 1);
    for (op, sa) in [(0x5E, 0..4), (0x5F, 0..8)] {
        for s in sa {
            let r = exec(&h, &a, &[0xA3, 0x0C, 0x02, op, 0, s, 0, 0, 1, 0, 0, 0], &[]);
            good(&r);
            assert_eq!(r.data_in[1] & 0x07, 0x03, "{op:02x}/{s}");
            assert_eq!(&r.data_in[4..6], &[op, s]);
        }
        let r = exec(&h, &a, &[0xA3, 0x0C, 0x02, op, 0, 9, 0, 0, 1, 0, 0, 0], &[]);
        assert_eq!(r.data_in[1] & 0x07, 0x01);
    }
}

// ---------------------------------------------------------------------------------------------
// APTPL and the store
// ---------------------------------------------------------------------------------------------

#[test]
fn aptpl_saves_and_restores() {
    let store = Arc::new(MemPrStore::new());
    let a = nx(IQN_A, 1, 1);
    let b = nx(IQN_B, 2, 2);
    let h = setup_on(
        cfg(false),
        Arc::new(RamBackstore::new(1 << 20)),
        Some(store.clone()),
    );
    good(&prout(&h, &a, REG_IGNORE, 0, 0, 0xA, 0));
    assert_eq!(store.saved(), None, "APTPL = 0: nothing saved");
    good(&prout(&h, &b, REG_IGNORE, 0, 0, 0xB, 0x01));
    good(&prout(&h, &a, RESERVE, WE_RO, 0xA, 0, 0));
    let before = h.lu.pr_state();
    assert!(before.aptpl);
    assert_eq!(
        store.saved().unwrap(),
        PrState {
            generation: 0,
            ..before.clone()
        }
    );
    // "Power loss": a new logical unit on the same store.
    let h2 = setup_on(
        cfg(false),
        Arc::new(RamBackstore::new(1 << 20)),
        Some(store.clone()),
    );
    let after = h2.lu.pr_state();
    assert_eq!(
        after,
        PrState {
            generation: 0,
            ..before
        }
    );
    assert_eq!(read_keys(&h2, &a), (0, vec![0xA, 0xB]));
    assert_eq!(read_resv(&h2, &b), Some((0xA, WE_RO)));
    assert!(is_conflict(&write(&h2, &nx(IQN_C, 1, 1))));
    good(&write(&h2, &b));
    // The last APTPL = 0 clears what is saved.
    good(&prout(&h2, &b, REGISTER, 0, 0xB, 0xB, 0));
    assert_eq!(store.saved(), None);
    let h3 = setup_on(
        cfg(false),
        Arc::new(RamBackstore::new(1 << 20)),
        Some(store),
    );
    assert_eq!(h3.lu.pr_state(), PrState::default());
}

#[test]
fn a_failed_save_changes_nothing() {
    let h = setup();
    let a = nx(IQN_A, 1, 1);
    good(&prout(&h, &a, REG_IGNORE, 0, 0, 0xA, 0x01));
    let before = h.lu.pr_state();
    h.store.set_failing(true);
    for (sa, ty, key, sark) in [
        (RESERVE, WE, 0xA, 0),
        (REGISTER, 0, 0xA, 0xB),
        (CLEAR, 0, 0xA, 0),
    ] {
        let r = prout(&h, &a, sa, ty, key, sark, 0x01);
        assert_eq!(sense_of(&r), (0x04, 0x44, 0x00));
        assert_eq!(h.lu.pr_state(), before);
    }
    h.store.set_failing(false);
    good(&prout(&h, &a, RESERVE, WE, 0xA, 0, 0));
}

#[test]
fn damaged_saved_state_refuses_to_start() {
    struct Bad;
    impl PrStore for Bad {
        fn load(&self) -> io::Result<Option<PrState>> {
            // Two overlapping registrations: not a state this engine can produce.
            let who = Who {
                initiator: IQN_A.into(),
                isid: None,
                port: Some(1),
            };
            Ok(Some(PrState {
                aptpl: true,
                registrations: vec![
                    Registration {
                        key: 1,
                        who: who.clone(),
                    },
                    Registration { key: 2, who },
                ],
                ..PrState::default()
            }))
        }
        fn save(&self, _: &PrState) -> io::Result<()> {
            Ok(())
        }
    }
    let lu = LogicalUnit::new(cfg(false), Arc::new(RamBackstore::new(1 << 20))).unwrap();
    let e = lu.set_pr_store(Arc::new(Bad)).unwrap_err();
    assert_eq!(e.kind(), io::ErrorKind::InvalidData);
}

#[test]
fn operator_view_and_clear() {
    let h = setup();
    let a = nx(IQN_A, 1, 1);
    let b = nx(IQN_B, 2, 1);
    drain_ua(&h, &a);
    drain_ua(&h, &b);
    good(&prout(&h, &a, REG_IGNORE, 0, 0, 0xA, 0x01));
    good(&prout(&h, &a, RESERVE, EA, 0xA, 0, 0));
    let st = h.lu.pr_state();
    assert_eq!(st.registrations.len(), 1);
    assert_eq!(
        st.reservation.as_ref().map(Reservation::ty),
        Some(PrType::ExclusiveAccess)
    );
    assert!(is_conflict(&read(&h, &b)));
    h.lu.pr_clear().unwrap();
    assert_eq!(h.lu.pr_state().registrations.len(), 0);
    // Like CLEAR: APTPL stays as it was, the saved state is empty.
    assert_eq!(h.store.saved().map(|s| s.registrations.len()), Some(0));
    assert_eq!(drain_ua(&h, &a), vec![ASC_RESV_PREEMPTED]);
    good(&read(&h, &b));
}

// ---------------------------------------------------------------------------------------------
// Resets, nexus loss, SPC-2 interplay
// ---------------------------------------------------------------------------------------------

#[test]
fn resets_and_nexus_loss_keep_persistent_reservations() {
    let h = setup();
    let a = nx(IQN_A, 1, 1);
    let b = nx(IQN_B, 2, 1);
    good(&prout(&h, &a, REG_IGNORE, 0, 0, 0xA, 0));
    good(&prout(&h, &a, RESERVE, EA, 0xA, 0, 0));
    h.srv.nexus_lost(&a);
    assert!(h.srv.lun_reset(lun_to_wire(0)));
    h.srv.target_reset();
    drain_ua(&h, &a);
    drain_ua(&h, &b);
    assert_eq!(read_resv(&h, &b), Some((0xA, EA)));
    assert!(is_conflict(&read(&h, &b)));
    good(&read(&h, &a));
}

/// The fenced node is often the one that lost its connection: preempted while away, it learns
/// it when it logs in again from the same initiator port (the same I_T nexus), SPC-4
/// §5.13.11.2.4 — not just from the RESERVATION CONFLICT of its next write.
#[test]
fn a_registrant_preempted_while_away_is_told_when_it_returns() {
    let h = setup();
    let a = nx(IQN_A, 1, 1);
    let b = nx(IQN_B, 2, 1);
    good(&prout(&h, &a, REG_IGNORE, 0, 0, 0xA, 0));
    good(&prout(&h, &b, REG_IGNORE, 0, 0, 0xB, 0));
    good(&prout(&h, &a, RESERVE, WE_RO, 0xA, 0, 0));
    drain_ua(&h, &a);
    drain_ua(&h, &b);
    h.srv.nexus_lost(&a);
    good(&prout(&h, &b, PREEMPT, WE_RO, 0xB, 0xA, 0));
    assert_eq!(
        drain_ua(&h, &a),
        vec![ASC_REGS_PREEMPTED],
        "the returning nexus hears of the preemption"
    );
    assert!(is_conflict(&write(&h, &a)));
}

#[test]
fn spc2_reservations_and_persistent_reservations() {
    let h = setup();
    let a = nx(IQN_A, 1, 1);
    let b = nx(IQN_B, 2, 1);
    let c = nx(IQN_C, 3, 1);
    const RESERVE6: [u8; 6] = [0x16, 0, 0, 0, 0, 0];
    const RELEASE6: [u8; 6] = [0x17, 0, 0, 0, 0, 0];
    // An SPC-2 reservation: every PERSISTENT RESERVE IN / OUT conflicts, from anyone.
    good(&exec(&h, &a, &RESERVE6, &[]));
    assert!(is_conflict(&prin(&h, &a, 0, 100)));
    assert!(is_conflict(&prin(&h, &b, 2, 100)));
    assert!(is_conflict(&prout(&h, &a, REG_IGNORE, 0, 0, 0xA, 0)));
    good(&exec(&h, &a, &RELEASE6, &[]));
    // Registrations exist: RESERVE / RELEASE from others conflict.
    good(&prout(&h, &a, REG_IGNORE, 0, 0, 0xA, 0));
    assert!(is_conflict(&exec(&h, &c, &RESERVE6, &[])));
    assert!(
        is_conflict(&exec(&h, &a, &RESERVE6, &[])),
        "registered, no reservation"
    );
    assert!(is_conflict(&exec(&h, &c, &RELEASE6, &[])));
    // CRH = 1: the holder (and a registrant under Registrants Only) gets GOOD and nothing
    // is reserved.
    good(&prout(&h, &b, REG_IGNORE, 0, 0, 0xB, 0));
    good(&prout(&h, &a, RESERVE, WE_RO, 0xA, 0, 0));
    good(&exec(&h, &a, &RESERVE6, &[]));
    good(&exec(&h, &b, &RESERVE6, &[]));
    good(&exec(&h, &b, &[0x56, 0, 0, 0, 0, 0, 0, 0, 0, 0], &[]));
    good(&exec(&h, &a, &RELEASE6, &[]));
    assert!(h.lu.state().reservation.is_none());
    good(&write(&h, &b));
    assert!(is_conflict(&exec(&h, &c, &RESERVE6, &[])));
    // Under Write Exclusive only the holder gets the exception.
    good(&prout(&h, &a, RELEASE, WE_RO, 0xA, 0, 0));
    assert_eq!(drain_ua(&h, &b), vec![ASC_RESV_RELEASED]);
    good(&prout(&h, &a, RESERVE, WE, 0xA, 0, 0));
    good(&exec(&h, &a, &RESERVE6, &[]));
    assert!(is_conflict(&exec(&h, &b, &RESERVE6, &[])));
    // Everything gone: SPC-2 rules again.
    good(&prout(&h, &a, CLEAR, 0, 0xA, 0, 0));
    good(&exec(&h, &c, &RESERVE6, &[]));
    assert!(is_conflict(&write(&h, &a)));
}

// ---------------------------------------------------------------------------------------------
// Robustness
// ---------------------------------------------------------------------------------------------

fn xorshift(seed: &mut u64) -> u64 {
    *seed ^= *seed >> 12;
    *seed ^= *seed << 25;
    *seed ^= *seed >> 27;
    seed.wrapping_mul(0x2545_F491_4F6C_DD1D)
}

#[test]
fn arbitrary_parameter_lists_never_panic() {
    let h = setup();
    let nexuses = [nx(IQN_A, 1, 1), nx(IQN_B, 2, 1), nx(IQN_C, 3, 2)];
    let mut seed = 0x5EED_0FF3_2200_u64;
    for i in 0..20_000 {
        let n = &nexuses[(xorshift(&mut seed) % 3) as usize];
        let sa = (xorshift(&mut seed) % 9) as u8;
        let ty = if i % 2 == 0 {
            (xorshift(&mut seed) % 9) as u8
        } else {
            xorshift(&mut seed) as u8
        };
        let mut list: Vec<u8> = match i % 4 {
            // Structured: plausible keys, flags, a TransportID list.
            0 | 1 => {
                let mut p = basic_list(
                    xorshift(&mut seed) % 4,
                    xorshift(&mut seed) % 4,
                    xorshift(&mut seed) as u8,
                );
                if i % 8 == 0 {
                    let t = encode_tid(IQN_B, (i % 16 == 0).then_some(2));
                    let tpdl = (t.len() as u32)
                        .wrapping_add((xorshift(&mut seed) % 3) as u32)
                        .wrapping_sub(1);
                    p.extend_from_slice(&tpdl.to_be_bytes());
                    p.extend_from_slice(&t);
                }
                p
            }
            _ => (0..(xorshift(&mut seed) % 300))
                .map(|_| xorshift(&mut seed) as u8)
                .collect(),
        };
        if i % 5 == 0 {
            let at = (xorshift(&mut seed) as usize) % (list.len() + 1);
            list.truncate(at);
        }
        let pll = if i % 3 == 0 {
            xorshift(&mut seed) as u32
        } else {
            list.len() as u32
        };
        let r = exec(&h, n, &prout_cdb(sa, ty, pll), &list);
        match r.status {
            ScsiStatus::GOOD | ScsiStatus::RESERVATION_CONFLICT => assert!(r.sense.is_empty()),
            ScsiStatus::CHECK_CONDITION => assert_eq!(r.sense.len(), 18),
            s => panic!("unexpected status {s:?}"),
        }
        if i % 100 == 0 {
            for sa in 0..4 {
                good(&prin(&h, n, sa, 65535));
            }
            h.lu.pr_state().check(false, MAX_REGISTRATIONS).unwrap();
        }
    }
}

#[test]
fn registrations_are_bounded() {
    let h = setup();
    for i in 0..MAX_REGISTRATIONS as u64 {
        good(&prout(&h, &nx(IQN_A, i + 1, 1), REG_IGNORE, 0, 0, 0xA, 0));
    }
    let r = prout(&h, &nx(IQN_B, 1, 1), REG_IGNORE, 0, 0, 0xB, 0);
    assert_eq!(sense_of(&r), (0x05, 0x55, 0x04));
}

/// Persistent reservations shared by the nodes of a cluster (`shared`), each node a device
/// server with its own copy of the logical unit, over a store in memory that applies every
/// change to every node before `publish` returns (as the daemon's etcd store does).
mod cluster {
    use super::*;
    use std::sync::Weak;

    #[derive(Default)]
    struct Store {
        /// (revision, last change)
        record: Mutex<(u64, Option<PrChange>)>,
        nodes: Mutex<Vec<Weak<LogicalUnit>>>,
        /// Nodes that do not see changes until `catch_up` (a slow change feed).
        lagging: Mutex<Vec<usize>>,
        unavailable: AtomicBool,
    }

    impl Store {
        fn apply_to(&self, i: usize) {
            let (rev, c) = self.record.lock().unwrap().clone();
            let lu = self.nodes.lock().unwrap()[i].upgrade().unwrap();
            lu.apply_shared_pr(rev, c.as_ref(), false);
            if let Some(c) = &c {
                lu.drain_preempted(c);
            }
        }

        fn catch_up(&self, i: usize) {
            self.lagging.lock().unwrap().retain(|&x| x != i);
            self.apply_to(i);
        }
    }

    /// One node's handle on the store.
    struct Node {
        store: Arc<Store>,
        me: usize,
    }

    impl SharedPr for Node {
        fn publish(
            &self,
            base: u64,
            change: &PrChange,
            copy: &dyn Fn() -> u64,
            _cancelled: &dyn Fn() -> bool,
        ) -> Result<(), Publish> {
            let store = &self.store;
            if store.unavailable.load(Ordering::SeqCst) {
                return Err(Publish::Unavailable("store away".into()));
            }
            {
                let mut r = store.record.lock().unwrap();
                if r.0 != base {
                    drop(r);
                    // The watch delivers what the sender missed before it computes again.
                    store.catch_up(self.me);
                    assert_ne!(copy(), base, "the copy caught up");
                    return Err(Publish::Stale);
                }
                // Through the record format, as the daemon stores it.
                let stored = decode_change(encode_change(change).as_bytes()).unwrap();
                assert_eq!(&stored, change);
                *r = (r.0 + 1, Some(stored));
            }
            let n = store.nodes.lock().unwrap().len();
            for i in 0..n {
                if !store.lagging.lock().unwrap().contains(&i) {
                    store.apply_to(i);
                }
            }
            Ok(())
        }

        fn describe(&self) -> String {
            format!("memory cluster, node {}", self.me)
        }
    }

    fn nodes(n: usize) -> (Arc<Store>, Vec<H>) {
        let store = Arc::new(Store::default());
        let backing: Arc<dyn Backstore> = Arc::new(RamBackstore::new(1 << 20));
        let hs: Vec<H> = (0..n)
            .map(|me| {
                let lu = Arc::new(LogicalUnit::new(cfg(false), backing.clone()).unwrap());
                lu.set_shared_pr(Arc::new(Node {
                    store: store.clone(),
                    me,
                }));
                store.nodes.lock().unwrap().push(Arc::downgrade(&lu));
                let srv = DeviceServer::new();
                srv.add_lun(0, lu.clone()).unwrap();
                H {
                    srv,
                    lu,
                    store: Arc::new(MemPrStore::new()),
                }
            })
            .collect();
        for h in &hs {
            h.lu.apply_shared_pr(0, None, true);
        }
        (store, hs)
    }

    #[test]
    fn every_node_enforces_the_one_state_and_delivers_its_unit_attentions() {
        let (_store, n) = nodes(3);
        // Initiator A through node 0 (port 1), B through node 1 (port 2), C through node 2.
        let a = nx(IQN_A, 1, 1);
        let b = nx(IQN_B, 2, 2);
        let c = nx(IQN_C, 3, 3);
        for (h, x) in [(&n[0], &a), (&n[1], &b), (&n[2], &c)] {
            drain_ua(h, x);
        }
        good(&prout(&n[0], &a, REGISTER, 0, 0, 0xA, 0));
        good(&prout(&n[1], &b, REGISTER, 0, 0, 0xB, 0));
        good(&prout(&n[0], &a, RESERVE, 5, 0xA, 0, 0)); // Write Exclusive – Registrants Only
        for (h, x) in [(&n[0], &a), (&n[1], &b), (&n[2], &c)] {
            assert_eq!(read_keys(h, x), (2, vec![0xA, 0xB]));
            assert_eq!(read_resv(h, x), Some((0xA, 5)));
        }
        // READ FULL STATUS is the same through every node.
        let full: Vec<Vec<u8>> = [(&n[0], &a), (&n[1], &b), (&n[2], &c)]
            .iter()
            .map(|(h, x)| prin(h, x, 3, 8192).data_in)
            .collect();
        assert!(full.windows(2).all(|w| w[0] == w[1]));
        // C is not registered: its write conflicts on its own node, its read does not.
        assert!(is_conflict(&write(&n[2], &c)));
        good(&read(&n[2], &c));
        good(&write(&n[1], &b));
        // B preempts A from another node: A's node delivers REGISTRATIONS PREEMPTED and A's
        // writes conflict there; B gets no unit attention.
        good(&prout(&n[1], &b, PREEMPT_ABORT, 5, 0xB, 0xA, 0));
        assert!(drain_ua(&n[1], &b).is_empty());
        assert_eq!(drain_ua(&n[0], &a), vec![(0x2A, 0x05)]);
        assert!(is_conflict(&write(&n[0], &a)));
        good(&read(&n[0], &a));
        assert_eq!(read_keys(&n[2], &c), (3, vec![0xB]));
        assert_eq!(read_resv(&n[0], &a), Some((0xB, 5)));
        // The operator clears it from one node: every node's registrants hear of it.
        n[2].lu.pr_clear().unwrap();
        assert_eq!(drain_ua(&n[1], &b), vec![(0x2A, 0x03)]);
        assert_eq!(read_keys(&n[0], &a), (4, vec![]));
    }

    #[test]
    fn a_node_behind_computes_again_on_the_newer_state() {
        let (store, n) = nodes(2);
        let a = nx(IQN_A, 1, 1);
        let b = nx(IQN_B, 2, 2);
        drain_ua(&n[0], &a);
        drain_ua(&n[1], &b);
        store.lagging.lock().unwrap().push(1);
        good(&prout(&n[0], &a, REGISTER, 0, 0, 0xA, 0));
        good(&prout(&n[0], &a, RESERVE, 3, 0xA, 0, 0)); // Exclusive Access
                                                        // Node 1 has not seen either change: its copy says nobody holds anything. Its RESERVE
                                                        // loses the race, is computed again on the caught-up copy, and conflicts.
        assert_eq!(n[1].lu.pr_revision(), 0);
        good(&prout(&n[1], &b, REGISTER, 0, 0, 0xB, 0));
        assert_eq!(n[1].lu.pr_revision(), 3);
        assert!(is_conflict(&prout(&n[1], &b, RESERVE, 3, 0xB, 0, 0)));
        assert_eq!(read_keys(&n[1], &b), (2, vec![0xA, 0xB]));
        assert!(is_conflict(&read(&n[1], &b)));
    }

    #[test]
    fn a_copy_in_doubt_answers_busy_not_stale() {
        let (store, n) = nodes(1);
        let a = nx(IQN_A, 1, 1);
        drain_ua(&n[0], &a);
        n[0].lu.pr_in_doubt();
        // What the copy decides: BUSY. What it does not: served.
        assert_eq!(write(&n[0], &a).status, ScsiStatus::BUSY);
        assert_eq!(read(&n[0], &a).status, ScsiStatus::BUSY);
        assert_eq!(prin(&n[0], &a, 0, 64).status, ScsiStatus::BUSY);
        assert_eq!(
            prout(&n[0], &a, REGISTER, 0, 0, 0xA, 0).status,
            ScsiStatus::BUSY
        );
        good(&exec(&n[0], &a, &[0x12, 0, 0, 0, 36, 0], &[]));
        good(&exec(&n[0], &a, &[0, 0, 0, 0, 0, 0], &[]));
        // Read again in full: trusted.
        n[0].lu.apply_shared_pr(0, None, true);
        good(&write(&n[0], &a));
        // The store away: BUSY, nothing changed.
        store.unavailable.store(true, Ordering::SeqCst);
        assert_eq!(
            prout(&n[0], &a, REGISTER, 0, 0, 0xA, 0).status,
            ScsiStatus::BUSY
        );
        store.unavailable.store(false, Ordering::SeqCst);
        assert_eq!(read_keys(&n[0], &a), (0, vec![]));
        // PTPL_C: the cluster keeps the state.
        assert_eq!(prin(&n[0], &a, 2, 8).data_in[2] & 1, 1);
    }
}
