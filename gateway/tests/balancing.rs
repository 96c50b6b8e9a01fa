//! Renders spread over optimizer replicas behind one DNS name, as a
//! Kubernetes headless Service gives them: three `optimizer-svc` processes
//! on 127.0.0.2–4 (one port), a DNS server of the test's own answering
//! their name, and the gateway given `dns://<that server>/<name>:<port>`.
//! Replicas are killed and added while uploads run; the answer changes as
//! the endpoints would.

use std::{
    collections::HashMap,
    net::{Ipv4Addr, SocketAddr, TcpListener},
    sync::atomic::{AtomicUsize, Ordering},
};

use futures_util::{StreamExt as _, stream};
use nws_runtime::testing::{DnsServer, ServiceProcess, eventually, test_image, workspace_binary};

const NAME: &str = "optimizer.nws.test";

/// Storage, optimizer replicas on their own loopback addresses, a DNS
/// server naming them, and a gateway resolving that name.
struct Replicas {
    storage_dir: tempfile::TempDir,
    storage: ServiceProcess,
    port: u16,
    optimizers: HashMap<Ipv4Addr, ServiceProcess>,
    dns: DnsServer,
    gateway: ServiceProcess,
    http: reqwest::Client,
    image: Vec<u8>,
}

fn replica(n: u8) -> Ipv4Addr {
    Ipv4Addr::new(127, 0, 0, n)
}

/// A port free on every address a replica may take.
fn free_port_on(ips: &[Ipv4Addr]) -> u16 {
    for _ in 0..50 {
        let first = TcpListener::bind((ips[0], 0)).unwrap();
        let port = first.local_addr().unwrap().port();
        if ips[1..].iter().all(|ip| TcpListener::bind((*ip, port)).is_ok()) {
            return port;
        }
    }
    panic!("no port free on all of {ips:?}");
}

impl Replicas {
    /// Replicas on 127.0.0.2–4 (and a port also free on 127.0.0.5, for one
    /// added later), the gateway routing by `routing`.
    fn start(routing: &str) -> Self {
        let storage_dir = tempfile::tempdir().unwrap();
        let storage = start_storage("127.0.0.1:0", &storage_dir);
        let port = free_port_on(&[replica(2), replica(3), replica(4), replica(5)]);
        let dns = DnsServer::start(NAME, &[replica(2), replica(3), replica(4)]);
        let mut replicas = Self {
            gateway: ServiceProcess::start(
                &workspace_binary("gateway"),
                &[
                    ("NWS_HTTP_ADDR", "127.0.0.1:0"),
                    ("NWS_OPTIMIZER_URL", &dns.url(port)),
                    ("NWS_STORAGE_URL", &storage.url("storage")),
                    ("NWS_OPTIMIZER_ROUTING", routing),
                    ("NWS_RESOLVE_INTERVAL", "200ms"),
                    // Every upload renders (or finds its result in storage).
                    ("NWS_CACHE_MEMORY", "0"),
                    ("NWS_BACKGROUND_RENDERS", "0"),
                    ("NWS_RATE_LIMIT_RPS", "100000"),
                    ("NWS_RATE_LIMIT_BURST", "100000"),
                ],
                &["gateway"],
            ),
            storage_dir,
            storage,
            port,
            optimizers: HashMap::new(),
            dns,
            http: reqwest::Client::new(),
            image: test_image("tiny_16x16.jpg"),
        };
        for n in 2..=4 {
            replicas.add(replica(n));
        }
        replicas
    }

    /// Starts a replica on `ip` (not yet in the DNS answer).
    fn add(&mut self, ip: Ipv4Addr) {
        let addr = SocketAddr::from((ip, self.port)).to_string();
        let optimizer = ServiceProcess::start(
            &workspace_binary("optimizer-svc"),
            &[
                ("NWS_OPTIMIZER_ADDR", &addr),
                ("NWS_STORAGE_URL", &self.storage.url("storage")),
                ("NWS_ADMIN_ADDR", ""),
            ],
            &["optimizer"],
        );
        self.optimizers.insert(ip, optimizer);
    }

    /// Has the DNS server answer `ips`, and waits until the gateway uses
    /// exactly those.
    async fn answer(&self, ips: &[Ipv4Addr]) {
        self.dns.set(ips);
        let mut expected: Vec<String> = ips
            .iter()
            .map(|ip| SocketAddr::from((*ip, self.port)).to_string())
            .collect();
        expected.sort();
        self.gateway
            .until("the gateway's endpoints follow DNS", |events| {
                let latest = events
                    .iter()
                    .rev()
                    .find(|e| e["message"] == "upstream endpoints")?;
                (latest["endpoints"] == expected.len()
                    && expected.iter().all(|addr| self.gateway_uses(events, addr)))
                .then_some(())
            })
            .await;
    }

    /// Whether `addr` was added since it was last removed.
    fn gateway_uses(&self, events: &[serde_json::Value], addr: &str) -> bool {
        let changes = events.iter().filter(|e| e["message"] == "upstream endpoints");
        let mut used = false;
        for change in changes {
            let mentions = |field: &str| change[field].as_str().is_some_and(|list| list.contains(addr));
            if mentions("added") {
                used = true;
            }
            if mentions("removed") {
                used = false;
            }
        }
        used
    }

    /// Uploads `keys` (distinct results of one tiny original: the mark's
    /// text differs), `at_once` at a time; returns their HTTP statuses.
    async fn upload(&self, keys: std::ops::Range<usize>, at_once: usize) -> Vec<u16> {
        self.upload_image(&self.image, keys, at_once, |_| {}).await
    }

    /// As [`Self::upload`], of `image`; `after_each` runs as each answer
    /// arrives.
    async fn upload_image(
        &self,
        image: &[u8],
        keys: std::ops::Range<usize>,
        at_once: usize,
        after_each: impl Fn(usize),
    ) -> Vec<u16> {
        let done = &AtomicUsize::new(0);
        let after_each = &after_each;
        stream::iter(keys)
            .map(|key| async move {
                let response = self
                    .http
                    .post(format!(
                        "{}/v1/watermark?wm_text=key-{key}&format=png",
                        self.gateway.url("gateway")
                    ))
                    .body(image.to_vec())
                    .send()
                    .await;
                let status = match response {
                    Ok(response) => {
                        let status = response.status().as_u16();
                        if status != 200 {
                            eprintln!(
                                "key {key}: {status} {}",
                                response.text().await.unwrap_or_default()
                            );
                        }
                        status
                    }
                    Err(error) => panic!("key {key}: {error}"),
                };
                after_each(done.fetch_add(1, Ordering::SeqCst) + 1);
                status
            })
            .buffer_unordered(at_once)
            .collect()
            .await
    }

    /// Renders each replica has logged so far, by its address.
    fn renders(&self) -> HashMap<Ipv4Addr, usize> {
        self.optimizers
            .iter()
            .map(|(ip, optimizer)| (*ip, optimizer.count_logged("optimized")))
            .collect()
    }

    /// Waits until the replicas have logged `total` renders in all.
    async fn until_rendered(&self, total: usize) -> HashMap<Ipv4Addr, usize> {
        eventually(&format!("{total} renders logged"), async || {
            let renders = self.renders();
            (renders.values().sum::<usize>() >= total).then_some(renders)
        })
        .await
    }

    /// Which replica rendered each result key, from their logs, past the
    /// first `skip[replica]` renders of each.
    fn owners_since(&self, skip: &HashMap<Ipv4Addr, usize>) -> HashMap<String, Ipv4Addr> {
        let mut owners = HashMap::new();
        for (ip, optimizer) in &self.optimizers {
            let renders = optimizer
                .events()
                .into_iter()
                .filter(|e| e["message"] == "optimized");
            for event in renders.skip(skip.get(ip).copied().unwrap_or(0)) {
                let key = event["result_key"]
                    .as_str()
                    .expect("a render logs its result key");
                assert!(
                    owners.insert(key.to_owned(), *ip).is_none(),
                    "{key} rendered twice"
                );
            }
        }
        owners
    }

    /// Forgets every stored result (Storage restarted on its address with
    /// an empty directory), so the same uploads render again.
    async fn forget_results(&mut self) {
        let addr = self.storage.addr("storage").to_string();
        self.storage.kill();
        self.storage_dir = tempfile::tempdir().unwrap();
        self.storage = start_storage(&addr, &self.storage_dir);
        let ready = format!("{}/readyz", self.gateway.url("gateway"));
        eventually("the gateway ready again", async || {
            let response = self.http.get(&ready).send().await.ok()?;
            (response.status() == 200).then_some(())
        })
        .await;
    }
}

fn start_storage(addr: &str, dir: &tempfile::TempDir) -> ServiceProcess {
    ServiceProcess::start(
        &workspace_binary("storage-svc"),
        &[
            ("NWS_STORAGE_ADDR", addr),
            ("NWS_DATA_DIR", dir.path().to_str().unwrap()),
            ("NWS_ADMIN_ADDR", ""),
        ],
        &["storage"],
    )
}

/// Each replica's share is within 20% of an even one.
fn assert_even(renders: &HashMap<Ipv4Addr, usize>, replicas: &[Ipv4Addr]) {
    let total: usize = replicas.iter().map(|ip| renders[ip]).sum();
    let even = total as f64 / replicas.len() as f64;
    for ip in replicas {
        let off = (renders[ip] as f64 - even).abs() / even;
        assert!(
            off <= 0.2,
            "{ip} rendered {} of {total}: {renders:?}",
            renders[ip]
        );
    }
}

fn difference(
    after: &HashMap<Ipv4Addr, usize>,
    before: &HashMap<Ipv4Addr, usize>,
) -> HashMap<Ipv4Addr, usize> {
    after
        .iter()
        .map(|(ip, n)| (*ip, n - before.get(ip).copied().unwrap_or(0)))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renders_spread_over_replicas_survive_a_killed_one_and_reach_an_added_one() {
    let mut replicas = Replicas::start("least");
    let three = [replica(2), replica(3), replica(4)];
    replicas.answer(&three).await;

    // Spread: 90 renders, 6 at a time, within 20% of 30 each.
    let statuses = replicas.upload(0..90, 6).await;
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
    let spread = replicas.until_rendered(90).await;
    eprintln!("90 renders over three replicas: {spread:?}");
    assert_even(&spread, &three);

    // One killed mid-run, still in the DNS answer (as a pod is until its
    // endpoints update): no upload fails. A 6 MP photo takes long enough
    // that calls are cut mid-render.
    let victim = replica(4);
    let dying = &replicas.optimizers[&victim];
    let photo = test_image("life_gray_3088x2056.jpg");
    let statuses = replicas
        .upload_image(&photo, 90..120, 6, |done| {
            if done == 10 {
                dying.signal("KILL");
            }
        })
        .await;
    let failed: Vec<_> = statuses.iter().filter(|s| **s != 200).collect();
    assert!(
        failed.is_empty(),
        "failed uploads while a replica died: {failed:?}"
    );
    // The dead replica is still in the DNS answer. Once its time out of
    // turn is over, a call goes to it, meets a refused connection and is
    // made on another replica: uploads one at a time until the gateway has
    // done that, each of them served.
    const RETRIED: &str = "an optimizer replica could not take the render; making it on another";
    for key in 1000..3000 {
        if replicas.gateway.count_logged(RETRIED) > 0 {
            break;
        }
        let statuses = replicas.upload(key..key + 1, 1).await;
        assert_eq!(statuses, [200], "key {key}, with a dead replica in DNS");
    }
    let retried = replicas.gateway.until_logged(RETRIED, 1).await;
    eprintln!("renders made again on another replica: {}", retried.len());
    replicas.optimizers.remove(&victim).unwrap().kill();
    replicas.answer(&[replica(2), replica(3)]).await;

    // One added and in the answer: it gets its share.
    let newcomer = replica(5);
    replicas.add(newcomer);
    let now = [replica(2), replica(3), newcomer];
    replicas.answer(&now).await;
    let before = replicas.renders();
    let statuses = replicas.upload(180..270, 6).await;
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
    let total_before: usize = before.values().sum();
    let after = replicas.until_rendered(total_before + 90).await;
    let spread = difference(&after, &before);
    eprintln!("90 renders after one left and one joined: {spread:?}");
    assert_even(&spread, &now);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hash_routing_sends_a_key_back_to_its_replica_and_moves_only_a_leavers_keys() {
    const KEYS: usize = 60;
    let mut replicas = Replicas::start("hash");
    let three = [replica(2), replica(3), replica(4)];
    replicas.answer(&three).await;

    let statuses = replicas.upload(0..KEYS, 4).await;
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
    replicas.until_rendered(KEYS).await;
    let first = replicas.owners_since(&HashMap::new());
    assert_eq!(first.len(), KEYS, "each key rendered once");
    for ip in three {
        let owned = first.values().filter(|owner| **owner == ip).count();
        assert!(owned >= KEYS / 6, "{ip} owns {owned} of {KEYS} keys");
    }

    // The same keys again, their results forgotten: each renders where it
    // rendered before.
    replicas.forget_results().await;
    let statuses = replicas.upload(0..KEYS, 4).await;
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
    replicas.until_rendered(2 * KEYS).await;
    let counts = replicas.renders();
    for ip in three {
        let owned = first.values().filter(|owner| **owner == ip).count();
        assert_eq!(counts[&ip], 2 * owned, "{ip}: each of its keys came back to it");
    }

    // One of three leaves: only its keys move.
    let leaver = replica(4);
    replicas.optimizers.remove(&leaver).unwrap().kill();
    replicas.answer(&[replica(2), replica(3)]).await;
    let before = replicas.renders();
    replicas.forget_results().await;
    let statuses = replicas.upload(0..KEYS, 4).await;
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
    replicas
        .until_rendered(before.values().sum::<usize>() + KEYS)
        .await;
    let second = replicas.owners_since(&before);
    let moved: Vec<_> = first.keys().filter(|key| second[*key] != first[*key]).collect();
    let on_leaver = first.values().filter(|owner| **owner == leaver).count();
    eprintln!(
        "remapped share when one of three replicas left: {} of {KEYS} keys ({:.1}%); the leaver had {on_leaver}",
        moved.len(),
        100.0 * moved.len() as f64 / KEYS as f64
    );
    assert_eq!(moved.len(), on_leaver, "only the leaver's keys moved");
    assert!(moved.iter().all(|key| first[*key] == leaver));
}
