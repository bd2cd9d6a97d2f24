//! quiche's buffers for the server's connections: a broadcast DATAGRAM is handed to quiche as a reference
//! to the publication or snapshot it belongs to, not as a copy.
//!
//! With quiche's default buffers, `dgram_send` copies each payload into a new `Vec` that lives in the
//! connection's DATAGRAM queue until the packet is built: one allocation, one copy and one free per
//! datagram per connection. Here the queue holds [`DgramBuf::Shared`], a clone of the run it comes from
//! (an `Arc` and an index): queueing costs a reference count. The payload is copied once, into the packet
//! being sealed, as before. Stream data is unchanged (copied into an `Arc<[u8]>`, as quiche's default).

use std::sync::Arc;

use super::Out;

/// The [`quiche::BufFactory`] of the server's connections.
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct Bufs;

/// Stream data as quiche keeps it by default: a shared copy.
#[derive(Clone, Debug)]
pub(super) struct StreamBuf(Arc<[u8]>);

impl AsRef<[u8]> for StreamBuf {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

/// A DATAGRAM payload waiting in quiche's queue.
#[derive(Debug)]
pub(super) enum DgramBuf {
    /// One made by quiche from a slice or a `Vec` (nothing of ours sends those; the trait requires them).
    Owned(Vec<u8>),
    /// The datagram at the run's current index.
    Shared(Out),
}

impl AsRef<[u8]> for DgramBuf {
    fn as_ref(&self) -> &[u8] {
        match self {
            DgramBuf::Owned(v) => v,
            DgramBuf::Shared(o) => o.current().unwrap_or_default(),
        }
    }
}

impl From<Vec<u8>> for DgramBuf {
    fn from(v: Vec<u8>) -> Self {
        DgramBuf::Owned(v)
    }
}

impl quiche::BufFactory for Bufs {
    type Buf = StreamBuf;
    type DgramBuf = DgramBuf;

    fn buf_from_slice(buf: &[u8]) -> StreamBuf {
        StreamBuf(Arc::from(buf))
    }

    fn dgram_buf_from_slice(buf: &[u8]) -> DgramBuf {
        DgramBuf::Owned(buf.to_vec())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use quiche::BufFactory;

    #[test]
    fn a_shared_datagram_reads_as_the_runs_current_one() {
        let entries: Vec<(u32, u8)> = (0..600).map(|i| (i * 7, (i % 31) as u8 + 1)).collect();
        let p = Arc::new(crate::publish::Publication::encode(5, 4, 99, &entries, 1200, Vec::new(), None));
        let n = p.parts.len();
        assert!(n >= 2, "{n} parts");
        for i in 0..n {
            assert_eq!(DgramBuf::Shared(Out::Parts(p.clone(), i)).as_ref(), p.parts.get(i).unwrap());
        }
        assert_eq!(DgramBuf::Shared(Out::Head(p.clone(), 0)).as_ref(), p.head.get(0).unwrap());
        assert_eq!(DgramBuf::Shared(Out::Parts(p, n)).as_ref(), b"", "past the end: empty, never a panic");
        assert_eq!(Bufs::dgram_buf_from_slice(b"x").as_ref(), b"x");
        assert_eq!(Bufs::buf_from_slice(b"y").as_ref(), b"y");
    }
}
