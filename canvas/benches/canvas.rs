//! Canvas core micro-benchmarks: pixel application and tick closing, diff and snapshot encoding for both
//! protocols (canvas/1 plain and zstd), a client's join (a replica installing a snapshot), the canvas/1
//! replica applying a split tick, and the full hash.
//!
//! Every group sets a throughput, so criterion prints per-element (or per-byte) rates next to the times.
//! Inputs come from a seeded `SmallRng`, so runs are comparable.

use std::hint::black_box;
use std::time::{Duration, Instant};

use canvas::proto::{self, ServerMsg, SnapshotEncoding};
use canvas::{hash, legacy, Canvas, Datagrams, Dims, Replica};
use criterion::measurement::WallTime;
use criterion::{criterion_group, criterion_main, BenchmarkGroup, BenchmarkId, Criterion, Throughput};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

const DIMS: Dims = Dims { width: 1000, height: 1000 };
/// The predecessor's broadcast datagram size.
const MAX_DGRAM: usize = legacy::MAX_DATAGRAM;

fn rng(seed: u64) -> SmallRng {
    SmallRng::seed_from_u64(seed)
}

fn canvas() -> Canvas<Vec<u8>> {
    Canvas::new(DIMS, vec![0; DIMS.len()]).expect("canvas")
}

/// `n` distinct pixel indices in random order.
fn distinct(r: &mut SmallRng, n: usize) -> Vec<u32> {
    rand::seq::index::sample(r, DIMS.len(), n).into_iter().map(|i| i as u32).collect()
}

/// A tick diff as `Canvas::end_tick` produces it: `n` distinct indices ascending, random colors.
fn diff_entries(r: &mut SmallRng, n: usize) -> Vec<(u32, u8)> {
    let mut idx = distinct(r, n);
    idx.sort_unstable();
    idx.into_iter().map(|i| (i, r.random())).collect()
}

/// A 1000x1000 canvas whose pixels are random with probability `pct`/100, 0 otherwise.
fn pixels(r: &mut SmallRng, pct: u32) -> Vec<u8> {
    (0..DIMS.len()).map(|_| if r.random_ratio(pct, 100) { r.random() } else { 0 }).collect()
}

fn configure<'a>(c: &'a mut Criterion, name: &str) -> BenchmarkGroup<'a, WallTime> {
    let mut g = c.benchmark_group(name);
    g.sample_size(20).warm_up_time(Duration::from_millis(500)).measurement_time(Duration::from_secs(2));
    g
}

/// 10k random writes (random pixel, random color) applied in order, then the tick closed.
fn apply(c: &mut Criterion) {
    const N: usize = 10_000;
    let mut r = rng(1);
    let writes: Vec<(u32, u8)> = (0..N).map(|_| (r.random_range(0..DIMS.len() as u32), r.random())).collect();
    let mut cv = canvas();
    let mut out = Vec::with_capacity(N);
    // Shifting every color by one per iteration makes every write a real change (the pixel holds the
    // previous iteration's color), so the dirty tracking and hash update run each time.
    let mut shift = 0u8;
    let mut g = configure(c, "canvas_apply");
    g.throughput(Throughput::Elements(N as u64));
    g.bench_function("apply_10k_random_then_end_tick", |b| {
        b.iter(|| {
            shift = shift.wrapping_add(1);
            for &(i, color) in &writes {
                cv.apply(i, color.wrapping_add(shift));
            }
            out.clear();
            cv.end_tick(&mut out);
            black_box(out.len())
        })
    });
    g.finish();
}

/// `end_tick` alone (sort of the touched list, dirty-bit reset, diff output) with n touched pixels; the
/// writes that touch them are applied outside the timed region.
fn end_tick(c: &mut Criterion) {
    let mut g = configure(c, "end_tick");
    for n in [1_000usize, 10_000, 100_000] {
        let idx = distinct(&mut rng(2), n);
        let mut cv = canvas();
        let mut out = Vec::with_capacity(n);
        let mut color = 0u8;
        g.throughput(Throughput::Elements(n as u64));
        g.bench_with_input(BenchmarkId::from_parameter(format!("{n}_touched")), &n, |b, &n| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    color = color.wrapping_add(1); // differs from every pixel's current color
                    for &i in &idx {
                        cv.apply(i, color);
                    }
                    assert_eq!(cv.touched(), n);
                    out.clear();
                    let t = Instant::now();
                    cv.end_tick(black_box(&mut out));
                    total += t.elapsed();
                    assert_eq!(out.len(), n);
                }
                total
            })
        });
    }
    g.finish();
}

/// A tick's diff encoded for broadcast: legacy 5-byte entries and canvas/1 DIFF_PARTs, 1200-byte datagrams.
/// The output batch is allocated per call, as `Publication::encode` does.
fn encode_diff(c: &mut Criterion) {
    let mut g = configure(c, "encode_diff");
    for n in [1_000usize, 10_000] {
        let entries = diff_entries(&mut rng(3), n);
        g.throughput(Throughput::Elements(n as u64));
        g.bench_with_input(BenchmarkId::new("legacy", n), &entries, |b, e| {
            b.iter(|| {
                let mut d = Datagrams::new();
                legacy::encode_diff(black_box(e), MAX_DGRAM, &mut d);
                d
            })
        });
        g.bench_with_input(BenchmarkId::new("proto_parts", n), &entries, |b, e| {
            b.iter(|| {
                let mut d = Datagrams::new();
                proto::encode_diff_parts(7, 6, 0x1234, black_box(e), MAX_DGRAM, &mut d);
                d
            })
        });
    }
    g.finish();
}

/// Whole-canvas snapshots (1000x1000) that are 0%, 10% and 100% random: legacy RLE datagrams and the
/// canvas/1 SNAPSHOT frame (RLE or raw, whichever is smaller). Throughput is canvas bytes.
fn encode_snapshot(c: &mut Criterion) {
    let mut g = configure(c, "encode_snapshot");
    g.throughput(Throughput::Bytes(DIMS.len() as u64));
    for pct in [0u32, 10, 100] {
        let px = pixels(&mut rng(4), pct);
        let h = hash::full(&px);
        g.bench_with_input(BenchmarkId::new("legacy", format!("{pct}pct_random")), &px, |b, px| {
            b.iter(|| {
                let mut d = Datagrams::new();
                legacy::encode_snapshot(black_box(px), MAX_DGRAM, &mut d);
                d
            })
        });
        g.bench_with_input(BenchmarkId::new("proto", format!("{pct}pct_random")), &px, |b, px| {
            b.iter(|| {
                let mut out = Vec::new();
                proto::encode_snapshot(9, h, DIMS, black_box(px), &mut out);
                out
            })
        });
        g.bench_with_input(BenchmarkId::new("proto_zstd", format!("{pct}pct_random")), &px, |b, px| {
            b.iter(|| {
                let mut out = Vec::new();
                proto::encode_snapshot_zstd(9, h, DIMS, black_box(px), &mut out);
                out
            })
        });
    }
    g.finish();
}

/// A client's join: a fresh replica installs a 1000x1000 snapshot (decode and hash check), in the plain
/// encoding (RLE or raw, whichever the server sends) and in zstd, on a canvas painted 0, 20 and 100 % with
/// 32 colours. Prints the encoded sizes once.
fn join(c: &mut Criterion) {
    let mut g = configure(c, "join");
    g.throughput(Throughput::Bytes(DIMS.len() as u64));
    for pct in [0u32, 20, 100] {
        let mut r = rng(8);
        let px: Vec<u8> = (0..DIMS.len())
            .map(|_| if r.random_ratio(pct, 100) { r.random_range(0..32) } else { 0 })
            .collect();
        let h = hash::full(&px);
        let (mut plain, mut zstd) = (Vec::new(), Vec::new());
        proto::encode_snapshot(9, h, DIMS, &px, &mut plain);
        proto::encode_snapshot_zstd(9, h, DIMS, &px, &mut zstd);
        eprintln!("join {pct}% painted: plain {} bytes, zstd {} bytes", plain.len(), zstd.len());
        for (name, frame) in [("plain", &plain), ("zstd", &zstd)] {
            let m = proto::decode_server(&frame[4..]).expect("a snapshot");
            g.bench_with_input(BenchmarkId::new(name, format!("{pct}pct_32colours")), &m, |b, m| {
                b.iter(|| {
                    let mut rep = Replica::new(DIMS);
                    rep.on_message(black_box(m), Instant::now()).expect("snapshot");
                    assert_eq!(rep.hash(), h);
                    rep
                })
            });
        }
    }
    g.finish();
}

/// A 10k-entry tick arriving as DIFF_PART datagrams (43 of them at 1200 bytes), fed in order to a replica
/// that chains it: buffering, reassembly, application and the hash check. Successive iterations alternate
/// between setting the entries and clearing them again, so every tick applies onto a known state; the
/// parts are encoded outside the timed region.
fn replica(c: &mut Criterion) {
    const N: usize = 10_000;
    let set = diff_entries(&mut rng(5), N);
    let clear: Vec<(u32, u8)> = set.iter().map(|&(i, _)| (i, 0)).collect();
    let zeros = vec![0u8; DIMS.len()];
    let h_clear = hash::full(&zeros);
    let mut px = zeros.clone();
    for &(i, color) in &set {
        px[i as usize] = color;
    }
    let h_set = hash::full(&px);
    let mut rep = Replica::new(DIMS);
    let snap = ServerMsg::Snapshot {
        tick: 0,
        hash: h_clear,
        dims: DIMS,
        encoding: SnapshotEncoding::Raw,
        data: &zeros,
    };
    rep.on_message(&snap, Instant::now()).expect("snapshot");
    let mut tick = 0u64;
    let mut g = configure(c, "replica");
    g.throughput(Throughput::Elements(N as u64));
    g.bench_function("on_datagram_10k_entry_tick", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let (entries, h) = if tick.is_multiple_of(2) { (&set, h_set) } else { (&clear, h_clear) };
                let mut parts = Datagrams::new();
                proto::encode_diff_parts(tick + 1, tick, h, entries, MAX_DGRAM, &mut parts);
                let now = Instant::now();
                let t = Instant::now();
                for d in parts.iter() {
                    rep.on_datagram(black_box(d), now).expect("valid part");
                }
                total += t.elapsed();
                tick += 1;
                assert_eq!(rep.tick(), Some(tick), "the tick chained");
                assert_eq!(rep.hash(), h, "and hashes as the server says");
            }
            total
        })
    });
    g.finish();
    assert_eq!(rep.stats().hash_mismatches, 0);
}

/// The from-scratch hash of a 1 MB (1000x1000) canvas.
fn hash_full(c: &mut Criterion) {
    let px = pixels(&mut rng(6), 100);
    let mut g = configure(c, "hash");
    g.throughput(Throughput::Bytes(px.len() as u64));
    g.bench_function("full_1MB", |b| b.iter(|| hash::full(black_box(&px))));
    let table = hash::PrefixTable::for_len(px.len());
    g.bench_function("of_pixels_1MB", |b| b.iter(|| table.of_pixels(black_box(&px))));
    g.finish();
}

criterion_group!(benches, apply, end_tick, encode_diff, encode_snapshot, join, replica, hash_full);
criterion_main!(benches);
