//! 1-RTT packets that arrived before their connection's handshake completed here: the client's Finished
//! was lost or overtaken, and quiche has no key to open them yet (it drops them; it buffers only 0-RTT).
//! They are given to quiche once the handshake completes (RFC 9001 §4.1.4, RFC 9000 §5.7). Without that, a
//! client whose Finished was lost got its SYNC answered only when its own probe timer resent it, and a
//! client does not arm that timer for 1-RTT data until the server's HANDSHAKE_DONE arrives, backed off by
//! its handshake probes: joins of 5 s to more than 10 s at 1-3 % loss.

use datapath::seam::Addrs;

/// Packets held per connection.
const MAX_PER_CONN: usize = 4;
/// Packets held at once per worker, over all connections (the list is scanned per held packet).
const MAX_PACKETS: usize = 1024;
/// Their bytes, at most.
const MAX_BYTES: usize = 1 << 20;

/// The packets held on one endpoint: one list, empty almost always (no per-connection field).
#[derive(Debug, Default)]
pub(super) struct Early {
    /// (connection key, addresses, packet), in arrival order.
    held: Vec<(usize, Addrs, Box<[u8]>)>,
    /// Bytes in `held`.
    bytes: usize,
}

impl Early {
    /// Hold `pkt` for connection `key`. False (the packet is dropped) when a bound is reached.
    pub(super) fn hold(&mut self, key: usize, addrs: Addrs, pkt: &[u8]) -> bool {
        let for_key = self.held.iter().filter(|e| e.0 == key).count();
        if for_key >= MAX_PER_CONN || self.held.len() >= MAX_PACKETS || self.bytes + pkt.len() > MAX_BYTES {
            return false;
        }
        self.bytes += pkt.len();
        self.held.push((key, addrs, pkt.into()));
        true
    }

    /// Take what is held for `key`, in arrival order (its handshake completed, or it went).
    pub(super) fn take(&mut self, key: usize) -> Vec<(Addrs, Box<[u8]>)> {
        let mut out = Vec::new();
        if self.held.is_empty() {
            return out;
        }
        self.held.retain_mut(|(k, addrs, pkt)| {
            if *k != key {
                return true;
            }
            self.bytes -= pkt.len();
            out.push((*addrs, std::mem::take(pkt)));
            false
        });
        out
    }

    /// Bytes held.
    pub(super) fn bytes(&self) -> usize {
        self.bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addrs() -> Addrs {
        Addrs { local: "127.0.0.1:4433".parse().unwrap(), peer: "127.0.0.1:9000".parse().unwrap() }
    }

    #[test]
    fn bounded_per_connection_in_packets_and_in_bytes_and_taken_in_order() {
        let mut e = Early::default();
        for n in 0..6u8 {
            assert_eq!(e.hold(7, addrs(), &[n; 10]), n < 4, "4 per connection");
        }
        let got: Vec<Vec<u8>> = e.take(7).into_iter().map(|(_, p)| p.into_vec()).collect();
        assert_eq!(got, (0..4u8).map(|n| vec![n; 10]).collect::<Vec<_>>());
        assert_eq!((e.bytes(), e.take(7).len()), (0, 0));
        // 1,024 packets over all connections.
        assert!((0..MAX_PACKETS).all(|k| e.hold(k, addrs(), &[0; 10])));
        assert!(!e.hold(MAX_PACKETS, addrs(), &[0; 10]));
        for k in 0..MAX_PACKETS {
            e.take(k);
        }
        assert_eq!(e.bytes(), 0);
        // 1 MiB.
        let big = vec![0; 1400];
        let fit = MAX_BYTES / big.len();
        assert!((0..fit).all(|k| e.hold(k, addrs(), &big)));
        assert!(!e.hold(fit, addrs(), &big));
        assert_eq!(e.bytes(), fit * big.len());
    }
}
