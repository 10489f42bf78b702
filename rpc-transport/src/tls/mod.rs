//! TLS for netrpc connections, with rustls: encryption, server authentication, and optional
//! client authentication by certificate (mutual TLS). Owns the configuration helpers; the
//! per-connection session lives in [`session`](self) and is driven by the event loop.
//!
//! Go's `net/rpc` has no security of its own; Go programs wrap the listener and the dialer in
//! `crypto/tls` (`tls.Listen`, `tls.Dial`). Here TLS is an optional layer of a
//! [`crate::Connection`]: frames are encrypted as they are sent and decrypted as they are
//! read, so everything above the transport (server, client, middleware) is unchanged.
//!
//! ```text
//!   send(frame bytes) ──► rustls writer ──► records ──► outbound queue ──► socket
//!   socket ──► read_tls ──► process_new_packets ──► plaintext ──► FrameDecoder
//! ```
//!
//! What is verified: the client checks the server's certificate chain against its roots and
//! the name it dialed (rustls's webpki verifier); a server built with client CA roots
//! requires every client to present a certificate chained to them. A handshake must finish
//! within the frame timeout ([`crate::FrameLimits::frame_timeout`]), counted from when the
//! connection is adopted; failures close the connection with [`TransportError::Tls`],
//! [`TransportError::TlsHandshakeTimeout`] or [`TransportError::TlsHandshakeClosed`].
//!
//! # Examples
//!
//! ```no_run
//! use rpc_transport::tls::{self, CertificateDer, PrivateKeyDer, RootCertStore};
//!
//! # fn load() -> (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>, CertificateDer<'static>) { unimplemented!() }
//! let (server_chain, server_key, ca_cert) = load();
//! let mut roots = RootCertStore::empty();
//! roots.add(ca_cert).map_err(|error| rpc_transport::TransportError::Tls { error })?;
//! // Server: its certificate and key; `Some(roots)` would require client certificates.
//! let server = tls::server_config(server_chain, server_key, None)?;
//! // Client: trust certificates chained to `roots`; no client certificate.
//! let client = tls::client_config(roots, None)?;
//! let dial_as = tls::ClientTls::new(client, "localhost")?;
//! # let _ = (server, dial_as);
//! # Ok::<(), rpc_transport::TransportError>(())
//! ```

use std::sync::Arc;

pub use rustls;
pub use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
pub use rustls::{ClientConfig, RootCertStore, ServerConfig};

use rustls::crypto::CryptoProvider;
use rustls::server::WebPkiClientVerifier;

use crate::error::TransportError;

pub(crate) mod record_cursor;
pub(crate) mod session;

/// What a client needs to open TLS on a connection: its rustls configuration and the name
/// the server's certificate must carry (a DNS name such as `localhost`, or an IP address).
#[derive(Debug, Clone)]
pub struct ClientTls {
    /// Roots to trust, protocol versions, and the client certificate, if any.
    pub config: Arc<ClientConfig>,
    /// The name checked against the server's certificate.
    pub server_name: ServerName<'static>,
}

impl ClientTls {
    /// Client TLS that expects the server's certificate to name `server_name`.
    ///
    /// # Errors
    ///
    /// [`TransportError::Tls`] if `server_name` is neither a DNS name nor an IP address.
    pub fn new(config: Arc<ClientConfig>, server_name: &str) -> Result<Self, TransportError> {
        let server_name =
            ServerName::try_from(server_name.to_owned()).map_err(|_| TransportError::Tls {
                error: rustls::Error::General(format!(
                    "`{server_name}` is not a valid tls server name"
                )),
            })?;
        Ok(ClientTls {
            config,
            server_name,
        })
    }

    /// A new client session for one connection, for [`crate::LoopHandle::adopt_tls`].
    ///
    /// # Errors
    ///
    /// [`TransportError::Tls`] if rustls refuses the configuration.
    pub fn session(&self) -> Result<rustls::Connection, TransportError> {
        let conn =
            rustls::ClientConnection::new(Arc::clone(&self.config), self.server_name.clone())
                .map_err(tls_error)?;
        Ok(rustls::Connection::Client(conn))
    }
}

/// A new server session for one accepted connection, for [`crate::LoopHandle::adopt_tls`].
///
/// # Errors
///
/// [`TransportError::Tls`] if rustls refuses the configuration.
pub fn server_session(config: &Arc<ServerConfig>) -> Result<rustls::Connection, TransportError> {
    let conn = rustls::ServerConnection::new(Arc::clone(config)).map_err(tls_error)?;
    Ok(rustls::Connection::Server(conn))
}

/// A server configuration presenting `cert_chain` (leaf first) with its private `key`.
///
/// With `client_ca_roots`, every client must present a certificate chained to one of those
/// roots (mutual TLS); a client without one is refused during the handshake. Without, any
/// client may connect. TLS 1.2 and 1.3, ring's cipher suites.
///
/// # Errors
///
/// [`TransportError::Tls`] if the key does not match the certificate or is of a kind ring
/// cannot use, or if `client_ca_roots` is empty.
pub fn server_config(
    cert_chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    client_ca_roots: Option<RootCertStore>,
) -> Result<Arc<ServerConfig>, TransportError> {
    let provider = provider();
    let builder = ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .map_err(tls_error)?;
    let builder = match client_ca_roots {
        Some(roots) => {
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|err| tls_error(rustls::Error::General(err.to_string())))?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let config = builder
        .with_single_cert(cert_chain, key)
        .map_err(tls_error)?;
    Ok(Arc::new(config))
}

/// A client configuration trusting server certificates chained to `roots`, presenting
/// `client_cert` (chain leaf first, and its key) to servers that ask for one.
///
/// # Errors
///
/// [`TransportError::Tls`] if the client key does not match its certificate or is of a
/// kind ring cannot use.
pub fn client_config(
    roots: RootCertStore,
    client_cert: Option<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)>,
) -> Result<Arc<ClientConfig>, TransportError> {
    let builder = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(tls_error)?
        .with_root_certificates(roots);
    let config = match client_cert {
        Some((chain, key)) => builder
            .with_client_auth_cert(chain, key)
            .map_err(tls_error)?,
        None => builder.with_no_client_auth(),
    };
    Ok(Arc::new(config))
}

/// ring's provider, named explicitly: rustls's process default panics when another crate
/// in the build enables a second provider.
fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn tls_error(error: rustls::Error) -> TransportError {
    TransportError::Tls { error }
}
