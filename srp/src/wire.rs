//! Bounds-checked big-endian field access. Every read returns
//! [`SrpError::TooShort`] instead of panicking; every write returns
//! [`SrpError::BufferTooSmall`].

use crate::SrpError;

/// Reads `N` bytes at `off`.
#[inline]
pub(crate) fn array<const N: usize>(b: &[u8], off: usize) -> Result<[u8; N], SrpError> {
    let end = off.checked_add(N).ok_or(SrpError::TooShort {
        needed: usize::MAX,
        got: b.len(),
    })?;
    b.get(off..end)
        .and_then(|s| <[u8; N]>::try_from(s).ok())
        .ok_or(SrpError::TooShort {
            needed: end,
            got: b.len(),
        })
}

#[inline]
pub(crate) fn u8_at(b: &[u8], off: usize) -> Result<u8, SrpError> {
    Ok(array::<1>(b, off)?[0])
}

#[inline]
pub(crate) fn be16(b: &[u8], off: usize) -> Result<u16, SrpError> {
    Ok(u16::from_be_bytes(array(b, off)?))
}

#[inline]
pub(crate) fn be32(b: &[u8], off: usize) -> Result<u32, SrpError> {
    Ok(u32::from_be_bytes(array(b, off)?))
}

#[inline]
pub(crate) fn be64(b: &[u8], off: usize) -> Result<u64, SrpError> {
    Ok(u64::from_be_bytes(array(b, off)?))
}

/// Fails with [`SrpError::TooShort`] unless `b` has at least `needed` bytes.
#[inline]
pub(crate) fn need(b: &[u8], needed: usize) -> Result<(), SrpError> {
    if b.len() < needed {
        Err(SrpError::TooShort {
            needed,
            got: b.len(),
        })
    } else {
        Ok(())
    }
}

/// Checks the opcode byte at `off`.
#[inline]
pub(crate) fn opcode_at(b: &[u8], off: usize, expected: u8) -> Result<(), SrpError> {
    let got = u8_at(b, off)?;
    if got != expected {
        return Err(SrpError::WrongOpcode { expected, got });
    }
    Ok(())
}

/// Checks that `buf` holds `len` bytes and zeroes them (reserved fields
/// are zero on the wire). Returns the prefix to write into.
#[inline]
pub(crate) fn out(buf: &mut [u8], len: usize) -> Result<&mut [u8], SrpError> {
    let got = buf.len();
    let b = buf
        .get_mut(..len)
        .ok_or(SrpError::BufferTooSmall { needed: len, got })?;
    b.fill(0);
    Ok(b)
}

/// Copies `src` into `b` at `off`.
#[inline]
pub(crate) fn put(b: &mut [u8], off: usize, src: &[u8]) -> Result<(), SrpError> {
    let got = b.len();
    let end = off.checked_add(src.len()).ok_or(SrpError::BufferTooSmall {
        needed: usize::MAX,
        got,
    })?;
    b.get_mut(off..end)
        .ok_or(SrpError::BufferTooSmall { needed: end, got })?
        .copy_from_slice(src);
    Ok(())
}

#[inline]
pub(crate) fn put8(b: &mut [u8], off: usize, v: u8) -> Result<(), SrpError> {
    put(b, off, &[v])
}

#[inline]
pub(crate) fn put16(b: &mut [u8], off: usize, v: u16) -> Result<(), SrpError> {
    put(b, off, &v.to_be_bytes())
}

#[inline]
pub(crate) fn put32(b: &mut [u8], off: usize, v: u32) -> Result<(), SrpError> {
    put(b, off, &v.to_be_bytes())
}

#[inline]
pub(crate) fn put64(b: &mut [u8], off: usize, v: u64) -> Result<(), SrpError> {
    put(b, off, &v.to_be_bytes())
}

/// Converts a length to its 32-bit wire field.
#[inline]
pub(crate) fn len32(n: usize) -> Result<u32, SrpError> {
    u32::try_from(n).map_err(|_| SrpError::LengthOverflow(n))
}
