//! Builders for the PDUs an initiator sends (RFC 7143 §11), as `iscsi_wire` values.
//!
//! Each builder fills the fields a test rarely cares about with a sensible default (LUN 0,
//! ExpStatSN 0, the reserved Target Transfer Tag, F = 1, task attribute SIMPLE) and takes the
//! ones it usually does; anything else is set with struct update syntax:
//!
//! ```
//! use iscsi_wire::ScsiCommand;
//! use testkit::pdu::{self, Request};
//!
//! let cmd = ScsiCommand { immediate: true, ..pdu::read10(0x10, 100, 0, 8, 512) };
//! let raw = cmd.raw(&[]); // what the daemon's decoder would hand the engine
//! assert_eq!(raw.bhs[0], 0x41);
//! ```

use iscsi_wire::frame::{encode_bhs_lengths, RawPdu};
use iscsi_wire::{text, Header, Stage, RESERVED_TAG};
use iscsi_wire::{DataOut, LoginRequest, LogoutRequest, NopOut, ScsiCommand};
use iscsi_wire::{LogoutReason, SnackRequest, TaskMgmtRequest, TextRequest, TmfFunction};

/// The ISID the builders use (RFC 7143 §11.12.5: type 10b, random qualifier).
pub const ISID: u64 = 0x8000_0000_0001;
/// The CmdSN a login starts the session at unless told otherwise.
pub const FIRST_CMD_SN: u32 = 100;
/// Task attribute SIMPLE (RFC 7143 §11.3.1).
pub const SIMPLE: u8 = 1;

/// SNACK types (RFC 7143 §11.16.1).
pub const SNACK_DATA_R2T: u8 = 0;
pub const SNACK_STATUS: u8 = 1;
pub const SNACK_DATA_ACK: u8 = 2;
pub const SNACK_R_DATA: u8 = 3;

/// A request header as the engine receives it: its length fields set for `data` and no AHS,
/// as `iscsi_wire::frame::Decoder` hands it over.
pub fn raw(h: &Header, data: &[u8]) -> RawPdu {
    raw_with_ahs(h, Vec::new(), data)
}

/// [`raw`] with an AHS area (a multiple of 4 bytes, as `iscsi_wire::ahs`'s encoders give).
pub fn raw_with_ahs(h: &Header, ahs: Vec<u8>, data: &[u8]) -> RawPdu {
    let mut bhs = h.emit();
    encode_bhs_lengths(&mut bhs, ahs.len(), data.len());
    RawPdu {
        bhs,
        ahs,
        data: data.to_vec(),
    }
}

/// The initiator PDU types, each of which becomes a [`Header`].
pub trait Request: Sized {
    fn into_header(self) -> Header;

    /// This PDU with `data` as its data segment, ready for `Connection::handle_pdu`.
    fn raw(self, data: &[u8]) -> RawPdu {
        raw(&self.into_header(), data)
    }
}

macro_rules! request {
    ($($t:ident),*) => {
        $(impl Request for $t {
            fn into_header(self) -> Header {
                Header::$t(self)
            }
        })*
    };
}

request!(
    LoginRequest,
    ScsiCommand,
    DataOut,
    NopOut,
    TextRequest,
    LogoutRequest,
    SnackRequest,
    TaskMgmtRequest
);

/// A Login Request from stage `csg` to `nsg` with T = 1 (RFC 7143 §11.12): ISID [`ISID`], TSIH 0
/// (a new session), CID 0, ITT 1, CmdSN [`FIRST_CMD_SN`], ExpStatSN 0, version 0.
pub fn login_request(csg: Stage, nsg: Stage) -> LoginRequest {
    LoginRequest {
        transit: true,
        cont: false,
        csg,
        nsg,
        version_max: 0,
        version_min: 0,
        isid: ISID,
        tsih: 0,
        itt: 1,
        cid: 0,
        cmd_sn: FIRST_CMD_SN,
        exp_stat_sn: 0,
    }
}

/// [`login_request`] with `transit` and the text `keys`, framed.
pub fn login(csg: Stage, nsg: Stage, transit: bool, keys: &[(&str, &str)]) -> RawPdu {
    LoginRequest {
        transit,
        ..login_request(csg, nsg)
    }
    .raw(&text::encode(keys))
}

/// A SCSI Command with `cdb` (at most 16 bytes; the rest of the field is zero) on LUN 0,
/// F = 1, SIMPLE, no data transfer (RFC 7143 §11.3).
pub fn scsi_command(itt: u32, cmd_sn: u32, cdb: &[u8]) -> ScsiCommand {
    assert!(cdb.len() <= 16, "a CDB longer than 16 bytes needs an AHS");
    let mut c = [0u8; 16];
    c[..cdb.len()].copy_from_slice(cdb);
    ScsiCommand {
        immediate: false,
        final_bit: true,
        read: false,
        write: false,
        attr: SIMPLE,
        lun: 0,
        itt,
        expected_len: 0,
        cmd_sn,
        exp_stat_sn: 0,
        cdb: c,
    }
}

/// The CDB of READ(10) or WRITE(10) (SBC-4 §5.16, §5.40).
fn rw10(op: u8, lba: u32, blocks: u16) -> [u8; 10] {
    let mut c = [0u8; 10];
    c[0] = op;
    c[2..6].copy_from_slice(&lba.to_be_bytes());
    c[7..9].copy_from_slice(&blocks.to_be_bytes());
    c
}

/// READ(10) of `blocks` blocks of `block_len` bytes at `lba`: R = 1, EDTL set.
pub fn read10(itt: u32, cmd_sn: u32, lba: u32, blocks: u16, block_len: u32) -> ScsiCommand {
    ScsiCommand {
        read: true,
        expected_len: u32::from(blocks) * block_len,
        ..scsi_command(itt, cmd_sn, &rw10(0x28, lba, blocks))
    }
}

/// WRITE(10) of `blocks` blocks of `block_len` bytes at `lba`: W = 1, EDTL set, no immediate
/// data (send it with [`Request::raw`]'s `data`).
pub fn write10(itt: u32, cmd_sn: u32, lba: u32, blocks: u16, block_len: u32) -> ScsiCommand {
    ScsiCommand {
        write: true,
        expected_len: u32::from(blocks) * block_len,
        ..scsi_command(itt, cmd_sn, &rw10(0x2a, lba, blocks))
    }
}

/// A Data-Out of task `itt` (RFC 7143 §11.7): `ttt` from its R2T (or [`RESERVED_TAG`] for
/// unsolicited data), LUN 0, ExpStatSN 0.
pub fn data_out(itt: u32, ttt: u32, data_sn: u32, offset: u32, final_bit: bool) -> DataOut {
    DataOut {
        final_bit,
        lun: 0,
        itt,
        ttt,
        exp_stat_sn: 0,
        data_sn,
        buffer_offset: offset,
    }
}

/// A NOP-Out ping (RFC 7143 §11.18): not immediate, TTT reserved, LUN 0.
pub fn nop_out(itt: u32, cmd_sn: u32) -> NopOut {
    NopOut {
        immediate: false,
        lun: 0,
        itt,
        ttt: RESERVED_TAG,
        cmd_sn,
        exp_stat_sn: 0,
    }
}

/// The NOP-Out that answers a target's NOP-In ping with TTT `ttt`: ITT reserved, immediate
/// (RFC 7143 §11.18).
pub fn nop_answer(ttt: u32, cmd_sn: u32) -> NopOut {
    NopOut {
        immediate: true,
        itt: RESERVED_TAG,
        ttt,
        ..nop_out(RESERVED_TAG, cmd_sn)
    }
}

/// A Task Management Function Request (RFC 7143 §11.5), immediate, LUN 0, RefCmdSN = `cmd_sn`.
pub fn tmf(function: TmfFunction, itt: u32, referenced_tag: u32, cmd_sn: u32) -> TaskMgmtRequest {
    TaskMgmtRequest {
        immediate: true,
        function: function.0,
        lun: 0,
        itt,
        referenced_tag,
        cmd_sn,
        exp_stat_sn: 0,
        ref_cmd_sn: cmd_sn,
        exp_data_sn: 0,
    }
}

/// A Text Request (RFC 7143 §11.10): F = 1, TTT reserved (a new exchange), LUN 0.
pub fn text_request(itt: u32, cmd_sn: u32) -> TextRequest {
    TextRequest {
        immediate: false,
        final_bit: true,
        cont: false,
        lun: 0,
        itt,
        ttt: RESERVED_TAG,
        cmd_sn,
        exp_stat_sn: 0,
    }
}

/// A Logout Request (RFC 7143 §11.14), immediate; `cid` matters for reasons 1 and 2.
pub fn logout(reason: LogoutReason, itt: u32, cid: u16, cmd_sn: u32) -> LogoutRequest {
    LogoutRequest {
        immediate: true,
        reason,
        itt,
        cid,
        cmd_sn,
        exp_stat_sn: 0,
    }
}

/// A SNACK Request (RFC 7143 §11.16) of type `snack_type` ([`SNACK_STATUS`], ...): LUN 0, TTT
/// reserved (an R-Data SNACK puts its SNACK Tag there, a DataACK the Data-In's TTT).
pub fn snack(snack_type: u8, itt: u32, beg_run: u32, run_length: u32) -> SnackRequest {
    SnackRequest {
        snack_type,
        lun: 0,
        itt,
        ttt: RESERVED_TAG,
        exp_stat_sn: 0,
        beg_run,
        run_length,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every builder's PDU parses back to itself, with the length fields set for its data.
    #[test]
    fn builders_round_trip_through_the_wire_format() {
        let all: Vec<(Header, &[u8])> = vec![
            (
                login_request(Stage::Security, Stage::Operational).into_header(),
                b"A=B\0",
            ),
            (read10(1, 2, 3, 4, 512).into_header(), b""),
            (write10(1, 2, 3, 4, 512).into_header(), &[7; 13]),
            (data_out(1, 2, 3, 4, true).into_header(), &[1; 512]),
            (nop_out(9, 100).into_header(), b"ping"),
            (nop_answer(0x77, 100).into_header(), b""),
            (tmf(TmfFunction::ABORT_TASK, 5, 6, 100).into_header(), b""),
            (text_request(3, 100).into_header(), b"SendTargets=All\0"),
            (
                logout(LogoutReason::CLOSE_CONNECTION, 4, 2, 100).into_header(),
                b"",
            ),
            (snack(SNACK_STATUS, RESERVED_TAG, 7, 0).into_header(), b""),
        ];
        for (h, data) in all {
            let p = raw(&h, data);
            assert_eq!(p.header().as_ref(), Ok(&h));
            assert_eq!(p.common().data_len as usize, data.len(), "{h:?}");
            assert_eq!(p.data, data);
        }
    }

    #[test]
    fn read10_carries_its_cdb_and_length() {
        let c = read10(0x10, 7, 0x1234, 8, 512);
        assert_eq!(&c.cdb[..10], &[0x28, 0, 0, 0, 0x12, 0x34, 0, 0, 8, 0]);
        assert!(c.read && !c.write && c.final_bit);
        assert_eq!((c.expected_len, c.cmd_sn, c.attr), (4096, 7, SIMPLE));
    }
}
