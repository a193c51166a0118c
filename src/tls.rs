//! TLS for both kinds of connection, with libpq's `sslmode` meanings.
//!
//! | sslmode       | encrypted        | certificate checked                     |
//! |---------------|------------------|-----------------------------------------|
//! | `disable`     | no               | -                                       |
//! | `allow`/`prefer` | if the server offers | no                             |
//! | `require`     | yes              | no — unless a root certificate is set, then as `verify-ca` (libpq does the same) |
//! | `verify-ca`   | yes              | chain to a trusted root                 |
//! | `verify-full` | yes              | chain, and the host name matches        |
//!
//! Roots come from `sslrootcert` (a PEM file, or `system` for the operating
//! system's store), else `~/.postgresql/root.crt` as libpq looks for it.

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};

/// libpq's `sslmode`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SslMode {
    Disable,
    Allow,
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

impl SslMode {
    /// Whether the connection fails when the server does not offer TLS.
    pub fn requires_tls(self) -> bool {
        matches!(
            self,
            SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull
        )
    }
}

impl FromStr for SslMode {
    type Err = ();
    fn from_str(s: &str) -> Result<Self, ()> {
        Ok(match s {
            "disable" => SslMode::Disable,
            "allow" => SslMode::Allow,
            "prefer" => SslMode::Prefer,
            "require" => SslMode::Require,
            "verify-ca" => SslMode::VerifyCa,
            "verify-full" => SslMode::VerifyFull,
            _ => return Err(()),
        })
    }
}

impl fmt::Display for SslMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SslMode::Disable => "disable",
            SslMode::Allow => "allow",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        })
    }
}

/// The TLS part of a connection string.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsSettings {
    pub mode: SslMode,
    pub root_cert: Option<PathBuf>,
    pub client_cert: Option<PathBuf>,
    pub client_key: Option<PathBuf>,
}

/// TLS could not be set up; the text says which file or setting to fix.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error(
        "cannot read {what} {path}: {source} (fix the path in {key} or the file's permissions)"
    )]
    File {
        what: &'static str,
        key: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} holds no usable {what} (expected PEM)")]
    Empty { what: &'static str, path: PathBuf },
    #[error(
        "sslmode={0} needs a trusted root certificate: set sslrootcert=/path/to/ca.pem (or sslrootcert=system), or put it in ~/.postgresql/root.crt"
    )]
    NoRoots(SslMode),
    #[error("TLS setup failed: {0}")]
    Rustls(#[from] rustls::Error),
}

impl TlsSettings {
    /// The rustls configuration that enforces this mode.
    pub fn client_config(&self) -> Result<ClientConfig, TlsError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()?;
        let roots = self.roots()?;
        let effective = match (self.mode, &roots) {
            // libpq: with a root certificate at hand, `require` verifies the chain.
            (SslMode::Require, Some(_)) => SslMode::VerifyCa,
            (m, _) => m,
        };
        let verifier: Arc<dyn ServerCertVerifier> = match effective {
            SslMode::VerifyCa | SslMode::VerifyFull => {
                let roots = roots.ok_or(TlsError::NoRoots(self.mode))?;
                let webpki =
                    WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                        .build()
                        .map_err(|e| TlsError::Rustls(rustls::Error::General(e.to_string())))?;
                if effective == SslMode::VerifyFull {
                    webpki
                } else {
                    Arc::new(ChainOnly(webpki))
                }
            }
            _ => Arc::new(Unverified(provider)),
        };
        let builder = builder
            .dangerous()
            .with_custom_certificate_verifier(verifier);
        let config = match (&self.client_cert, &self.client_key) {
            (Some(cert), Some(key)) => {
                let certs = load_certs(cert, "client certificate", "sslcert")?;
                let key = PrivateKeyDer::from_pem_file(key).map_err(|e| TlsError::File {
                    what: "client key",
                    key: "sslkey",
                    path: key.clone(),
                    source: std::io::Error::other(e.to_string()),
                })?;
                builder.with_client_auth_cert(certs, key)?
            }
            _ => builder.with_no_client_auth(),
        };
        Ok(config)
    }

    fn roots(&self) -> Result<Option<RootCertStore>, TlsError> {
        let mut store = RootCertStore::empty();
        match self.root_cert.as_deref() {
            Some(p) if p == Path::new("system") => {
                let found = rustls_native_certs::load_native_certs();
                for cert in found.certs {
                    // Skip certificates the system store has but webpki
                    // cannot parse, as browsers do.
                    let _ = store.add(cert);
                }
                Ok(Some(store))
            }
            Some(p) => {
                for cert in load_certs(p, "root certificate", "sslrootcert")? {
                    store.add(cert)?;
                }
                Ok(Some(store))
            }
            None => {
                let default = std::env::var_os("HOME")
                    .map(|h| PathBuf::from(h).join(".postgresql/root.crt"))
                    .filter(|p| p.is_file());
                match default {
                    Some(p) => {
                        for cert in load_certs(&p, "root certificate", "sslrootcert")? {
                            store.add(cert)?;
                        }
                        Ok(Some(store))
                    }
                    None => Ok(None),
                }
            }
        }
    }
}

fn load_certs(
    path: &Path,
    what: &'static str,
    key: &'static str,
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let io_err = |e: rustls::pki_types::pem::Error| TlsError::File {
        what,
        key,
        path: path.to_path_buf(),
        source: match e {
            rustls::pki_types::pem::Error::Io(e) => e,
            other => std::io::Error::other(other.to_string()),
        },
    };
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(io_err)?
        .collect::<Result<Vec<_>, _>>()
        .map_err(io_err)?;
    if certs.is_empty() {
        return Err(TlsError::Empty {
            what,
            path: path.to_path_buf(),
        });
    }
    Ok(certs)
}

/// `verify-ca`: the chain must lead to a trusted root, the name may differ.
#[derive(Debug)]
struct ChainOnly(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
        {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

/// `prefer`/`require` without a root: encrypted, certificate not checked —
/// exactly libpq's meaning. The handshake signature is still verified, so
/// the peer holds the key of the certificate it presented.
#[derive(Debug)]
struct Unverified(Arc<CryptoProvider>);

impl ServerCertVerifier for Unverified {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(mode: SslMode, root: Option<&str>) -> TlsSettings {
        TlsSettings {
            mode,
            root_cert: root.map(PathBuf::from),
            client_cert: None,
            client_key: None,
        }
    }

    #[test]
    fn modes_parse_and_print_as_libpq_spells_them() {
        for m in [
            "disable",
            "allow",
            "prefer",
            "require",
            "verify-ca",
            "verify-full",
        ] {
            assert_eq!(m.parse::<SslMode>().unwrap().to_string(), m);
        }
        assert!("verify_full".parse::<SslMode>().is_err());
    }

    #[test]
    fn verify_modes_without_roots_say_what_to_set() {
        // HOME may hold a root.crt on a developer machine; point it elsewhere.
        let dir = tempfile::tempdir().unwrap();
        // SAFETY: tests in this module do not read HOME concurrently.
        unsafe { std::env::set_var("HOME", dir.path()) };
        let e = settings(SslMode::VerifyFull, None)
            .client_config()
            .unwrap_err();
        assert!(e.to_string().contains("sslrootcert"), "{e}");
        assert!(settings(SslMode::Require, None).client_config().is_ok());
    }

    #[test]
    fn unreadable_root_file_names_the_file() {
        let e = settings(SslMode::VerifyCa, Some("/nonexistent/ca.pem"))
            .client_config()
            .unwrap_err();
        assert!(e.to_string().contains("/nonexistent/ca.pem"), "{e}");
    }
}
