//! Frame ownership: every UMEM frame is in exactly one state (FREE, FILL, SLOT, PENDING, TX; see the
//! parent module), each move checks the state it leaves, and an audit recounts them.

/// Where every frame is, by count (see the `backend::xdp` module doc).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct FrameAudit {
    /// Frames in the UMEM.
    pub total: u32,
    /// Unused, ours.
    pub free: u32,
    /// On the fill or RX ring (the kernel's).
    pub fill: u32,
    /// Handed out by `tx_slot`, not committed.
    pub slot: u32,
    /// Committed, not yet on the TX ring.
    pub pending: u32,
    /// On the TX ring or in the driver, until the completion ring returns it.
    pub tx: u32,
    /// True when the per-state array agrees with the counts and the counts add up to `total`.
    pub consistent: bool,
}

pub(super) const FREE: u8 = 0;
pub(super) const FILL: u8 = 1;
pub(super) const SLOT: u8 = 2;
pub(super) const PENDING: u8 = 3;
pub(super) const TX: u8 = 4;

/// Per-frame state with a count per state: every move checks where the frame was.
#[derive(Debug)]
pub(super) struct Frames {
    pub(super) state: Vec<u8>,
    pub(super) count: [u32; 5],
}

impl Frames {
    pub(super) fn new(n: usize) -> Frames {
        Frames { state: vec![FREE; n], count: [n as u32, 0, 0, 0, 0] }
    }

    /// Move frame `i` from `from` to `to`; false (and nothing moved) if it was elsewhere.
    #[inline]
    pub(super) fn moved(&mut self, i: usize, from: u8, to: u8) -> bool {
        match self.state.get_mut(i) {
            Some(s) if *s == from => {
                *s = to;
                self.count[from as usize] -= 1;
                self.count[to as usize] += 1;
                true
            }
            _ => false,
        }
    }

    pub(super) fn audit(&self) -> FrameAudit {
        let mut recount = [0u32; 5];
        for &s in &self.state {
            recount[s as usize] += 1;
        }
        let total = self.state.len() as u32;
        FrameAudit {
            total,
            free: self.count[FREE as usize],
            fill: self.count[FILL as usize],
            slot: self.count[SLOT as usize],
            pending: self.count[PENDING as usize],
            tx: self.count[TX as usize],
            consistent: recount == self.count && self.count.iter().sum::<u32>() == total,
        }
    }
}
