//! `scsi` — a transport-independent SCSI direct-access (disk) logical unit.
//!
//! The crate is pure: it does no I/O and knows nothing about bdevs or SRP.
//! [`Lun::execute`] takes a CDB and either
//!
//! - answers it from the LUN's description ([`Outcome::Done`]: INQUIRY and
//!   its VPD pages, READ CAPACITY, MODE SENSE, REPORT LUNS, REPORT SUPPORTED
//!   OPERATION CODES, REQUEST SENSE, TEST UNIT READY, ...), writing the
//!   response into the caller's data-in buffer, truncated to the allocation
//!   length;
//! - fails it ([`Outcome::Check`] with [`Sense`] data: SCSI failures are
//!   data, not Rust errors); or
//! - turns it into a validated backend operation ([`Outcome::Block`] with a
//!   [`BlockOp`]) that the transport runs against its block device, mapping
//!   a failure back to sense data with [`sense_for_block_failure`].
//!
//! Decoding is two-step: the opcode selects a CDB template whose usage map
//! rejects unsupported bits (and is what REPORT SUPPORTED OPERATION CODES
//! reports), then a typed decoder reads the fields. READ/WRITE decoding does
//! not allocate.
//!
//! Documented choices:
//!
//! - VERIFY(10/16) supports BYTCHK = 0 only: after the range check it
//!   completes GOOD without reading the medium. BYTCHK != 0 (and VRPROTECT)
//!   fails with INVALID FIELD IN CDB pointing at byte 1.
//! - The LU designator in VPD page 0x83 is NAA type 3 (locally assigned,
//!   low 60 bits of the id) by default, or EUI-64 (full id); see
//!   [`DesignatorKind`]. A T10 vendor ID designator (vendor + product +
//!   serial) follows it.
//! - WRITE SAME requires WSNZ (a zero block count is rejected); with NDOB it
//!   becomes [`BlockOp::WriteZeroes`]; otherwise the transport fetches the
//!   block and calls [`BlockOp::with_write_same_data`].
//! - Without a write cache ([`Capabilities::write_cache`] false) writes are
//!   FUA and SYNCHRONIZE CACHE completes at once.
//! - Unit attentions are kept by the transport per I_T nexus;
//!   [`unit_attention_action`] tells it what to do with one per command.
//! - LOGICAL UNIT NOT SUPPORTED is 0x25/0x00 (SPC-4); see
//!   [`execute_absent_lun`].
//!
//! ```
//! use scsi::{BlockOp, Context, Lun, LunConfig, LunInfo, Outcome};
//!
//! let info = LunInfo::new(LunConfig {
//!     block_size: 512,
//!     num_blocks: 1 << 20,
//!     vendor: "STRATA".into(),
//!     product: "disk".into(),
//!     revision: "0001".into(),
//!     serial: "lun0".into(),
//!     id: 0x1234,
//!     designator: Default::default(),
//!     caps: Default::default(),
//!     limits: Default::default(),
//! })
//! .unwrap();
//! let lun = Lun::new(info);
//! let read10 = [0x28, 0, 0, 0, 0, 8, 0, 0, 4, 0];
//! let out = lun.execute(&read10, &Context::default(), &mut []);
//! assert_eq!(out, Outcome::Block(BlockOp::Read { lba: 8, blocks: 4, fua: false }));
//! ```
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod cdb;
mod config;
mod lun;
mod lunaddr;
mod resp;
mod sense;
mod unmap;

pub use cdb::{unit_attention_action, Direction, Transfer, UaAction};
pub use config::{
    Capabilities, ConfigError, DesignatorKind, Limits, LunConfig, LunInfo, MAX_SERIAL_LEN,
};
pub use lun::{execute_absent_lun, BlockOp, Context, Lun, Outcome};
pub use lunaddr::{decode_lun, encode_lun, MAX_LUN};
pub use sense::{
    sense_for_block_failure, BlockFailure, FieldPointer, Sense, SenseKey, Status, FIXED_SENSE_LEN,
};
pub use unmap::{UnmapIter, UnmapRange};
