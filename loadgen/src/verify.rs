//! End-of-run verification: fetch the server's canvas over a fresh `canvas/1` connection and compare every
//! client's replica with it, re-fetching for the ones that differ until they match or time runs out.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use canvas::proto::{self, ClientMsg, FrameReader, ServerMsg, NO_TICK};
use canvas::{hash, Dims, Replica};

use crate::client::{ReplicaSlot, Slot, Status};

/// Pause between two comparisons of replicas that still differ.
pub const RECHECK_EVERY: Duration = Duration::from_millis(500);
/// How many differing replicas are described in the summary.
const MAX_EXAMPLES: usize = 5;

/// The server's canvas at a tick.
#[derive(Debug, Clone)]
pub struct Truth {
    /// Tick the pixels are at (the snapshot's, or the last DIFF's that followed it).
    pub tick: u64,
    /// Dimensions.
    pub dims: Dims,
    /// The pixels.
    pub pixels: Vec<u8>,
    /// Whether the pixels hash to what the server announced for that tick.
    pub hash_ok: bool,
}

/// Fetch the canvas: connect, send `SYNC{NO_TICK}`, read WELCOME, SNAPSHOT, DIFF* up to SYNCED.
pub async fn fetch(
    endpoint: &quinn::Endpoint,
    config: &quinn::ClientConfig,
    addr: SocketAddr,
    server_name: &str,
    timeout: Duration,
    sync_flags: u8,
) -> Result<Truth, String> {
    let conn = tokio::time::timeout(timeout, async {
        endpoint
            .connect_with(config.clone(), addr, server_name)
            .map_err(|e| e.to_string())?
            .await
            .map_err(|e| e.to_string())
    })
    .await
    .map_err(|_| format!("no handshake within {timeout:?}"))??;
    let r = tokio::time::timeout(timeout, read_canvas(&conn, sync_flags))
        .await
        .unwrap_or_else(|_| Err(format!("no full snapshot within {timeout:?}")));
    conn.close(0u32.into(), b"verify done");
    r
}

async fn read_canvas(conn: &quinn::Connection, sync_flags: u8) -> Result<Truth, String> {
    let (mut send, mut recv) = conn.open_bi().await.map_err(|e| e.to_string())?;
    let mut hello = Vec::new();
    proto::encode_client(&ClientMsg::Sync { have_tick: NO_TICK, flags: sync_flags }, &mut hello);
    send.write_all(&hello).await.map_err(|e| e.to_string())?;
    let mut fr = FrameReader::new();
    let mut dims: Option<Dims> = None;
    let mut pixels = Vec::new();
    let mut at: Option<(u64, u64)> = None; // (tick, announced hash)
    loop {
        let chunk = recv
            .read_chunk(1 << 20, true)
            .await
            .map_err(|e| e.to_string())?
            .ok_or("server finished the stream")?;
        fr.push(&chunk.bytes);
        while let Some(f) = fr.pop().map_err(|e| e.to_string())? {
            match proto::decode_server(f).map_err(|e| e.to_string())? {
                ServerMsg::Welcome(w) => {
                    dims = Some(w.dims);
                    pixels = vec![0; w.dims.len()];
                }
                ServerMsg::Snapshot { tick, hash, dims: d, encoding, data } => {
                    if dims != Some(d) {
                        return Err(format!("SNAPSHOT dimensions {d:?} differ from WELCOME {dims:?}"));
                    }
                    proto::decode_snapshot_body(encoding, data, &mut pixels).map_err(|e| e.to_string())?;
                    at = Some((tick, hash));
                }
                ServerMsg::Diff(d) => {
                    if at.is_some_and(|(t, _)| d.tick > t) {
                        for (i, c) in d.entries() {
                            *pixels.get_mut(i as usize).ok_or(format!("DIFF index {i} out of range"))? = c;
                        }
                        at = Some((d.tick, d.hash));
                    }
                }
                ServerMsg::Synced { .. } => {
                    let (tick, h) = at.ok_or("SYNCED before any SNAPSHOT")?;
                    let dims = dims.expect("a snapshot implies a welcome");
                    return Ok(Truth { tick, dims, hash_ok: hash::full(&pixels) == h, pixels });
                }
                ServerMsg::Ack { .. } | ServerMsg::Reject { .. } => {}
            }
        }
    }
}

/// A replica that did not match.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Mismatch {
    /// Client index.
    pub client: usize,
    /// The replica's tick (canvas/1).
    pub replica_tick: Option<u64>,
    /// Pixels that differ from the last fetched canvas.
    pub differing_pixels: usize,
    /// A SYNC sent and not answered yet (this and the next three say why a replica may be behind).
    pub sync_outstanding: bool,
    /// Ticks buffered ahead of the replica (waiting for a missing part or an earlier tick).
    pub pending_ticks: usize,
    /// The newest tick the replica knows the server has and it lacks.
    pub behind_target: Option<u64>,
    /// SYNCs this replica sent.
    pub syncs: u64,
}

/// Outcome of the verification.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Verdict {
    /// Clients still connected with a whole replica.
    pub checked: usize,
    /// Those equal to a fetched canvas.
    pub matching: usize,
    /// Tick of the last fetched canvas.
    pub snapshot_tick: Option<u64>,
    /// The fetched canvas hashed to what the server announced (false is a server bug).
    pub snapshot_hash_ok: Option<bool>,
    /// Canvases fetched.
    pub fetches: usize,
    /// Why the canvas could not be fetched (the last error), if it never could.
    pub error: Option<String>,
    /// A few replicas that still differ.
    pub mismatches: Vec<Mismatch>,
}

fn candidate(slot: &Slot) -> bool {
    slot.status() == Status::Open && slot.replica().synced_pixels().is_some()
}

/// An open client whose replica exists but holds no whole canvas yet (its join snapshot is still on the
/// way, e.g. over a lossy path): the check waits for it too, instead of leaving it out.
fn joining(slot: &Slot) -> bool {
    slot.status() == Status::Open && {
        let r = slot.replica();
        !matches!(*r, ReplicaSlot::None) && r.synced_pixels().is_none()
    }
}

/// How long one fetch may take when other `--failover` targets remain to be tried.
const FAILOVER_FETCH: Duration = Duration::from_secs(3);

/// Compare replicas with fetched canvases until all match or `deadline`.
pub async fn verify(
    slots: &[std::sync::Arc<Slot>],
    endpoint: &quinn::Endpoint,
    config: &quinn::ClientConfig,
    targets: &[(SocketAddr, String)],
    deadline: Instant,
    sync_flags: u8,
) -> Verdict {
    let mut v = Verdict::default();
    // The first target that answers (`--failover`: every target serves the same canvas); on an error
    // the next one.
    let mut at = 0;
    let mut matched = vec![false; slots.len()];
    let mut last: Option<Truth> = None;
    loop {
        let left = deadline.saturating_duration_since(Instant::now()).max(Duration::from_secs(1));
        let (addr, server_name) = &targets[at];
        // With other targets to try, one that does not answer gets a few seconds, not the whole budget.
        let left = if targets.len() > 1 { left.min(FAILOVER_FETCH) } else { left };
        match fetch(endpoint, config, *addr, server_name, left, sync_flags).await {
            Ok(truth) => {
                v.fetches += 1;
                v.error = None;
                for (i, slot) in slots.iter().enumerate() {
                    if !matched[i] && candidate(slot) {
                        matched[i] = slot.replica().synced_pixels() == Some(&truth.pixels[..]);
                    }
                }
                last = Some(truth);
            }
            Err(e) => {
                v.error = Some(format!("{addr}: {e}"));
                at = (at + 1) % targets.len();
            }
        }
        let pending = slots.iter().enumerate().any(|(i, s)| !matched[i] && (candidate(s) || joining(s)));
        if (last.is_some() && !pending) || Instant::now() + RECHECK_EVERY >= deadline {
            break;
        }
        tokio::time::sleep(RECHECK_EVERY).await;
    }
    for (i, slot) in slots.iter().enumerate() {
        if !candidate(slot) {
            continue;
        }
        v.checked += 1;
        if matched[i] {
            v.matching += 1;
        } else if let (Some(t), true) = (&last, v.mismatches.len() < MAX_EXAMPLES) {
            let rep = slot.replica();
            let px = rep.synced_pixels().unwrap_or(&[]);
            let differing = if px.len() == t.pixels.len() {
                px.iter().zip(&t.pixels).filter(|(a, b)| a != b).count()
            } else {
                t.pixels.len()
            };
            let r = rep.canvas1();
            v.mismatches.push(Mismatch {
                client: i,
                replica_tick: rep.tick(),
                differing_pixels: differing,
                sync_outstanding: r.is_some_and(Replica::sync_outstanding),
                pending_ticks: r.map_or(0, Replica::pending_ticks),
                behind_target: r.and_then(Replica::behind_target),
                syncs: r.map_or(0, |r| r.stats().syncs),
            });
        }
    }
    if let Some(t) = &last {
        v.snapshot_tick = Some(t.tick);
        v.snapshot_hash_ok = Some(t.hash_ok);
    }
    v
}
