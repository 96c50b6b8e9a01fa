//! A Redis server of the test's own, for tests that stop, freeze or
//! restart it, and a client that needs no library.

use std::{
    io::{Read as _, Write as _},
    net::TcpStream,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use super::send_signal;

/// Sends one command to Redis in RESP and returns the raw reply.
/// The Redis the tests share: NWS_TEST_REDIS_URL (which the test command
/// sets, starting a private one when the machine has none), else the
/// machine's.
pub fn redis_url() -> String {
    std::env::var("NWS_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned())
}

pub fn redis_command(url: &str, args: &[&str]) -> String {
    let address = url.trim_start_matches("redis://").split('/').next().unwrap();
    let mut stream = TcpStream::connect(address).expect("redis answers");
    stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut command = format!("*{}\r\n", args.len());
    for arg in args {
        command.push_str(&format!("${}\r\n{arg}\r\n", arg.len()));
    }
    stream.write_all(command.as_bytes()).unwrap();
    let mut reply = [0u8; 512];
    let read = stream.read(&mut reply).unwrap();
    String::from_utf8_lossy(&reply[..read]).into_owned()
}

/// A Redis server of the test's own, on a free port, that it may stop.
pub struct PrivateRedis {
    port: u16,
    child: Option<Child>,
}

impl PrivateRedis {
    /// redis-server cannot be handed a bound socket, so a port the system
    /// just called free is tried, and another one if it is taken by then.
    pub fn start() -> Self {
        for _ in 0..5 {
            let port = std::net::TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port();
            let mut redis = Self { port, child: None };
            if redis.try_start() {
                return redis;
            }
        }
        panic!("redis-server found no free port in 5 tries");
    }

    pub fn restart(&mut self) {
        assert!(
            self.try_start(),
            "redis-server could not listen on {} again",
            self.port
        );
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Starts redis-server on `self.port`; false when it exits instead
    /// (the port was taken).
    fn try_start(&mut self) -> bool {
        let binary = std::env::var("NWS_REDIS_SERVER").unwrap_or_else(|_| "redis-server".to_owned());
        let child = Command::new(binary)
            .args([
                "--bind",
                "127.0.0.1",
                "--port",
                &self.port.to_string(),
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server runs (the test command installs it)");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        // Ours once it answers PING while still running.
        loop {
            if let Some(child) = self.child.as_mut()
                && child.try_wait().unwrap().is_some()
            {
                self.child = None;
                return false;
            }
            if TcpStream::connect(("127.0.0.1", self.port)).is_ok()
                && redis_command(&self.url(), &["PING"]).starts_with("+PONG")
            {
                return true;
            }
            assert!(Instant::now() < deadline, "redis-server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn signal(&self, signal: &str) {
        send_signal(self.child.as_ref().unwrap(), signal);
    }

    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        if let Some(child) = &self.child {
            // A frozen server ignores SIGKILL only until it is continued.
            send_signal(child, "CONT");
        }
        self.stop();
    }
}
