//! Open enums for wire codes (RFC 7143 §11). A newtype over the raw number with named constants
//! keeps unknown values representable.

use std::fmt;

macro_rules! open_enum {
    ($(#[$m:meta])* $name:ident($ty:ty) { $($(#[$cm:meta])* $c:ident = $v:expr),* $(,)? }) => {
        $(#[$m])*
        #[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(pub $ty);
        impl $name {
            $($(#[$cm])* pub const $c: Self = Self($v);)*
            /// The constant's name, or `None` for a value the RFC does not define.
            pub fn name(self) -> Option<&'static str> {
                match self { $(Self::$c => Some(stringify!($c)),)* _ => None }
            }
        }
        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                match self.name() {
                    Some(n) => f.write_str(n),
                    None => write!(f, "{}({:#x})", stringify!($name), self.0),
                }
            }
        }
        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result { fmt::Debug::fmt(self, f) }
        }
    };
}

open_enum! {
    /// PDU opcode, the low 6 bits of byte 0 (RFC 7143 §11.2.1.2).
    Opcode(u8) {
        NOP_OUT = 0x00, SCSI_COMMAND = 0x01, TASK_MGMT_REQUEST = 0x02, LOGIN_REQUEST = 0x03,
        TEXT_REQUEST = 0x04, DATA_OUT = 0x05, LOGOUT_REQUEST = 0x06, SNACK_REQUEST = 0x10,
        NOP_IN = 0x20, SCSI_RESPONSE = 0x21, TASK_MGMT_RESPONSE = 0x22, LOGIN_RESPONSE = 0x23,
        TEXT_RESPONSE = 0x24, DATA_IN = 0x25, LOGOUT_RESPONSE = 0x26, R2T = 0x31,
        ASYNC_MESSAGE = 0x32, REJECT = 0x3f,
    }
}

impl Opcode {
    /// Initiator opcodes are 0x00-0x1f (RFC 7143 §11.2.1.2).
    pub fn is_initiator(self) -> bool {
        self.0 < 0x20
    }
}

open_enum! {
    /// Reject reason (RFC 7143 §11.17.1).
    RejectReason(u8) {
        DATA_DIGEST_ERROR = 0x02, SNACK_REJECT = 0x03, PROTOCOL_ERROR = 0x04,
        COMMAND_NOT_SUPPORTED = 0x05, IMMEDIATE_COMMAND_REJECT = 0x06, TASK_IN_PROGRESS = 0x07,
        INVALID_DATA_ACK = 0x08, INVALID_PDU_FIELD = 0x09, LONG_OPERATION_REJECT = 0x0a,
        DEPRECATED_NEGOTIATION_RESET = 0x0b, WAITING_FOR_LOGOUT = 0x0c,
    }
}

open_enum! {
    /// Task management function (RFC 7143 §11.5.1).
    TmfFunction(u8) {
        ABORT_TASK = 1, ABORT_TASK_SET = 2, CLEAR_ACA = 3, CLEAR_TASK_SET = 4,
        LOGICAL_UNIT_RESET = 5, TARGET_WARM_RESET = 6, TARGET_COLD_RESET = 7,
        TASK_REASSIGN = 8,
    }
}

open_enum! {
    /// Task management function response (RFC 7143 §11.6.1).
    TmfResponse(u8) {
        COMPLETE = 0, TASK_DOES_NOT_EXIST = 1, LUN_DOES_NOT_EXIST = 2, TASK_STILL_ALLEGIANT = 3,
        REASSIGNMENT_NOT_SUPPORTED = 4, NOT_SUPPORTED = 5, AUTHORIZATION_FAILED = 6,
        REJECTED = 255,
    }
}

open_enum! {
    /// Logout reason code (RFC 7143 §11.14.1).
    LogoutReason(u8) { CLOSE_SESSION = 0, CLOSE_CONNECTION = 1, REMOVE_FOR_RECOVERY = 2 }
}

open_enum! {
    /// Logout response (RFC 7143 §11.15.1).
    LogoutResponseCode(u8) {
        CLOSED = 0, CID_NOT_FOUND = 1, RECOVERY_NOT_SUPPORTED = 2, CLEANUP_FAILED = 3,
    }
}

open_enum! {
    /// SCSI Response "Response" field (RFC 7143 §11.4.3).
    ScsiResponseCode(u8) { COMMAND_COMPLETED = 0, TARGET_FAILURE = 1 }
}

open_enum! {
    /// Asynchronous event code (RFC 7143 §11.9.1).
    AsyncEvent(u8) {
        SCSI_EVENT = 0, LOGOUT_REQUEST = 1, DROP_CONNECTION = 2, DROP_ALL_CONNECTIONS = 3,
        RENEGOTIATE = 4, VENDOR = 255,
    }
}

/// Login stage (CSG/NSG, RFC 7143 §11.12.3).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Stage {
    Security = 0,
    Operational = 1,
    FullFeature = 3,
    /// The value 2 is reserved.
    Reserved = 2,
}

impl Stage {
    pub fn from_bits(v: u8) -> Stage {
        match v & 3 {
            0 => Stage::Security,
            1 => Stage::Operational,
            2 => Stage::Reserved,
            _ => Stage::FullFeature,
        }
    }
}

/// Login response status (class, detail), RFC 7143 §11.13.5.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct LoginStatus(pub u8, pub u8);

impl LoginStatus {
    pub const SUCCESS: Self = Self(0x00, 0x00);
    pub const TARGET_MOVED_TEMPORARILY: Self = Self(0x01, 0x01);
    pub const TARGET_MOVED_PERMANENTLY: Self = Self(0x01, 0x02);
    pub const INITIATOR_ERROR: Self = Self(0x02, 0x00);
    pub const AUTHENTICATION_FAILURE: Self = Self(0x02, 0x01);
    pub const AUTHORIZATION_FAILURE: Self = Self(0x02, 0x02);
    pub const NOT_FOUND: Self = Self(0x02, 0x03);
    pub const TARGET_REMOVED: Self = Self(0x02, 0x04);
    pub const UNSUPPORTED_VERSION: Self = Self(0x02, 0x05);
    pub const TOO_MANY_CONNECTIONS: Self = Self(0x02, 0x06);
    pub const MISSING_PARAMETER: Self = Self(0x02, 0x07);
    pub const CANT_INCLUDE_IN_SESSION: Self = Self(0x02, 0x08);
    pub const SESSION_TYPE_NOT_SUPPORTED: Self = Self(0x02, 0x09);
    pub const SESSION_DOES_NOT_EXIST: Self = Self(0x02, 0x0a);
    pub const INVALID_DURING_LOGIN: Self = Self(0x02, 0x0b);
    pub const TARGET_ERROR: Self = Self(0x03, 0x00);
    pub const SERVICE_UNAVAILABLE: Self = Self(0x03, 0x01);
    pub const OUT_OF_RESOURCES: Self = Self(0x03, 0x02);

    pub fn is_success(self) -> bool {
        self.0 == 0
    }
}

impl fmt::Debug for LoginStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = match *self {
            Self::SUCCESS => "Success",
            Self::TARGET_MOVED_TEMPORARILY => "TargetMovedTemporarily",
            Self::TARGET_MOVED_PERMANENTLY => "TargetMovedPermanently",
            Self::INITIATOR_ERROR => "InitiatorError",
            Self::AUTHENTICATION_FAILURE => "AuthenticationFailure",
            Self::AUTHORIZATION_FAILURE => "AuthorizationFailure",
            Self::NOT_FOUND => "NotFound",
            Self::TARGET_REMOVED => "TargetRemoved",
            Self::UNSUPPORTED_VERSION => "UnsupportedVersion",
            Self::TOO_MANY_CONNECTIONS => "TooManyConnections",
            Self::MISSING_PARAMETER => "MissingParameter",
            Self::CANT_INCLUDE_IN_SESSION => "CantIncludeInSession",
            Self::SESSION_TYPE_NOT_SUPPORTED => "SessionTypeNotSupported",
            Self::SESSION_DOES_NOT_EXIST => "SessionDoesNotExist",
            Self::INVALID_DURING_LOGIN => "InvalidDuringLogin",
            Self::TARGET_ERROR => "TargetError",
            Self::SERVICE_UNAVAILABLE => "ServiceUnavailable",
            Self::OUT_OF_RESOURCES => "OutOfResources",
            _ => return write!(f, "LoginStatus({:#04x}/{:#04x})", self.0, self.1),
        };
        write!(f, "{name}({:#04x}/{:#04x})", self.0, self.1)
    }
}
