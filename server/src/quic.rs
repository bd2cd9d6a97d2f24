//! quiche configuration for the server, and the self-signed certificate used when none is given.

use std::path::{Path, PathBuf};
use std::time::Duration;

use canvas::{legacy, proto};

/// QUIC knobs the server exposes as flags.
#[derive(Clone, Copy, Debug)]
pub struct QuicConfig {
    /// Idle timeout. quiche's default of 0 means "none", which leaves dead peers forever: 30 s is what
    /// RFC 9308 §3.2 suggests as a common value and what quinn's clients expect.
    pub idle_timeout: Duration,
    /// Largest UDP payload sent or received. 1350 fits the reference VLAN's 1400-byte MTU with IPv4/UDP
    /// headers (1400 - 20 - 8 = 1372) and leaves room for the 1200-byte legacy broadcast datagrams plus
    /// QUIC short-header, frame and AEAD overhead.
    pub max_udp_payload: usize,
    /// Entries in quiche's per-connection DATAGRAM send queue.
    pub dgram_queue: usize,
    /// Connection-level flow control window.
    pub max_data: u64,
    /// Stream-level flow control window for the client's control stream.
    pub max_stream_data: u64,
}

/// Default QUIC knobs.
pub const DEFAULT_QUIC: QuicConfig = QuicConfig {
    idle_timeout: Duration::from_secs(30),
    max_udp_payload: 1350,
    dgram_queue: 8,
    max_data: 16 << 20,
    max_stream_data: 4 << 20,
};

/// Error building the config, with the path involved.
#[derive(Debug)]
pub struct ConfigError(pub String);

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ConfigError {}

/// The server's quiche config: both ALPNs (quiche picks the first of the client's list that it supports),
/// DATAGRAM frames, stream limits a quinn
/// client needs (quiche's defaults of 0 streams and 0 idle timeout break peers), pacing on.
pub fn server_config(q: &QuicConfig, cert: &Path, key: &Path) -> Result<quiche::Config, ConfigError> {
    let err = |what: &str, e: quiche::Error| ConfigError(format!("{what}: {e}"));
    let mut c = quiche::Config::new(quiche::PROTOCOL_VERSION).map_err(|e| err("quiche config", e))?;
    c.load_cert_chain_from_pem_file(&cert.to_string_lossy()).map_err(|e| {
        ConfigError(format!("cannot load certificate {}: {e} (PEM expected)", cert.display()))
    })?;
    c.load_priv_key_from_pem_file(&key.to_string_lossy())
        .map_err(|e| ConfigError(format!("cannot load private key {}: {e} (PEM expected)", key.display())))?;
    c.set_application_protos(&[proto::ALPN, legacy::ALPN]).map_err(|e| err("ALPN", e))?;
    c.set_max_idle_timeout(q.idle_timeout.as_millis() as u64);
    c.set_max_recv_udp_payload_size(q.max_udp_payload);
    c.set_max_send_udp_payload_size(q.max_udp_payload);
    c.set_initial_max_data(q.max_data);
    c.set_initial_max_stream_data_bidi_remote(q.max_stream_data);
    c.set_initial_max_stream_data_bidi_local(q.max_stream_data);
    c.set_initial_max_stream_data_uni(64 * 1024);
    c.set_initial_max_streams_bidi(4);
    c.set_initial_max_streams_uni(4);
    c.set_disable_active_migration(true);
    c.enable_dgram(true, 1024, q.dgram_queue);
    c.enable_pacing(true);
    Ok(c)
}

/// Certificate and key paths: the given ones, generating a self-signed pair for "localhost" and the
/// listen IP at those paths when neither exists; with no paths, a fresh pair in a new temp directory (one
/// per call, so concurrent callers in one process never see each other's half-written files).
pub fn ensure_cert(
    cert: Option<&Path>,
    key: Option<&Path>,
    ip: Option<std::net::IpAddr>,
) -> Result<(PathBuf, PathBuf), ConfigError> {
    static CALLS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let (cert, key) = match (cert, key) {
        (Some(c), Some(k)) => (c.to_path_buf(), k.to_path_buf()),
        (None, None) => {
            let n = CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let dir = std::env::temp_dir().join(format!("canvas-server-{}-{n}", std::process::id()));
            std::fs::create_dir_all(&dir)
                .map_err(|e| ConfigError(format!("cannot create {}: {e}", dir.display())))?;
            (dir.join("cert.pem"), dir.join("key.pem"))
        }
        _ => return Err(ConfigError("--cert and --key go together: give both or neither".into())),
    };
    match (cert.exists(), key.exists()) {
        (true, true) => return Ok((cert, key)),
        (false, false) => {}
        // Generating a pair here would overwrite the file that does exist.
        (have_cert, _) => {
            let (have, missing) = if have_cert { (&cert, &key) } else { (&key, &cert) };
            return Err(ConfigError(format!(
                "{} exists but {} does not: give the matching file, or two paths that both do not exist \
                 to have a self-signed pair generated there",
                have.display(),
                missing.display()
            )));
        }
    }
    let mut names = vec!["localhost".to_string()];
    if let Some(ip) = ip.filter(|ip| !ip.is_unspecified()) {
        names.push(ip.to_string());
    }
    let ck = rcgen::generate_simple_self_signed(names).map_err(|e| ConfigError(format!("rcgen: {e}")))?;
    std::fs::write(&cert, ck.cert.pem())
        .map_err(|e| ConfigError(format!("cannot write {}: {e}", cert.display())))?;
    std::fs::write(&key, ck.signing_key.serialize_pem())
        .map_err(|e| ConfigError(format!("cannot write {}: {e}", key.display())))?;
    Ok((cert, key))
}
