//! `SRP_CMD` and its data buffer descriptors.
//!
//! The decoded [`SrpCmd`] borrows the IU: the CDB, inline descriptor
//! tables and immediate data are slices of the received bytes, and
//! [`DataDesc::descriptors`] iterates memory descriptors straight off the
//! wire, so the target's per-I/O decode does not allocate.

use crate::common::{desc_fmt, DirectBuf, Encode, Lun, Opcode, TaskAttr};
use crate::wire;
use crate::SrpError;
use std::iter::FusedIterator;

/// Size of the fixed part of `SRP_CMD` (`sizeof(struct srp_cmd)`).
pub const SRP_CMD_HEADER_SIZE: usize = 48;
/// Largest additional CDB length the 6-bit (4-byte unit) field can hold.
pub const MAX_ADD_CDB_LEN: usize = 252;
/// Size of an indirect descriptor header (`struct srp_indirect_buf`
/// without its descriptor list): table descriptor + total length.
pub const INDIRECT_HEADER_SIZE: usize = 20;
/// Size of the immediate data descriptor (`struct srp_imm_buf`).
pub const IMM_DESC_SIZE: usize = 4;
/// The immediate data offset Linux `ib_srp` requests at login
/// (`SRP_IMM_DATA_OFFSET` = 48 + `SRP_MAX_ADD_CDB_LEN` (16) + 4 = 68),
/// so that a 32-byte CDB still fits before the data.
pub const LINUX_IMM_DATA_OFFSET: u16 = 68;

/// A list of memory descriptors: either the inline partial table of a
/// received IU (borrowed bytes, decoded lazily) or a caller's slice.
/// Two lists are equal if they hold the same descriptors.
#[derive(Clone, Copy)]
pub struct DescList<'a>(Repr<'a>);

#[derive(Clone, Copy)]
enum Repr<'a> {
    /// Raw wire bytes; length is a multiple of 16.
    Wire(&'a [u8]),
    Slice(&'a [DirectBuf]),
}

impl<'a> DescList<'a> {
    /// A list over caller-provided descriptors (for encoding).
    pub fn from_slice(descs: &'a [DirectBuf]) -> DescList<'a> {
        DescList(Repr::Slice(descs))
    }

    /// A list over wire bytes; a trailing partial descriptor is ignored.
    fn from_wire(b: &'a [u8]) -> DescList<'a> {
        let n = b.len() / DirectBuf::SIZE * DirectBuf::SIZE;
        DescList(Repr::Wire(b.get(..n).unwrap_or(&[])))
    }

    /// Number of descriptors.
    pub fn len(&self) -> usize {
        match self.0 {
            Repr::Wire(b) => b.len() / DirectBuf::SIZE,
            Repr::Slice(s) => s.len(),
        }
    }

    /// Whether the list is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The `i`-th descriptor.
    pub fn get(&self, i: usize) -> Option<DirectBuf> {
        match self.0 {
            Repr::Wire(b) => {
                let off = i.checked_mul(DirectBuf::SIZE)?;
                DirectBuf::decode_at(b, off).ok()
            }
            Repr::Slice(s) => s.get(i).copied(),
        }
    }

    /// Iterates the descriptors (no allocation).
    pub fn iter(&self) -> DescIter<'a> {
        DescIter {
            single: None,
            rest: match self.0 {
                Repr::Wire(b) => Inner::Wire(b.chunks_exact(DirectBuf::SIZE)),
                Repr::Slice(s) => Inner::Slice(s.iter()),
            },
        }
    }

    /// Sum of the descriptor lengths.
    pub fn total_len(&self) -> u64 {
        self.iter().map(|d| u64::from(d.len)).sum()
    }
}

impl PartialEq for DescList<'_> {
    fn eq(&self, other: &Self) -> bool {
        self.len() == other.len() && self.iter().eq(other.iter())
    }
}

impl Eq for DescList<'_> {}

impl std::fmt::Debug for DescList<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

impl<'a> IntoIterator for DescList<'a> {
    type Item = DirectBuf;
    type IntoIter = DescIter<'a>;
    fn into_iter(self) -> DescIter<'a> {
        self.iter()
    }
}

/// Iterator over memory descriptors; see [`DescList::iter`] and
/// [`DataDesc::descriptors`].
#[derive(Clone)]
pub struct DescIter<'a> {
    single: Option<DirectBuf>,
    rest: Inner<'a>,
}

#[derive(Clone)]
enum Inner<'a> {
    Wire(std::slice::ChunksExact<'a, u8>),
    Slice(std::slice::Iter<'a, DirectBuf>),
}

impl Iterator for DescIter<'_> {
    type Item = DirectBuf;

    fn next(&mut self) -> Option<DirectBuf> {
        if let Some(d) = self.single.take() {
            return Some(d);
        }
        match &mut self.rest {
            Inner::Wire(c) => c
                .next()
                .and_then(|ch| <&[u8; 16]>::try_from(ch).ok())
                .map(DirectBuf::from_bytes),
            Inner::Slice(s) => s.next().copied(),
        }
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let n = usize::from(self.single.is_some())
            + match &self.rest {
                Inner::Wire(c) => c.len(),
                Inner::Slice(s) => s.len(),
            };
        (n, Some(n))
    }
}

impl ExactSizeIterator for DescIter<'_> {}
impl FusedIterator for DescIter<'_> {}

/// An indirect data buffer descriptor (`struct srp_indirect_buf`):
/// `0..16` table descriptor (where the whole descriptor table lives in
/// initiator memory), `16..20` total length of the data, `20..` the
/// partial table copied inline (the descriptor count of the `SRP_CMD`
/// says how many entries).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IndirectBuf<'a> {
    /// Descriptor of the full descriptor table (its `len` is 16 × entries).
    pub table_desc: DirectBuf,
    /// Total data length described by the table.
    pub total_len: u32,
    /// The inline (partial or complete) table.
    pub partial: DescList<'a>,
}

impl IndirectBuf<'_> {
    /// Entries in the full table (`table_desc.len / 16`).
    pub fn table_entries(&self) -> u32 {
        self.table_desc.len / DirectBuf::SIZE as u32
    }

    /// Whether the whole table is inline (no RDMA READ of the table needed).
    pub fn is_complete(&self) -> bool {
        self.partial.len() as u64 * DirectBuf::SIZE as u64 == u64::from(self.table_desc.len)
    }

    fn wire_len(&self) -> usize {
        INDIRECT_HEADER_SIZE + self.partial.len() * DirectBuf::SIZE
    }

    /// Checks table length, partial count and (for a complete table) the
    /// total length against each other.
    fn validate(&self) -> Result<(), SrpError> {
        let table_len = self.table_desc.len;
        if table_len % DirectBuf::SIZE as u32 != 0 {
            return Err(SrpError::IndirectTableLenNotMultiple(table_len));
        }
        let count = self.partial.len();
        if count > usize::from(u8::MAX) {
            return Err(SrpError::TooManyDescriptors(count));
        }
        if count as u64 * DirectBuf::SIZE as u64 > u64::from(table_len) {
            return Err(SrpError::PartialTableTooLarge {
                count: count as u8,
                table_len,
            });
        }
        if self.is_complete() {
            let sum = self.partial.total_len();
            if sum != u64::from(self.total_len) {
                return Err(SrpError::IndirectTotalLenMismatch {
                    total_len: self.total_len,
                    sum,
                });
            }
        }
        Ok(())
    }
}

/// Immediate data carried inside the `SRP_CMD` (SRP-2, data-out only).
/// On the wire the descriptor (`struct srp_imm_buf`) holds only the length;
/// the data starts at the immediate data offset negotiated at login.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ImmediateData<'a> {
    /// Offset of the data from the start of the IU.
    pub offset: u16,
    /// The data.
    pub data: &'a [u8],
}

/// The data buffer descriptor of one direction of an `SRP_CMD`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DataDesc<'a> {
    /// No data in this direction (`SRP_NO_DATA_DESC`).
    #[default]
    None,
    /// One direct descriptor (`SRP_DATA_DESC_DIRECT`).
    Direct(DirectBuf),
    /// An indirect descriptor (`SRP_DATA_DESC_INDIRECT`).
    Indirect(IndirectBuf<'a>),
    /// Immediate data (`SRP_DATA_DESC_IMM`; data-out only).
    Immediate(ImmediateData<'a>),
}

impl<'a> DataDesc<'a> {
    /// The 4-bit format code.
    pub fn format(&self) -> u8 {
        match self {
            DataDesc::None => desc_fmt::NONE,
            DataDesc::Direct(_) => desc_fmt::DIRECT,
            DataDesc::Indirect(_) => desc_fmt::INDIRECT,
            DataDesc::Immediate(_) => desc_fmt::IMM,
        }
    }

    /// Memory descriptors to RDMA to/from: the direct descriptor, or the
    /// inline table of an indirect one; none for no data or immediate data.
    pub fn descriptors(&self) -> DescIter<'a> {
        match self {
            DataDesc::Direct(d) => DescIter {
                single: Some(*d),
                rest: Inner::Slice([].iter()),
            },
            DataDesc::Indirect(i) => i.partial.iter(),
            DataDesc::None | DataDesc::Immediate(_) => DescIter {
                single: None,
                rest: Inner::Slice([].iter()),
            },
        }
    }

    /// Length of the data transfer this descriptor announces.
    pub fn transfer_len(&self) -> u64 {
        match self {
            DataDesc::None => 0,
            DataDesc::Direct(d) => u64::from(d.len),
            DataDesc::Indirect(i) => u64::from(i.total_len),
            DataDesc::Immediate(im) => im.data.len() as u64,
        }
    }

    /// The descriptor count byte as `ib_srp` writes it: the inline entries
    /// of an indirect descriptor, 0 otherwise.
    fn count(&self) -> usize {
        match self {
            DataDesc::Indirect(i) => i.partial.len(),
            _ => 0,
        }
    }

    /// Bytes the descriptor occupies in the descriptor area.
    fn wire_len(&self) -> usize {
        match self {
            DataDesc::None => 0,
            DataDesc::Direct(_) => DirectBuf::SIZE,
            DataDesc::Indirect(i) => i.wire_len(),
            DataDesc::Immediate(_) => IMM_DESC_SIZE,
        }
    }
}

/// `SRP_CMD` (`struct srp_cmd` + descriptors), offsets: `0` opcode, `1`
/// sol_not, `5` buf_fmt (data-out format in bits 7..4, data-in format in
/// bits 3..0), `6` data_out_desc_cnt, `7` data_in_desc_cnt, `8..16` tag,
/// `20..28` LUN, `29` task_attr, `31` add_cdb_len (bytes, bits 7..2),
/// `32..48` CDB, `48..48+add_cdb_len` additional CDB, then the data-out
/// descriptor, then the data-in descriptor; immediate data sits at the
/// immediate data offset.
///
/// Descriptor counts: for an indirect descriptor the count is the number
/// of inline table entries; for direct / no-data / immediate it is
/// ignored on decode (ib_srp sends 0) and written as 0.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SrpCmd<'a> {
    /// Solicited-notification flags byte.
    pub sol_not: u8,
    /// Tag, echoed in the `SRP_RSP`.
    pub tag: u64,
    /// Logical unit.
    pub lun: Lun,
    /// Task attribute.
    pub task_attr: TaskAttr,
    /// The CDB: the 16-byte CDB field plus any additional CDB bytes.
    /// When encoding, a shorter CDB is zero-padded to 16 bytes and a longer
    /// one to a multiple of 4.
    pub cdb: &'a [u8],
    /// Data-out (initiator to target) descriptor.
    pub data_out: DataDesc<'a>,
    /// Data-in (target to initiator) descriptor.
    pub data_in: DataDesc<'a>,
}

impl<'a> SrpCmd<'a> {
    /// Decodes an `SRP_CMD`, locating immediate data (if any) at
    /// [`LINUX_IMM_DATA_OFFSET`].
    pub fn decode(b: &'a [u8]) -> Result<SrpCmd<'a>, SrpError> {
        Self::decode_with_imm_offset(b, LINUX_IMM_DATA_OFFSET)
    }

    /// Decodes an `SRP_CMD` received on a channel whose login negotiated
    /// `imm_data_offset`. `b` must be exactly the received bytes (the
    /// completion's byte length), not the whole receive buffer, so that
    /// descriptors and immediate data are checked against what arrived.
    pub fn decode_with_imm_offset(
        b: &'a [u8],
        imm_data_offset: u16,
    ) -> Result<SrpCmd<'a>, SrpError> {
        wire::need(b, SRP_CMD_HEADER_SIZE)?;
        wire::opcode_at(b, 0, Opcode::Cmd as u8)?;
        let buf_fmt = wire::u8_at(b, 5)?;
        let (out_fmt, in_fmt) = (buf_fmt >> 4, buf_fmt & 0x0f);
        if out_fmt > desc_fmt::IMM {
            return Err(SrpError::UnsupportedDataOutFormat(out_fmt));
        }
        if in_fmt > desc_fmt::INDIRECT {
            return Err(SrpError::UnsupportedDataInFormat(in_fmt));
        }
        if out_fmt == desc_fmt::IMM && in_fmt != desc_fmt::NONE {
            return Err(SrpError::ImmediateDataWithDataIn);
        }
        let add_cdb_len = usize::from(wire::u8_at(b, 31)? & 0xfc);
        let cdb_end = SRP_CMD_HEADER_SIZE + add_cdb_len;
        let cdb = b.get(32..cdb_end).ok_or(SrpError::TooShort {
            needed: cdb_end,
            got: b.len(),
        })?;
        let mut pos = cdb_end;
        let data_out = parse_desc(b, &mut pos, out_fmt, wire::u8_at(b, 6)?, imm_data_offset)?;
        let data_in = parse_desc(b, &mut pos, in_fmt, wire::u8_at(b, 7)?, imm_data_offset)?;
        Ok(SrpCmd {
            sol_not: wire::u8_at(b, 1)?,
            tag: wire::be64(b, 8)?,
            lun: Lun(wire::array(b, 20)?),
            task_attr: TaskAttr::from_u8(wire::u8_at(b, 29)?),
            cdb,
            data_out,
            data_in,
        })
    }

    /// Additional CDB length as written on the wire (multiple of 4).
    fn add_cdb_len(&self) -> usize {
        self.cdb.len().saturating_sub(16).div_ceil(4) * 4
    }

    /// Offset of the first byte after the descriptors.
    fn desc_end(&self) -> usize {
        SRP_CMD_HEADER_SIZE
            + self.add_cdb_len()
            + self.data_out.wire_len()
            + self.data_in.wire_len()
    }
}

/// Parses one direction's descriptor at `*pos`, advancing `*pos`.
fn parse_desc<'a>(
    b: &'a [u8],
    pos: &mut usize,
    fmt: u8,
    count: u8,
    imm_data_offset: u16,
) -> Result<DataDesc<'a>, SrpError> {
    let iu_len = b.len();
    let exceeds = |needed| SrpError::DescriptorsExceedIu { needed, iu_len };
    let start = *pos;
    match fmt {
        desc_fmt::DIRECT => {
            let end = start + DirectBuf::SIZE;
            if end > iu_len {
                return Err(exceeds(end));
            }
            *pos = end;
            Ok(DataDesc::Direct(DirectBuf::decode_at(b, start)?))
        }
        desc_fmt::INDIRECT => {
            let list_start = start + INDIRECT_HEADER_SIZE;
            let end = list_start + usize::from(count) * DirectBuf::SIZE;
            let list = b.get(list_start..end).ok_or(exceeds(end))?;
            let ind = IndirectBuf {
                table_desc: DirectBuf::decode_at(b, start)?,
                total_len: wire::be32(b, start + 16)?,
                partial: DescList::from_wire(list),
            };
            ind.validate()?;
            *pos = end;
            Ok(DataDesc::Indirect(ind))
        }
        desc_fmt::IMM => {
            let desc_end = start + IMM_DESC_SIZE;
            if desc_end > iu_len {
                return Err(exceeds(desc_end));
            }
            let len = wire::be32(b, start)?;
            let offset = usize::from(imm_data_offset);
            if offset < desc_end {
                return Err(SrpError::ImmediateDataOverlapsDescriptors {
                    offset,
                    min: desc_end,
                });
            }
            let data = usize::try_from(len)
                .ok()
                .and_then(|l| offset.checked_add(l))
                .and_then(|end| b.get(offset..end))
                .ok_or(SrpError::ImmediateDataOutOfIu {
                    offset,
                    len,
                    iu_len,
                })?;
            *pos = desc_end;
            Ok(DataDesc::Immediate(ImmediateData {
                offset: imm_data_offset,
                data,
            }))
        }
        _ => Ok(DataDesc::None),
    }
}

impl Encode for SrpCmd<'_> {
    fn encoded_len(&self) -> usize {
        let end = self.desc_end();
        match self.data_out {
            DataDesc::Immediate(im) => end.max(usize::from(im.offset) + im.data.len()),
            _ => end,
        }
    }

    fn encode(&self, buf: &mut [u8]) -> Result<usize, SrpError> {
        if self.cdb.len() > 16 + MAX_ADD_CDB_LEN {
            return Err(SrpError::CdbTooLong(self.cdb.len()));
        }
        if let DataDesc::Immediate(_) = self.data_in {
            return Err(SrpError::UnsupportedDataInFormat(desc_fmt::IMM));
        }
        if matches!(self.data_out, DataDesc::Immediate(_)) && self.data_in != DataDesc::None {
            return Err(SrpError::ImmediateDataWithDataIn);
        }
        for d in [&self.data_out, &self.data_in] {
            if let DataDesc::Indirect(i) = d {
                i.validate()?;
            }
        }
        let desc_end = self.desc_end();
        if let DataDesc::Immediate(im) = self.data_out {
            wire::len32(im.data.len())?;
            if usize::from(im.offset) < desc_end {
                return Err(SrpError::ImmediateDataOverlapsDescriptors {
                    offset: usize::from(im.offset),
                    min: desc_end,
                });
            }
        }
        let add_cdb_len = self.add_cdb_len();
        let len = self.encoded_len();
        let b = wire::out(buf, len)?;
        wire::put8(b, 0, Opcode::Cmd as u8)?;
        wire::put8(b, 1, self.sol_not)?;
        wire::put8(b, 5, self.data_out.format() << 4 | self.data_in.format())?;
        // Counts fit: validate() bounded indirect tables to 255 entries.
        wire::put8(b, 6, self.data_out.count() as u8)?;
        wire::put8(b, 7, self.data_in.count() as u8)?;
        wire::put64(b, 8, self.tag)?;
        wire::put(b, 20, &self.lun.0)?;
        wire::put8(b, 29, self.task_attr.to_u8())?;
        wire::put8(b, 31, add_cdb_len as u8)?;
        wire::put(b, 32, self.cdb)?;
        let mut pos = SRP_CMD_HEADER_SIZE + add_cdb_len;
        for d in [&self.data_out, &self.data_in] {
            match d {
                DataDesc::None => {}
                DataDesc::Direct(db) => db.encode_at(b, pos)?,
                DataDesc::Indirect(i) => {
                    i.table_desc.encode_at(b, pos)?;
                    wire::put32(b, pos + 16, i.total_len)?;
                    for (k, e) in i.partial.iter().enumerate() {
                        e.encode_at(b, pos + INDIRECT_HEADER_SIZE + k * DirectBuf::SIZE)?;
                    }
                }
                DataDesc::Immediate(im) => {
                    wire::put32(b, pos, wire::len32(im.data.len())?)?;
                    wire::put(b, usize::from(im.offset), im.data)?;
                }
            }
            pos += d.wire_len();
        }
        Ok(len)
    }
}
