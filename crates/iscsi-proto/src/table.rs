//! The session table of one target node: TSIH allocation, session reinstatement and the rules
//! for adding a connection to a session (RFC 7143 §4.4.3, §6.3, §11.12.6), sans-IO.
//!
//! A session is identified on the wire by its TSIH and, for reinstatement, by its initiator
//! port (initiator name + ISID) and target port (target name + portal group tag): a leading
//! login from the same initiator port to the same target port replaces the old session
//! (RFC 7143 §6.3.5). A TSIH is never handed out while a session (normal or discovery) still
//! holds it, so a late login naming an old TSIH cannot land in a stranger's session.
//!
//! The table holds the caller's data `S` for every normal session; discovery sessions only
//! hold their TSIH (they are never joined or reinstated).

use std::collections::{BTreeSet, HashMap, HashSet};

use iscsi_wire::LoginStatus;

/// Initiator port and target port of a normal session (RFC 7143 §4.4.3).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct SessionKey {
    pub initiator: String,
    pub isid: u64,
    pub target: String,
    pub tpgt: u16,
}

/// A leading login that was admitted.
#[derive(Debug)]
pub struct Opened<S> {
    pub tsih: u16,
    /// The session of the same initiator port and target port that this one reinstates, with
    /// its TSIH: the caller ends it.
    pub reinstated: Option<(u16, S)>,
}

/// How a login with a non-zero TSIH enters its session.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Joined {
    /// A new connection of the session (MC/S).
    Added,
    /// Its CID is in use: the connection replaces that one (connection reinstatement, RFC 7143
    /// §6.3.4); the caller ends the old connection.
    Replaces,
}

#[derive(Debug)]
struct Slot<S> {
    key: SessionKey,
    cids: BTreeSet<u16>,
    max_connections: u32,
    data: S,
}

/// Every session of one target node.
#[derive(Debug)]
pub struct SessionTable<S> {
    sessions: HashMap<u16, Slot<S>>,
    by_port: HashMap<SessionKey, u16>,
    discovery: HashSet<u16>,
    next: u16,
}

impl<S> Default for SessionTable<S> {
    fn default() -> Self {
        SessionTable {
            sessions: HashMap::new(),
            by_port: HashMap::new(),
            discovery: HashSet::new(),
            next: 1,
        }
    }
}

impl<S> SessionTable<S> {
    pub fn new() -> Self {
        Self::default()
    }

    /// A TSIH no session holds (RFC 7143 §11.12.6: never 0).
    fn alloc(&mut self) -> Option<u16> {
        for _ in 0..=u16::MAX {
            let t = self.next;
            self.next = self.next.wrapping_add(1);
            if t != 0 && !self.sessions.contains_key(&t) && !self.discovery.contains(&t) {
                return Some(t);
            }
        }
        None
    }

    /// A leading login (TSIH 0) of a normal session: a new TSIH, and the old session of the
    /// same initiator port and target port taken out of the table (RFC 7143 §6.3.5).
    pub fn open(
        &mut self,
        key: SessionKey,
        cid: u16,
        max_connections: u32,
        data: S,
    ) -> Result<Opened<S>, LoginStatus> {
        let reinstated = self
            .by_port
            .get(&key)
            .copied()
            .and_then(|old| self.remove(old).map(|d| (old, d)));
        // RFC 7143 §11.13.5: no TSIH free is "out of resources".
        let tsih = self.alloc().ok_or(LoginStatus::OUT_OF_RESOURCES)?;
        self.by_port.insert(key.clone(), tsih);
        self.sessions.insert(
            tsih,
            Slot {
                key,
                cids: BTreeSet::from([cid]),
                max_connections: max_connections.max(1),
                data,
            },
        );
        Ok(Opened { tsih, reinstated })
    }

    /// A login naming session `tsih` (RFC 7143 §6.3.4, §11.12.6): it must exist and belong to
    /// the same initiator port and target port (so also the same portal group: a session's
    /// connections all go through one); a new CID must fit MaxConnections.
    pub fn join(&mut self, key: &SessionKey, tsih: u16, cid: u16) -> Result<Joined, LoginStatus> {
        let Some(slot) = self.sessions.get_mut(&tsih).filter(|s| s.key == *key) else {
            return Err(LoginStatus::SESSION_DOES_NOT_EXIST);
        };
        if slot.cids.contains(&cid) {
            return Ok(Joined::Replaces);
        }
        if slot.cids.len() as u32 >= slot.max_connections {
            return Err(LoginStatus::TOO_MANY_CONNECTIONS);
        }
        slot.cids.insert(cid);
        Ok(Joined::Added)
    }

    /// Connection `cid` of session `tsih` is gone. Returns the session's data when that was
    /// its last connection (the session is gone too).
    pub fn leave(&mut self, tsih: u16, cid: u16) -> Option<S> {
        let slot = self.sessions.get_mut(&tsih)?;
        slot.cids.remove(&cid);
        if slot.cids.is_empty() {
            self.remove(tsih)
        } else {
            None
        }
    }

    /// Connections session `tsih` has (0: no such session).
    pub fn connections(&self, tsih: u16) -> usize {
        self.sessions.get(&tsih).map_or(0, |s| s.cids.len())
    }

    /// Take session `tsih` out of the table.
    pub fn remove(&mut self, tsih: u16) -> Option<S> {
        let slot = self.sessions.remove(&tsih)?;
        if self.by_port.get(&slot.key) == Some(&tsih) {
            self.by_port.remove(&slot.key);
        }
        Some(slot.data)
    }

    /// A TSIH for a discovery session; `None` when every TSIH is in use.
    pub fn open_discovery(&mut self) -> Option<u16> {
        let t = self.alloc()?;
        self.discovery.insert(t);
        Some(t)
    }

    pub fn close_discovery(&mut self, tsih: u16) {
        self.discovery.remove(&tsih);
    }

    pub fn get(&self, tsih: u16) -> Option<&S> {
        self.sessions.get(&tsih).map(|s| &s.data)
    }

    pub fn get_mut(&mut self, tsih: u16) -> Option<&mut S> {
        self.sessions.get_mut(&tsih).map(|s| &mut s.data)
    }

    /// Every normal session: TSIH, initiator port and target port, data.
    pub fn iter(&self) -> impl Iterator<Item = (u16, &SessionKey, &S)> {
        self.sessions.iter().map(|(t, s)| (*t, &s.key, &s.data))
    }

    /// Normal sessions.
    pub fn len(&self) -> usize {
        self.sessions.len()
    }

    pub fn is_empty(&self) -> bool {
        self.sessions.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(initiator: &str, isid: u64, tpgt: u16) -> SessionKey {
        SessionKey {
            initiator: initiator.into(),
            isid,
            target: "iqn.2026-11.io.ferrite:t".into(),
            tpgt,
        }
    }

    #[test]
    fn a_leading_login_from_the_same_ports_reinstates() {
        let mut t = SessionTable::new();
        let a = t.open(key("i", 1, 1), 0, 1, "first").unwrap();
        assert!(a.reinstated.is_none());
        // Another ISID, or another portal group, is another session.
        let b = t.open(key("i", 2, 1), 0, 1, "other isid").unwrap();
        let c = t.open(key("i", 1, 2), 0, 1, "other group").unwrap();
        assert!(b.reinstated.is_none() && c.reinstated.is_none());
        let d = t.open(key("i", 1, 1), 0, 1, "second").unwrap();
        assert_eq!(d.reinstated, Some((a.tsih, "first")));
        assert_ne!(d.tsih, a.tsih);
        assert_eq!(t.len(), 3);
        assert_eq!(t.get(d.tsih), Some(&"second"));
    }

    #[test]
    fn joining_follows_the_rfc_rules() {
        let mut t = SessionTable::new();
        let s = t.open(key("i", 1, 1), 0, 2, ()).unwrap().tsih;
        // RFC 7143 §11.13.5 (0x020a): no such session, or one of another initiator port or
        // portal group.
        for (k, tsih) in [
            (key("i", 1, 1), s.wrapping_add(1)),
            (key("j", 1, 1), s),
            (key("i", 2, 1), s),
            (key("i", 1, 2), s),
        ] {
            assert_eq!(
                t.join(&k, tsih, 5),
                Err(LoginStatus::SESSION_DOES_NOT_EXIST)
            );
        }
        assert_eq!(t.join(&key("i", 1, 1), s, 0), Ok(Joined::Replaces));
        assert_eq!(t.join(&key("i", 1, 1), s, 1), Ok(Joined::Added));
        // MaxConnections = 2 (0x0206).
        assert_eq!(
            t.join(&key("i", 1, 1), s, 2),
            Err(LoginStatus::TOO_MANY_CONNECTIONS)
        );
        assert_eq!(t.leave(s, 0), None, "one connection left");
        assert_eq!(t.join(&key("i", 1, 1), s, 2), Ok(Joined::Added));
        assert_eq!(t.leave(s, 1), None);
        assert_eq!(
            t.leave(s, 2),
            Some(()),
            "the last connection ends the session"
        );
        assert!(t.is_empty());
    }

    #[test]
    fn a_tsih_in_use_is_never_handed_out_again() {
        let mut t = SessionTable::new();
        let keep = t.open(key("i", 0, 1), 0, 1, ()).unwrap().tsih;
        let disc = t.open_discovery().unwrap();
        // Go round the whole TSIH space: the two held TSIHs are skipped every time.
        for i in 1..=70_000u64 {
            let o = t.open(key("i", i, 1), 0, 1, ()).unwrap();
            assert!(o.tsih != 0 && o.tsih != keep && o.tsih != disc);
            t.remove(o.tsih);
        }
        t.close_discovery(disc);
        assert_eq!(t.len(), 1);
    }

    #[test]
    fn a_full_table_is_out_of_resources() {
        let mut t = SessionTable::new();
        for i in 0..u64::from(u16::MAX) {
            t.open(key("i", i, 1), 0, 1, ()).unwrap();
        }
        assert_eq!(t.open_discovery(), None);
        assert_eq!(
            t.open(key("j", 0, 1), 0, 1, ()).err(),
            Some(LoginStatus::OUT_OF_RESOURCES)
        );
        // A reinstating login frees its old TSIH first.
        assert!(t.open(key("i", 7, 1), 0, 1, ()).is_ok());
    }
}
