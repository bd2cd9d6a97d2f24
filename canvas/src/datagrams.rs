//! A batch of encoded datagrams in one flat buffer (one allocation per tick, not one per datagram).

/// Encoded datagrams: `buf[ends[i-1]..ends[i]]` is datagram `i`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Datagrams {
    buf: Vec<u8>,
    ends: Vec<usize>,
}

impl Datagrams {
    /// An empty batch.
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of datagrams.
    pub fn len(&self) -> usize {
        self.ends.len()
    }

    /// True when there is no datagram.
    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    /// Total payload bytes.
    pub fn bytes(&self) -> usize {
        self.buf.len()
    }

    /// Datagram `i`.
    pub fn get(&self, i: usize) -> Option<&[u8]> {
        let end = *self.ends.get(i)?;
        let start = if i == 0 { 0 } else { self.ends[i - 1] };
        Some(&self.buf[start..end])
    }

    /// Iterate over the datagrams in order.
    pub fn iter(&self) -> impl DoubleEndedIterator<Item = &[u8]> + ExactSizeIterator + '_ {
        (0..self.len()).map(move |i| self.get(i).expect("index in range"))
    }

    /// Make room for `datagrams` more datagrams of `bytes` bytes in all, exactly: a batch encoded once and
    /// then only read (a tick's diff, a catch-up delta) holds no growth slack.
    pub fn reserve_exact(&mut self, datagrams: usize, bytes: usize) {
        self.ends.reserve_exact(datagrams);
        self.buf.reserve_exact(bytes);
    }

    /// Start a new datagram; bytes pushed with [`Datagrams::extend`] go into it.
    pub fn begin(&mut self) {
        self.ends.push(self.buf.len());
    }

    /// Append bytes to the current (last) datagram.
    pub fn extend(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
        if let Some(last) = self.ends.last_mut() {
            *last = self.buf.len();
        }
    }

    /// Length of the current (last) datagram.
    pub fn current_len(&self) -> usize {
        match self.ends.len() {
            0 => 0,
            1 => self.ends[0],
            n => self.ends[n - 1] - self.ends[n - 2],
        }
    }

    /// Mutable access to the bytes of datagram `i` (used to patch headers after the fact).
    pub fn get_mut(&mut self, i: usize) -> Option<&mut [u8]> {
        let end = *self.ends.get(i)?;
        let start = if i == 0 { 0 } else { self.ends[i - 1] };
        Some(&mut self.buf[start..end])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flat_batch() {
        let mut d = Datagrams::new();
        d.begin();
        d.extend(b"ab");
        d.extend(b"c");
        d.begin();
        d.extend(b"xyz1");
        assert_eq!(d.len(), 2);
        assert_eq!(d.get(0), Some(&b"abc"[..]));
        assert_eq!(d.get(1), Some(&b"xyz1"[..]));
        assert_eq!(d.current_len(), 4);
        assert_eq!(d.bytes(), 7);
        assert_eq!(d.iter().count(), 2);
    }

    #[test]
    fn diff_parts_are_encoded_without_growth_slack() {
        let entries: Vec<(u32, u8)> = (0..5000u32).map(|i| (i, 1)).collect();
        let mut d = Datagrams::new();
        crate::proto::encode_diff_parts(3, 2, 1, &entries, 1200, &mut d);
        assert!(d.len() > 1);
        assert_eq!(d.buf.capacity(), d.buf.len(), "payload bytes reserved exactly");
        assert_eq!(d.ends.capacity(), d.ends.len(), "one end per part reserved exactly");
    }
}
