//! The canvas/1 replica fed any sequence of DATAGRAMs and control-stream frames: never a panic, never a
//! canvas of another size, and once it holds a tick its hash is always the hash of its pixels.
#![no_main]
use std::time::{Duration, Instant};

use canvas::proto::{self, FrameReader};
use canvas::{Dims, Replica};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let dims = Dims { width: 16, height: 8 };
    let mut r = Replica::with_limits(dims, Duration::from_millis(10), 64);
    let t0 = Instant::now();
    // Half the inputs start from a valid snapshot at tick 1 (plain or zstd), so diffs, HEADs and SYNCED reach a
    // live replica.
    if data.first().is_some_and(|b| b & 1 == 1) {
        let mut snap = Vec::new();
        // Bit 1 picks the encoding: RLE (one colour), or zstd (a pattern RLE cannot shorten, zstd can).
        let px = if data[0] & 2 == 0 {
            let px = vec![3u8; dims.len()];
            proto::encode_snapshot(1, canvas::hash::full(&px), dims, &px, &mut snap);
            px
        } else {
            let px: Vec<u8> = (0..dims.len()).map(|i| (i % 5) as u8).collect();
            let encoding = proto::encode_snapshot_zstd(1, canvas::hash::full(&px), dims, &px, &mut snap);
            assert_eq!(encoding, proto::SnapshotEncoding::Zstd, "zstd is the smaller here");
            px
        };
        let m = proto::decode_server(&snap[4..]).expect("a valid snapshot");
        r.on_message(&m, t0).expect("the replica takes it");
        assert_eq!((r.tick(), r.pixels()), (Some(1), &px[..]));
    }
    let mut fr = FrameReader::with_max(1 << 16);
    // Records: a kind byte (even: datagram, odd: stream bytes), a length byte, then that many bytes.
    let mut rest = data;
    let mut step = 0u64;
    while let [kind, len, tail @ ..] = rest {
        let n = usize::from(*len).min(tail.len());
        let (chunk, next) = tail.split_at(n);
        rest = next;
        step += 1;
        let now = t0 + Duration::from_millis(step);
        if kind % 2 == 0 {
            let _ = r.on_datagram(chunk, now);
        } else {
            fr.push(chunk);
            while let Ok(Some(f)) = fr.pop() {
                if let Ok(m) = proto::decode_server(f) {
                    let _ = r.on_message(&m, now);
                }
            }
        }
        let _ = r.poll_sync(now);
        if r.tick().is_some() {
            assert_eq!(r.pixels().len(), dims.len());
            assert_eq!(r.hash(), canvas::hash::full(r.pixels()), "hash out of step with the pixels");
        }
    }
});
