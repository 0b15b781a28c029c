//! The PERSISTENT RESERVE OUT rules (SPC-4 §5.13.7 – §5.13.11, §6.16) as one pure function
//! from (state, sending I_T nexus, decoded request) to (new state, effects) or an error.
//!
//! [`apply`] changes the state it is given only on success; the caller hands it a copy and
//! commits the copy after saving it, so an error (or a failed save) leaves nothing behind.
//!
//! Order of checks, the same for every service action: the sending I_T nexus must be
//! registered (except for the REGISTER family) and its RESERVATION KEY must match (RESERVATION
//! CONFLICT), then the fields the service action uses are validated (ILLEGAL REQUEST), then the
//! state decides.

use crate::cdb::{bad_cdb, bad_param, Fail};
use crate::sense::{Sense, SenseReason};
use crate::{Nexus, ScsiStatus};

use super::codec::{OutAction, OutRequest, LU_SCOPE};
use super::state::{PrState, PrType, Registration, Reservation, Who};

/// The knobs the rules depend on.
#[derive(Clone, Copy, Debug)]
pub struct Rules {
    /// A registration matches every ISID of its initiator name (LU option).
    pub name_only: bool,
    /// Registrations one logical unit keeps at most.
    pub max_registrations: usize,
    /// A store is attached, so APTPL can be honoured (PTPL_C = 1).
    pub ptpl_capable: bool,
}

/// What the caller must do once the new state is committed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Effects {
    /// Unit attentions to establish for the I_T nexuses each [`Who`] names — never for the
    /// I_T nexus the command came from (SPC-4 establishes none there).
    pub ua: Vec<(Who, SenseReason)>,
    /// I_T nexuses whose tasks PREEMPT AND ABORT aborts (SPC-4 §5.13.11.2.5).
    pub abort: Vec<Who>,
    /// The state changed: save it (when APTPL says so) before completing the command.
    pub changed: bool,
}

fn conflict() -> Fail {
    Fail::Status(ScsiStatus::RESERVATION_CONFLICT)
}

/// CDB byte 2: SCOPE (bits 7..4) must be LU_SCOPE and TYPE (bits 3..0) a known type.
fn scope_and_type(req: &OutRequest) -> Result<PrType, Fail> {
    if req.scope != LU_SCOPE {
        return Err(bad_cdb(2, Some(7)));
    }
    PrType::from_code(req.type_code).ok_or_else(|| bad_cdb(2, Some(3)))
}

fn param_at(offset: usize) -> Fail {
    bad_param(u16::try_from(offset).unwrap_or(u16::MAX), None)
}

/// Apply one PERSISTENT RESERVE OUT command from `from` to `st`.
pub fn apply(
    st: &mut PrState,
    rules: &Rules,
    from: &Nexus,
    req: &OutRequest,
) -> Result<Effects, Fail> {
    let me = st.find(from, rules.name_only);
    let ignore_key = req.action == OutAction::RegisterAndIgnoreExistingKey;
    match (req.action, me) {
        (OutAction::Register | OutAction::RegisterAndIgnoreExistingKey, None) => {
            // SPC-4 §5.13.7, register behaviours for an unregistered I_T nexus: REGISTER needs RESERVATION
            // KEY zero; REGISTER AND IGNORE EXISTING KEY does not look at it.
            if !ignore_key && req.key != 0 {
                return Err(conflict());
            }
            register_new(st, rules, from, req)
        }
        (OutAction::Register | OutAction::RegisterAndIgnoreExistingKey, Some(i)) => {
            // SPC-4 §5.13.7, register behaviours for a registered I_T nexus.
            if !ignore_key && req.key != st.registrations[i].key {
                return Err(conflict());
            }
            if req.aptpl && !rules.ptpl_capable {
                return Err(bad_param(20, Some(0)));
            }
            if req.spec_i_pt {
                // SPC-4 §5.13.7: SPEC_I_PT = 1 from a registered I_T nexus is INVALID FIELD IN CDB
                // (no field pointer: the bit is in the parameter list, not the CDB).
                return Err(Fail::Check(Sense::new(SenseReason::InvalidFieldInCdb)));
            }
            let mut fx = Effects {
                changed: true,
                ..Effects::default()
            };
            if req.sa_key == 0 {
                unregister(st, rules, i, &mut fx);
            } else {
                st.registrations[i].key = req.sa_key;
            }
            st.aptpl = req.aptpl;
            st.generation = st.generation.wrapping_add(1);
            Ok(fx)
        }
        // SPC-4 §5.13.1 (PERSISTENT RESERVE OUT service actions allowed in the presence of
        // reservations): every other service action from an I_T nexus that is not
        // registered conflicts, and so does a RESERVATION KEY other than its own (§6.16.3).
        (_, None) => Err(conflict()),
        (_, Some(i)) if req.key != st.registrations[i].key => Err(conflict()),
        (OutAction::Reserve, Some(_)) => reserve(st, rules, from, req),
        (OutAction::Release, Some(_)) => release(st, rules, from, req),
        (OutAction::Clear, Some(_)) => Ok(clear(st)),
        (OutAction::Preempt, Some(i)) => preempt(st, rules, from, i, req, false),
        (OutAction::PreemptAndAbort, Some(i)) => preempt(st, rules, from, i, req, true),
        (OutAction::RegisterAndMove, Some(i)) => register_and_move(st, rules, from, i, req),
    }
}

/// REGISTER / REGISTER AND IGNORE EXISTING KEY from an unregistered I_T nexus (SPC-4 §5.13.7).
fn register_new(
    st: &mut PrState,
    rules: &Rules,
    from: &Nexus,
    req: &OutRequest,
) -> Result<Effects, Fail> {
    if req.sa_key == 0 {
        // SPC-4 §5.13.7: "do nothing except return GOOD status".
        return Ok(Effects::default());
    }
    // SPC-4 §6.16.3: APTPL = 1 where persistence is not possible (PTPL_C = 0).
    if req.aptpl && !rules.ptpl_capable {
        return Err(bad_param(20, Some(0)));
    }
    let name_only = rules.name_only;
    // ALL_TG_PT = 1: the I_T nexuses of this initiator port with every target port.
    let port = (!req.all_tg_pt).then_some(from.target_port.relative_port_id);
    let me = Who {
        initiator: from.initiator_name.clone(),
        isid: Some(from.isid),
        port,
    };
    if st
        .registrations
        .iter()
        .any(|r| r.who.overlaps(&me, name_only))
    {
        // Some of the I_T nexuses ALL_TG_PT names are registered already.
        return Err(bad_param(20, Some(2)));
    }
    let mut new = vec![me];
    // SPC-4 §5.13.7 / §6.16.3: SPEC_I_PT = 1 registers the initiator ports of the
    // TransportIDs as well (with the same target port, or every one with ALL_TG_PT), all or
    // nothing.
    for t in &req.transport_ids {
        let w = Who {
            initiator: t.name.clone(),
            isid: t.isid,
            port,
        };
        if st
            .registrations
            .iter()
            .any(|r| r.who.overlaps(&w, name_only))
        {
            // An I_T nexus named by the TransportID is registered already.
            return Err(param_at(t.offset));
        }
        if new.iter().any(|n| n.covers(&w, name_only)) {
            continue; // already part of this registration
        }
        new.retain(|n| !w.covers(n, name_only));
        if new.iter().any(|n| n.overlaps(&w, name_only)) {
            return Err(param_at(t.offset));
        }
        new.push(w);
    }
    if st.registrations.len() + new.len() > rules.max_registrations {
        return Err(SenseReason::InsufficientRegistrationResources.into());
    }
    st.registrations
        .extend(new.into_iter().map(|who| Registration {
            key: req.sa_key,
            who,
        }));
    st.aptpl = req.aptpl;
    st.generation = st.generation.wrapping_add(1);
    Ok(Effects {
        changed: true,
        ..Effects::default()
    })
}

/// Remove registration `i` (SPC-4 §5.13.11.3): the reservation goes with it if it was the
/// holder's (for the All Registrants types: if it was the last registration).
fn unregister(st: &mut PrState, rules: &Rules, i: usize, fx: &mut Effects) {
    st.registrations.remove(i);
    let holder_gone = match &st.reservation {
        Some(Reservation::Single { holder, .. }) => {
            st.find_covering(holder, rules.name_only).is_none()
        }
        Some(Reservation::AllRegistrants { .. }) => st.registrations.is_empty(),
        None => false,
    };
    if !holder_gone {
        return;
    }
    if let Some(res) = st.reservation.take() {
        // SPC-4 §5.13.11.3: releasing a Registrants Only reservation by unregistering tells
        // every other registrant RESERVATIONS RELEASED.
        if res.ty().registrants_only() {
            for r in &st.registrations {
                fx.ua
                    .push((r.who.clone(), SenseReason::ReservationsReleased));
            }
        }
    }
}

/// RESERVE (SPC-4 §5.13.9).
fn reserve(
    st: &mut PrState,
    rules: &Rules,
    from: &Nexus,
    req: &OutRequest,
) -> Result<Effects, Fail> {
    let ty = scope_and_type(req)?;
    match &st.reservation {
        None => {
            st.reservation = Some(Reservation::new(ty, Who::exact(from)));
            // RESERVE does not change PRGENERATION (SPC-4 §6.15.2), but the reservation is
            // part of what APTPL preserves.
            Ok(Effects {
                changed: true,
                ..Effects::default()
            })
        }
        // The holder reserving again with the same type and scope: nothing to do.
        Some(res) if st.is_holder(from, rules.name_only) && res.ty() == ty => {
            Ok(Effects::default())
        }
        Some(_) => Err(conflict()),
    }
}

/// RELEASE (SPC-4 §5.13.11.2).
fn release(
    st: &mut PrState,
    rules: &Rules,
    from: &Nexus,
    req: &OutRequest,
) -> Result<Effects, Fail> {
    let Some(res) = &st.reservation else {
        return Ok(Effects::default());
    };
    if !st.is_holder(from, rules.name_only) {
        // A registered I_T nexus that does not hold it: GOOD, nothing released.
        return Ok(Effects::default());
    }
    let ty = res.ty();
    if req.scope != LU_SCOPE || req.type_code != ty.code() {
        return Err(SenseReason::InvalidReleaseOfPersistentReservation.into());
    }
    st.reservation = None;
    let mut fx = Effects {
        changed: true,
        ..Effects::default()
    };
    // Registrants Only and All Registrants: every other registered I_T nexus learns
    // RESERVATIONS RELEASED (none for Write Exclusive / Exclusive Access).
    if !matches!(ty, PrType::WriteExclusive | PrType::ExclusiveAccess) {
        for r in &st.registrations {
            fx.ua
                .push((r.who.clone(), SenseReason::ReservationsReleased));
        }
    }
    Ok(fx)
}

/// CLEAR (SPC-4 §5.13.11.2.6): every registration and the reservation go; every other
/// registered I_T nexus learns RESERVATIONS PREEMPTED.
fn clear(st: &mut PrState) -> Effects {
    let ua = st
        .registrations
        .drain(..)
        .map(|r| (r.who, SenseReason::ReservationsPreempted))
        .collect();
    st.reservation = None;
    st.generation = st.generation.wrapping_add(1);
    Effects {
        ua,
        abort: Vec::new(),
        changed: true,
    }
}

/// PREEMPT and PREEMPT AND ABORT (SPC-4 §5.13.11.2.4, §5.13.11.2.5). `me` is the sender's
/// registration.
fn preempt(
    st: &mut PrState,
    rules: &Rules,
    from: &Nexus,
    me: usize,
    req: &OutRequest,
    abort: bool,
) -> Result<Effects, Fail> {
    let sark = req.sa_key;
    // The registrations SERVICE ACTION RESERVATION KEY names, never the sender's own.
    let named = |st: &PrState| -> Vec<usize> {
        (0..st.registrations.len())
            .filter(|&j| j != me && st.registrations[j].key == sark)
            .collect()
    };
    let any_with_key = st.registrations.iter().any(|r| r.key == sark);
    // What happens to the reservation: Some(type) = it is taken over by the sender.
    let take_over: Option<PrType> = match &st.reservation {
        None => {
            if sark == 0 {
                return Err(bad_param(8, None));
            }
            if !any_with_key {
                return Err(conflict());
            }
            None
        }
        Some(Reservation::AllRegistrants { .. }) => {
            if sark == 0 {
                // Every other registration goes and the sender takes the reservation.
                Some(scope_and_type(req)?)
            } else if !any_with_key {
                return Err(conflict());
            } else {
                None
            }
        }
        Some(Reservation::Single { holder, .. }) => {
            if sark == 0 {
                return Err(bad_param(8, None));
            }
            let holder_key = st
                .registrations
                .iter()
                .find(|r| r.who.covers(holder, rules.name_only))
                .map(|r| r.key);
            if holder_key == Some(sark) {
                Some(scope_and_type(req)?)
            } else if !any_with_key {
                return Err(conflict());
            } else {
                None
            }
        }
    };
    let removed: Vec<usize> = match (&st.reservation, take_over) {
        (Some(Reservation::AllRegistrants { .. }), Some(_)) if sark == 0 => {
            (0..st.registrations.len()).filter(|&j| j != me).collect()
        }
        _ => named(st),
    };
    let old_ty = st.reservation.as_ref().map(Reservation::ty);
    let mut fx = Effects {
        changed: true,
        ..Effects::default()
    };
    let mut gone = Vec::with_capacity(removed.len());
    for &j in removed.iter().rev() {
        gone.push(st.registrations.remove(j));
    }
    gone.reverse();
    for g in &gone {
        fx.ua
            .push((g.who.clone(), SenseReason::RegistrationsPreempted));
        if abort {
            fx.abort.push(g.who.clone());
        }
    }
    if let Some(ty) = take_over {
        st.reservation = Some(Reservation::new(ty, Who::exact(from)));
        // The type changed: every I_T nexus still registered learns RESERVATIONS RELEASED.
        if old_ty != Some(ty) {
            for r in &st.registrations {
                fx.ua
                    .push((r.who.clone(), SenseReason::ReservationsReleased));
            }
        }
    }
    st.generation = st.generation.wrapping_add(1);
    Ok(fx)
}

/// REGISTER AND MOVE (SPC-4 §5.13.8): register the I_T nexus the parameter list names with
/// SERVICE ACTION RESERVATION KEY, make it the holder, optionally unregister the sender.
fn register_and_move(
    st: &mut PrState,
    rules: &Rules,
    from: &Nexus,
    me: usize,
    req: &OutRequest,
) -> Result<Effects, Fail> {
    let name_only = rules.name_only;
    let ty = match &st.reservation {
        Some(Reservation::Single { ty, holder }) if holder.matches(from, name_only) => *ty,
        // Not the holder, no reservation, or an All Registrants type.
        _ => return Err(conflict()),
    };
    if req.sa_key == 0 {
        return Err(bad_param(8, None));
    }
    if req.aptpl && !rules.ptpl_capable {
        return Err(bad_param(17, Some(0)));
    }
    let Some(tid) = &req.move_to else {
        return Err(param_at(24));
    };
    if req.move_port == 0 {
        return Err(bad_param(18, None));
    }
    let dest = Who {
        initiator: tid.name.clone(),
        isid: tid.isid,
        port: Some(req.move_port),
    };
    // The destination must be another I_T nexus than the sender's (and not one its own
    // registration already stands for).
    if st.registrations[me].who.overlaps(&dest, name_only) {
        return Err(param_at(tid.offset));
    }
    match st.find_covering(&dest, name_only) {
        Some(j) => st.registrations[j].key = req.sa_key,
        None => {
            if st
                .registrations
                .iter()
                .any(|r| r.who.overlaps(&dest, name_only))
            {
                return Err(param_at(tid.offset));
            }
            if st.registrations.len() >= rules.max_registrations {
                return Err(SenseReason::InsufficientRegistrationResources.into());
            }
            st.registrations.push(Registration {
                key: req.sa_key,
                who: dest.clone(),
            });
        }
    }
    st.reservation = Some(Reservation::Single { ty, holder: dest });
    if req.unreg {
        st.registrations.remove(me);
    }
    st.aptpl = req.aptpl;
    st.generation = st.generation.wrapping_add(1);
    Ok(Effects {
        changed: true,
        ..Effects::default()
    })
}
