//! TLS for `https://` and `wss://` URLs: rustls with the ring provider (the one TLS stack of
//! the workspace; the server terminates TLS with it too), trusting Mozilla's root certificates
//! and any the app adds ([`crate::Options::root_certificates`]).
//!
//! The roots come from `webpki-roots` rather than the operating system's store: the same roots
//! on every machine and in every container image (no CA bundle to install, nothing read from
//! disk at each connect), the ones the server's own HTTPS client trusts, and kept up to date by
//! the rustls project with Mozilla's list. An app behind a private CA adds that CA's certificate.

use std::sync::Arc;

use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use tokio_rustls::rustls::{self, CertificateError, ClientConfig, RootCertStore};
use tokio_tungstenite::Connector;
use tokio_tungstenite::tungstenite;

use crate::ClientError;

/// The certificates of a PEM file or string (`-----BEGIN CERTIFICATE-----` blocks), to trust with
/// [`crate::Options::root_certificates`]: a private CA's, or a self-signed server's own.
///
/// A self-signed server certificate must not be a CA certificate (`basicConstraints CA:TRUE`,
/// what `openssl req -x509` makes unless told otherwise): rustls refuses a CA certificate as a
/// server's own certificate even when it is trusted. Make it with
/// `-addext basicConstraints=critical,CA:FALSE`, or sign the server's certificate with a CA.
pub fn pem_certificates(pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, ClientError> {
    let certificates = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|error| ClientError::Certificate(format!("cannot read PEM certificates: {error}")))?;
    if certificates.is_empty() {
        return Err(ClientError::Certificate("the PEM holds no certificate".into()));
    }
    Ok(certificates)
}

/// The connector every connection uses: for `wss://`, rustls trusting the web's roots and
/// `extra`; plain connections pass through it untouched.
pub(crate) fn connector(extra: &[CertificateDer<'static>]) -> Result<Connector, ClientError> {
    let mut roots = RootCertStore { roots: webpki_roots::TLS_SERVER_ROOTS.to_vec() };
    for (index, certificate) in extra.iter().enumerate() {
        roots.add(certificate.clone()).map_err(|error| {
            ClientError::Certificate(format!("root certificate {} cannot be trusted: {error}", index + 1))
        })?;
    }
    // A provider of our own rather than the process's default: nothing to install first, and
    // no panic when an app installed none (or several).
    let config = ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|error| ClientError::Certificate(format!("cannot set up TLS: {error}")))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Connector::Rustls(Arc::new(config)))
}

/// A failed connection attempt in words; a certificate the client does not trust says what to
/// do about it.
pub(crate) fn describe(error: &tungstenite::Error) -> String {
    let tungstenite::Error::Io(io) = error else { return error.to_string() };
    let Some(rustls::Error::InvalidCertificate(certificate)) =
        io.get_ref().and_then(|inner| inner.downcast_ref::<rustls::Error>())
    else {
        return error.to_string();
    };
    match certificate {
        CertificateError::UnknownIssuer => "TLS: the server's certificate is not signed by a root this client trusts \
             (UnknownIssuer); to trust a private CA or a self-signed server, add its certificate to \
             Options::root_certificates"
            .to_string(),
        // rustls names this webpki error only in its text.
        CertificateError::Other(other) if other.to_string().contains("CaUsedAsEndEntity") => {
            "TLS: the server presents a CA certificate (CA:TRUE) as its own, which rustls refuses even when \
             trusted (CaUsedAsEndEntity): give the server a certificate with CA:FALSE, or one signed by that CA"
                .to_string()
        }
        _ => format!("TLS: the server's certificate is not accepted: {certificate}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pem_without_certificates_or_with_a_broken_one_is_a_clear_error() {
        for pem in ["", "not a pem at all", "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n"] {
            let error = pem_certificates(pem.as_bytes()).expect_err(pem);
            assert!(error.to_string().contains("no certificate"), "{error}");
        }
        let unfinished = "-----BEGIN CERTIFICATE-----\nMIIBhTCCASugAwIBAgIU\n";
        assert!(matches!(pem_certificates(unfinished.as_bytes()), Err(ClientError::Certificate(_))));
    }

    #[test]
    fn a_root_that_is_not_a_certificate_is_refused_when_the_client_is_made() {
        assert!(connector(&[]).is_ok());
        let garbage = CertificateDer::from(vec![1, 2, 3]);
        let error = connector(&[garbage]).err().expect("garbage is no root");
        assert!(error.to_string().contains("root certificate 1"), "{error}");
    }
}
