//! The loader's errors, each saying what failed and what to try (a verifier refusal carries the kernel
//! release and the last lines of the verifier's log).
use std::fmt;
use std::io;

use crate::{Mode, XSKS_MAX_ENTRIES};

/// Errors of the loader. Each message says what failed and what to try.
#[derive(Debug)]
#[non_exhaustive]
pub enum Error {
    /// The [`Config`](crate::Config) cannot be applied.
    InvalidConfig(String),
    /// No interface with this name or index in the calling thread's network namespace.
    InterfaceNotFound {
        /// The name, or "index N".
        interface: String,
    },
    /// The kernel refused a BPF operation for lack of privilege.
    PermissionDenied {
        /// What was being done.
        operation: String,
        /// The error the kernel or libbpf returned.
        source: io::Error,
    },
    /// Another XDP program is attached to the interface; it is never replaced.
    AlreadyAttached {
        /// Interface name.
        interface: String,
        /// Its kernel program id (`bpftool prog show id N`).
        prog_id: u32,
        /// Its mode.
        mode: Mode,
    },
    /// libbpf could not open or load the BPF object.
    Load {
        /// Which object (`canvas` or `canvas_vlanmeta`).
        object: &'static str,
        /// libbpf's error.
        source: libbpf_rs::Error,
        /// The kernel release (`uname -r`) that refused it.
        kernel: String,
        /// The last lines of the verifier's log when the verifier refused the program (empty when
        /// the refusal came before verification: an unknown flag, missing BTF, no BPF at all).
        verifier_log: Vec<String>,
    },
    /// The kernel refused to attach the program.
    Attach {
        /// Interface name.
        interface: String,
        /// The mode of the failed attempt.
        mode: Mode,
        /// errno.
        source: io::Error,
        /// What to try.
        hint: &'static str,
        /// With [`AttachMode::Auto`](crate::AttachMode::Auto): why native mode failed before.
        native_failure: Option<String>,
    },
    /// Detaching failed.
    Detach {
        /// Interface name.
        interface: String,
        /// errno.
        source: io::Error,
    },
    /// A queue beyond the XSKMAP's [`XSKS_MAX_ENTRIES`].
    QueueOutOfRange {
        /// The queue asked for.
        queue: u32,
    },
    /// A map operation or query failed.
    Io {
        /// What was being done.
        operation: String,
        /// errno.
        source: io::Error,
    },
}

const PERMISSION_HINT: &str = "run as root, or give the process CAP_BPF and CAP_NET_ADMIN (Linux >= 5.8; \
     CAP_SYS_ADMIN before), e.g. `setcap cap_bpf,cap_net_admin,cap_perfmon+ep BINARY`; on kernels < 5.11 \
     also raise RLIMIT_MEMLOCK (`ulimit -l unlimited`)";

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::InvalidConfig(why) => write!(f, "invalid XDP configuration: {why}"),
            Error::InterfaceNotFound { interface } => write!(
                f,
                "interface {interface} not found in this network namespace (check `ip link show`; \
                 inside a namespace run under `ip netns exec NS`)"
            ),
            Error::PermissionDenied { operation, source } => {
                write!(f, "{operation}: permission denied ({source}): {PERMISSION_HINT}")
            }
            Error::AlreadyAttached { interface, prog_id, mode } => write!(
                f,
                "interface {interface} already has an XDP program attached ({mode} mode, prog id {prog_id}; \
                 `bpftool prog show id {prog_id}` says what it is); it is not replaced. If it is left over, \
                 remove it with `ip link set dev {interface} {} off`; if the kernel answers that a BPF link \
                 holds it, stop the process that owns the link (another server instance?)",
                mode.ip_link_word()
            ),
            Error::Load { object, source, kernel, verifier_log } if !verifier_log.is_empty() => write!(
                f,
                "the BPF verifier of Linux {kernel} refused the XDP program ({object}: {source}). This is \
                 a bug in the program for this kernel, not missing kernel support: report it with \
                 `uname -r` and these last lines of the verifier log:\n    {}\n(meanwhile `--mode uring` \
                 serves without XDP)",
                verifier_log.join("\n    ")
            ),
            Error::Load { object, source, kernel, .. } => write!(
                f,
                "loading the BPF object {object} on Linux {kernel} failed before verification: {source}; \
                 the kernel needs BPF and AF_XDP support (Linux >= 5.9 with CONFIG_BPF_SYSCALL, \
                 CONFIG_XDP_SOCKETS and BTF); check `dmesg`"
            ),
            Error::Attach { interface, mode, source, hint, native_failure } => {
                write!(f, "attaching XDP to {interface} in {mode} mode failed: {source}; {hint}")?;
                if let Some(native) = native_failure {
                    write!(f, " (native mode had failed first: {native})")?;
                }
                Ok(())
            }
            Error::Detach { interface, source } => write!(
                f,
                "detaching the XDP program from {interface} failed: {source}; its link fd is closed anyway, \
                 which detaches it once no other process (a forked child) holds a copy; check with `ip -d \
                 link show dev {interface}`"
            ),
            Error::QueueOutOfRange { queue } => {
                write!(f, "queue {queue} is out of range: the xsks map holds queues 0..{XSKS_MAX_ENTRIES}")
            }
            Error::Io { operation, source } => write!(f, "{operation}: {source}"),
        }
    }
}

impl Error {
    /// The last lines of the verifier's log when the verifier refused the program.
    pub fn verifier_log(&self) -> Option<&[String]> {
        match self {
            Error::Load { verifier_log, .. } if !verifier_log.is_empty() => Some(verifier_log),
            _ => None,
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::PermissionDenied { source, .. }
            | Error::Attach { source, .. }
            | Error::Detach { source, .. }
            | Error::Io { source, .. } => Some(source),
            Error::Load { source, .. } => Some(source),
            _ => None,
        }
    }
}
