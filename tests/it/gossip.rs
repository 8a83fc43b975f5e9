//! A hostile gossip publisher, written from the crate's own protocol types: it poses
//! as an oermesh node, joins a followed collection's topic and announces old heads,
//! a second version signed with a number already used, forged heads and junk. Old
//! heads are ignored at no cost to it, the double signature is kept as evidence
//! against the publisher, each invalid head counts against the sender until it is cut
//! off; nothing else it sent is stored, and an honest version published afterwards is
//! still accepted.

use std::time::Duration;

use libp2p::gossipsub::{self, IdentTopic, MessageAuthenticity};
use libp2p::swarm::{NetworkBehaviour, SwarmEvent};
use libp2p::{identify, noise, tcp, yamux, Multiaddr, PeerId};
use oermesh::block::BlockGet;
use oermesh::daemon::net::{wire, NetEvent, PROTOCOL_VERSION};
use oermesh::daemon::Daemon;
use oermesh::metrics::{GossipLabels, GossipOutcome};
use oermesh::node::Node;
use oermesh::records::book::HistoryEntry;
use oermesh::records::codec;
use oermesh::records::{CollectionId, Head, HeadDraft, Kind};
use tokio::sync::{mpsc, oneshot, watch};

use crate::network::{
    dial_addr, on_node, prepare_collection, publish_next, start_node, trust_and_follow, version_at,
    wait_for_version, wait_until, wait_until_compatible, wait_until_in_topic,
};

#[derive(NetworkBehaviour)]
struct HostileBehaviour {
    identify: identify::Behaviour,
    gossip: gossipsub::Behaviour,
}

/// Bytes to publish, and where to say whether gossipsub took them.
type PublishOrder = (Vec<u8>, oneshot::Sender<Result<(), String>>);

/// A peer that says it speaks oermesh and publishes whatever it is told to.
struct HostilePublisher {
    peer_id: PeerId,
    publish: mpsc::Sender<PublishOrder>,
    /// Whether the victim's subscription to the topic has reached it.
    victim_subscribed: watch::Receiver<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl HostilePublisher {
    fn start(victim: Multiaddr, topic: IdentTopic) -> HostilePublisher {
        let mut swarm = libp2p::SwarmBuilder::with_new_identity()
            .with_tokio()
            .with_tcp(
                tcp::Config::default(),
                noise::Config::new,
                yamux::Config::default,
            )
            .unwrap()
            .with_behaviour(|key| {
                let config = gossipsub::ConfigBuilder::default()
                    .validation_mode(gossipsub::ValidationMode::Strict)
                    .message_id_fn(|message: &gossipsub::Message| wire::message_id(&message.data))
                    .max_transmit_size(wire::MAX_GOSSIP_FRAME)
                    .build()
                    .unwrap();
                HostileBehaviour {
                    identify: identify::Behaviour::new(identify::Config::new(
                        PROTOCOL_VERSION.into(),
                        key.public(),
                    )),
                    gossip: gossipsub::Behaviour::new(
                        MessageAuthenticity::Signed(key.clone()),
                        config,
                    )
                    .unwrap(),
                }
            })
            .unwrap()
            .with_swarm_config(|config| {
                config.with_idle_connection_timeout(Duration::from_secs(600))
            })
            .build();
        let peer_id = *swarm.local_peer_id();
        swarm.behaviour_mut().gossip.subscribe(&topic).unwrap();
        swarm.dial(victim).unwrap();
        let (publish, mut orders) = mpsc::channel::<PublishOrder>(4);
        let (subscribed, victim_subscribed) = watch::channel(false);
        let task = tokio::spawn(async move {
            use libp2p::futures::StreamExt;
            loop {
                tokio::select! {
                    Some((data, reply)) = orders.recv() => {
                        let published = swarm
                            .behaviour_mut()
                            .gossip
                            .publish(topic.clone(), data)
                            .map(|_| ())
                            .map_err(|err| err.to_string());
                        let _ = reply.send(published);
                    }
                    event = swarm.select_next_some() => {
                        if let SwarmEvent::Behaviour(HostileBehaviourEvent::Gossip(
                            gossipsub::Event::Subscribed { topic: joined, .. },
                        )) = event
                        {
                            if joined == topic.hash() {
                                let _ = subscribed.send(true);
                            }
                        }
                    }
                }
            }
        });
        HostilePublisher {
            peer_id,
            publish,
            victim_subscribed,
            task,
        }
    }

    /// Publishes `data` on the topic; gossipsub must have taken it for sending.
    async fn publish(&self, what: &str, data: Vec<u8>) {
        let (reply, answer) = oneshot::channel();
        self.publish.send((data, reply)).await.unwrap();
        if let Err(err) = answer.await.unwrap() {
            panic!("the hostile peer could not publish {what}: {err}");
        }
    }
}

impl Drop for HostilePublisher {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn gossip_count(daemon: &Daemon, outcome: GossipOutcome) -> u64 {
    daemon
        .metrics()
        .gossip_messages
        .get_or_create(&GossipLabels { outcome })
        .get()
}

/// The stored bytes of every version of `id` on `node`, oldest first.
fn head_blocks(node: &Node, id: &CollectionId) -> Vec<Vec<u8>> {
    let mut heads: Vec<Vec<u8>> = node
        .records()
        .history(id)
        .unwrap()
        .into_iter()
        .map(|entry| match entry {
            HistoryEntry::Version { cid, .. } => node.store().get_block(&cid).unwrap(),
            other => panic!("a version is missing: {other:?}"),
        })
        .collect();
    heads.reverse();
    heads
}

/// A head with the seq of `newest` and different content, signed by the publisher.
fn equivocation(key: &ed25519_dalek::SigningKey, newest: &[u8]) -> (cid::Cid, Head, Vec<u8>) {
    let real: Head = codec::decode(Kind::Head, newest).unwrap();
    Head::sign(
        key,
        HeadDraft {
            name: real.name.clone(),
            seq: real.seq,
            entries: real.entries,
            entry_count: real.entry_count,
            previous: real.previous,
            time: Some("2020-01-01T00:00:00Z".into()),
        },
    )
    .unwrap()
}

/// Four heads no node may accept: one above the size cap, one that is not a head at
/// all, a newer version forged from a real one (its signature covers the old seq),
/// and a validly signed head of the attacker's own collection sent on this
/// collection's topic.
fn invalid_heads(newest: &[u8]) -> Vec<(&'static str, Vec<u8>)> {
    let oversized = vec![0xa5; wire::MAX_GOSSIP_MESSAGE + 1];
    let junk = b"not a head, not even CBOR \xff\xff".to_vec();

    let real: Head = codec::decode(Kind::Head, newest).unwrap();
    let mut forged = real.clone();
    forged.seq += 1;
    forged.previous = Some(wire::head_cid(newest));
    let forged = codec::encode(Kind::Head, &forged).unwrap();
    assert!(
        Head::decode_and_verify(&forged).is_err(),
        "the forged head must not verify"
    );

    let attacker = oermesh::keys::generate_signing_key().unwrap();
    let (_, _, foreign) = Head::sign(
        &attacker,
        HeadDraft {
            name: real.name.clone(),
            seq: real.seq + 1,
            entries: real.entries,
            entry_count: real.entry_count,
            previous: Some(wire::head_cid(newest)),
            time: None,
        },
    )
    .unwrap();
    vec![
        ("a head above the size cap", oversized),
        ("bytes that are not a head", junk),
        ("a newer version with a forged signature", forged),
        ("a head of another publisher's collection", foreign),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hostile_gossip_publisher_is_ignored_for_old_heads_cut_off_for_invalid_ones_and_stores_nothing(
) {
    let dir = tempfile::tempdir().unwrap();
    let publisher_root = dir.path().join("publisher");
    let publisher = start_node(&publisher_root, vec![]).await;
    let id = on_node(&publisher, |node| {
        let id = prepare_collection(node, "lessons", 1);
        node.collection_publish("lessons").unwrap();
        for _ in 2..=5 {
            publish_next(node, "lessons");
        }
        id
    })
    .await;
    let heads = on_node(&publisher, {
        let id = id.clone();
        move |node| head_blocks(node, &id)
    })
    .await;
    assert_eq!(heads.len(), 5);

    let follower_root = dir.path().join("follower");
    {
        let (node, _) = Node::open_or_init(&follower_root).unwrap();
        trust_and_follow(&node, &id);
    }
    let follower = start_node(&follower_root, vec![dial_addr(&publisher)]).await;
    wait_for_version(&follower, &id, 5).await;
    // From here on only the hostile peer talks to the follower: every verdict counted
    // is about a message of its.
    publisher.shutdown().await.unwrap();
    let history_before = on_node(&follower, {
        let id = id.clone();
        move |node| node.records().history(&id).unwrap()
    })
    .await;
    let mut events = follower.client().events();

    let hostile = HostilePublisher::start(dial_addr(&follower), wire::topic(&id));
    wait_until_compatible(&follower, hostile.peer_id).await;
    wait_until_in_topic(&follower, hostile.peer_id, &id).await;
    let mut subscribed = hostile.victim_subscribed.clone();
    tokio::time::timeout(
        crate::network::DEADLINE,
        subscribed.wait_for(|subscribed| *subscribed),
    )
    .await
    .expect("the follower's subscription reaches the hostile peer")
    .unwrap();

    // Versions 1 to 4, each signed by the publisher, replayed: stale, so ignored, and
    // free. Four invalid messages would cut a peer off; four stale ones must not. Then
    // a second version 5 the publisher signed too (its key leaked, say): the relay is
    // not at fault, so it is ignored too, and kept as evidence.
    let accepted = gossip_count(&follower, GossipOutcome::Accepted);
    let rejected = gossip_count(&follower, GossipOutcome::Rejected);
    let ignored = gossip_count(&follower, GossipOutcome::Ignored);
    for (seq, head) in heads[..4].iter().enumerate() {
        hostile
            .publish(&format!("version {}", seq + 1), head.clone())
            .await;
    }
    let key = oermesh::keys::load(&publisher_root.join("keys"), "ministry").unwrap();
    let (twin, _, twin_bytes) = equivocation(&key, &heads[4]);
    hostile.publish("a second version 5", twin_bytes).await;
    wait_until(
        "the follower ignores the old versions and the second version 5",
        || async { gossip_count(&follower, GossipOutcome::Ignored) >= ignored + 5 },
    )
    .await;
    assert_eq!(gossip_count(&follower, GossipOutcome::Rejected), rejected);
    assert_eq!(gossip_count(&follower, GossipOutcome::Accepted), accepted);
    let peers = follower.client().peers().await.unwrap();
    assert!(
        peers.iter().any(|peer| peer.peer_id == hostile.peer_id),
        "old heads cost the sender nothing"
    );
    assert_eq!(version_at(&follower, &id).await, Some(5));

    // Four invalid heads: each rejected, and together they cut the sender off.
    // One at a time, each judged before the next goes: a peer that is muted before it
    // reaches the ban score would never be cut off.
    for (sent, (what, head)) in (1..).zip(invalid_heads(&heads[4])) {
        hostile.publish(what, head).await;
        wait_until(&format!("the follower rejects {what}"), || async {
            gossip_count(&follower, GossipOutcome::Rejected) >= rejected + sent
        })
        .await;
    }
    let reason = tokio::time::timeout(crate::network::DEADLINE, async {
        loop {
            match events.recv().await {
                Ok(NetEvent::Banned { peer_id, reason }) if peer_id == hostile.peer_id => {
                    return reason;
                }
                Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                Err(err) => panic!("the follower's events ended: {err}"),
            }
        }
    })
    .await
    .expect("the hostile peer is cut off after four invalid heads");
    assert!(reason.contains("gossip score"), "{reason}");
    assert_eq!(gossip_count(&follower, GossipOutcome::Accepted), accepted);
    wait_until("the hostile peer is disconnected", || async {
        !follower
            .client()
            .peers()
            .await
            .unwrap()
            .iter()
            .any(|peer| peer.peer_id == hostile.peer_id)
    })
    .await;

    // Nothing it sent was taken: the newest version is still the publisher's first
    // version 5, the history is what it was, and the only trace is the evidence.
    let (newest, history, follows) = on_node(&follower, {
        let id = id.clone();
        move |node| {
            (
                node.records().newest_head(&id).unwrap(),
                node.records().history(&id).unwrap(),
                node.follow_list().unwrap(),
            )
        }
    })
    .await;
    assert_eq!(newest.map(|(seq, _)| seq), Some(5));
    assert_eq!(newest.map(|(_, cid)| cid), Some(wire::head_cid(&heads[4])));
    assert_eq!(history, history_before);
    let evidence = &follows[0].equivocations;
    assert_eq!(evidence.len(), 1, "{follows:?}");
    assert_eq!(evidence[0].seq, 5);
    assert_eq!(evidence[0].known, wire::head_cid(&heads[4]));
    assert_eq!(evidence[0].conflicting, twin);
    drop(hostile);

    // The publisher comes back with version 6: the follower still takes honest heads.
    let publisher = start_node(&publisher_root, vec![]).await;
    let seq = on_node(&publisher, |node| publish_next(node, "lessons")).await;
    assert_eq!(seq, 6);
    follower.client().dial(dial_addr(&publisher)).await.unwrap();
    wait_for_version(&follower, &id, 6).await;
    follower.shutdown().await.unwrap();
    publisher.shutdown().await.unwrap();
}
