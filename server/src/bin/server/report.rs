//! What `--stats-json` writes at shutdown: per worker counters, the pinning, the XDP section, totals.

use datapath::backend::xdp::{self, XdpSockStats};
use datapath::seam::BackendStats;
use server::endpoint::EndpointStats;
use server::master::MasterStats;

#[derive(serde::Serialize)]
pub(crate) struct WorkerReport {
    pub(crate) worker: usize,
    pub(crate) cpu: Option<usize>,
    pub(crate) endpoint: EndpointStats,
    pub(crate) backend: BackendStats,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) rearms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) xdp: Option<XdpWorkerReport>,
}

#[derive(serde::Serialize)]
pub(crate) struct XdpWorkerReport {
    pub(crate) queue: u32,
    pub(crate) zero_copy: bool,
    pub(crate) umem_hugetlb: bool,
    pub(crate) stats: XdpSockStats,
    pub(crate) frames: xdp::FrameAudit,
}

#[derive(serde::Serialize)]
pub(crate) struct XdpReport {
    pub(crate) interface: String,
    pub(crate) vlan: Option<u16>,
    pub(crate) attach: String,
    pub(crate) vlan_from_metadata_program: bool,
    pub(crate) queues: u32,
    pub(crate) counters: std::collections::BTreeMap<String, u64>,
    pub(crate) tripwire_packets: u64,
    pub(crate) notes: Vec<String>,
}

/// uring mode's steering: `cid` (the reuseport program, with its counters) or `hash` (and why).
#[derive(serde::Serialize)]
pub(crate) struct SteerReport {
    pub(crate) mode: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) note: Option<String>,
    pub(crate) counters: std::collections::BTreeMap<String, u64>,
}

/// Where the threads were pinned and why (`--pin`): worker q's CPU is `per_worker[q].cpu`.
#[derive(serde::Serialize)]
pub(crate) struct PinReport {
    pub(crate) policy: String,
    /// The interface whose queue IRQs were looked for.
    pub(crate) interface: String,
    pub(crate) master: Option<usize>,
    /// Per queue: the IRQ found for it (None: not found, or a virtual device).
    pub(crate) queue_irqs: Vec<Option<u32>>,
    pub(crate) notes: Vec<String>,
}

#[derive(serde::Serialize)]
pub(crate) struct Report {
    pub(crate) mode: &'static str,
    /// `uname -r` of the kernel the server ran on.
    pub(crate) kernel: String,
    pub(crate) workers: usize,
    pub(crate) pin: PinReport,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) xdp: Option<XdpReport>,
    /// uring mode: how datagrams were steered to workers (`--steer`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) steering: Option<SteerReport>,
    pub(crate) master: MasterStats,
    /// `--cluster`: this node and its stream.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) cluster: Option<ClusterReport>,
    pub(crate) canvas_hash: String,
    pub(crate) totals: Totals,
    pub(crate) per_worker: Vec<WorkerReport>,
}

/// `--cluster`: the node, its stream and its sequencer's counters (see `cluster::Status`).
#[derive(serde::Serialize)]
pub(crate) struct ClusterReport {
    pub(crate) node: String,
    pub(crate) incarnation: String,
    pub(crate) stream: String,
    pub(crate) replicas: usize,
    /// The stream sequence number the canvas was at when the server stopped.
    pub(crate) seq: u64,
    pub(crate) published: u64,
    pub(crate) duplicates: u64,
    pub(crate) publish_failures: u64,
    pub(crate) delivered: u64,
    pub(crate) corrupt: u64,
    pub(crate) reader_restarts: u64,
    /// Messages read by direct get while the reader had no working consumer.
    pub(crate) direct_reads: u64,
    /// Stream messages found missing (removed from the stream): 0 unless someone purged it.
    pub(crate) missing: u64,
    /// The stream position of the snapshot this node started from (0: none, the whole stream applied).
    pub(crate) started_from_snapshot: u64,
    /// The stream messages applied at start, after that snapshot, to reach the stream's head.
    pub(crate) caught_up_messages: u64,
    pub(crate) snapshots_offered: u64,
    pub(crate) snapshots_stored: u64,
    pub(crate) snapshots_skipped: u64,
    pub(crate) snapshot_failures: u64,
    /// The newest snapshot's position known to be in the bucket.
    pub(crate) snapshot_seq: u64,
    pub(crate) last_error: Option<String>,
}

#[derive(Default, serde::Serialize)]
pub(crate) struct Totals {
    pub(crate) accepted: u64,
    pub(crate) closed: u64,
    pub(crate) pixels_received: u64,
    pub(crate) pixels_applied: u64,
    pub(crate) pixels_rejected: u64,
    pub(crate) ticks: u64,
    pub(crate) datagrams_in: u64,
    pub(crate) bytes_in: u64,
    pub(crate) datagrams_out: u64,
    pub(crate) bytes_out: u64,
    pub(crate) broadcast_datagrams: u64,
}
