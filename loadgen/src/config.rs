//! Command line: the predecessor's flags (unchanged) plus ours, each tuning knob with a named default.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::{Parser, ValueEnum};

use crate::progress::ProgressMode;

/// UDP port of the reference deployment (seed/hetzner_setup.md).
pub const DEFAULT_PORT: u16 = 4433;
/// Source sockets per process: the predecessor's 64 spread flows over RSS queues and SO_REUSEPORT workers.
pub const DEFAULT_ENDPOINTS: usize = 64;
/// SO_RCVBUF/SO_SNDBUF per socket. The default 212 KB drops handshake bursts of thousands of connections
/// (measured on this box, DESIGN.md "Facts about the dependencies").
pub const DEFAULT_SOCKET_BUFFER: usize = 8 << 20;
/// Keep-alive well below the server's 30 s idle timeout (and below typical 30 s NAT/conntrack UDP timeouts).
pub const DEFAULT_KEEP_ALIVE_MS: u64 = 5_000;
/// Idle timeout: the server's; 30 s is the value RFC 9308 §3.2 recommends.
pub const DEFAULT_IDLE_TIMEOUT_MS: u64 = 30_000;
/// Datagrams buffered per connection before quinn drops the oldest: a burst of a few ticks of a busy
/// canvas (a 1 MB legacy RLE snapshot is ~900 datagrams of 1200 bytes).
pub const DEFAULT_DATAGRAM_BUFFER: usize = 4 << 20;
/// Stream and connection receive window: a raw 1000×1000 SNAPSHOT frame is 1 MB; 4 MiB lets it arrive in
/// one flight plus the DIFFs that follow.
pub const DEFAULT_STREAM_WINDOW: u64 = 4 << 20;
/// Initial MTU: the QUIC minimum, safe on the reference VLAN (MTU 1400) and the server's 1350 limit.
pub const DEFAULT_INITIAL_MTU: u16 = 1200;
/// A handshake that has not finished by then counts as failed.
pub const DEFAULT_HANDSHAKE_TIMEOUT_S: u64 = 10;
/// Bound on the end-of-run drain and the replica verification.
pub const DEFAULT_VERIFY_TIMEOUT_S: u64 = 20;
/// Bound on closing: client tasks finishing, then the endpoints going idle (CONNECTION_CLOSE sent and the
/// draining period over). A saturated client may need longer to get every CONNECTION_CLOSE out.
pub const DEFAULT_CLOSE_TIMEOUT_S: f64 = 2.0;

/// Which wire protocol the clients speak.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// `canvas/1`: control stream + DIFF_PART datagrams, acked writes, replicas that repair by SYNC.
    Canvas1,
    /// The predecessor's protocol (ALPN `h3`): datagrams only, no acks.
    Legacy,
}

impl Protocol {
    /// The ALPN this protocol is negotiated with.
    pub fn alpn(self) -> &'static [u8] {
        match self {
            Self::Canvas1 => canvas::proto::ALPN,
            Self::Legacy => canvas::legacy::ALPN,
        }
    }

    /// Name as given on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Self::Canvas1 => "canvas1",
            Self::Legacy => "legacy",
        }
    }
}

/// `client`: QUIC load generator for the canvas server.
#[derive(Parser, Debug, Clone)]
#[command(name = "client", version, about)]
pub struct Args {
    /// Server URL, `https://HOST:PORT` (IPv4/IPv6 literal or hostname; port defaults to 4433).
    #[arg(long)]
    pub target: String,
    /// Concurrent clients (one QUIC connection each).
    #[arg(long, default_value_t = 100)]
    pub clients: usize,
    /// Name of this process: names the CSV and seeds the RNG.
    #[arg(long, default_value = "client")]
    pub id: String,
    /// Each client waits a uniform random 0..=MS before connecting.
    #[arg(long, value_name = "MS", default_value_t = 1000)]
    pub max_conn_jitter: u64,
    /// Smallest wait between two writes of one client.
    #[arg(long, value_name = "MS", default_value_t = 500)]
    pub min_pixel_wait: u64,
    /// Largest wait between two writes of one client (uniform in min..=max).
    #[arg(long, value_name = "MS", default_value_t = 1500)]
    pub max_pixel_wait: u64,
    /// Directory for the per-second CSV `{id}.csv` (created if missing).
    #[arg(long, value_name = "DIR")]
    pub metrics_dir: Option<PathBuf>,

    /// Wire protocol.
    #[arg(long, value_enum, default_value_t = Protocol::Canvas1)]
    pub protocol: Protocol,
    /// UDP source sockets (quinn endpoints); clients are spread round-robin over them.
    #[arg(long, default_value_t = DEFAULT_ENDPOINTS)]
    pub endpoints: usize,
    /// Stop writing after this many seconds, verify, and exit (default: run until Ctrl-C).
    #[arg(long, value_name = "SECS")]
    pub duration: Option<f64>,
    /// Tokio worker threads (1 = current-thread runtime, like the predecessor).
    #[arg(long, default_value_t = 1)]
    pub threads: usize,
    /// Seed: every client's RNG derives from (seed, id, client index), so runs are reproducible.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Write the end-of-run summary as JSON here.
    #[arg(long, value_name = "PATH")]
    pub summary_json: Option<PathBuf>,
    /// canvas/1: record every write sent and every ACK here (CSV lines `W,session,id,x,y,color` and
    /// `A,session,id,tick`), to check what a server promised against the canvas it restores.
    #[arg(long, value_name = "PATH")]
    pub write_log: Option<PathBuf>,
    /// Progress on stderr: `auto` draws one live bar when stderr is a terminal and prints one line per
    /// second otherwise (pipes, files, CI); `lines` always prints the lines.
    #[arg(long, value_enum, default_value_t = ProgressMode::Auto)]
    pub progress: ProgressMode,
    /// Bound on the end-of-run drain (acks, visibility) and on replica verification, each.
    #[arg(long, value_name = "SECS", default_value_t = DEFAULT_VERIFY_TIMEOUT_S)]
    pub verify_timeout: u64,
    /// How many clients (the first N) keep a full replica of the canvas and are verified at the end; the
    /// others only follow tick numbers (canvas/1) or diff entries (legacy) to measure latency. A replica
    /// costs width×height bytes per client (twice that for legacy): 1 MB at 1000×1000. Default: all.
    #[arg(long, value_name = "N")]
    pub replicas: Option<usize>,
    /// Canvas width for `--protocol legacy` (canvas/1 takes it from WELCOME).
    #[arg(long, default_value_t = canvas::grid::DEFAULT_WIDTH)]
    pub width: u16,
    /// Canvas height for `--protocol legacy`.
    #[arg(long, default_value_t = canvas::grid::DEFAULT_HEIGHT)]
    pub height: u16,
    /// canvas/1: do not announce zstd snapshots (SYNC without flags): for servers that predate the SYNC
    /// flags (they close a connection whose SYNC has them), and to measure what zstd saves.
    #[arg(long)]
    pub plain_snapshots: bool,
    /// Bound on closing the connections at the end (each of two steps: clients closing, endpoints idle).
    #[arg(long, value_name = "SECS", default_value_t = DEFAULT_CLOSE_TIMEOUT_S)]
    pub close_timeout: f64,
    /// canvas/1: when a connection is lost (the server closed it, restarted, went silent), keep trying
    /// to connect again for up to this long and resume the replica from its tick (SYNC{have}, not from
    /// zero). Writes in flight on the lost connection count as `writes_unknown`. Default: a lost
    /// connection is a failed client.
    #[arg(long, value_name = "SECS")]
    pub reconnect: Option<f64>,
    /// With --reconnect: other servers of the same canvas (`--cluster` nodes), tried in turn when a
    /// connection is lost (then --target again), the replica resuming from its tick on whichever answers;
    /// the end check fetches the canvas from the first that answers. Comma-separated or repeated.
    #[arg(long, value_name = "URL", value_delimiter = ',')]
    pub failover: Vec<String>,
    /// Also keep one full replica connected to each of these servers (other `--cluster` nodes of the same
    /// canvas); it never writes. Write → visible across servers is measured from a write's send by this
    /// process's clients until each observer's replica reaches the tick the write's ACK named (a tick
    /// names the same canvas on every node); each observer's replica is checked against its own server at
    /// the end. canvas/1 only. Comma-separated or repeated.
    #[arg(long, value_name = "URL", value_delimiter = ',')]
    pub observe: Vec<String>,
    /// Every this many seconds of the write phase, move every endpoint to a new UDP socket (a new source
    /// port), as a NAT rebinding does: the connections must carry on (the server migrates them, also
    /// when the new address reaches another of its workers).
    #[arg(long, value_name = "SECS")]
    pub rebind_every: Option<f64>,
    /// A handshake not finished after this long counts as failed.
    #[arg(long, value_name = "SECS", default_value_t = DEFAULT_HANDSHAKE_TIMEOUT_S)]
    pub handshake_timeout: u64,
    /// SO_RCVBUF and SO_SNDBUF of every UDP socket (the FORCE variants are tried first).
    #[arg(long, value_name = "BYTES", default_value_t = DEFAULT_SOCKET_BUFFER)]
    pub socket_buffer: usize,
    /// QUIC keep-alive interval.
    #[arg(long, value_name = "MS", default_value_t = DEFAULT_KEEP_ALIVE_MS)]
    pub keep_alive: u64,
    /// QUIC idle timeout.
    #[arg(long, value_name = "MS", default_value_t = DEFAULT_IDLE_TIMEOUT_MS)]
    pub idle_timeout: u64,
    /// Received datagrams buffered per connection.
    #[arg(long, value_name = "BYTES", default_value_t = DEFAULT_DATAGRAM_BUFFER)]
    pub datagram_buffer: usize,
    /// Stream and connection receive window.
    #[arg(long, value_name = "BYTES", default_value_t = DEFAULT_STREAM_WINDOW)]
    pub stream_window: u64,
    /// Initial path MTU (UDP payload).
    #[arg(long, value_name = "BYTES", default_value_t = DEFAULT_INITIAL_MTU)]
    pub initial_mtu: u16,
}

impl Args {
    /// Reject inconsistent flags with a message for the user.
    pub fn validate(&self) -> Result<(), String> {
        if self.clients == 0 {
            return Err("--clients must be at least 1".into());
        }
        if self.endpoints == 0 {
            return Err("--endpoints must be at least 1".into());
        }
        if self.threads == 0 {
            return Err("--threads must be at least 1".into());
        }
        if let Some(r) = self.reconnect {
            if !(r.is_finite() && r > 0.0) {
                return Err(format!("--reconnect must be a positive number of seconds, got {r}"));
            }
            if self.protocol != Protocol::Canvas1 {
                return Err("--reconnect resumes canvas/1 replicas: use it with --protocol canvas1".into());
            }
        }
        if !self.failover.is_empty() && self.reconnect.is_none() {
            return Err("--failover is where a lost connection goes: use it with --reconnect SECS".into());
        }
        for f in &self.failover {
            parse_target(f).map_err(|e| e.replace("--target", "--failover"))?;
        }
        if !self.observe.is_empty() && self.protocol != Protocol::Canvas1 {
            return Err("--observe compares ticks across servers: use it with --protocol canvas1".into());
        }
        for o in &self.observe {
            parse_target(o).map_err(|e| e.replace("--target", "--observe"))?;
        }
        if let Some(r) = self.rebind_every {
            if !(r.is_finite() && r > 0.0) {
                return Err(format!("--rebind-every must be a positive number of seconds, got {r}"));
            }
        }
        if self.write_log.is_some() && self.protocol != Protocol::Canvas1 {
            return Err("--write-log records canvas/1 writes and ACKs: use it with --protocol canvas1".into());
        }
        if self.min_pixel_wait > self.max_pixel_wait {
            return Err(format!(
                "--min-pixel-wait ({}) is larger than --max-pixel-wait ({})",
                self.min_pixel_wait, self.max_pixel_wait
            ));
        }
        if let Some(d) = self.duration {
            if !(d.is_finite() && d > 0.0) {
                return Err(format!("--duration must be a positive number of seconds, got {d}"));
            }
        }
        if !(self.close_timeout.is_finite() && self.close_timeout >= 0.0) {
            return Err(format!(
                "--close-timeout must be a non-negative number of seconds, got {}",
                self.close_timeout
            ));
        }
        if self.width == 0 || self.height == 0 {
            return Err("--width and --height must be positive".into());
        }
        if usize::from(self.width) * usize::from(self.height) > canvas::grid::MAX_PIXELS {
            return Err(format!("canvas larger than {} pixels", canvas::grid::MAX_PIXELS));
        }
        if self.initial_mtu < 1200 {
            return Err("--initial-mtu must be at least 1200 (QUIC minimum)".into());
        }
        if self.id.is_empty() || self.id.contains(['/', '\\']) {
            return Err(format!("--id {:?} must be a non-empty file name", self.id));
        }
        parse_target(&self.target)?;
        // Checked now rather than when the summary is written, at the end of a possibly long run.
        if let Some(dir) = self.summary_json.as_deref().and_then(Path::parent) {
            if !dir.as_os_str().is_empty() && !dir.is_dir() {
                return Err(format!(
                    "--summary-json: directory {} does not exist (create it, or give another path)",
                    dir.display()
                ));
            }
        }
        Ok(())
    }

    /// The run length, if bounded.
    pub fn duration(&self) -> Option<Duration> {
        self.duration.map(Duration::from_secs_f64)
    }
}

/// Host and port of a `--target` URL.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    /// Hostname or IP literal (IPv6 without brackets); also the TLS server name.
    pub host: String,
    /// UDP port.
    pub port: u16,
}

/// Parse `https://HOST:PORT[/path]` (the scheme is optional; `[v6]:port` for IPv6 literals).
pub fn parse_target(url: &str) -> Result<Target, String> {
    let rest = match url.split_once("://") {
        Some((scheme, rest))
            if scheme.eq_ignore_ascii_case("https") || scheme.eq_ignore_ascii_case("quic") =>
        {
            rest
        }
        Some((scheme, _)) => {
            return Err(format!("--target {url:?}: unsupported scheme {scheme:?} (use https://)"))
        }
        None => url,
    };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    let bad = |why: &str| format!("--target {url:?}: {why}");
    let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
        let (host, after) = v6.split_once(']').ok_or_else(|| bad("unterminated '[' in IPv6 literal"))?;
        host.parse::<std::net::Ipv6Addr>().map_err(|_| bad("bad IPv6 literal"))?;
        match after {
            "" => (host, None),
            p => (host, Some(p.strip_prefix(':').ok_or_else(|| bad("expected ':' after ']'"))?)),
        }
    } else if authority.matches(':').count() > 1 {
        // A bare IPv6 literal without port.
        authority
            .parse::<std::net::Ipv6Addr>()
            .map_err(|_| bad("IPv6 literals need [brackets] with a port"))?;
        (authority, None)
    } else {
        match authority.split_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (authority, None),
        }
    };
    if host.is_empty() {
        return Err(bad("missing host"));
    }
    let port = match port {
        None => DEFAULT_PORT,
        Some(p) => {
            p.parse::<u16>().ok().filter(|&p| p != 0).ok_or_else(|| bad("the port must be 1-65535"))?
        }
    };
    Ok(Target { host: host.to_string(), port })
}

impl Target {
    /// Resolve to a socket address (the first one the resolver returns).
    pub async fn resolve(&self) -> Result<SocketAddr, String> {
        if let Ok(ip) = self.host.parse::<std::net::IpAddr>() {
            return Ok(SocketAddr::new(ip, self.port));
        }
        let mut addrs = tokio::net::lookup_host((self.host.as_str(), self.port)).await.map_err(|e| {
            format!("--target: cannot resolve {}: {e} (check the name, or give an IP address)", self.host)
        })?;
        addrs
            .next()
            .ok_or_else(|| format!("--target: {} resolves to no address (give an IP address)", self.host))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(host: &str, port: u16) -> Target {
        Target { host: host.into(), port }
    }

    #[test]
    fn targets() {
        assert_eq!(parse_target("https://10.0.1.10:4433"), Ok(t("10.0.1.10", 4433)));
        assert_eq!(parse_target("https://10.0.1.10:9/x"), Ok(t("10.0.1.10", 9)));
        assert_eq!(parse_target("10.0.1.10"), Ok(t("10.0.1.10", 4433)));
        assert_eq!(parse_target("https://[::1]:4433"), Ok(t("::1", 4433)));
        assert_eq!(parse_target("https://[fe80::1]"), Ok(t("fe80::1", 4433)));
        assert_eq!(parse_target("::1"), Ok(t("::1", 4433)));
        assert_eq!(parse_target("https://canvas.example:443/"), Ok(t("canvas.example", 443)));
        assert!(parse_target("http://x:1").is_err());
        assert!(parse_target("https://:1").is_err());
        assert!(parse_target("https://x:0").is_err());
        assert!(parse_target("https://x:99999").is_err());
        assert!(parse_target("https://[::1").is_err());
    }

    #[test]
    fn flags_parse_and_validate() {
        let a = Args::parse_from(["client", "--target", "https://127.0.0.1:4433"]);
        assert_eq!(a.protocol, Protocol::Canvas1);
        assert_eq!(a.endpoints, DEFAULT_ENDPOINTS);
        assert_eq!(a.threads, 1);
        assert_eq!(a.progress, ProgressMode::Auto);
        assert!(a.validate().is_ok());
        let a = Args::parse_from([
            "client",
            "--target",
            "x",
            "--protocol",
            "legacy",
            "--min-pixel-wait",
            "5",
            "--max-pixel-wait",
            "1",
        ]);
        assert_eq!(a.protocol, Protocol::Legacy);
        assert!(a.validate().is_err());
        let summary_to =
            |path: &str| Args::parse_from(["client", "--target", "x", "--summary-json", path]).validate();
        assert_eq!(summary_to("s.json"), Ok(()));
        let e = summary_to("/nonexistent-loadgen-dir/s.json").unwrap_err();
        assert!(e.contains("--summary-json") && e.contains("does not exist"), "{e}");
        let failover = |extra: &[&str]| {
            let mut v = vec!["client", "--target", "https://127.0.0.1:4433"];
            v.extend_from_slice(extra);
            Args::parse_from(v).validate()
        };
        assert_eq!(
            failover(&["--reconnect", "5", "--failover", "https://127.0.0.1:4434,127.0.0.1:4435"]),
            Ok(())
        );
        let e = failover(&["--failover", "https://127.0.0.1:4434"]).unwrap_err();
        assert!(e.contains("--reconnect"), "{e}");
        let e = failover(&["--reconnect", "5", "--failover", "http://127.0.0.1:4434"]).unwrap_err();
        assert!(e.starts_with("--failover"), "{e}");
        assert_eq!(failover(&["--observe", "https://127.0.0.1:4434,127.0.0.1:4435"]), Ok(()));
        let e = failover(&["--observe", "http://127.0.0.1:4434"]).unwrap_err();
        assert!(e.starts_with("--observe"), "{e}");
        let e = failover(&["--observe", "127.0.0.1:4434", "--protocol", "legacy"]).unwrap_err();
        assert!(e.contains("canvas1"), "{e}");
    }
}
