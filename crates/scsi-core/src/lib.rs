//! SCSI target core: the device server for disk logical units (SPC-4, SBC-4).
//!
//! The iSCSI layer hands a [`ScsiRequest`] (I_T nexus, LUN, CDB, data-out bytes) to
//! [`DeviceServer::execute`] and gets a [`ScsiResponse`] (status, sense, data-in bytes) back.
//! Nothing here knows about PDUs, sockets or clocks.
//!
//! Layers: a module imports only modules on lower lines (among the handlers, only along the
//! arrows shown) and the crate root's types such as [`ScsiRequest`] and [`Nexus`];
//! `tests/module_graph.rs` fails if modules import each other in a circle again.
//!
//! ```text
//! server        DeviceServer (one initiator's LUN map onto a target device): dispatch (UA,
//!   |           reservation and CDB checks), resets; carries out the effects handlers leave
//!   |           (PREEMPT AND ABORT: the device's TaskAborter, then drain)
//! opcodes       the opcode table, naming every handler; REPORT SUPPORTED OPERATION CODES
//!   |
//! handlers      format, sanitize -> medium (sanitize / format runs, journal records) -> sbc;
//!   |           spc -> reservations, vpd, sbc; xcopy -> sbc; mode, log, media;
//!   |           reservations: PERSISTENT RESERVE IN / OUT, dispatch's conflict check;
//!   |           tpgs: REPORT / SET TARGET PORT GROUPS
//! cmd           Cmd (a command as handlers see it), Effect (what they leave to the server),
//!   |           io_fail
//! luns          LUN field encoding, LunMap (the LUN inventory handlers may read)
//!   |
//! device        TargetDevice: target ports, logical units, target-wide resets, the aborter,
//!   |           ALUA target port groups (their changes' unit attentions)
//! lu            LogicalUnit: configuration, backstore, and the state it owns (mode parameters,
//!   |           unit attentions, SPC-2 and persistent reservations, range locks, medium and
//!   |           operation state, held copy results, its task set)
//! pr            persistent reservations: rules, engine, wire formats, stores (no LU in sight)
//!   |
//! ua, journal,  unit attentions per I_T nexus; where an operation is recorded; the task set
//! task_set,     (SAM-5 §8.6) every I_T nexus shares; ALUA target port groups and access
//! alua          states (SPC-4 §5.16), the model and its wire formats
//!   |
//! cdb, sense,   leaves: byte views and handler results (cdb); the one table from SenseReason
//! locks,        to sense key / ASC / ASCQ (sense); LBA range locks; durable file writes
//! durable
//! ```

use std::sync::atomic::AtomicBool;
use std::sync::Arc;

mod alua;
mod cdb;
mod cmd;
mod device;
use backstore::durable;
mod format;
mod journal;
mod locks;
mod log;
mod lu;
mod luns;
mod media;
mod medium;
mod mode;
mod opcodes;
mod pr;
mod reservations;
mod sanitize;
mod sbc;
pub mod sense;
mod server;
mod spc;
mod task_set;
mod tpgs;
mod ua;
mod vpd;
mod xcopy;

#[cfg(test)]
mod tests;

pub use alua::ALL_SUPPORTED as ALUA_ALL_SUPPORTED;
pub use alua::{status as alua_status, AccessState, AluaGroup, Change as AluaChange, GroupStatus};
pub use device::{AluaObserver, TargetDevice, TaskAborter};
pub use journal::{FileOpJournal, OpJournal};
pub use lu::{fnv1a64, limits, naa_from_name, ConfigError, LogicalUnit, LuConfig, NAA_COMPANY_ID};
pub use luns::{lun_from_wire, lun_to_wire, AddLunError, MAX_FLAT_LUN, MAX_LUN};
pub use medium::Resume;
pub use pr::{
    decode_change, encode_change, FilePrStore, MemPrStore, PrChange, PrState, PrStore, PrType,
    Publish, Registration, Reservation, SharedPr, Who, MAX_REGISTRATIONS,
};
pub use sense::{Sense, SenseReason};
pub use server::DeviceServer;
pub use task_set::{TaskEntry, TaskSet, TaskWaker};
pub use vpd::target_port_name;

/// SAM-5 status codes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ScsiStatus(pub u8);
impl ScsiStatus {
    pub const GOOD: Self = Self(0x00);
    pub const CHECK_CONDITION: Self = Self(0x02);
    pub const CONDITION_MET: Self = Self(0x04);
    pub const BUSY: Self = Self(0x08);
    pub const RESERVATION_CONFLICT: Self = Self(0x18);
    pub const TASK_SET_FULL: Self = Self(0x28);
    pub const ACA_ACTIVE: Self = Self(0x30);
    pub const TASK_ABORTED: Self = Self(0x40);
}

/// The identity of the target port a command arrived through (SPC-4 §3.1.121).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct TargetPort {
    /// iSCSI target name.
    pub target_name: String,
    /// Target portal group tag (also the iSCSI "target port" identity: name + ",t,0x" + tag).
    pub tpg_tag: u16,
    /// Relative target port identifier (SPC-4 §7.8.6.x), 1-based.
    pub relative_port_id: u16,
}

/// An I_T nexus: one initiator port talking through one target port.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Nexus {
    /// iSCSI initiator name (iqn./eui./naa.).
    pub initiator_name: String,
    /// ISID, 6 bytes, as a number.
    pub isid: u64,
    pub target_port: Arc<TargetPort>,
}

/// SAM task attribute, from the iSCSI SCSI Command PDU ATTR field.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TaskAttr {
    Untagged,
    Simple,
    Ordered,
    HeadOfQueue,
    Aca,
}

/// One SCSI command as the transport delivers it.
#[derive(Debug)]
pub struct ScsiRequest<'a> {
    pub nexus: &'a Nexus,
    /// The 8-byte LUN field exactly as it came off the wire (SAM-5 §4.7 encoding).
    pub lun: u64,
    /// The CDB (16 bytes from the BHS, or longer with an extended-CDB AHS); trailing padding is fine.
    pub cdb: &'a [u8],
    /// Data-out bytes received from the initiator (at most its Expected Data Transfer Length).
    pub data_out: &'a [u8],
    /// The initiator's Expected Data Transfer Length for data-in (0 when no data-in is expected).
    pub expected_data_in: u32,
    pub attr: TaskAttr,
    /// Set by the transport when the task is aborted (ABORT TASK and the like) while it runs:
    /// a command that waits long (SANITIZE with IMMED = 0) gives up and returns.
    pub cancel: Option<&'a AtomicBool>,
}

/// The device server's answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScsiResponse {
    pub status: ScsiStatus,
    /// Fixed-format sense data (SPC-4 §4.5.3), empty unless status is CHECK CONDITION.
    pub sense: Vec<u8>,
    /// Data-in bytes the command produced (already cut to the CDB's allocation length; the
    /// transport cuts further to the initiator's expected length and reports the residual).
    pub data_in: Vec<u8>,
    /// Bytes the CDB asked to transfer in the data-out direction (e.g. TRANSFER LENGTH × block
    /// size for WRITE). The transport compares it with the Expected Data Transfer Length to set
    /// residual overflow/underflow (RFC 7143 §11.4.5.1). 0 for commands without data-out.
    pub data_out_len: u32,
}
