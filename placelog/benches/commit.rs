//! What the durability promise costs the master per tick: `LocalLog::commit` of one tick's change set with
//! `fdatasync` (the every-tick promise) and without (written to the page cache), for a quiet and a busy
//! tick, in a data directory under the target dir (the disk the server's data directory would share here).
//! Run: `cargo bench -p placelog --bench commit`.

use std::hint::black_box;

use canvas::Dims;
use criterion::{criterion_group, criterion_main, Criterion};
use placelog::local::LocalLog;
use placelog::{PlacementLog, SyncPolicy};

fn bench(c: &mut Criterion) {
    let dims = Dims { width: 1000, height: 1000 };
    let base = std::env::current_exe()
        .unwrap()
        .parent()
        .unwrap()
        .join(format!("placelog-bench-{}", std::process::id()));
    let mut g = c.benchmark_group("commit");
    g.sample_size(30);
    for (name, sync) in [("fdatasync", SyncPolicy::EveryTick), ("page cache", SyncPolicy::Os)] {
        for changes in [10usize, 2_000] {
            let dir = base.join(format!("{}-{changes}", name.replace(' ', "-")));
            let _ = std::fs::remove_dir_all(&dir);
            let (mut log, r) = LocalLog::open(&dir, dims, sync).unwrap();
            let mut tick = r.next_tick;
            let set: Vec<(u32, u8)> =
                (0..changes as u32).map(|i| (i * 499 % 1_000_000, (i % 32) as u8)).collect();
            g.bench_function(format!("{name}, {changes} changes"), |b| {
                b.iter(|| {
                    log.commit(black_box(tick), black_box(&set)).unwrap();
                    tick += 1;
                })
            });
            drop(log);
            let _ = std::fs::remove_dir_all(&dir);
        }
    }
    g.finish();
    let _ = std::fs::remove_dir_all(&base);
}

criterion_group!(benches, bench);
criterion_main!(benches);
