//! rustls client configurations shared by the Postgres and MySQL connectors.
//!
//! libpq's `sslmode` semantics: `prefer` and `require` encrypt without
//! checking the certificate (as libpq does), `verify-ca` checks the chain,
//! `verify-full` checks the chain and the host name. Roots come from
//! `sslrootcert` when given, otherwise the bundled Mozilla roots.

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, SignatureScheme};
use std::sync::Arc;

/// How much of the server certificate to check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verify {
    /// Encrypt only (libpq `prefer` / `require`).
    None,
    /// Check the chain (and the host name: rustls always does; `verify-ca` is treated as
    /// `verify-full`, which is stricter, never weaker).
    Full,
}

/// TLS setup errors.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// The root certificate file could not be read or parsed.
    #[error("cannot load root certificates from {path}: {message}")]
    Roots {
        /// Path.
        path: String,
        /// Cause.
        message: String,
    },
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A client configuration for `verify`, trusting `root_cert_file` or the bundled roots.
pub fn client_config(
    verify: Verify,
    root_cert_file: Option<&str>,
) -> Result<ClientConfig, TlsError> {
    let builder = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Roots {
            path: "-".into(),
            message: e.to_string(),
        })?;
    let config = match verify {
        Verify::None => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(NoVerify(provider())))
            .with_no_client_auth(),
        Verify::Full => {
            let mut roots = rustls::RootCertStore::empty();
            match root_cert_file {
                Some(path) => {
                    use rustls_pki_types::pem::PemObject;
                    let certs =
                        CertificateDer::pem_file_iter(path).map_err(|e| TlsError::Roots {
                            path: path.to_owned(),
                            message: e.to_string(),
                        })?;
                    for cert in certs {
                        let cert = cert.map_err(|e| TlsError::Roots {
                            path: path.to_owned(),
                            message: e.to_string(),
                        })?;
                        roots.add(cert).map_err(|e| TlsError::Roots {
                            path: path.to_owned(),
                            message: e.to_string(),
                        })?;
                    }
                }
                None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
            }
            builder.with_root_certificates(roots).with_no_client_auth()
        }
    };
    Ok(config)
}

/// Accepts any certificate but still checks handshake signatures (libpq `require`).
#[derive(Debug)]
struct NoVerify(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for NoVerify {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
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
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
