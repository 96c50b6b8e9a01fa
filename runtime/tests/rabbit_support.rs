//! The private RabbitMQ node of the tests: it starts, answers AMQP, is
//! really gone once killed, and answers again, on the same port, once
//! restarted. Talks to it with nothing but TCP: the AMQP 0-9-1 protocol
//! header must get a Connection.Start method frame back.

use std::{
    io::{Read as _, Write as _},
    net::TcpStream,
    time::{Duration, Instant},
};

use nws_runtime::testing::{PrivateRabbit, unique_queue};

/// The first frame the broker sends after the protocol header: type,
/// channel, class and method of a method frame.
fn connection_start(port: u16) -> std::io::Result<(u8, u16, u16, u16)> {
    let address = ([127, 0, 0, 1], port).into();
    let mut stream = TcpStream::connect_timeout(&address, Duration::from_secs(2))?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    stream.write_all(b"AMQP\x00\x00\x09\x01")?;
    // type (1), channel (2), payload size (4), then class (2), method (2).
    let mut frame = [0u8; 11];
    stream.read_exact(&mut frame)?;
    let size = u32::from_be_bytes(frame[3..7].try_into().unwrap()) as usize;
    let mut rest = vec![0u8; size - 4 + 1];
    stream.read_exact(&mut rest)?;
    assert_eq!(rest.last(), Some(&0xCE), "frame end octet");
    Ok((
        frame[0],
        u16::from_be_bytes([frame[1], frame[2]]),
        u16::from_be_bytes([frame[7], frame[8]]),
        u16::from_be_bytes([frame[9], frame[10]]),
    ))
}

fn assert_answers(port: u16) {
    let (kind, channel, class, method) = connection_start(port).expect("the node answers AMQP");
    assert_eq!((kind, channel), (1, 0), "a method frame on channel 0");
    assert_eq!((class, method), (10, 10), "Connection.Start");
}

#[test]
fn a_private_node_starts_dies_and_starts_again_on_its_port() {
    let started = Instant::now();
    let mut rabbit = PrivateRabbit::start();
    eprintln!("{} answered after {:?}", rabbit.node_name(), started.elapsed());
    let port = rabbit.port();
    assert_eq!(rabbit.url(), format!("amqp://guest:guest@127.0.0.1:{port}/%2f"));
    assert_answers(port);

    rabbit.kill();
    assert!(!rabbit.is_running());
    let refused = TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_secs(2));
    assert!(refused.is_err(), "port {port} still open after the kill");

    let restarted = Instant::now();
    rabbit.restart();
    eprintln!(
        "{} answered again after {:?}",
        rabbit.node_name(),
        restarted.elapsed()
    );
    assert_eq!(rabbit.port(), port);
    assert_answers(port);

    let dir = rabbit.dir().to_owned();
    drop(rabbit);
    assert!(!dir.exists(), "{} outlives the node", dir.display());
    assert!(connection_start(port).is_err(), "port {port} open after drop");
}

#[test]
fn unique_queue_names_differ() {
    let (first, second) = (unique_queue("jobs"), unique_queue("jobs"));
    assert_ne!(first, second);
    let prefix = format!("nws.test.jobs.{}.", std::process::id());
    assert!(first.starts_with(&prefix), "{first}");
}
