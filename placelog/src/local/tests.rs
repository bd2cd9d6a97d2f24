use super::*;
use rand::{Rng, SeedableRng};

const D: Dims = Dims { width: 16, height: 8 };

fn tmpdir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("placelog-{name}-{}", std::process::id()));
    let _ = fs::remove_dir_all(&d);
    d
}

/// Commit `ticks` random ticks (some empty) starting after `from`, mirroring them into `model`.
fn run(log: &mut LocalLog, model: &mut [u8], from: u64, ticks: u64, seed: u64) -> u64 {
    let mut rng = rand::rngs::SmallRng::seed_from_u64(seed);
    for t in from + 1..=from + ticks {
        let n = if rng.random_bool(0.3) { 0 } else { rng.random_range(1..20) };
        let mut changes: Vec<(u32, u8)> =
            (0..n).map(|_| (rng.random_range(0..D.len() as u32), rng.random())).collect();
        changes.sort_by_key(|c| c.0);
        changes.dedup_by_key(|c| c.0);
        for &(i, c) in &changes {
            model[i as usize] = c;
        }
        log.commit(t, &changes).unwrap();
    }
    from + ticks
}

#[test]
fn restore_is_exact_and_tick_numbers_are_never_reused() {
    let dir = tmpdir("exact");
    let mut model = vec![0u8; D.len()];
    let (mut log, r) = LocalLog::open(&dir, D, SyncPolicy::EveryTick).unwrap();
    assert_eq!((r.tick, r.next_tick, r.snapshot_tick), (0, 1, None));
    let last = run(&mut log, &mut model, 0, 50, 1);
    drop(log);
    let (mut log, r) = LocalLog::open(&dir, D, SyncPolicy::EveryTick).unwrap();
    assert_eq!(r.pixels, model);
    // The first session reserved ticks up to 1 + RESERVE_AHEAD: the next one starts after them.
    assert_eq!(r.next_tick, 1 + RESERVE_AHEAD + 1);
    assert!(r.notes.is_empty(), "{:?}", r.notes);
    let last2 = run(&mut log, &mut model, r.next_tick - 1, 30, 2);
    assert!(last2 > last);
    drop(log);
    let (log, r) = LocalLog::open(&dir, D, SyncPolicy::Os).unwrap();
    assert_eq!(r.pixels, model);
    assert_eq!(Reader::new(&dir).dims().unwrap(), D);
    // The seam's reader (`Reader` underneath, as `server replay` uses it): everything after a tick, in order.
    let mut folded = vec![0u8; D.len()];
    log.read_after(0)
        .unwrap()
        .iter()
        .for_each(|b| b.changes.iter().for_each(|&(i, c)| folded[i as usize] = c));
    assert_eq!(folded, model);
    let second = log.read_after(last).unwrap();
    assert!(!second.is_empty() && second.iter().all(|b| b.tick > last && b.tick <= last2));
    fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_torn_last_record_is_cut_off_and_reported_at_every_length() {
    let dir = tmpdir("torn");
    let (mut log, _) = LocalLog::open(&dir, D, SyncPolicy::EveryTick).unwrap();
    let mut model = vec![0u8; D.len()];
    run(&mut log, &mut model, 0, 20, 3);
    let before = model.clone();
    let len_before = fs::metadata(dir.join(LOG_FILE)).unwrap().len();
    log.commit(21, &[(5, 77), (6, 78), (100, 79)]).unwrap();
    drop(log);
    let full = fs::read(dir.join(LOG_FILE)).unwrap();
    for cut in len_before + 1..full.len() as u64 {
        fs::write(dir.join(LOG_FILE), &full[..cut as usize]).unwrap();
        let (_, r) = LocalLog::open(&dir, D, SyncPolicy::EveryTick).unwrap();
        assert_eq!(r.pixels, before, "cut at {cut}");
        assert_eq!(r.notes.len(), 1, "cut at {cut}: {:?}", r.notes);
        assert!(r.notes[0].contains("incomplete last record"), "{}", r.notes[0]);
        assert_eq!(fs::metadata(dir.join(LOG_FILE)).unwrap().len(), len_before, "truncated to the good part");
    }
    // Whole again: the last tick is back.
    fs::write(dir.join(LOG_FILE), &full).unwrap();
    let (mut log, r) = LocalLog::open(&dir, D, SyncPolicy::EveryTick).unwrap();
    assert_eq!(r.pixels[100], 79);
    // Appending after a restore that cut a tail leaves a log that restores.
    log.commit(r.next_tick, &[(1, 9)]).unwrap();
    drop(log);
    assert_eq!(LocalLog::open(&dir, D, SyncPolicy::EveryTick).unwrap().1.pixels[1], 9);
    fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn damage_before_the_end_is_refused_with_the_offset() {
    let dir = tmpdir("damage");
    let (mut log, _) = LocalLog::open(&dir, D, SyncPolicy::EveryTick).unwrap();
    run(&mut log, &mut vec![0u8; D.len()], 0, 20, 4);
    drop(log);
    let mut bytes = fs::read(dir.join(LOG_FILE)).unwrap();
    let at = format::LOG_HEADER + 30;
    bytes[at] ^= 0x40;
    fs::write(dir.join(LOG_FILE), &bytes).unwrap();
    let e = LocalLog::open(&dir, D, SyncPolicy::EveryTick).unwrap_err();
    match &e {
        LogError::Corrupt { offset, .. } => assert!(*offset <= at as u64, "{e}"),
        _ => panic!("{e}"),
    }
    assert!(e.to_string().contains("truncate -s"), "{e}");
    // Nothing was changed on disk.
    assert_eq!(fs::read(dir.join(LOG_FILE)).unwrap(), bytes);
    fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn snapshots_bound_the_replay_and_a_damaged_one_is_skipped_aloud() {
    let dir = tmpdir("snap");
    let (mut log, _) = LocalLog::open(&dir, D, SyncPolicy::EveryTick).unwrap();
    let mut model = vec![0u8; D.len()];
    let mut t = 0;
    for round in 0..3 {
        t = run(&mut log, &mut model, t, 10, 10 + round);
        log.snapshot(t, canvas::hash::full(&model), &model).unwrap();
    }
    t = run(&mut log, &mut model, t, 5, 20);
    drop(log);
    assert_eq!(snapshots(&dir).unwrap().len(), KEEP_SNAPSHOTS);
    let (_, r) = LocalLog::open(&dir, D, SyncPolicy::EveryTick).unwrap();
    assert_eq!((r.snapshot_tick, r.tick), (Some(30), t));
    assert!(r.replayed <= 5);
    assert_eq!(r.pixels, model);
    // The ticks after the snapshot come back with the hash after each, ending at the canvas's.
    assert_eq!(r.tail.len() as u64, r.replayed);
    assert!(r.tail.iter().all(|t| t.tick > 30) && r.tail[0].base <= 30);
    assert!(r.tail.windows(2).all(|w| w[1].base == w[0].tick), "chained");
    assert_eq!(r.tail.last().map(|t| t.hash), Some(canvas::hash::full(&model)));
    assert_eq!(r.last_change, r.tail.last().unwrap().tick);
    // Damage the newest snapshot: the older one plus the log give the same canvas, and it is said.
    let newest = dir.join(snapshot_name(30));
    let mut b = fs::read(&newest).unwrap();
    let n = b.len();
    b[n - 1] ^= 1;
    fs::write(&newest, b).unwrap();
    let (_, r) = LocalLog::open(&dir, D, SyncPolicy::EveryTick).unwrap();
    assert_eq!(r.snapshot_tick, Some(20));
    assert_eq!(r.pixels, model);
    assert!(r.notes.iter().any(|n| n.contains("damaged")), "{:?}", r.notes);
    fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn one_server_per_directory_and_canvas_size_is_checked() {
    let dir = tmpdir("lock");
    let (log, _) = LocalLog::open(&dir, D, SyncPolicy::EveryTick).unwrap();
    let e = LocalLog::open(&dir, D, SyncPolicy::EveryTick).unwrap_err().to_string();
    assert!(e.contains(&format!("pid {}", std::process::id())), "{e}");
    drop(log);
    let e =
        LocalLog::open(&dir, Dims { width: 8, height: 8 }, SyncPolicy::EveryTick).unwrap_err().to_string();
    assert!(e.contains("--width 16 --height 8"), "{e}");
    fs::remove_dir_all(&dir).unwrap();
}
