//! Sending: each dirty connection's control stream and broadcast outbox fed into quiche, packets built
//! straight into the backend's transmit slots, pacing honoured, the send budget and backpressure applied.

use std::cmp::Reverse;
use std::time::{Duration, Instant};

use datapath::seam::{Addrs, Datapath};

use super::{
    bufs, Chunk, Conn, Ctx, Endpoint, Paced, APP_ERR_NOT_READING, FLUSH_BUDGET, INITIAL_BROADCAST_WINDOW,
    MAX_STREAM_CHUNKS, MIN_BROADCAST_WINDOW, PACING_SLACK, TIMER_PURGE_SLACK, URGENT_BUDGET,
};

impl Endpoint {
    /// Produce packets for connections with something to send, into `tx`. Connections that could not
    /// finish (transmit side full, send budget used) stay queued for the next call. One call produces at
    /// most [`FLUSH_BUDGET`] packets (answers' visits and the fan-out pass together, plus the last
    /// connection's send budget) and then returns, so that the worker loop receives (client ACKs, pixel
    /// writes) and turns publications into ACKs between slices of a long fan-out: ingest is never starved
    /// behind the broadcast. Connections not reached keep their place at the front of the next pass.
    pub fn flush<B: Datapath>(&mut self, now: Instant, tx: &mut B) {
        while let Some((addrs, pkt)) = self.ctx.tx_now.pop() {
            let Some(slot) = tx.tx_slot() else {
                self.ctx.tx_now.push((addrs, pkt));
                return;
            };
            slot[..pkt.len()].copy_from_slice(&pkt);
            tx.tx_commit(pkt.len(), addrs);
        }
        // Answers first: connections with ACKs or REJECTs to send get a short visit ahead of the fan-out
        // pass, so that an answer waits for one loop iteration, not for a pass over every connection. Both
        // passes share the call's FLUSH_BUDGET: after a publication every connection may have an ACK, and
        // a visit to each would keep the loop from receiving for as long as a whole fan-out pass.
        let packets_before = self.ctx.stats.packets_out;
        let mut urgent = std::mem::take(&mut self.urgent);
        let mut visited = urgent.len();
        for (n, &key) in urgent.iter().enumerate() {
            if self.ctx.stats.packets_out - packets_before >= FLUSH_BUDGET {
                visited = n;
                break;
            }
            let Some(c) = self.conns.get_mut(key) else {
                continue;
            };
            c.urgent = false;
            let (more, full) = self.ctx.flush_conn(c, now, tx, URGENT_BUDGET);
            self.after_visit(key, more);
            if full {
                visited = n + 1;
                break;
            }
        }
        // Not reached (the transmit side is full, or the budget is spent): still first in line next call.
        urgent.drain(..visited);
        urgent.append(&mut self.urgent);
        self.urgent = urgent;
        // The pass walks last pass's list while connections that stay queued go onto `self.dirty`; the two
        // vectors swap roles every pass, so the steady state allocates nothing.
        let mut pending = std::mem::replace(&mut self.dirty, std::mem::take(&mut self.dirty_spare));
        let mut reached = pending.len();
        let budget = self.ctx.cfg.send_budget;
        for (n, &key) in pending.iter().enumerate() {
            if self.ctx.stats.packets_out - packets_before >= FLUSH_BUDGET {
                reached = n;
                break;
            }
            let Some(c) = self.conns.get_mut(key) else {
                continue;
            };
            c.dirty = false;
            let (more, full) = self.ctx.flush_conn(c, now, tx, budget);
            self.after_visit(key, more || full);
            if full {
                // The transmit side is full: the rest wait for the next call.
                reached = n + 1;
                break;
            }
        }
        if reached < pending.len() {
            // Not reached this time (still flagged dirty): first in line next time, then the ones served.
            let mut served = std::mem::take(&mut self.dirty);
            pending.drain(..reached);
            pending.append(&mut served);
            self.dirty = pending;
            self.dirty_spare = served;
        } else {
            pending.clear();
            self.dirty_spare = pending;
        }
        // The wave in progress has reached this many more of the connections it woke; when it has reached
        // them all, the changes published meanwhile go out as the next wave.
        self.wave_left = self.wave_left.saturating_sub(reached);
        if self.wave_left == 0 {
            self.advance_frontier();
        }
        // Superseded heap entries are skipped when they fire; purge them once they outnumber live ones.
        if self.timers.len() > TIMER_PURGE_SLACK + 2 * self.conns.len() {
            let conns = &self.conns;
            self.timers.retain(|Reverse((t, k, g))| {
                conns.get(*k).is_some_and(|c| c.gen == *g && c.timer == Some(*t))
            });
        }
    }
}

impl Endpoint {
    /// After `key` was given a chance to send: drop it if closed, arm its timer, and keep it queued when
    /// it has more to send.
    fn after_visit(&mut self, key: usize, requeue: bool) {
        let Some(c) = self.conns.get_mut(key) else { return };
        if c.q.is_closed() {
            self.remove(key);
            return;
        }
        // Arm the timer: quiche's timeout or the pacing release.
        let t = match &c.paced {
            Some(p) => Some(c.q.timeout_instant().map_or(p.at, |q| q.min(p.at))),
            None => c.q.timeout_instant(),
        };
        if let Some(t) = t {
            Self::arm(&mut self.timers, key, c, t);
        }
        if requeue {
            Self::mark_dirty(&mut self.dirty, key, c);
        }
    }
}

impl Ctx {
    /// Hand queued control bytes to quiche, as far as the stream's flow control allows. Returns bytes taken.
    fn feed_stream(&mut self, c: &mut Conn, now: Instant) -> usize {
        let Some(ctl) = c.ctl else { return 0 };
        let mut total = 0;
        while let Some(ch) = c.stream_out.front_mut() {
            let (bytes, off) = ch.cursor();
            match c.q.stream_send(ctl, &bytes[*off..], false) {
                Ok(n) => {
                    *off += n;
                    total += n;
                    c.inflight += n as u64;
                    if *off < bytes.len() {
                        break;
                    }
                    if let Some(Chunk::Answers(_, _, Some(oldest))) = c.stream_out.pop_front() {
                        self.stats.ack_handed.record(now.saturating_duration_since(oldest));
                    }
                }
                Err(quiche::Error::Done) => break,
                Err(_) => {
                    c.stream_out.clear();
                    break;
                }
            }
        }
        total
    }

    /// Keep quiche's DATAGRAM queue topped up from the connection's shared runs, pulling the next one
    /// (everything that changed since it was last sent) when they are drained, while less than its
    /// broadcast window (`Conn::window`, at most `broadcast_inflight`) is unacknowledged. `path` is the
    /// visit's reading of the path's queue (taken at most once per visit: nothing the visit does moves
    /// quiche's RTT). Returns datagrams queued.
    fn feed_dgrams(&mut self, c: &mut Conn, now: Instant, path: &mut Option<(Duration, bool)>) -> usize {
        let mut n = 0;
        c.settle_inflight();
        let mut adapted = self.cfg.broadcast_queue.is_zero();
        while c.q.dgram_send_queue_len() < self.cfg.dgram_queue {
            // Steer the window by the path's queue, once per call, once a datagram is in flight.
            if !adapted && c.inflight >= self.cfg.max_datagram as u64 {
                adapted = true;
                let (srtt, queues) = *path.get_or_insert_with(|| c.path_queue(self.cfg.broadcast_queue));
                self.adapt_window(c, now, srtt, queues);
            }
            if c.inflight >= c.window {
                if c.window < self.cfg.broadcast_inflight as u64 {
                    self.stats.window_held += 1;
                }
                break;
            }
            if c.outbox.is_empty() && !self.pull(c) {
                break;
            }
            let Some(o) = c.outbox.front_mut() else { break };
            let Some(len) = o.current().map(<[u8]>::len) else {
                c.outbox.pop_front();
                continue;
            };
            // Queued as a reference to the shared run, not a copy (see `bufs`).
            match c.q.dgram_send_buf(bufs::DgramBuf::Shared(o.clone())) {
                Ok(()) => {
                    o.advance();
                    n += 1;
                    c.inflight += len as u64;
                    self.stats.broadcast_dgrams += 1;
                    self.stats.broadcast_bytes += len as u64;
                }
                Err(quiche::Error::Done) => break,
                Err(quiche::Error::BufferTooShort) => {
                    // Larger than the peer accepts: skip this one; a canvas/1 client repairs with SYNC.
                    o.advance();
                    self.stats.dgram_too_big += 1;
                }
                Err(_) => {
                    // Peer without DATAGRAM support.
                    c.outbox.clear();
                    break;
                }
            }
        }
        n
    }

    /// A new connection's broadcast window: [`INITIAL_BROADCAST_WINDOW`] datagrams, or `broadcast_inflight`
    /// when there is no window (`broadcast_queue` zero).
    pub(super) fn initial_window(&self) -> u64 {
        let full = self.cfg.broadcast_inflight as u64;
        if self.cfg.broadcast_queue.is_zero() {
            full
        } else {
            (INITIAL_BROADCAST_WINDOW * self.cfg.max_datagram as u64).min(full)
        }
    }

    /// Steer `c`'s broadcast window by its path's queueing delay (`srtt` and whether it `queues`, see
    /// [`super::EndpointConfig::broadcast_queue`]): while the smoothed RTT exceeds the minimum by more
    /// than the target, halve what is in flight (at most once per smoothed RTT, never below
    /// [`MIN_BROADCAST_WINDOW`] datagrams); else, when the window is full, grow it by one datagram up to
    /// `broadcast_inflight`.
    fn adapt_window(&mut self, c: &mut Conn, now: Instant, srtt: Duration, queues: bool) {
        let one = self.cfg.max_datagram as u64;
        let full = self.cfg.broadcast_inflight as u64;
        let floor = (MIN_BROADCAST_WINDOW * one).min(full);
        if queues {
            if c.window > floor && now >= c.window_cut + srtt {
                c.window = (c.window.min(c.inflight) / 2).max(floor);
                c.window_cut = now;
                self.stats.window_cuts += 1;
            }
        } else if c.inflight >= c.window {
            c.window = (c.window + one).min(full);
        }
    }

    /// Send what `c` has, up to `budget` packets. Returns (has more to send, transmit side full).
    fn flush_conn<B: Datapath>(
        &mut self,
        c: &mut Conn,
        now: Instant,
        tx: &mut B,
        budget: usize,
    ) -> (bool, bool) {
        // quiche stamps `SendInfo.at` from its own reading of the monotonic clock (with its default
        // recovery, `at` is simply quiche's "now"), so release times are compared with a fresh reading, once
        // per connection: the loop's `now` can be tens of milliseconds old by the end of a flush pass over
        // thousands of connections, and comparing against it would hold nearly every packet.
        let now = now.max(Instant::now());
        if let Some(p) = &c.paced {
            if p.at > now {
                return (false, false);
            }
            let Some(slot) = tx.tx_slot() else {
                return (true, true);
            };
            let p = c.paced.take().expect("checked");
            slot[..p.buf.len()].copy_from_slice(&p.buf);
            tx.tx_commit(p.buf.len(), p.addrs);
            self.stats.packets_out += 1;
        }
        self.feed_stream(c, now);
        if c.stream_out.len() > MAX_STREAM_CHUNKS && !c.q.is_closed() {
            let _ = c.q.close(true, APP_ERR_NOT_READING, b"control stream not read");
            c.stream_out.clear();
            self.stats.closed_not_reading += 1;
        }
        let mut path = None;
        self.feed_dgrams(c, now, &mut path);
        // Whatever quiche sends now carries the acknowledgements held back (see `ACK_EVERY`).
        c.rx_unacked = 0;
        let mut sent = 0;
        loop {
            if sent >= budget {
                return (true, false);
            }
            let Some(slot) = tx.tx_slot() else {
                return (true, true);
            };
            match c.q.send(slot) {
                Ok((len, info)) => {
                    let addrs = Addrs { local: info.from, peer: info.to };
                    if info.at > now + PACING_SLACK {
                        c.paced = Some(Paced { at: info.at, buf: slot[..len].to_vec(), addrs });
                        self.stats.paced_holds += 1;
                        return (false, false);
                    }
                    tx.tx_commit(len, addrs);
                    sent += 1;
                    self.stats.packets_out += 1;
                }
                Err(quiche::Error::Done) => {
                    // quiche may have room again for control bytes or datagrams.
                    if self.feed_stream(c, now) + self.feed_dgrams(c, now, &mut path) == 0 {
                        break;
                    }
                }
                Err(_) => {
                    let _ = c.q.close(false, 0x1, b"internal error");
                    break;
                }
            }
        }
        (false, false)
    }
}
