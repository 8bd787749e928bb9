//! UNMAP parameter list parsing (SBC-3 5.28.2).

use crate::cdb::{be16, be32, be64};
use crate::lun::Lun;
use crate::sense::Sense;

/// One range to unmap.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct UnmapRange {
    /// First logical block.
    pub lba: u64,
    /// Number of blocks (never 0).
    pub blocks: u32,
}

/// Iterator over the non-empty block descriptors of a validated UNMAP
/// parameter list. Borrows the list; does not allocate.
#[derive(Clone, Debug)]
pub struct UnmapIter<'a> {
    descriptors: &'a [u8],
}

impl Iterator for UnmapIter<'_> {
    type Item = UnmapRange;

    fn next(&mut self) -> Option<UnmapRange> {
        while self.descriptors.len() >= 16 {
            let d = &self.descriptors[..16];
            self.descriptors = &self.descriptors[16..];
            let blocks = be32(d, 8);
            if blocks != 0 {
                return Some(UnmapRange {
                    lba: be64(d, 0),
                    blocks,
                });
            }
        }
        None
    }
}

impl Lun {
    /// Parses and fully validates an UNMAP parameter list (fetched by the
    /// transport after [`crate::BlockOp::UnmapParams`]) before anything is
    /// unmapped, so a bad list unmaps nothing.
    ///
    /// - shorter than the 8-byte header: PARAMETER LIST LENGTH ERROR;
    /// - the BLOCK DESCRIPTOR DATA LENGTH is clamped to the bytes present
    ///   (as Linux LIO does) and a trailing partial descriptor is ignored;
    /// - more descriptors than MAXIMUM UNMAP BLOCK DESCRIPTOR COUNT, or more
    ///   blocks in total than MAXIMUM UNMAP LBA COUNT: INVALID FIELD IN
    ///   PARAMETER LIST (with a field pointer);
    /// - a range past the end of the LUN (or overflowing u64): LOGICAL BLOCK
    ///   ADDRESS OUT OF RANGE;
    /// - on a read-only LUN: DATA PROTECT; without unmap support: INVALID
    ///   COMMAND OPERATION CODE.
    pub fn parse_unmap<'a>(&self, params: &'a [u8]) -> Result<UnmapIter<'a>, Sense> {
        let info = self.info();
        let caps = info.caps();
        if !caps.unmap {
            return Err(Sense::INVALID_OPCODE);
        }
        if caps.read_only {
            return Err(Sense::WRITE_PROTECTED);
        }
        if params.len() < 8 {
            return Err(Sense::PARAMETER_LIST_LENGTH_ERROR);
        }
        let bd_len = usize::from(be16(params, 2)).min(params.len() - 8);
        let count = bd_len / 16;
        let limits = info.limits();
        if count as u64 > u64::from(limits.max_unmap_descriptors) {
            return Err(Sense::invalid_field_in_param_list(2, None));
        }
        let descriptors = &params[8..8 + count * 16];
        let mut total: u64 = 0;
        for (i, d) in descriptors.chunks_exact(16).enumerate() {
            let lba = be64(d, 0);
            let blocks = u64::from(be32(d, 8));
            match lba.checked_add(blocks) {
                Some(end) if end <= info.num_blocks() => {}
                _ => return Err(Sense::LBA_OUT_OF_RANGE),
            }
            total += blocks;
            if total > u64::from(limits.max_unmap_lba_count) {
                return Err(Sense::invalid_field_in_param_list(
                    (8 + i * 16 + 8) as u16,
                    None,
                ));
            }
        }
        Ok(UnmapIter { descriptors })
    }
}
