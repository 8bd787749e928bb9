//! Single-level LUN encoding (SAM-5 4.7) as the Linux kernel uses it.

/// Largest LUN number that single-level flat space addressing can encode.
pub const MAX_LUN: u16 = 0x3FFF;

/// Encodes LUN number `lun` as an 8-byte single-level LUN: peripheral
/// device addressing (`00 LL 00..`) below 256, flat space addressing
/// (`01xxxxxx LL 00..`) for 256..=16383. This matches Linux's
/// `int_to_scsilun` for those LUNs. `None` above [`MAX_LUN`].
pub const fn encode_lun(lun: u16) -> Option<[u8; 8]> {
    if lun > MAX_LUN {
        return None;
    }
    let [hi, lo] = lun.to_be_bytes();
    let b0 = if lun < 256 { 0x00 } else { 0x40 | hi };
    Some([b0, lo, 0, 0, 0, 0, 0, 0])
}

/// Decodes an 8-byte single-level LUN in peripheral (bus 0) or flat space
/// addressing into a LUN number. Flat LUN *n* and peripheral LUN *n* (for
/// n < 256) name the same LU. `None` for multi-level LUNs, other addressing
/// methods, or a non-zero bus identifier.
pub const fn decode_lun(raw: &[u8; 8]) -> Option<u16> {
    let mut i = 2;
    while i < 8 {
        if raw[i] != 0 {
            return None;
        }
        i += 1;
    }
    match raw[0] >> 6 {
        0b00 if raw[0] == 0 => Some(raw[1] as u16),
        0b01 => Some((((raw[0] & 0x3F) as u16) << 8) | raw[1] as u16),
        _ => None,
    }
}
