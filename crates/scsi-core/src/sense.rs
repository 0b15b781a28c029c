//! Sense data: one table from [`SenseReason`] to (sense key, ASC, ASCQ), and the builders for
//! fixed-format (SPC-4 §4.5.3) and descriptor-format (SPC-4 §4.5.2) sense data.
//!
//! Every CHECK CONDITION the device server returns goes through [`Sense`]; no handler writes
//! sense bytes by hand.

/// SPC-4 §4.5.6 table 27: sense keys.
pub mod key {
    pub const NO_SENSE: u8 = 0x0;
    pub const RECOVERED_ERROR: u8 = 0x1;
    pub const NOT_READY: u8 = 0x2;
    pub const MEDIUM_ERROR: u8 = 0x3;
    pub const HARDWARE_ERROR: u8 = 0x4;
    pub const ILLEGAL_REQUEST: u8 = 0x5;
    pub const UNIT_ATTENTION: u8 = 0x6;
    pub const DATA_PROTECT: u8 = 0x7;
    pub const COPY_ABORTED: u8 = 0xA;
    pub const ABORTED_COMMAND: u8 = 0xB;
    pub const MISCOMPARE: u8 = 0xE;
}

/// Why a command ended in CHECK CONDITION (or what a REQUEST SENSE reports).
///
/// The mapping to (sense key, ASC, ASCQ) lives in [`SenseReason::code`] and nowhere else.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SenseReason {
    /// 00/00/00 — REQUEST SENSE with nothing to report.
    NoSense,
    /// 05/20/00 INVALID COMMAND OPERATION CODE.
    InvalidCommandOperationCode,
    /// 05/21/00 LOGICAL BLOCK ADDRESS OUT OF RANGE.
    LbaOutOfRange,
    /// 05/24/00 INVALID FIELD IN CDB.
    InvalidFieldInCdb,
    /// 05/25/00 LOGICAL UNIT NOT SUPPORTED.
    LunNotSupported,
    /// 05/26/00 INVALID FIELD IN PARAMETER LIST.
    InvalidFieldInParameterList,
    /// 05/1A/00 PARAMETER LIST LENGTH ERROR.
    ParameterListLengthError,
    /// 05/39/00 SAVING PARAMETERS NOT SUPPORTED.
    SavingParametersNotSupported,
    /// 05/0E/03 INVALID FIELD IN COMMAND INFORMATION UNIT (data-out shorter than the CDB needs).
    InvalidFieldInInformationUnit,
    /// 07/27/00 WRITE PROTECTED (read-only logical unit).
    WriteProtected,
    /// 07/27/02 SOFTWARE WRITE PROTECTED (control mode page SWP bit).
    SoftwareWriteProtected,
    /// 03/11/00 UNRECOVERED READ ERROR.
    UnrecoveredReadError,
    /// 03/0C/00 WRITE ERROR.
    WriteError,
    /// 0E/1D/00 MISCOMPARE DURING VERIFY OPERATION.
    MiscompareDuringVerify,
    /// 04/44/00 INTERNAL TARGET FAILURE.
    InternalTargetFailure,
    /// 02/04/00 LOGICAL UNIT NOT READY, CAUSE NOT REPORTABLE.
    NotReady,
    /// 02/04/01 LOGICAL UNIT IS IN PROCESS OF BECOMING READY.
    NotReadyBecomingReady,
    /// 02/3A/00 MEDIUM NOT PRESENT.
    MediumNotPresent,
    /// 02/04/0A LOGICAL UNIT NOT ACCESSIBLE, ASYMMETRIC ACCESS STATE TRANSITION.
    AluaTransitioning,
    /// 02/04/0B LOGICAL UNIT NOT ACCESSIBLE, TARGET PORT IN STANDBY STATE.
    AluaStandby,
    /// 02/04/0C LOGICAL UNIT NOT ACCESSIBLE, TARGET PORT IN UNAVAILABLE STATE.
    AluaUnavailable,
    /// 02/04/12 LOGICAL UNIT NOT READY, OFFLINE (a target port group in the offline state).
    AluaOffline,
    /// 06/2A/06 ASYMMETRIC ACCESS STATE CHANGED.
    AsymmetricAccessStateChanged,
    /// 04/67/0A SET TARGET PORT GROUPS COMMAND FAILED (an explicit transition not made).
    SetTargetPortGroupsFailed,
    /// 06/29/00 POWER ON, RESET, OR BUS DEVICE RESET OCCURRED.
    PowerOnOrReset,
    /// 06/29/03 BUS DEVICE RESET FUNCTION OCCURRED (logical unit reset).
    BusDeviceResetFunction,
    /// 06/29/07 I_T NEXUS LOSS OCCURRED.
    ItNexusLoss,
    /// 06/2F/00 COMMANDS CLEARED BY ANOTHER INITIATOR.
    CommandsClearedByAnotherInitiator,
    /// 06/2A/01 MODE PARAMETERS CHANGED.
    ModeParametersChanged,
    /// 06/2A/03 RESERVATIONS PREEMPTED.
    ReservationsPreempted,
    /// 06/2A/04 RESERVATIONS RELEASED.
    ReservationsReleased,
    /// 06/2A/05 REGISTRATIONS PREEMPTED.
    RegistrationsPreempted,
    /// 05/26/04 INVALID RELEASE OF PERSISTENT RESERVATION.
    InvalidReleaseOfPersistentReservation,
    /// 05/55/04 INSUFFICIENT REGISTRATION RESOURCES.
    InsufficientRegistrationResources,
    /// 06/2A/09 CAPACITY DATA HAS CHANGED.
    CapacityDataChanged,
    /// 06/3F/0E REPORTED LUNS DATA HAS CHANGED.
    ReportedLunsDataChanged,
    /// 06/28/00 NOT READY TO READY CHANGE, MEDIUM MAY HAVE CHANGED.
    MediumMayHaveChanged,
    /// 05/53/02 MEDIUM REMOVAL PREVENTED.
    MediumRemovalPrevented,
    /// 02/04/1B LOGICAL UNIT NOT READY, SANITIZE IN PROGRESS.
    SanitizeInProgress,
    /// 03/31/03 SANITIZE COMMAND FAILED.
    SanitizeFailed,
    /// 02/04/04 LOGICAL UNIT NOT READY, FORMAT IN PROGRESS.
    FormatInProgress,
    /// 03/31/00 MEDIUM FORMAT CORRUPTED.
    MediumFormatCorrupted,
    /// 04/3E/03 LOGICAL UNIT FAILED SELF-TEST.
    SelfTestFailed,
    /// 05/26/06 TOO MANY TARGET DESCRIPTORS (EXTENDED COPY).
    TooManyTargetDescriptors,
    /// 05/26/07 UNSUPPORTED TARGET DESCRIPTOR TYPE CODE.
    UnsupportedTargetDescriptorType,
    /// 05/26/08 TOO MANY SEGMENT DESCRIPTORS.
    TooManySegmentDescriptors,
    /// 05/26/09 UNSUPPORTED SEGMENT DESCRIPTOR TYPE CODE.
    UnsupportedSegmentDescriptorType,
    /// 0A/00/00 COPY ABORTED, no additional sense (e.g. a segment outside its copy target).
    CopyAborted,
    /// 0A/08/04 UNREACHABLE COPY TARGET (a segment names a target descriptor that is absent).
    UnreachableCopyTarget,
    /// 0A/0D/02 COPY TARGET DEVICE NOT REACHABLE (no logical unit has that designator).
    CopyTargetNotReachable,
}

impl SenseReason {
    /// The one table: reason → (sense key, additional sense code, additional sense code qualifier).
    /// Codes from SPC-4 Annex D (table D.1).
    pub const fn code(self) -> (u8, u8, u8) {
        use key::*;
        use SenseReason::*;
        match self {
            NoSense => (NO_SENSE, 0x00, 0x00),
            InvalidCommandOperationCode => (ILLEGAL_REQUEST, 0x20, 0x00),
            LbaOutOfRange => (ILLEGAL_REQUEST, 0x21, 0x00),
            InvalidFieldInCdb => (ILLEGAL_REQUEST, 0x24, 0x00),
            LunNotSupported => (ILLEGAL_REQUEST, 0x25, 0x00),
            InvalidFieldInParameterList => (ILLEGAL_REQUEST, 0x26, 0x00),
            ParameterListLengthError => (ILLEGAL_REQUEST, 0x1A, 0x00),
            SavingParametersNotSupported => (ILLEGAL_REQUEST, 0x39, 0x00),
            InvalidFieldInInformationUnit => (ILLEGAL_REQUEST, 0x0E, 0x03),
            WriteProtected => (DATA_PROTECT, 0x27, 0x00),
            SoftwareWriteProtected => (DATA_PROTECT, 0x27, 0x02),
            UnrecoveredReadError => (MEDIUM_ERROR, 0x11, 0x00),
            WriteError => (MEDIUM_ERROR, 0x0C, 0x00),
            MiscompareDuringVerify => (MISCOMPARE, 0x1D, 0x00),
            InternalTargetFailure => (HARDWARE_ERROR, 0x44, 0x00),
            NotReady => (NOT_READY, 0x04, 0x00),
            NotReadyBecomingReady => (NOT_READY, 0x04, 0x01),
            AluaTransitioning => (NOT_READY, 0x04, 0x0A),
            AluaStandby => (NOT_READY, 0x04, 0x0B),
            AluaUnavailable => (NOT_READY, 0x04, 0x0C),
            AluaOffline => (NOT_READY, 0x04, 0x12),
            AsymmetricAccessStateChanged => (UNIT_ATTENTION, 0x2A, 0x06),
            SetTargetPortGroupsFailed => (HARDWARE_ERROR, 0x67, 0x0A),
            MediumNotPresent => (NOT_READY, 0x3A, 0x00),
            PowerOnOrReset => (UNIT_ATTENTION, 0x29, 0x00),
            BusDeviceResetFunction => (UNIT_ATTENTION, 0x29, 0x03),
            ItNexusLoss => (UNIT_ATTENTION, 0x29, 0x07),
            CommandsClearedByAnotherInitiator => (UNIT_ATTENTION, 0x2F, 0x00),
            ModeParametersChanged => (UNIT_ATTENTION, 0x2A, 0x01),
            ReservationsPreempted => (UNIT_ATTENTION, 0x2A, 0x03),
            ReservationsReleased => (UNIT_ATTENTION, 0x2A, 0x04),
            RegistrationsPreempted => (UNIT_ATTENTION, 0x2A, 0x05),
            InvalidReleaseOfPersistentReservation => (ILLEGAL_REQUEST, 0x26, 0x04),
            InsufficientRegistrationResources => (ILLEGAL_REQUEST, 0x55, 0x04),
            CapacityDataChanged => (UNIT_ATTENTION, 0x2A, 0x09),
            ReportedLunsDataChanged => (UNIT_ATTENTION, 0x3F, 0x0E),
            MediumMayHaveChanged => (UNIT_ATTENTION, 0x28, 0x00),
            MediumRemovalPrevented => (ILLEGAL_REQUEST, 0x53, 0x02),
            SanitizeInProgress => (NOT_READY, 0x04, 0x1B),
            SanitizeFailed => (MEDIUM_ERROR, 0x31, 0x03),
            FormatInProgress => (NOT_READY, 0x04, 0x04),
            MediumFormatCorrupted => (MEDIUM_ERROR, 0x31, 0x00),
            SelfTestFailed => (HARDWARE_ERROR, 0x3E, 0x03),
            TooManyTargetDescriptors => (ILLEGAL_REQUEST, 0x26, 0x06),
            UnsupportedTargetDescriptorType => (ILLEGAL_REQUEST, 0x26, 0x07),
            TooManySegmentDescriptors => (ILLEGAL_REQUEST, 0x26, 0x08),
            UnsupportedSegmentDescriptorType => (ILLEGAL_REQUEST, 0x26, 0x09),
            CopyAborted => (COPY_ABORTED, 0x00, 0x00),
            UnreachableCopyTarget => (COPY_ABORTED, 0x08, 0x04),
            CopyTargetNotReachable => (COPY_ABORTED, 0x0D, 0x02),
        }
    }

    pub const fn sense_key(self) -> u8 {
        self.code().0
    }

    pub const fn is_unit_attention(self) -> bool {
        self.sense_key() == key::UNIT_ATTENTION
    }
}

/// Sense-key specific field pointer (SPC-4 §4.5.2.4.2): which CDB or parameter-list byte (and
/// optionally bit) was wrong.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FieldPointer {
    /// true: the error is in the CDB (C/D = 1); false: in the parameter list.
    pub in_cdb: bool,
    pub byte: u16,
    /// Bit within the byte (0–7); `None` leaves BPV clear.
    pub bit: Option<u8>,
}

impl FieldPointer {
    /// The three sense-key specific bytes (SKSV set).
    pub fn bytes(&self) -> [u8; 3] {
        let mut b0 = 0x80; // SKSV
        if self.in_cdb {
            b0 |= 0x40; // C/D
        }
        if let Some(bit) = self.bit {
            b0 |= 0x08 | (bit & 0x07); // BPV + BIT POINTER
        }
        let [hi, lo] = self.byte.to_be_bytes();
        [b0, hi, lo]
    }
}

/// A complete sense condition: the reason plus the optional INFORMATION field and field pointer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Sense {
    pub reason: SenseReason,
    /// INFORMATION field (e.g. miscompare offset); sets VALID when it fits.
    pub information: Option<u64>,
    pub field: Option<FieldPointer>,
    /// PROGRESS INDICATION (SPC-4 §4.5.2.4.4): how much of a long operation is done, in
    /// 1/65536ths. Sense-key specific, so only when `field` is `None`.
    pub progress: Option<u16>,
}

/// Length of the fixed-format sense data we produce (additional sense length 10).
pub const FIXED_SENSE_LEN: usize = 18;

impl Sense {
    pub const fn new(reason: SenseReason) -> Self {
        Self {
            reason,
            information: None,
            field: None,
            progress: None,
        }
    }

    /// INVALID FIELD IN CDB pointing at `byte` (and `bit`, if given).
    pub const fn invalid_cdb(byte: u16, bit: Option<u8>) -> Self {
        Self {
            reason: SenseReason::InvalidFieldInCdb,
            information: None,
            field: Some(FieldPointer {
                in_cdb: true,
                byte,
                bit,
            }),
            progress: None,
        }
    }

    /// INVALID FIELD IN PARAMETER LIST pointing at `byte` (and `bit`, if given).
    pub const fn invalid_param(byte: u16, bit: Option<u8>) -> Self {
        Self {
            reason: SenseReason::InvalidFieldInParameterList,
            information: None,
            field: Some(FieldPointer {
                in_cdb: false,
                byte,
                bit,
            }),
            progress: None,
        }
    }

    /// Add a progress indication (`done` of 65536) in the sense-key specific field.
    pub const fn with_progress(mut self, done: u16) -> Self {
        self.progress = Some(done);
        self
    }

    /// The 3 sense-key specific bytes (SPC-4 §4.5.2.4), SKSV set, if any.
    fn key_specific(&self) -> Option<[u8; 3]> {
        match (self.field, self.progress) {
            (Some(fp), _) => Some(fp.bytes()),
            (None, Some(p)) => {
                let [hi, lo] = p.to_be_bytes();
                Some([0x80, hi, lo])
            }
            (None, None) => None,
        }
    }

    pub const fn with_information(mut self, info: u64) -> Self {
        self.information = Some(info);
        self
    }

    /// Fixed-format sense data, response code 70h (current error), SPC-4 §4.5.3.
    pub fn to_fixed(&self) -> Vec<u8> {
        let (k, asc, ascq) = self.reason.code();
        let mut s = vec![0u8; FIXED_SENSE_LEN];
        s[0] = 0x70;
        if let Some(info) = self.information {
            // The fixed format INFORMATION field is 4 bytes; a larger value cannot be
            // reported there, so VALID stays clear (SPC-4 §4.5.3).
            if let Ok(v) = u32::try_from(info) {
                s[0] |= 0x80;
                s[3..7].copy_from_slice(&v.to_be_bytes());
            }
        }
        s[2] = k & 0x0F;
        s[7] = (FIXED_SENSE_LEN - 8) as u8;
        s[12] = asc;
        s[13] = ascq;
        if let Some(sks) = self.key_specific() {
            s[15..18].copy_from_slice(&sks);
        }
        s
    }

    /// Descriptor-format sense data, response code 72h, SPC-4 §4.5.2 (REQUEST SENSE with DESC=1).
    pub fn to_descriptor(&self) -> Vec<u8> {
        let (k, asc, ascq) = self.reason.code();
        let mut s = vec![0x72, k & 0x0F, asc, ascq, 0, 0, 0, 0];
        if let Some(info) = self.information {
            // SPC-4 §4.5.2.2 information sense data descriptor.
            s.extend_from_slice(&[0x00, 0x0A, 0x80, 0x00]);
            s.extend_from_slice(&info.to_be_bytes());
        }
        if let Some(sks) = self.key_specific() {
            // SPC-4 §4.5.2.3 sense key specific sense data descriptor.
            s.extend_from_slice(&[0x02, 0x06, 0x00, 0x00]);
            s.extend_from_slice(&sks);
            s.push(0);
        }
        s[7] = (s.len() - 8) as u8;
        s
    }
}

impl From<SenseReason> for Sense {
    fn from(reason: SenseReason) -> Self {
        Sense::new(reason)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_entries() {
        assert_eq!(
            SenseReason::InvalidCommandOperationCode.code(),
            (0x05, 0x20, 0x00)
        );
        assert_eq!(SenseReason::LbaOutOfRange.code(), (0x05, 0x21, 0x00));
        assert_eq!(SenseReason::InvalidFieldInCdb.code(), (0x05, 0x24, 0x00));
        assert_eq!(
            SenseReason::InvalidFieldInParameterList.code(),
            (0x05, 0x26, 0x00)
        );
        assert_eq!(
            SenseReason::ParameterListLengthError.code(),
            (0x05, 0x1A, 0x00)
        );
        assert_eq!(SenseReason::LunNotSupported.code(), (0x05, 0x25, 0x00));
        assert_eq!(SenseReason::WriteProtected.code(), (0x07, 0x27, 0x00));
        assert_eq!(SenseReason::UnrecoveredReadError.code(), (0x03, 0x11, 0x00));
        assert_eq!(SenseReason::WriteError.code(), (0x03, 0x0C, 0x00));
        assert_eq!(
            SenseReason::MiscompareDuringVerify.code(),
            (0x0E, 0x1D, 0x00)
        );
        assert_eq!(
            SenseReason::SavingParametersNotSupported.code(),
            (0x05, 0x39, 0x00)
        );
        assert_eq!(
            SenseReason::InternalTargetFailure.code(),
            (0x04, 0x44, 0x00)
        );
        assert_eq!(SenseReason::PowerOnOrReset.code(), (0x06, 0x29, 0x00));
        assert_eq!(
            SenseReason::BusDeviceResetFunction.code(),
            (0x06, 0x29, 0x03)
        );
        assert_eq!(SenseReason::SanitizeInProgress.code(), (0x02, 0x04, 0x1B));
        assert_eq!(SenseReason::FormatInProgress.code(), (0x02, 0x04, 0x04));
        assert_eq!(
            SenseReason::MediumFormatCorrupted.code(),
            (0x03, 0x31, 0x00)
        );
        assert_eq!(SenseReason::SelfTestFailed.code(), (0x04, 0x3E, 0x03));
        assert_eq!(
            SenseReason::MediumRemovalPrevented.code(),
            (0x05, 0x53, 0x02)
        );
        assert_eq!(
            SenseReason::CopyTargetNotReachable.code(),
            (0x0A, 0x0D, 0x02)
        );
        assert!(SenseReason::MediumMayHaveChanged.is_unit_attention());
        assert!(SenseReason::ModeParametersChanged.is_unit_attention());
        assert!(!SenseReason::WriteError.is_unit_attention());
    }

    #[test]
    fn fixed_format_invalid_field() {
        let s = Sense::invalid_cdb(2, Some(1)).to_fixed();
        assert_eq!(
            s,
            [0x70, 0, 0x05, 0, 0, 0, 0, 10, 0, 0, 0, 0, 0x24, 0x00, 0, 0xC9, 0x00, 0x02]
        );
        let p = Sense::invalid_param(0x1234, None).to_fixed();
        assert_eq!(&p[15..18], &[0x80, 0x12, 0x34]);
    }

    #[test]
    fn fixed_format_information() {
        let s = Sense::new(SenseReason::MiscompareDuringVerify)
            .with_information(0x0102_0304)
            .to_fixed();
        assert_eq!(s[0], 0xF0);
        assert_eq!(&s[3..7], &[1, 2, 3, 4]);
        assert_eq!((s[2], s[12], s[13]), (0x0E, 0x1D, 0x00));
        // Too large for the 4-byte field: VALID stays clear.
        let big = Sense::new(SenseReason::LbaOutOfRange)
            .with_information(1 << 40)
            .to_fixed();
        assert_eq!(big[0], 0x70);
        assert_eq!(&big[3..7], &[0, 0, 0, 0]);
    }

    #[test]
    fn descriptor_format() {
        let d = Sense::invalid_cdb(1, Some(4))
            .with_information(7)
            .to_descriptor();
        assert_eq!(&d[..4], &[0x72, 0x05, 0x24, 0x00]);
        assert_eq!(d[7] as usize, d.len() - 8);
        assert_eq!(&d[8..12], &[0x00, 0x0A, 0x80, 0x00]);
        assert_eq!(&d[12..20], &7u64.to_be_bytes());
        assert_eq!(&d[20..28], &[0x02, 0x06, 0, 0, 0xCC, 0x00, 0x01, 0]);
        let plain = Sense::new(SenseReason::NoSense).to_descriptor();
        assert_eq!(plain, [0x72, 0, 0, 0, 0, 0, 0, 0]);
    }
}
