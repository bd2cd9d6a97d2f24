//! The predecessor's wire protocol (ALPN `h3`, no HTTP/3 inside), kept byte-compatible.
//!
//! - Client → server: one DATAGRAM per pixel, exactly 5 bytes: `x u16, y u16, color u8`, little-endian.
//!   Any other length is ignored.
//! - Server → client, per tick: the diff as 5-byte entries `[u32 LE index][u8 color]` in datagrams of at most
//!   1200 bytes; on a connection's first tick and every 60th tick the whole canvas instead, RLE-encoded as
//!   `(count u8, color u8)` pairs split the same way. No type byte, no sequence number.
//!
//! Telling the two apart without a type byte (see docs/PROTOCOL.md): indices are below 2^24, so in a diff the
//! fourth byte of every entry is 0; in a snapshot every even byte is a run count, never 0. Byte 8 is both
//! "entry 2's high byte" and "pair 5's count", so the two readings exclude each other for every length ≥ 10,
//! and lengths below 10 differ by parity (5 is odd, RLE is even).

use crate::datagrams::Datagrams;
use crate::grid::{Dims, Pixel};
use crate::rle;

/// ALPN of the legacy protocol.
pub const ALPN: &[u8] = b"h3";
/// Size of a pixel write.
pub const WRITE_LEN: usize = 5;
/// Size of one diff entry.
pub const ENTRY_LEN: usize = 5;
/// Largest broadcast datagram the predecessor sent.
pub const MAX_DATAGRAM: usize = 1200;

/// Decode a write; `None` for any length other than 5 (the predecessor ignored those).
#[inline]
pub fn decode_write(d: &[u8]) -> Option<Pixel> {
    let d: &[u8; WRITE_LEN] = d.try_into().ok()?;
    Some(Pixel { x: u16::from_le_bytes([d[0], d[1]]), y: u16::from_le_bytes([d[2], d[3]]), color: d[4] })
}

/// Encode a write.
pub fn encode_write(p: Pixel) -> [u8; WRITE_LEN] {
    let (x, y) = (p.x.to_le_bytes(), p.y.to_le_bytes());
    [x[0], x[1], y[0], y[1], p.color]
}

/// Append the diff `entries` as datagrams of at most `max` bytes.
pub fn encode_diff(entries: &[(u32, u8)], max: usize, out: &mut Datagrams) {
    let per = (max / ENTRY_LEN).max(1);
    for chunk in entries.chunks(per) {
        out.begin();
        for &(index, color) in chunk {
            let i = index.to_le_bytes();
            out.extend(&[i[0], i[1], i[2], i[3], color]);
        }
    }
}

/// Append the RLE snapshot of `pixels` as datagrams of at most `max` bytes (pairs never straddle two).
pub fn encode_snapshot(pixels: &[u8], max: usize, out: &mut Datagrams) {
    let max = (max & !1).max(2);
    let mut started = false;
    rle::for_each_run(pixels, |count, color| {
        if !started || out.current_len() + 2 > max {
            out.begin();
            started = true;
        }
        out.extend(&[count, color]);
    });
}

/// What a server datagram is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Diff entries.
    Diff,
    /// Part of an RLE snapshot.
    Snapshot,
    /// Neither (malformed).
    Invalid,
}

/// Classify a server datagram (see the module docs for why this is unambiguous).
pub fn classify(d: &[u8]) -> Kind {
    if d.is_empty() {
        return Kind::Invalid;
    }
    if d.len().is_multiple_of(ENTRY_LEN) && d.chunks_exact(ENTRY_LEN).all(|e| e[3] == 0) {
        return Kind::Diff;
    }
    if d.len().is_multiple_of(2) && d.chunks_exact(2).all(|p| p[0] != 0) {
        return Kind::Snapshot;
    }
    Kind::Invalid
}

/// Iterate the `(index, color)` entries of a diff datagram.
pub fn diff_entries(d: &[u8]) -> impl Iterator<Item = (u32, u8)> + '_ {
    d.chunks_exact(ENTRY_LEN).map(|e| (u32::from_le_bytes([e[0], e[1], e[2], e[3]]), e[4]))
}

/// Counters of a [`LegacyReplica`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LegacyStats {
    /// Complete snapshots installed.
    pub snapshots: u64,
    /// Diff datagrams applied.
    pub diffs: u64,
    /// Datagrams that could not be used (malformed, out of range, interrupted snapshot).
    pub errors: u64,
}

/// A client's copy of the canvas built from legacy broadcasts.
///
/// Legacy datagrams carry no offsets, so a snapshot is accumulated in arrival order until its run counts
/// add up to the canvas size; a diff arriving in the middle abandons it (the next full snapshot, at most 60
/// ticks later, repairs the replica). Convergence therefore needs an in-order, loss-free path (loopback),
/// which is exactly the weakness `canvas/1` fixes.
#[derive(Clone, Debug)]
pub struct LegacyReplica {
    pixels: Vec<u8>,
    scratch: Vec<u8>,
    snap_pos: Option<usize>,
    stats: LegacyStats,
}

impl LegacyReplica {
    /// An empty (all zero) replica of `dims`.
    pub fn new(dims: Dims) -> Self {
        Self {
            pixels: vec![0; dims.len()],
            scratch: vec![0; dims.len()],
            snap_pos: None,
            stats: LegacyStats::default(),
        }
    }

    /// The replica's pixels.
    pub fn pixels(&self) -> &[u8] {
        &self.pixels
    }

    /// Counters.
    pub fn stats(&self) -> LegacyStats {
        self.stats
    }

    /// True once a whole snapshot has been installed.
    pub fn synced(&self) -> bool {
        self.stats.snapshots > 0
    }

    /// Consume one server datagram; returns its kind. Diff entries are passed to `on_entry` as applied.
    pub fn on_datagram(&mut self, d: &[u8], mut on_entry: impl FnMut(u32, u8)) -> Kind {
        let kind = classify(d);
        match kind {
            Kind::Diff => {
                if self.snap_pos.take().is_some() {
                    self.stats.errors += 1;
                }
                if diff_entries(d).any(|(i, _)| i as usize >= self.pixels.len()) {
                    self.stats.errors += 1;
                    return Kind::Invalid;
                }
                for (i, c) in diff_entries(d) {
                    self.pixels[i as usize] = c;
                    on_entry(i, c);
                }
                self.stats.diffs += 1;
            }
            Kind::Snapshot => {
                let pos = self.snap_pos.take().unwrap_or(0);
                match rle::decode_into(d, &mut self.scratch, pos) {
                    Ok(end) if end == self.pixels.len() => {
                        self.pixels.copy_from_slice(&self.scratch);
                        self.stats.snapshots += 1;
                    }
                    Ok(end) => self.snap_pos = Some(end),
                    Err(_) => self.stats.errors += 1,
                }
            }
            Kind::Invalid => self.stats.errors += 1,
        }
        kind
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_roundtrip_and_length_rule() {
        let p = Pixel { x: 999, y: 513, color: 200 };
        assert_eq!(decode_write(&encode_write(p)), Some(p));
        assert_eq!(encode_write(Pixel { x: 1, y: 2, color: 3 }), [1, 0, 2, 0, 3]);
        assert_eq!(decode_write(&[0; 4]), None);
        assert_eq!(decode_write(&[0; 6]), None);
    }

    #[test]
    fn diff_datagrams_respect_limit() {
        let entries: Vec<(u32, u8)> = (0..500).map(|i| (i * 1999 % 1_000_000, (i % 256) as u8)).collect();
        let mut d = Datagrams::new();
        encode_diff(&entries, MAX_DATAGRAM, &mut d);
        assert_eq!(d.len(), 3); // 240 + 240 + 20
        assert!(d.iter().all(|g| g.len() <= MAX_DATAGRAM && classify(g) == Kind::Diff));
        let back: Vec<_> = d.iter().flat_map(diff_entries).collect();
        assert_eq!(back, entries);
    }

    #[test]
    fn classification_is_exclusive() {
        // Exhaustive over short datagrams from the two encoders.
        for n in 1..=3u32 {
            let entries: Vec<_> = (0..n).map(|i| (i * 77, 0u8)).collect();
            let mut d = Datagrams::new();
            encode_diff(&entries, MAX_DATAGRAM, &mut d);
            assert_eq!(classify(d.get(0).unwrap()), Kind::Diff);
        }
        for len in 1..=12usize {
            let px: Vec<u8> = (0..len).map(|i| (i % 3) as u8).collect();
            let mut d = Datagrams::new();
            encode_snapshot(&px, MAX_DATAGRAM, &mut d);
            assert_eq!(classify(d.get(0).unwrap()), Kind::Snapshot, "len {len}");
        }
        assert_eq!(classify(&[]), Kind::Invalid);
        assert_eq!(classify(&[0, 1, 2]), Kind::Invalid);
    }

    #[test]
    fn replica_converges_from_snapshot_and_diffs() {
        let dims = Dims { width: 100, height: 100 };
        let mut server: Vec<u8> = (0..dims.len()).map(|i| (i / 7 % 5) as u8).collect();
        let mut snap = Datagrams::new();
        encode_snapshot(&server, 300, &mut snap);
        assert!(snap.len() > 1);
        let mut r = LegacyReplica::new(dims);
        for g in snap.iter() {
            assert_eq!(r.on_datagram(g, |_, _| {}), Kind::Snapshot);
        }
        assert!(r.synced());
        assert_eq!(r.pixels(), &server[..]);
        let entries = vec![(5u32, 9u8), (9999, 1)];
        for &(i, c) in &entries {
            server[i as usize] = c;
        }
        let mut diff = Datagrams::new();
        encode_diff(&entries, MAX_DATAGRAM, &mut diff);
        let mut seen = 0;
        r.on_datagram(diff.get(0).unwrap(), |_, _| seen += 1);
        assert_eq!(seen, 2);
        assert_eq!(r.pixels(), &server[..]);
        assert_eq!(r.stats(), LegacyStats { snapshots: 1, diffs: 1, errors: 0 });
    }
}
