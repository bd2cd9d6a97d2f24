//! The legacy protocol: the write decoder, the datagram classifier and the legacy replica on any datagrams.
#![no_main]
use canvas::legacy::{self, LegacyReplica};
use canvas::Dims;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = legacy::decode_write(data);
    let mut r = LegacyReplica::new(Dims { width: 64, height: 32 });
    // Datagrams separated by 0xff 0xfe.
    for d in data.split(|&b| b == 0xfe) {
        let _ = legacy::classify(d);
        let _ = legacy::diff_entries(d).count();
        r.on_datagram(d, |i, _| assert!(i < 64 * 32, "entry {i} outside the canvas"));
    }
});
