//! The manager's transport: plain TCP, or TLS (rustls) over it.

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{
    ClientConfig, ClientConnection, RootCertStore, ServerConfig, ServerConnection, StreamOwned,
};

/// A connection, plain or encrypted.
pub(crate) enum Stream {
    Plain(TcpStream),
    Server(Box<StreamOwned<ServerConnection, TcpStream>>),
    Client(Box<StreamOwned<ClientConnection, TcpStream>>),
}

impl std::fmt::Debug for Stream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Plain(_) => "Stream::Plain",
            Self::Server(_) => "Stream::Server(tls)",
            Self::Client(_) => "Stream::Client(tls)",
        })
    }
}

impl Stream {
    /// The TCP socket underneath.
    pub(crate) fn tcp(&self) -> &TcpStream {
        match self {
            Self::Plain(s) => s,
            Self::Server(s) => &s.sock,
            Self::Client(s) => &s.sock,
        }
    }

    /// Whether it is plain TCP (where the socket's readiness is the
    /// stream's: TLS may hold decrypted bytes the socket does not show).
    pub(crate) fn is_plain(&self) -> bool {
        matches!(self, Self::Plain(_))
    }
}

impl Stream {
    /// Runs the TLS handshake to its end, or fails with `TimedOut` at
    /// `deadline` (the socket's short read timeout only paces the loop).
    pub(crate) fn complete_handshake(&mut self, deadline: std::time::Instant) -> io::Result<()> {
        loop {
            let result = match self {
                Self::Plain(_) => return Ok(()),
                Self::Server(s) if s.conn.is_handshaking() => s.conn.complete_io(&mut s.sock),
                Self::Client(s) if s.conn.is_handshaking() => s.conn.complete_io(&mut s.sock),
                Self::Server(_) | Self::Client(_) => return Ok(()),
            };
            match result {
                Ok(_) => {}
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) => {}
                Err(e) => return Err(e),
            }
            if std::time::Instant::now() >= deadline {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "the TLS handshake took too long",
                ));
            }
        }
    }
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Self::Plain(s) => s.read(buf),
            Self::Server(s) => s.read(buf),
            Self::Client(s) => s.read(buf),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Self::Plain(s) => s.write(buf),
            Self::Server(s) => s.write(buf),
            Self::Client(s) => s.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Self::Plain(s) => s.flush(),
            Self::Server(s) => s.flush(),
            Self::Client(s) => s.flush(),
        }
    }
}

fn bad(what: &str, e: impl std::fmt::Display) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, format!("{what}: {e}"))
}

/// A server configuration from a PEM certificate chain and private key.
pub(crate) fn server_config(
    cert_chain_pem: &[u8],
    key_pem: &[u8],
) -> io::Result<Arc<ServerConfig>> {
    let certs = CertificateDer::pem_slice_iter(cert_chain_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad("the certificate chain", e))?;
    if certs.is_empty() {
        return Err(bad("the certificate chain", "no certificate in the PEM"));
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| bad("the private key", e))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| bad("TLS", e))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| bad("the certificate", e))?;
    Ok(Arc::new(config))
}

/// A client configuration trusting the PEM certificates in `ca_pem`.
pub(crate) fn client_config(ca_pem: &[u8]) -> io::Result<Arc<ClientConfig>> {
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem) {
        let cert = cert.map_err(|e| bad("the CA certificate", e))?;
        roots.add(cert).map_err(|e| bad("the CA certificate", e))?;
    }
    if roots.is_empty() {
        return Err(bad("the CA certificates", "no certificate in the PEM"));
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| bad("TLS", e))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// Wraps an accepted socket in TLS.
pub(crate) fn accept(config: &Arc<ServerConfig>, sock: TcpStream) -> io::Result<Stream> {
    let conn = ServerConnection::new(Arc::clone(config)).map_err(|e| bad("TLS", e))?;
    Ok(Stream::Server(Box::new(StreamOwned::new(conn, sock))))
}

/// Wraps a connected socket in TLS, checking the manager's name.
pub(crate) fn connect(
    config: &Arc<ClientConfig>,
    name: &str,
    sock: TcpStream,
) -> io::Result<Stream> {
    let name = ServerName::try_from(name.to_owned()).map_err(|e| bad("the server name", e))?;
    let conn = ClientConnection::new(Arc::clone(config), name).map_err(|e| bad("TLS", e))?;
    Ok(Stream::Client(Box::new(StreamOwned::new(conn, sock))))
}
