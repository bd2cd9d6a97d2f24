//! In-memory backend: datagrams move through a seeded model network (loss, reordering) inside one thread,
//! so client/server tests are reproducible and need no sockets.

use std::collections::{HashMap, VecDeque};
use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use crate::seam::{Addrs, BackendStats, Datapath};

/// Network model parameters.
#[derive(Clone, Copy, Debug)]
pub struct NetConfig {
    /// Probability that a datagram is dropped.
    pub loss: f64,
    /// Probability that a datagram is held back one extra round (arrives after later ones).
    pub reorder: f64,
    /// RNG seed.
    pub seed: u64,
}

/// A datagram in flight.
#[derive(Clone, Debug)]
pub struct Packet {
    /// Sender.
    pub from: SocketAddr,
    /// Receiver.
    pub to: SocketAddr,
    /// Payload.
    pub data: Vec<u8>,
}

/// Network counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NetStats {
    /// Datagrams sent into the network.
    pub sent: u64,
    /// Dropped by the loss model.
    pub dropped: u64,
    /// Held back by the reorder model.
    pub reordered: u64,
    /// Delivered to an inbox.
    pub delivered: u64,
}

/// The model network: a round-based switch. Datagrams sent in round r arrive in round r+1 (r+2 when
/// reordered), unless dropped.
#[derive(Debug)]
pub struct Net {
    cfg: NetConfig,
    rng: SmallRng,
    now: Vec<Packet>,
    later: Vec<Packet>,
    inboxes: HashMap<SocketAddr, VecDeque<Packet>>,
    stats: NetStats,
}

impl Net {
    /// A network with `cfg`.
    pub fn new(cfg: NetConfig) -> Self {
        Self {
            rng: SmallRng::seed_from_u64(cfg.seed),
            cfg,
            now: Vec::new(),
            later: Vec::new(),
            inboxes: HashMap::new(),
            stats: NetStats::default(),
        }
    }

    /// Counters.
    pub fn stats(&self) -> NetStats {
        self.stats
    }

    /// Datagrams in flight (not yet in an inbox).
    pub fn in_flight(&self) -> usize {
        self.now.len() + self.later.len()
    }

    /// Send a datagram.
    pub fn send(&mut self, from: SocketAddr, to: SocketAddr, data: Vec<u8>) {
        self.stats.sent += 1;
        if self.rng.random_bool(self.cfg.loss) {
            self.stats.dropped += 1;
            return;
        }
        if self.rng.random_bool(self.cfg.reorder) {
            self.stats.reordered += 1;
            self.later.push(Packet { from, to, data });
        } else {
            self.now.push(Packet { from, to, data });
        }
    }

    /// Advance one round: deliver what is due into the receivers' inboxes.
    pub fn step(&mut self) {
        let due = std::mem::take(&mut self.now);
        self.now = std::mem::take(&mut self.later);
        for p in due {
            self.stats.delivered += 1;
            self.inboxes.entry(p.to).or_default().push_back(p);
        }
    }

    /// Bytes delivered to `addr`'s inbox and not taken yet (what a receiver that stopped reading holds).
    pub fn inbox_bytes(&self, addr: SocketAddr) -> usize {
        self.inboxes.get(&addr).map_or(0, |q| q.iter().map(|p| p.data.len()).sum())
    }

    /// Take the next datagram addressed to `addr`.
    pub fn take(&mut self, addr: SocketAddr) -> Option<Packet> {
        self.inboxes.get_mut(&addr)?.pop_front()
    }
}

/// One endpoint's socket on a [`Net`]: the harness moves datagrams between it and the network.
#[derive(Debug)]
pub struct MemSocket {
    /// Our address.
    pub local: SocketAddr,
    /// Received, not yet consumed.
    pub rx: VecDeque<Packet>,
    /// Datagrams committed for sending and not yet moved to the network, back to back, then the slot for
    /// the next one: the sender writes in place, as into a real backend's ring, with no copy and no
    /// allocation per datagram (the buffer only grows).
    tx_buf: Vec<u8>,
    /// Bytes of `tx_buf` committed.
    tx_len: usize,
    /// Each committed datagram's addresses and end offset in `tx_buf`.
    tx_ends: Vec<(Addrs, usize)>,
    max_payload: usize,
    stats: BackendStats,
}

impl MemSocket {
    /// A socket at `local` sending datagrams of up to `max_payload` bytes.
    pub fn new(local: SocketAddr, max_payload: usize) -> Self {
        Self {
            local,
            rx: VecDeque::new(),
            tx_buf: Vec::new(),
            tx_len: 0,
            tx_ends: Vec::new(),
            max_payload,
            stats: BackendStats::default(),
        }
    }

    /// Move inbound datagrams from `net` into this socket and outbound ones into `net`.
    pub fn exchange(&mut self, net: &mut Net) {
        while let Some(p) = net.take(self.local) {
            self.rx.push_back(p);
        }
        for (a, d) in self.take_tx() {
            net.send(a.local, a.peer, d);
        }
    }

    /// Take the datagrams committed for sending (in order), as the network would.
    pub fn take_tx(&mut self) -> Vec<(Addrs, Vec<u8>)> {
        let mut start = 0;
        let out = self
            .tx_ends
            .drain(..)
            .map(|(a, end)| {
                let d = self.tx_buf[start..end].to_vec();
                start = end;
                (a, d)
            })
            .collect();
        self.tx_len = 0;
        out
    }

    /// Datagrams committed for sending and not yet taken.
    pub fn tx_pending(&self) -> usize {
        self.tx_ends.len()
    }
}

impl Datapath for MemSocket {
    fn recv<F: FnMut(Addrs, &mut [u8])>(&mut self, max: usize, mut f: F) -> io::Result<usize> {
        let mut n = 0;
        while n < max {
            let Some(mut p) = self.rx.pop_front() else {
                break;
            };
            self.stats.rx_datagrams += 1;
            self.stats.rx_bytes += p.data.len() as u64;
            f(Addrs { local: self.local, peer: p.from }, &mut p.data);
            n += 1;
        }
        Ok(n)
    }

    fn tx_slot(&mut self) -> Option<&mut [u8]> {
        let end = self.tx_len + self.max_payload;
        if self.tx_buf.len() < end {
            self.tx_buf.resize(end, 0);
        }
        Some(&mut self.tx_buf[self.tx_len..end])
    }

    fn tx_commit(&mut self, len: usize, addrs: Addrs) {
        assert!(len <= self.max_payload, "a datagram longer than its slot");
        self.stats.tx_datagrams += 1;
        self.stats.tx_bytes += len as u64;
        self.tx_len += len;
        self.tx_ends.push((addrs, self.tx_len));
    }

    fn flush(&mut self) -> io::Result<()> {
        self.stats.tx_batches += u64::from(!self.tx_ends.is_empty());
        Ok(())
    }

    fn wait(&mut self, _timeout: Duration) -> io::Result<()> {
        Ok(())
    }

    fn max_payload(&self) -> usize {
        self.max_payload
    }

    fn stats(&self) -> BackendStats {
        self.stats
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Datagrams written in their slots come out whole and in order, also after the buffer was reused.
    #[test]
    fn committed_datagrams_come_out_in_order() {
        let local: SocketAddr = "127.0.0.1:4433".parse().unwrap();
        let peer: SocketAddr = "127.0.0.1:9000".parse().unwrap();
        let addrs = Addrs { local, peer };
        let mut s = MemSocket::new(local, 16);
        for round in 0..3u8 {
            for (i, len) in [16usize, 1, 7].into_iter().enumerate() {
                let slot = s.tx_slot().unwrap();
                assert_eq!(slot.len(), 16);
                slot[..len].fill(round * 10 + i as u8);
                s.tx_commit(len, addrs);
            }
            assert_eq!(s.tx_pending(), 3);
            let out = s.take_tx();
            assert_eq!(s.tx_pending(), 0);
            let want: Vec<Vec<u8>> = [16usize, 1, 7]
                .into_iter()
                .enumerate()
                .map(|(i, len)| vec![round * 10 + i as u8; len])
                .collect();
            assert!(out.iter().all(|(a, _)| *a == addrs));
            assert_eq!(out.into_iter().map(|(_, d)| d).collect::<Vec<_>>(), want);
        }
        assert_eq!(s.stats().tx_datagrams, 9);
    }
}
