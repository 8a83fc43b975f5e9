//! Unsigned LEB128 varints, as protobuf, multiformats and CAR files write them: seven
//! bits a byte, least significant first, the high bit set on every byte but the last.
//!
//! Written here rather than taken from `unsigned-varint` because protobuf readers must
//! accept encodings that crate refuses (non-minimal ones), and CAR readers must read a
//! varint byte by byte from a stream, with their own limit on its length.

/// Why a varint could not be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum VarintError {
    #[error("truncated varint")]
    Truncated,
    #[error("varint longer than {0} bytes")]
    TooLong(usize),
}

/// The longest varint of a `u64`.
pub const MAX_U64_BYTES: usize = 10;

/// Bytes the varint of `value` takes.
pub fn encoded_len(value: u64) -> usize {
    let bits = 64 - (value | 1).leading_zeros() as usize;
    bits.div_ceil(7)
}

/// Appends the varint of `value` to `out`.
pub fn put(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push((value as u8) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

/// Reads a varint one byte at a time, for input that arrives as a stream.
#[derive(Debug, Clone)]
pub struct Decoder {
    value: u64,
    bytes: usize,
    max_bytes: usize,
}

impl Decoder {
    /// A decoder that refuses a varint longer than `max_bytes` (at most
    /// [`MAX_U64_BYTES`]).
    pub fn new(max_bytes: usize) -> Decoder {
        Decoder {
            value: 0,
            bytes: 0,
            max_bytes: max_bytes.min(MAX_U64_BYTES),
        }
    }

    /// Feeds the next byte; the value once it is complete.
    pub fn push(&mut self, byte: u8) -> Result<Option<u64>, VarintError> {
        if self.bytes == self.max_bytes {
            return Err(VarintError::TooLong(self.max_bytes));
        }
        // Bits past the 64th (in a tenth byte) are dropped, as protobuf readers do.
        self.value |= u64::from(byte & 0x7f)
            .checked_shl(7 * self.bytes as u32)
            .unwrap_or(0);
        self.bytes += 1;
        if byte & 0x80 == 0 {
            return Ok(Some(self.value));
        }
        if self.bytes == self.max_bytes {
            return Err(VarintError::TooLong(self.max_bytes));
        }
        Ok(None)
    }
}

/// Takes a varint of at most `max_bytes` bytes from the front of `bytes`.
pub fn take(bytes: &mut &[u8], max_bytes: usize) -> Result<u64, VarintError> {
    let mut decoder = Decoder::new(max_bytes);
    for (index, &byte) in bytes.iter().enumerate() {
        if let Some(value) = decoder.push(byte)? {
            *bytes = &bytes[index + 1..];
            return Ok(value);
        }
    }
    Err(VarintError::Truncated)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_round_trip_at_every_length() {
        for value in [0u64, 1, 127, 128, 300, 16383, 16384, 1 << 35, u64::MAX] {
            let mut out = Vec::new();
            put(&mut out, value);
            assert_eq!(out.len(), encoded_len(value), "{value}");
            let mut rest = &out[..];
            assert_eq!(take(&mut rest, MAX_U64_BYTES), Ok(value));
            assert!(rest.is_empty());
        }
    }

    #[test]
    fn limits_and_truncation() {
        assert_eq!(
            take(&mut &[0x80, 0x80][..], 10),
            Err(VarintError::Truncated)
        );
        assert_eq!(take(&mut &[0xff; 9][..], 9), Err(VarintError::TooLong(9)));
        let mut rest = &[0xac, 0x02, 0x07][..];
        assert_eq!(take(&mut rest, 2), Ok(300));
        assert_eq!(rest, [0x07]);
        // Non-minimal encodings are read, as protobuf requires.
        assert_eq!(take(&mut &[0x81, 0x00][..], 10), Ok(1));
    }
}
