//! Sans-IO iSCSI target engines (RFC 7143): login and negotiation, the full feature phase of a
//! connection and its session (CmdSN window, tasks, R2T, Data-In), discovery, task management
//! and logout.
//!
//! Nothing here touches sockets, timers or threads. The driver (the `ferrite` daemon, or a test)
//! feeds received PDUs and the current time in, executes the SCSI tasks the engine hands out,
//! feeds their outcomes back, and sends whatever `poll_transmit` yields. Given the same inputs
//! the engines produce the same outputs, so every rule here is testable byte for byte.

pub mod budget;
pub mod chap;
pub mod conn;
pub mod login;
pub mod params;
pub mod serial;
pub mod session;
pub mod table;

use std::sync::Arc;

use iscsi_wire::Header;

pub use conn::{AbortedTasks, ConnEvent, Connection, ScsiTask, TaskId, TaskOutcome, TmfAction};
pub use login::{Access, AuthPolicy, Directory, Login, LoginResult, LoginStep, SessionKind};
pub use params::{Negotiated, TargetOffer};
pub use session::{SessionHandle, SessionObserver, TaskSetEntry, TaskSets};

/// The data segment of an outgoing PDU. `Shared` lets several Data-In PDUs point into one
/// buffer the device server filled, without copying it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Payload {
    Empty,
    Owned(Vec<u8>),
    Shared {
        buf: Arc<budget::SharedBuf>,
        start: usize,
        len: usize,
    },
}

impl Payload {
    pub fn as_slice(&self) -> &[u8] {
        match self {
            Payload::Empty => &[],
            Payload::Owned(v) => v,
            Payload::Shared { buf, start, len } => &buf[*start..*start + *len],
        }
    }
    pub fn len(&self) -> usize {
        self.as_slice().len()
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A PDU ready to be framed and sent, with the digest settings in force for it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OutPdu {
    pub header: Header,
    pub data: Payload,
    pub header_digest: bool,
    pub data_digest: bool,
}

impl OutPdu {
    /// Frame into `out` (BHS, header digest, padded data, data digest).
    pub fn encode(&self, out: &mut Vec<u8>) {
        iscsi_wire::frame::encode(
            &self.header,
            &[],
            self.data.as_slice(),
            self.header_digest,
            self.data_digest,
            out,
        );
    }
}
