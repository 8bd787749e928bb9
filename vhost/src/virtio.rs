//! virtio-blk wire constants, the device limits a queue checks requests
//! against, and the config space served over `GET_CONFIG`.

/// Device feature bits (virtio 1.2 §5.2.3).
pub(crate) mod feat {
    pub const BLK_SIZE_MAX: u64 = 1 << 1;
    pub const BLK_SEG_MAX: u64 = 1 << 2;
    pub const BLK_RO: u64 = 1 << 5;
    pub const BLK_BLK_SIZE: u64 = 1 << 6;
    pub const BLK_FLUSH: u64 = 1 << 9;
    pub const BLK_MQ: u64 = 1 << 12;
    pub const BLK_DISCARD: u64 = 1 << 13;
    pub const BLK_WRITE_ZEROES: u64 = 1 << 14;
    pub const RING_INDIRECT_DESC: u64 = 1 << 28;
    pub const RING_EVENT_IDX: u64 = 1 << 29;
    /// `VHOST_USER_F_PROTOCOL_FEATURES`.
    pub const PROTOCOL_FEATURES: u64 = 1 << 30;
    pub const VERSION_1: u64 = 1 << 32;
}

/// Request types.
pub(crate) const T_IN: u32 = 0;
pub(crate) const T_OUT: u32 = 1;
pub(crate) const T_FLUSH: u32 = 4;
pub(crate) const T_GET_ID: u32 = 8;
pub(crate) const T_DISCARD: u32 = 11;
pub(crate) const T_WRITE_ZEROES: u32 = 13;

/// Request statuses.
pub(crate) const S_OK: u8 = 0;
pub(crate) const S_IOERR: u8 = 1;
pub(crate) const S_UNSUPP: u8 = 2;

/// `VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP`.
pub(crate) const WZ_FLAG_UNMAP: u32 = 1;

/// Length of the serial returned by `GET_ID`.
pub(crate) const ID_BYTES: usize = 20;
/// Size of `struct virtio_blk_outhdr`.
pub(crate) const HEADER_BYTES: u32 = 16;
/// Size of `struct virtio_blk_discard_write_zeroes`.
pub(crate) const SEGMENT_BYTES: u32 = 16;
/// virtio-blk sectors are always 512 bytes.
pub(crate) const SECTOR: u64 = 512;

/// Everything a queue needs to judge a request; shared read-only by all
/// queues of a controller.
#[derive(Clone, Debug)]
pub(crate) struct Limits {
    pub block_size: u32,
    pub num_blocks: u64,
    pub readonly: bool,
    pub discard: bool,
    pub write_zeroes: bool,
    /// Maximum data descriptors per request (`seg_max`).
    pub seg_max: u32,
    /// Maximum bytes per data descriptor (`size_max`).
    pub size_max: u32,
    pub max_discard_sectors: u32,
    pub max_discard_seg: u32,
    pub max_write_zeroes_sectors: u32,
    pub max_write_zeroes_seg: u32,
    /// Most host iovecs one request may become (a descriptor that crosses
    /// a memory-region boundary becomes two).
    pub max_iovs: usize,
    pub serial: [u8; ID_BYTES],
    pub num_queues: u16,
}

impl Limits {
    /// Limits for `info`, as the controller offers them.
    pub fn new(info: &bdev::BdevInfo, readonly: bool, num_queues: u16) -> Limits {
        let readonly = readonly || info.caps.read_only;
        let max_iovs = info.max_segments.clamp(1, 1024);
        // Leave room for every descriptor to be split once across regions.
        let seg_max = (max_iovs / 2).clamp(1, 126) as u32;
        let mut serial = [0u8; ID_BYTES];
        if info.name.len() <= ID_BYTES {
            serial[..info.name.len()].copy_from_slice(info.name.as_bytes());
        } else {
            // A long name would be truncated into something ambiguous: use
            // the bdev UUID (stable, unique) instead.
            let hex: String = info.uuid.iter().map(|b| format!("{b:02x}")).collect();
            serial.copy_from_slice(&hex.as_bytes()[..ID_BYTES]);
        }
        let sectors = (info.num_blocks * info.block_size as u64 / SECTOR).min(1 << 16) as u32;
        Limits {
            block_size: info.block_size,
            num_blocks: info.num_blocks,
            readonly,
            discard: !readonly && info.caps.unmap,
            write_zeroes: !readonly && info.caps.write_zeroes,
            seg_max,
            size_max: 1 << 20,
            max_discard_sectors: sectors.max(1),
            max_discard_seg: 16,
            max_write_zeroes_sectors: sectors.max(1),
            max_write_zeroes_seg: 16,
            max_iovs,
            serial,
            num_queues,
        }
    }

    /// Size in 512-byte sectors.
    pub fn capacity_sectors(&self) -> u64 {
        self.num_blocks * self.block_size as u64 / SECTOR
    }

    /// The serial as a string (NULs trimmed).
    pub fn serial_str(&self) -> String {
        let end = self.serial.iter().position(|&b| b == 0).unwrap_or(ID_BYTES);
        String::from_utf8_lossy(&self.serial[..end]).into_owned()
    }

    /// Device feature bits offered to the frontend.
    pub fn features(&self) -> u64 {
        let mut f = feat::VERSION_1
            | feat::RING_EVENT_IDX
            | feat::RING_INDIRECT_DESC
            | feat::PROTOCOL_FEATURES
            | feat::BLK_SIZE_MAX
            | feat::BLK_SEG_MAX
            | feat::BLK_BLK_SIZE
            | feat::BLK_FLUSH
            | feat::BLK_MQ;
        if self.readonly {
            f |= feat::BLK_RO;
        }
        if self.discard {
            f |= feat::BLK_DISCARD;
        }
        if self.write_zeroes {
            f |= feat::BLK_WRITE_ZEROES;
        }
        f
    }

    /// `struct virtio_blk_config` up to `write_zeroes_may_unmap` and its
    /// padding (60 bytes), little endian.
    pub fn config_space(&self) -> [u8; CONFIG_BYTES] {
        let mut c = [0u8; CONFIG_BYTES];
        let put32 = |c: &mut [u8; CONFIG_BYTES], off: usize, v: u32| {
            c[off..off + 4].copy_from_slice(&v.to_le_bytes())
        };
        c[0..8].copy_from_slice(&self.capacity_sectors().to_le_bytes());
        put32(&mut c, 8, self.size_max);
        put32(&mut c, 12, self.seg_max);
        // 16..20: geometry, unused.
        put32(&mut c, 20, self.block_size);
        // 24..32: topology (feature not offered). 32: writeback. 33: unused.
        c[34..36].copy_from_slice(&self.num_queues.to_le_bytes());
        put32(&mut c, 36, self.max_discard_sectors);
        put32(&mut c, 40, self.max_discard_seg);
        put32(&mut c, 44, self.block_size / SECTOR as u32);
        put32(&mut c, 48, self.max_write_zeroes_sectors);
        put32(&mut c, 52, self.max_write_zeroes_seg);
        // 56: write_zeroes_may_unmap = 0 (we always write zeroes).
        c
    }
}

/// Bytes of config space served.
pub(crate) const CONFIG_BYTES: usize = 60;
