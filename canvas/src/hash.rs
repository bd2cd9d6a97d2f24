//! Order-independent incremental canvas hash: the wrapping sum of a mixed term per (index, color).
//!
//! Updating one pixel costs O(1) (`- term(old) + term(new)`), so the server can publish the hash of the
//! whole canvas with every tick and a client can check its replica after every applied diff.

/// Mixed term for one pixel (splitmix64 finaliser over `index << 8 | color`).
#[inline]
pub fn term(index: u32, color: u8) -> u64 {
    let mut z = ((u64::from(index) << 8) | u64::from(color)).wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Hash of a whole pixel buffer, computed from scratch (O(n)).
pub fn full(pixels: &[u8]) -> u64 {
    pixels.iter().enumerate().fold(0u64, |h, (i, &c)| h.wrapping_add(term(i as u32, c)))
}

/// Apply one pixel change to a running hash.
#[inline]
pub fn update(hash: u64, index: u32, old: u8, new: u8) -> u64 {
    hash.wrapping_sub(term(index, old)).wrapping_add(term(index, new))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn incremental_equals_full() {
        let mut px = vec![0u8; 4096];
        let mut h = full(&px);
        for i in 0..4096u32 {
            let c = (i.wrapping_mul(2654435761) >> 24) as u8;
            h = update(h, i, px[i as usize], c);
            px[i as usize] = c;
        }
        assert_eq!(h, full(&px));
        assert_ne!(h, full(&vec![0u8; 4096]));
    }

    #[test]
    fn position_matters() {
        assert_ne!(full(&[1, 0]), full(&[0, 1]));
    }
}
