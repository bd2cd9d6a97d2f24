//! TLS and QUIC transport configuration of the clients.
//!
//! The server uses a self-signed certificate, so the certificate chain is not verified; the handshake
//! signature still is (with the ring provider), so the server must hold the key of the certificate it sent.

use std::sync::Arc;
use std::time::Duration;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{
    verify_tls12_signature, verify_tls13_signature, CryptoProvider, WebPkiSupportedAlgorithms,
};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};

use crate::config::Args;

/// Accepts any certificate; verifies handshake signatures against it.
#[derive(Debug)]
pub struct AcceptAnyCert {
    algorithms: WebPkiSupportedAlgorithms,
}

impl AcceptAnyCert {
    /// A verifier using `provider`'s signature algorithms.
    pub fn new(provider: &CryptoProvider) -> Self {
        Self { algorithms: provider.signature_verification_algorithms }
    }
}

impl ServerCertVerifier for AcceptAnyCert {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// The transport parameters every client connection uses.
pub fn transport(args: &Args) -> Result<quinn::TransportConfig, String> {
    let mut t = quinn::TransportConfig::default();
    let idle = quinn::IdleTimeout::try_from(Duration::from_millis(args.idle_timeout))
        .map_err(|e| format!("--idle-timeout: {e}"))?;
    let window = quinn::VarInt::from_u64(args.stream_window).map_err(|e| format!("--stream-window: {e}"))?;
    t.keep_alive_interval(Some(Duration::from_millis(args.keep_alive)))
        .max_idle_timeout(Some(idle))
        .datagram_receive_buffer_size(Some(args.datagram_buffer))
        .initial_mtu(args.initial_mtu)
        .stream_receive_window(window)
        .receive_window(window.max(quinn::VarInt::from_u32(8 << 20)))
        // The server never opens streams towards the client.
        .max_concurrent_bidi_streams(0u32.into())
        .max_concurrent_uni_streams(0u32.into());
    Ok(t)
}

/// A quinn client config offering `alpn`, TLS 1.3 with ring, and the given transport.
pub fn client_config(
    alpn: &[u8],
    transport: Arc<quinn::TransportConfig>,
) -> Result<quinn::ClientConfig, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = Arc::new(AcceptAnyCert::new(&provider));
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| format!("TLS config: {e}"))?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    tls.alpn_protocols = vec![alpn.to_vec()];
    let quic = quinn::crypto::rustls::QuicClientConfig::try_from(tls)
        .map_err(|e| format!("QUIC TLS config: {e}"))?;
    let mut cfg = quinn::ClientConfig::new(Arc::new(quic));
    cfg.transport_config(transport);
    Ok(cfg)
}
