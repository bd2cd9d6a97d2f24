//! The bytes on disk. All integers little-endian.
//!
//! Log file (`placements.log`): a 16-byte header, then records.
//! - header: `b"CPLACE01"`, width u16, height u16, 4 zero bytes;
//! - record: body length u32, CRC-32 (IEEE) of the body u32, body;
//! - body: kind u8, tick u64, then for [`KIND_CHANGES`] a count u32 and `count` × (index u32, color u8);
//!   for [`KIND_RESERVE`] nothing more (tick numbers up to `tick` may have been published).
//!
//! Snapshot file (`snapshot-<tick, 20 digits>.bin`): `b"CPSNAP01"`, tick u64, width u16, height u16,
//! 4 zero bytes, canvas hash u64, CRC-32 u32 of bytes 8..32 followed by the pixels, 4 zero bytes, then
//! `width × height` pixels.

use canvas::Dims;

use crate::TickBatch;

/// Log file magic.
pub const LOG_MAGIC: &[u8; 8] = b"CPLACE01";
/// Log header length.
pub const LOG_HEADER: usize = 16;
/// Snapshot file magic.
pub const SNAP_MAGIC: &[u8; 8] = b"CPSNAP01";
/// Snapshot header length.
pub const SNAP_HEADER: usize = 40;
/// Where a snapshot's dimensions are: [`decode_snapshot`] reports a snapshot of other dimensions at this
/// offset (and nothing else there), so a caller can tell "another canvas" from damage.
pub const SNAP_DIMS_AT: u64 = 16;
/// Record kind: a tick's changes.
pub const KIND_CHANGES: u8 = 1;
/// Record kind: a tick-number reservation.
pub const KIND_RESERVE: u8 = 2;
/// Record framing: length and CRC.
pub const FRAME: usize = 8;
/// Body bytes before the entries of a changes record.
const CHANGES_FIXED: usize = 1 + 8 + 4;
/// Bytes per entry.
const ENTRY: usize = 5;

/// A decoded record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Record {
    /// A tick's changes.
    Changes(TickBatch),
    /// Ticks up to this one may have been published.
    Reserve(u64),
}

/// The log header for `dims`.
pub fn log_header(dims: Dims) -> [u8; LOG_HEADER] {
    let mut h = [0u8; LOG_HEADER];
    h[..8].copy_from_slice(LOG_MAGIC);
    h[8..10].copy_from_slice(&dims.width.to_le_bytes());
    h[10..12].copy_from_slice(&dims.height.to_le_bytes());
    h
}

/// The dimensions a log header declares, or what is wrong with it.
pub fn parse_log_header(h: &[u8]) -> Result<Dims, String> {
    if h.len() < LOG_HEADER {
        return Err(format!("header is {} bytes, expected {LOG_HEADER}", h.len()));
    }
    if &h[..8] != LOG_MAGIC {
        return Err("not a placement log (bad magic)".into());
    }
    let dims = Dims { width: u16::from_le_bytes([h[8], h[9]]), height: u16::from_le_bytes([h[10], h[11]]) };
    if dims.is_empty() {
        return Err("header declares an empty canvas".into());
    }
    Ok(dims)
}

/// Append one framed changes record to `out`.
pub fn encode_changes(tick: u64, changes: &[(u32, u8)], out: &mut Vec<u8>) {
    let body = CHANGES_FIXED + ENTRY * changes.len();
    let start = out.len();
    out.extend_from_slice(&(body as u32).to_le_bytes());
    out.extend_from_slice(&[0; 4]);
    out.push(KIND_CHANGES);
    out.extend_from_slice(&tick.to_le_bytes());
    out.extend_from_slice(&(changes.len() as u32).to_le_bytes());
    for &(i, c) in changes {
        out.extend_from_slice(&i.to_le_bytes());
        out.push(c);
    }
    seal(out, start);
}

/// Append one framed reservation record to `out`.
pub fn encode_reserve(through: u64, out: &mut Vec<u8>) {
    let start = out.len();
    out.extend_from_slice(&9u32.to_le_bytes());
    out.extend_from_slice(&[0; 4]);
    out.push(KIND_RESERVE);
    out.extend_from_slice(&through.to_le_bytes());
    seal(out, start);
}

fn seal(out: &mut [u8], start: usize) {
    let crc = crc32fast::hash(&out[start + FRAME..]);
    out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
}

/// What [`next_record`] found at the front of `buf`.
#[derive(Debug, PartialEq, Eq)]
pub enum Next {
    /// A record and the bytes it took.
    Record(Record, usize),
    /// `buf` ends inside a record (or is empty: `End`).
    Short,
    /// The record's checksum does not match; its framed length, as declared.
    BadCrc(usize),
    /// The checksum matches but the content is not a valid record.
    Invalid(String),
    /// Nothing left.
    End,
}

/// Decode the record at the front of `buf`, checking it against `dims` (every index inside the canvas).
pub fn next_record(buf: &[u8], dims: Dims) -> Next {
    if buf.is_empty() {
        return Next::End;
    }
    if buf.len() < FRAME {
        return Next::Short;
    }
    let len = u32::from_le_bytes(buf[..4].try_into().expect("4 bytes")) as usize;
    let crc = u32::from_le_bytes(buf[4..8].try_into().expect("4 bytes"));
    // The largest valid record: every pixel of the canvas changed.
    let max = CHANGES_FIXED + ENTRY * dims.len();
    if len > max {
        // A length no record can have: a torn header if it runs past the end, else garbage.
        return if FRAME + len > buf.len() {
            Next::Short
        } else {
            Next::Invalid(format!("record length {len}"))
        };
    }
    if FRAME + len > buf.len() {
        return Next::Short;
    }
    let body = &buf[FRAME..FRAME + len];
    if crc32fast::hash(body) != crc {
        return Next::BadCrc(FRAME + len);
    }
    match decode_body(body, dims) {
        Ok(r) => Next::Record(r, FRAME + len),
        Err(e) => Next::Invalid(e),
    }
}

fn decode_body(body: &[u8], dims: Dims) -> Result<Record, String> {
    if body.len() < 9 {
        return Err(format!("body of {} bytes", body.len()));
    }
    let tick = u64::from_le_bytes(body[1..9].try_into().expect("8 bytes"));
    match body[0] {
        KIND_RESERVE if body.len() == 9 => Ok(Record::Reserve(tick)),
        KIND_CHANGES if body.len() >= CHANGES_FIXED => {
            let count = u32::from_le_bytes(body[9..13].try_into().expect("4 bytes")) as usize;
            let entries = &body[CHANGES_FIXED..];
            if entries.len() != count * ENTRY {
                return Err(format!("{count} entries declared in {} bytes", entries.len()));
            }
            let n = dims.len() as u32;
            let mut changes = Vec::with_capacity(count);
            for e in entries.chunks_exact(ENTRY) {
                let i = u32::from_le_bytes(e[..4].try_into().expect("4 bytes"));
                if i >= n {
                    return Err(format!("pixel index {i} outside the {}x{} canvas", dims.width, dims.height));
                }
                changes.push((i, e[4]));
            }
            Ok(Record::Changes(TickBatch { tick, changes }))
        }
        k => Err(format!("record kind {k} with a body of {} bytes", body.len())),
    }
}

/// A whole snapshot file's bytes.
pub fn encode_snapshot(tick: u64, hash: u64, dims: Dims, pixels: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(SNAP_HEADER + pixels.len());
    out.extend_from_slice(SNAP_MAGIC);
    out.extend_from_slice(&tick.to_le_bytes());
    out.extend_from_slice(&dims.width.to_le_bytes());
    out.extend_from_slice(&dims.height.to_le_bytes());
    out.extend_from_slice(&[0; 4]);
    out.extend_from_slice(&hash.to_le_bytes());
    let crc = snap_crc(&out[8..32], pixels);
    out.extend_from_slice(&crc.to_le_bytes());
    out.extend_from_slice(&[0; 4]);
    out.extend_from_slice(pixels);
    out
}

fn snap_crc(header: &[u8], pixels: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(header);
    h.update(pixels);
    h.finalize()
}

/// A decoded snapshot.
#[derive(Debug, PartialEq, Eq)]
pub struct SnapshotData {
    /// Tick it is at.
    pub tick: u64,
    /// Canvas hash it declares (checked against the pixels).
    pub hash: u64,
    /// The pixels.
    pub pixels: Vec<u8>,
}

/// Decode and check a snapshot file: magic, dimensions, length, checksum and canvas hash. The error is
/// `(byte offset, what is wrong)`.
pub fn decode_snapshot(buf: &[u8], dims: Dims) -> Result<SnapshotData, (u64, String)> {
    if buf.len() < SNAP_HEADER {
        return Err((0, format!("{} bytes, shorter than the header", buf.len())));
    }
    if &buf[..8] != SNAP_MAGIC {
        return Err((0, "not a canvas snapshot (bad magic)".into()));
    }
    let tick = u64::from_le_bytes(buf[8..16].try_into().expect("8 bytes"));
    let d = Dims {
        width: u16::from_le_bytes(buf[16..18].try_into().expect("2 bytes")),
        height: u16::from_le_bytes(buf[18..20].try_into().expect("2 bytes")),
    };
    if d != dims {
        return Err((
            SNAP_DIMS_AT,
            format!("a {}x{} canvas, not {}x{}", d.width, d.height, dims.width, dims.height),
        ));
    }
    let hash = u64::from_le_bytes(buf[24..32].try_into().expect("8 bytes"));
    let crc = u32::from_le_bytes(buf[32..36].try_into().expect("4 bytes"));
    let pixels = &buf[SNAP_HEADER..];
    if pixels.len() != dims.len() {
        return Err((SNAP_HEADER as u64, format!("{} pixel bytes, expected {}", pixels.len(), dims.len())));
    }
    if snap_crc(&buf[8..32], pixels) != crc {
        return Err((32, "checksum mismatch".into()));
    }
    if canvas::hash::full(pixels) != hash {
        return Err((24, "canvas hash does not match the pixels".into()));
    }
    Ok(SnapshotData { tick, hash, pixels: pixels.to_vec() })
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: Dims = Dims { width: 4, height: 3 };

    #[test]
    fn records_round_trip_and_every_damage_is_caught() {
        let mut buf = Vec::new();
        encode_changes(7, &[(3, 1), (11, 200)], &mut buf);
        encode_reserve(600, &mut buf);
        let Next::Record(r, n) = next_record(&buf, D) else { panic!() };
        assert_eq!(r, Record::Changes(TickBatch { tick: 7, changes: vec![(3, 1), (11, 200)] }));
        assert_eq!(next_record(&buf[n..], D), Next::Record(Record::Reserve(600), 17));
        assert_eq!(next_record(&buf[n + 17..], D), Next::End);
        // Every truncation of the first record is Short; every flipped bit is caught.
        for cut in 1..n {
            assert_eq!(next_record(&buf[..cut], D), Next::Short, "cut {cut}");
        }
        for byte in 0..n {
            for bit in 0..8 {
                let mut b = buf[..n].to_vec();
                b[byte] ^= 1 << bit;
                assert!(
                    !matches!(next_record(&b, D), Next::Record(..) | Next::End),
                    "flip {byte}.{bit} went unnoticed"
                );
            }
        }
        // An index outside the canvas is refused even with a good checksum.
        let mut b = Vec::new();
        encode_changes(1, &[(12, 0)], &mut b);
        assert!(matches!(next_record(&b, D), Next::Invalid(_)));
    }

    #[test]
    fn snapshots_round_trip_and_are_checked() {
        let px: Vec<u8> = (0..12).collect();
        let h = canvas::hash::full(&px);
        let s = encode_snapshot(9, h, D, &px);
        assert_eq!(decode_snapshot(&s, D).unwrap(), SnapshotData { tick: 9, hash: h, pixels: px.clone() });
        assert!(decode_snapshot(&s[..s.len() - 1], D).is_err());
        assert!(decode_snapshot(&s, Dims { width: 3, height: 4 }).is_err());
        for byte in 0..s.len() {
            let mut b = s.clone();
            b[byte] ^= 0x10;
            // The padding bytes carry nothing; every other flip is caught.
            if (20..24).contains(&byte) || (36..40).contains(&byte) {
                continue;
            }
            assert!(decode_snapshot(&b, D).is_err(), "flip at {byte} went unnoticed");
        }
    }
}
