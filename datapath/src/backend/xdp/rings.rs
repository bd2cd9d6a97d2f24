//! Descriptor moves between the free pool and the kernel's rings: completion → free (`reap`), free → fill
//! (`push_fill`, `top_up_fill`), pending → TX (`produce_tx`) and the copy-mode kick.

use std::io;
use std::os::fd::AsRawFd;

use super::frames::{FILL, FREE, PENDING, TX};
use super::{frame_index, XdpSocket, RX_RING_FACTOR};

impl XdpSocket {
    /// Frames back from the completion ring to the free pool.
    pub(super) fn reap(&mut self) {
        loop {
            let want = self.scratch.len();
            // SAFETY: the completion ring belongs to this UMEM; the descriptors only carry addresses.
            let n = unsafe { self.cq.consume(&mut self.scratch[..want]) };
            for k in 0..n {
                let i = frame_index(self.scratch[k].addr());
                if self.frames.moved(i, TX, FREE) {
                    self.free.push(i as u32);
                } else {
                    self.xstats.frame_errors += 1;
                }
            }
            if n < want {
                return;
            }
        }
    }

    /// Put `self.refill` on the fill ring; what does not fit (the ring was topped up meanwhile) goes back to
    /// the free pool.
    pub(super) fn push_fill(&mut self) {
        let mut done = 0;
        while done < self.refill.len() {
            let room = self.fq.nb_free((self.refill.len() - done) as u32) as usize;
            let take = room.min(self.refill.len() - done);
            if take == 0 {
                break;
            }
            // SAFETY: every descriptor in `refill` is a frame of this UMEM in state FILL, not on any ring.
            let n = unsafe { self.fq.produce(&self.refill[done..done + take]) };
            if n == 0 {
                break;
            }
            done += n;
        }
        if done < self.refill.len() {
            // The fill ring is full (topped up from the free pool while these frames were in the RX ring):
            // they go back to the pool.
            for d in self.refill.drain(done..) {
                let i = frame_index(d.addr());
                if self.frames.moved(i, FILL, FREE) {
                    self.free.push(i as u32);
                }
            }
        }
        self.refill.clear();
        if self.fq.needs_wakeup() {
            // Zero-copy drivers sleep when the fill ring ran dry; poll wakes them.
            let _ = self.fq.wakeup(self.rx.fd_mut(), 0);
        }
    }

    /// Keep the fill ring full from the free pool while received frames wait in the RX ring, so the kernel
    /// can go on receiving during a long flush pass (up to a fill ring plus an RX ring of frames, instead of
    /// one fill ring). `ring` frames always stay for transmit.
    pub(super) fn top_up_fill(&mut self) {
        let ring = self.cfg.ring as usize;
        let fill = self.frames.count[FILL as usize] as usize;
        let spare = self.free.len().saturating_sub(ring);
        let want = ((1 + RX_RING_FACTOR as usize) * ring).saturating_sub(fill).min(spare);
        if want < 64 {
            return;
        }
        // The fill ring holds at most `ring`: asking for more would make libxdp re-read the kernel's index.
        let take = (self.fq.nb_free(want.min(ring) as u32) as usize).min(want);
        if take < 64 {
            return;
        }
        for _ in 0..take {
            let i = self.free.pop().expect("spare counted");
            self.frames.moved(i as usize, FREE, FILL);
            self.refill.push(self.descs[i as usize]);
        }
        self.push_fill();
        self.xstats.fill_top_ups += 1;
    }

    /// Move committed frames to the TX ring; true if all of them went.
    pub(super) fn produce_tx(&mut self) -> bool {
        let mut done = 0;
        while done < self.pending.len() {
            // libxdp reserves all or nothing: ask for no more than the ring has room for.
            let room = self.tx.nb_free((self.pending.len() - done) as u32) as usize;
            let take = room.min(self.pending.len() - done);
            if take == 0 {
                break;
            }
            // SAFETY: every descriptor in `pending` is a frame of this UMEM in state PENDING, not on a ring.
            let n = unsafe { self.tx.produce(&self.pending[done..done + take]) };
            if n == 0 {
                break;
            }
            for d in &self.pending[done..done + n] {
                let i = frame_index(d.addr());
                self.frames.moved(i, PENDING, TX);
            }
            done += n;
            self.unkicked = true;
        }
        self.pending.drain(..done);
        self.pending.is_empty()
    }

    /// Ask the kernel to transmit what is on the TX ring.
    pub(super) fn kick(&mut self) -> io::Result<()> {
        if !self.unkicked {
            return Ok(());
        }
        if !self.tx.needs_wakeup() {
            self.unkicked = false;
            return Ok(());
        }
        let fd = self.tx.fd().as_raw_fd();
        // Copy mode transmits at most its budget (32 frames before Linux 6.17 or without
        // XDP_MAX_TX_SKB_BUDGET) per call and says EAGAIN when more are queued.
        let mut rounds = self.cfg.ring / 32 + 2;
        loop {
            self.xstats.tx_kicks += 1;
            // SAFETY: a zero-length sendto on our own AF_XDP fd with no buffer and no address.
            let r = unsafe { libc::sendto(fd, std::ptr::null(), 0, libc::MSG_DONTWAIT, std::ptr::null(), 0) };
            if r >= 0 {
                self.unkicked = false;
                return Ok(());
            }
            let e = io::Error::last_os_error();
            match e.raw_os_error() {
                Some(libc::EAGAIN) if rounds > 0 => rounds -= 1,
                // Ring still full of unsent frames (driver busy, no skb memory): the next flush retries.
                Some(libc::EAGAIN | libc::EBUSY | libc::ENOBUFS | libc::ENETDOWN) => return Ok(()),
                _ => {
                    return Err(io::Error::new(
                        e.kind(),
                        format!("AF_XDP transmit kick on {} queue {}: {e}", self.cfg.iface, self.cfg.queue),
                    ))
                }
            }
        }
    }
}
