//! Asymmetric logical unit access through the device server (SPC-4 §5.16): every access state
//! against every class of command, the reports (INQUIRY, VPD 83h, REPORT TARGET PORT GROUPS,
//! REPORT SUPPORTED OPERATION CODES), SET TARGET PORT GROUPS, and the unit attentions.

use std::sync::Mutex;

use super::*;
use crate::AccessState::{self, *};

/// A device with two target ports (relative ids 1 and 2, portal group tags 1 and 2), each in
/// its own ALUA group (ids 10 and 20), one 1 MiB LU at LUN 0, a view onto it, and one nexus
/// through each port.
struct A {
    device: Arc<TargetDevice>,
    srv: DeviceServer,
    lu: Arc<LogicalUnit>,
    n1: Nexus,
    n2: Nexus,
}

fn groups(s1: AccessState, s2: AccessState) -> Vec<AluaGroup> {
    vec![
        AluaGroup {
            id: 10,
            state: s1,
            preferred: true,
            supported: ALUA_ALL_SUPPORTED,
            ports: vec![1],
        },
        AluaGroup {
            id: 20,
            state: s2,
            preferred: false,
            supported: ALUA_ALL_SUPPORTED,
            ports: vec![2],
        },
    ]
}

fn alua_setup() -> A {
    let device = TargetDevice::new("iqn.2026-11.io.ferrite:alua");
    let p1 = device.port(1, 1);
    let p2 = device.port(2, 2);
    let store = MemStore::new(BLOCKS * BS, true);
    let lu = Arc::new(
        LogicalUnit::new(
            LuConfig {
                thin: true,
                ..cfg_quiet()
            },
            store,
        )
        .unwrap(),
    );
    device.set_lus([(0, lu.clone())].into_iter().collect());
    let srv = DeviceServer::on(device.clone());
    srv.add_lun(0, lu.clone()).unwrap();
    device.configure_alua(groups(ActiveOptimized, ActiveNonOptimized), 0);
    let n1 = Nexus {
        initiator_name: "iqn.2026-11.io.example:host".into(),
        isid: 1,
        target_port: p1,
    };
    // The same initiator port through the other target port.
    let n2 = Nexus {
        target_port: p2,
        ..n1.clone()
    };
    let a = A {
        device,
        srv,
        lu,
        n1,
        n2,
    };
    // Both nexuses have been seen (unit attentions are kept only for known ones).
    a.run1(&inquiry(false, 0, 96), &[]);
    a.run2(&inquiry(false, 0, 96), &[]);
    a
}

impl A {
    fn run1(&self, cdb: &[u8], data: &[u8]) -> ScsiResponse {
        exec(&self.srv, &self.n1, 0, cdb, data)
    }
    fn run2(&self, cdb: &[u8], data: &[u8]) -> ScsiResponse {
        exec(&self.srv, &self.n2, 0, cdb, data)
    }
    /// Put group 20 (port 2) in `state`, and let both nexuses take the unit attention.
    fn port2_in(&self, state: AccessState) {
        self.device
            .configure_alua(groups(ActiveOptimized, state), 0);
        self.clear_uas();
        assert_eq!(self.device.alua().state_of(2), state);
    }
    fn clear_uas(&self) {
        for n in [&self.n1, &self.n2] {
            while !self.lu.state().ua.pending(n).is_empty() {
                exec(&self.srv, n, 0, &[0x03, 0, 0, 0, 252, 0], &[]);
            }
        }
    }
}

fn rtpg(format: u8, alloc: u32) -> Vec<u8> {
    let mut c = vec![0xA3, (format << 5) | 0x0A, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
    c[6..10].copy_from_slice(&alloc.to_be_bytes());
    c
}

fn stpg_cdb(len: u32) -> Vec<u8> {
    let mut c = vec![0xA4, 0x0A, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
    c[6..10].copy_from_slice(&len.to_be_bytes());
    c
}

fn stpg_list(descs: &[(u8, u16)]) -> Vec<u8> {
    let mut v = vec![0u8; 4];
    for &(s, id) in descs {
        v.extend_from_slice(&[s, 0]);
        v.extend_from_slice(&id.to_be_bytes());
    }
    v
}

/// Which access states a command class runs in.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Class {
    /// SPC-4 §5.16.2.4.5, §5.16.2.5: INQUIRY, REPORT LUNS, REPORT TARGET PORT GROUPS, REQUEST
    /// SENSE run in every state.
    Any,
    /// SET TARGET PORT GROUPS: every state but transitioning.
    NotTransitioning,
    /// The standby list (§5.16.2.4.4) and the device type's own (READ CAPACITY).
    Standby,
    /// Everything else: only the active states.
    ActiveOnly,
}

fn allowed(class: Class, state: AccessState) -> bool {
    match class {
        Class::Any => true,
        Class::NotTransitioning => state != Transitioning,
        Class::Standby => matches!(state, ActiveOptimized | ActiveNonOptimized | Standby),
        Class::ActiveOnly => state.is_active(),
    }
}

/// One command of each kind the device server implements, with its class.
fn commands() -> Vec<(&'static str, Vec<u8>, Vec<u8>, Class)> {
    let mut rsoc = vec![0xA3, 0x0C, 0, 0, 0, 0, 0, 0, 0x10, 0, 0, 0];
    rsoc[6..10].copy_from_slice(&4096u32.to_be_bytes());
    let mut cw = cdb16(0x89, 0, 0, 0);
    cw[13] = 1;
    vec![
        ("INQUIRY", inquiry(false, 0, 96), vec![], Class::Any),
        ("INQUIRY VPD", inquiry(true, 0x83, 255), vec![], Class::Any),
        (
            "REPORT LUNS",
            vec![0xA0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0],
            vec![],
            Class::Any,
        ),
        (
            "REQUEST SENSE",
            vec![0x03, 0, 0, 0, 252, 0],
            vec![],
            Class::Any,
        ),
        (
            "REPORT TARGET PORT GROUPS",
            rtpg(1, 1024),
            vec![],
            Class::Any,
        ),
        (
            "SET TARGET PORT GROUPS",
            stpg_cdb(0),
            vec![],
            Class::NotTransitioning,
        ),
        (
            "MODE SENSE(6)",
            vec![0x1A, 0, 0x3F, 0, 255, 0],
            vec![],
            Class::Standby,
        ),
        (
            "MODE SENSE(10)",
            vec![0x5A, 0, 0x3F, 0, 0, 0, 0, 1, 0, 0],
            vec![],
            Class::Standby,
        ),
        (
            "MODE SELECT(6)",
            vec![0x15, 0x10, 0, 0, 0, 0],
            vec![],
            Class::Standby,
        ),
        (
            "MODE SELECT(10)",
            vec![0x55, 0x10, 0, 0, 0, 0, 0, 0, 0, 0],
            vec![],
            Class::Standby,
        ),
        (
            "LOG SENSE",
            vec![0x4D, 0, 0x40, 0, 0, 0, 0, 1, 0, 0],
            vec![],
            Class::Standby,
        ),
        (
            "RECEIVE DIAGNOSTIC RESULTS",
            vec![0x1C, 0, 0, 1, 0, 0],
            vec![],
            Class::Standby,
        ),
        (
            "SEND DIAGNOSTIC",
            vec![0x1D, 0x04, 0, 0, 0, 0],
            vec![],
            Class::Standby,
        ),
        (
            "READ CAPACITY(10)",
            vec![0x25, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            vec![],
            Class::Standby,
        ),
        (
            "READ CAPACITY(16)",
            cdb16(0x9E, 0x10, 0, 32),
            vec![],
            Class::Standby,
        ),
        (
            "PERSISTENT RESERVE IN",
            vec![0x5E, 0, 0, 0, 0, 0, 0, 1, 0, 0],
            vec![],
            Class::Standby,
        ),
        (
            "PERSISTENT RESERVE OUT",
            vec![0x5F, 0x06, 0, 0, 0, 0, 0, 0, 24, 0],
            {
                let mut p = vec![0u8; 24];
                p[8..16].copy_from_slice(&0xABCDu64.to_be_bytes());
                p
            },
            Class::Standby,
        ),
        (
            "TEST UNIT READY",
            vec![0, 0, 0, 0, 0, 0],
            vec![],
            Class::ActiveOnly,
        ),
        ("READ(10)", cdb10(0x28, 0, 0, 1), vec![], Class::ActiveOnly),
        (
            "WRITE(10)",
            cdb10(0x2A, 0, 0, 1),
            vec![7; BS],
            Class::ActiveOnly,
        ),
        ("READ(16)", cdb16(0x88, 0, 0, 1), vec![], Class::ActiveOnly),
        (
            "WRITE(16)",
            cdb16(0x8A, 0, 0, 1),
            vec![7; BS],
            Class::ActiveOnly,
        ),
        ("COMPARE AND WRITE", cw, vec![0; 2 * BS], Class::ActiveOnly),
        (
            "WRITE SAME(16)",
            cdb16(0x93, 0, 0, 1),
            vec![0; BS],
            Class::ActiveOnly,
        ),
        (
            "UNMAP",
            vec![0x42, 0, 0, 0, 0, 0, 0, 0, 24, 0],
            {
                let mut p = vec![0u8; 24];
                p[1] = 22;
                p[3] = 16;
                p[8..16].copy_from_slice(&8u64.to_be_bytes());
                p[16..20].copy_from_slice(&1u32.to_be_bytes());
                p
            },
            Class::ActiveOnly,
        ),
        (
            "SYNCHRONIZE CACHE(10)",
            cdb10(0x35, 0, 0, 0),
            vec![],
            Class::ActiveOnly,
        ),
        (
            "VERIFY(10)",
            cdb10(0x2F, 0, 0, 1),
            vec![],
            Class::ActiveOnly,
        ),
        (
            "START STOP UNIT",
            vec![0x1B, 0, 0, 0, 1, 0],
            vec![],
            Class::ActiveOnly,
        ),
        (
            "PREVENT ALLOW MEDIUM REMOVAL",
            vec![0x1E, 0, 0, 0, 0, 0],
            vec![],
            Class::ActiveOnly,
        ),
        (
            "RESERVE(6)",
            vec![0x16, 0, 0, 0, 0, 0],
            vec![],
            Class::ActiveOnly,
        ),
        (
            "GET LBA STATUS",
            cdb16(0x9E, 0x12, 0, 64),
            vec![],
            Class::ActiveOnly,
        ),
        (
            "REPORT SUPPORTED OPERATION CODES",
            rsoc,
            vec![],
            Class::ActiveOnly,
        ),
        (
            "REPORT SUPPORTED TASK MANAGEMENT FUNCTIONS",
            vec![0xA3, 0x0D, 0, 0, 0, 0, 0, 0, 0, 16, 0, 0],
            vec![],
            Class::ActiveOnly,
        ),
        (
            "FORMAT UNIT",
            vec![0x04, 0, 0, 0, 0, 0],
            vec![],
            Class::ActiveOnly,
        ),
        (
            "EXTENDED COPY",
            vec![0x83, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            vec![],
            Class::ActiveOnly,
        ),
        (
            "unknown opcode",
            vec![0xC5, 0, 0, 0, 0, 0],
            vec![],
            Class::ActiveOnly,
        ),
    ]
}

#[test]
fn every_state_against_every_command_class() {
    let a = alua_setup();
    for state in AccessState::ALL {
        for (name, cdb, data, class) in commands() {
            a.port2_in(state);
            let r = a.run2(&cdb, &data);
            let alua_refusal = r.status == ScsiStatus::CHECK_CONDITION
                && r.sense[2] & 0x0F == 0x02
                && r.sense[12] == 0x04
                && matches!(r.sense[13], 0x0A | 0x0B | 0x0C | 0x12);
            if allowed(class, state) {
                assert!(
                    !alua_refusal,
                    "{name} through a {} port: refused ({:02x?})",
                    state.name(),
                    &r.sense
                );
            } else {
                let (key, asc, ascq) = state.refusal().unwrap().code();
                assert_sense(&r, key, asc, ascq);
                // Never LOGICAL UNIT NOT SUPPORTED for a LUN that is there.
                assert_ne!((r.sense[12], r.sense[13]), (0x25, 0x00), "{name}");
            }
            // The other port's group is active/optimized: everything it allows runs.
            let r1 = a.run1(&cdb, &data);
            assert!(
                !(r1.status == ScsiStatus::CHECK_CONDITION
                    && r1.sense[2] & 0x0F == 0x02
                    && r1.sense[12] == 0x04),
                "{name} through the active port: {:02x?}",
                r1.sense
            );
            // Leave no reservation behind for the next round.
            exec(&a.srv, &a.n1, 0, &[0x17, 0, 0, 0, 0, 0], &[]);
            exec(&a.srv, &a.n2, 0, &[0x17, 0, 0, 0, 0, 0], &[]);
        }
    }
}

#[test]
fn refusals_carry_the_states_sense() {
    let a = alua_setup();
    let tur = [0u8; 6];
    for (state, ascq) in [
        (Standby, 0x0B),
        (Unavailable, 0x0C),
        (Offline, 0x12),
        (Transitioning, 0x0A),
    ] {
        a.port2_in(state);
        assert_sense(&a.run2(&tur, &[]), 0x02, 0x04, ascq);
        // REQUEST SENSE reports the same reason as parameter data (SPC-4 §6.39).
        let rs = a.run2(&[0x03, 0, 0, 0, 252, 0], &[]);
        assert_eq!(rs.status, ScsiStatus::GOOD);
        assert_eq!(
            (rs.data_in[2] & 0x0F, rs.data_in[12], rs.data_in[13]),
            (0x02, 0x04, ascq)
        );
        // A LUN that does not exist is still not supported, in any state.
        let missing = exec(&a.srv, &a.n2, 5, &tur, &[]);
        assert_sense(&missing, 0x05, 0x25, 0x00);
    }
    // Active non-optimized runs everything.
    a.port2_in(ActiveNonOptimized);
    assert_eq!(a.run2(&tur, &[]).status, ScsiStatus::GOOD);
}

#[test]
fn inquiry_reports_tpgs_multip_and_the_ports_group() {
    let a = alua_setup();
    let std1 = a.run1(&inquiry(false, 0, 96), &[]).data_in;
    assert_eq!(std1[5] & 0x30, 0x30, "TPGS = 11b");
    assert_eq!(std1[6] & 0x10, 0x10, "MULTIP with two ports");
    for (n, group) in [(&a.n1, 10u16), (&a.n2, 20)] {
        let d = exec(&a.srv, n, 0, &inquiry(true, 0x83, 1024), &[]).data_in;
        let mut o = 4;
        let mut found = Vec::new();
        while o < d.len() {
            let len = usize::from(d[o + 3]);
            found.push((d[o + 1], d[o + 4..o + 4 + len].to_vec()));
            o += 4 + len;
        }
        let rtpi = n.target_port.relative_port_id;
        assert!(found.contains(&(0x94, vec![0, 0, 0, rtpi as u8])));
        let g = group.to_be_bytes();
        assert!(found.contains(&(0x95, vec![0, 0, g[0], g[1]])));
        assert!(found.iter().any(|(t, _)| *t == 0x98), "target port name");
    }
    // No logical unit at the LUN: no TPGS.
    let none = exec(&a.srv, &a.n1, 3, &inquiry(false, 0, 96), &[]).data_in;
    assert_eq!(none[0], 0x7F);
    assert_eq!(none[5] & 0x30, 0);
}

#[test]
fn report_target_port_groups_formats() {
    let a = alua_setup();
    a.device
        .configure_alua(groups(ActiveOptimized, ActiveNonOptimized), 7);
    a.clear_uas();
    let ext = a.run2(&rtpg(1, 1024), &[]).data_in;
    assert_eq!(&ext[..8], &[0, 0, 0, 28, 0x10, 7, 0, 0]);
    assert_eq!(&ext[8..20], &[0x80, 0xCF, 0, 10, 0, 0, 0, 1, 0, 0, 0, 1]);
    assert_eq!(&ext[20..32], &[0x01, 0xCF, 0, 20, 0, 0, 0, 1, 0, 0, 0, 2]);
    let short = a.run2(&rtpg(0, 1024), &[]).data_in;
    assert_eq!(&short[..4], &[0, 0, 0, 24]);
    assert_eq!(&short[4..], &ext[8..]);
    // The allocation length cuts; a reserved format is an invalid field (byte 1, bit 7).
    assert_eq!(a.run2(&rtpg(1, 10), &[]).data_in, ext[..10].to_vec());
    assert_invalid_cdb(&a.run2(&rtpg(2, 1024), &[]), 1, Some(7));
    // A transition shows as transitioning with the implicit status code.
    a.device.configure_alua(groups(Standby, Unavailable), 7);
    a.clear_uas();
    let t = a.run1(&rtpg(1, 1024), &[]).data_in;
    assert_eq!((t[8] & 0x0F, t[13]), (0x0F, 0x02));
    assert_eq!((t[20] & 0x0F, t[25]), (0x0F, 0x02));
}

#[test]
fn report_supported_operation_codes_lists_both() {
    let a = alua_setup();
    for (op, sa) in [(0xA3u8, 0x0Au16), (0xA4, 0x0A)] {
        let mut c = vec![0xA3, 0x0C, 0x02, op, 0, 0, 0, 0, 0, 64, 0, 0];
        c[4..6].copy_from_slice(&sa.to_be_bytes());
        let d = a.run1(&c, &[]).data_in;
        assert_eq!(d[1] & 0x07, 0x03, "{op:02x}/{sa:02x} supported");
        assert_eq!(&d[2..4], &[0, 12]);
    }
}

#[test]
fn changes_reach_every_nexus_as_unit_attentions() {
    let a = alua_setup();
    a.clear_uas();
    a.device.configure_alua(groups(Standby, ActiveOptimized), 2);
    let ua = SenseReason::AsymmetricAccessStateChanged;
    for n in [&a.n1, &a.n2] {
        assert_eq!(a.lu.state().ua.pending(n), vec![ua]);
    }
    // Reported once (REQUEST SENSE runs while transitioning, and takes it).
    let rs = [0x03u8, 0, 0, 0, 252, 0];
    let taken = |n: &Nexus| {
        let d = exec(&a.srv, n, 0, &rs, &[]).data_in;
        (d[2] & 0x0F, d[12], d[13])
    };
    assert_eq!(taken(&a.n1), (0x06, 0x2A, 0x06));
    assert_eq!(taken(&a.n1), (0x02, 0x04, 0x0A), "then: transitioning");
    // The transition's end is a change too (one pending copy of a condition is enough).
    let gen = a.device.configure_alua(groups(Standby, ActiveOptimized), 2);
    assert!(gen.transitioning && !gen.changed);
    assert!(a.device.finish_alua_transition(gen.generation));
    assert_eq!(a.lu.state().ua.pending(&a.n1), vec![ua]);
    assert_eq!(a.lu.state().ua.pending(&a.n2), vec![ua]);
    let tur = [0u8; 6];
    assert_sense(&a.run1(&tur, &[]), 0x06, 0x2A, 0x06);
    assert_sense(&a.run1(&tur, &[]), 0x02, 0x04, 0x0B);
    assert_sense(&a.run2(&tur, &[]), 0x06, 0x2A, 0x06);
    assert_eq!(a.run2(&tur, &[]).status, ScsiStatus::GOOD);
    // Nothing changed, nothing reported.
    a.clear_uas();
    a.device.configure_alua(groups(Standby, ActiveOptimized), 2);
    assert!(a.lu.state().ua.pending(&a.n1).is_empty());
}

#[derive(Default)]
struct Seen(Mutex<Vec<Vec<(u16, AccessState)>>>);

impl AluaObserver for Seen {
    fn explicit_change(&self, device: &TargetDevice) {
        let states = device
            .alua()
            .groups()
            .iter()
            .map(|g| (g.group.id, g.group.state))
            .collect();
        self.0.lock().unwrap().push(states);
    }
}

#[test]
fn set_target_port_groups_is_explicit_and_observed() {
    let a = alua_setup();
    let seen = Arc::new(Seen::default());
    a.device.set_alua_observer(seen.clone());
    a.clear_uas();
    // Through the non-optimized port, make its group active/optimized and the other standby.
    let list = stpg_list(&[(0x0, 20), (0x2, 10)]);
    let r = a.run2(&stpg_cdb(list.len() as u32), &list);
    assert_eq!(r.status, ScsiStatus::GOOD, "{:02x?}", r.sense);
    assert_eq!(a.device.alua().state_of(2), ActiveOptimized);
    assert_eq!(a.device.alua().state_of(1), Standby);
    // The sender hears nothing; the other nexus hears of it.
    assert!(a.lu.state().ua.pending(&a.n2).is_empty());
    assert_eq!(
        a.lu.state().ua.pending(&a.n1),
        vec![SenseReason::AsymmetricAccessStateChanged]
    );
    assert_eq!(
        seen.0.lock().unwrap().clone(),
        vec![vec![(10, Standby), (20, ActiveOptimized)]]
    );
    let t = a.run2(&rtpg(1, 1024), &[]).data_in;
    assert_eq!((t[8] & 0x0F, t[13]), (0x02, 0x01), "status: by SET TPG");
    // Through a standby port SET TARGET PORT GROUPS still runs (SPC-4 §5.16.2.4.4), but a
    // group out of service is not made active on an initiator's request: SET TARGET PORT
    // GROUPS COMMAND FAILED, nothing changed.
    a.clear_uas();
    let back = stpg_list(&[(0x0, 10)]);
    let r = a.run1(&stpg_cdb(back.len() as u32), &back);
    assert_sense(&r, 0x04, 0x67, 0x0A);
    assert_eq!(a.device.alua().state_of(1), Standby);
    // Among the active groups the initiator chooses: group 20 non-optimized.
    let an = stpg_list(&[(0x1, 20)]);
    let r = a.run1(&stpg_cdb(an.len() as u32), &an);
    assert_eq!(r.status, ScsiStatus::GOOD, "{:02x?}", r.sense);
    assert_eq!(a.device.alua().state_of(2), ActiveNonOptimized);
    a.clear_uas();
    // Bad lists: unknown group, transitioning asked for, a torn descriptor, data short.
    for (list, byte) in [
        (stpg_list(&[(0x0, 99)]), Some(6)),
        (stpg_list(&[(0xF, 10)]), Some(4)),
        (vec![0, 0, 0, 0, 0, 0], None),
    ] {
        let r = a.run1(&stpg_cdb(list.len() as u32), &list);
        match byte {
            Some(b) => {
                assert_sense(&r, 0x05, 0x26, 0x00);
                assert_eq!(field_pointer(&r), (false, b, None));
            }
            None => assert_sense(&r, 0x05, 0x1A, 0x00),
        }
    }
    assert_sense(&a.run1(&stpg_cdb(8), &[0; 4]), 0x05, 0x0E, 0x03);
    // Refused lists changed nothing and told nobody.
    assert_eq!(seen.0.lock().unwrap().len(), 2);
    assert_eq!(a.device.alua().state_of(1), Standby);
    // Transitioning refuses SET TARGET PORT GROUPS.
    a.device
        .configure_alua(groups(ActiveOptimized, Transitioning), 0);
    a.clear_uas();
    assert_sense(&a.run2(&stpg_cdb(8), &back), 0x02, 0x04, 0x0A);
}

#[test]
fn persistent_reservations_with_all_tg_pt_span_groups() {
    let a = alua_setup();
    a.port2_in(Standby);
    // REGISTER with ALL_TG_PT through the active port registers the initiator on port 2 too.
    let mut list = vec![0u8; 24];
    list[8..16].copy_from_slice(&0x77u64.to_be_bytes());
    list[20] = 0x04; // ALL_TG_PT
    let r = a.run1(&[0x5F, 0x00, 0, 0, 0, 0, 0, 0, 24, 0], &list);
    assert_eq!(r.status, ScsiStatus::GOOD, "{:02x?}", r.sense);
    // Seen from the standby port, where PERSISTENT RESERVE IN / OUT still run.
    // (One registration for all target ports: one key.)
    let keys = a.run2(&[0x5E, 0, 0, 0, 0, 0, 0, 0, 64, 0], &[]).data_in;
    assert_eq!(u32::from_be_bytes(keys[4..8].try_into().unwrap()), 8);
    assert_eq!(&keys[8..16], &0x77u64.to_be_bytes());
    // RESERVE (write exclusive, registrants only) through the standby port, with the key
    // registered there.
    let mut resv = vec![0u8; 24];
    resv[0..8].copy_from_slice(&0x77u64.to_be_bytes());
    let r = a.run2(&[0x5F, 0x01, 0x05, 0, 0, 0, 0, 0, 24, 0], &resv);
    assert_eq!(r.status, ScsiStatus::GOOD, "{:02x?}", r.sense);
    // The initiator port is registered through every target port: it writes through port 1,
    // while another initiator port, not registered, is refused.
    let w = a.run1(&cdb10(0x2A, 0, 0, 1), &[1; BS]);
    assert_eq!(w.status, ScsiStatus::GOOD, "{:02x?}", w.sense);
    let other = Nexus {
        isid: 9,
        ..a.n1.clone()
    };
    let w = exec(&a.srv, &other, 0, &cdb10(0x2A, 0, 0, 1), &[1; BS]);
    assert_eq!(w.status, ScsiStatus::RESERVATION_CONFLICT);
}

#[test]
fn without_configuration_every_port_is_active_optimized() {
    let device = TargetDevice::new("iqn.2026-11.io.ferrite:plain");
    let p = device.port(5, 5);
    let srv = DeviceServer::on(device.clone());
    let lu = Arc::new(LogicalUnit::new(cfg_quiet(), MemStore::new(BLOCKS * BS, false)).unwrap());
    srv.add_lun(0, lu).unwrap();
    let n = nexus_on(&p, 1);
    assert_eq!(exec(&srv, &n, 0, &[0; 6], &[]).status, ScsiStatus::GOOD);
    let r = exec(&srv, &n, 0, &rtpg(0, 64), &[]).data_in;
    assert_eq!(
        r,
        vec![0, 0, 0, 12, 0x00, 0xCF, 0, 1, 0, 0, 0, 1, 0, 0, 0, 5]
    );
    // A bare LUN map (no device) answers the same for its one port.
    let t = setup();
    let r = t.ok(&rtpg(0, 64), &[]);
    assert_eq!(
        r,
        vec![0, 0, 0, 12, 0x00, 0xCF, 0, 1, 0, 0, 0, 1, 0, 0, 0, 1]
    );
}
