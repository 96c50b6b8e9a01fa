//! A DNS server for one name, on loopback UDP, whose answer a test changes
//! as it starts and kills replicas: what a Kubernetes headless Service's
//! name does as pods come and go, without touching the machine's resolver
//! or hosts file. Upstreams reach it as `dns://<addr>/<name>:<port>`.

use std::{
    net::{Ipv4Addr, SocketAddr, UdpSocket},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    thread::JoinHandle,
    time::Duration,
};

const TYPE_A: u16 = 1;
const CLASS_IN: u16 = 1;
const NXDOMAIN: u16 = 3;

/// Answers A queries for its name with the addresses set last (TTL 0, so
/// every resolution asks again), AAAA and other types with no record, and
/// every other name with NXDOMAIN. Stops when dropped.
pub struct DnsServer {
    addr: SocketAddr,
    name: String,
    answer: Arc<Mutex<Vec<Ipv4Addr>>>,
    queries: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl DnsServer {
    pub fn start(name: &str, answer: &[Ipv4Addr]) -> Self {
        let socket = UdpSocket::bind("127.0.0.1:0").expect("bind the DNS server");
        socket
            .set_read_timeout(Some(Duration::from_millis(50)))
            .expect("a read timeout");
        let addr = socket.local_addr().unwrap();
        let answer = Arc::new(Mutex::new(answer.to_vec()));
        let queries = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = std::thread::spawn({
            let (name, answer, queries, stop) =
                (name.to_owned(), answer.clone(), queries.clone(), stop.clone());
            move || {
                let mut buffer = [0; 512];
                while !stop.load(Ordering::Relaxed) {
                    let Ok((len, from)) = socket.recv_from(&mut buffer) else {
                        continue;
                    };
                    queries.fetch_add(1, Ordering::Relaxed);
                    let ips = answer.lock().unwrap().clone();
                    if let Some(reply) = reply(&buffer[..len], &name, &ips) {
                        let _ = socket.send_to(&reply, from);
                    }
                }
            }
        });
        Self {
            addr,
            name: name.to_owned(),
            answer,
            queries,
            stop,
            thread: Some(thread),
        }
    }

    /// Answers with `ips` from now on.
    pub fn set(&self, ips: &[Ipv4Addr]) {
        *self.answer.lock().unwrap() = ips.to_vec();
    }

    /// Queries received so far.
    pub fn queries(&self) -> usize {
        self.queries.load(Ordering::Relaxed)
    }

    /// The upstream URL of this name at `port`.
    pub fn url(&self, port: u16) -> String {
        format!("dns://{}/{}:{port}", self.addr, self.name)
    }
}

impl Drop for DnsServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// The reply to `query` (RFC 1035 §4.1), or none for a message that is no
/// standard query with one question.
fn reply(query: &[u8], name: &str, ips: &[Ipv4Addr]) -> Option<Vec<u8>> {
    let u16_at = |at: usize| Some(u16::from_be_bytes([*query.get(at)?, *query.get(at + 1)?]));
    let flags = u16_at(2)?;
    if flags & 0x8000 != 0 || (flags >> 11) & 0xf != 0 || u16_at(4)? != 1 {
        return None;
    }
    // The question: labels up to the root's empty one, then type and class.
    let mut at = 12;
    let mut labels = Vec::new();
    loop {
        let len = usize::from(*query.get(at)?);
        at += 1;
        if len == 0 {
            break;
        }
        labels.push(String::from_utf8_lossy(query.get(at..at + len)?).to_lowercase());
        at += len;
    }
    let (qtype, qclass) = (u16_at(at)?, u16_at(at + 2)?);
    let question = &query[12..at + 4];

    let ours = labels.join(".") == name.trim_end_matches('.').to_lowercase();
    let answers: &[Ipv4Addr] = if ours && qtype == TYPE_A && qclass == CLASS_IN {
        ips
    } else {
        &[]
    };
    // A response, authoritative, recursion desired as asked, available.
    let rcode = if ours { 0 } else { NXDOMAIN };
    let mut reply = Vec::with_capacity(12 + question.len() + answers.len() * 16);
    reply.extend_from_slice(&query[..2]);
    reply.extend_from_slice(&(0x8400 | (flags & 0x0100) | 0x0080 | rcode).to_be_bytes());
    for count in [1, answers.len() as u16, 0, 0] {
        reply.extend_from_slice(&count.to_be_bytes());
    }
    reply.extend_from_slice(question);
    for ip in answers {
        // The name as a pointer to the question's, at offset 12.
        reply.extend_from_slice(&0xc00c_u16.to_be_bytes());
        reply.extend_from_slice(&TYPE_A.to_be_bytes());
        reply.extend_from_slice(&CLASS_IN.to_be_bytes());
        reply.extend_from_slice(&0_u32.to_be_bytes());
        reply.extend_from_slice(&4_u16.to_be_bytes());
        reply.extend_from_slice(&ip.octets());
    }
    Some(reply)
}
