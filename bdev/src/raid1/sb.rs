//! On-disk format: superblock encoding, the member layout, crc32c.
//!
//! Every member carries, in its own blocks:
//!
//! ```text
//! [0, SB_BYTES)                     superblock (4 KiB, or one block if larger)
//! [bitmap_offset, +bitmap_bytes)    write-intent bitmap, one bit per region,
//!                                   LSB first, written one block at a time
//! [data_offset, +data_blocks)       array data (array LBA 0 = member block data_offset)
//! ```
//!
//! `data_offset` is rounded up to 1 MiB. All integers are little-endian.

use super::MAX_MEMBERS;

/// Magic at byte 0 of a superblock.
pub const MAGIC: [u8; 8] = *b"STRAID1\0";
/// Format version.
pub const VERSION: u32 = 1;
/// Bytes of the superblock region (at least one block).
pub const SB_BYTES: usize = 4096;
/// Data starts on this boundary (bytes).
pub const DATA_ALIGN: u64 = 1 << 20;
/// Superblock flag: the array was shut down cleanly.
pub const FLAG_CLEAN: u32 = 1;
/// Superblock flag: a resync of the dirty regions was under way; it resumes
/// at [`Superblock::resync_offset`] (md's `resync_offset`). With
/// [`FLAG_CLEAN`] the regions before it are known to be in sync.
pub const FLAG_RESYNC: u32 = 2;

/// Role states as stored in the role table.
pub const ROLE_EMPTY: u8 = 0;
/// Holds current data.
pub const ROLE_IN_SYNC: u8 = 1;
/// Out of date: failed or missing while the array ran on.
pub const ROLE_FAULTY: u8 = 2;
/// Being rebuilt from scratch.
pub const ROLE_RECOVER_FULL: u8 = 3;
/// Being resynced from the bitmap (dirty regions only).
pub const ROLE_RECOVER_BITMAP: u8 = 4;

const OFF_ROLES: usize = 256;
const ROLE_ENTRY: usize = 48;
const OFF_CRC: usize = SB_BYTES - 4;

/// One entry of the role table.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct RoleEntry {
    /// UUID of the device holding the role.
    pub dev_uuid: [u8; 16],
    /// `ROLE_*`.
    pub state: u8,
    /// Reads avoid this member.
    pub write_mostly: bool,
    /// For a member being rebuilt or resynced: the regions before this one
    /// have been copied to it (md's `recovery_offset`).
    pub recovery_offset: u64,
}

/// A decoded superblock.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Superblock {
    /// Array UUID.
    pub uuid: [u8; 16],
    /// Array name (informational).
    pub name: String,
    /// Event counter: bumped by every state change.
    pub events: u64,
    /// `FLAG_*`.
    pub flags: u32,
    /// This member's role index.
    pub role: u32,
    /// Number of roles (array width).
    pub num_roles: u32,
    /// Block size of the members.
    pub block_size: u32,
    /// First data block on the member.
    pub data_offset: u64,
    /// Array size in blocks.
    pub data_blocks: u64,
    /// First bitmap block on the member.
    pub bitmap_offset: u64,
    /// Bytes per bitmap region.
    pub chunk_bytes: u64,
    /// Number of regions.
    pub regions: u64,
    /// This device's UUID.
    pub dev_uuid: [u8; 16],
    /// With [`FLAG_RESYNC`]: the first region the resync has not done.
    pub resync_offset: u64,
    /// The role table.
    pub roles: [RoleEntry; MAX_MEMBERS],
}

/// crc32c (Castagnoli), bitwise-reflected, table-driven.
pub fn crc32c(data: &[u8]) -> u32 {
    const fn table() -> [u32; 256] {
        let mut t = [0u32; 256];
        let mut i = 0;
        while i < 256 {
            let mut c = i as u32;
            let mut k = 0;
            while k < 8 {
                c = if c & 1 != 0 {
                    (c >> 1) ^ 0x82f6_3b78
                } else {
                    c >> 1
                };
                k += 1;
            }
            t[i] = c;
            i += 1;
        }
        t
    }
    static T: [u32; 256] = table();
    let mut c = !0u32;
    for &b in data {
        c = T[((c ^ b as u32) & 0xff) as usize] ^ (c >> 8);
    }
    !c
}

fn put_u32(b: &mut [u8], off: usize, v: u32) {
    b[off..off + 4].copy_from_slice(&v.to_le_bytes());
}
fn put_u64(b: &mut [u8], off: usize, v: u64) {
    b[off..off + 8].copy_from_slice(&v.to_le_bytes());
}
fn get_u32(b: &[u8], off: usize) -> u32 {
    u32::from_le_bytes(b[off..off + 4].try_into().unwrap_or([0; 4]))
}
fn get_u64(b: &[u8], off: usize) -> u64 {
    u64::from_le_bytes(b[off..off + 8].try_into().unwrap_or([0; 8]))
}

impl Superblock {
    /// Encodes into `buf` (at least [`SB_BYTES`]; the rest is zeroed).
    pub fn encode(&self, buf: &mut [u8]) {
        buf.fill(0);
        let b = &mut buf[..SB_BYTES];
        b[0..8].copy_from_slice(&MAGIC);
        put_u32(b, 8, VERSION);
        put_u32(b, 12, SB_BYTES as u32);
        b[16..32].copy_from_slice(&self.uuid);
        let n = self.name.len().min(63);
        b[32..32 + n].copy_from_slice(&self.name.as_bytes()[..n]);
        put_u64(b, 96, self.events);
        put_u32(b, 104, self.flags);
        put_u32(b, 108, self.role);
        put_u32(b, 112, self.num_roles);
        put_u32(b, 116, self.block_size);
        put_u64(b, 120, self.data_offset);
        put_u64(b, 128, self.data_blocks);
        put_u64(b, 136, self.bitmap_offset);
        put_u64(b, 144, self.chunk_bytes);
        put_u64(b, 152, self.regions);
        b[160..176].copy_from_slice(&self.dev_uuid);
        put_u64(b, 176, self.resync_offset);
        for (i, r) in self.roles.iter().enumerate() {
            let o = OFF_ROLES + i * ROLE_ENTRY;
            b[o..o + 16].copy_from_slice(&r.dev_uuid);
            put_u32(b, o + 16, r.state as u32);
            put_u32(b, o + 20, r.write_mostly as u32);
            put_u64(b, o + 24, r.recovery_offset);
        }
        let crc = crc32c(&b[..OFF_CRC]);
        put_u32(b, OFF_CRC, crc);
    }

    /// Decodes; `Ok(None)` when there is no superblock (no magic), `Err`
    /// when one is there but damaged or unsupported.
    pub fn decode(buf: &[u8]) -> Result<Option<Superblock>, String> {
        if buf.len() < SB_BYTES || buf[0..8] != MAGIC {
            return Ok(None);
        }
        let b = &buf[..SB_BYTES];
        if crc32c(&b[..OFF_CRC]) != get_u32(b, OFF_CRC) {
            return Err("superblock checksum mismatch".into());
        }
        if get_u32(b, 8) != VERSION {
            return Err(format!(
                "superblock version {} is not supported",
                get_u32(b, 8)
            ));
        }
        let name_end = b[32..96].iter().position(|&c| c == 0).unwrap_or(64);
        let mut roles = [RoleEntry::default(); MAX_MEMBERS];
        for (i, r) in roles.iter_mut().enumerate() {
            let o = OFF_ROLES + i * ROLE_ENTRY;
            r.dev_uuid.copy_from_slice(&b[o..o + 16]);
            r.state = get_u32(b, o + 16) as u8;
            r.write_mostly = get_u32(b, o + 20) != 0;
            r.recovery_offset = get_u64(b, o + 24);
        }
        let mut uuid = [0u8; 16];
        uuid.copy_from_slice(&b[16..32]);
        let mut dev_uuid = [0u8; 16];
        dev_uuid.copy_from_slice(&b[160..176]);
        let sb = Superblock {
            uuid,
            name: String::from_utf8_lossy(&b[32..32 + name_end]).into_owned(),
            events: get_u64(b, 96),
            flags: get_u32(b, 104),
            role: get_u32(b, 108),
            num_roles: get_u32(b, 112),
            block_size: get_u32(b, 116),
            data_offset: get_u64(b, 120),
            data_blocks: get_u64(b, 128),
            bitmap_offset: get_u64(b, 136),
            chunk_bytes: get_u64(b, 144),
            regions: get_u64(b, 152),
            dev_uuid,
            resync_offset: get_u64(b, 176),
            roles,
        };
        if sb.num_roles == 0 || sb.num_roles as usize > MAX_MEMBERS || sb.role >= sb.num_roles {
            return Err(format!(
                "superblock role {} of {} is out of range",
                sb.role, sb.num_roles
            ));
        }
        if sb.chunk_bytes == 0 || !sb.chunk_bytes.is_power_of_two() || sb.regions == 0 {
            return Err("superblock bitmap geometry is invalid".into());
        }
        Ok(Some(sb))
    }
}

/// Where things live on a member, in blocks.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct Layout {
    /// Block size.
    pub block_size: u32,
    /// Superblock region length in blocks.
    pub sb_blocks: u64,
    /// First bitmap block.
    pub bitmap_offset: u64,
    /// Bitmap length in blocks.
    pub bitmap_blocks: u64,
    /// First data block.
    pub data_offset: u64,
    /// Bytes per region.
    pub chunk_bytes: u64,
}

impl Layout {
    /// The layout for members of `member_blocks` (the smallest member)
    /// with regions of `chunk_bytes`. The bitmap is sized for the whole
    /// member so that data_offset does not depend on the data size.
    pub fn new(block_size: u32, member_blocks: u64, chunk_bytes: u64) -> Layout {
        let bs = block_size as u64;
        let sb_blocks = (SB_BYTES as u64).div_ceil(bs);
        let regions_max = (member_blocks * bs).div_ceil(chunk_bytes).max(1);
        let bitmap_blocks = regions_max.div_ceil(8).div_ceil(bs);
        let meta_bytes = (sb_blocks + bitmap_blocks) * bs;
        let data_offset = meta_bytes.div_ceil(DATA_ALIGN) * DATA_ALIGN / bs;
        Layout {
            block_size,
            sb_blocks,
            bitmap_offset: sb_blocks,
            bitmap_blocks,
            data_offset,
            chunk_bytes,
        }
    }

    /// Regions covering `data_blocks`.
    pub fn regions(&self, data_blocks: u64) -> u64 {
        (data_blocks * self.block_size as u64).div_ceil(self.chunk_bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32c_known_value() {
        // RFC 3720 B.4: 32 bytes of zeroes.
        assert_eq!(crc32c(&[0u8; 32]), 0x8a91_36aa);
        assert_eq!(crc32c(b"123456789"), 0xe306_9283);
    }

    #[test]
    fn superblock_round_trip_and_damage() {
        let mut roles = [RoleEntry::default(); MAX_MEMBERS];
        roles[0] = RoleEntry {
            dev_uuid: [1; 16],
            state: ROLE_IN_SYNC,
            write_mostly: false,
            recovery_offset: 0,
        };
        roles[1] = RoleEntry {
            dev_uuid: [2; 16],
            state: ROLE_RECOVER_FULL,
            write_mostly: true,
            recovery_offset: 33,
        };
        let sb = Superblock {
            uuid: [9; 16],
            name: "r0".into(),
            events: 77,
            flags: FLAG_CLEAN | FLAG_RESYNC,
            role: 1,
            num_roles: 2,
            block_size: 512,
            data_offset: 2048,
            data_blocks: 10000,
            bitmap_offset: 8,
            chunk_bytes: 65536,
            regions: 79,
            dev_uuid: [2; 16],
            resync_offset: 12,
            roles,
        };
        let mut buf = vec![0u8; SB_BYTES];
        sb.encode(&mut buf);
        assert_eq!(Superblock::decode(&buf), Ok(Some(sb)));
        buf[100] ^= 1;
        assert_eq!(
            Superblock::decode(&buf),
            Err("superblock checksum mismatch".into())
        );
        assert_eq!(Superblock::decode(&[0u8; SB_BYTES]), Ok(None));
    }

    #[test]
    fn layout_is_aligned_and_fits_the_bitmap() {
        let l = Layout::new(512, 1 << 21, 65536); // 1 GiB member
        assert_eq!(l.bitmap_offset, 8);
        assert_eq!(l.bitmap_blocks, 4); // 16384 regions = 2 KiB of bits
        assert_eq!(l.data_offset, 2048);
        let l = Layout::new(4096, 1 << 30, 4096); // 4 TiB in 4 KiB regions: 128 MiB of bits
        assert!((l.sb_blocks + l.bitmap_blocks) <= l.data_offset);
        assert_eq!(l.data_offset * 4096 % DATA_ALIGN, 0);
    }
}
