//! Session table rules on the wire: reinstatement of a session by a new login from the same
//! initiator port (RFC 7143 §6.3.5), and independence of sessions with different ISIDs.

mod common;

use std::time::Duration;

use common::initiator::{LoginOpts, Session};
use common::tpg::closed_within;
use common::{Daemon, Opts};

#[test]
fn same_initiator_port_reinstates_the_old_session() {
    let d = Daemon::start(Opts::default());
    let isid = [0x80, 0, 0, 0, 0x11, 0x22];
    let opts = LoginOpts {
        isid,
        ..LoginOpts::default()
    };
    let mut old = Session::login(d.addr(), &opts).expect("first login");
    old.clear_unit_attentions().unwrap();
    let mut new = Session::login(d.addr(), &opts).expect("second login, same ISID");
    assert!(
        closed_within(&mut old, Duration::from_secs(10)),
        "the old session was not closed"
    );
    // The new session works.
    new.clear_unit_attentions().unwrap();
    let data = vec![0x5a; 4096];
    new.write10(10, &data, 512).unwrap();
    assert_eq!(new.read10(10, 8, 512).unwrap(), data);
    new.logout().unwrap();
    assert!(
        d.log_text().contains("reinstating session"),
        "{}",
        d.log_text()
    );
}

#[test]
fn different_isids_are_different_sessions() {
    let d = Daemon::start(Opts::default());
    let mut a = Session::login(
        d.addr(),
        &LoginOpts {
            isid: [0x80, 0, 0, 0, 0, 1],
            ..LoginOpts::default()
        },
    )
    .unwrap();
    let mut b = Session::login(
        d.addr(),
        &LoginOpts {
            isid: [0x80, 0, 0, 0, 0, 2],
            ..LoginOpts::default()
        },
    )
    .unwrap();
    a.clear_unit_attentions().unwrap();
    b.clear_unit_attentions().unwrap();
    a.write10(0, &[1u8; 512], 512).unwrap();
    assert_eq!(b.read10(0, 1, 512).unwrap(), vec![1u8; 512]);
    a.logout().unwrap();
    b.logout().unwrap();
}

/// Logging out and at once logging in again from the same initiator port is the same I_T
/// nexus: the release of the old one (SAM-5 I_T nexus loss) must be over before the new
/// session's first command, or it wipes the state that command set up (a regression: CI once
/// saw a WRITE right after a cleared unit attention answered with a fresh 29/00).
#[test]
fn a_quick_relogin_on_the_same_port_sees_no_stale_nexus_release() {
    let d = Daemon::start(Opts::default());
    let opts = LoginOpts {
        isid: [0x80, 0, 0, 0, 0x33, 0x44],
        ..LoginOpts::default()
    };
    for round in 0..40u32 {
        let mut s = Session::login(d.addr(), &opts).expect("login");
        let data = vec![round as u8; 512];
        s.write10(round, &data, 512)
            .unwrap_or_else(|e| panic!("round {round}: write after the UA was cleared: {e}"));
        assert_eq!(s.read10(round, 1, 512).unwrap(), data, "round {round}");
        s.logout().unwrap();
    }
}
