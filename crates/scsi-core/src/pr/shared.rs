//! Persistent reservations shared by the nodes of a cluster (issue "Clusters on etcd").
//!
//! SPC-4 §5.13 describes one logical unit, whichever target port a command arrives through.
//! When several nodes serve the same logical unit, they must therefore keep one reservation
//! state between them: one set of registrations, one reservation, one PRGENERATION.
//!
//! The model:
//! * The cluster store (etcd) holds, per logical unit, the last **change**: the whole new state
//!   plus what it asks of every node (unit attentions to establish, I_T nexuses whose tasks to
//!   abort) and which I_T nexus sent it. Its revision in the store orders the changes.
//! * Each node keeps a copy of the state (the logical unit's `PrLu`) with the revision it was
//!   read at, and checks every command against the copy without a round trip.
//! * A PERSISTENT RESERVE OUT computes the new state on the copy (the same pure `engine` as on
//!   one node) and hands the change to [`SharedPr::publish`], which writes it with a
//!   compare-and-swap on the copy's revision. A lost race ([`Publish::Stale`]) means another
//!   node changed the state first: the command is computed again on the newer copy.
//! * Every node applies every change it sees ([`LogicalUnit::apply_shared_pr`](crate::LogicalUnit::apply_shared_pr)): the new
//!   state, the unit attentions for its I_T nexuses, and for PREEMPT AND ABORT the abort of the
//!   preempted nexuses' tasks and the wait until none of their commands still runs. Then it
//!   acknowledges the revision. `publish` returns only when every live node has acknowledged
//!   (or left the cluster, which it does only after fencing itself), so when a PERSISTENT RESERVE
//!   OUT completes, every node enforces the new state and no preempted write runs anywhere.
//! * A node whose copy may be behind (the store's change feed broke and is being read again)
//!   answers the commands the copy decides with BUSY, never from a stale copy.
//!
//! The record format is text, like the APTPL file (`store`), with a header of its own:
//!
//! ```text
//! ferrite-pr-change 1
//! id 5f0c2a9d11e3b7a4
//! generation 7
//! from 1 23d000000001 iqn.2026-11.io.example:node-b
//! ua registrations-preempted 1 23d000000002 iqn.2026-11.io.example:node-a
//! abort 1 23d000000002 iqn.2026-11.io.example:node-a
//! aptpl 1
//! reg 00000000000000b2 1 23d000000001 iqn.2026-11.io.example:node-b
//! resv single 5 1 23d000000001 iqn.2026-11.io.example:node-b
//! crc32c 1b2c3d4e
//! ```

use std::fmt::Write as _;

use super::state::{PrState, Who};
use super::store::{parse_who, seal, state_lines, unframe, who_fields, StateParser};
use crate::sense::SenseReason;

const MAGIC: &str = "ferrite-pr-change";
const VERSION: u32 = 1;

/// Unit attentions and aborts one change may carry at most (a change names registrations,
/// and a logical unit keeps at most `MAX_REGISTRATIONS` of them).
const MAX_EFFECTS: usize = 4 * super::MAX_REGISTRATIONS;

/// One change of a logical unit's persistent reservation state, as the cluster stores it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PrChange {
    /// Chosen by the node that made it, so it can tell its own change from another's when an
    /// answer from the store was lost.
    pub id: u64,
    /// The whole state after the change, PRGENERATION included.
    pub state: PrState,
    /// The I_T nexus the PERSISTENT RESERVE OUT came from (no unit attention for it, and its
    /// own tasks are not aborted); `None` for an operator's change.
    pub from: Option<Who>,
    /// Unit attentions to establish on every node for the I_T nexuses named.
    pub ua: Vec<(Who, SenseReason)>,
    /// PREEMPT AND ABORT: I_T nexuses whose tasks every node aborts (SPC-4 §5.13.11.2.5).
    pub abort: Vec<Who>,
}

/// Why [`SharedPr::publish`] did not make a change.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Publish {
    /// Another change came first; the local copy has caught up with it (compute again).
    Stale,
    /// The change was not made (answer BUSY: the initiator retries). An implementation whose
    /// store does not answer must find out whether the change landed before it says so, or
    /// make sure nobody hears the answer (the node fenced itself and dropped its sessions).
    Unavailable(String),
}

/// Where a logical unit's shared persistent reservation state lives (implemented by the
/// daemon over its cluster store).
pub trait SharedPr: Send + Sync {
    /// Make `change` the state if the stored one is still at `base` (the copy's revision).
    /// Blocks until the change is applied by every live node, this one included (see the module
    /// documentation); `cancelled` says the initiator gave up on the command, which ends the
    /// wait early (the change stands). Called from a thread that may block.
    /// `copy` reads the local copy's revision now (it moves as the node applies changes).
    fn publish(
        &self,
        base: u64,
        change: &PrChange,
        copy: &dyn Fn() -> u64,
        cancelled: &dyn Fn() -> bool,
    ) -> Result<(), Publish>;

    /// For logs.
    fn describe(&self) -> String;
}

/// The unit attentions a change can carry, by name in the record.
const UA_NAMES: [(SenseReason, &str); 3] = [
    (
        SenseReason::RegistrationsPreempted,
        "registrations-preempted",
    ),
    (SenseReason::ReservationsPreempted, "reservations-preempted"),
    (SenseReason::ReservationsReleased, "reservations-released"),
];

fn ua_name(r: SenseReason) -> Option<&'static str> {
    UA_NAMES.iter().find(|(x, _)| *x == r).map(|(_, n)| *n)
}

/// The record for `c`. Unit attentions other than the persistent reservation ones are left out
/// (the engine makes no others).
pub fn encode_change(c: &PrChange) -> String {
    let mut s = format!("{MAGIC} {VERSION}\n");
    let _ = writeln!(s, "id {:016x}", c.id);
    let _ = writeln!(s, "generation {}", c.state.generation);
    if let Some(f) = &c.from {
        let _ = writeln!(s, "from {}", who_fields(f));
    }
    for (w, r) in &c.ua {
        if let Some(n) = ua_name(*r) {
            let _ = writeln!(s, "ua {n} {}", who_fields(w));
        }
    }
    for w in &c.abort {
        let _ = writeln!(s, "abort {}", who_fields(w));
    }
    state_lines(&c.state, &mut s);
    seal(s)
}

/// Parse a record written by [`encode_change`]; anything unexpected is an error.
pub fn decode_change(bytes: &[u8]) -> Result<PrChange, String> {
    let body = unframe(bytes, MAGIC, VERSION)?;
    let mut id = None;
    let mut generation = None;
    let mut from = None;
    let mut ua = Vec::new();
    let mut abort = Vec::new();
    let mut state = StateParser::default();
    for (n, line) in body.lines().enumerate() {
        let f: Vec<&str> = line.split(' ').collect();
        let err = |m: String| format!("line {}: {m}", n + 2);
        if ua.len() + abort.len() > MAX_EFFECTS {
            return Err(err("too many effects".into()));
        }
        match f.as_slice() {
            ["id", v] if id.is_none() => {
                id = Some(
                    u64::from_str_radix(v, 16)
                        .ok()
                        .filter(|_| v.len() == 16)
                        .ok_or_else(|| err(format!("bad id {v:?}")))?,
                )
            }
            ["generation", v] if id.is_some() && generation.is_none() => {
                generation = Some(
                    v.parse::<u32>()
                        .map_err(|_| err(format!("bad generation {v:?}")))?,
                )
            }
            ["from", rest @ ..] if generation.is_some() && from.is_none() && ua.is_empty() => {
                from = Some(parse_who(rest).map_err(err)?)
            }
            ["ua", name, rest @ ..] if generation.is_some() && abort.is_empty() => {
                let r = UA_NAMES
                    .iter()
                    .find(|(_, n)| n == name)
                    .map(|(r, _)| *r)
                    .ok_or_else(|| err(format!("unknown unit attention {name:?}")))?;
                ua.push((parse_who(rest).map_err(err)?, r));
            }
            ["abort", rest @ ..] if generation.is_some() => {
                abort.push(parse_who(rest).map_err(err)?)
            }
            _ if generation.is_some() => {
                if !state.line(&f).map_err(err)? {
                    return Err(err(format!("unexpected record {line:?}")));
                }
            }
            _ => return Err(err(format!("unexpected record {line:?}"))),
        }
    }
    let (Some(id), Some(generation)) = (id, generation) else {
        return Err("no id or generation record".into());
    };
    let mut st = state.finish()?;
    st.generation = generation;
    Ok(PrChange {
        id,
        state: st,
        from,
        ua,
        abort,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pr::{PrType, Registration, Reservation};

    fn who(name: &str, isid: Option<u64>, port: Option<u16>) -> Who {
        Who {
            initiator: name.into(),
            isid,
            port,
        }
    }

    fn sample() -> PrChange {
        let b = who(
            "iqn.2026-11.io.example:node-b",
            Some(0x23d0_0000_0001),
            Some(1),
        );
        let a = who(
            "iqn.2026-11.io.example:node a",
            Some(0x23d0_0000_0002),
            Some(2),
        );
        PrChange {
            id: 0x5f0c_2a9d_11e3_b7a4,
            state: PrState {
                generation: 7,
                aptpl: true,
                registrations: vec![
                    Registration {
                        key: 0xB2,
                        who: b.clone(),
                    },
                    Registration {
                        key: 0xC3,
                        who: who("iqn.c", None, None),
                    },
                ],
                reservation: Some(Reservation::Single {
                    ty: PrType::WriteExclusiveRegistrantsOnly,
                    holder: b.clone(),
                }),
            },
            from: Some(b),
            ua: vec![
                (a.clone(), SenseReason::RegistrationsPreempted),
                (who("iqn.c", None, None), SenseReason::ReservationsReleased),
            ],
            abort: vec![a],
        }
    }

    #[test]
    fn round_trip() {
        let c = sample();
        let text = encode_change(&c);
        assert!(text.starts_with("ferrite-pr-change 1\nid 5f0c2a9d11e3b7a4\ngeneration 7\n"));
        assert!(text.contains("node%20a"), "{text}");
        assert_eq!(decode_change(text.as_bytes()).unwrap(), c);
        let bare = PrChange {
            id: 1,
            state: PrState::default(),
            from: None,
            ua: vec![],
            abort: vec![],
        };
        assert_eq!(
            decode_change(encode_change(&bare).as_bytes()).unwrap(),
            bare
        );
    }

    #[test]
    fn damage_is_an_error_never_a_panic() {
        let text = encode_change(&sample());
        for cut in 0..text.len() {
            assert!(decode_change(&text.as_bytes()[..cut]).is_err(), "cut {cut}");
        }
        for i in 0..text.len() {
            let mut b = text.clone().into_bytes();
            b[i] ^= 0x20;
            assert!(decode_change(&b).is_err(), "byte {i}");
        }
        // Well sealed but out of order or unknown.
        for body in [
            "ferrite-pr-change 1\ngeneration 1\nid 0000000000000001\naptpl 0\n",
            "ferrite-pr-change 1\nid 0000000000000001\naptpl 0\n",
            "ferrite-pr-change 1\nid 0000000000000001\ngeneration 1\nua bogus 1 * iqn.a\naptpl 0\n",
            "ferrite-pr-change 1\nid 0000000000000001\ngeneration 1\nabort 1 * iqn.a\nua reservations-released 1 * iqn.a\naptpl 0\n",
            "ferrite-pr-change 1\nid 0000000000000001\ngeneration x\naptpl 0\n",
            "ferrite-pr-change 1\nid 0000000000000001\ngeneration 1\n",
            "ferrite-pr-state 1\naptpl 0\n",
        ] {
            assert!(decode_change(seal(body.into()).as_bytes()).is_err(), "{body}");
        }
    }
}
