//! Client-side balancing: a channel per address a DNS name resolves to,
//! and each call sent to one of them. Behind a Kubernetes ClusterIP one
//! long-lived HTTP/2 connection carries every call to one pod; a headless
//! Service's name resolves to every ready pod instead, and this spreads the
//! calls over them.
//!
//! - The name is resolved again every NWS_RESOLVE_INTERVAL, so a new pod
//!   gets calls without a restart and a removed one stops getting them.
//!   A failed resolution keeps the addresses known before.
//! - An address whose connection fails (refused, reset mid-call) is taken
//!   out of turn at once for a second, doubling up to 30 s while it keeps
//!   failing, and put back by its first answer: a killed pod stops getting
//!   calls before DNS notices. One that refuses a call for load
//!   (RESOURCE_EXHAUSTED) sits out half a second, without that doubling:
//!   the caller can make the call again on another. When every address is
//!   out, each is tried anyway and the name is resolved again at once.
//! - [`Routing::Least`] sends a call to the address with the fewest calls in
//!   flight (a response body counts until it ends), in turn among equals.
//!   [`Routing::Hash`] sends a call carrying a [`RoutingKey`] to the address
//!   that key ranks highest (rendezvous hashing): the same key goes to the
//!   same replica while it is there, and when one of N leaves only its
//!   keys (about 1/N) move, each to its next-ranked replica.

use std::{
    net::SocketAddr,
    pin::Pin,
    sync::{
        Arc, Mutex, Weak,
        atomic::{AtomicUsize, Ordering},
    },
    task::{Context, Poll},
    time::Duration,
};

use bytes::Bytes;
use futures_util::{TryFutureExt as _, future::BoxFuture};
use hickory_resolver::{
    Resolver,
    config::{ConnectionConfig, NameServerConfig, ResolveHosts, ResolverConfig, ResolverOpts},
    net::runtime::TokioRuntimeProvider,
};
use http_body::Frame;
use tokio::{
    sync::{Notify, watch},
    time::Instant,
};
use tonic::{body::Body, transport::Channel};
use tower::{Service, ServiceExt as _};

use super::target::DnsTarget;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// How calls are spread over a name's addresses (NWS_OPTIMIZER_ROUTING).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Routing {
    /// The address with the fewest calls in flight.
    #[default]
    Least,
    /// By the call's [`RoutingKey`] (rendezvous hashing); calls without one
    /// as [`Routing::Least`].
    Hash,
}

/// What [`Routing::Hash`] routes a call by, set in its request's
/// extensions: e.g. the cache key of the result it makes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RoutingKey(u64);

impl RoutingKey {
    pub fn of(key: impl AsRef<[u8]>) -> Self {
        RoutingKey(fnv1a(key.as_ref()))
    }

    /// This key's rank of the endpoint `id`: every endpoint gets an
    /// independent-looking score, and the highest wins.
    fn score(self, endpoint: u64) -> u64 {
        mix(self.0 ^ endpoint)
    }
}

/// FNV-1a: stable across builds and processes, so every gateway replica
/// (and the next version) routes a key the same way.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, byte| {
        (hash ^ u64::from(*byte)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// SplitMix64's finaliser: a bijection whose every output bit depends on
/// every input bit, so nearby inputs get unrelated scores.
fn mix(mut x: u64) -> u64 {
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// The endpoint `key` goes to among `ids` under [`Routing::Hash`]: the
/// index of the one it ranks highest.
pub fn rendezvous(key: RoutingKey, ids: impl IntoIterator<Item = u64>) -> Option<usize> {
    ids.into_iter()
        .enumerate()
        .max_by_key(|(_, id)| key.score(*id))
        .map(|(index, _)| index)
}

/// An endpoint's identity for hashing: its address, so every gateway
/// ranks the same pods the same way.
pub fn endpoint_id(addr: SocketAddr) -> u64 {
    fnv1a(addr.to_string().as_bytes())
}

const FIRST_OUT: Duration = Duration::from_secs(1);
const LONGEST_OUT: Duration = Duration::from_secs(30);
/// How long a replica that refused a call for load is passed over: about
/// one render, so the next calls go elsewhere while its line shortens.
const BUSY_OUT: Duration = Duration::from_millis(500);
/// How long a call waits for a name's first resolution.
const FIRST_RESOLUTION_WAIT: Duration = Duration::from_secs(5);
/// Resolutions asked for by calls (every address out) come no closer.
const SOONEST_RESOLUTION: Duration = Duration::from_millis(500);

/// The service under every upstream channel: one connection for a URL, or
/// a balanced set for a DNS name.
#[derive(Clone)]
pub struct Balanced(Inner);

#[derive(Clone)]
enum Inner {
    One(Channel),
    Pool(Arc<Pool>),
}

impl Balanced {
    pub(crate) fn one(channel: Channel) -> Self {
        Balanced(Inner::One(channel))
    }

    /// Resolves `target` now and every `target.resolve_interval` on a task
    /// of its own (which ends with the last clone), making each address's
    /// channel with `connect`. `caller` labels the endpoint gauge.
    pub(crate) fn resolve(
        target: DnsTarget,
        caller: &'static str,
        connect: impl Fn(SocketAddr) -> Channel + Send + Sync + 'static,
    ) -> Self {
        let resolver = NameResolver::for_target(&target);
        let interval = target.resolve_interval;
        let wake = Arc::new(Notify::new());
        let pool = Arc::new(Pool {
            target,
            caller,
            state: watch::Sender::new(Resolution::Pending),
            turn: AtomicUsize::new(0),
            resolve_now: wake.clone(),
            connect: Box::new(connect),
        });
        tokio::spawn(keep_resolving(Arc::downgrade(&pool), resolver, interval, wake));
        Balanced(Inner::Pool(pool))
    }

    /// How many endpoints calls are spread over now: 1 for a URL; for a
    /// name, its addresses (0 before the first resolution).
    pub fn endpoints(&self) -> usize {
        match &self.0 {
            Inner::One(_) => 1,
            Inner::Pool(pool) => match &*pool.state.borrow() {
                Resolution::Resolved(endpoints) => endpoints.len(),
                Resolution::Pending | Resolution::Failed(_) => 0,
            },
        }
    }
}

impl Service<http::Request<Body>> for Balanced {
    type Response = http::Response<Body>;
    type Error = BoxError;
    type Future = BoxFuture<'static, Result<Self::Response, BoxError>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        match &mut self.0 {
            Inner::One(channel) => channel.poll_ready(cx).map_err(Into::into),
            // Readiness is the chosen endpoint's, awaited in the call.
            Inner::Pool(_) => Poll::Ready(Ok(())),
        }
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        match &mut self.0 {
            Inner::One(channel) => Box::pin(channel.call(request).map_err(Into::into)),
            Inner::Pool(pool) => Box::pin(pool.clone().call(request)),
        }
    }
}

/// One address of a name, with its connection and load.
struct Endpoint {
    addr: SocketAddr,
    id: u64,
    channel: Channel,
    in_flight: AtomicUsize,
    health: Mutex<Health>,
}

#[derive(Default)]
struct Health {
    failures: u32,
    out_until: Option<Instant>,
}

impl Endpoint {
    fn health(&self) -> std::sync::MutexGuard<'_, Health> {
        self.health
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn is_out(&self, now: Instant) -> bool {
        self.health().out_until.is_some_and(|until| until > now)
    }

    /// Its connection failed: out of turn, for longer each time in a row.
    fn failed(&self) {
        let mut health = self.health();
        health.failures = health.failures.saturating_add(1);
        let out = FIRST_OUT
            .saturating_mul(1 << (health.failures - 1).min(5))
            .min(LONGEST_OUT);
        health.out_until = Some(Instant::now() + out);
        tracing::debug!(endpoint = %self.addr, failures = health.failures, ?out, "endpoint out of turn");
    }

    /// It refused a call for load: out of turn briefly, its failures
    /// untouched (it answers; it is full).
    fn busy(&self) {
        let mut health = self.health();
        let until = Instant::now() + BUSY_OUT;
        health.out_until = Some(health.out_until.map_or(until, |out| out.max(until)));
    }

    fn answered(&self) {
        let mut health = self.health();
        if health.failures > 0 {
            tracing::debug!(endpoint = %self.addr, "endpoint answers again");
        }
        *health = Health::default();
    }
}

#[derive(Clone)]
enum Resolution {
    Pending,
    /// Never resolved; why, for the calls that fail meanwhile.
    Failed(Arc<str>),
    Resolved(Arc<[Arc<Endpoint>]>),
}

struct Pool {
    target: DnsTarget,
    caller: &'static str,
    state: watch::Sender<Resolution>,
    /// Where the search for the least loaded starts: equals take turns.
    turn: AtomicUsize,
    resolve_now: Arc<Notify>,
    connect: Box<dyn Fn(SocketAddr) -> Channel + Send + Sync>,
}

impl Pool {
    async fn call(self: Arc<Self>, request: http::Request<Body>) -> Result<http::Response<Body>, BoxError> {
        let endpoints = self.endpoints().await?;
        let key = request.extensions().get::<RoutingKey>().copied();
        let endpoint = self.pick(&endpoints, key);
        let in_flight = InFlight::start(endpoint.clone());
        let answer = endpoint.channel.clone().oneshot(request).await;
        match answer {
            Ok(response) => {
                if refused_for_load(&response) {
                    endpoint.busy();
                } else {
                    endpoint.answered();
                }
                Ok(response.map(|body| Body::new(Tracked { body, in_flight })))
            }
            Err(error) => {
                endpoint.failed();
                Err(error.into())
            }
        }
    }

    /// The endpoints, once the name has been resolved at least once.
    async fn endpoints(&self) -> Result<Arc<[Arc<Endpoint>]>, BoxError> {
        let mut state = self.state.subscribe();
        let resolved = tokio::time::timeout(
            FIRST_RESOLUTION_WAIT,
            state.wait_for(|state| !matches!(state, Resolution::Pending)),
        )
        .await;
        let unavailable = |why: &str| -> BoxError {
            Box::new(tonic::Status::unavailable(format!("{}: {why}", self.target)))
        };
        match resolved {
            Err(_) => Err(unavailable("no answer from DNS yet")),
            Ok(Err(_)) => Err(unavailable("no longer resolved")),
            Ok(Ok(state)) => match &*state {
                Resolution::Resolved(endpoints) => Ok(endpoints.clone()),
                Resolution::Failed(why) => Err(unavailable(why)),
                Resolution::Pending => unreachable!("waited for"),
            },
        }
    }

    fn pick(&self, endpoints: &[Arc<Endpoint>], key: Option<RoutingKey>) -> Arc<Endpoint> {
        let now = Instant::now();
        let mut usable: Vec<&Arc<Endpoint>> = endpoints.iter().filter(|e| !e.is_out(now)).collect();
        if usable.is_empty() {
            self.resolve_now.notify_one();
            usable = endpoints.iter().collect();
        }
        let chosen = match (self.target.routing, key) {
            (Routing::Hash, Some(key)) => rendezvous(key, usable.iter().map(|e| e.id)),
            _ => {
                let start = self.turn.fetch_add(1, Ordering::Relaxed);
                (0..usable.len())
                    .map(|i| (start + i) % usable.len())
                    .min_by_key(|&i| usable[i].in_flight.load(Ordering::Relaxed))
            }
        };
        usable[chosen.expect("a resolution holds at least one endpoint")].clone()
    }

    /// Takes a resolution's answer: the addresses kept keep their
    /// connections and load.
    fn update(&self, answer: Result<Vec<SocketAddr>, String>) {
        let mut addrs = match answer {
            Ok(addrs) if !addrs.is_empty() => addrs,
            Ok(_) => return self.unresolved("resolved to no address".to_owned()),
            Err(why) => return self.unresolved(why),
        };
        addrs.sort();
        addrs.dedup();
        self.state.send_if_modified(|state| {
            let known: &[Arc<Endpoint>] = match state {
                Resolution::Resolved(endpoints) => endpoints,
                Resolution::Pending | Resolution::Failed(_) => &[],
            };
            if known.iter().map(|e| e.addr).eq(addrs.iter().copied()) {
                return false;
            }
            let endpoints: Arc<[Arc<Endpoint>]> = addrs
                .iter()
                .map(|&addr| match known.iter().find(|e| e.addr == addr) {
                    Some(kept) => kept.clone(),
                    None => Arc::new(Endpoint {
                        addr,
                        id: endpoint_id(addr),
                        channel: (self.connect)(addr),
                        in_flight: AtomicUsize::new(0),
                        health: Mutex::default(),
                    }),
                })
                .collect();
            let added: Vec<_> = addrs.iter().filter(|a| !known.iter().any(|e| e.addr == **a)).collect();
            let removed: Vec<_> = known.iter().map(|e| e.addr).filter(|a| !addrs.contains(a)).collect();
            tracing::info!(upstream = %self.target, endpoints = endpoints.len(), ?added, ?removed, "upstream endpoints");
            metrics::gauge!(
                "nws_upstream_endpoints",
                "service" => self.caller,
                "upstream" => self.target.host.clone(),
            )
            .set(endpoints.len() as f64);
            *state = Resolution::Resolved(endpoints);
            true
        });
    }

    /// A resolution failed: the known addresses stay (a DNS outage is no
    /// reason to stop calling pods that work); with none, calls fail.
    fn unresolved(&self, why: String) {
        tracing::warn!(upstream = %self.target, %why, "could not resolve the upstream; keeping its known addresses");
        self.state.send_if_modified(|state| match state {
            Resolution::Resolved(_) => false,
            Resolution::Pending | Resolution::Failed(_) => {
                *state = Resolution::Failed(why.into());
                true
            }
        });
    }
}

async fn keep_resolving(pool: Weak<Pool>, resolver: NameResolver, interval: Duration, wake: Arc<Notify>) {
    loop {
        let Some(pool) = pool.upgrade() else {
            return;
        };
        let answer = resolver.resolve(&pool.target.host, pool.target.port).await;
        pool.update(answer);
        drop(pool);
        tokio::time::sleep(SOONEST_RESOLUTION.min(interval)).await;
        tokio::select! {
            () = tokio::time::sleep(interval.saturating_sub(SOONEST_RESOLUTION)) => {}
            () = wake.notified() => {}
        }
    }
}

enum NameResolver {
    /// `getaddrinfo`, as for every other name the process looks up.
    System,
    /// The DNS server the target names.
    Server(Box<Resolver<TokioRuntimeProvider>>),
}

impl NameResolver {
    fn for_target(target: &DnsTarget) -> Self {
        let Some(server) = target.server else {
            return NameResolver::System;
        };
        let connection = |mut connection: ConnectionConfig| {
            connection.port = server.port();
            connection
        };
        let name_server = NameServerConfig::new(
            server.ip(),
            true,
            vec![
                connection(ConnectionConfig::udp()),
                connection(ConnectionConfig::tcp()),
            ],
        );
        let mut options = ResolverOpts::default();
        options.timeout = Duration::from_secs(2);
        // Each resolution asks again, whatever TTL the answer had.
        options.positive_max_ttl = Some(Duration::ZERO);
        options.negative_max_ttl = Some(Duration::ZERO);
        // The server named in the URL answers, not /etc/hosts.
        options.use_hosts_file = ResolveHosts::Never;
        let resolver = Resolver::builder_with_config(
            ResolverConfig::from_name_servers(vec![name_server]),
            TokioRuntimeProvider::default(),
        )
        .with_options(options)
        .build()
        .expect("a resolver over one plain name server builds");
        NameResolver::Server(Box::new(resolver))
    }

    async fn resolve(&self, host: &str, port: u16) -> Result<Vec<SocketAddr>, String> {
        match self {
            NameResolver::System => tokio::net::lookup_host((host, port))
                .await
                .map(Iterator::collect)
                .map_err(|e| e.to_string()),
            NameResolver::Server(resolver) => resolver
                .lookup_ip(host)
                .await
                .map(|ips| ips.iter().map(|ip| SocketAddr::new(ip, port)).collect())
                .map_err(|e| e.to_string()),
        }
    }
}

/// Whether a response is a refusal for load: a trailers-only answer
/// (status in the headers) with RESOURCE_EXHAUSTED.
fn refused_for_load<B>(response: &http::Response<B>) -> bool {
    response
        .headers()
        .get("grpc-status")
        .is_some_and(|status| status.as_bytes() == b"8")
}

/// A call counted in its endpoint's load until dropped.
struct InFlight(Arc<Endpoint>);

impl InFlight {
    fn start(endpoint: Arc<Endpoint>) -> Self {
        endpoint.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(endpoint)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

pin_project_lite::pin_project! {
    /// A response body that keeps its call in flight until it ends, and
    /// takes its endpoint out of turn when the connection breaks mid-body.
    struct Tracked {
        #[pin]
        body: Body,
        in_flight: InFlight,
    }
}

impl http_body::Body for Tracked {
    type Data = Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, tonic::Status>>> {
        let this = self.project();
        let frame = this.body.poll_frame(cx);
        if let Poll::Ready(Some(Err(_))) = &frame {
            this.in_flight.0.failed();
        }
        frame
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addrs(n: u8) -> Vec<SocketAddr> {
        (0..n)
            .map(|i| SocketAddr::from(([127, 0, 0, 2 + i], 50051)))
            .collect()
    }

    fn owner(key: usize, endpoints: &[SocketAddr]) -> SocketAddr {
        let ids = endpoints.iter().map(|a| endpoint_id(*a));
        endpoints[rendezvous(RoutingKey::of(format!("result-{key}")), ids).unwrap()]
    }

    /// The rendezvous property, over many keys: each of three endpoints
    /// gets about a third; when one leaves exactly its keys move, spread
    /// over the other two; when one joins it takes about a quarter, from
    /// every other.
    #[test]
    fn rendezvous_moves_only_the_keys_of_the_endpoint_that_leaves() {
        const KEYS: usize = 30_000;
        let three = addrs(3);
        let before: Vec<_> = (0..KEYS).map(|k| owner(k, &three)).collect();
        for addr in &three {
            let share = before.iter().filter(|a| *a == addr).count() as f64 / KEYS as f64;
            eprintln!("{addr} owns {:.2}% of {KEYS} keys", 100.0 * share);
            assert!((share - 1.0 / 3.0).abs() < 0.02, "{addr}: {share}");
        }

        let two = vec![three[0], three[1]];
        let after: Vec<_> = (0..KEYS).map(|k| owner(k, &two)).collect();
        let moved = (0..KEYS).filter(|&k| before[k] != after[k]).count();
        let on_the_leaver = before.iter().filter(|a| **a == three[2]).count();
        assert_eq!(moved, on_the_leaver, "only the leaver's keys move");
        let moved_share = moved as f64 / KEYS as f64;
        eprintln!(
            "one of three leaves: {moved} of {KEYS} keys move ({:.2}%)",
            100.0 * moved_share
        );
        assert!((moved_share - 1.0 / 3.0).abs() < 0.02, "{moved_share}");

        let four = addrs(4);
        let grown: Vec<_> = (0..KEYS).map(|k| owner(k, &four)).collect();
        let taken = (0..KEYS).filter(|&k| before[k] != grown[k]).count();
        assert!(
            (0..KEYS).all(|k| before[k] == grown[k] || grown[k] == four[3]),
            "keys move only to the newcomer"
        );
        let taken_share = taken as f64 / KEYS as f64;
        eprintln!(
            "a fourth joins: {taken} of {KEYS} keys move ({:.2}%)",
            100.0 * taken_share
        );
        assert!((taken_share - 0.25).abs() < 0.02, "{taken_share}");
    }

    #[test]
    fn routing_keys_are_stable() {
        // FNV-1a's published test vector: the same on every build.
        assert_eq!(fnv1a(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(RoutingKey::of("a"), RoutingKey(0xaf63_dc4c_8601_ec8c));
    }

    #[tokio::test]
    async fn failed_endpoints_sit_out_longer_each_time_and_return_on_an_answer() {
        let endpoint = Endpoint {
            addr: addrs(1)[0],
            id: 0,
            channel: Channel::from_static("http://127.0.0.1:9").connect_lazy(),
            in_flight: AtomicUsize::new(0),
            health: Mutex::default(),
        };
        let now = Instant::now();
        assert!(!endpoint.is_out(now));
        endpoint.failed();
        let first = endpoint.health().out_until.unwrap() - now;
        endpoint.failed();
        let second = endpoint.health().out_until.unwrap() - now;
        assert!(
            first >= FIRST_OUT && second >= 2 * FIRST_OUT,
            "{first:?} {second:?}"
        );
        for _ in 0..10 {
            endpoint.failed();
        }
        assert!(endpoint.health().out_until.unwrap() - Instant::now() <= LONGEST_OUT);
        assert!(endpoint.is_out(Instant::now()));
        endpoint.answered();
        assert!(!endpoint.is_out(Instant::now()));
    }
}
