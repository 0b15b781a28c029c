//! The daemon survives peers that misbehave: garbage bytes, truncated PDUs, logins that never
//! finish, sessions that vanish mid-transfer, protocol errors inside a session. After each, another
//! initiator (libiscsi's iscsi-inq, then our raw initiator writing and reading data) must still be
//! served and the process must still be alive. Every connection here is to loopback and bounded.

mod common;

use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};
use std::time::{Duration, Instant};

use common::initiator::{login_bhs, login_pdu, LoginOpts, Session, OP_DATA_OUT, OP_R2T};
use common::{field, run, Daemon, Opts, Rng, IQN};

/// Another initiator is served, end to end, and the daemon is alive.
fn assert_serves(d: &mut Daemon) {
    d.assert_alive();
    let out = run("iscsi-inq", &[&d.url(0)], Duration::from_secs(60)).ok();
    assert_eq!(
        field(&out.stdout, "Vendor:"),
        Some("FERRITE"),
        "{}",
        out.describe()
    );
    let mut s = Session::login(
        d.addr(),
        &LoginOpts {
            isid: [0x80, 0, 0, 0, 0, 0x42],
            ..LoginOpts::default()
        },
    )
    .unwrap_or_else(|e| panic!("login after the abuse: {e}"));
    let mut data = vec![0u8; 64 << 10];
    Rng::new(7).fill(&mut data);
    s.write10(2048, &data, 512)
        .unwrap_or_else(|e| panic!("write after the abuse: {e}"));
    let back = s
        .read10(2048, 128, 512)
        .unwrap_or_else(|e| panic!("read after the abuse: {e}"));
    assert!(back == data, "data read back differs");
    s.logout()
        .unwrap_or_else(|e| panic!("logout after the abuse: {e}"));
    d.assert_alive();
}

fn connect(d: &Daemon) -> TcpStream {
    let s = TcpStream::connect_timeout(&d.addr(), Duration::from_secs(5)).expect("connect");
    s.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    s
}

/// Whether the daemon closes `s` within `limit` (reads until EOF or a reset; any data is dropped).
fn closed_within(s: &mut TcpStream, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    let mut buf = [0u8; 4096];
    while Instant::now() < deadline {
        match s.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => return true,
        }
    }
    false
}

fn opts_64m() -> Opts {
    Opts {
        luns: vec!["ram:64M".into()],
        ..Opts::default()
    }
}

#[test]
fn garbage_bytes() {
    let mut d = Daemon::start(opts_64m());
    let mut noise = vec![0u8; 64 << 10];
    Rng::new(1).fill(&mut noise);
    let inputs: Vec<Vec<u8>> = vec![
        noise,
        vec![0u8; 48 * 100], // NOP-Outs before any login
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".repeat(4), // the wrong protocol
        vec![0xffu8; 4096],  // every field at its maximum
    ];
    for input in &inputs {
        let mut s = connect(&d);
        let _ = s.write_all(input); // the daemon may hang up half way: fine
        let _ = s.shutdown(Shutdown::Write);
        closed_within(&mut s, Duration::from_secs(5));
        d.assert_alive();
    }
    assert_serves(&mut d);
}

#[test]
fn truncated_pdus() {
    let mut d = Daemon::start(opts_64m());
    let isid = [0x80, 1, 2, 3, 4, 5];
    let login = login_pdu(
        0,
        1,
        true,
        isid,
        &[
            ("InitiatorName", "iqn.2026-11.io.ferrite:trunc"),
            ("TargetName", IQN),
        ],
    );
    // Half a BHS, then the write side closes.
    let mut s = connect(&d);
    s.write_all(&login[..20]).unwrap();
    s.shutdown(Shutdown::Write).unwrap();
    closed_within(&mut s, Duration::from_secs(5));
    // A whole BHS announcing 1000 data bytes, 10 sent, then gone.
    let mut b = login_bhs(0, 1, true, isid, 1, 1, 0);
    b[5..8].copy_from_slice(&[0, 0x03, 0xe8]);
    let mut s = connect(&d);
    s.write_all(&b).unwrap();
    s.write_all(&[b'x'; 10]).unwrap();
    drop(s);
    // A BHS announcing the largest data segment there is (16 MiB − 1), and nothing after it.
    b[5..8].copy_from_slice(&[0xff, 0xff, 0xff]);
    let mut s = connect(&d);
    s.write_all(&b).unwrap();
    s.shutdown(Shutdown::Write).unwrap();
    closed_within(&mut s, Duration::from_secs(5));
    // Half a BHS that stays open while another initiator is served.
    let mut stuck = connect(&d);
    stuck.write_all(&login[..30]).unwrap();
    assert_serves(&mut d);
    drop(stuck);
    assert_serves(&mut d);
}

#[test]
fn logins_that_never_finish() {
    // A short login timeout so the test can see the daemon give up on the stalled logins.
    let cfg = format!(
        r#"
[settings]
login_timeout_secs = 3

[[target]]
name = "{IQN}"
[[target.portal_group]]
tag = 1
portals = ["127.0.0.1:{{port}}"]
[[target.lun]]
id = 0
backstore = "ram:64M"
"#
    );
    let mut d = Daemon::start(Opts {
        config: Some(cfg),
        ..Opts::default()
    });
    // A: the first login step is answered, then the initiator never sends the next one.
    let mut a = connect(&d);
    a.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    a.write_all(&login_pdu(
        0,
        1,
        false,
        [0x80, 9, 9, 9, 9, 1],
        &[
            ("InitiatorName", "iqn.2026-11.io.ferrite:stall"),
            ("SessionType", "Normal"),
            ("TargetName", IQN),
            ("AuthMethod", "None"),
        ],
    ))
    .unwrap();
    let mut rsp = [0u8; 48];
    a.read_exact(&mut rsp)
        .expect("answer to the first login request");
    assert_eq!(rsp[0] & 0x3f, 0x23, "not a login response: {rsp:02x?}");
    assert_eq!(rsp[36], 0, "first login step refused: {rsp:02x?}");
    a.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    // B: connects and never says anything.
    let mut b = connect(&d);
    let t0 = Instant::now();
    // While both hang, others are served.
    assert_serves(&mut d);
    // Then the login timeout ends both (3 s configured; allow plenty).
    assert!(
        closed_within(&mut a, Duration::from_secs(30)),
        "stalled login still open after {:?}",
        t0.elapsed()
    );
    assert!(
        closed_within(&mut b, Duration::from_secs(30)),
        "silent connection still open after {:?}",
        t0.elapsed()
    );
    assert_serves(&mut d);
}

#[test]
fn many_half_open_connections() {
    let mut d = Daemon::start(opts_64m());
    let login = login_pdu(
        0,
        1,
        true,
        [0x80, 7, 7, 7, 7, 7],
        &[("InitiatorName", "iqn.2026-11.io.ferrite:many")],
    );
    let conns: Vec<TcpStream> = (0..64)
        .map(|_| {
            let mut s = connect(&d);
            let _ = s.write_all(&login[..24]);
            s
        })
        .collect();
    assert_serves(&mut d);
    drop(conns);
    assert_serves(&mut d);
}

/// Same initiator and ISID each time: every new login reinstates the vanished session.
fn session(d: &Daemon) -> Session {
    Session::login(
        d.addr(),
        &LoginOpts {
            initiator: "iqn.2026-11.io.ferrite:vanish",
            ..LoginOpts::default()
        },
    )
    .unwrap_or_else(|e| panic!("login: {e}"))
}

#[test]
fn vanish_mid_transfer() {
    let mut d = Daemon::start(opts_64m());
    let mut data = vec![0u8; 1 << 20];
    Rng::new(3).fill(&mut data);

    // 1. WRITE of 1 MiB; after the first R2T, half a Data-Out PDU, then the initiator is gone.
    let mut s = session(&d);
    let mut cdb = [0u8; 10];
    cdb[0] = 0x2a;
    cdb[7..9].copy_from_slice(&2048u16.to_be_bytes());
    let (bhs, itt) = s.scsi_cmd_bhs(&cdb, false, true, 1 << 20);
    s.send(&bhs, &[]).unwrap();
    let r2t = s.recv().expect("R2T");
    assert_eq!(
        r2t.opcode(),
        OP_R2T,
        "expected an R2T: {:02x?}",
        &r2t.bhs[..8]
    );
    let mut dout = [0u8; 48];
    dout[0] = OP_DATA_OUT;
    dout[1] = 0x80;
    dout[16..20].copy_from_slice(&itt.to_be_bytes());
    dout[20..24].copy_from_slice(&r2t.bhs[20..24]);
    let pdu = s.encode(&dout, &data[..8192]);
    s.stream.write_all(&pdu[..pdu.len() / 2]).unwrap();
    drop(s);

    // 2. WRITE answered by an R2T that is never served.
    let mut s = session(&d);
    let (bhs, _) = s.scsi_cmd_bhs(&cdb, false, true, 1 << 20);
    s.send(&bhs, &[]).unwrap();
    assert_eq!(s.recv().expect("R2T").opcode(), OP_R2T);
    drop(s);

    // 3. READ of ~32 MiB whose Data-In nobody reads.
    let mut s = session(&d);
    let mut cdb = [0u8; 10];
    cdb[0] = 0x28;
    cdb[7..9].copy_from_slice(&65535u16.to_be_bytes());
    let (bhs, _) = s.scsi_cmd_bhs(&cdb, true, false, 65535 * 512);
    s.send(&bhs, &[]).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    drop(s);

    // 4. A whole write, then gone without a logout.
    let mut s = session(&d);
    s.write10(0, &data, 512).expect("write");
    drop(s);

    d.assert_alive();
    // The last complete write is there for the next session (which reinstates the old one).
    let mut s = session(&d);
    let back = s.read10(0, 2048, 512).expect("read back");
    assert!(back == data, "data of the completed write lost");
    s.logout().expect("logout");
    assert_serves(&mut d);
}

/// After a protocol violation the daemon must say so: a Reject (or any answer) or a hang-up,
/// never silence (RFC 7143 §7.1: a target answers protocol errors with Reject or drops the
/// connection).
fn answered_or_closed(s: &mut Session, what: &str) -> String {
    s.stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    match s.recv() {
        Ok(p) => format!(
            "{what}: answered with opcode {:#04x} reason/response {:#04x}",
            p.opcode(),
            p.bhs[2]
        ),
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ) =>
        {
            panic!("{what}: no answer and no hang-up within 10 s")
        }
        Err(e) => format!("{what}: connection closed ({e})"),
    }
}

#[test]
fn protocol_errors_inside_a_session() {
    let mut d = Daemon::start(opts_64m());
    // An opcode no initiator may send (0x1d is vendor specific): a Reject or a hang-up, not a crash.
    let mut s = session(&d);
    let mut b = [0u8; 48];
    b[0] = 0x1d;
    b[1] = 0x80;
    b[16..20].copy_from_slice(&0x4444u32.to_be_bytes());
    s.send(&b, &[]).unwrap();
    println!("{}", answered_or_closed(&mut s, "unknown opcode 0x1d"));
    drop(s);
    // A SCSI command carrying more immediate data than was negotiated (ImmediateData=No).
    let mut s = session(&d);
    let mut cdb = [0u8; 10];
    cdb[0] = 0x2a;
    cdb[7..9].copy_from_slice(&16u16.to_be_bytes());
    let (bhs, _) = s.scsi_cmd_bhs(&cdb, false, true, 8192);
    s.send(&bhs, &[0xab; 8192]).unwrap();
    // Either a protocol error, or (leniently) the write proceeds with an R2T.
    println!(
        "{}",
        answered_or_closed(&mut s, "immediate data with ImmediateData=No")
    );
    drop(s);
    // A Data-Out for a task that does not exist.
    let mut s = session(&d);
    let mut dout = [0u8; 48];
    dout[0] = OP_DATA_OUT;
    dout[1] = 0x80;
    dout[16..20].copy_from_slice(&0x9999u32.to_be_bytes());
    dout[20..24].copy_from_slice(&0x1234u32.to_be_bytes());
    s.send(&dout, &[0xcd; 512]).unwrap();
    println!("{}", answered_or_closed(&mut s, "Data-Out for no task"));
    drop(s);
    assert_serves(&mut d);
}
