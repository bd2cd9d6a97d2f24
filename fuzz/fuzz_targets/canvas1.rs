//! canvas/1 decoders: control-stream frames through the `FrameReader` (split at a fuzzer-chosen point),
//! every message decoder, the DATAGRAM decoders. Never a panic; a client message that decodes re-encodes to
//! the same bytes.
#![no_main]
use canvas::proto::{self, FrameReader};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&cut, rest)) = data.split_first() else { return };
    let cut = usize::from(cut).min(rest.len());
    for max in [proto::MAX_CLIENT_FRAME, 1 << 16] {
        let mut r = FrameReader::with_max(max);
        r.push(&rest[..cut]);
        r.push(&rest[cut..]);
        while let Ok(Some(frame)) = r.pop() {
            if let Ok(m) = proto::decode_client(frame) {
                let mut again = Vec::new();
                proto::encode_client(&m, &mut again);
                assert_eq!(&again[4..], frame, "{m:?} re-encodes differently");
            }
            let _ = proto::decode_server(frame);
        }
    }
    let _ = proto::decode_client(rest);
    let _ = proto::decode_server(rest);
    let _ = proto::decode_datagram(rest);
    let _ = proto::decode_diff_part(rest);
});
