//! Canvas storage, validation and per-tick change tracking.

use crate::hash;

/// Default canvas width (the predecessor's 1000×1000).
pub const DEFAULT_WIDTH: u16 = 1000;
/// Default canvas height.
pub const DEFAULT_HEIGHT: u16 = 1000;
/// Default palette size: every `u8` is a valid color index.
pub const DEFAULT_PALETTE: u16 = 256;
/// Largest pixel count the legacy wire format can carry unambiguously: legacy diff entries are
/// `u32` indices whose high byte must be zero for clients to tell diffs from RLE snapshots (see PROTOCOL.md).
pub const MAX_PIXELS: usize = 1 << 24;

/// Canvas dimensions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Dims {
    /// Width in pixels.
    pub width: u16,
    /// Height in pixels.
    pub height: u16,
}

impl Default for Dims {
    fn default() -> Self {
        Self { width: DEFAULT_WIDTH, height: DEFAULT_HEIGHT }
    }
}

impl Dims {
    /// Number of pixels.
    pub fn len(&self) -> usize {
        usize::from(self.width) * usize::from(self.height)
    }

    /// True for a zero-sized canvas.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Linear index of `(x, y)`, `y * width + x`, or `None` when out of bounds.
    #[inline]
    pub fn index(&self, x: u16, y: u16) -> Option<u32> {
        (x < self.width && y < self.height).then(|| u32::from(y) * u32::from(self.width) + u32::from(x))
    }

    /// `(x, y)` of a linear index.
    pub fn coords(&self, index: u32) -> (u16, u16) {
        let w = u32::from(self.width);
        ((index % w) as u16, (index / w) as u16)
    }
}

/// One pixel write as a client sends it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Pixel {
    /// Column.
    pub x: u16,
    /// Row.
    pub y: u16,
    /// Palette index.
    pub color: u8,
}

/// Why a write was refused. The discriminants are the wire values of `canvas/1` REJECT.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RejectReason {
    /// x or y outside the canvas.
    OutOfBounds = 1,
    /// Color index not in the palette.
    BadColor = 2,
    /// The connection wrote less than one cooldown period ago.
    Cooldown = 3,
    /// The server's queue to the canvas owner is full: the write was not applied; retry later.
    Busy = 4,
    /// The message could not be parsed.
    Malformed = 5,
}

impl RejectReason {
    /// All reasons, for counters.
    pub const ALL: [RejectReason; 5] =
        [Self::OutOfBounds, Self::BadColor, Self::Cooldown, Self::Busy, Self::Malformed];

    /// From the wire value.
    pub fn from_u8(v: u8) -> Option<Self> {
        Self::ALL.into_iter().find(|r| *r as u8 == v)
    }

    /// Short name for counters and logs.
    pub fn name(self) -> &'static str {
        match self {
            Self::OutOfBounds => "out_of_bounds",
            Self::BadColor => "bad_color",
            Self::Cooldown => "cooldown",
            Self::Busy => "busy",
            Self::Malformed => "malformed",
        }
    }
}

/// Validation rules: dimensions and palette.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rules {
    /// Canvas dimensions.
    pub dims: Dims,
    /// Number of palette entries (1..=256); colors `>= palette` are refused.
    pub palette: u16,
}

impl Default for Rules {
    fn default() -> Self {
        Self { dims: Dims::default(), palette: DEFAULT_PALETTE }
    }
}

impl Rules {
    /// Validate a write, returning its linear index.
    #[inline]
    pub fn validate(&self, p: Pixel) -> Result<u32, RejectReason> {
        let index = self.dims.index(p.x, p.y).ok_or(RejectReason::OutOfBounds)?;
        if u16::from(p.color) >= self.palette {
            return Err(RejectReason::BadColor);
        }
        Ok(index)
    }
}

/// Error constructing a canvas.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CanvasError {
    /// The storage is smaller than `width * height`.
    StorageTooSmall {
        /// Bytes needed.
        need: usize,
        /// Bytes given.
        have: usize,
    },
    /// More pixels than the legacy protocol can address.
    TooLarge(usize),
}

impl std::fmt::Display for CanvasError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::StorageTooSmall { need, have } => {
                write!(f, "canvas storage holds {have} bytes but {need} are needed")
            }
            Self::TooLarge(n) => write!(f, "canvas of {n} pixels exceeds the maximum of {MAX_PIXELS}"),
        }
    }
}

impl std::error::Error for CanvasError {}

/// The canvas: one byte per pixel over storage the caller hands in (a hugepage mapping in the server, a
/// `Vec` in tests), with an incremental hash and the set of pixels changed in the current tick.
///
/// Writes are applied in call order, which is the one global order: the server has exactly one writer.
#[derive(Debug)]
pub struct Canvas<S> {
    dims: Dims,
    storage: S,
    hash: u64,
    /// One bit per pixel: touched in the current tick.
    dirty: Vec<u64>,
    /// Pixels touched in the current tick, with their color at the start of the tick.
    touched: Vec<(u32, u8)>,
}

impl<S: AsRef<[u8]> + AsMut<[u8]>> Canvas<S> {
    /// A canvas over `storage`, keeping the bytes it already holds (the first `dims.len()` bytes).
    pub fn new(dims: Dims, storage: S) -> Result<Self, CanvasError> {
        let need = dims.len();
        if need > MAX_PIXELS {
            return Err(CanvasError::TooLarge(need));
        }
        let have = storage.as_ref().len();
        if have < need {
            return Err(CanvasError::StorageTooSmall { need, have });
        }
        let hash = hash::full(&storage.as_ref()[..need]);
        Ok(Self { dims, storage, hash, dirty: vec![0; need.div_ceil(64)], touched: Vec::new() })
    }

    /// Dimensions.
    pub fn dims(&self) -> Dims {
        self.dims
    }

    /// The pixels, `width * height` bytes.
    pub fn pixels(&self) -> &[u8] {
        &self.storage.as_ref()[..self.dims.len()]
    }

    /// Hash of the current content (see [`crate::hash`]).
    pub fn hash(&self) -> u64 {
        self.hash
    }

    /// Apply a validated write. Returns `true` when the color changed.
    ///
    /// # Panics
    /// When `index` is out of range (callers validate with [`Rules::validate`] first).
    #[inline]
    pub fn apply(&mut self, index: u32, color: u8) -> bool {
        let i = index as usize;
        let px = &mut self.storage.as_mut()[..self.dims.len()];
        let old = px[i];
        if old == color {
            return false;
        }
        px[i] = color;
        self.hash = hash::update(self.hash, index, old, color);
        let (word, bit) = (i / 64, 1u64 << (i % 64));
        if self.dirty[word] & bit == 0 {
            self.dirty[word] |= bit;
            self.touched.push((index, old));
        }
        true
    }

    /// Number of pixels touched since the last [`Canvas::end_tick`].
    pub fn touched(&self) -> usize {
        self.touched.len()
    }

    /// Close the current tick: append to `out` every pixel whose color differs from the start of the tick,
    /// as `(index, final color)` in ascending index order, and start a new tick. A pixel changed and changed
    /// back within one tick is not reported.
    pub fn end_tick(&mut self, out: &mut Vec<(u32, u8)>) {
        self.touched.sort_unstable_by_key(|&(i, _)| i);
        let px = &self.storage.as_ref()[..self.dims.len()];
        for &(index, old) in &self.touched {
            let i = index as usize;
            self.dirty[i / 64] &= !(1u64 << (i % 64));
            let now = px[i];
            if now != old {
                out.push((index, now));
            }
        }
        self.touched.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn small() -> Canvas<Vec<u8>> {
        Canvas::new(Dims { width: 10, height: 5 }, vec![0; 50]).unwrap()
    }

    #[test]
    fn validation() {
        let r = Rules { dims: Dims { width: 10, height: 5 }, palette: 16 };
        assert_eq!(r.validate(Pixel { x: 9, y: 4, color: 15 }), Ok(49));
        assert_eq!(r.validate(Pixel { x: 10, y: 0, color: 0 }), Err(RejectReason::OutOfBounds));
        assert_eq!(r.validate(Pixel { x: 0, y: 5, color: 0 }), Err(RejectReason::OutOfBounds));
        assert_eq!(r.validate(Pixel { x: 0, y: 0, color: 16 }), Err(RejectReason::BadColor));
        assert_eq!(Rules::default().validate(Pixel { x: 999, y: 999, color: 255 }), Ok(999_999));
    }

    #[test]
    fn storage_checks() {
        assert!(matches!(
            Canvas::new(Dims { width: 10, height: 5 }, vec![0; 49]),
            Err(CanvasError::StorageTooSmall { need: 50, have: 49 })
        ));
        assert!(matches!(
            Canvas::new(Dims { width: 5000, height: 5000 }, vec![0u8; 0]),
            Err(CanvasError::TooLarge(_))
        ));
        // Existing content is kept and hashed.
        let c = Canvas::new(Dims { width: 2, height: 1 }, vec![3, 4, 99]).unwrap();
        assert_eq!(c.pixels(), &[3, 4]);
        assert_eq!(c.hash(), hash::full(&[3, 4]));
    }

    #[test]
    fn tick_diff_is_net_change_in_index_order() {
        let mut c = small();
        assert!(c.apply(7, 1));
        assert!(c.apply(3, 2));
        assert!(!c.apply(3, 2));
        assert!(c.apply(7, 5)); // last write wins
        assert!(c.apply(9, 4));
        assert!(c.apply(9, 0)); // changed back: no net change
        let mut out = Vec::new();
        c.end_tick(&mut out);
        assert_eq!(out, vec![(3, 2), (7, 5)]);
        assert_eq!(c.hash(), hash::full(c.pixels()));
        out.clear();
        c.end_tick(&mut out);
        assert!(out.is_empty());
        assert!(c.apply(9, 1));
        c.end_tick(&mut out);
        assert_eq!(out, vec![(9, 1)]);
    }
}
