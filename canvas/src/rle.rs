//! Run-length encoding of pixel bytes as `(count u8, color u8)` pairs, count in 1..=255.

/// Append the RLE of `pixels` to `out`.
pub fn encode(pixels: &[u8], out: &mut Vec<u8>) {
    for_each_run(pixels, |count, color| out.extend_from_slice(&[count, color]));
}

/// Call `f(count, color)` for each run of `pixels` (runs longer than 255 are split).
pub fn for_each_run(pixels: &[u8], mut f: impl FnMut(u8, u8)) {
    let mut i = 0;
    while i < pixels.len() {
        let color = pixels[i];
        let max = (pixels.len() - i).min(255);
        let mut n = 1;
        while n < max && pixels[i + n] == color {
            n += 1;
        }
        f(n as u8, color);
        i += n;
    }
}

/// Size in bytes of the RLE of `pixels`, without producing it.
pub fn encoded_len(pixels: &[u8]) -> usize {
    let mut n = 0;
    for_each_run(pixels, |_, _| n += 2);
    n
}

/// Error decoding RLE.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RleError {
    /// Odd number of bytes.
    Truncated,
    /// A run of length zero.
    ZeroRun,
    /// More pixels than the target holds.
    Overflow,
}

/// Decode RLE pairs into `out[pos..]`, returning the new position.
pub fn decode_into(rle: &[u8], out: &mut [u8], mut pos: usize) -> Result<usize, RleError> {
    if !rle.len().is_multiple_of(2) {
        return Err(RleError::Truncated);
    }
    for pair in rle.chunks_exact(2) {
        let (count, color) = (pair[0] as usize, pair[1]);
        if count == 0 {
            return Err(RleError::ZeroRun);
        }
        let end = pos.checked_add(count).ok_or(RleError::Overflow)?;
        out.get_mut(pos..end).ok_or(RleError::Overflow)?.fill(color);
        pos = end;
    }
    Ok(pos)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip_and_long_runs() {
        let mut px = vec![0u8; 1000];
        px[300] = 7;
        px[999] = 9;
        let mut enc = Vec::new();
        encode(&px, &mut enc);
        assert_eq!(enc.len(), encoded_len(&px));
        // 300 zeros = 255 + 45, then 7, then 698 zeros = 255+255+188, then 9.
        assert_eq!(enc.len(), 2 * (2 + 1 + 3 + 1));
        let mut out = vec![1u8; 1000];
        assert_eq!(decode_into(&enc, &mut out, 0), Ok(1000));
        assert_eq!(out, px);
    }

    #[test]
    fn rejects_bad_input() {
        let mut out = [0u8; 4];
        assert_eq!(decode_into(&[1], &mut out, 0), Err(RleError::Truncated));
        assert_eq!(decode_into(&[0, 1], &mut out, 0), Err(RleError::ZeroRun));
        assert_eq!(decode_into(&[5, 1], &mut out, 0), Err(RleError::Overflow));
        assert_eq!(decode_into(&[2, 1], &mut out, 3), Err(RleError::Overflow));
    }
}
