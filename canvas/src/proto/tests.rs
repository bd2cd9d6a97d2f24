//! Unit tests of the canvas/1 codec: round trips, malformed input, 1-byte stream chunking.

use super::*;

fn frames(bytes: &[u8]) -> Vec<Vec<u8>> {
    let mut r = FrameReader::new();
    // Feed one byte at a time: framing must not depend on stream chunking.
    let mut out = Vec::new();
    for b in bytes {
        r.push(std::slice::from_ref(b));
        while let Some(f) = r.pop().unwrap() {
            out.push(f.to_vec());
        }
    }
    assert_eq!(r.buffered(), 0);
    out
}

#[test]
fn client_messages_roundtrip() {
    let msgs = [
        ClientMsg::Write { id: 7, pixel: Pixel { x: 1, y: 999, color: 255 } },
        ClientMsg::Sync { have_tick: NO_TICK, flags: 0 },
        ClientMsg::Sync { have_tick: 42, flags: SYNC_ZSTD },
        ClientMsg::Sync { have_tick: 43, flags: 0x80 },
    ];
    let mut wire = Vec::new();
    for m in &msgs {
        encode_client(m, &mut wire);
    }
    let back: Vec<_> = frames(&wire).iter().map(|f| decode_client(f).unwrap()).collect();
    assert_eq!(back, msgs);
    // WRITE is 4 + 2 + 9 bytes on the wire.
    let mut one = Vec::new();
    encode_client(&msgs[0], &mut one);
    assert_eq!(one.len(), 15);
}

#[test]
fn server_messages_roundtrip() {
    let dims = Dims { width: 4, height: 2 };
    let w = Welcome { dims, palette: 256, tick_ms: 100, cooldown_ms: 0, tick: 9 };
    let mut wire = Vec::new();
    encode_welcome(&w, &mut wire);
    encode_ack(3, 10, &mut wire);
    encode_reject(4, RejectReason::Cooldown, 1500, &mut wire);
    encode_snapshot(10, 77, dims, &[0, 0, 0, 0, 0, 0, 1, 1], &mut wire);
    encode_snapshot(10, 77, dims, &[0, 1, 2, 3, 4, 5, 6, 7], &mut wire);
    encode_diff(11, 10, 99, &[(1, 2), (7, 3)], &mut wire);
    encode_synced(11, &mut wire);
    let fs = frames(&wire);
    let got: Vec<_> = fs.iter().map(|f| decode_server(f).unwrap()).collect();
    assert_eq!(got[0], ServerMsg::Welcome(w));
    assert_eq!(got[1], ServerMsg::Ack { id: 3, tick: 10 });
    assert_eq!(got[2], ServerMsg::Reject { id: 4, reason: RejectReason::Cooldown, retry_after_ms: 1500 });
    let ServerMsg::Snapshot { encoding: SnapshotEncoding::Rle, data, .. } = got[3] else { panic!() };
    let mut px = [9u8; 8];
    decode_snapshot_body(SnapshotEncoding::Rle, data, &mut px).unwrap();
    assert_eq!(px, [0, 0, 0, 0, 0, 0, 1, 1]);
    let ServerMsg::Snapshot { encoding: SnapshotEncoding::Raw, .. } = got[4] else { panic!() };
    let ServerMsg::Diff(d) = got[5] else { panic!() };
    assert_eq!((d.tick, d.base, d.hash), (11, 10, 99));
    assert_eq!(d.entries().collect::<Vec<_>>(), vec![(1, 2), (7, 3)]);
    assert_eq!(got[6], ServerMsg::Synced { tick: 11 });
}

#[test]
fn diff_parts_split_and_decode() {
    let entries: Vec<(u32, u8)> = (0..1000).map(|i| (i * 3, (i % 251) as u8)).collect();
    let mut d = Datagrams::new();
    encode_diff_parts(5, 2, 1234, &entries, 1200, &mut d);
    let per = entries_per_part(1200);
    assert_eq!(per, 234);
    assert_eq!(d.len(), 1000usize.div_ceil(per));
    let mut back = Vec::new();
    for (i, g) in d.iter().enumerate() {
        assert!(g.len() <= 1200);
        let p = decode_diff_part(g).unwrap();
        assert_eq!((p.part as usize, p.parts as usize), (i, d.len()));
        assert_eq!((p.diff.tick, p.diff.base, p.diff.hash), (5, 2, 1234));
        back.extend(p.diff.entries());
    }
    assert_eq!(back, entries);
    let h = encode_head(77, 70, 88);
    assert_eq!(decode_datagram(&h), Ok(ServerDatagram::Head { tick: 77, last_change: 70, hash: 88 }));
    assert_eq!(decode_datagram(&encode_head(1, 2, 0)), Err(ProtoError::BadLength));
    assert!(matches!(decode_datagram(d.get(0).unwrap()), Ok(ServerDatagram::DiffPart(_))));
    assert_eq!(decode_datagram(&h[..25]), Err(ProtoError::Truncated));
    let mut none = Datagrams::new();
    encode_diff_parts(5, 2, 0, &[], 1200, &mut none);
    assert!(none.is_empty());
}

#[test]
fn malformed_input_is_an_error_not_a_panic() {
    assert_eq!(decode_client(&[]), Err(ProtoError::Truncated));
    assert_eq!(decode_client(&[2, ty::WRITE]), Err(ProtoError::BadVersion(2)));
    assert_eq!(decode_client(&[1, 0x7f]), Err(ProtoError::UnknownType(0x7f)));
    assert_eq!(decode_client(&[1, ty::WRITE, 0, 0]), Err(ProtoError::Truncated));
    assert_eq!(decode_client(&[1, ty::SYNC, 0, 0, 0, 0, 0, 0, 0, 0, 1, 1]), Err(ProtoError::BadLength));
    assert_eq!(decode_server(&[1, ty::REJECT, 0, 0, 0, 0, 99, 0, 0, 0, 0]), Err(ProtoError::BadReason(99)));
    let mut bad = vec![1, ty::DIFF_PART];
    bad.extend_from_slice(&[0; 24]);
    bad.extend_from_slice(&[1, 0, 1, 0]); // part 1 of 1
    assert_eq!(decode_diff_part(&bad), Err(ProtoError::BadPart));
    let mut r = FrameReader::new();
    r.push(&u32::MAX.to_le_bytes());
    assert!(matches!(r.pop(), Err(ProtoError::FrameTooLarge(_))));
    // Every prefix of every valid message either decodes or errors.
    let mut wire = Vec::new();
    encode_snapshot(1, 2, Dims { width: 3, height: 1 }, &[1, 2, 3], &mut wire);
    for n in 0..wire.len() {
        let _ = decode_server(&wire[LEN_PREFIX.min(n)..n]);
    }
}

/// A reader keeps a partial frame across releases and holds no buffer once everything was returned.
#[test]
fn a_drained_reader_holds_no_buffer() {
    let mut wire = Vec::new();
    encode_client(&ClientMsg::Sync { have_tick: 9, flags: 0 }, &mut wire);
    encode_client(&ClientMsg::Sync { have_tick: 10, flags: 0 }, &mut wire);
    let mut r = FrameReader::new();
    r.push(&wire[..20]); // the first frame (14 bytes) and part of the second
    assert_eq!(decode_client(r.pop().unwrap().unwrap()).unwrap(), ClientMsg::Sync { have_tick: 9, flags: 0 });
    assert_eq!(r.pop().unwrap(), None);
    r.release_if_drained();
    assert_eq!(r.buffered(), 6, "the partial frame is kept");
    r.push(&wire[20..]);
    assert_eq!(
        decode_client(r.pop().unwrap().unwrap()).unwrap(),
        ClientMsg::Sync { have_tick: 10, flags: 0 }
    );
    r.release_if_drained();
    assert_eq!(r.buffered(), 0);
    assert_eq!(r.buf.capacity(), 0, "nothing held while idle");
}

/// The SYNC flags byte is optional, present only when not 0: the 10-byte form is what servers before it
/// decode, and one message has one encoding.
#[test]
fn sync_flags_are_optional_and_canonical() {
    let mut wire = Vec::new();
    encode_client(&ClientMsg::Sync { have_tick: 5, flags: 0 }, &mut wire);
    assert_eq!(wire.len(), 4 + 10);
    let mut with = Vec::new();
    encode_client(&ClientMsg::Sync { have_tick: 5, flags: SYNC_ZSTD }, &mut with);
    assert_eq!(with.len(), 4 + 11);
    assert_eq!(with[4 + 10], SYNC_ZSTD);
    // A present flags byte of 0, or two flags bytes, is malformed.
    let mut zero = wire[4..].to_vec();
    zero.push(0);
    assert_eq!(decode_client(&zero), Err(ProtoError::BadLength));
    let mut two = with[4..].to_vec();
    two.push(1);
    assert_eq!(decode_client(&two), Err(ProtoError::BadLength));
}

/// A zstd snapshot decodes to the same pixels, is smaller than RLE/raw on a painted canvas, falls back to
/// the plain encoding when zstd is not smaller, and a body that decompresses to more or fewer pixels than
/// the canvas is refused without growing the output.
#[test]
fn zstd_snapshots_roundtrip_and_are_bounded() {
    let dims = Dims { width: 200, height: 100 };
    let mut px = vec![0u8; dims.len()];
    let mut x = 1u32;
    for i in (0..px.len()).step_by(5) {
        x = x.wrapping_mul(1_103_515_245).wrapping_add(12_345);
        px[i] = (x >> 16) as u8 % 32; // a fifth of the canvas painted, 32 colours
    }
    let (mut plain, mut z) = (Vec::new(), Vec::new());
    encode_snapshot(3, 4, dims, &px, &mut plain);
    encode_snapshot_zstd(3, 4, dims, &px, &mut z);
    assert!(z.len() * 2 < plain.len(), "zstd {} vs plain {}", z.len(), plain.len());
    let ServerMsg::Snapshot { tick: 3, hash: 4, encoding: SnapshotEncoding::Zstd, data, .. } =
        decode_server(&z[4..]).unwrap()
    else {
        panic!("a zstd snapshot");
    };
    let mut out = vec![9u8; dims.len()];
    decode_snapshot_body(SnapshotEncoding::Zstd, data, &mut out).unwrap();
    assert_eq!(out, px);
    // Too small and too large an output are refused.
    let mut short = vec![0u8; dims.len() - 1];
    assert_eq!(decode_snapshot_body(SnapshotEncoding::Zstd, data, &mut short), Err(ProtoError::BadSnapshot));
    let mut long = vec![0u8; dims.len() + 1];
    assert_eq!(decode_snapshot_body(SnapshotEncoding::Zstd, data, &mut long), Err(ProtoError::BadSnapshot));
    assert_eq!(
        decode_snapshot_body(SnapshotEncoding::Zstd, &data[..data.len() / 2], &mut out),
        Err(ProtoError::BadSnapshot)
    );
    // Three pixels: zstd's frame header alone is larger than raw, so the plain encoding is sent.
    let mut tiny = Vec::new();
    encode_snapshot_zstd(1, 2, Dims { width: 3, height: 1 }, &[1, 2, 3], &mut tiny);
    assert!(matches!(
        decode_server(&tiny[4..]).unwrap(),
        ServerMsg::Snapshot { encoding: SnapshotEncoding::Raw, .. }
    ));
}
