//! The ceiling for transfers between nodes: one libp2p stream on loopback over each
//! transport the daemon offers (TCP + Noise + Yamux, TCP + TLS 1.3 + Yamux, QUIC).
//! A measurement, not a test: scripts/bench runs it (`--ignored`) in release mode.

use std::time::{Duration, Instant};

use libp2p::futures::{AsyncReadExt, AsyncWriteExt, StreamExt};
use libp2p::multiaddr::Protocol;
use libp2p::swarm::SwarmEvent;
use libp2p::{noise, tcp, tls, yamux, StreamProtocol, Swarm, SwarmBuilder};

const PROTOCOL: StreamProtocol = StreamProtocol::new("/oermesh-bench/1");
const SIZE: u64 = 1 << 30;
const CHUNK: usize = 1 << 20;
const RUNS: usize = 3;

#[derive(Debug, Clone, Copy)]
enum Transport {
    TcpNoise,
    TcpTls,
    Quic,
}

fn swarm(transport: Transport) -> Swarm<libp2p_stream::Behaviour> {
    let builder = SwarmBuilder::with_new_identity().with_tokio();
    let behaviour = |_: &libp2p::identity::Keypair| libp2p_stream::Behaviour::new();
    let config = |c: libp2p::swarm::Config| c.with_idle_connection_timeout(Duration::from_secs(60));
    match transport {
        Transport::TcpNoise => builder
            .with_tcp(
                tcp::Config::default(),
                noise::Config::new,
                yamux::Config::default,
            )
            .unwrap()
            .with_behaviour(behaviour)
            .unwrap()
            .with_swarm_config(config)
            .build(),
        Transport::TcpTls => builder
            .with_tcp(
                tcp::Config::default(),
                tls::Config::new,
                yamux::Config::default,
            )
            .unwrap()
            .with_behaviour(behaviour)
            .unwrap()
            .with_swarm_config(config)
            .build(),
        Transport::Quic => builder
            .with_quic()
            .with_behaviour(behaviour)
            .unwrap()
            .with_swarm_config(config)
            .build(),
    }
}

/// Seconds to send `SIZE` bytes over one stream, until the receiver confirms the count.
async fn one_transfer(transport: Transport) -> f64 {
    let mut server = swarm(transport);
    let client = swarm(transport);
    let listen = match transport {
        Transport::Quic => "/ip4/127.0.0.1/udp/0/quic-v1",
        _ => "/ip4/127.0.0.1/tcp/0",
    };
    server.listen_on(listen.parse().unwrap()).unwrap();
    let addr = loop {
        if let SwarmEvent::NewListenAddr { address, .. } = server.select_next_some().await {
            break address;
        }
    };
    let server_id = *server.local_peer_id();
    let mut incoming = server.behaviour().new_control().accept(PROTOCOL).unwrap();
    let mut control = client.behaviour().new_control();
    let mut client = client;
    client.dial(addr.with(Protocol::P2p(server_id))).unwrap();
    let server_task = tokio::spawn(async move {
        loop {
            server.select_next_some().await;
        }
    });
    let client_task = tokio::spawn(async move {
        loop {
            client.select_next_some().await;
        }
    });
    let receiver = tokio::spawn(async move {
        let (_, mut stream) = incoming.next().await.unwrap();
        let mut buffer = vec![0u8; CHUNK];
        let mut received = 0u64;
        loop {
            let read = stream.read(&mut buffer).await.unwrap();
            if read == 0 {
                break;
            }
            received += read as u64;
        }
        stream.write_all(&received.to_be_bytes()).await.unwrap();
        stream.close().await.unwrap();
    });
    let mut stream = control.open_stream(server_id, PROTOCOL).await.unwrap();
    let chunk = vec![0x5au8; CHUNK];
    let started = Instant::now();
    for _ in 0..SIZE / CHUNK as u64 {
        stream.write_all(&chunk).await.unwrap();
    }
    stream.close().await.unwrap();
    let mut count = [0u8; 8];
    stream.read_exact(&mut count).await.unwrap();
    let seconds = started.elapsed().as_secs_f64();
    assert_eq!(u64::from_be_bytes(count), SIZE);
    receiver.await.unwrap();
    server_task.abort();
    client_task.abort();
    seconds
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement for scripts/bench; run with --ignored in release mode"]
async fn transport_throughput() {
    for transport in [Transport::TcpNoise, Transport::TcpTls, Transport::Quic] {
        let mut runs = Vec::new();
        for _ in 0..RUNS {
            runs.push(one_transfer(transport).await);
        }
        runs.sort_by(f64::total_cmp);
        let rate = |seconds: f64| SIZE as f64 / seconds / f64::from(1 << 20);
        let name = match transport {
            Transport::TcpNoise => "TCP + Noise + Yamux",
            Transport::TcpTls => "TCP + TLS 1.3 + Yamux",
            Transport::Quic => "QUIC",
        };
        println!(
            "one stream, {name:<22} {:7.1} MiB/s median of {RUNS} (1 GiB in {:.2}-{:.2} s)",
            rate(runs[RUNS / 2]),
            runs[0],
            runs[RUNS - 1]
        );
    }
}
