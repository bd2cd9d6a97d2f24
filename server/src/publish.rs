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

/// The whole canvas at one tick, encoded for both protocols.
#[derive(Debug)]
pub struct Snapshot {
    /// Tick the content is at.
    pub tick: u64,
    /// Hash of the content.
    pub hash: u64,
    /// Framed canvas/1 SNAPSHOT message.
    pub frame: Vec<u8>,
    /// Legacy RLE datagrams.
    pub legacy: Datagrams,
}

impl Snapshot {
    /// Encode `pixels` at `tick`.
    pub fn encode(tick: u64, hash: u64, dims: Dims, pixels: &[u8], max_dgram: usize) -> Self {
        let mut frame = Vec::new();
        proto::encode_snapshot(tick, hash, dims, pixels, &mut frame);
        let mut rle = Datagrams::new();
        legacy::encode_snapshot(pixels, max_dgram, &mut rle);
        Self { tick, hash, frame, legacy: rle }
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
    /// Number of changed pixels.
    pub changes: usize,
    /// Legacy diff datagrams.
    pub legacy: Datagrams,
    /// canvas/1 DIFF_PART datagrams.
    pub parts: Datagrams,
    /// canvas/1 framed DIFF (the stream form, for SYNC replies).
    pub diff_frame: Vec<u8>,
    /// canvas/1 HEAD datagram: this tick and the newest changing tick (this one, or `base` when empty).
    pub head: Datagrams,
    /// For each worker: writes from it applied up to and including this tick (cumulative).
    pub applied: Vec<u64>,
    /// A snapshot taken at this tick (every full-broadcast tick, and when a worker asked).
    pub snapshot: Option<std::sync::Arc<Snapshot>>,
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
        let mut legacy_d = Datagrams::new();
        let mut parts = Datagrams::new();
        let mut diff_frame = Vec::new();
        if !entries.is_empty() {
            legacy::encode_diff(entries, max_dgram, &mut legacy_d);
            proto::encode_diff_parts(tick, base, hash, entries, max_dgram, &mut parts);
            proto::encode_diff(tick, base, hash, entries, &mut diff_frame);
        }
        let mut head = Datagrams::new();
        head.begin();
        head.extend(&proto::encode_head(tick, if entries.is_empty() { base } else { tick }, hash));
        Self {
            tick,
            base,
            hash,
            changes: entries.len(),
            legacy: legacy_d,
            parts,
            diff_frame,
            head,
            applied,
            snapshot,
        }
    }

    /// True when the tick changed nothing.
    pub fn is_empty(&self) -> bool {
        self.changes == 0
    }

    /// On a quiet tick, whether to remind canvas/1 clients of the newest changing tick: 1, 2, 4, ... 64
    /// ticks after the last change (a lost tail diff is found within a few ticks, and a quiet canvas costs
    /// seven 26-byte datagrams per client, not one per tick).
    pub fn sends_head(&self) -> bool {
        let quiet = self.tick - self.base;
        self.is_empty() && self.base > 0 && quiet.is_power_of_two() && quiet <= 64
    }
}
