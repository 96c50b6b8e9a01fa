//! RabbitMQ for the tests: the broker of the test run ([`amqp_url`]),
//! names no other test uses ([`unique_queue`]), and a broker of the test's
//! own that it may kill, freeze and restart ([`PrivateRabbit`]).
//!
//! Chaos and broker-down tests use a [`PrivateRabbit`], never the shared
//! broker: other tests (and other engineers' runs) are using that one.

use std::{
    fs::File,
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpListener, TcpStream},
    os::unix::process::CommandExt as _,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{
        OnceLock,
        atomic::{AtomicU32, Ordering},
    },
    time::{Duration, Instant},
};

use rustix::process::{Pid, Signal, kill_process, kill_process_group};

/// The machine's broker, where scripts/test.sh finds one.
const MACHINE_AMQP_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";
/// Where Debian and Fedora keep the real start script; `/usr/sbin/`
/// holds a wrapper that, run as root, switches to the `rabbitmq` user
/// (who could not write the test's directory).
const PACKAGED_SERVER: &str = "/usr/lib/rabbitmq/bin/rabbitmq-server";
/// A cold start takes about 6 s on a quiet machine, a restart over the
/// same data about 4 s; this only bounds a failing one.
const START_TIMEOUT: Duration = Duration::from_secs(60);
const STOP_TIMEOUT: Duration = Duration::from_secs(30);

/// The broker tests that need just a broker share: `NWS_TEST_AMQP_URL`
/// (set by scripts/test.sh), else the machine's on 127.0.0.1:5672 as
/// guest. Give every queue and exchange a [`unique_queue`] name.
pub fn amqp_url() -> String {
    std::env::var("NWS_TEST_AMQP_URL").unwrap_or_else(|_| MACHINE_AMQP_URL.to_owned())
}

/// A queue (or exchange) name no other test, test process or earlier run
/// uses: `nws.test.<prefix>.<pid>.<start>.<n>`, where `<start>` is when
/// this process first asked (milliseconds since the epoch, in base 36), so
/// a reused pid does not meet a durable queue left by an earlier run.
pub fn unique_queue(prefix: &str) -> String {
    static START: OnceLock<String> = OnceLock::new();
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let start = START.get_or_init(|| {
        let millis = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock after 1970")
            .as_millis();
        base36(millis)
    });
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    format!("nws.test.{prefix}.{}.{start}.{n}", std::process::id())
}

fn base36(mut value: u128) -> String {
    const DIGITS: &[u8; 36] = b"0123456789abcdefghijklmnopqrstuvwxyz";
    let mut out = Vec::new();
    loop {
        out.push(DIGITS[(value % 36) as usize]);
        value /= 36;
        if value == 0 {
            break;
        }
    }
    out.reverse();
    String::from_utf8(out).expect("ASCII digits")
}

/// A RabbitMQ node of the test's own on loopback, over a data directory
/// of its own, that the test may kill (as a crash would), freeze, and
/// start again on the same ports over the same data: durable queues and
/// the persistent messages the broker confirmed survive a kill.
///
/// The start script is `NWS_RABBITMQ_SERVER` (scripts/test.sh sets it),
/// else the packaged one under `/usr/lib/rabbitmq/bin`, else
/// `rabbitmq-server` on the PATH. It runs in the foreground as this
/// process's user (root included: no switch to the `rabbitmq` user), in a
/// process group of its own:
///
/// - the script (`sh`, the group's leader) runs `erl`, which becomes
///   `beam.smp`: both in the group;
/// - `beam.smp` starts `erl_child_setup` in a session of its own, which
///   starts `inet_gethost` and the disk monitor (`sh -s
///   rabbit_disk_monitor`): they exit once `beam.smp` is gone, and
///   [`kill`](Self::kill) kills them too;
/// - when no `epmd` runs yet, `erl` starts one (`epmd -daemon`), which
///   leaves the group at once and outlives the node, as it must: every
///   Erlang node on the machine (the machine's broker too) registers
///   with it. It is never killed here.
pub struct PrivateRabbit {
    /// HOME (with the Erlang cookie), configuration, data and logs.
    dir: tempfile::TempDir,
    node: String,
    amqp_port: u16,
    dist_port: u16,
    child: Option<Child>,
}

impl PrivateRabbit {
    /// Starts a node on free ports and waits (up to a minute) until it
    /// answers AMQP.
    pub fn start() -> Self {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let node = format!(
            "nws-test-{}-{}@localhost",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let dir = tempfile::Builder::new()
            .prefix("nws-rabbit-")
            .tempdir()
            .expect("temp dir for RabbitMQ");
        for (name, text) in [
            // The node's settings come from here, not from /etc/rabbitmq
            // (whose listener is the machine broker's port).
            ("rabbitmq-env.conf", ""),
            ("rabbitmq.conf", "log.file.level = info\nlog.console = false\n"),
            ("advanced.config", "[].\n"),
            // No plugin: no management listener to collide on.
            ("enabled_plugins", "[].\n"),
        ] {
            std::fs::write(dir.path().join(name), text).expect("write RabbitMQ settings");
        }
        let mut rabbit = Self {
            dir,
            node,
            amqp_port: 0,
            dist_port: 0,
            child: None,
        };
        // The node cannot be handed bound sockets: ports the system just
        // called free are tried, and others if one is taken by then.
        for _ in 0..5 {
            (rabbit.amqp_port, rabbit.dist_port) = two_free_ports();
            match rabbit.try_start() {
                Ok(()) => return rabbit,
                Err(log) if log.contains("eaddrinuse") => {
                    // The next try starts afresh, with logs of its own.
                    for leftover in ["mnesia", "log"] {
                        let _ = std::fs::remove_dir_all(rabbit.dir().join(leftover));
                    }
                    let _ = std::fs::remove_file(rabbit.dir().join("console.log"));
                }
                Err(log) => panic!("{} did not start:\n{log}", rabbit.node),
            }
        }
        panic!("{} found no free ports in 5 tries", rabbit.node);
    }

    /// `amqp://guest:guest@127.0.0.1:<port>/%2f`.
    pub fn url(&self) -> String {
        format!("amqp://guest:guest@127.0.0.1:{}/%2f", self.amqp_port)
    }

    /// The AMQP port, the same after a restart.
    pub fn port(&self) -> u16 {
        self.amqp_port
    }

    /// The Erlang node name, `nws-test-<pid>-<n>@localhost`.
    pub fn node_name(&self) -> &str {
        &self.node
    }

    /// The node's directory: its HOME, settings, `mnesia/` (the data) and
    /// `log/`; removed when this is dropped.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Whether the node runs (it may have been killed, or died by itself).
    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|child| child.try_wait().expect("poll rabbitmq-server").is_none())
    }

    /// Kills the node and everything it started (SIGKILL, no shutdown:
    /// a crash, a power cut), then waits until its ports are free again.
    pub fn kill(&mut self) {
        if self.child.is_some() {
            self.kill_processes();
            self.until_ports_free();
        }
    }

    fn kill_processes(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let group = child.id();
        // Unreaped, the script's pid is still its own: what runs below
        // it now is the node's.
        let descendants = match child.try_wait() {
            Ok(None) => descendants(group),
            _ => Vec::new(),
        };
        for signal in [Signal::CONT, Signal::KILL] {
            let _ = kill_process_group(pid(group), signal);
        }
        for process in descendants {
            let _ = kill_process(pid(process), Signal::KILL);
        }
        let _ = child.wait();
    }

    /// Stops the node the way a service manager would (SIGTERM: the
    /// broker closes its connections and shuts down cleanly), waiting up
    /// to 30 s before killing it.
    pub fn terminate(&mut self) {
        let Some(child) = self.child.as_mut() else {
            return;
        };
        let _ = kill_process(pid(child.id()), Signal::CONT);
        let _ = kill_process(pid(child.id()), Signal::TERM);
        let deadline = Instant::now() + STOP_TIMEOUT;
        while Instant::now() < deadline {
            if child.try_wait().expect("poll rabbitmq-server").is_some() {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        // Whatever is left (nothing, after a clean stop).
        self.kill();
    }

    /// Freezes the node (SIGSTOP): its sockets stay open and accept
    /// connections, but nothing answers until [`thaw`](Self::thaw).
    pub fn freeze(&self) {
        let child = self.child.as_ref().expect("the node runs");
        kill_process_group(pid(child.id()), Signal::STOP).expect("SIGSTOP the node");
    }

    /// Lets a frozen node run on (SIGCONT).
    pub fn thaw(&self) {
        let child = self.child.as_ref().expect("the node runs");
        kill_process_group(pid(child.id()), Signal::CONT).expect("SIGCONT the node");
    }

    /// Starts the node again (killing it first if it runs) on the same
    /// ports, over the same data, and waits until it answers AMQP.
    pub fn restart(&mut self) {
        self.kill();
        if let Err(log) = self.try_start() {
            panic!("{} did not start again:\n{log}", self.node);
        }
    }

    /// Runs `rabbitmqctl` against this node (e.g. `["list_queues", "name",
    /// "messages"]`) and returns what it printed; panics when it fails.
    /// Each call starts an Erlang VM: a second or two.
    pub fn ctl(&self, args: &[&str]) -> String {
        let server = server_script();
        let ctl = server.with_file_name("rabbitmqctl");
        let output = self
            .command(&ctl)
            .args(["-n", &self.node, "-q"])
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", ctl.display()));
        let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
        assert!(
            output.status.success(),
            "rabbitmqctl {args:?} failed ({}):\n{stdout}{}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
        stdout
    }

    /// The start script or `rabbitmqctl` with this node's settings and
    /// nothing inherited that would choose others.
    fn command(&self, program: &Path) -> Command {
        let dir = self.dir.path();
        let mut command = Command::new(program);
        for (name, _) in std::env::vars_os() {
            if name.to_string_lossy().starts_with("RABBITMQ_") {
                command.env_remove(name);
            }
        }
        command
            .current_dir(dir)
            // The Erlang cookie, created by the first start, is
            // $HOME/.erlang.cookie; rabbitmqctl needs the same.
            .env("HOME", dir)
            // An epmd this node has to start listens on loopback only.
            .env("ERL_EPMD_ADDRESS", "127.0.0.1")
            .env("RABBITMQ_NODENAME", &self.node)
            .env("RABBITMQ_NODE_IP_ADDRESS", "127.0.0.1")
            .env("RABBITMQ_NODE_PORT", self.amqp_port.to_string())
            .env("RABBITMQ_DIST_PORT", self.dist_port.to_string())
            .env(
                "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS",
                "-kernel inet_dist_use_interface {127,0,0,1}",
            )
            .env("RABBITMQ_MNESIA_BASE", dir.join("mnesia"))
            .env("RABBITMQ_LOG_BASE", dir.join("log"))
            .env("RABBITMQ_CONF_ENV_FILE", dir.join("rabbitmq-env.conf"))
            .env("RABBITMQ_CONFIG_FILE", dir.join("rabbitmq.conf"))
            .env("RABBITMQ_ADVANCED_CONFIG_FILE", dir.join("advanced.config"))
            .env("RABBITMQ_ENABLED_PLUGINS_FILE", dir.join("enabled_plugins"));
        command
    }

    /// Starts the node on its ports and waits until it answers AMQP; when
    /// it exits first, gives the end of its logs.
    fn try_start(&mut self) -> Result<(), String> {
        let server = server_script();
        let console = File::options()
            .create(true)
            .append(true)
            .open(self.dir.path().join("console.log"))
            .expect("console log of RabbitMQ");
        let child = self
            .command(&server)
            .stdin(Stdio::null())
            .stdout(console.try_clone().expect("console log"))
            .stderr(console)
            // SIGKILL for the group reaches beam.smp too.
            .process_group(0)
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot run {} (scripts/test.sh installs rabbitmq-server and sets NWS_RABBITMQ_SERVER): {e}",
                    server.display()
                )
            });
        self.child = Some(child);
        let address = SocketAddr::from(([127, 0, 0, 1], self.amqp_port));
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if !self.is_running() {
                self.kill_processes();
                return Err(self.log_tail());
            }
            if answers_amqp(address) {
                return Ok(());
            }
            if Instant::now() > deadline {
                self.kill_processes();
                panic!(
                    "{} did not answer AMQP within {START_TIMEOUT:?}:\n{}",
                    self.node,
                    self.log_tail()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// A killed node's listeners close as the kernel reaps it: until both
    /// ports can be bound, a new start would fail on them.
    fn until_ports_free(&self) {
        let deadline = Instant::now() + STOP_TIMEOUT;
        for port in [self.amqp_port, self.dist_port] {
            loop {
                match TcpListener::bind(("127.0.0.1", port)) {
                    Ok(_) => break,
                    Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
                    Err(e) => panic!("port {port} of {} stays busy: {e}", self.node),
                }
            }
        }
    }

    /// The last lines of the script's output and of the node's log.
    fn log_tail(&self) -> String {
        let dir = self.dir.path();
        [
            dir.join("console.log"),
            dir.join("log").join(format!("{}.log", self.node)),
        ]
        .iter()
        .map(|path| {
            let text = std::fs::read_to_string(path).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            let tail = lines[lines.len().saturating_sub(40)..].join("\n");
            format!("--- {} ---\n{tail}\n", path.display())
        })
        .collect()
    }
}

impl Drop for PrivateRabbit {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("--- RabbitMQ node {} ---\n{}", self.node, self.log_tail());
        }
        self.kill_processes();
    }
}

/// Whether a broker answers on `address`: the AMQP 0-9-1 protocol header
/// gets a Connection.Start method frame back.
fn answers_amqp(address: SocketAddr) -> bool {
    let Ok(mut stream) = TcpStream::connect_timeout(&address, Duration::from_secs(1)) else {
        return false;
    };
    let mut frame = [0u8; 11];
    stream.set_read_timeout(Some(Duration::from_secs(5))).is_ok()
        && stream.write_all(b"AMQP\x00\x00\x09\x01").is_ok()
        && stream.read_exact(&mut frame).is_ok()
        // Method frame on channel 0, class 10 (connection), method 10 (start).
        && frame[..3] == [1, 0, 0]
        && frame[7..] == [0, 10, 0, 10]
}

fn server_script() -> PathBuf {
    if let Some(path) = std::env::var_os("NWS_RABBITMQ_SERVER") {
        return PathBuf::from(path);
    }
    if Path::new(PACKAGED_SERVER).exists() {
        return PathBuf::from(PACKAGED_SERVER);
    }
    PathBuf::from("rabbitmq-server")
}

/// Two distinct ports the system calls free on 127.0.0.1.
fn two_free_ports() -> (u16, u16) {
    let bind = || TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    let (first, second) = (bind(), bind());
    let port = |listener: &TcpListener| listener.local_addr().expect("local address").port();
    (port(&first), port(&second))
}

fn pid(raw: u32) -> Pid {
    Pid::from_raw(raw as i32).expect("a child's pid is positive")
}

/// Every process below `root` now (children of children too), from
/// /proc; none where there is no /proc.
fn descendants(root: u32) -> Vec<u32> {
    let mut parents = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(process) = entry
            .file_name()
            .to_str()
            .and_then(|name| name.parse::<u32>().ok())
        else {
            continue;
        };
        // "pid (command) state ppid …"; the command may hold spaces.
        let parent = std::fs::read_to_string(entry.path().join("stat"))
            .ok()
            .and_then(|stat| {
                let (_, rest) = stat.rsplit_once(')')?;
                rest.split_whitespace().nth(1)?.parse::<u32>().ok()
            });
        if let Some(parent) = parent {
            parents.push((process, parent));
        }
    }
    let mut found = vec![root];
    let mut next = 0;
    while next < found.len() {
        let parent = found[next];
        found.extend(
            parents
                .iter()
                .filter(|(_, p)| *p == parent)
                .map(|(process, _)| *process),
        );
        next += 1;
    }
    found.split_off(1)
}
