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

/// Network paths (client addresses) one connection may use over its life: it follows its client across
/// `PATHS_PER_CONNECTION - 1` address changes (NAT rebindings); past that, packets from a new address
/// are dropped and the client must reconnect (the loadgen's `--reconnect` resumes from its tick). Also
/// the `active_connection_id_limit` we advertise (connection ids the client may give us).
pub const PATHS_PER_CONNECTION: u64 = 8;

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
    // quiche (0.30) keeps every path a server connection has seen, at most this many: a path it no longer
    // uses is freed only once its peer connection id is retired, which a client behind a rebinding NAT
    // never does. So this bounds the address changes a connection survives (PATHS_PER_CONNECTION - 1).
    c.set_active_connection_id_limit(PATHS_PER_CONNECTION);
    c.enable_dgram(true, 1024, q.dgram_queue);
    c.enable_pacing(true);
    Ok(c)
}

/// A certificate and key to serve with. A generated pair lives in a private directory (0700, key 0600) that
/// is removed when this is dropped, unless it was kept under a data directory.
#[derive(Debug)]
pub struct CertPair {
    /// PEM certificate.
    pub cert: PathBuf,
    /// PEM private key.
    pub key: PathBuf,
    /// What an operator should know (a key other users can read, where a generated pair is).
    pub notes: Vec<String>,
    /// The private directory to remove on drop.
    temp: Option<PathBuf>,
}

impl Drop for CertPair {
    fn drop(&mut self) {
        self.forget_temporary();
    }
}

impl CertPair {
    /// Remove a generated temporary pair now (the server calls this once quiche has loaded it, so that no
    /// private key outlives the process, whatever ends it).
    pub fn forget_temporary(&mut self) {
        if let Some(d) = self.temp.take() {
            let _ = std::fs::remove_dir_all(d);
        }
    }

    /// Whether the pair was generated for this run only.
    pub fn is_temporary(&self) -> bool {
        self.temp.is_some()
    }
}

/// The certificate and key to serve with:
/// - `--cert`/`--key` given: both must exist (an error names the missing path; nothing is ever created
///   there), and a key other users can read is reported;
/// - neither, with `keep_in` (the data directory): a self-signed pair for "localhost" and the listen IP in
///   `keep_in/tls` (0700, key 0600), generated once and reused, so clients can pin it across restarts;
/// - neither: such a pair in a new private temporary directory, removed when the [`CertPair`] is dropped.
pub fn ensure_cert(
    cert: Option<&Path>,
    key: Option<&Path>,
    keep_in: Option<&Path>,
    ip: Option<std::net::IpAddr>,
) -> Result<CertPair, ConfigError> {
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
    static CALLS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    match (cert, key) {
        (Some(c), Some(k)) => {
            let mut notes = Vec::new();
            for (flag, p) in [("--cert", c), ("--key", k)] {
                let m = std::fs::metadata(p).map_err(|e| {
                    ConfigError(format!(
                        "{flag} {}: {e}. Give an existing PEM file, or leave out --cert and --key to serve \
                         with a generated self-signed pair (kept under --data-dir when given)",
                        p.display()
                    ))
                })?;
                if !m.is_file() {
                    return Err(ConfigError(format!("{flag} {}: not a regular file", p.display())));
                }
                if flag == "--key" && m.permissions().mode() & 0o077 != 0 {
                    notes.push(format!(
                        "warning: private key {} is readable by other users (mode {:o}): chmod 600 {}",
                        p.display(),
                        m.permissions().mode() & 0o777,
                        p.display()
                    ));
                }
            }
            return Ok(CertPair { cert: c.to_path_buf(), key: k.to_path_buf(), notes, temp: None });
        }
        (None, None) => {}
        _ => return Err(ConfigError("--cert and --key go together: give both or neither".into())),
    }
    let private_dir = |dir: &Path, exclusive: bool| -> std::io::Result<()> {
        let r = std::fs::DirBuilder::new().mode(0o700).create(dir);
        match r {
            Err(e) if !exclusive && e.kind() == std::io::ErrorKind::AlreadyExists => {
                std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
            }
            r => r,
        }
    };
    let (dir, temp) = match keep_in {
        Some(d) => {
            let dir = d.join("tls");
            std::fs::create_dir_all(d)
                .map_err(|e| ConfigError(format!("cannot create {}: {e}", d.display())))?;
            private_dir(&dir, false)
                .map_err(|e| ConfigError(format!("cannot create {}: {e}", dir.display())))?;
            (dir, false)
        }
        None => loop {
            let n = CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let dir = std::env::temp_dir().join(format!("canvas-server-{}-{n}", std::process::id()));
            match private_dir(&dir, true) {
                Ok(()) => break (dir, true),
                // Left by an earlier process with this pid: take the next name.
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(ConfigError(format!("cannot create {}: {e}", dir.display()))),
            }
        },
    };
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    let mut pair = CertPair { cert, key, notes: Vec::new(), temp: temp.then(|| dir.clone()) };
    if !temp && pair.cert.exists() && pair.key.exists() {
        pair.notes
            .push(format!("self-signed certificate {} (kept in the data directory)", pair.cert.display()));
        return Ok(pair);
    }
    let mut names = vec!["localhost".to_string()];
    if let Some(ip) = ip.filter(|ip| !ip.is_unspecified()) {
        names.push(ip.to_string());
    }
    let ck = rcgen::generate_simple_self_signed(names).map_err(|e| ConfigError(format!("rcgen: {e}")))?;
    let write = |path: &Path, bytes: &[u8], mode: u32| -> Result<(), ConfigError> {
        let _ = std::fs::remove_file(path);
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(path)
            .map_err(|e| ConfigError(format!("cannot write {}: {e}", path.display())))?;
        std::io::Write::write_all(&mut f, bytes)
            .map_err(|e| ConfigError(format!("cannot write {}: {e}", path.display())))
    };
    write(&pair.key, ck.signing_key.serialize_pem().as_bytes(), 0o600)?;
    write(&pair.cert, ck.cert.pem().as_bytes(), 0o644)?;
    pair.notes.push(if temp {
        "self-signed certificate generated for this run (not kept; --data-dir keeps one)".to_string()
    } else {
        format!("self-signed certificate {} generated and kept in the data directory", pair.cert.display())
    });
    Ok(pair)
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    fn mode(p: &Path) -> u32 {
        std::fs::metadata(p).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn missing_operator_files_are_refused_and_never_created() {
        let e =
            ensure_cert(Some(Path::new("/nonexistent.pem")), Some(Path::new("/nonexistent.key")), None, None)
                .unwrap_err()
                .0;
        assert!(e.contains("--cert /nonexistent.pem"), "{e}");
        assert!(!Path::new("/nonexistent.pem").exists() && !Path::new("/nonexistent.key").exists());
    }

    #[test]
    fn a_generated_pair_is_private_and_gone_when_dropped() {
        let pair = ensure_cert(None, None, None, None).unwrap();
        let dir = pair.cert.parent().unwrap().to_path_buf();
        assert_eq!((mode(&dir), mode(&pair.key)), (0o700, 0o600));
        assert!(pair.is_temporary());
        drop(pair);
        assert!(!dir.exists(), "{} left behind", dir.display());
        let mut pair = ensure_cert(None, None, None, None).unwrap();
        let dir = pair.cert.parent().unwrap().to_path_buf();
        pair.forget_temporary();
        assert!(!dir.exists());
    }

    #[test]
    fn a_pair_kept_in_the_data_dir_is_reused_and_an_open_key_is_reported() {
        let data = std::env::temp_dir().join(format!("quic-keep-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&data);
        let a = ensure_cert(None, None, Some(&data), None).unwrap();
        assert!(!a.is_temporary());
        assert_eq!((mode(&data.join("tls")), mode(&a.key)), (0o700, 0o600));
        let first = std::fs::read(&a.cert).unwrap();
        drop(a);
        let b = ensure_cert(None, None, Some(&data), None).unwrap();
        assert_eq!(std::fs::read(&b.cert).unwrap(), first, "the same certificate across restarts");
        // An operator's key that others can read is served, with a warning.
        std::fs::set_permissions(&b.key, std::fs::Permissions::from_mode(0o644)).unwrap();
        let c = ensure_cert(Some(&b.cert), Some(&b.key), None, None).unwrap();
        assert!(c.notes.iter().any(|n| n.contains("readable by other users")), "{:?}", c.notes);
        std::fs::remove_dir_all(&data).unwrap();
    }
}
