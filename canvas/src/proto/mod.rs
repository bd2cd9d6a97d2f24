//! `canvas/1`: the typed, versioned protocol (byte-level spec in docs/PROTOCOL.md).
//!
//! Reliable messages travel on one client-initiated bidirectional stream (the control stream, id 0), each
//! framed as `[u32 LE len][u8 version][u8 type][body]` where `len` counts version, type and body. Broadcast
//! diffs travel as DATAGRAM frames `[u8 version][u8 type = DIFF_PART][header][5-byte entries]`.

use crate::datagrams::Datagrams;
use crate::grid::{Dims, Pixel, RejectReason};
use crate::rle;

/// ALPN of this protocol.
pub const ALPN: &[u8] = b"canvas/1";
/// Protocol version carried in every message.
pub const VERSION: u8 = 1;
/// "I have no usable state": a SYNC with this tick asks for a snapshot.
pub const NO_TICK: u64 = u64::MAX;
/// Largest server control frame a client accepts (a raw 16 Mpixel snapshot fits).
pub const MAX_FRAME: usize = (1 << 24) + 64;
/// Largest client control frame the server accepts (WRITE is 11 bytes, SYNC 10).
pub const MAX_CLIENT_FRAME: usize = 64;
/// Size of one diff entry `[u32 LE index][u8 color]`.
pub const ENTRY_LEN: usize = 5;
/// Bytes before the entries in a DIFF_PART datagram.
pub const DIFF_PART_HEADER: usize = 2 + 8 + 8 + 8 + 2 + 2;
/// Bytes of the frame length prefix.
pub const LEN_PREFIX: usize = 4;

/// Message types.
pub mod ty {
    /// C→S: write a pixel.
    pub const WRITE: u8 = 0x01;
    /// C→S: "my replica is at tick T; send what I am missing".
    pub const SYNC: u8 = 0x02;
    /// S→C: session parameters, first message on the control stream.
    pub const WELCOME: u8 = 0x81;
    /// S→C: a write was applied and is visible in tick T.
    pub const ACK: u8 = 0x82;
    /// S→C: a write was refused, with the reason.
    pub const REJECT: u8 = 0x83;
    /// S→C: the whole canvas at tick T.
    pub const SNAPSHOT: u8 = 0x84;
    /// S→C: one tick's complete diff (stream copy of a broadcast).
    pub const DIFF: u8 = 0x85;
    /// S→C: end of the reply to a SYNC.
    pub const SYNCED: u8 = 0x86;
    /// S→C datagram: one part of a tick's diff.
    pub const DIFF_PART: u8 = 0x90;
    /// S→C datagram: the current tick and the newest tick that changed the canvas, sent on quiet ticks so
    /// that a client whose last diff was lost entirely notices, and a client that is current advances.
    pub const HEAD: u8 = 0x91;
}

/// Size of a HEAD datagram.
pub const HEAD_LEN: usize = 2 + 8 + 8 + 8;

/// A server datagram.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ServerDatagram<'a> {
    /// Part of a tick's diff.
    DiffPart(DiffPart<'a>),
    /// The server's current tick, the newest tick that changed the canvas (nothing changed after it up to
    /// `tick`), and the canvas hash.
    Head {
        /// Current tick.
        tick: u64,
        /// Newest changing tick (`<= tick`).
        last_change: u64,
        /// Canvas hash.
        hash: u64,
    },
}

/// Encode a HEAD datagram.
pub fn encode_head(tick: u64, last_change: u64, hash: u64) -> [u8; HEAD_LEN] {
    let mut b = [0u8; HEAD_LEN];
    b[0] = VERSION;
    b[1] = ty::HEAD;
    b[2..10].copy_from_slice(&tick.to_le_bytes());
    b[10..18].copy_from_slice(&last_change.to_le_bytes());
    b[18..26].copy_from_slice(&hash.to_le_bytes());
    b
}

/// Decode any server datagram.
pub fn decode_datagram(d: &[u8]) -> Result<ServerDatagram<'_>, ProtoError> {
    let (t, mut c) = header(d)?;
    match t {
        ty::DIFF_PART => decode_diff_part(d).map(ServerDatagram::DiffPart),
        ty::HEAD => {
            let (tick, last_change, hash) = (c.u64()?, c.u64()?, c.u64()?);
            c.end()?;
            if last_change > tick {
                return Err(ProtoError::BadLength);
            }
            Ok(ServerDatagram::Head { tick, last_change, hash })
        }
        other => Err(ProtoError::UnknownType(other)),
    }
}

/// Snapshot body encodings.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SnapshotEncoding {
    /// One byte per pixel.
    Raw = 0,
    /// `(count u8, color u8)` runs.
    Rle = 1,
    /// The raw pixels compressed as zstd frames; sent only to a client whose SYNC set [`SYNC_ZSTD`].
    Zstd = 2,
}

/// SYNC flag: the client decodes [`SnapshotEncoding::Zstd`] snapshots.
pub const SYNC_ZSTD: u8 = 1;

/// zstd level of [`encode_snapshot_zstd`]: on random r/place-like canvases (1 Mpixel, 32 colours, 50 k to
/// 1 M random writes; a one-off comparison, not in the benches) level 1 came within 0.3 % of level 3's size
/// or below it (8 % smaller from 500 k writes on), in 2.3–5 ms instead of 3–8.7 ms.
pub const SNAPSHOT_ZSTD_LEVEL: i32 = 1;

/// Decoding error.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProtoError {
    /// Fewer bytes than the message needs.
    Truncated,
    /// Unknown protocol version.
    BadVersion(u8),
    /// Unknown message type.
    UnknownType(u8),
    /// Body length wrong for the type.
    BadLength,
    /// A frame longer than [`MAX_FRAME`].
    FrameTooLarge(usize),
    /// REJECT with an unknown reason.
    BadReason(u8),
    /// Snapshot body that does not decode to the canvas size.
    BadSnapshot,
    /// A diff entry outside the canvas.
    IndexOutOfRange(u32),
    /// DIFF_PART with part >= parts or parts == 0.
    BadPart,
}

impl std::fmt::Display for ProtoError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{self:?}")
    }
}

impl std::error::Error for ProtoError {}

/// Client → server messages.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClientMsg {
    /// Write `pixel`; `id` is echoed in the ACK or REJECT.
    Write {
        /// Client-chosen id.
        id: u32,
        /// The write.
        pixel: Pixel,
    },
    /// Ask for what changed since `have_tick` ([`NO_TICK`]: send a snapshot).
    Sync {
        /// The tick the client's replica is at.
        have_tick: u64,
        /// What the client accepts beyond the base protocol ([`SYNC_ZSTD`]); 0 is sent in the 10-byte
        /// form that servers before the flags understand. Unknown bits are kept and ignored.
        flags: u8,
    },
}

/// Session parameters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Welcome {
    /// Canvas dimensions.
    pub dims: Dims,
    /// Palette size.
    pub palette: u16,
    /// Broadcast interval.
    pub tick_ms: u32,
    /// Cooldown period (0 = none).
    pub cooldown_ms: u32,
    /// The server's current tick.
    pub tick: u64,
}

/// A tick's diff: after applying `entries` to the canvas at any tick in `base..tick`, it is at `tick`
/// and hashes to `hash`. `base` is the previous tick that changed anything.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DiffView<'a> {
    /// The tick this diff produces.
    pub tick: u64,
    /// The previous tick with a non-empty diff.
    pub base: u64,
    /// Canvas hash after the tick.
    pub hash: u64,
    /// Raw 5-byte entries.
    pub entries: &'a [u8],
}

impl<'a> DiffView<'a> {
    /// Iterate `(index, color)`.
    pub fn entries(&self) -> impl Iterator<Item = (u32, u8)> + 'a {
        self.entries.chunks_exact(ENTRY_LEN).map(|e| (u32::from_le_bytes([e[0], e[1], e[2], e[3]]), e[4]))
    }
}

/// One DIFF_PART datagram.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DiffPart<'a> {
    /// The tick's header and this part's entries.
    pub diff: DiffView<'a>,
    /// Index of this part.
    pub part: u16,
    /// Number of parts of the tick.
    pub parts: u16,
}

/// Server → client control-stream messages.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ServerMsg<'a> {
    /// Session parameters.
    Welcome(Welcome),
    /// Write `id` applied; visible from `tick` on.
    Ack {
        /// The write's id.
        id: u32,
        /// The tick whose diff contains it.
        tick: u64,
    },
    /// Write `id` refused.
    Reject {
        /// The write's id.
        id: u32,
        /// Why.
        reason: RejectReason,
        /// For Cooldown and Busy: when to try again.
        retry_after_ms: u32,
    },
    /// The whole canvas.
    Snapshot {
        /// Tick the content is at.
        tick: u64,
        /// Hash of the content.
        hash: u64,
        /// Dimensions.
        dims: Dims,
        /// Body encoding.
        encoding: SnapshotEncoding,
        /// Body.
        data: &'a [u8],
    },
    /// One tick's whole diff.
    Diff(DiffView<'a>),
    /// End of a SYNC reply; the replica is at least at `tick` once everything before was applied.
    Synced {
        /// The server's tick when the reply was made.
        tick: u64,
    },
}

fn begin(out: &mut Vec<u8>, ty: u8) -> usize {
    let at = out.len();
    out.extend_from_slice(&[0, 0, 0, 0, VERSION, ty]);
    at
}

fn finish(out: &mut [u8], at: usize) {
    let len = (out.len() - at - LEN_PREFIX) as u32;
    out[at..at + LEN_PREFIX].copy_from_slice(&len.to_le_bytes());
}

/// Append a framed client message.
pub fn encode_client(m: &ClientMsg, out: &mut Vec<u8>) {
    match *m {
        ClientMsg::Write { id, pixel } => {
            let at = begin(out, ty::WRITE);
            out.extend_from_slice(&id.to_le_bytes());
            out.extend_from_slice(&pixel.x.to_le_bytes());
            out.extend_from_slice(&pixel.y.to_le_bytes());
            out.push(pixel.color);
            finish(out, at);
        }
        ClientMsg::Sync { have_tick, flags } => {
            let at = begin(out, ty::SYNC);
            out.extend_from_slice(&have_tick.to_le_bytes());
            if flags != 0 {
                out.push(flags);
            }
            finish(out, at);
        }
    }
}

/// Append a framed WELCOME.
pub fn encode_welcome(w: &Welcome, out: &mut Vec<u8>) {
    let at = begin(out, ty::WELCOME);
    out.extend_from_slice(&w.dims.width.to_le_bytes());
    out.extend_from_slice(&w.dims.height.to_le_bytes());
    out.extend_from_slice(&w.palette.to_le_bytes());
    out.extend_from_slice(&w.tick_ms.to_le_bytes());
    out.extend_from_slice(&w.cooldown_ms.to_le_bytes());
    out.extend_from_slice(&w.tick.to_le_bytes());
    finish(out, at);
}

/// Append a framed ACK.
pub fn encode_ack(id: u32, tick: u64, out: &mut Vec<u8>) {
    let at = begin(out, ty::ACK);
    out.extend_from_slice(&id.to_le_bytes());
    out.extend_from_slice(&tick.to_le_bytes());
    finish(out, at);
}

/// Append a framed REJECT.
pub fn encode_reject(id: u32, reason: RejectReason, retry_after_ms: u32, out: &mut Vec<u8>) {
    let at = begin(out, ty::REJECT);
    out.extend_from_slice(&id.to_le_bytes());
    out.push(reason as u8);
    out.extend_from_slice(&retry_after_ms.to_le_bytes());
    finish(out, at);
}

/// Append a framed SYNCED.
pub fn encode_synced(tick: u64, out: &mut Vec<u8>) {
    let at = begin(out, ty::SYNCED);
    out.extend_from_slice(&tick.to_le_bytes());
    finish(out, at);
}

fn snapshot_header(tick: u64, hash: u64, dims: Dims, out: &mut Vec<u8>) -> usize {
    let at = begin(out, ty::SNAPSHOT);
    out.extend_from_slice(&tick.to_le_bytes());
    out.extend_from_slice(&hash.to_le_bytes());
    out.extend_from_slice(&dims.width.to_le_bytes());
    out.extend_from_slice(&dims.height.to_le_bytes());
    at
}

/// Append a framed SNAPSHOT of `pixels`, RLE when that is smaller, raw otherwise: for every client.
/// Returns the encoding used.
pub fn encode_snapshot(
    tick: u64,
    hash: u64,
    dims: Dims,
    pixels: &[u8],
    out: &mut Vec<u8>,
) -> SnapshotEncoding {
    encode_plain_snapshot(tick, hash, dims, pixels, rle::encoded_len(pixels), out)
}

fn encode_plain_snapshot(
    tick: u64,
    hash: u64,
    dims: Dims,
    pixels: &[u8],
    rle_len: usize,
    out: &mut Vec<u8>,
) -> SnapshotEncoding {
    let at = snapshot_header(tick, hash, dims, out);
    let encoding = if rle_len < pixels.len() {
        out.push(SnapshotEncoding::Rle as u8);
        rle::encode(pixels, out);
        SnapshotEncoding::Rle
    } else {
        out.push(SnapshotEncoding::Raw as u8);
        out.extend_from_slice(pixels);
        SnapshotEncoding::Raw
    };
    finish(out, at);
    encoding
}

/// Append a framed SNAPSHOT of `pixels` for a client that set [`SYNC_ZSTD`]: zstd
/// ([`SNAPSHOT_ZSTD_LEVEL`]) when that is smaller than [`encode_snapshot`]'s encoding, else that one.
/// Returns the encoding used.
pub fn encode_snapshot_zstd(
    tick: u64,
    hash: u64,
    dims: Dims,
    pixels: &[u8],
    out: &mut Vec<u8>,
) -> SnapshotEncoding {
    let rle_len = rle::encoded_len(pixels);
    match zstd::bulk::compress(pixels, SNAPSHOT_ZSTD_LEVEL) {
        Ok(z) if z.len() < rle_len.min(pixels.len()) => {
            let at = snapshot_header(tick, hash, dims, out);
            out.push(SnapshotEncoding::Zstd as u8);
            out.extend_from_slice(&z);
            finish(out, at);
            SnapshotEncoding::Zstd
        }
        // Incompressible (or the compressor failed, which only a failed allocation does): plain.
        _ => encode_plain_snapshot(tick, hash, dims, pixels, rle_len, out),
    }
}

fn put_diff_header(out: &mut Vec<u8>, tick: u64, base: u64, hash: u64) {
    out.extend_from_slice(&tick.to_le_bytes());
    out.extend_from_slice(&base.to_le_bytes());
    out.extend_from_slice(&hash.to_le_bytes());
}

fn put_entries(out: &mut Vec<u8>, entries: &[(u32, u8)]) {
    for &(i, c) in entries {
        out.extend_from_slice(&i.to_le_bytes());
        out.push(c);
    }
}

/// Append a framed DIFF (the stream form of a whole tick).
pub fn encode_diff(tick: u64, base: u64, hash: u64, entries: &[(u32, u8)], out: &mut Vec<u8>) {
    let at = begin(out, ty::DIFF);
    put_diff_header(out, tick, base, hash);
    put_entries(out, entries);
    finish(out, at);
}

/// Entries that fit one DIFF_PART datagram of `max` bytes.
pub fn entries_per_part(max: usize) -> usize {
    (max.saturating_sub(DIFF_PART_HEADER) / ENTRY_LEN).max(1)
}

/// Append a tick's diff as DIFF_PART datagrams of at most `max` bytes (nothing for an empty diff).
pub fn encode_diff_parts(
    tick: u64,
    base: u64,
    hash: u64,
    entries: &[(u32, u8)],
    max: usize,
    out: &mut Datagrams,
) {
    let per = entries_per_part(max);
    let parts = entries.len().div_ceil(per);
    assert!(parts <= usize::from(u16::MAX), "diff of {} entries needs more than 65535 parts", entries.len());
    out.reserve_exact(parts, parts * DIFF_PART_HEADER + entries.len() * ENTRY_LEN);
    let mut scratch = Vec::with_capacity(max);
    for (part, chunk) in entries.chunks(per).enumerate() {
        scratch.clear();
        scratch.extend_from_slice(&[VERSION, ty::DIFF_PART]);
        put_diff_header(&mut scratch, tick, base, hash);
        scratch.extend_from_slice(&(part as u16).to_le_bytes());
        scratch.extend_from_slice(&(parts as u16).to_le_bytes());
        put_entries(&mut scratch, chunk);
        out.begin();
        out.extend(&scratch);
    }
}

struct Cursor<'a>(&'a [u8]);

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], ProtoError> {
        if self.0.len() < n {
            return Err(ProtoError::Truncated);
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Ok(a)
    }
    fn u8(&mut self) -> Result<u8, ProtoError> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16, ProtoError> {
        Ok(u16::from_le_bytes(self.take(2)?.try_into().expect("2 bytes")))
    }
    fn u32(&mut self) -> Result<u32, ProtoError> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().expect("4 bytes")))
    }
    fn u64(&mut self) -> Result<u64, ProtoError> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().expect("8 bytes")))
    }
    fn end(&self) -> Result<(), ProtoError> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(ProtoError::BadLength)
        }
    }
}

fn header(frame: &[u8]) -> Result<(u8, Cursor<'_>), ProtoError> {
    let mut c = Cursor(frame);
    let v = c.u8()?;
    if v != VERSION {
        return Err(ProtoError::BadVersion(v));
    }
    Ok((c.u8()?, c))
}

fn diff_view<'a>(c: &mut Cursor<'a>) -> Result<(u64, u64, u64), ProtoError> {
    let _ = c;
    Ok((c.u64()?, c.u64()?, c.u64()?))
}

fn entries_of(body: &[u8]) -> Result<&[u8], ProtoError> {
    if !body.len().is_multiple_of(ENTRY_LEN) {
        return Err(ProtoError::BadLength);
    }
    Ok(body)
}

/// Decode an unframed client message (`[version][type][body]`).
pub fn decode_client(frame: &[u8]) -> Result<ClientMsg, ProtoError> {
    let (t, mut c) = header(frame)?;
    let m = match t {
        ty::WRITE => {
            ClientMsg::Write { id: c.u32()?, pixel: Pixel { x: c.u16()?, y: c.u16()?, color: c.u8()? } }
        }
        ty::SYNC => {
            let have_tick = c.u64()?;
            // The flags byte is optional; present, it is not 0 (one encoding per message).
            let flags = match c.0 {
                [] => 0,
                [f] if *f != 0 => c.u8()?,
                _ => return Err(ProtoError::BadLength),
            };
            ClientMsg::Sync { have_tick, flags }
        }
        other => return Err(ProtoError::UnknownType(other)),
    };
    c.end()?;
    Ok(m)
}

/// Decode an unframed server control message.
pub fn decode_server(frame: &[u8]) -> Result<ServerMsg<'_>, ProtoError> {
    let (t, mut c) = header(frame)?;
    let m = match t {
        ty::WELCOME => ServerMsg::Welcome(Welcome {
            dims: Dims { width: c.u16()?, height: c.u16()? },
            palette: c.u16()?,
            tick_ms: c.u32()?,
            cooldown_ms: c.u32()?,
            tick: c.u64()?,
        }),
        ty::ACK => ServerMsg::Ack { id: c.u32()?, tick: c.u64()? },
        ty::REJECT => {
            let id = c.u32()?;
            let r = c.u8()?;
            let reason = RejectReason::from_u8(r).ok_or(ProtoError::BadReason(r))?;
            ServerMsg::Reject { id, reason, retry_after_ms: c.u32()? }
        }
        ty::SNAPSHOT => {
            let (tick, hash) = (c.u64()?, c.u64()?);
            let dims = Dims { width: c.u16()?, height: c.u16()? };
            let encoding = match c.u8()? {
                0 => SnapshotEncoding::Raw,
                1 => SnapshotEncoding::Rle,
                2 => SnapshotEncoding::Zstd,
                _ => return Err(ProtoError::BadSnapshot),
            };
            let data = c.0;
            c.0 = &[];
            ServerMsg::Snapshot { tick, hash, dims, encoding, data }
        }
        ty::DIFF => {
            let (tick, base, hash) = diff_view(&mut c)?;
            let entries = entries_of(c.0)?;
            c.0 = &[];
            ServerMsg::Diff(DiffView { tick, base, hash, entries })
        }
        ty::SYNCED => ServerMsg::Synced { tick: c.u64()? },
        other => return Err(ProtoError::UnknownType(other)),
    };
    c.end()?;
    Ok(m)
}

/// Decode a DIFF_PART datagram.
pub fn decode_diff_part(d: &[u8]) -> Result<DiffPart<'_>, ProtoError> {
    let (t, mut c) = header(d)?;
    if t != ty::DIFF_PART {
        return Err(ProtoError::UnknownType(t));
    }
    let (tick, base, hash) = diff_view(&mut c)?;
    let (part, parts) = (c.u16()?, c.u16()?);
    if parts == 0 || part >= parts {
        return Err(ProtoError::BadPart);
    }
    let entries = entries_of(c.0)?;
    Ok(DiffPart { diff: DiffView { tick, base, hash, entries }, part, parts })
}

/// Decode a snapshot body into `out` (which must be `dims.len()` bytes).
pub fn decode_snapshot_body(
    encoding: SnapshotEncoding,
    data: &[u8],
    out: &mut [u8],
) -> Result<(), ProtoError> {
    match encoding {
        SnapshotEncoding::Raw if data.len() == out.len() => {
            out.copy_from_slice(data);
            Ok(())
        }
        SnapshotEncoding::Raw => Err(ProtoError::BadSnapshot),
        SnapshotEncoding::Rle => match rle::decode_into(data, out, 0) {
            Ok(n) if n == out.len() => Ok(()),
            _ => Err(ProtoError::BadSnapshot),
        },
        // Bounded by `out`: a body that would decompress to more is an error, not an allocation.
        SnapshotEncoding::Zstd => match zstd::bulk::decompress_to_buffer(data, out) {
            Ok(n) if n == out.len() => Ok(()),
            _ => Err(ProtoError::BadSnapshot),
        },
    }
}

/// Reassembles length-prefixed frames from stream bytes.
#[derive(Debug)]
pub struct FrameReader {
    buf: Vec<u8>,
    start: usize,
    max: usize,
}

impl Default for FrameReader {
    fn default() -> Self {
        Self::new()
    }
}

impl FrameReader {
    /// An empty reader accepting frames up to [`MAX_FRAME`].
    pub fn new() -> Self {
        Self::with_max(MAX_FRAME)
    }

    /// An empty reader accepting frames up to `max` bytes.
    pub fn with_max(max: usize) -> Self {
        Self { buf: Vec::new(), start: 0, max }
    }

    /// Bytes buffered and not yet returned as frames.
    pub fn buffered(&self) -> usize {
        self.buf.len() - self.start
    }

    /// A buffer to receive stream bytes into: call [`FrameReader::commit`] with the count written.
    pub fn spare(&mut self, min: usize) -> &mut [u8] {
        if self.start > 0 && (self.start == self.buf.len() || self.start > self.buf.len() / 2) {
            self.buf.drain(..self.start);
            self.start = 0;
        }
        let len = self.buf.len();
        self.buf.resize(len + min, 0);
        &mut self.buf[len..]
    }

    /// Keep `n` of the bytes last handed out by [`FrameReader::spare`] (drop the rest).
    pub fn commit(&mut self, n: usize, asked: usize) {
        let keep = self.buf.len() - asked + n;
        self.buf.truncate(keep);
    }

    /// Give the buffer back when every byte has been returned as a frame: a reader that is idle between
    /// bursts (one per connection, thousands of them) then holds no allocation.
    pub fn release_if_drained(&mut self) {
        if self.buffered() == 0 && self.buf.capacity() > 0 {
            self.buf = Vec::new();
            self.start = 0;
        }
    }

    /// Append stream bytes.
    pub fn push(&mut self, bytes: &[u8]) {
        let s = self.spare(bytes.len());
        s.copy_from_slice(bytes);
    }

    /// The next complete frame (without its length prefix), if any.
    pub fn pop(&mut self) -> Result<Option<&[u8]>, ProtoError> {
        let avail = &self.buf[self.start..];
        if avail.len() < LEN_PREFIX {
            return Ok(None);
        }
        let len = u32::from_le_bytes(avail[..LEN_PREFIX].try_into().expect("4 bytes")) as usize;
        if len > self.max {
            return Err(ProtoError::FrameTooLarge(len));
        }
        if avail.len() < LEN_PREFIX + len {
            return Ok(None);
        }
        let s = self.start + LEN_PREFIX;
        self.start = s + len;
        Ok(Some(&self.buf[s..s + len]))
    }
}

#[cfg(test)]
mod tests;
