//! A reference model of persistent reservations, written from the text of SPC-4 §5.13 and
//! §6.15–§6.16 in the most literal way (a list of (I_T nexus, key) pairs, a holder, a type),
//! and a seeded random test that drives PERSISTENT RESERVE OUT / IN, READ / WRITE, unit
//! attention collection and restarts from several I_T nexuses through the real device server,
//! checking after every step that both agree.
//!
//! The model knows nothing of `engine`, `state` or `codec`: it covers REGISTER, REGISTER AND
//! IGNORE EXISTING KEY, RESERVE, RELEASE, CLEAR, PREEMPT and PREEMPT AND ABORT with the APTPL
//! bit, over four fixed I_T nexuses (two sharing an initiator name, one on another target
//! port). SPEC_I_PT, ALL_TG_PT and REGISTER AND MOVE are covered by the unit tests.

use std::sync::{Arc, Mutex};

use backstore::RamBackstore;

use super::tests::{
    basic_list, cfg, drain_ua, exec, nx, prout_cdb, read_keys, read_resv, H, IQN_A, IQN_B, IQN_C,
};
use super::MemPrStore;
use crate::{DeviceServer, LogicalUnit, Nexus, ScsiResponse, ScsiStatus, TaskAborter};

const N: usize = 4;

/// What the standard says a command ends with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Outcome {
    Good,
    Conflict,
    /// CHECK CONDITION with (sense key, ASC, ASCQ).
    Check(u8, u8, u8),
}

const INVALID_FIELD_IN_CDB: Outcome = Outcome::Check(0x05, 0x24, 0x00);
const INVALID_FIELD_IN_PARAMETER_LIST: Outcome = Outcome::Check(0x05, 0x26, 0x00);
const INVALID_RELEASE: Outcome = Outcome::Check(0x05, 0x26, 0x04);
const UA_RESERVATIONS_PREEMPTED: (u8, u8) = (0x2A, 0x03);
const UA_RESERVATIONS_RELEASED: (u8, u8) = (0x2A, 0x04);
const UA_REGISTRATIONS_PREEMPTED: (u8, u8) = (0x2A, 0x05);

/// One PERSISTENT RESERVE OUT: service action, CDB SCOPE and TYPE, parameter list keys and
/// APTPL.
#[derive(Clone, Copy, Debug)]
struct Out {
    sa: u8,
    scope: u8,
    ty: u8,
    key: u64,
    sark: u64,
    aptpl: bool,
}

#[derive(Clone, Debug, Default)]
struct Model {
    generation: u32,
    aptpl: bool,
    /// (I_T nexus, reservation key), in registration order.
    keys: Vec<(usize, u64)>,
    /// Reservation type and, for types other than the all registrants ones, its holder.
    reservation: Option<(u8, Option<usize>)>,
    /// Pending unit attentions per I_T nexus.
    ua: [Vec<(u8, u8)>; N],
    /// I_T nexuses the last PREEMPT AND ABORT aborted.
    aborted: Vec<usize>,
}

fn valid_type(t: u8) -> bool {
    matches!(t, 1 | 3 | 5 | 6 | 7 | 8)
}

fn all_registrants(t: u8) -> bool {
    t == 7 || t == 8
}

impl Model {
    fn key_of(&self, n: usize) -> Option<u64> {
        self.keys.iter().find(|(m, _)| *m == n).map(|(_, k)| *k)
    }

    /// "Persistent reservation holder" (SPC-4 §5.13.10).
    fn holds(&self, n: usize) -> bool {
        match self.reservation {
            None => false,
            Some((t, _)) if all_registrants(t) => self.key_of(n).is_some(),
            Some((_, h)) => h == Some(n),
        }
    }

    fn tell(&mut self, n: usize, ua: (u8, u8)) {
        if !self.ua[n].contains(&ua) {
            self.ua[n].push(ua);
        }
    }

    /// Every registered I_T nexus other than `n` gets `ua`.
    fn tell_registrants_but(&mut self, n: usize, ua: (u8, u8)) {
        let others: Vec<usize> = self
            .keys
            .iter()
            .map(|(m, _)| *m)
            .filter(|m| *m != n)
            .collect();
        for m in others {
            self.tell(m, ua);
        }
    }

    /// READ (false) or WRITE (true) from `n`: SPC-4 §5.13.1 / SBC-4 reservation tables.
    fn access(&self, n: usize, write: bool) -> Outcome {
        let Some((t, _)) = self.reservation else {
            return Outcome::Good;
        };
        if self.holds(n) {
            return Outcome::Good;
        }
        let registered = self.key_of(n).is_some();
        let conflict = match t {
            1 => write,
            3 => true,
            5 | 7 => write && !registered,
            _ => !registered,
        };
        if conflict {
            Outcome::Conflict
        } else {
            Outcome::Good
        }
    }

    /// PERSISTENT RESERVE OUT from `n`.
    fn prout(&mut self, n: usize, c: &Out) -> Outcome {
        let Out {
            sa,
            scope,
            ty,
            key,
            sark,
            aptpl,
        } = *c;
        self.aborted.clear();
        let mine = self.key_of(n);
        match sa {
            // REGISTER, REGISTER AND IGNORE EXISTING KEY (SPC-4 §5.13.7).
            0 | 6 => {
                let check_key = sa == 0;
                match mine {
                    None => {
                        if check_key && key != 0 {
                            return Outcome::Conflict;
                        }
                        if sark == 0 {
                            return Outcome::Good;
                        }
                        self.keys.push((n, sark));
                    }
                    Some(k) => {
                        if check_key && key != k {
                            return Outcome::Conflict;
                        }
                        if sark == 0 {
                            self.keys.retain(|(m, _)| *m != n);
                            if let Some((t, h)) = self.reservation {
                                if all_registrants(t) {
                                    if self.keys.is_empty() {
                                        self.reservation = None;
                                    }
                                } else if h == Some(n) {
                                    self.reservation = None;
                                    if t == 5 || t == 6 {
                                        self.tell_registrants_but(n, UA_RESERVATIONS_RELEASED);
                                    }
                                }
                            }
                        } else {
                            for e in self.keys.iter_mut().filter(|(m, _)| *m == n) {
                                e.1 = sark;
                            }
                        }
                    }
                }
                self.aptpl = aptpl;
                self.generation = self.generation.wrapping_add(1);
                Outcome::Good
            }
            _ => {
                // Everything else: registered, with its own key (SPC-4 §6.16.3).
                let Some(k) = mine else {
                    return Outcome::Conflict;
                };
                if key != k {
                    return Outcome::Conflict;
                }
                match sa {
                    1 => self.reserve(n, scope, ty),
                    2 => self.release(n, scope, ty),
                    3 => {
                        self.tell_registrants_but(n, UA_RESERVATIONS_PREEMPTED);
                        self.keys.clear();
                        self.reservation = None;
                        self.generation = self.generation.wrapping_add(1);
                        Outcome::Good
                    }
                    4 | 5 => self.preempt(n, scope, ty, sark, sa == 5),
                    _ => unreachable!(),
                }
            }
        }
    }

    fn reserve(&mut self, n: usize, scope: u8, ty: u8) -> Outcome {
        if scope != 0 || !valid_type(ty) {
            return INVALID_FIELD_IN_CDB;
        }
        match self.reservation {
            None => {
                let holder = if all_registrants(ty) { None } else { Some(n) };
                self.reservation = Some((ty, holder));
                Outcome::Good
            }
            Some((t, _)) if self.holds(n) && t == ty => Outcome::Good,
            Some(_) => Outcome::Conflict,
        }
    }

    fn release(&mut self, n: usize, scope: u8, ty: u8) -> Outcome {
        let Some((t, _)) = self.reservation else {
            return Outcome::Good;
        };
        if !self.holds(n) {
            return Outcome::Good;
        }
        if scope != 0 || ty != t {
            return INVALID_RELEASE;
        }
        self.reservation = None;
        if t != 1 && t != 3 {
            self.tell_registrants_but(n, UA_RESERVATIONS_RELEASED);
        }
        Outcome::Good
    }

    fn preempt(&mut self, n: usize, scope: u8, ty: u8, sark: u64, abort: bool) -> Outcome {
        let someone_has = self.keys.iter().any(|(_, k)| *k == sark);
        // Whether the preempting I_T nexus takes the reservation over, and which registrations
        // go.
        let (takes_over, remove_all_others) = match self.reservation {
            None => {
                if sark == 0 {
                    return INVALID_FIELD_IN_PARAMETER_LIST;
                }
                if !someone_has {
                    return Outcome::Conflict;
                }
                (false, false)
            }
            Some((t, _)) if all_registrants(t) => {
                if sark == 0 {
                    (true, true)
                } else if !someone_has {
                    return Outcome::Conflict;
                } else {
                    (false, false)
                }
            }
            Some((_, h)) => {
                if sark == 0 {
                    return INVALID_FIELD_IN_PARAMETER_LIST;
                }
                let holder_key = h.and_then(|h| self.key_of(h));
                if holder_key == Some(sark) {
                    (true, false)
                } else if !someone_has {
                    return Outcome::Conflict;
                } else {
                    (false, false)
                }
            }
        };
        if takes_over && (scope != 0 || !valid_type(ty)) {
            return INVALID_FIELD_IN_CDB;
        }
        let old_type = self.reservation.map(|(t, _)| t);
        let gone: Vec<usize> = self
            .keys
            .iter()
            .filter(|(m, k)| *m != n && (remove_all_others || *k == sark))
            .map(|(m, _)| *m)
            .collect();
        self.keys.retain(|(m, _)| !gone.contains(m));
        for &m in &gone {
            self.tell(m, UA_REGISTRATIONS_PREEMPTED);
        }
        if abort {
            self.aborted = gone;
        }
        if takes_over {
            let holder = if all_registrants(ty) { None } else { Some(n) };
            self.reservation = Some((ty, holder));
            if old_type != Some(ty) {
                self.tell_registrants_but(n, UA_RESERVATIONS_RELEASED);
            }
        }
        self.generation = self.generation.wrapping_add(1);
        Outcome::Good
    }

    /// A restart: only APTPL state survives; PRGENERATION is zero again.
    fn power_cycle(&mut self) {
        if !self.aptpl {
            self.keys.clear();
            self.reservation = None;
        }
        self.generation = 0;
        self.ua = Default::default();
        self.aborted.clear();
    }
}

fn outcome(r: &ScsiResponse) -> Outcome {
    match r.status {
        ScsiStatus::GOOD => Outcome::Good,
        ScsiStatus::RESERVATION_CONFLICT => Outcome::Conflict,
        ScsiStatus::CHECK_CONDITION => Outcome::Check(r.sense[2] & 0x0F, r.sense[12], r.sense[13]),
        s => panic!("unexpected status {s:?}"),
    }
}

#[derive(Default)]
struct Aborts(Mutex<Vec<Nexus>>);

impl TaskAborter for Aborts {
    fn abort_tasks(&self, _lu: &LogicalUnit, _lun: u64, nexuses: &[Nexus]) {
        self.0.lock().unwrap().extend_from_slice(nexuses);
    }
}

fn start(store: &Arc<MemPrStore>, aborts: &Arc<Aborts>, nexuses: &[Nexus]) -> H {
    let lu = Arc::new(LogicalUnit::new(cfg(false), Arc::new(RamBackstore::new(1 << 20))).unwrap());
    lu.set_pr_store(store.clone()).unwrap();
    let srv = DeviceServer::new();
    srv.add_lun(0, lu.clone()).unwrap();
    srv.set_task_aborter(aborts.clone());
    let h = H {
        srv,
        lu,
        store: store.clone(),
    };
    // Let the logical unit see every I_T nexus, so unit attentions can be queued for them.
    for n in nexuses {
        assert!(drain_ua(&h, n).is_empty());
    }
    h
}

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

thread_local! {
    static SEEN_UA: std::cell::RefCell<std::collections::BTreeSet<(u8, u8)>> = Default::default();
}

fn check_agreement(h: &H, m: &mut Model, nexuses: &[Nexus], ctx: &str) {
    let observer = &nexuses[0];
    // Unit attentions first: a pending one would answer the commands below instead.
    for (i, n) in nexuses.iter().enumerate() {
        let mut got = drain_ua(h, n);
        let mut want = std::mem::take(&mut m.ua[i]);
        for ua in &want {
            SEEN_UA.with(|s| s.borrow_mut().insert(*ua));
        }
        got.sort_unstable();
        want.sort_unstable();
        assert_eq!(got, want, "{ctx}: unit attentions of nexus {i}");
    }
    let (gen, keys) = read_keys(h, observer);
    assert_eq!(gen, m.generation, "{ctx}: PRGENERATION");
    let want_keys: Vec<u64> = m.keys.iter().map(|(_, k)| *k).collect();
    assert_eq!(keys, want_keys, "{ctx}: READ KEYS");
    let want_resv = m.reservation.map(|(t, holder)| {
        let key = holder.and_then(|h| m.key_of(h)).unwrap_or(0);
        (key, t)
    });
    assert_eq!(read_resv(h, observer), want_resv, "{ctx}: READ RESERVATION");
    // The state the engine keeps names the same I_T nexuses.
    let st = h.lu.pr_state();
    let regs: Vec<(usize, u64)> = st
        .registrations
        .iter()
        .map(|r| {
            let i = nexuses
                .iter()
                .position(|n| r.who == super::Who::exact(n))
                .expect("registration of a known nexus");
            (i, r.key)
        })
        .collect();
    assert_eq!(regs, m.keys, "{ctx}: registrations");
    // What a power loss would leave.
    let saved = h.store.saved();
    assert_eq!(saved.is_some(), m.aptpl, "{ctx}: APTPL saved state");
    if let Some(s) = saved {
        assert_eq!(
            s.registrations, st.registrations,
            "{ctx}: saved registrations"
        );
        assert_eq!(s.reservation, st.reservation, "{ctx}: saved reservation");
    }
}

/// What the random walk reached, to check that it exercises every rule.
type Seen = std::collections::BTreeSet<String>;

fn run_seed(seed: u64, steps: usize, seen: &mut Seen) {
    let nexuses = [
        nx(IQN_A, 1, 1),
        nx(IQN_A, 2, 1),
        nx(IQN_B, 1, 2),
        nx(IQN_C, 3, 1),
    ];
    let store = Arc::new(MemPrStore::new());
    let aborts = Arc::new(Aborts::default());
    let mut h = start(&store, &aborts, &nexuses);
    let mut m = Model::default();
    let mut rng = Rng(seed | 1);
    let mut history: Vec<String> = Vec::new();
    for step in 0..steps {
        let n = rng.below(N as u64) as usize;
        let recent = history[history.len().saturating_sub(8)..].join("\n  ");
        let ctx = format!("seed {seed:#x} step {step}; before:\n  {recent}\n");
        match rng.below(20) {
            0..=13 => {
                let sa = [0u8, 0, 6, 6, 1, 1, 2, 3, 4, 4, 5, 5][rng.below(12) as usize];
                let ty = if rng.below(10) == 0 {
                    [0u8, 2, 4, 9, 15][rng.below(5) as usize]
                } else {
                    [1u8, 3, 5, 6, 7, 8][rng.below(6) as usize]
                };
                let scope = u8::from(rng.below(25) == 0);
                // Keys mostly the sender's own (so commands get past the key check).
                let own = m.key_of(n).unwrap_or(0);
                let key = if rng.below(4) == 0 { rng.below(4) } else { own };
                let sark = rng.below(4);
                let aptpl = rng.below(3) == 0;
                let want = m.prout(
                    n,
                    &Out {
                        sa,
                        scope,
                        ty,
                        key,
                        sark,
                        aptpl,
                    },
                );
                history.push(format!(
                    "{step}: nexus {n} PR OUT sa {sa} scope {scope} type {ty} key {key} sark {sark} aptpl {aptpl} -> {want:?}"
                ));
                let flags = u8::from(aptpl);
                let r = exec(
                    &h,
                    &nexuses[n],
                    &prout_cdb(sa, (scope << 4) | ty, 24),
                    &basic_list(key, sark, flags),
                );
                let got = outcome(&r);
                seen.insert(format!("sa {sa} {want:?}"));
                assert_eq!(
                    got, want,
                    "{ctx}: PR OUT sa {sa} scope {scope} type {ty} key {key} sark {sark} aptpl {aptpl} from nexus {n}"
                );
                let mut got_aborted: Vec<usize> = aborts
                    .0
                    .lock()
                    .unwrap()
                    .drain(..)
                    .map(|a| nexuses.iter().position(|x| *x == a).unwrap())
                    .collect();
                got_aborted.sort_unstable();
                if !m.aborted.is_empty() {
                    seen.insert("aborted".into());
                }
                let mut want_aborted = m.aborted.clone();
                want_aborted.sort_unstable();
                assert_eq!(got_aborted, want_aborted, "{ctx}: aborted I_T nexuses");
            }
            14..=17 => {
                let w = rng.below(2) == 0;
                let cdb: [u8; 10] = [if w { 0x2A } else { 0x28 }, 0, 0, 0, 0, 8, 0, 0, 1, 0];
                let data = if w { vec![n as u8; 512] } else { Vec::new() };
                let r = exec(&h, &nexuses[n], &cdb, &data);
                history.push(format!(
                    "{step}: nexus {n} {}",
                    if w { "WRITE" } else { "READ" }
                ));
                seen.insert(format!(
                    "{} {:?}",
                    if w { "WRITE" } else { "READ" },
                    m.access(n, w)
                ));
                assert_eq!(
                    outcome(&r),
                    m.access(n, w),
                    "{ctx}: {} from nexus {n}",
                    if w { "WRITE" } else { "READ" }
                );
            }
            18 => {
                // Power cycle: a new logical unit on the same store.
                h = start(&store, &aborts, &nexuses);
                m.power_cycle();
                history.push(format!("{step}: power cycle"));
            }
            _ => {}
        }
        check_agreement(&h, &mut m, &nexuses, &ctx);
    }
}

#[test]
fn engine_agrees_with_the_reference_model() {
    // A fixed set of seeds keeps failures reproducible; FERRITE_PR_SEEDS runs more.
    let extra: u64 = std::env::var("FERRITE_PR_SEEDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let mut seen = Seen::new();
    for seed in (0..40 + extra).map(|i| 0x9E37_79B9_7F4A_7C15u64.wrapping_mul(i + 1)) {
        run_seed(seed, 400, &mut seen);
    }
    // The walk reached every outcome the model distinguishes.
    for want in [
        "sa 0 Good",
        "sa 0 Conflict",
        "sa 6 Good",
        "sa 1 Good",
        "sa 1 Conflict",
        "sa 1 Check(5, 36, 0)",
        "sa 2 Good",
        "sa 2 Conflict",
        "sa 2 Check(5, 38, 4)",
        "sa 3 Good",
        "sa 3 Conflict",
        "sa 4 Good",
        "sa 4 Conflict",
        "sa 4 Check(5, 38, 0)",
        "sa 4 Check(5, 36, 0)",
        "sa 5 Good",
        "sa 5 Conflict",
        "sa 5 Check(5, 38, 0)",
        "aborted",
        "READ Good",
        "READ Conflict",
        "WRITE Good",
        "WRITE Conflict",
    ] {
        assert!(
            seen.contains(want),
            "the random walk never reached {want:?}: {seen:?}"
        );
    }
    let uas = SEEN_UA.with(|s| s.borrow().clone());
    for ua in [
        UA_RESERVATIONS_PREEMPTED,
        UA_RESERVATIONS_RELEASED,
        UA_REGISTRATIONS_PREEMPTED,
    ] {
        assert!(uas.contains(&ua), "never saw unit attention {ua:?}");
    }
}
