//! The AF_XDP backend's raw-frame parser: any bytes, never a panic; what it accepts is self-consistent.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(u) = datapath::frame::parse(data) {
        // The payload it reports lies inside the frame.
        assert!(u.payload.start <= u.payload.end && u.payload.end <= data.len());
    }
});
