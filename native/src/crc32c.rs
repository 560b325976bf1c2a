//! CRC-32C (Castagnoli, reflected polynomial 0x82F63B78), as iSCSI, ext4 and btrfs use it.
//! `crc32c(seed, data)` continues a previous result: crc32c(crc32c(0, a), b) == crc32c(0, a ++ b).
//! Hardware path: SSE4.2 `crc32` on x86_64 when the CPU has it (checked at run time);
//! otherwise slicing-by-8 tables. Both give the same bits; so does src/native/fallback.ts.

const POLY: u32 = 0x82F6_3B78;

const fn make_tables() -> [[u32; 256]; 8] {
    let mut t = [[0u32; 256]; 8];
    let mut i = 0;
    while i < 256 {
        let mut c = i as u32;
        let mut k = 0;
        while k < 8 {
            c = if c & 1 != 0 { (c >> 1) ^ POLY } else { c >> 1 };
            k += 1;
        }
        t[0][i] = c;
        i += 1;
    }
    let mut j = 1;
    while j < 8 {
        let mut i = 0;
        while i < 256 {
            let prev = t[j - 1][i];
            t[j][i] = (prev >> 8) ^ t[0][(prev & 0xff) as usize];
            i += 1;
        }
        j += 1;
    }
    t
}

static TABLES: [[u32; 256]; 8] = make_tables();

/// Slicing-by-8 over the inverted running value `crc`.
fn update_table(mut crc: u32, data: &[u8]) -> u32 {
    let t = &TABLES;
    let mut chunks = data.chunks_exact(8);
    for c in &mut chunks {
        let lo = u32::from_le_bytes([c[0], c[1], c[2], c[3]]) ^ crc;
        let hi = u32::from_le_bytes([c[4], c[5], c[6], c[7]]);
        crc = t[7][(lo & 0xff) as usize]
            ^ t[6][((lo >> 8) & 0xff) as usize]
            ^ t[5][((lo >> 16) & 0xff) as usize]
            ^ t[4][(lo >> 24) as usize]
            ^ t[3][(hi & 0xff) as usize]
            ^ t[2][((hi >> 8) & 0xff) as usize]
            ^ t[1][((hi >> 16) & 0xff) as usize]
            ^ t[0][(hi >> 24) as usize];
    }
    for &b in chunks.remainder() {
        crc = (crc >> 8) ^ t[0][((crc ^ b as u32) & 0xff) as usize];
    }
    crc
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "sse4.2")]
unsafe fn update_sse42_serial(crc: u32, data: &[u8]) -> u32 {
    use std::arch::x86_64::{_mm_crc32_u64, _mm_crc32_u8};
    let mut c = crc as u64;
    let mut chunks = data.chunks_exact(8);
    for w in &mut chunks {
        c = _mm_crc32_u64(c, u64::from_le_bytes([w[0], w[1], w[2], w[3], w[4], w[5], w[6], w[7]]));
    }
    let mut c = c as u32;
    for &b in chunks.remainder() {
        c = _mm_crc32_u8(c, b);
    }
    c
}

/// Bytes per lane of the 3-way interleaved hardware path. The `crc32` instruction has a
/// latency of 3 cycles and a throughput of 1 per cycle: three independent lanes keep it busy.
const LANE_BYTES: usize = 4096;

/// Shifts a raw CRC register past `n` zero bytes, as a table over its 4 bytes (the operation
/// is linear over GF(2)): `shift(c) = t[0][c & 0xff] ^ t[1][(c >> 8) & 0xff] ^ ...`.
struct ShiftTable([[u32; 256]; 4]);

impl ShiftTable {
    fn new(n: usize) -> ShiftTable {
        let zeros = vec![0u8; n];
        // Images of the 32 basis vectors, through the table path (no CPU feature needed).
        let mut basis = [0u32; 32];
        for (i, b) in basis.iter_mut().enumerate() {
            *b = update_table(1u32 << i, &zeros);
        }
        let mut t = [[0u32; 256]; 4];
        for (k, row) in t.iter_mut().enumerate() {
            for (v, cell) in row.iter_mut().enumerate() {
                let mut acc = 0u32;
                for bit in 0..8 {
                    if v & (1 << bit) != 0 {
                        acc ^= basis[k * 8 + bit];
                    }
                }
                *cell = acc;
            }
        }
        ShiftTable(t)
    }

    fn shift(&self, c: u32) -> u32 {
        let t = &self.0;
        t[0][(c & 0xff) as usize] ^ t[1][((c >> 8) & 0xff) as usize] ^ t[2][((c >> 16) & 0xff) as usize] ^ t[3][(c >> 24) as usize]
    }
}

/// Shift tables past one and two lanes, built on first use.
fn lane_shifts() -> &'static (ShiftTable, ShiftTable) {
    static SHIFTS: std::sync::OnceLock<(ShiftTable, ShiftTable)> = std::sync::OnceLock::new();
    SHIFTS.get_or_init(|| (ShiftTable::new(LANE_BYTES), ShiftTable::new(2 * LANE_BYTES)))
}

/// Hardware CRC over the raw register `crc`: 3 lanes of LANE_BYTES at a time, combined as
/// crc(A ++ B ++ C) = shift2L(crc(s, A)) ^ shiftL(crc(0, B)) ^ crc(0, C); the tail serially.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "sse4.2")]
unsafe fn update_sse42(crc: u32, data: &[u8]) -> u32 {
    use std::arch::x86_64::_mm_crc32_u64;
    let mut c = crc;
    let stride = 3 * LANE_BYTES;
    let mut strides = data.chunks_exact(stride);
    if data.len() >= stride {
        let (one, two) = lane_shifts();
        for s in &mut strides {
            let (a, rest) = s.split_at(LANE_BYTES);
            let (b, cc) = rest.split_at(LANE_BYTES);
            let (mut x, mut y, mut z) = (c as u64, 0u64, 0u64);
            let word = |p: &[u8], i: usize| u64::from_le_bytes([p[i], p[i + 1], p[i + 2], p[i + 3], p[i + 4], p[i + 5], p[i + 6], p[i + 7]]);
            let mut i = 0;
            while i < LANE_BYTES {
                x = _mm_crc32_u64(x, word(a, i));
                y = _mm_crc32_u64(y, word(b, i));
                z = _mm_crc32_u64(z, word(cc, i));
                i += 8;
            }
            c = two.shift(x as u32) ^ one.shift(y as u32) ^ z as u32;
        }
    }
    update_sse42_serial(c, strides.remainder())
}

pub fn hardware_available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::is_x86_feature_detected!("sse4.2")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// CRC-32C of `data` continuing from `seed`, with the fastest path this CPU has.
pub fn crc32c(seed: u32, data: &[u8]) -> u32 {
    #[cfg(target_arch = "x86_64")]
    {
        if hardware_available() {
            // SAFETY: the CPU supports SSE4.2 (checked just above).
            return !unsafe { update_sse42(!seed, data) };
        }
    }
    !update_table(!seed, data)
}

/// CRC-32C through the tables only (exposed so tests can compare both paths).
pub fn crc32c_table(seed: u32, data: &[u8]) -> u32 {
    !update_table(!seed, data)
}
