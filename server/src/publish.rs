//! What the master publishes to workers once per tick: the tick's change set, encoded once for both
//! protocols and shared by every connection (`Arc`), plus the per-worker applied-write counts that turn into
//! ACKs. Only encryption remains per connection.

use canvas::proto;
use canvas::{legacy, Datagrams, Dims};

/// A pixel write on its way from a worker to the master (8 bytes).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PixelWrite {
    /// Validated linear index.
    pub index: u32,
    /// Color.
    pub color: u8,
}

/// The whole canvas at one tick, encoded once (the canvas/1 zstd frame); the plain canvas/1 frame and the
/// legacy datagrams are made from it on first need and shared.
#[derive(Debug)]
pub struct Snapshot {
    /// Tick the content is at.
    pub tick: u64,
    /// Hash of the content.
    pub hash: u64,
    /// Framed canvas/1 SNAPSHOT for clients that set `SYNC_ZSTD`: zstd when that is smaller (1.6–2.4× smaller
    /// than RLE/raw on a randomly painted 1 Mpixel canvas, `cargo bench -p canvas --bench canvas -- join`),
    /// else the plain encoding.
    zstd: Vec<u8>,
    /// Framed canvas/1 SNAPSHOT in the plain encoding (RLE or raw), built from `zstd` the first time a
    /// client without the flag needs it (clients of this project set it).
    plain: std::sync::OnceLock<Vec<u8>>,
    /// Legacy RLE datagrams, built from `zstd` the first time a legacy connection needs them (most
    /// deployments have none).
    legacy: std::sync::OnceLock<Datagrams>,
    /// `zstd` is zstd-encoded (else it is already the plain encoding).
    compressed: bool,
    max_dgram: usize,
}

impl Snapshot {
    /// Encode `pixels` at `tick`.
    pub fn encode(tick: u64, hash: u64, dims: Dims, pixels: &[u8], max_dgram: usize) -> Self {
        let mut zstd = Vec::new();
        let compressed =
            proto::encode_snapshot_zstd(tick, hash, dims, pixels, &mut zstd) == proto::SnapshotEncoding::Zstd;
        Self {
            tick,
            hash,
            zstd,
            plain: std::sync::OnceLock::new(),
            legacy: std::sync::OnceLock::new(),
            compressed,
            max_dgram,
        }
    }

    /// The framed SNAPSHOT for a client that decodes zstd snapshots (`zstd`) or not.
    pub fn frame(&self, zstd: bool) -> &[u8] {
        if zstd || !self.compressed {
            return &self.zstd;
        }
        self.plain.get_or_init(|| {
            let (dims, pixels) = self.pixels();
            let mut out = Vec::new();
            proto::encode_snapshot(self.tick, self.hash, dims, &pixels, &mut out);
            out
        })
    }

    /// The canvas as legacy RLE snapshot datagrams.
    pub fn legacy(&self) -> &Datagrams {
        self.legacy.get_or_init(|| {
            let mut d = Datagrams::new();
            legacy::encode_snapshot(&self.pixels().1, self.max_dgram, &mut d);
            d
        })
    }

    /// The pixels back from the encoded frame (the snapshot keeps no copy of them).
    fn pixels(&self) -> (Dims, Vec<u8>) {
        let Ok(proto::ServerMsg::Snapshot { dims, encoding, data, .. }) =
            proto::decode_server(&self.zstd[4..])
        else {
            unreachable!("encoded by `Snapshot::encode`");
        };
        let mut pixels = vec![0; dims.len()];
        proto::decode_snapshot_body(encoding, data, &mut pixels).expect("encoded by `Snapshot::encode`");
        (dims, pixels)
    }
}

/// One tick, as every worker sees it.
#[derive(Debug)]
pub struct Publication {
    /// Tick number (1, 2, ...; tick 0 is the initial canvas).
    pub tick: u64,
    /// Previous tick whose diff was non-empty (0 if none).
    pub base: u64,
    /// Canvas hash after the tick.
    pub hash: u64,
    /// canvas/1 DIFF_PART datagrams.
    pub parts: Datagrams,
    /// The change set itself, in the master's order (a tick's publication: the history coalesces catch-up
    /// deltas from it). Empty in a coalesced catch-up delta, which keeps only its encoded parts (at 5 bytes
    /// an entry instead of 5 + 8): see [`Publication::change_set`].
    entries: Vec<(u32, u8)>,
    /// Entries in the change set (kept or not).
    count: usize,
    /// canvas/1 HEAD datagram: this tick and the newest changing tick (this one, or `base` when empty).
    pub head: Datagrams,
    /// For each worker: writes from it applied up to and including this tick (cumulative).
    pub applied: Vec<u64>,
    /// A snapshot taken at this tick (every full-broadcast tick, and when a worker asked).
    pub snapshot: Option<std::sync::Arc<Snapshot>>,
    /// The tick the master published before this one: a worker that has another tick lost publications.
    /// `tick - 1` unless the master says otherwise (in cluster mode tick numbers jump, see
    /// `master::CLUSTER_TICK_SHIFT`).
    pub prev: u64,
    /// A full-broadcast tick (every `MasterConfig::full_interval`-th): legacy clients get `snapshot`
    /// instead of the diffs before it.
    pub full: bool,
    /// The change set as one framed canvas/1 DIFF, encoded the first time a SYNC reply needs it.
    diff: std::sync::OnceLock<Vec<u8>>,
    /// Legacy diff datagrams, encoded the first time a legacy connection pulls this publication (most
    /// deployments have none, and a coalesced catch-up delta encoded for both protocols held a third more).
    legacy: std::sync::OnceLock<Datagrams>,
    /// Only on the first publication of a server restored from its log: the changing ticks replayed after
    /// the log's snapshot, oldest first, so that workers can answer a client that returns with a tick from
    /// before the restart with a delta instead of a snapshot.
    pub history: Vec<std::sync::Arc<Publication>>,
    max_dgram: usize,
}

impl Publication {
    /// Encode a tick's change set for both protocols.
    #[allow(clippy::too_many_arguments)]
    pub fn encode(
        tick: u64,
        base: u64,
        hash: u64,
        entries: &[(u32, u8)],
        max_dgram: usize,
        applied: Vec<u64>,
        snapshot: Option<std::sync::Arc<Snapshot>>,
    ) -> Self {
        let mut parts = Datagrams::new();
        if !entries.is_empty() {
            proto::encode_diff_parts(tick, base, hash, entries, max_dgram, &mut parts);
        }
        let mut head = Datagrams::new();
        head.begin();
        head.extend(&proto::encode_head(tick, if entries.is_empty() { base } else { tick }, hash));
        Self {
            tick,
            base,
            hash,
            parts,
            entries: entries.to_vec(),
            count: entries.len(),
            head,
            applied,
            snapshot,
            prev: tick.saturating_sub(1),
            full: false,
            diff: std::sync::OnceLock::new(),
            legacy: std::sync::OnceLock::new(),
            max_dgram,
            history: Vec::new(),
        }
    }

    /// A coalesced catch-up delta (`entries` from [`coalesce`]): like [`Publication::encode`] with nothing
    /// applied and no snapshot, but it keeps only the encoded parts. A delta is built for connections that
    /// fell behind, lives while any of them is still sending it, and under overload many are alive at once:
    /// the entries' copy was most of their memory (a heap profile of 2,000 clients at twice the knee put
    /// catch-up deltas at 144 of 309 MB, 71 MB of it that copy).
    pub fn coalesced(tick: u64, base: u64, hash: u64, entries: &[(u32, u8)], max_dgram: usize) -> Self {
        let mut p = Self::encode(tick, base, hash, entries, max_dgram, Vec::new(), None);
        p.entries = Vec::new();
        p
    }

    /// The change set: borrowed when kept (a tick's publication), else decoded from the parts (a coalesced
    /// delta, on the rare paths that need it: a legacy pull or a SYNC reply's DIFF, each encoded once).
    pub fn change_set(&self) -> std::borrow::Cow<'_, [(u32, u8)]> {
        if self.entries.len() == self.count {
            return std::borrow::Cow::Borrowed(&self.entries);
        }
        let mut all = Vec::with_capacity(self.count);
        for d in self.parts.iter() {
            let part = proto::decode_diff_part(d).expect("a publication decodes its own parts");
            all.extend(part.diff.entries());
        }
        debug_assert_eq!(all.len(), self.count);
        std::borrow::Cow::Owned(all)
    }

    /// The change set as legacy diff datagrams, encoded once (on the first legacy pull) and shared.
    pub fn legacy(&self) -> &Datagrams {
        self.legacy.get_or_init(|| {
            let mut d = Datagrams::new();
            if !self.is_empty() {
                legacy::encode_diff(&self.change_set(), self.max_dgram, &mut d);
            }
            d
        })
    }

    /// The change set as a framed DIFF (tick, base, hash, entries), encoded once and shared by every SYNC
    /// reply that sends it.
    pub fn diff_frame(&self) -> &[u8] {
        self.diff.get_or_init(|| {
            let mut f = Vec::with_capacity(30 + 5 * self.count);
            proto::encode_diff(self.tick, self.base, self.hash, &self.change_set(), &mut f);
            f
        })
    }

    /// Entries (changed pixels) in the change set.
    pub fn len(&self) -> usize {
        self.count
    }

    /// True when the tick changed nothing.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// On a quiet tick, whether to remind canvas/1 clients of the newest changing tick: 1, 2, 4, ... 64
    /// ticks after the last change (a lost tail diff is found within a few ticks, and a quiet canvas costs
    /// seven 26-byte datagrams per client, not one per tick).
    pub fn sends_head(&self) -> bool {
        let quiet = self.tick - self.base;
        self.is_empty() && self.base > 0 && quiet.is_power_of_two() && quiet <= 64
    }
}

/// The net change of several consecutive ticks' change sets (oldest first): each pixel once, with the color
/// the last of them gave it, in index order. Applied to the canvas as it was before the first of them (or at
/// any tick up to the last, since every pixel the ticks changed is included), it gives the canvas after the
/// last. O(entries · log entries); what it costs never depends on how many ticks it spans.
pub fn coalesce<'a>(change_sets: impl IntoIterator<Item = &'a [(u32, u8)]>) -> Vec<(u32, u8)> {
    let mut all: Vec<(u32, u8)> = change_sets.into_iter().flatten().copied().collect();
    // Stable: among equal indexes the latest stays last, and the dedup keeps the last of each run.
    all.sort_by_key(|&(i, _)| i);
    let mut out: Vec<(u32, u8)> = Vec::with_capacity(all.len());
    for e in all {
        match out.last_mut() {
            Some(last) if last.0 == e.0 => *last = e,
            _ => out.push(e),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::{coalesce, Publication, Snapshot};
    use canvas::{proto, Dims};

    /// Both forms of a snapshot say the same canvas: the zstd one for clients that asked, the plain one
    /// (what `encode_snapshot` gives) for the others; an incompressible canvas is plain in both.
    #[test]
    fn a_snapshot_serves_both_encodings_of_one_canvas() {
        let dims = Dims { width: 100, height: 50 };
        let px: Vec<u8> = (0..dims.len()).map(|i| if i % 4 == 0 { (i % 29) as u8 } else { 0 }).collect();
        let s = Snapshot::encode(7, 99, dims, &px, 1200);
        let mut plain = Vec::new();
        proto::encode_snapshot(7, 99, dims, &px, &mut plain);
        assert_eq!(s.frame(false), &plain[..]);
        assert!(s.frame(true).len() < plain.len());
        for z in [true, false] {
            let Ok(proto::ServerMsg::Snapshot { tick: 7, hash: 99, encoding, data, .. }) =
                proto::decode_server(&s.frame(z)[4..])
            else {
                panic!("a snapshot");
            };
            assert_eq!(encoding == proto::SnapshotEncoding::Zstd, z);
            let mut out = vec![0; dims.len()];
            proto::decode_snapshot_body(encoding, data, &mut out).unwrap();
            assert_eq!(out, px);
        }
        let tiny = Snapshot::encode(1, 2, Dims { width: 3, height: 1 }, &[1, 2, 3], 1200);
        assert_eq!(tiny.frame(true), tiny.frame(false));
        // The legacy datagrams, made on first need, are the legacy encoding of the same pixels.
        let mut legacy = canvas::Datagrams::new();
        canvas::legacy::encode_snapshot(&px, 1200, &mut legacy);
        assert!(s.legacy().iter().eq(legacy.iter()));
    }

    #[test]
    fn later_writes_supersede_earlier_ones() {
        let t1: &[(u32, u8)] = &[(5, 1), (2, 7), (5, 3)];
        let t2: &[(u32, u8)] = &[(9, 4), (2, 8)];
        let t3: &[(u32, u8)] = &[(5, 0)];
        assert_eq!(coalesce([t1, t2, t3]), vec![(2, 8), (5, 0), (9, 4)]);
        assert!(coalesce(std::iter::empty()).is_empty());
        assert_eq!(coalesce([t2]), vec![(2, 8), (9, 4)]);
    }

    #[test]
    fn coalesced_delta_replays_the_ticks() {
        // Replaying the ticks one by one and applying the coalesced delta give the same canvas.
        let mut rng = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move || {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng
        };
        let ticks: Vec<Vec<(u32, u8)>> =
            (0..50).map(|_| (0..40).map(|_| ((next() % 64) as u32, (next() % 4) as u8)).collect()).collect();
        let mut replay = [0u8; 64];
        for t in &ticks {
            for &(i, c) in t {
                replay[i as usize] = c;
            }
        }
        let mut delta = [0u8; 64];
        for (i, c) in coalesce(ticks.iter().map(Vec::as_slice)) {
            delta[i as usize] = c;
        }
        assert_eq!(replay, delta);
    }

    #[test]
    fn a_coalesced_delta_keeps_only_its_parts_and_says_the_same() {
        // 1,000 entries over several parts: the kept form and the parts-only form give the same change set,
        // DIFF frame, legacy datagrams and DIFF_PART datagrams, and the parts hold no growth slack.
        let entries: Vec<(u32, u8)> = (0..1000u32).map(|i| (i * 7, (i % 32) as u8)).collect();
        let kept = Publication::encode(9, 4, 0xfeed, &entries, 1200, Vec::new(), None);
        let lean = Publication::coalesced(9, 4, 0xfeed, &entries, 1200);
        assert!(lean.entries.is_empty(), "the coalesced form drops its copy of the entries");
        assert_eq!((lean.len(), lean.is_empty()), (1000, false));
        assert_eq!(&lean.change_set()[..], &entries[..]);
        assert_eq!(lean.parts, kept.parts);
        assert_eq!(lean.diff_frame(), kept.diff_frame());
        assert_eq!(lean.legacy(), kept.legacy());
        assert!(lean.parts.len() > 1);
        let empty = Publication::coalesced(9, 4, 0xfeed, &[], 1200);
        assert!(empty.is_empty() && empty.change_set().is_empty() && empty.parts.is_empty());
    }
}
