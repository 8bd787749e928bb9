//! The disk LUN: command execution without I/O.

use crate::cdb::{self, be16, be24, be32, be64, Cmd, CmdDesc, Transfer};
use crate::config::{DesignatorKind, LunInfo};
use crate::lunaddr::encode_lun;
use crate::resp::Resp;
use crate::sense::{Sense, FIXED_SENSE_LEN};

/// Per-command context the transport supplies: things a LUN cannot know.
#[derive(Clone, Copy, Debug, Default)]
pub struct Context<'a> {
    /// LUN numbers (0..=16383) the initiator may access, reported by REPORT
    /// LUNS in the order given. Larger numbers are skipped.
    pub luns: &'a [u16],
    /// Sense data pending for this I_T nexus (e.g. a unit attention), returned
    /// by REQUEST SENSE; NO SENSE when `None`.
    pub pending_sense: Option<Sense>,
}

/// A backend operation the transport must perform. Ranges are already
/// validated against the LUN's capacity and limits; `blocks` is never 0.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum BlockOp {
    /// Read `blocks` blocks at `lba` into the data-in buffer. `fua`: read
    /// from stable storage, bypassing any cache.
    Read {
        /// First logical block.
        lba: u64,
        /// Block count (1..=max_transfer_blocks).
        blocks: u32,
        /// Force unit access.
        fua: bool,
    },
    /// Write `blocks` blocks at `lba` from the data-out buffer. `fua`: the
    /// write must be on stable storage before completion (always set when
    /// the LUN has no write cache).
    Write {
        /// First logical block.
        lba: u64,
        /// Block count (1..=max_transfer_blocks).
        blocks: u32,
        /// Force unit access.
        fua: bool,
    },
    /// Flush the volatile cache for `blocks` blocks at `lba` (SYNCHRONIZE
    /// CACHE; a zero block count in the CDB is expanded to "to the end").
    Flush {
        /// First logical block.
        lba: u64,
        /// Block count.
        blocks: u64,
    },
    /// Zero `blocks` blocks at `lba` (WRITE SAME with NDOB, or with an
    /// all-zero data block, see [`BlockOp::with_write_same_data`]). With
    /// `may_unmap` the backend may deallocate the range instead, provided
    /// the blocks then read back as zeros.
    WriteZeroes {
        /// First logical block.
        lba: u64,
        /// Block count (1..=max_write_same_blocks).
        blocks: u32,
        /// The initiator set the UNMAP bit.
        may_unmap: bool,
    },
    /// WRITE SAME: fetch one block of data-out, then call
    /// [`BlockOp::with_write_same_data`]; if it stays `WriteSame`, replicate
    /// that block over `blocks` blocks at `lba`.
    WriteSame {
        /// First logical block.
        lba: u64,
        /// Block count (1..=max_write_same_blocks).
        blocks: u32,
        /// The initiator set the UNMAP bit.
        unmap: bool,
    },
    /// UNMAP: fetch the `param_len`-byte parameter list (data-out), then call
    /// [`Lun::parse_unmap`] and unmap each range it yields.
    UnmapParams {
        /// PARAMETER LIST LENGTH (>= 8).
        param_len: u16,
    },
}

impl BlockOp {
    /// The data transfer this operation implies for a LUN with `block_size`.
    pub fn transfer(&self, block_size: u32) -> Transfer {
        let bs = u64::from(block_size);
        match *self {
            BlockOp::Read { blocks, .. } => Transfer::data_in(u64::from(blocks) * bs),
            BlockOp::Write { blocks, .. } => Transfer::data_out(u64::from(blocks) * bs),
            BlockOp::WriteSame { .. } => Transfer::data_out(bs),
            BlockOp::UnmapParams { param_len } => Transfer::data_out(u64::from(param_len)),
            BlockOp::Flush { .. } | BlockOp::WriteZeroes { .. } => Transfer::NONE,
        }
    }

    /// Resolves a [`BlockOp::WriteSame`] once its data block has arrived: an
    /// all-zero block turns it into [`BlockOp::WriteZeroes`] (keeping the
    /// UNMAP bit as `may_unmap`); a non-zero block keeps it `WriteSame`
    /// (the UNMAP bit must then be ignored: unmapping would not produce the
    /// data). Other operations are returned unchanged.
    pub fn with_write_same_data(self, block: &[u8]) -> BlockOp {
        match self {
            BlockOp::WriteSame { lba, blocks, unmap } if block.iter().all(|&b| b == 0) => {
                BlockOp::WriteZeroes {
                    lba,
                    blocks,
                    may_unmap: unmap,
                }
            }
            other => other,
        }
    }
}

/// Result of [`Lun::execute`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// The command completed with GOOD status; the first `data_in_len` bytes
    /// of the data-in buffer hold its response (already truncated to the
    /// allocation length and the buffer size).
    Done {
        /// Bytes of data-in written.
        data_in_len: usize,
    },
    /// The command failed: CHECK CONDITION with this sense data.
    Check(Sense),
    /// The command needs the backend: perform the operation, then complete
    /// with GOOD or map the failure with [`crate::sense_for_block_failure`].
    Block(BlockOp),
}

/// A SCSI direct-access (disk) logical unit. Immutable: create a new one
/// when the configuration (e.g. capacity) changes.
#[derive(Clone, Debug)]
pub struct Lun {
    info: LunInfo,
}

type Res = Result<Outcome, Sense>;

const DONE: Res = Ok(Outcome::Done { data_in_len: 0 });

impl Lun {
    /// Creates a LUN from a validated description.
    pub fn new(info: LunInfo) -> Lun {
        Lun { info }
    }

    /// The LUN's description.
    pub fn info(&self) -> &LunInfo {
        &self.info
    }

    /// Executes `cdb` (which may be longer than the command's CDB; extra
    /// bytes are ignored). Responses are written to `data_in`, truncated to
    /// the command's allocation length and to `data_in.len()`. Never panics;
    /// every SCSI failure comes back as [`Outcome::Check`]. READ/WRITE
    /// decoding does not allocate.
    pub fn execute(&self, cdb: &[u8], ctx: &Context<'_>, data_in: &mut [u8]) -> Outcome {
        let desc = match cdb::decode(cdb, &self.info.caps) {
            Ok(d) => d,
            Err(s) => return Outcome::Check(s),
        };
        self.dispatch(desc, cdb, ctx, data_in)
            .unwrap_or_else(Outcome::Check)
    }

    fn dispatch(&self, desc: &CmdDesc, c: &[u8], ctx: &Context<'_>, data_in: &mut [u8]) -> Res {
        let fua = c[1] & 0x08 != 0;
        match desc.cmd {
            Cmd::Read10 => self.rw(false, u64::from(be32(c, 2)), u32::from(be16(c, 7)), fua, 7),
            Cmd::Write10 => self.rw(true, u64::from(be32(c, 2)), u32::from(be16(c, 7)), fua, 7),
            Cmd::Read16 => self.rw(false, be64(c, 2), be32(c, 10), fua, 10),
            Cmd::Write16 => self.rw(true, be64(c, 2), be32(c, 10), fua, 10),
            Cmd::Read12 => self.rw(false, u64::from(be32(c, 2)), be32(c, 6), fua, 6),
            Cmd::Write12 => self.rw(true, u64::from(be32(c, 2)), be32(c, 6), fua, 6),
            Cmd::Read6 | Cmd::Write6 => {
                let lba = u64::from(be24(c, 1) & 0x1F_FFFF);
                // SBC: a TRANSFER LENGTH of 0 means 256 blocks for the 6-byte CDBs.
                let blocks = if c[4] == 0 { 256 } else { u32::from(c[4]) };
                self.rw(desc.cmd == Cmd::Write6, lba, blocks, false, 4)
            }
            Cmd::TestUnitReady | Cmd::StartStopUnit => DONE,
            Cmd::Inquiry => self.inquiry(c, data_in),
            Cmd::RequestSense => Ok(request_sense(c, ctx.pending_sense, data_in)),
            Cmd::ReportLuns => report_luns(c, ctx.luns, data_in),
            Cmd::ModeSense6 => self.mode_sense(c, false, data_in),
            Cmd::ModeSense10 => self.mode_sense(c, true, data_in),
            Cmd::ReadCapacity10 => Ok(self.read_capacity10(data_in)),
            Cmd::ReadCapacity16 => Ok(self.read_capacity16(c, data_in)),
            Cmd::SyncCache10 => self.sync_cache(u64::from(be32(c, 2)), u64::from(be16(c, 7))),
            Cmd::SyncCache16 => self.sync_cache(be64(c, 2), u64::from(be32(c, 10))),
            Cmd::Verify10 => self.verify(u64::from(be32(c, 2)), u64::from(be16(c, 7))),
            Cmd::Verify16 => self.verify(be64(c, 2), u64::from(be32(c, 10))),
            Cmd::WriteSame10 => {
                self.write_same(u64::from(be32(c, 2)), u32::from(be16(c, 7)), c[1], false, 7)
            }
            Cmd::WriteSame16 => self.write_same(be64(c, 2), be32(c, 10), c[1], c[1] & 1 != 0, 10),
            Cmd::Unmap => self.unmap(c),
            Cmd::ReportOpcodes => self.report_opcodes(c, data_in),
        }
    }

    fn check_range(&self, lba: u64, blocks: u64) -> Result<(), Sense> {
        match lba.checked_add(blocks) {
            Some(end) if end <= self.info.num_blocks => Ok(()),
            _ => Err(Sense::LBA_OUT_OF_RANGE),
        }
    }

    fn check_writable(&self) -> Result<(), Sense> {
        if self.info.caps.read_only {
            Err(Sense::WRITE_PROTECTED)
        } else {
            Ok(())
        }
    }

    #[inline]
    fn rw(&self, write: bool, lba: u64, blocks: u32, fua: bool, len_at: u16) -> Res {
        if write {
            self.check_writable()?;
        }
        if blocks > self.info.limits.max_transfer_blocks {
            return Err(Sense::invalid_field_in_cdb(len_at, None));
        }
        self.check_range(lba, u64::from(blocks))?;
        if blocks == 0 {
            // SBC: a zero transfer length is not an error; nothing to do.
            return DONE;
        }
        Ok(Outcome::Block(if write {
            BlockOp::Write {
                lba,
                blocks,
                fua: fua || !self.info.caps.write_cache,
            }
        } else {
            BlockOp::Read { lba, blocks, fua }
        }))
    }

    fn sync_cache(&self, lba: u64, blocks: u64) -> Res {
        let blocks = if blocks == 0 {
            if lba >= self.info.num_blocks {
                return Err(Sense::LBA_OUT_OF_RANGE);
            }
            self.info.num_blocks - lba
        } else {
            self.check_range(lba, blocks)?;
            blocks
        };
        if !self.info.caps.write_cache {
            // Writes are all FUA; nothing volatile to flush.
            return DONE;
        }
        Ok(Outcome::Block(BlockOp::Flush { lba, blocks }))
    }

    /// VERIFY with BYTCHK = 0: range check only, GOOD (the medium is not
    /// read). BYTCHK != 0 (compare) is rejected by the CDB template with
    /// INVALID FIELD IN CDB, byte 1.
    fn verify(&self, lba: u64, blocks: u64) -> Res {
        self.check_range(lba, blocks)?;
        DONE
    }

    fn write_same(&self, lba: u64, blocks: u32, flags: u8, ndob: bool, len_at: u16) -> Res {
        self.check_writable()?;
        let unmap = flags & 0x08 != 0;
        if unmap && !self.info.caps.unmap {
            return Err(Sense::invalid_field_in_cdb(1, Some(3)));
        }
        // WSNZ = 1: a zero block count ("to the end") is not supported.
        if blocks == 0 || blocks > self.info.limits.max_write_same_blocks {
            return Err(Sense::invalid_field_in_cdb(len_at, None));
        }
        self.check_range(lba, u64::from(blocks))?;
        Ok(Outcome::Block(if ndob {
            BlockOp::WriteZeroes {
                lba,
                blocks,
                may_unmap: unmap,
            }
        } else {
            BlockOp::WriteSame { lba, blocks, unmap }
        }))
    }

    fn unmap(&self, c: &[u8]) -> Res {
        self.check_writable()?;
        let param_len = be16(c, 7);
        match param_len {
            0 => DONE,
            1..=7 => Err(Sense::PARAMETER_LIST_LENGTH_ERROR),
            _ => Ok(Outcome::Block(BlockOp::UnmapParams { param_len })),
        }
    }

    fn read_capacity10(&self, data_in: &mut [u8]) -> Outcome {
        let last = self.info.num_blocks - 1;
        let mut r = Resp::new(data_in, 8);
        r.u32(u32::try_from(last).unwrap_or(u32::MAX));
        r.u32(self.info.block_size);
        r.done()
    }

    fn read_capacity16(&self, c: &[u8], data_in: &mut [u8]) -> Outcome {
        let caps = &self.info.caps;
        let mut r = Resp::new(data_in, be32(c, 10) as usize);
        r.u64(self.info.num_blocks - 1);
        r.u32(self.info.block_size);
        r.u8(0); // P_TYPE, PROT_EN: no protection information
        r.u8(0); // P_I_EXPONENT, LOGICAL BLOCKS PER PHYSICAL BLOCK EXPONENT
        let mut b14 = 0;
        if caps.unmap {
            b14 |= 0x80; // LBPME
            if caps.unmap_reads_zero {
                b14 |= 0x40; // LBPRZ
            }
        }
        r.u8(b14); // + LOWEST ALIGNED LBA (high bits) = 0
        r.u8(0);
        r.zeros(16);
        r.done()
    }

    fn inquiry(&self, c: &[u8], data_in: &mut [u8]) -> Res {
        let evpd = c[1] & 0x01 != 0;
        let page = c[2];
        let mut r = Resp::new(data_in, usize::from(be16(c, 3)));
        if !evpd {
            if page != 0 {
                return Err(Sense::invalid_field_in_cdb(2, None));
            }
            standard_inquiry(
                &mut r,
                0x00,
                &self.info.vendor,
                &self.info.product,
                &self.info.revision,
            );
            return Ok(r.done());
        }
        match page {
            0x00 => {
                vpd_header(&mut r, 0x00);
                r.put(&SUPPORTED_VPD);
            }
            0x80 => {
                vpd_header(&mut r, 0x80);
                r.put(self.info.serial.as_bytes());
            }
            0x83 => self.vpd_device_id(&mut r),
            0xB0 => self.vpd_block_limits(&mut r),
            0xB1 => {
                vpd_header(&mut r, 0xB1);
                r.u16(0x0001); // MEDIUM ROTATION RATE: non-rotating medium
                r.zeros(0x3C - 2);
            }
            0xB2 => self.vpd_lbp(&mut r),
            _ => return Err(Sense::invalid_field_in_cdb(2, None)),
        }
        let page_len = (r.pos() - 4) as u16;
        r.patch(2, &page_len.to_be_bytes());
        Ok(r.done())
    }

    fn vpd_device_id(&self, r: &mut Resp<'_>) {
        vpd_header(r, 0x83);
        // NAA or EUI-64, binary code set, associated with the LU.
        let kind = match self.info.designator {
            DesignatorKind::NaaLocal => 0x03,
            DesignatorKind::Eui64 => 0x02,
        };
        r.put(&[0x01, kind, 0x00, 8]);
        r.put(&self.info.designator_bytes());
        // T10 vendor ID: ASCII, LU association: vendor + product + serial.
        let serial = self.info.serial.as_bytes();
        r.put(&[0x02, 0x01, 0x00, (8 + 16 + serial.len()) as u8]);
        r.put(&self.info.vendor);
        r.put(&self.info.product);
        r.put(serial);
    }

    fn vpd_block_limits(&self, r: &mut Resp<'_>) {
        let l = &self.info.limits;
        let caps = &self.info.caps;
        vpd_header(r, 0xB0);
        r.u8(0x01); // WSNZ
        r.u8(0); // MAXIMUM COMPARE AND WRITE LENGTH: not supported
        r.u16(l.opt_transfer_granularity);
        r.u32(l.max_transfer_blocks);
        r.u32(l.opt_transfer_blocks);
        r.u32(0); // MAXIMUM PREFETCH LENGTH
        if caps.unmap {
            r.u32(l.max_unmap_lba_count);
            r.u32(l.max_unmap_descriptors);
            r.u32(l.unmap_granularity);
        } else {
            r.zeros(12);
        }
        r.u32(0); // UGAVALID = 0, UNMAP GRANULARITY ALIGNMENT
        r.u64(if caps.write_same() {
            u64::from(l.max_write_same_blocks)
        } else {
            0
        });
        r.zeros(20); // atomic transfer limits, reserved
    }

    fn vpd_lbp(&self, r: &mut Resp<'_>) {
        let caps = &self.info.caps;
        vpd_header(r, 0xB2);
        r.u8(0); // THRESHOLD EXPONENT
        let mut flags = 0;
        let mut ptype = 0; // fully provisioned
        if caps.unmap {
            flags |= 0x80 | 0x40 | 0x20; // LBPU, LBPWS, LBPWS10
            if caps.unmap_reads_zero {
                flags |= 0x04; // LBPRZ = 001b
            }
            ptype = 0x02; // thin provisioned
        }
        r.u8(flags); // ANC_SUP = 0, DP = 0
        r.u8(ptype);
        r.u8(0);
    }

    fn mode_sense(&self, c: &[u8], ten: bool, data_in: &mut [u8]) -> Res {
        let dbd = c[1] & 0x08 != 0;
        let llbaa = ten && c[1] & 0x10 != 0;
        let pc = c[2] >> 6;
        let page = c[2] & 0x3F;
        let subpage = c[3];
        let alloc = if ten {
            usize::from(be16(c, 7))
        } else {
            usize::from(c[4])
        };
        if pc == 3 {
            return Err(Sense::SAVING_PARAMETERS_NOT_SUPPORTED);
        }
        let (caching, control) = match page {
            0x08 => (true, false),
            0x0A => (false, true),
            0x3F => (true, true),
            _ => return Err(Sense::invalid_field_in_cdb(2, None)),
        };
        if subpage != 0x00 && subpage != 0xFF {
            return Err(Sense::invalid_field_in_cdb(3, None));
        }
        let changeable = pc == 1;
        let caps = &self.info.caps;
        let mut r = Resp::new(data_in, alloc);
        // Device-specific parameter: WP, DPOFUA.
        let dsp = if caps.read_only { 0x80 } else { 0x00 } | 0x10;
        let bd_len: u16 = match (dbd, llbaa) {
            (true, _) => 0,
            (false, true) => 16,
            (false, false) => 8,
        };
        if ten {
            r.u16(0); // MODE DATA LENGTH, patched below
            r.u8(0); // medium type
            r.u8(dsp);
            r.u8(if llbaa && !dbd { 0x01 } else { 0x00 }); // LONGLBA
            r.u8(0);
            r.u16(bd_len);
        } else {
            r.u8(0);
            r.u8(0);
            r.u8(dsp);
            r.u8(bd_len as u8);
        }
        let (nb, bs) = if changeable {
            (0, 0)
        } else {
            (self.info.num_blocks, self.info.block_size)
        };
        match bd_len {
            16 => {
                r.u64(nb);
                r.u32(0);
                r.u32(bs);
            }
            8 => {
                r.u32(u32::try_from(nb).unwrap_or(u32::MAX));
                r.u8(0);
                r.put(&bs.to_be_bytes()[1..]);
            }
            _ => {}
        }
        if caching {
            r.put(&[0x08, 0x12]);
            r.u8(if caps.write_cache && !changeable {
                0x04
            } else {
                0x00
            }); // WCE
            r.zeros(17);
        }
        if control {
            r.put(&[0x0A, 0x0A]);
            if changeable {
                r.zeros(10);
            } else {
                // TST 000, D_SENSE 0; QUEUE ALGORITHM MODIFIER 1 (unrestricted
                // reordering), QERR 00; TAS 0; busy timeout unlimited.
                r.put(&[0x00, 0x10, 0x00, 0x00, 0x00, 0x00, 0xFF, 0xFF, 0x00, 0x00]);
            }
        }
        let total = r.pos();
        if ten {
            r.patch(0, &((total - 2) as u16).to_be_bytes());
        } else {
            r.patch(0, &[(total - 1) as u8]);
        }
        Ok(r.done())
    }

    fn report_opcodes(&self, c: &[u8], data_in: &mut [u8]) -> Res {
        let rctd = c[2] & 0x80 != 0;
        let option = c[2] & 0x07;
        let req_op = c[3];
        let req_sa = be16(c, 4);
        let mut r = Resp::new(data_in, be32(c, 6) as usize);
        let caps = &self.info.caps;
        let found = cdb::by_opcode(req_op).filter(|d| d.supported(caps));
        let one = match option {
            0 => {
                r.u32(0); // COMMAND DATA LENGTH, patched below
                for d in cdb::TABLE.iter().filter(|d| d.supported(caps)) {
                    r.u8(d.opcode);
                    r.u8(0);
                    r.u16(u16::from(d.sa.unwrap_or(0)));
                    r.u8(0);
                    r.u8(if rctd { 0x02 } else { 0 } | if d.sa.is_some() { 0x01 } else { 0 });
                    r.u16(d.len() as u16);
                    if rctd {
                        timeouts_descriptor(&mut r);
                    }
                }
                let len = (r.pos() - 4) as u32;
                r.patch(0, &len.to_be_bytes());
                return Ok(r.done());
            }
            1 => match found {
                Some(d) if d.sa.is_some() => return Err(Sense::invalid_field_in_cdb(3, None)),
                d => d,
            },
            2 => match found {
                Some(d) if d.sa.is_none() => return Err(Sense::invalid_field_in_cdb(3, None)),
                d => d.filter(|d| d.sa.map(u16::from) == Some(req_sa)),
            },
            _ => return Err(Sense::invalid_field_in_cdb(2, None)),
        };
        match one {
            Some(d) => {
                r.u8(0);
                r.u8(if rctd { 0x80 } else { 0 } | 0x03); // CTDP, SUPPORT = 011b
                r.u16(d.len() as u16);
                r.put(d.usage);
                if rctd {
                    timeouts_descriptor(&mut r);
                }
            }
            None => r.put(&[0x00, 0x01, 0x00, 0x00]), // SUPPORT = 001b: not supported
        }
        Ok(r.done())
    }

    /// The data transfer `cdb` asks for, to compare against the initiator's
    /// data descriptors: READ/WRITE → blocks × block size (READ(6)/WRITE(6)
    /// length 0 = 256 blocks); WRITE SAME → one block out (none with NDOB);
    /// UNMAP → parameter list length out; commands returning parameter data
    /// → their allocation length in; others → none. Does not validate the
    /// CDB (unknown or short CDBs yield [`Transfer::NONE`]).
    pub fn expected_transfer(&self, cdb: &[u8]) -> Transfer {
        let Some(d) = cdb.first().and_then(|&op| cdb::by_opcode(op)) else {
            return Transfer::NONE;
        };
        if cdb.len() < d.len() {
            return Transfer::NONE;
        }
        let c = cdb;
        let bs = u64::from(self.info.block_size);
        let n6 = || if c[4] == 0 { 256 } else { u64::from(c[4]) };
        match d.cmd {
            Cmd::Read6 => Transfer::data_in(n6() * bs),
            Cmd::Write6 => Transfer::data_out(n6() * bs),
            Cmd::Read10 => Transfer::data_in(u64::from(be16(c, 7)) * bs),
            Cmd::Write10 => Transfer::data_out(u64::from(be16(c, 7)) * bs),
            Cmd::Read12 => Transfer::data_in(u64::from(be32(c, 6)) * bs),
            Cmd::Write12 => Transfer::data_out(u64::from(be32(c, 6)) * bs),
            Cmd::Read16 => Transfer::data_in(u64::from(be32(c, 10)) * bs),
            Cmd::Write16 => Transfer::data_out(u64::from(be32(c, 10)) * bs),
            Cmd::WriteSame10 => Transfer::data_out(bs),
            Cmd::WriteSame16 if c[1] & 0x01 != 0 => Transfer::NONE,
            Cmd::WriteSame16 => Transfer::data_out(bs),
            Cmd::Unmap => Transfer::data_out(u64::from(be16(c, 7))),
            Cmd::Inquiry => Transfer::data_in(u64::from(be16(c, 3))),
            Cmd::RequestSense | Cmd::ModeSense6 => Transfer::data_in(u64::from(c[4])),
            Cmd::ModeSense10 => Transfer::data_in(u64::from(be16(c, 7))),
            Cmd::ReadCapacity10 => Transfer::data_in(8),
            Cmd::ReadCapacity16 => Transfer::data_in(u64::from(be32(c, 10))),
            Cmd::ReportLuns | Cmd::ReportOpcodes => Transfer::data_in(u64::from(be32(c, 6))),
            Cmd::TestUnitReady
            | Cmd::StartStopUnit
            | Cmd::SyncCache10
            | Cmd::SyncCache16
            | Cmd::Verify10
            | Cmd::Verify16 => Transfer::NONE,
        }
    }
}

const SUPPORTED_VPD: [u8; 6] = [0x00, 0x80, 0x83, 0xB0, 0xB1, 0xB2];

fn vpd_header(r: &mut Resp<'_>, page: u8) {
    r.put(&[0x00, page, 0x00, 0x00]); // PAGE LENGTH patched by the caller
}

fn timeouts_descriptor(r: &mut Resp<'_>) {
    // COMMAND TIMEOUTS DESCRIPTOR: length 0x0A, timeouts not specified (0).
    r.u16(0x000A);
    r.zeros(10);
}

fn standard_inquiry(
    r: &mut Resp<'_>,
    byte0: u8,
    vendor: &[u8; 8],
    product: &[u8; 16],
    rev: &[u8; 4],
) {
    r.u8(byte0); // PERIPHERAL QUALIFIER / DEVICE TYPE
    r.u8(0x00); // RMB = 0
    r.u8(0x06); // VERSION: SPC-4
    r.u8(0x12); // HISUP, RESPONSE DATA FORMAT = 2
    r.u8(31); // ADDITIONAL LENGTH: 36 - 5
    r.u8(0x00);
    r.u8(0x00);
    r.u8(if byte0 == 0 { 0x02 } else { 0x00 }); // CMDQUE
    r.put(vendor);
    r.put(product);
    r.put(rev);
}

fn request_sense(c: &[u8], pending: Option<Sense>, data_in: &mut [u8]) -> Outcome {
    let sense = pending.unwrap_or(Sense::NO_SENSE);
    let mut r = Resp::new(data_in, usize::from(c[4]));
    if c[1] & 0x01 != 0 {
        let mut b = [0u8; 16];
        let n = sense.to_descriptor(&mut b);
        r.put(&b[..n]);
    } else {
        let mut b = [0u8; FIXED_SENSE_LEN];
        sense.to_fixed(&mut b);
        r.put(&b);
    }
    r.done()
}

fn report_luns(c: &[u8], luns: &[u16], data_in: &mut [u8]) -> Res {
    let select = c[2];
    let mut r = Resp::new(data_in, be32(c, 6) as usize);
    r.u32(0); // LUN LIST LENGTH, patched below
    r.u32(0);
    match select {
        // 0x00: all LUNs; 0x02: all LUNs (no well-known LUNs exist).
        0x00 | 0x02 => {
            for raw in luns.iter().filter_map(|&l| encode_lun(l)) {
                r.put(&raw);
            }
        }
        0x01 => {} // well-known LUNs only: none
        _ => return Err(Sense::invalid_field_in_cdb(2, None)),
    }
    let len = (r.pos() - 8) as u32;
    r.patch(0, &len.to_be_bytes());
    Ok(r.done())
}

/// Executes `cdb` addressed to a LUN that does not exist (SPC-4 "incorrect
/// logical unit"): INQUIRY returns standard data with peripheral qualifier
/// 011b / device type 1Fh (EVPD pages fail), REPORT LUNS works, REQUEST
/// SENSE returns LOGICAL UNIT NOT SUPPORTED as data, and every other command
/// fails with CHECK CONDITION, ILLEGAL REQUEST, LOGICAL UNIT NOT SUPPORTED.
pub fn execute_absent_lun(cdb: &[u8], ctx: &Context<'_>, data_in: &mut [u8]) -> Outcome {
    let op = match cdb.first() {
        Some(&op @ (0x12 | 0xA0 | 0x03)) => op,
        _ => return Outcome::Check(Sense::LUN_NOT_SUPPORTED),
    };
    let desc = match cdb::decode(cdb, &Default::default()) {
        Ok(d) => d,
        Err(s) => return Outcome::Check(s),
    };
    let c = cdb;
    let res = match op {
        0x12 if c[1] & 0x01 == 0 && c[2] == 0 => {
            let mut r = Resp::new(data_in, usize::from(be16(c, 3)));
            standard_inquiry(&mut r, 0x7F, &[b' '; 8], &[b' '; 16], &[b' '; 4]);
            Ok(r.done())
        }
        0x12 if c[1] & 0x01 == 0 => Err(Sense::invalid_field_in_cdb(2, None)),
        0x12 => Err(Sense::LUN_NOT_SUPPORTED),
        0xA0 => report_luns(c, ctx.luns, data_in),
        _ => {
            debug_assert_eq!(desc.cmd, Cmd::RequestSense);
            Ok(request_sense(c, Some(Sense::LUN_NOT_SUPPORTED), data_in))
        }
    };
    res.unwrap_or_else(Outcome::Check)
}
