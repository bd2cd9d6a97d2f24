//! One stream message: a node's batch of validated writes, as it goes through JetStream.
//!
//! ```text
//! magic "CNVW" | version u8 = 1 | incarnation u64 | first u64 | last u64 | count u32
//!   | count × (index u32, color u8) | crc32 u32 (over everything before it)
//! ```
//! All integers little-endian. `incarnation` is the publishing node's random id for this run (so a restarted
//! node never takes its predecessor's batches for its own), `first..=last` the node's local batch numbers
//! merged into this message (a node merges the proposals queued while its previous publish was in flight).

use std::fmt;

/// The first four bytes of every message.
pub const MAGIC: [u8; 4] = *b"CNVW";
/// The format version this crate writes and reads.
pub const VERSION: u8 = 1;
/// Bytes before the entries.
pub const HEADER: usize = 4 + 1 + 8 + 8 + 8 + 4;
/// Bytes per entry.
pub const ENTRY: usize = 5;

/// A decoded message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Batch {
    /// The publishing node's id for this run.
    pub incarnation: u64,
    /// Its first local batch number in this message.
    pub first: u64,
    /// Its last local batch number in this message (`first <= last`).
    pub last: u64,
    /// The writes, in the node's order: `(pixel index, color)`.
    pub writes: Vec<(u32, u8)>,
}

/// Why a message did not decode.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DecodeError {
    /// Shorter than a header and a checksum.
    Short(usize),
    /// Not this format.
    Magic,
    /// A version this build does not read.
    Version(u8),
    /// The entry count does not match the length.
    Length { count: u32, len: usize },
    /// `first > last`.
    Range { first: u64, last: u64 },
    /// The checksum does not match.
    Checksum,
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Short(n) => write!(f, "{n} bytes: shorter than a header"),
            Self::Magic => write!(f, "not a canvas write batch (magic)"),
            Self::Version(v) => {
                write!(f, "format version {v}, this build reads {VERSION}: upgrade this node")
            }
            Self::Length { count, len } => write!(f, "{count} entries do not fit {len} bytes"),
            Self::Range { first, last } => write!(f, "batch range {first}..={last} is reversed"),
            Self::Checksum => write!(f, "checksum mismatch"),
        }
    }
}

impl std::error::Error for DecodeError {}

/// Append the encoding of a message to `out`.
pub fn encode(incarnation: u64, first: u64, last: u64, writes: &[(u32, u8)], out: &mut Vec<u8>) {
    let start = out.len();
    out.reserve(HEADER + writes.len() * ENTRY + 4);
    out.extend_from_slice(&MAGIC);
    out.push(VERSION);
    out.extend_from_slice(&incarnation.to_le_bytes());
    out.extend_from_slice(&first.to_le_bytes());
    out.extend_from_slice(&last.to_le_bytes());
    out.extend_from_slice(&(writes.len() as u32).to_le_bytes());
    for &(i, c) in writes {
        out.extend_from_slice(&i.to_le_bytes());
        out.push(c);
    }
    let crc = crc32fast::hash(&out[start..]);
    out.extend_from_slice(&crc.to_le_bytes());
}

/// Decode one message (never panics on any input).
pub fn decode(b: &[u8]) -> Result<Batch, DecodeError> {
    if b.len() < HEADER + 4 {
        return Err(DecodeError::Short(b.len()));
    }
    if b[..4] != MAGIC {
        return Err(DecodeError::Magic);
    }
    if b[4] != VERSION {
        return Err(DecodeError::Version(b[4]));
    }
    let u64_at = |o: usize| u64::from_le_bytes(b[o..o + 8].try_into().expect("8 bytes"));
    let (incarnation, first, last) = (u64_at(5), u64_at(13), u64_at(21));
    let count = u32::from_le_bytes(b[29..33].try_into().expect("4 bytes"));
    let body = b.len() - HEADER - 4;
    if !body.is_multiple_of(ENTRY) || body / ENTRY != count as usize {
        return Err(DecodeError::Length { count, len: b.len() });
    }
    let (data, crc) = b.split_at(b.len() - 4);
    if crc32fast::hash(data) != u32::from_le_bytes(crc.try_into().expect("4 bytes")) {
        return Err(DecodeError::Checksum);
    }
    if first > last {
        return Err(DecodeError::Range { first, last });
    }
    let writes = data[HEADER..]
        .chunks_exact(ENTRY)
        .map(|e| (u32::from_le_bytes(e[..4].try_into().expect("4 bytes")), e[4]))
        .collect();
    Ok(Batch { incarnation, first, last, writes })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let w = vec![(0, 1), (u32::MAX, 255), (12345, 7)];
        let mut b = Vec::new();
        encode(0xdead_beef, 3, 5, &w, &mut b);
        assert_eq!(b.len(), HEADER + 3 * ENTRY + 4);
        assert_eq!(decode(&b), Ok(Batch { incarnation: 0xdead_beef, first: 3, last: 5, writes: w }));
        let mut e = Vec::new();
        encode(1, 0, 0, &[], &mut e);
        assert_eq!(decode(&e).unwrap().writes, vec![]);
    }

    #[test]
    fn damage_is_detected() {
        let mut b = Vec::new();
        encode(9, 1, 1, &[(4, 2), (5, 3)], &mut b);
        for i in 0..b.len() {
            let mut d = b.clone();
            d[i] ^= 0x40;
            assert!(decode(&d).is_err(), "flipped byte {i} went unnoticed");
        }
        for n in 0..b.len() {
            assert!(decode(&b[..n]).is_err(), "cut at {n}");
        }
        let mut r = Vec::new();
        encode(9, 2, 1, &[], &mut r);
        assert_eq!(decode(&r), Err(DecodeError::Range { first: 2, last: 1 }));
    }
}
