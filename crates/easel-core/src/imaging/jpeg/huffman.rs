//! Huffman coding of quantised blocks into the entropy-coded segment.
//!
//! Built for speed the way libjpeg-turbo's `jchuff.c` is: a 64-bit bit buffer emptied eight bytes
//! at a time, with one test for a 0xFF among them (rare, then byte by byte with stuffing); the
//! non-zero coefficients found through a bitmask in zigzag order walked with `trailing_zeros`,
//! so zero runs cost nothing; each symbol's code and its value bits written as one field.

use super::tables::{HuffmanSpec, NATURAL};

/// Codes of one table, by symbol, made ready to take their value bits: the code shifted left by
/// the symbol's size (its low four bits; zero for end of block and ZRL) in the low 32 bits, the
/// length of code and value bits together above.
pub struct CodeTable {
    codes: [u64; 256],
}

impl CodeTable {
    /// The canonical codes of a table (T.81 Annex C).
    pub fn new(spec: &HuffmanSpec) -> Self {
        let mut codes = [0; 256];
        let mut symbols = spec.symbols.iter();
        let mut code = 0u64;
        for (length, &count) in (1..=16).zip(&spec.counts) {
            for &symbol in symbols.by_ref().take(usize::from(count)) {
                let size = u64::from(symbol & 15);
                codes[usize::from(symbol)] = ((length + size) << 32) | (code << size);
                code += 1;
            }
            code <<= 1;
        }
        Self { codes }
    }

    /// The code of `symbol` followed by its value `bits` (as many as the symbol's size), and the
    /// length of both.
    #[inline(always)]
    fn with_bits(&self, symbol: usize, bits: u32) -> (u64, u32) {
        let entry = self.codes[symbol & 0xFF];
        ((entry & 0xFFFF_FFFF) | u64::from(bits), (entry >> 32) as u32)
    }
}

/// For a row `u` of a transposed block and a byte whose bit `v` says the coefficient at `u * 8
/// + v` is non-zero: those coefficients as bits at their zigzag positions.
static ZIGZAG_BITS: [[u64; 256]; 8] = zigzag_bits();

/// [`category`] of each AC value from -1024 to 1023 (at `value + 1024`): the value bits above
/// the low four, the size in them. A load instead of a dozen instructions for every coded
/// coefficient, from 4 KiB that stay in the L1 cache.
static AC_VALUES: [u16; 2048] = ac_values();

const fn ac_values() -> [u16; 2048] {
    let mut table = [0u16; 2048];
    let mut i = 0;
    while i < 2048 {
        let (size, bits) = category(i as i32 - 1024);
        table[i] = ((bits << 4) | size) as u16;
        i += 1;
    }
    table
}

/// The transposed index of the coefficient at each zigzag position.
static TRANSPOSED: [u8; 64] = transposed();

const fn zigzag_bits() -> [[u64; 256]; 8] {
    let mut position = [0u8; 64];
    let mut k = 0;
    while k < 64 {
        position[NATURAL[k] as usize] = k as u8;
        k += 1;
    }
    let mut table = [[0u64; 256]; 8];
    let mut u = 0;
    while u < 8 {
        let mut byte = 0;
        while byte < 256 {
            let mut v = 0;
            while v < 8 {
                if byte & (1 << v) != 0 {
                    table[u][byte] |= 1 << position[v * 8 + u];
                }
                v += 1;
            }
            byte += 1;
        }
        u += 1;
    }
    table
}

const fn transposed() -> [u8; 64] {
    let mut table = [0u8; 64];
    let mut k = 0;
    while k < 64 {
        let n = NATURAL[k];
        table[k] = (n % 8) * 8 + n / 8;
        k += 1;
    }
    table
}

/// Which coefficients of a transposed block are non-zero, as bits in zigzag order.
#[inline(always)]
fn nonzero_mask(block: &[i16; 64]) -> u64 {
    let mut flags = [0u8; 64];
    for (f, &c) in flags.iter_mut().zip(block) {
        *f = u8::from(c != 0);
    }
    let mut mask = 0;
    for (row, flags) in ZIGZAG_BITS.iter().zip(flags.chunks_exact(8)) {
        // Gathers the low bit of each byte into the top byte (no carries: every product bit is
        // distinct), byte `v` to bit `v`.
        let byte = u64::from_le_bytes(flags.try_into().unwrap()).wrapping_mul(0x0102_0408_1020_4080) >> 56;
        mask |= row[byte as usize];
    }
    mask
}

/// The JPEG size category of `value` and its value bits (negative values as value - 1, the
/// low `size` bits).
#[inline(always)]
const fn category(value: i32) -> (u32, u32) {
    let sign = value >> 31;
    let size = 32 - ((value ^ sign) - sign).leading_zeros();
    let bits = ((value + sign) as u32) & ((1u32 << size) - 1);
    (size, bits)
}

/// Writes bits most significant first into `out`, stuffing a 0x00 after each 0xFF.
pub struct BitWriter<'a> {
    out: &'a mut Vec<u8>,
    bits: Bits,
}

/// The bits not yet written: a plain value, so that while a block is coded it lives in
/// registers rather than behind the writer's reference.
#[derive(Clone, Copy)]
struct Bits {
    /// Right-aligned (bits above `64 - free` may be stale).
    pending: u64,
    free: u32,
}

impl Bits {
    /// Appends the low `length` bits of `bits` (`length` at most 32, nothing above it set).
    #[inline(always)]
    fn put(&mut self, out: &mut Vec<u8>, bits: u64, length: u32) {
        if length < self.free {
            self.pending = (self.pending << length) | bits;
            self.free -= length;
        } else {
            let over = length - self.free;
            write_word(out, (self.pending << self.free) | (bits >> over));
            self.pending = bits;
            self.free = 64 - over;
        }
    }
}

#[inline(always)]
fn write_word(out: &mut Vec<u8>, word: u64) {
    const ONES: u64 = 0x0101_0101_0101_0101;
    // A byte of `word` is 0xFF exactly where a byte of `!word` is zero.
    let inverse = !word;
    if inverse.wrapping_sub(ONES) & !inverse & (ONES << 7) == 0 {
        out.extend_from_slice(&word.to_be_bytes());
    } else {
        write_stuffed(out, &word.to_be_bytes());
    }
}

#[cold]
fn write_stuffed(out: &mut Vec<u8>, bytes: &[u8]) {
    for &b in bytes {
        out.push(b);
        if b == 0xFF {
            out.push(0);
        }
    }
}

impl<'a> BitWriter<'a> {
    pub fn new(out: &'a mut Vec<u8>) -> Self {
        Self { out, bits: Bits { pending: 0, free: 64 } }
    }

    #[cfg(test)]
    fn put(&mut self, bits: u64, length: u32) {
        self.bits.put(self.out, bits, length);
    }

    /// Pads the last byte with one bits (T.81 F.1.2.3) and writes what is pending.
    pub fn finish(self) {
        let Bits { pending, free } = self.bits;
        let used = 64 - free;
        let padding = (8 - used % 8) % 8;
        let length = used + padding;
        if length > 0 {
            let bits = (pending << padding) | ((1 << padding) - 1);
            write_stuffed(self.out, &(bits << (64 - length)).to_be_bytes()[..length as usize / 8]);
        }
    }

    /// Codes one transposed, quantised block; `previous_dc` is the last DC of its component.
    #[inline(always)]
    pub fn block(&mut self, block: &[i16; 64], previous_dc: &mut i16, dc: &CodeTable, ac: &CodeTable) {
        let out = &mut *self.out;
        let mut bits = self.bits;
        let diff = i32::from(block[0]) - i32::from(*previous_dc);
        *previous_dc = block[0];
        let (size, value) = category(diff);
        let (code, length) = dc.with_bits(size as usize, value);
        bits.put(out, code, length);

        let mut mask = nonzero_mask(block) & !1;
        let mut last = 0;
        while mask != 0 {
            let k = mask.trailing_zeros();
            let mut run = k - last - 1;
            while run >= 16 {
                let (code, length) = ac.with_bits(0xF0, 0);
                bits.put(out, code, length);
                run -= 16;
            }
            let coefficient = block[usize::from(TRANSPOSED[k as usize])];
            // AC coefficients are within ±1023 (see `dct::transform`); the mask only spares a
            // bounds check.
            let entry = u32::from(AC_VALUES[(i32::from(coefficient) + 1024) as usize & 2047]);
            let (code, length) = ac.with_bits((run << 4 | (entry & 15)) as usize, entry >> 4);
            bits.put(out, code, length);
            last = k;
            mask &= mask - 1;
        }
        if last != 63 {
            let (code, length) = ac.with_bits(0x00, 0);
            bits.put(out, code, length);
        }
        self.bits = bits;
    }
}

#[cfg(test)]
mod tests {
    use super::super::tables::{LUMA_AC, LUMA_DC};
    use super::*;

    #[test]
    fn categories_and_value_bits() {
        assert_eq!(category(0), (0, 0));
        assert_eq!(category(1), (1, 1));
        assert_eq!(category(-1), (1, 0));
        assert_eq!(category(-3), (2, 0b00));
        assert_eq!(category(2), (2, 0b10));
        assert_eq!(category(-1023), (10, 0));
        assert_eq!(category(1023), (10, 1023));
        assert_eq!(category(-2046), (11, 1));
    }

    #[test]
    fn canonical_codes_of_the_standard_luma_dc_table() {
        let table = CodeTable::new(&LUMA_DC);
        // T.81 Table K.3; each code comes shifted left by its size (the symbol), ready for the
        // value bits.
        let expected = [(2, 0b00), (3, 0b010), (3, 0b011), (3, 0b100), (3, 0b101), (3, 0b110), (4, 0b1110)];
        for (size, (length, code)) in expected.into_iter().enumerate() {
            assert_eq!(table.with_bits(size, 0), (code << size, length + size as u32), "symbol {size}");
        }
        assert_eq!(table.with_bits(11, 0b101), (0b1_1111_1110 << 11 | 0b101, 9 + 11));
        // K.5: end of block is 1010, ZRL 11111111001; 0x23 (run 2, size 3) is 1111110111.
        let ac = CodeTable::new(&LUMA_AC);
        assert_eq!((ac.with_bits(0x00, 0), ac.with_bits(0xF0, 0)), ((0b1010, 4), (0b111_1111_1001, 11)));
        assert_eq!(ac.with_bits(0x23, 0b110), (0b11_1111_0111 << 3 | 0b110, 13));
    }

    #[test]
    fn the_zigzag_mask_follows_the_transposed_layout() {
        let mut block = [0i16; 64];
        // Natural index 1 (zigzag 1) sits at transposed 8; natural 8 (zigzag 2) at transposed 1.
        block[8] = 5;
        block[1] = -2;
        block[63] = 1;
        assert_eq!(nonzero_mask(&block), (1 << 1) | (1 << 2) | (1 << 63));
        for k in 0..64 {
            let mut one = [0i16; 64];
            one[usize::from(TRANSPOSED[k])] = 1;
            assert_eq!(nonzero_mask(&one), 1 << k);
        }
    }

    fn written(f: impl FnOnce(&mut BitWriter)) -> Vec<u8> {
        let mut out = Vec::new();
        let mut writer = BitWriter::new(&mut out);
        f(&mut writer);
        writer.finish();
        out
    }

    #[test]
    fn bits_are_packed_most_significant_first_and_padded_with_ones() {
        assert_eq!(written(|w| w.put(0b101, 3)), [0b1011_1111]);
        assert_eq!(written(|w| w.put(0, 0)), [] as [u8; 0]);
        assert_eq!(written(|w| (0..9).for_each(|_| w.put(0xABCD, 16))), [[0xAB, 0xCD]; 9].concat());
        // Across the 64-bit boundary: 60 bits, then 8 that straddle it.
        let bytes = written(|w| {
            w.put(0x0123_4567, 32);
            w.put(0x89A_BCDE, 28);
            w.put(0xF1, 8);
        });
        assert_eq!(bytes, [0x01, 0x23, 0x45, 0x67, 0x89, 0xAB, 0xCD, 0xEF, 0x1F]);
    }

    #[test]
    fn every_ff_byte_is_followed_by_a_stuffed_zero() {
        // Through the eight-byte path (0xFF in each position of a word) and the final flush.
        for at in 0..8 {
            let mut word = [0x12u8; 8];
            word[at] = 0xFF;
            let bytes = written(|w| {
                w.put(u64::from(u32::from_be_bytes(word[..4].try_into().unwrap())), 32);
                w.put(u64::from(u32::from_be_bytes(word[4..].try_into().unwrap())), 32);
                w.put(0xFF, 8);
            });
            let mut expected = word.to_vec();
            expected.insert(at + 1, 0);
            expected.extend([0xFF, 0x00]);
            assert_eq!(bytes, expected, "0xFF at {at}");
        }
        assert_eq!(written(|w| (0..20).for_each(|_| w.put(0xFFFF, 16))), [0xFF, 0x00].repeat(40));
        // Padding ones can make the last byte 0xFF too.
        assert_eq!(written(|w| w.put(0b1111, 4)), [0xFF, 0x00]);
        // Bytes near 0xFF, and 0x7F 0x80 pairs that borrow across bytes, are not stuffed.
        let near = [0xFE, 0x7F, 0x80, 0xFE, 0x7F, 0x80, 0xFE, 0xFE];
        let bytes = written(|w| {
            w.put(u64::from(u32::from_be_bytes(near[..4].try_into().unwrap())), 32);
            w.put(u64::from(u32::from_be_bytes(near[4..].try_into().unwrap())), 32);
        });
        assert_eq!(bytes, near);
    }
}
