//! The cluster's canvas snapshots, in a JetStream object store bucket beside the stream.
//!
//! A node that joins or restarts loads the newest snapshot and applies the stream only after the position
//! it covers, instead of the whole stream. Nodes store one now and then ([`crate::Sequencer::offer_snapshot`]):
//! one object per stream (named after it), replaced each time, whose metadata says which stream position
//! the canvas is at and which stream it belongs to (the stream's creation time: a stream deleted and
//! created again under the same name does not inherit the old one's snapshots). The bytes are opaque here
//! (the server encodes and checks them); the object store adds a SHA-256 digest over them, checked on
//! every read.

use std::collections::HashMap;
use std::time::{Duration, SystemTime};

use async_nats::jetstream::object_store::{self, InfoErrorKind, ObjectMetadata, ObjectStore};
use async_nats::jetstream::{self, stream};
use tokio::io::AsyncReadExt;

/// Metadata key: the stream sequence number the canvas is at.
const SEQ: &str = "canvas-seq";
/// Metadata key: the stream's creation time (Unix nanoseconds), naming which stream the position is of.
const STREAM: &str = "canvas-stream-created";
/// Metadata key: the node that stored it (for people).
const NODE: &str = "canvas-node";

/// A snapshot of the canvas at a stream position.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Snapshot {
    /// The stream sequence number it covers: every message up to it, none after.
    pub seq: u64,
    /// The encoded canvas (the server's format).
    pub bytes: Vec<u8>,
}

/// The bucket holding the snapshots of stream `stream`.
pub fn bucket_name(stream: &str) -> String {
    format!("{stream}_SNAPSHOTS")
}

/// The stream's identity in snapshot metadata.
pub(crate) fn stream_id(info: &stream::Info) -> String {
    info.created.unix_timestamp_nanos().to_string()
}

/// Find the bucket or create it (file storage, `replicas` replicas).
pub(crate) async fn open_bucket(
    js: &jetstream::Context,
    stream: &str,
    replicas: usize,
) -> Result<ObjectStore, String> {
    let bucket = bucket_name(stream);
    if let Ok(s) = js.get_object_store(&bucket).await {
        return Ok(s);
    }
    js.create_object_store(object_store::Config {
        bucket: bucket.clone(),
        description: Some(format!("canvas snapshots of stream {stream}")),
        storage: stream::StorageType::File,
        num_replicas: replicas,
        ..Default::default()
    })
    .await
    .map_err(|e| format!("snapshot bucket {bucket}: {e}"))
}

/// The stream position an object's metadata names.
fn seq_of(info: &object_store::ObjectInfo) -> Option<u64> {
    info.metadata.get(SEQ).and_then(|s| s.parse().ok())
}

/// What the bucket holds for `stream`: `(seq, stream id, modified)` of the stored snapshot, `None` when
/// there is none.
pub(crate) async fn stored(
    store: &ObjectStore,
    stream: &str,
) -> Result<Option<(u64, String, Option<SystemTime>)>, String> {
    match store.info(stream).await {
        Ok(info) if !info.deleted => {
            let seq = seq_of(&info).ok_or_else(|| {
                format!("snapshot {stream}: no {SEQ} in its metadata (not stored by a canvas server?)")
            })?;
            let id = info.metadata.get(STREAM).cloned().unwrap_or_default();
            Ok(Some((seq, id, info.modified.map(SystemTime::from))))
        }
        Ok(_) => Ok(None),
        Err(e) if e.kind() == InfoErrorKind::NotFound => Ok(None),
        Err(e) => Err(format!("snapshot {stream}: {e}")),
    }
}

/// The newest snapshot of `stream` (created at `stream_id`) that the stream can continue from: `None`
/// when there is none, or when the stored one belongs to an earlier stream of that name or lies past
/// `head` (then the reason is the second value, for the log).
pub(crate) async fn load(
    store: &ObjectStore,
    stream: &str,
    stream_id: &str,
    head: u64,
) -> Result<(Option<Snapshot>, Option<String>), String> {
    let Some((seq, id, _)) = stored(store, stream).await? else { return Ok((None, None)) };
    if id != stream_id {
        return Ok((
            None,
            Some(format!("the stored snapshot (at {seq}) is of an earlier stream named {stream}: ignored")),
        ));
    }
    if seq > head {
        return Ok((
            None,
            Some(format!("the stored snapshot is at {seq}, past the stream's head {head}: ignored")),
        ));
    }
    let mut obj = store.get(stream).await.map_err(|e| format!("snapshot {stream}: {e}"))?;
    let mut bytes = Vec::with_capacity(obj.info().size);
    obj.read_to_end(&mut bytes).await.map_err(|e| format!("snapshot {stream}: reading it: {e}"))?;
    // The object may have been replaced between the info and the read: take the position it says.
    let seq = seq_of(obj.info()).unwrap_or(seq);
    if seq > head {
        return Ok((
            None,
            Some(format!("the stored snapshot is at {seq}, past the stream's head {head}: ignored")),
        ));
    }
    Ok((Some(Snapshot { seq, bytes }), None))
}

/// Why [`store`] did not store a snapshot.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Skipped {
    /// The bucket holds one at this position or later.
    Newer(u64),
    /// The bucket's was stored less than `min_gap` ago (by another node).
    Recent,
}

/// Store `snap` unless the bucket holds one at least as new, or one stored less than `min_gap` ago (nodes
/// take turns without talking to each other). Returns the position now stored.
pub(crate) async fn store(
    store: &ObjectStore,
    stream: &str,
    stream_id: &str,
    node: &str,
    snap: &Snapshot,
    min_gap: Duration,
) -> Result<Result<u64, Skipped>, String> {
    if let Some((seq, id, modified)) = stored(store, stream).await? {
        if id == stream_id {
            if seq >= snap.seq {
                return Ok(Err(Skipped::Newer(seq)));
            }
            let age = modified.and_then(|m| SystemTime::now().duration_since(m).ok());
            if age.is_some_and(|a| a < min_gap) {
                return Ok(Err(Skipped::Recent));
            }
        }
    }
    let meta = ObjectMetadata {
        name: stream.to_string(),
        description: Some(format!("canvas at stream position {}", snap.seq)),
        metadata: HashMap::from([
            (SEQ.to_string(), snap.seq.to_string()),
            (STREAM.to_string(), stream_id.to_string()),
            (NODE.to_string(), node.to_string()),
        ]),
        ..Default::default()
    };
    store
        .put(meta, &mut &snap.bytes[..])
        .await
        .map_err(|e| format!("storing snapshot at {}: {e}", snap.seq))?;
    Ok(Ok(snap.seq))
}
