//! The placement log's readers: the record decoder over a whole log body, the header and snapshot
//! decoders. Never a panic; what decodes re-encodes to the same bytes.
#![no_main]
use canvas::Dims;
use libfuzzer_sys::fuzz_target;
use placelog::format::{self, Next, Record};

fuzz_target!(|data: &[u8]| {
    let dims = Dims { width: 16, height: 8 };
    let _ = format::parse_log_header(data);
    let _ = format::decode_snapshot(data, dims);
    let mut rest = data;
    loop {
        match format::next_record(rest, dims) {
            Next::Record(r, n) => {
                let mut again = Vec::new();
                match &r {
                    Record::Changes(b) => format::encode_changes(b.tick, &b.changes, &mut again),
                    Record::Reserve(t) => format::encode_reserve(*t, &mut again),
                }
                assert_eq!(again, &rest[..n], "{r:?} re-encodes differently");
                rest = &rest[n..];
            }
            _ => break,
        }
    }
});
