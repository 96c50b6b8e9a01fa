//! The three services as separate binaries, as they are deployed: Storage,
//! then an Optimizer that uses it, then a gateway in front of both.

use std::path::PathBuf;

use super::{ServiceProcess, files_under, workspace_binary};

/// Settings of a deployment: `every` goes to the three processes, the
/// others to one each (after `every`, so they win).
#[derive(Default)]
pub struct DeploymentEnv<'a> {
    pub every: Vec<(&'a str, &'a str)>,
    pub storage: Vec<(&'a str, &'a str)>,
    pub optimizer: Vec<(&'a str, &'a str)>,
    pub gateway: Vec<(&'a str, &'a str)>,
    /// `https` when the services serve TLS; `http` otherwise.
    pub upstream_scheme: Option<&'static str>,
}

pub struct Deployment {
    pub storage_dir: tempfile::TempDir,
    pub storage: ServiceProcess,
    pub optimizer: ServiceProcess,
    pub gateway: ServiceProcess,
    upstream_env: Vec<(String, String)>,
}

impl Deployment {
    /// With `every_env` given to the three processes, `gateway_env` to the
    /// gateway only.
    pub fn start(every_env: &[(&str, &str)], gateway_env: &[(&str, &str)]) -> Self {
        Self::start_with(&DeploymentEnv {
            every: every_env.to_vec(),
            gateway: gateway_env.to_vec(),
            ..DeploymentEnv::default()
        })
    }

    pub fn start_with(env: &DeploymentEnv) -> Self {
        let scheme = env.upstream_scheme.unwrap_or("http");
        let storage_dir = tempfile::tempdir().unwrap();
        fn with<'a>(
            own: Vec<(&'a str, &'a str)>,
            every: &[(&'a str, &'a str)],
            specific: &[(&'a str, &'a str)],
        ) -> Vec<(&'a str, &'a str)> {
            let mut all = own;
            all.extend_from_slice(every);
            all.extend_from_slice(specific);
            all
        }
        let storage = ServiceProcess::start(
            &workspace_binary("storage-svc"),
            &with(
                vec![
                    ("NWS_STORAGE_ADDR", "127.0.0.1:0"),
                    ("NWS_DATA_DIR", storage_dir.path().to_str().unwrap()),
                ],
                &env.every,
                &env.storage,
            ),
            &["storage", "admin"],
        );
        let storage_url = format!("{scheme}://{}", storage.addr("storage"));
        let optimizer = ServiceProcess::start(
            &workspace_binary("optimizer-svc"),
            &with(
                vec![
                    ("NWS_OPTIMIZER_ADDR", "127.0.0.1:0"),
                    ("NWS_STORAGE_URL", storage_url.as_str()),
                    // Every pipeline stage is logged, to see where work stops.
                    ("RUST_LOG", "info,optimizer_svc=debug"),
                ],
                &env.every,
                &env.optimizer,
            ),
            &["optimizer", "admin"],
        );
        let optimizer_url = format!("{scheme}://{}", optimizer.addr("optimizer"));
        let upstream_env = vec![
            ("NWS_OPTIMIZER_URL".to_owned(), optimizer_url),
            ("NWS_STORAGE_URL".to_owned(), storage_url),
        ];
        let gateway = start_gateway(&upstream_env, &with(Vec::new(), &env.every, &env.gateway));
        Self {
            storage_dir,
            storage,
            optimizer,
            gateway,
            upstream_env,
        }
    }

    /// Another optimizer on the same Storage, with `env` (listening on
    /// `127.0.0.1:0` unless `env` says otherwise): one that comes back, or
    /// one more job consumer.
    pub fn start_optimizer(&self, env: &[(&str, &str)]) -> ServiceProcess {
        let storage_url = self
            .upstream_env
            .iter()
            .find(|(name, _)| name == "NWS_STORAGE_URL")
            .map(|(_, url)| url.as_str())
            .expect("a storage URL");
        let mut all = vec![
            ("NWS_OPTIMIZER_ADDR", "127.0.0.1:0"),
            ("NWS_STORAGE_URL", storage_url),
            ("RUST_LOG", "info,optimizer_svc=debug"),
        ];
        all.extend_from_slice(env);
        ServiceProcess::start(&workspace_binary("optimizer-svc"), &all, &["optimizer", "admin"])
    }

    /// Kills Storage and starts it again on the same address and data,
    /// with `env`.
    pub fn restart_storage(&mut self, env: &[(&str, &str)]) {
        self.storage.kill();
        let addr = self.storage.addr("storage").to_string();
        let mut all = vec![
            ("NWS_STORAGE_ADDR", addr.as_str()),
            ("NWS_DATA_DIR", self.storage_dir.path().to_str().unwrap()),
        ];
        all.extend_from_slice(env);
        self.storage = ServiceProcess::start(&workspace_binary("storage-svc"), &all, &["storage", "admin"]);
    }

    /// Another gateway in front of the same services, with `env`.
    pub fn another_gateway(&self, env: &[(&str, &str)]) -> ServiceProcess {
        start_gateway(&self.upstream_env, env)
    }

    /// The gateway's base URL, e.g. `http://127.0.0.1:41234`.
    pub fn gateway_url(&self) -> String {
        self.gateway.url("gateway")
    }

    /// Waits until Storage keeps the result `key` (the optimizer writes it
    /// after answering).
    pub async fn until_result_kept(&self, key: &str) {
        super::eventually("the result kept in storage", async || {
            self.stored("results")
                .iter()
                .any(|path| path.ends_with(key))
                .then_some(())
        })
        .await;
    }

    /// The files Storage keeps under `namespace` (`originals`, `results`).
    pub fn stored(&self, namespace: &str) -> Vec<PathBuf> {
        files_under(&self.storage_dir.path().join(namespace))
    }
}

fn start_gateway(upstream_env: &[(String, String)], env: &[(&str, &str)]) -> ServiceProcess {
    let mut all: Vec<(&str, &str)> = vec![("NWS_HTTP_ADDR", "127.0.0.1:0")];
    all.extend(upstream_env.iter().map(|(k, v)| (k.as_str(), v.as_str())));
    all.extend_from_slice(env);
    ServiceProcess::start(&workspace_binary("gateway"), &all, &["gateway"])
}
