//! A checked cursor over outside bytes.
//!
//! Every binlog structure is parsed through [`Cursor`]: each read checks the
//! remaining length and fails with a [`Short`] error naming the field, so a
//! truncated or malformed event becomes an error message instead of a panic.

/// Not enough bytes for `what`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed {what}: needed {needed} byte(s) at offset {offset}, {left} left")]
pub struct Short {
    /// The field being read.
    pub what: &'static str,
    /// Bytes it needed.
    pub needed: usize,
    /// Where it started.
    pub offset: usize,
    /// Bytes that were left.
    pub left: usize,
}

/// A forward-only reader over a byte slice.
#[derive(Debug, Clone)]
pub struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    /// A cursor at the start of `buf`.
    pub fn new(buf: &'a [u8]) -> Cursor<'a> {
        Cursor { buf, pos: 0 }
    }

    /// Bytes not yet consumed.
    pub fn remaining(&self) -> usize {
        self.buf.len().saturating_sub(self.pos)
    }

    /// The unconsumed rest, without consuming it.
    pub fn rest(&self) -> &'a [u8] {
        self.buf.get(self.pos..).unwrap_or(&[])
    }

    /// Whether everything was consumed.
    pub fn is_empty(&self) -> bool {
        self.remaining() == 0
    }

    /// Takes `n` bytes.
    pub fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], Short> {
        let end = self.pos.checked_add(n);
        match end.and_then(|end| self.buf.get(self.pos..end)) {
            Some(s) => {
                self.pos += n;
                Ok(s)
            }
            None => Err(Short {
                what,
                needed: n,
                offset: self.pos,
                left: self.remaining(),
            }),
        }
    }

    /// Takes everything that is left.
    pub fn take_rest(&mut self) -> &'a [u8] {
        let s = self.rest();
        self.pos = self.buf.len();
        s
    }

    /// One byte.
    pub fn u8(&mut self, what: &'static str) -> Result<u8, Short> {
        Ok(self.take(1, what)?[0])
    }

    /// Little-endian unsigned integer of `n` (≤ 8) bytes.
    pub fn uint_le(&mut self, n: usize, what: &'static str) -> Result<u64, Short> {
        let b = self.take(n.min(8), what)?;
        Ok(le(b))
    }

    /// Big-endian unsigned integer of `n` (≤ 8) bytes.
    pub fn uint_be(&mut self, n: usize, what: &'static str) -> Result<u64, Short> {
        let b = self.take(n.min(8), what)?;
        Ok(be(b))
    }

    /// Little-endian u16.
    pub fn u16(&mut self, what: &'static str) -> Result<u16, Short> {
        Ok(self.uint_le(2, what)? as u16)
    }

    /// Little-endian u32.
    pub fn u32(&mut self, what: &'static str) -> Result<u32, Short> {
        Ok(self.uint_le(4, what)? as u32)
    }

    /// Little-endian u64.
    pub fn u64(&mut self, what: &'static str) -> Result<u64, Short> {
        self.uint_le(8, what)
    }

    /// A length-encoded integer (MySQL `int<lenenc>`).
    pub fn lenenc(&mut self, what: &'static str) -> Result<u64, Short> {
        match self.u8(what)? {
            n @ 0..=0xfa => Ok(u64::from(n)),
            0xfc => self.uint_le(2, what),
            0xfd => self.uint_le(3, what),
            0xfe => self.uint_le(8, what),
            // 0xfb is NULL in result sets and 0xff an error marker: neither is a length here.
            _ => Err(Short {
                what,
                needed: 0,
                offset: self.pos.saturating_sub(1),
                left: self.remaining(),
            }),
        }
    }

    /// A length-encoded integer used as a length: it must fit the rest of the buffer.
    pub fn lenenc_len(&mut self, what: &'static str) -> Result<usize, Short> {
        let n = self.lenenc(what)?;
        let n = usize::try_from(n).unwrap_or(usize::MAX);
        if n > self.remaining() {
            return Err(Short {
                what,
                needed: n,
                offset: self.pos,
                left: self.remaining(),
            });
        }
        Ok(n)
    }

    /// A length-encoded byte string.
    pub fn lenenc_bytes(&mut self, what: &'static str) -> Result<&'a [u8], Short> {
        let n = self.lenenc_len(what)?;
        self.take(n, what)
    }
}

/// Little-endian value of up to 8 bytes.
pub fn le(b: &[u8]) -> u64 {
    b.iter()
        .take(8)
        .rev()
        .fold(0u64, |acc, x| (acc << 8) | u64::from(*x))
}

/// Big-endian value of up to 8 bytes.
pub fn be(b: &[u8]) -> u64 {
    b.iter()
        .take(8)
        .fold(0u64, |acc, x| (acc << 8) | u64::from(*x))
}

/// Whether bit `i` of a little-endian-ordered bitmap (bit 0 = lowest bit of byte 0) is set.
pub fn bit(bitmap: &[u8], i: usize) -> bool {
    bitmap
        .get(i / 8)
        .map(|b| b & (1 << (i % 8)) != 0)
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checked_reads_fail_with_the_field_name() {
        let mut c = Cursor::new(&[1, 2, 3]);
        assert_eq!(c.u16("a").unwrap(), 0x0201);
        let e = c.u32("table id").unwrap_err();
        assert_eq!(e.what, "table id");
        assert_eq!(e.left, 1);
        assert_eq!(c.u8("b").unwrap(), 3);
        assert!(c.u8("c").is_err());
    }

    #[test]
    fn lenenc_forms() {
        let mut c = Cursor::new(&[0xfa, 0xfc, 0x34, 0x12, 0xfd, 1, 2, 3, 0xfb]);
        assert_eq!(c.lenenc("x").unwrap(), 250);
        assert_eq!(c.lenenc("x").unwrap(), 0x1234);
        assert_eq!(c.lenenc("x").unwrap(), 0x030201);
        assert!(c.lenenc("x").is_err());
        let mut c = Cursor::new(&[5, b'a']);
        assert!(c.lenenc_bytes("name").is_err());
    }

    #[test]
    fn endianness_and_bits() {
        assert_eq!(le(&[1, 2]), 0x0201);
        assert_eq!(be(&[1, 2]), 0x0102);
        assert!(bit(&[0b10], 1));
        assert!(!bit(&[0b10], 0));
        assert!(!bit(&[], 9));
    }
}
