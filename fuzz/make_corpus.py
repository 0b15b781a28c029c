#!/usr/bin/env python3
"""Write the committed seed corpus: fuzz/corpus/<target>/seed-<name>.

Run from anywhere: `python3 fuzz/make_corpus.py`. Deterministic: the same files every time.
Only seed-* files are committed (see fuzz/.gitignore); libFuzzer adds its own finds beside them.

The `connection` seeds are encoded the way the `arbitrary` crate (1.x) decodes the target's
`Input`: integers little-endian, bool = low bit of a byte, an enum variant = u32 `t` with
`(t * variant_count) >> 32` = index, `[u8; N]` = N bytes, and the trailing `Vec<Op>` = for each
element a byte with the low bit set, then the element. Keep the variant lists below in the
order of the enums in fuzz_targets/connection.rs. `cargo fuzz fmt connection <file>` prints
how a file decodes.

The `session` seeds are encoded the same way for fuzz_targets/session.rs: `InputV1` (the first
format), or `FORMAT_2` followed by `InputV2`, whose ops are a selector byte (below 0xd0: an
`Op`, else a `Recovery` op) and the op. `FERRITE_FUZZ_TRACE=1 cargo +nightly fuzz run session
<file>` shows what a seed does.
"""

import os
import struct

HERE = os.path.dirname(os.path.abspath(__file__))

# ---- CRC32C (RFC 3720 appendix B.4), for seeds with digests -------------------------------

_CRC_TABLE = []
for _i in range(256):
    _c = _i
    for _ in range(8):
        _c = (_c >> 1) ^ 0x82F63B78 if _c & 1 else _c >> 1
    _CRC_TABLE.append(_c)


def crc32c(data: bytes) -> int:
    c = 0xFFFFFFFF
    for b in data:
        c = _CRC_TABLE[(c ^ b) & 0xFF] ^ (c >> 8)
    return c ^ 0xFFFFFFFF


assert crc32c(b"123456789") == 0xE3069283


def digest(data: bytes) -> bytes:
    return struct.pack("<I", crc32c(data))  # least significant byte first on the wire


# ---- Basic Header Segments (RFC 7143 §11) --------------------------------------------------


def bhs(opcode, flags=0, b2=0, b3=0, ahs_len=0, data_len=0, lun=0, itt=0, rest=b""):
    """48 bytes: opcode byte, flags, two opcode-specific bytes, lengths, LUN, ITT, bytes 20-47."""
    h = bytes([opcode, flags, b2, b3, ahs_len // 4]) + data_len.to_bytes(3, "big")
    h += struct.pack(">QI", lun, itt) + rest
    assert len(h) <= 48, len(h)
    return h + bytes(48 - len(h))


def u32(*xs):
    return b"".join(struct.pack(">I", x) for x in xs)


def text(*pairs):
    return b"".join(k.encode() + b"=" + v.encode() + b"\0" for k, v in pairs)


def pad4(b: bytes) -> bytes:
    return b + bytes(-len(b) % 4)


LOGIN_KEYS = text(
    ("InitiatorName", "iqn.1993-08.org.debian:01:fuzz"),
    ("TargetName", "iqn.2026-11.io.ferrite:t"),
    ("SessionType", "Normal"),
    ("HeaderDigest", "None"),
    ("DataDigest", "None"),
    ("ImmediateData", "Yes"),
    ("InitialR2T", "No"),
    ("MaxRecvDataSegmentLength", "262144"),
    ("MaxBurstLength", "1048576"),
    ("FirstBurstLength", "65536"),
)
ISID = bytes([0x80, 0x00, 0x00, 0x01, 0x00, 0x01])


def login_request(data: bytes, csg=1, nsg=3, transit=True, itt=1, cmd_sn=1):
    flags = (0x80 if transit else 0) | csg << 2 | nsg
    rest = struct.pack(">HH", 0, 0) + u32(cmd_sn, 0)  # CID, reserved, CmdSN, ExpStatSN
    h = bytearray(bhs(0x43, flags, 0, 0, 0, len(data), 0, itt, rest))
    h[8:14] = ISID
    h[14:16] = b"\0\0"  # TSIH 0: a new session
    return bytes(h)


def read10(itt=0x2A, lba=0x1234, blocks=8, cmd_sn=7, edtl=4096):
    cdb = bytes([0x28, 0, *lba.to_bytes(4, "big"), 0, *blocks.to_bytes(2, "big"), 0])
    return bhs(0x01, 0xC1, lun=1 << 48, itt=itt, rest=u32(edtl, cmd_sn, 3) + cdb.ljust(16, b"\0"))


def write10(data_len, itt=0x2B, edtl=4096, cmd_sn=8, ahs_len=0, final=True):
    cdb = bytes([0x2A, 0, 0, 0, 0, 0x10, 0, 0, 8, 0])
    flags = (0x80 if final else 0) | 0x20 | 0x01
    return bhs(0x01, flags, ahs_len=ahs_len, data_len=data_len, lun=0, itt=itt,
               rest=u32(edtl, cmd_sn, 3) + cdb.ljust(16, b"\0"))


def ext_cdb_ahs(tail: bytes) -> bytes:
    """Extended-CDB AHS (RFC 7143 §11.2.2.3.1): AHSLength counts the reserved byte + tail."""
    return pad4(struct.pack(">HBB", len(tail) + 1, 1, 0) + tail)


def bidi_ahs(n):
    return struct.pack(">HBB", 5, 2, 0) + struct.pack(">I", n)


NOP_OUT = bhs(0x40, 0x80, itt=5, rest=u32(0xFFFFFFFF, 9, 3))
TEXT_REQ = bhs(0x04, 0x80, data_len=16, itt=6, rest=u32(0xFFFFFFFF, 10, 3))
TMF_ABORT = bhs(0x42, 0x81, lun=1 << 48, itt=7, rest=u32(0x2A, 11, 3, 7, 0))
LOGOUT = bhs(0x46, 0x80, itt=8, rest=struct.pack(">HH", 0, 0) + u32(12, 3))
DATA_OUT = bhs(0x05, 0x80, data_len=512, itt=0x2B, rest=u32(0x10) + u32(0, 3, 0, 0, 512))
SNACK = bhs(0x10, 0x81, itt=9, rest=u32(0xFFFFFFFF, 0, 3, 0, 0, 0, 1))
SCSI_RESP = bhs(0x21, 0x82, 0, 0, itt=0x2A, rest=u32(0, 4, 8, 135, 0, 0, 512))
DATA_IN = bhs(0x25, 0x81, 0, 0, data_len=4096, lun=1 << 48, itt=0x2A,
              rest=u32(0xFFFFFFFF, 4, 8, 135, 0, 0, 0))
R2T = bhs(0x31, 0x80, lun=0, itt=0x2B, rest=u32(0x10, 5, 9, 136, 0, 512, 3584))
REJECT = bhs(0x3F, 0x80, 4, data_len=48, itt=0xFFFFFFFF, rest=u32(0, 6, 9, 136, 0))
ASYNC = bhs(0x32, 0x80, itt=0xFFFFFFFF, rest=u32(0, 7, 9, 136) + bytes([1, 0]) + struct.pack(">HHH", 0, 2, 20))
LOGIN_RESP = bytearray(bhs(0x23, 0x87, 0, 0, itt=1, rest=u32(0, 1, 1, 128) + bytes([0, 0])))
LOGIN_RESP[8:14] = ISID
LOGIN_RESP = bytes(LOGIN_RESP)
NOP_IN = bhs(0x20, 0x80, itt=0xFFFFFFFF, rest=u32(0x77, 4, 9, 136))
TMF_RESP = bhs(0x22, 0x80, 0, itt=7, rest=u32(0, 5, 12, 140))
TEXT_RESP = bhs(0x24, 0x80, itt=6, rest=u32(0xFFFFFFFF, 6, 11, 139))
LOGOUT_RESP = bhs(0x26, 0x80, 0, itt=8, rest=u32(0, 7, 13, 140, 0) + struct.pack(">HH", 2, 20))


def frame(h: bytes, ahs=b"", data=b"", hd=False, dd=False):
    """One PDU on the wire (RFC 7143 §11.1), with the length fields set."""
    h = bytearray(h)
    h[4] = len(ahs) // 4
    h[5:8] = len(data).to_bytes(3, "big")
    out = bytes(h) + ahs
    if hd:
        out += digest(out)
    if data:
        padded = pad4(data)
        out += padded
        if dd:
            out += digest(padded)
    return out


# ---- arbitrary encoding for the connection target ------------------------------------------

OPS = ["Pdu", "Command", "DataOut", "Text", "Nop", "Tmf", "Logout", "LoginOk", "Complete",
       "Tick", "ToDeadline", "DigestError"]
DATA = ["Empty", "Fill", "Text", "Bytes", "Keys"]
AHS_CHOICE = ["None", "ExtCdb", "BidiReadLength", "Raw"]
OUT_LEN = ["Expected", "DataLen", "Raw"]


def tag(name, variants):
    i, n = variants.index(name), len(variants)
    t = ((i << 32) + n - 1) // n
    assert (t * n) >> 32 == i
    return struct.pack("<I", t)


def b8(x):
    return bytes([x & 0xFF])


def le16(x):
    return struct.pack("<H", x)


def le32(x):
    return struct.pack("<I", x)


def start(mode=0, stat_sn=50, cmd_sn=100, discovery=False, hd=False, dd=False, imm=True,
          r2t=False, mrdsl=0, burst=0, first=0, outstanding=0, security=False, defer=False):
    """The `Start` struct. mrdsl/burst/first are added to 512; outstanding+1 R2Ts."""
    return (b8(mode) + le32(stat_sn) + le32(cmd_sn)
            + bytes([discovery, hd, dd, imm, r2t])
            + le16(mrdsl) + le16(burst) + le16(first) + b8(outstanding)
            + bytes([security, defer]))


def data(kind="Empty", *args):
    if kind == "Empty":
        return tag("Empty", DATA)
    if kind == "Fill":
        length, byte = args
        return tag("Fill", DATA) + le16(length) + b8(byte)
    if kind == "Text":
        return tag("Text", DATA) + le16(args[0])  # bit i: entry i of TEXT_DICT
    if kind == "Keys":
        return tag("Keys", DATA) + b8(args[0])
    return tag("Bytes", DATA) + bytes(args[0]).ljust(12, b"\0")[:12]


def ahs_choice(kind="None", arg=0):
    if kind == "None":
        return tag("None", AHS_CHOICE)
    if kind == "ExtCdb":
        return tag("ExtCdb", AHS_CHOICE) + b8(arg)
    if kind == "BidiReadLength":
        return tag("BidiReadLength", AHS_CHOICE) + le32(arg)
    return tag("Raw", AHS_CHOICE) + bytes(arg).ljust(8, b"\0")[:8]


def op(name, body=b""):
    return b"\x01" + tag(name, OPS) + body


def op_pdu(h, ahs=None, d=None, set_sn=False, sn=0):
    return op("Pdu", h + (ahs or ahs_choice()) + (d or data()) + bytes([set_sn, sn]))


def op_cmd(itt, cdb0, read=False, write=False, edtl=0, big=False, final=True, immediate=False,
           imm=0, over=False, ext=None, sn=0):
    return op("Command", bytes([itt, 0, cdb0, read, write]) + le16(edtl)
              + bytes([big, final, immediate]) + le16(imm) + bytes([over])
              + (ext or ahs_choice()) + b8(sn))


def op_data_out(pick=0, length=0, final=False, skew=0):
    return op("DataOut", b8(pick) + le16(length) + bytes([final, skew]))


def op_text(itt, cont=False, follow=False, d=None, immediate=False, sn=0):
    return op("Text", bytes([itt, cont, follow]) + (d or data()) + bytes([immediate, sn]))


def op_nop(itt, answer_ping=False, d=None, immediate=False, sn=0):
    return op("Nop", bytes([itt, answer_ping]) + (d or data()) + bytes([immediate, sn]))


def op_tmf(function, itt, ref_itt, lun=0, ref_sn=1, immediate=True, sn=0):
    return op("Tmf", bytes([function, itt, ref_itt, lun, ref_sn, immediate, sn]))


def op_logout(itt, reason=0, immediate=False, sn=0):
    return op("Logout", bytes([itt, reason, immediate, sn]))


def op_complete(pick=0, status=0, data_len=0, sense_len=0, out_len="Expected", raw=0):
    body = b8(pick) + b8(status) + le16(data_len) + b8(sense_len) + tag(out_len, OUT_LEN)
    if out_len == "Raw":
        body += le16(raw)
    return op("Complete", body)


def op_tick(secs):
    return op("Tick", b8(secs))


# ---- arbitrary encoding for the session target -------------------------------------------

SESSION_OPS = ["Join", "Command", "DataOut", "StrayDataOut", "Complete", "Tmf", "TmfDone",
               "Logout", "Nop", "AbortOutside", "Shutdown", "BudgetReady", "Tick"]
RECOVERY_OPS = ["Snack", "Ack", "DigestError", "ConnectionLost", "Expire", "RequestLogout",
                "DropConnection", "DropAll"]
FORMAT_2 = b"FzS2"
SNACK_TYPES = {"data": 0, "status": 1, "data-ack": 2, "r-data": 3}


def s_op(name, body=b""):
    """One element of `InputV1::ops`: the continuation byte, the variant, its fields."""
    return b"\x01" + tag(name, SESSION_OPS) + body


def s_join(cid):
    return s_op("Join", b8(cid))


def s_cmd(conn, itt, read=False, write=False, blocks=0, attr=1, immediate=False, sn=0):
    """SCSI READ(10)/WRITE(10) with ITT 0x10 + itt, `blocks` 512-byte blocks (mod 32)."""
    return s_op("Command", bytes([conn, itt, write, read, blocks, attr, immediate, sn]))


def s_data_out(conn, pick=0, short=False):
    return s_op("DataOut", bytes([conn, pick, short]))


def s_stray_data_out(conn, pick=0):
    return s_op("StrayDataOut", bytes([conn, pick]))


def s_complete(pick=0, data_len=0):
    return s_op("Complete", b8(pick) + le16(data_len))


def s_tmf(conn, function, ref_itt, sn=0):
    """Function `1 + function % 8` (7: TASK REASSIGN), referenced ITT 0x10 + ref_itt."""
    return s_op("Tmf", bytes([conn, function, ref_itt, sn]))


def s_logout(conn, reason, cid, sn=0):
    """Logout on `conn` (index in join order) with `reason` for connection `cid`."""
    return s_op("Logout", bytes([conn, reason, cid, sn]))


def s_simple(name, conn):
    return s_op(name, b8(conn))


def s_tick(conn, secs):
    return s_op("Tick", bytes([conn, secs]))


def session_v1(max_connections, *ops):
    return b8(max_connections) + b"".join(ops)


def session_v2(max_connections, erl, *ops):
    """A format-2 input: each op is an `s_*` op (wrapped here) or an `r_*` recovery op."""
    return FORMAT_2 + bytes([max_connections, erl]) + b"".join(ops)


def v2(op):
    """A format-1 op as a format-2 step: continuation byte, selector below 0xd0, the op."""
    assert op[0] == 1
    return b"\x01\x00" + op[1:]


def r_op(name, body):
    return b"\x01\xff" + tag(name, RECOVERY_OPS) + body


def r_snack(conn, kind, pick=0, beg=0, run=0):
    """SNACK of `kind`; BegRun: Status next StatSN + 4 - beg % 16, else max(beg % 16 - 8, 0)."""
    return r_op("Snack", bytes([conn, SNACK_TYPES[kind], pick, beg, run]))


def r_ack(conn, lag=0):
    return r_op("Ack", bytes([conn, lag]))


def r_digest_error(conn, pick=0):
    return r_op("DigestError", bytes([conn, pick]))


def r_simple(name, byte=None):
    """ConnectionLost (conn), Expire (secs), RequestLogout (within), DropConnection (cid),
    DropAll (no field)."""
    return r_op(name, b"" if byte is None else b8(byte))


def session_seeds():
    read, write = dict(read=True), dict(write=True)
    return {
        # MC/S: a second connection joins by TSIH; reads on both, then a session logout.
        "join-read-on-two-connections": session_v1(
            2, s_join(1), s_cmd(1, 1, blocks=8, **read), s_complete(0, 4096),
            s_cmd(0, 2, blocks=1, **read), s_complete(0, 512), s_logout(0, 0, 0)),
        # A write on the joined connection: its R2T and Data-Out stay there; a stray
        # Data-Out on the other connection first.
        "join-write-r2t": session_v1(
            2, s_join(1), s_cmd(1, 3, blocks=4, **write), s_stray_data_out(0),
            s_data_out(1), s_complete(0), s_logout(1, 1, 1)),
        # Logout by CID: connection 0 closes connection 2 (with a task running on it), then
        # connection 1 closes itself.
        "logout-by-cid": session_v1(
            3, s_join(1), s_join(2), s_cmd(2, 4, blocks=2, **read), s_logout(0, 1, 2),
            s_complete(0, 1024), s_logout(1, 1, 1), s_cmd(0, 5, blocks=1, **read),
            s_complete(0, 512)),
        # A connection drops with a task running (the daemon then shuts the session down:
        # ErrorRecoveryLevel 0 has no connection recovery); the completion comes back late;
        # the same CID tries to join the ended session.
        "drop-ends-session": session_v1(
            2, s_join(1), s_cmd(1, 6, blocks=1, **read), s_simple("Shutdown", 1),
            s_complete(0, 512), s_join(1), s_logout(0, 0, 0)),
        # A login with a CID in use replaces that connection while its task runs (what
        # regressions/session-completion-after-connection-replaced found).
        "replace-cid-while-running": session_v1(
            2, s_join(1), s_cmd(1, 9, blocks=1, **read), s_join(1), s_logout(0, 0, 0),
            s_complete(0, 0)),
        # Connection 1 is removed for recovery (reason 2) with a write outstanding; a new
        # connection asks for TASK REASSIGN of it (refused: ErrorRecoveryLevel < 2).
        "remove-for-recovery-then-reassign": session_v1(
            2, s_join(1), s_cmd(1, 5, blocks=2, **write), s_logout(0, 2, 1), s_join(2),
            s_tmf(2, 7, 5), s_simple("TmfDone", 2), s_tick(0, 30)),
        # ERL 1: a read answered (status apart from the data), its status asked for again,
        # acknowledged, asked for again (now refused).
        "erl1-status-snack": session_v2(
            1, 1, v2(s_cmd(0, 1, blocks=2, **read)), v2(s_complete(0, 1024)),
            r_snack(0, "status", beg=5), r_ack(0), r_snack(0, "status", beg=5)),
        # ERL 1: a read in three Data-In (MaxRecvDataSegmentLength 4096): two of them again
        # (Data SNACK), all of them re-cut with the status (R-Data), a DataACK.
        "erl1-data-snack": session_v2(
            1, 1, v2(s_cmd(0, 2, blocks=20, **read)), v2(s_complete(0, 10240)),
            r_snack(0, "data", beg=9, run=2), r_snack(0, "r-data", pick=1),
            r_snack(0, "data-ack", beg=11)),
        # ERL 1: a write's R2T asked for again (R2T SNACK), its Data-Out lost to a digest
        # error (recovery R2T), answered.
        "erl1-r2t-snack-digest-error": session_v2(
            1, 1, v2(s_cmd(0, 3, blocks=4, **write)), r_snack(0, "data"),
            r_digest_error(0), v2(s_data_out(0, 1)), v2(s_complete(0))),
        # ERL 1 over two connections: a status asked for on the connection that did not send
        # it, and on its own after the other one dropped.
        "erl1-snack-across-connections": session_v2(
            2, 1, v2(s_join(1)), v2(s_cmd(1, 4, blocks=1, **read)), v2(s_complete(0, 512)),
            r_snack(0, "data", pick=0xf4), r_snack(1, "status", beg=5),
            v2(s_simple("Shutdown", 0)), r_snack(1, "r-data"), r_ack(1, 1)),
        # ERL 2: a write's connection is lost after its R2T; a new connection (the third in
        # join order) removes it for recovery and takes the task over (TASK REASSIGN: R2T for
        # the data), which completes.
        "erl2-write-reassigned": session_v2(
            2, 2, v2(s_join(1)), v2(s_cmd(1, 6, blocks=4, **write)),
            r_simple("ConnectionLost", 1), v2(s_join(2)), v2(s_logout(2, 2, 1)),
            v2(s_tmf(2, 7, 6)), v2(s_data_out(2)), v2(s_complete(0))),
        # ERL 2: a read finishes while its connection is down; the same CID logs in again
        # and the task is reassigned to it; another task is left to Time2Retain.
        "erl2-read-reinstated-and-expired": session_v2(
            2, 2, v2(s_join(1)), v2(s_cmd(1, 7, blocks=2, **read)),
            v2(s_cmd(1, 8, blocks=2, **write)), r_simple("ConnectionLost", 1),
            v2(s_complete(0, 1024)), v2(s_join(1)), v2(s_tmf(2, 7, 7)),
            r_simple("Expire", 30), v2(s_logout(0, 0, 0))),
        # The operator's asynchronous messages: a logout asked for, one connection dropped,
        # then all of them.
        "async-messages": session_v2(
            3, 2, v2(s_join(1)), v2(s_join(2)), v2(s_cmd(2, 9, blocks=1, **read)),
            r_simple("RequestLogout", 10), r_simple("DropConnection", 2),
            v2(s_complete(0, 512)), r_simple("DropAll")),
    }


# ---- scsi: byte 0 = LUN (3: none), byte 1 = CDB length index (6, 10, 12, 16, 32; bit 7:
# 64 KiB of data-in allowed), then the CDB and the data-out ---------------------------------

CDB_LEN = {6: 0, 10: 1, 12: 2, 16: 3}


def scsi(lun, cdb, data=b"", big=False):
    cdb = bytes(cdb)
    return bytes([lun, CDB_LEN[len(cdb)] | (0x80 if big else 0)]) + cdb + data


def scsi_seeds():
    z = bytes
    return {
        "read10": scsi(0, [0x28, 0, 0, 0, 0, 0, 0, 0, 8, 0], big=True),
        "write10": scsi(0, [0x2A, 0, 0, 0, 0, 1, 0, 0, 1, 0], b"\xab" * 512),
        "inquiry-vpd83": scsi(0, [0x12, 1, 0x83, 0, 255, 0], big=True),
        "inquiry-vpdb0": scsi(0, [0x12, 1, 0xB0, 0, 255, 0], big=True),
        "mode-sense-all": scsi(1, [0x1A, 0, 0x3F, 0, 255, 0], big=True),
        "mode-select-caching": scsi(
            0, [0x15, 0x10, 0, 0, 24, 0], z([0, 0, 0, 0, 0x08, 0x12, 0x04]) + z(17)
        ),
        "unmap": scsi(
            0,
            [0x42, 0, 0, 0, 0, 0, 0, 0, 24, 0],
            struct.pack(">HH4x", 22, 16) + struct.pack(">QI4x", 0, 8),
        ),
        "write-same16-unmap": scsi(
            0, [0x93, 0x08, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 16, 0, 0], z(512)
        ),
        "compare-and-write": scsi(
            0, [0x89, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0], z(1024)
        ),
        "sanitize-overwrite-immed": scsi(
            0, [0x48, 0x81, 0, 0, 0, 0, 0, 0, 5, 0], z([1, 0, 0, 1, 0x5A])
        ),
        "format-unit-pattern": scsi(
            0, [0x04, 0x10, 0, 0, 0, 0], z([0, 0x8A, 0, 0, 0, 1, 0, 2]) + b"AB"
        ),
        "prout-register": scsi(
            0, [0x5F, 0, 0, 0, 0, 0, 0, 0, 24, 0], struct.pack(">QQ", 0, 0x1234) + z(8)
        ),
        "send-diagnostic": scsi(0, [0x1D, 0x04, 0, 0, 0, 0]),
        "rsoc-all": scsi(0, [0xA3, 0x0C, 0, 0, 0, 0, 0, 0, 0x10, 0, 0, 0], big=True),
        "rtpg-extended": scsi(0, [0xA3, 0x2A, 0, 0, 0, 0, 0, 0, 4, 0, 0, 0], big=True),
        # LUN 0 is encrypted: SANITIZE CRYPTO ERASE with IMMED.
        "sanitize-crypto-erase": scsi(0, [0x48, 0x83, 0, 0, 0, 0, 0, 0, 0, 0]),
        # SET TARGET PORT GROUPS: group 1 (the command's own) standby, group 2 active/optimized.
        "stpg-swap": scsi(
            0, [0xA4, 0x0A, 0, 0, 0, 0, 0, 0, 0, 12, 0, 0], bytes([0, 0, 0, 0, 2, 0, 0, 1, 0, 0, 0, 2])
        ),
        "get-lba-status": scsi(
            0, [0x9E, 0x12, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x10, 0, 0, 0], big=True
        ),
        "eject": scsi(1, [0x1B, 0, 0, 0, 2, 0]),
        "xcopy-one-segment": scsi(
            0,
            [0x83, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x40, 0, 0],
            z([0, 0, 0, 0, 0, 0, 0, 32, 0, 0, 0, 28, 0, 0, 0, 0]) + z([0xE4]) + z(31),
        ),
        "report-luns-no-lun": scsi(3, [0xA0, 0, 0, 0, 0, 0, 0, 0, 0, 0x40, 0, 0], big=True),
    }


# ---- the seeds -----------------------------------------------------------------------------


def seeds():
    c = {}
    c["pdu_header"] = {
        "login-request": login_request(LOGIN_KEYS),
        "read10": read10(),
        "write10-immediate": write10(512),
        "nop-out": NOP_OUT,
        "text-request": TEXT_REQ,
        "tmf-abort-task": TMF_ABORT,
        "logout": LOGOUT,
        "data-out": DATA_OUT,
        "snack": SNACK,
        "scsi-response": SCSI_RESP,
        "data-in-status": DATA_IN,
        "r2t": R2T,
        "reject": REJECT,
        "async-logout-request": ASYNC,
        "login-response": LOGIN_RESP,
        "nop-in-ping": NOP_IN,
        "tmf-response": TMF_RESP,
        "text-response": TEXT_RESP,
        "logout-response": LOGOUT_RESP,
    }
    send_targets = b"SendTargets=All\0"
    cdb32_tail = bytes(range(16))
    c["frame"] = {
        # First byte: bit 0 header digest, bit 1 data digest, bits 2+ pick the data limit
        # (0, 4, 512, 8192, 2^24-1 by value mod 5); 0x0c = 8192, 0x10 = 2^24-1.
        "login": b"\x10" + frame(login_request(LOGIN_KEYS), data=LOGIN_KEYS),
        "read10": b"\x0c" + frame(read10()),
        "read10-digests": b"\x0f" + frame(read10(), hd=True, dd=True),
        "text-sendtargets-digests": b"\x0f" + frame(TEXT_REQ, data=send_targets, hd=True, dd=True),
        "write-extcdb-immediate": b"\x0c" + frame(write10(512, ahs_len=20), ahs=ext_cdb_ahs(cdb32_tail),
                                                  data=bytes(range(256)) * 2),
        "stream": b"\x10" + frame(read10()) + frame(NOP_OUT, data=b"ping")
        + frame(write10(0, final=False)) + frame(DATA_OUT, data=bytes(512)) + frame(LOGOUT),
        "data-digest-bad": b"\x0e" + frame(NOP_OUT, data=b"abcdef", dd=True)[:-1] + b"\0"
        + frame(NOP_OUT),
    }
    c["text"] = {
        "sendtargets-all": send_targets,
        "login-keys": LOGIN_KEYS,
        "value-with-equals": b"X-com.example.k=a=b\0Empty=\0\0\0",
        "no-equals": b"novalue\0",
        "chap": text(("CHAP_A", "5"), ("CHAP_N", "user"), ("CHAP_R", "0x" + "ab" * 16)),
        "utf8-alias": "InitiatorAlias=h\u00f4te\0".encode(),
    }
    c["ahs"] = {
        "extended-cdb": ext_cdb_ahs(cdb32_tail),
        "bidi-read-length": bidi_ahs(4096),
        "extended-cdb-and-bidi": ext_cdb_ahs(bytes(range(0x10, 0x20))) + bidi_ahs(512),
        "unknown-type": struct.pack(">HBB", 3, 0x3F, 0) + b"xyz" + b"\0",
    }

    # TEXT_DICT bits 8 and 9: InitiatorName and TargetName; bit 11: AuthMethod=None.
    login_pdu = op_pdu(login_request(b"", cmd_sn=100), d=data("Text", 0x0300))
    security_pdu = op_pdu(login_request(b"", csg=0, nsg=1, cmd_sn=100), d=data("Text", 0x0B00))
    c["connection"] = {
        # Scripted login (defaults), READ(10) of 4096 bytes, device returns it all.
        "read": start() + op_cmd(1, 0x28, read=True, edtl=4096) + op_complete(data_len=4096),
        # Small MRDSL/burst: a read split over many Data-In PDUs and bursts.
        "read-small-mrdsl": start(mrdsl=0, burst=512)
        + op_cmd(2, 0x28, read=True, edtl=8192) + op_complete(data_len=8192),
        # InitialR2T=Yes, no immediate data: a write answered by R2Ts, then Data-Out.
        "write-r2t": start(imm=False, r2t=True, burst=512, outstanding=1)
        + op_cmd(3, 0x2A, write=True, edtl=2048) + op_data_out() + op_data_out()
        + op_data_out() + op_data_out() + op_complete(),
        # ImmediateData + unsolicited Data-Out, extended CDB.
        "write-unsolicited": start(first=1536, burst=4096)
        + op_cmd(4, 0x7F, write=True, edtl=4096, final=False, imm=512, ext=ahs_choice("ExtCdb", 16))
        + op_data_out(length=1536) + op_data_out() + op_data_out() + op_complete(),
        # Discovery session: SendTargets=All answered in pieces of 512 bytes.
        "discovery-sendtargets": start(discovery=True, security=True)
        + op_text(1, d=data("Text", 0x01)) + op_text(1, follow=True) + op_text(1, follow=True)
        + op_logout(2),
        # A long answer (60 NotUnderstood keys) sent in pieces; a continued request (C=1).
        "text-long-answer": start(mrdsl=0)
        + op_text(1, d=data("Keys", 60)) + op_text(1, follow=True) + op_text(1, follow=True)
        + op_text(2, cont=True, d=data("Keys", 3)) + op_text(2, d=data("Text", 0x01)),
        # Abort a running task, let it come back, log out.
        "abort-then-logout": start()
        + op_cmd(5, 0x28, read=True, edtl=512) + op_tmf(1, 1, 5) + op_complete(data_len=512)
        + op_logout(3),
        # Target ping, answered; then idle until the ping times out.
        "nop-ping": start() + op("ToDeadline") + op_nop(0, answer_ping=True)
        + op_nop(7, d=data("Fill", 64, 0x5A)) + op("ToDeadline") + op("ToDeadline"),
        # Deferred accept, out-of-order CmdSN (queued), check condition with sense data.
        "deferred-out-of-order": start(defer=True) + op("LoginOk")
        + op_cmd(6, 0x28, read=True, edtl=512, sn=200) + op_cmd(7, 0x00)
        + op_complete(pick=0, status=4, sense_len=18) + op_complete(),
        # Digests on; raw PDU with a fixed CmdSN; data digest error on a SCSI command.
        "digests-raw-pdu": start(hd=True, dd=True) + op_pdu(read10(itt=9), set_sn=True)
        + op_complete(data_len=100) + op("DigestError", b8(0x01)),
        # No scripted login: raw PDUs from the start.
        "raw-login": start(mode=0xF0) + login_pdu + op("LoginOk") + op_tick(40),
        "raw-login-security": start(mode=0xF0) + security_pdu
        + op_pdu(login_request(b"", csg=1, nsg=3, cmd_sn=100)) + op_tick(40),
    }
    c["scsi"] = scsi_seeds()
    c["session"] = session_seeds()
    return c


def main():
    for target, files in seeds().items():
        d = os.path.join(HERE, "corpus", target)
        os.makedirs(d, exist_ok=True)
        for old in os.listdir(d):
            if old.startswith("seed-"):
                os.remove(os.path.join(d, old))
        for name, content in files.items():
            with open(os.path.join(d, "seed-" + name), "wb") as f:
                f.write(content)
    for target, files in seeds().items():
        print(f"{target}: {len(files)} seeds")


if __name__ == "__main__":
    main()
