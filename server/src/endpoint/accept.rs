//! Accepting a connection: version negotiation, the optional stateless Retry with its HMAC token (age,
//! peer address, original DCID), the connection limit, and the connection id derived from the client's DCID.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use canvas::proto::{self, FrameReader};
use datapath::seam::Addrs;
use ring::hmac;

use super::{Conn, Ctx, Endpoint, Proto, LOCAL_CID_LEN, MIN_INITIAL_DATAGRAM, RETRY_TOKEN_LIFETIME};

impl Endpoint {
    pub(super) fn accept(
        &mut self,
        now: Instant,
        addrs: Addrs,
        hdr: &quiche::Header<'_>,
        len: usize,
    ) -> Option<usize> {
        let stats = &mut self.ctx.stats;
        // RFC 9000 §14.1: a server discards Initial packets in datagrams smaller than 1200 bytes, and sends
        // nothing (not even Version Negotiation) in reply to them: no amplification from small packets.
        if hdr.ty != quiche::Type::Initial || self.closing || len < MIN_INITIAL_DATAGRAM {
            stats.dropped_packets += 1;
            return None;
        }
        if !quiche::version_is_supported(hdr.version) {
            let mut out = vec![0; 1350];
            if let Ok(n) = quiche::negotiate_version(&hdr.scid, &hdr.dcid, &mut out) {
                out.truncate(n);
                self.ctx.tx_now.push((addrs, out));
                stats.version_negotiations += 1;
            }
            return None;
        }
        // Past `max_conns`: a short-lived connection only to send CONNECTION_CLOSE with the reason (at most
        // MAX_REFUSING at once; beyond that the Initial is dropped and counted).
        let refuse = self.conns.len() - self.refusing >= self.ctx.cfg.max_conns;
        if refuse && self.refusing >= super::MAX_REFUSING {
            stats.refused += 1;
            return None;
        }
        if !refuse && self.half_open_count >= self.ctx.cfg.max_half_open {
            stats.refused_half_open += 1;
            return None;
        }
        // A client answering a Retry brings a token: it is checked whichever mode is on now.
        let has_token = hdr.token.as_deref().is_some_and(|t| !t.is_empty());
        if !has_token {
            self.count_handshake(now);
        }
        self.auto_retry_switch();
        let (scid, odcid) = if self.ctx.cfg.retry || self.auto_retry || has_token {
            let token = hdr.token.as_deref().unwrap_or(&[]);
            if token.is_empty() {
                let new_scid = self.derive_cid(&hdr.dcid);
                let token = self.ctx.mint_token(now, addrs.peer, &hdr.dcid);
                let mut out = vec![0; 1350];
                let scid = quiche::ConnectionId::from_ref(&new_scid);
                if let Ok(n) = quiche::retry(&hdr.scid, &hdr.dcid, &scid, &token, hdr.version, &mut out) {
                    out.truncate(n);
                    self.ctx.tx_now.push((addrs, out));
                    self.ctx.stats.retries += 1;
                }
                return None;
            }
            let Some(odcid) = self.ctx.check_token(now, addrs.peer, token) else {
                self.ctx.stats.bad_tokens += 1;
                return None;
            };
            let Ok(scid) = <[u8; LOCAL_CID_LEN]>::try_from(&hdr.dcid[..]) else {
                self.ctx.stats.bad_tokens += 1;
                return None;
            };
            (scid, Some(odcid))
        } else {
            (self.derive_cid(&hdr.dcid), None)
        };
        let odcid = odcid.map(quiche::ConnectionId::from_vec);
        let q = match quiche::accept_with_buf_factory::<super::bufs::Bufs>(
            &quiche::ConnectionId::from_ref(&scid),
            odcid.as_ref(),
            addrs.local,
            addrs.peer,
            &mut self.qcfg,
        ) {
            Ok(q) => q,
            Err(_) => {
                self.ctx.stats.recv_errors += 1;
                return None;
            }
        };
        self.next_gen = self.next_gen.wrapping_add(1);
        let key = self.conns.insert(Conn {
            q,
            gen: self.next_gen,
            scid,
            proto: Proto::Pending,
            cooldown: None,
            timer: None,
            outbox: VecDeque::new(),
            sent: 0,
            ctl: None,
            reader: FrameReader::with_max(proto::MAX_CLIENT_FRAME),
            stream_out: VecDeque::new(),
            welcomed: false,
            zstd: false,
            ready: false,
            awaiting: false,
            dirty: false,
            urgent: false,
            paced: None,
            rx_unacked: 0,
            inflight: 0,
            settled: 0,
            window: self.ctx.initial_window(),
            window_cut: now,
            half_open: false,
            refused: refuse,
            peer: addrs.peer,
        });
        if refuse {
            self.refusing += 1;
        }
        self.ids.insert(scid, key);
        Some(key)
    }
}

impl Endpoint {
    /// One more new handshake (an Initial without a token) at `now`: rolls the one-second window of
    /// [`EndpointConfig::retry_above_rate`] when it has ended (its rate: its count over its length, so a
    /// quiet spell after a burst reads as a low rate).
    fn count_handshake(&mut self, now: Instant) {
        let el = now.saturating_duration_since(self.hs_window);
        if el >= Duration::from_secs(1) {
            let ms = el.as_millis().max(1);
            self.hs_rate = u32::try_from(u128::from(self.hs_in_window) * 1000 / ms).unwrap_or(u32::MAX);
            self.hs_window = now;
            self.hs_in_window = 0;
        }
        self.hs_in_window = self.hs_in_window.saturating_add(1);
    }

    /// Automatic Retry, with hysteresis: on above `retry_above` handshakes in progress or above
    /// `retry_above_rate` new handshakes per second (the last window's rate or the current window's count
    /// so far), off again once both are below half of their threshold.
    fn auto_retry_switch(&mut self) {
        let (above, rate) = (self.ctx.cfg.retry_above, self.ctx.cfg.retry_above_rate);
        let by_count = above > 0 && self.half_open_count > above;
        let by_rate = rate > 0 && self.hs_rate.max(self.hs_in_window) > rate;
        if !self.auto_retry && (by_count || by_rate) {
            self.auto_retry = true;
            self.ctx.stats.retry_switched_on += 1;
            if by_rate && !by_count {
                self.ctx.stats.retry_switched_on_rate += 1;
            }
        } else if self.auto_retry {
            let count_calm = above == 0 || self.half_open_count < above / 2;
            let rate_calm = rate == 0 || self.hs_rate.max(self.hs_in_window) < rate / 2;
            if count_calm && rate_calm {
                self.auto_retry = false;
            }
        }
    }
}

impl Ctx {
    fn mint_token(&self, now: Instant, peer: SocketAddr, odcid: &[u8]) -> Vec<u8> {
        let ms = now.saturating_duration_since(self.epoch).as_millis() as u64;
        let mut t = Vec::with_capacity(8 + 1 + odcid.len() + 16);
        t.extend_from_slice(&ms.to_le_bytes());
        t.push(odcid.len() as u8);
        t.extend_from_slice(odcid);
        let tag = hmac::sign(&self.key, &token_msg(&t, peer));
        t.extend_from_slice(&tag.as_ref()[..16]);
        t
    }

    fn check_token(&self, now: Instant, peer: SocketAddr, token: &[u8]) -> Option<Vec<u8>> {
        let (body, tag) = token.split_at_checked(token.len().checked_sub(16)?)?;
        let expect = hmac::sign(&self.key, &token_msg(body, peer));
        if !ring_eq(&expect.as_ref()[..16], tag) {
            return None;
        }
        let ms = u64::from_le_bytes(body.get(..8)?.try_into().ok()?);
        let age = now.saturating_duration_since(self.epoch).as_millis() as u64;
        if age.saturating_sub(ms) > RETRY_TOKEN_LIFETIME.as_millis() as u64 {
            return None;
        }
        let n = usize::from(*body.get(8)?);
        body.get(9..9 + n).map(<[u8]>::to_vec)
    }
}

fn token_msg(body: &[u8], peer: SocketAddr) -> Vec<u8> {
    let mut m = body.to_vec();
    match peer {
        SocketAddr::V4(a) => m.extend_from_slice(&a.ip().octets()),
        SocketAddr::V6(a) => m.extend_from_slice(&a.ip().octets()),
    }
    m.extend_from_slice(&peer.port().to_le_bytes());
    m
}

fn ring_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}
