//! TLS for every hop, with one provider (ring, passed explicitly, so no
//! process-wide default is needed): a server's certificate, and client
//! certificates it may require ([`TlsConfig`] → [`ServerTls`]); the CA and
//! client certificate of calls to upstream services ([`UpstreamTlsConfig`]
//! → [`UpstreamTls`]). Every file is read again when it changes on disk, so
//! certificates rotate without a restart; a file that does not load then
//! is logged and the previous material kept.

use std::{
    fmt,
    future::Future,
    net::SocketAddr,
    path::{Path, PathBuf},
    pin::Pin,
    sync::{Arc, RwLock, Weak},
    task::{Context, Poll},
    time::{Duration, SystemTime},
};

use clap::Args;
use http::Uri;
use hyper_util::rt::TokioIo;
use rustls::{
    ClientConfig, RootCertStore, ServerConfig,
    crypto::CryptoProvider,
    pki_types::{CertificateDer, PrivateKeyDer, ServerName, pem::PemObject as _},
    server::{WebPkiClientVerifier, danger::ClientCertVerifier},
    sign::{CertifiedKey, SingleCertAndKey},
};
use tokio::net::TcpStream;
use tokio_rustls::{TlsAcceptor, TlsConnector};

use crate::config::InvalidSetting;

/// How often certificate files are checked for changes.
const RELOAD_INTERVAL: Duration = Duration::from_secs(1);

/// How long a client has to complete a handshake: a client that connects
/// and stays silent holds only its own task, and not for long.
pub(crate) const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// ALPN of gRPC, which is HTTP/2 only.
pub(crate) const ALPN_GRPC: &[&[u8]] = &[b"h2"];

/// ALPN of the HTTP servers: HTTP/2 first, HTTP/1.1 for older clients.
pub(crate) const ALPN_HTTP: &[&[u8]] = &[b"h2", b"http/1.1"];

/// The server side: the certificate this process presents on its own port
/// (the gateway's HTTP, a service's gRPC), and the CA its clients'
/// certificates must chain to when it requires them. In the all-in-one
/// binary these apply to the gateway's public port only.
#[derive(Debug, Clone, Default, Args)]
pub struct TlsConfig {
    /// PEM certificate chain to serve, leaf first. Set: the port speaks TLS
    /// only (HTTP/2 by ALPN, or HTTP/1.1); read again when the file changes.
    #[arg(long, env = "NWS_TLS_CERT", requires = "tls_key", value_parser = readable_file)]
    pub tls_cert: Option<PathBuf>,

    /// PEM private key (PKCS#8, PKCS#1 or SEC1) of NWS_TLS_CERT.
    #[arg(long, env = "NWS_TLS_KEY", requires = "tls_cert", value_parser = readable_file)]
    pub tls_key: Option<PathBuf>,

    /// PEM CA certificates that clients' certificates must chain to: set,
    /// every client must present one (mTLS). Needs NWS_TLS_CERT.
    #[arg(long, env = "NWS_TLS_CLIENT_CA", requires = "tls_cert", value_parser = readable_file)]
    pub tls_client_ca: Option<PathBuf>,
}

/// The client side, for calls to `https://` upstream URLs (the gateway's
/// Optimizer and Storage, the optimizer's Storage).
#[derive(Debug, Clone, Default, Args)]
pub struct UpstreamTlsConfig {
    /// PEM CA certificates that upstream servers' certificates must chain
    /// to; required by any `https://` upstream URL (no public roots are
    /// trusted).
    #[arg(long, env = "NWS_UPSTREAM_TLS_CA", value_parser = readable_file)]
    pub upstream_tls_ca: Option<PathBuf>,

    /// PEM client certificate chain presented to upstreams that require one
    /// (their NWS_TLS_CLIENT_CA).
    #[arg(
        long,
        env = "NWS_UPSTREAM_TLS_CERT",
        requires_all = ["upstream_tls_key", "upstream_tls_ca"],
        value_parser = readable_file
    )]
    pub upstream_tls_cert: Option<PathBuf>,

    /// PEM private key of NWS_UPSTREAM_TLS_CERT.
    #[arg(long, env = "NWS_UPSTREAM_TLS_KEY", requires = "upstream_tls_cert", value_parser = readable_file)]
    pub upstream_tls_key: Option<PathBuf>,
}

/// A path that names a file this process can read, checked when the
/// settings are parsed so that a typo stops start-up with the setting's name.
fn readable_file(value: &str) -> Result<PathBuf, String> {
    let path = PathBuf::from(value);
    std::fs::File::open(&path)
        .and_then(|file| file.metadata())
        .map_err(|e| format!("cannot read the file: {e}"))
        .and_then(|metadata| {
            metadata
                .is_file()
                .then_some(path)
                .ok_or_else(|| "not a file".to_owned())
        })
}

/// The only crypto provider of the process.
fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

impl TlsConfig {
    /// Reads the certificate, key and client CA, and keeps them current
    /// from then on. `None` when NWS_TLS_CERT is unset. Needs a Tokio
    /// runtime: the files are watched by a task of their own, which ends
    /// once every listener using them has stopped.
    pub fn load(&self) -> Result<Option<ServerTls>, InvalidSetting> {
        let (Some(cert), Some(key)) = (self.tls_cert.clone(), self.tls_key.clone()) else {
            return Ok(None);
        };
        let client_ca = self.tls_client_ca.clone();
        let mut files = vec![cert.clone(), key.clone()];
        files.extend(client_ca.clone());
        let material = Reloading::start("server", files, move || {
            ServerMaterial::load(&cert, &key, client_ca.as_deref())
        })?;
        Ok(Some(ServerTls {
            material,
            mutual: self.tls_client_ca.is_some(),
        }))
    }
}

impl UpstreamTlsConfig {
    /// Reads the CA and the client certificate, and keeps them current from
    /// then on (see [`TlsConfig::load`]). Without NWS_UPSTREAM_TLS_CA,
    /// upstreams can be reached over `http://` only.
    pub fn load(&self) -> Result<UpstreamTls, InvalidSetting> {
        let Some(ca) = self.upstream_tls_ca.clone() else {
            return Ok(UpstreamTls::default());
        };
        let identity = self.upstream_tls_cert.clone().zip(self.upstream_tls_key.clone());
        let mut files = vec![ca.clone()];
        if let Some((cert, key)) = &identity {
            files.extend([cert.clone(), key.clone()]);
        }
        let client = Reloading::start("upstream", files, move || {
            client_config(&ca, identity.as_ref().map(|(c, k)| (c.as_path(), k.as_path())))
        })?;
        Ok(UpstreamTls { client: Some(client) })
    }
}

/// A server's TLS material, kept current from its files; cheap to clone.
#[derive(Clone)]
pub struct ServerTls {
    material: Arc<Reloading<ServerMaterial>>,
    mutual: bool,
}

impl fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerTls")
            .field("mutual", &self.mutual)
            .finish_non_exhaustive()
    }
}

impl ServerTls {
    /// Whether clients must present a certificate (NWS_TLS_CLIENT_CA).
    pub fn mutual(&self) -> bool {
        self.mutual
    }

    /// How a listener with `tls` reports itself in its "listening" line.
    pub(crate) fn mode(tls: Option<&Self>) -> &'static str {
        match tls {
            None => "off",
            Some(tls) if tls.mutual => "mtls",
            Some(_) => "on",
        }
    }

    /// Acceptors for one listener, offering `alpn`.
    pub(crate) fn acceptors(&self, alpn: &[&[u8]]) -> Acceptors {
        Acceptors {
            tls: self.clone(),
            alpn: alpn.iter().map(|p| p.to_vec()).collect(),
            built: None,
        }
    }
}

/// One listener's handshakes: its server configuration (with its ALPN),
/// built again only when the material has been reloaded.
pub(crate) struct Acceptors {
    tls: ServerTls,
    alpn: Vec<Vec<u8>>,
    built: Option<(u64, TlsAcceptor)>,
}

impl Acceptors {
    /// The acceptor for the next connection, with the current certificate.
    pub(crate) fn current(&mut self) -> TlsAcceptor {
        let (generation, material) = self.tls.material.current();
        match &self.built {
            Some((built, acceptor)) if *built == generation => acceptor.clone(),
            _ => {
                let mut config = material.config.as_ref().clone();
                config.alpn_protocols = self.alpn.clone();
                let acceptor = TlsAcceptor::from(Arc::new(config));
                self.built = Some((generation, acceptor.clone()));
                acceptor
            }
        }
    }
}

/// Completes the server side of a handshake within [`HANDSHAKE_TIMEOUT`];
/// a failure concerns that client only, and is logged at debug.
pub(crate) async fn handshake(
    acceptor: TlsAcceptor,
    stream: TcpStream,
    peer: SocketAddr,
) -> Option<tokio_rustls::server::TlsStream<TcpStream>> {
    let accept = acceptor.accept(stream).into_fallible();
    match tokio::time::timeout(HANDSHAKE_TIMEOUT, accept).await {
        Ok(Ok(stream)) => Some(stream),
        Ok(Err((error, stream))) => {
            tracing::debug!(%peer, %error, "TLS handshake failed");
            close_after_alert(stream).await;
            None
        }
        Err(_) => {
            tracing::debug!(%peer, timeout = ?HANDSHAKE_TIMEOUT, "TLS handshake timed out");
            None
        }
    }
}

/// How long a refused client has to finish sending before its connection
/// is dropped.
const ALERT_LINGER: Duration = Duration::from_secs(1);

/// Closes a connection whose handshake failed after the alert that says
/// why (certificate required, unknown CA) was sent. Dropped at once, with
/// the client's last handshake records still unread, the connection would
/// be reset, and a reset can reach the client before the alert does:
/// the client would see "connection reset" instead of the reason.
async fn close_after_alert(mut stream: TcpStream) {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let _ = stream.shutdown().await;
    let drain = async {
        let mut discard = [0u8; 4096];
        while matches!(stream.read(&mut discard).await, Ok(read) if read > 0) {}
    };
    let _ = tokio::time::timeout(ALERT_LINGER, drain).await;
}

/// What one load of the server's files gives: a configuration without ALPN,
/// which each listener completes with its own.
struct ServerMaterial {
    config: Arc<ServerConfig>,
}

impl ServerMaterial {
    fn load(cert: &Path, key: &Path, client_ca: Option<&Path>) -> Result<Self, InvalidSetting> {
        let provider = provider();
        let certified = certified_key(("NWS_TLS_CERT", cert), ("NWS_TLS_KEY", key), &provider)?;
        let builder = ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| InvalidSetting::new("NWS_TLS_CERT", format!("TLS versions: {e}")))?;
        let builder = match client_ca {
            None => builder.with_no_client_auth(),
            Some(ca) => {
                let roots = root_store("NWS_TLS_CLIENT_CA", ca)?;
                let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                    .build()
                    .map_err(|e| InvalidSetting::file("NWS_TLS_CLIENT_CA", ca, e))?;
                builder.with_client_cert_verifier(verifier as Arc<dyn ClientCertVerifier>)
            }
        };
        let config = builder.with_cert_resolver(Arc::new(SingleCertAndKey::from(certified)));
        Ok(Self {
            config: Arc::new(config),
        })
    }
}

/// Client TLS for upstream channels; the default has none (plain `http://`
/// upstreams only). Cheap to clone.
#[derive(Clone, Default)]
pub struct UpstreamTls {
    client: Option<Arc<Reloading<ClientConfig>>>,
}

impl fmt::Debug for UpstreamTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UpstreamTls")
            .field("configured", &self.client.is_some())
            .finish()
    }
}

impl UpstreamTls {
    /// Whether `https://` upstreams can be reached (NWS_UPSTREAM_TLS_CA set).
    pub fn is_configured(&self) -> bool {
        self.client.is_some()
    }

    /// The connector of a channel to an `https://` upstream.
    pub(crate) fn connector(&self) -> UpstreamConnector {
        UpstreamConnector {
            client: self.client.clone(),
            dial: None,
        }
    }

    /// The connector of a channel to one address of a balanced name: it
    /// dials `addr`, and checks the certificate against the name in the
    /// channel's URL, as for the name itself.
    pub(crate) fn connector_to(&self, addr: SocketAddr) -> UpstreamConnector {
        UpstreamConnector {
            client: self.client.clone(),
            dial: Some(addr),
        }
    }
}

/// Dials an upstream over TCP and completes a TLS handshake offering `h2`,
/// with the CA and client certificate current at that moment.
#[derive(Clone)]
pub(crate) struct UpstreamConnector {
    client: Option<Arc<Reloading<ClientConfig>>>,
    /// The address to dial instead of resolving the URL's host.
    dial: Option<SocketAddr>,
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl tower::Service<Uri> for UpstreamConnector {
    type Response = TokioIo<tokio_rustls::client::TlsStream<TcpStream>>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let client = self.client.as_ref().map(|client| client.current().1);
        let dial = self.dial;
        Box::pin(async move {
            // A channel made without client settings never falls back to
            // plain text for an https:// URL.
            let client = client.ok_or("an https:// upstream needs NWS_UPSTREAM_TLS_CA")?;
            let host = uri.host().ok_or("upstream URL without a host")?;
            let host = host.trim_start_matches('[').trim_end_matches(']');
            let port = uri.port_u16().unwrap_or(443);
            let server_name = ServerName::try_from(host.to_owned())?;
            let tcp = match dial {
                Some(addr) => TcpStream::connect(addr).await?,
                None => TcpStream::connect((host, port)).await?,
            };
            tcp.set_nodelay(true)?;
            let tls = TlsConnector::from(client).connect(server_name, tcp).await?;
            Ok(TokioIo::new(tls))
        })
    }
}

fn client_config(ca: &Path, identity: Option<(&Path, &Path)>) -> Result<ClientConfig, InvalidSetting> {
    let provider = provider();
    let roots = root_store("NWS_UPSTREAM_TLS_CA", ca)?;
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| InvalidSetting::new("NWS_UPSTREAM_TLS_CA", format!("TLS versions: {e}")))?
        .with_root_certificates(roots);
    let mut config = match identity {
        None => builder.with_no_client_auth(),
        Some((cert, key)) => {
            let certified = certified_key(
                ("NWS_UPSTREAM_TLS_CERT", cert),
                ("NWS_UPSTREAM_TLS_KEY", key),
                &provider,
            )?;
            builder.with_client_cert_resolver(Arc::new(SingleCertAndKey::from(certified)))
        }
    };
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(config)
}

/// A certificate chain and its private key, checked to belong together.
fn certified_key(
    (cert_setting, cert): (&'static str, &Path),
    (key_setting, key): (&'static str, &Path),
    provider: &CryptoProvider,
) -> Result<CertifiedKey, InvalidSetting> {
    let chain = certificates(cert_setting, cert)?;
    let private_key = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| InvalidSetting::file(key_setting, key, format!("no PEM private key ({e})")))?;
    CertifiedKey::from_der(chain, private_key, provider).map_err(|e| {
        InvalidSetting::file(
            key_setting,
            key,
            format!("not the key of {cert_setting} {}: {e}", cert.display()),
        )
    })
}

fn certificates(setting: &'static str, path: &Path) -> Result<Vec<CertificateDer<'static>>, InvalidSetting> {
    let chain = CertificateDer::pem_file_iter(path)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| InvalidSetting::file(setting, path, format!("not PEM certificates ({e})")))?;
    if chain.is_empty() {
        return Err(InvalidSetting::file(
            setting,
            path,
            "no PEM certificate in the file",
        ));
    }
    Ok(chain)
}

fn root_store(setting: &'static str, path: &Path) -> Result<RootCertStore, InvalidSetting> {
    let mut roots = RootCertStore::empty();
    for cert in certificates(setting, path)? {
        roots
            .add(cert)
            .map_err(|e| InvalidSetting::file(setting, path, format!("not a CA certificate: {e}")))?;
    }
    Ok(roots)
}

/// Material loaded from files, replaced when they change. Each replacement
/// gets a new generation, so that users can tell when to rebuild.
struct Reloading<T> {
    current: RwLock<(u64, Arc<T>)>,
}

/// What is compared to notice a change: each file's modification time and
/// length (a file rewritten in place changes both, or at least one).
type Stamps = Vec<Option<(SystemTime, u64)>>;

fn stamps(files: &[PathBuf]) -> Stamps {
    files
        .iter()
        .map(|file| {
            let metadata = std::fs::metadata(file).ok()?;
            Some((metadata.modified().ok()?, metadata.len()))
        })
        .collect()
}

impl<T: Send + Sync + 'static> Reloading<T> {
    /// Loads once (an error here stops start-up), then checks `files`
    /// every [`RELOAD_INTERVAL`] until the material is no longer used.
    fn start(
        what: &'static str,
        files: Vec<PathBuf>,
        load: impl Fn() -> Result<T, InvalidSetting> + Send + 'static,
    ) -> Result<Arc<Self>, InvalidSetting> {
        let mut seen = stamps(&files);
        let this = Arc::new(Self {
            current: RwLock::new((0, Arc::new(load()?))),
        });
        let weak: Weak<Self> = Arc::downgrade(&this);
        tokio::spawn(async move {
            let mut interval = tokio::time::interval(RELOAD_INTERVAL);
            interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                interval.tick().await;
                let Some(this) = weak.upgrade() else {
                    return;
                };
                let now = stamps(&files);
                if now == seen {
                    continue;
                }
                // A failed load is reported once per change of the files,
                // and tried again at their next change (e.g. the key
                // written after the certificate).
                seen = now;
                match load() {
                    Ok(material) => {
                        let generation = this.replace(material);
                        tracing::info!(tls = what, generation, "TLS certificates reloaded");
                    }
                    Err(error) => tracing::warn!(
                        tls = what,
                        %error,
                        "TLS certificates not reloaded; the previous ones stay in use"
                    ),
                }
            }
        });
        Ok(this)
    }

    fn current(&self) -> (u64, Arc<T>) {
        let current = self
            .current
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        (current.0, current.1.clone())
    }

    fn replace(&self, material: T) -> u64 {
        let mut current = self
            .current
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        *current = (current.0 + 1, Arc::new(material));
        current.0
    }
}
