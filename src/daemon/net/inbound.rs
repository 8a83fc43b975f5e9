//! Streams that peers open to us for the protocols that read their own streams (the
//! block exchange, bitswap, replication groups), handed to those protocols through a
//! queue of their own.
//!
//! `libp2p-stream` hands inbound streams over a channel with room for one: a second
//! stream negotiated before its reader has taken the first is dropped. kubo sends each
//! bitswap message on a new stream, from several workers at once, so blocks it sent
//! were lost and a fetch from kubo waited out its stall timeout again and again. Here
//! every protocol has a queue of [`QUEUE`] streams; only a peer that opens streams
//! faster than the protocol's accept loop takes them (each takes them at once, within
//! its own limits) can fill it. Streams we open still go through `libp2p-stream`.

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::{ready, Ready};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};

use libp2p::core::transport::PortUse;
use libp2p::core::upgrade::DeniedUpgrade;
use libp2p::core::{Endpoint, InboundUpgrade, UpgradeInfo};
use libp2p::swarm::handler::{ConnectionEvent, FullyNegotiatedInbound};
use libp2p::swarm::{
    ConnectionDenied, ConnectionHandler, ConnectionHandlerEvent, ConnectionId, FromSwarm,
    NetworkBehaviour, SubstreamProtocol, THandler, THandlerInEvent, THandlerOutEvent, ToSwarm,
};
use libp2p::{Multiaddr, PeerId, Stream, StreamProtocol};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

/// Streams of one protocol waiting for its accept loop.
pub const QUEUE: usize = 64;

/// The streams peers open to us for one protocol, with the peer that opened each.
pub type IncomingStreams = ReceiverStream<(PeerId, Stream)>;

#[derive(Debug, thiserror::Error)]
#[error("inbound streams of {0} are taken already")]
pub struct AlreadyRegistered(pub StreamProtocol);

/// Where each accepted protocol's streams go.
type Queues = HashMap<StreamProtocol, mpsc::Sender<(PeerId, Stream)>>;

/// The protocols being accepted, and where each one's streams go. Shared by the
/// behaviour, every connection's handler and the network client.
#[derive(Clone, Default)]
pub struct Registry(Arc<Mutex<Queues>>);

impl Registry {
    fn lock(&self) -> MutexGuard<'_, Queues> {
        self.0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Starts accepting `protocol`: from now on every connection offers it to peers.
    /// Dropping the returned streams stops it.
    pub fn accept(&self, protocol: StreamProtocol) -> Result<IncomingStreams, AlreadyRegistered> {
        let mut protocols = self.lock();
        if protocols
            .get(&protocol)
            .is_some_and(|sender| !sender.is_closed())
        {
            return Err(AlreadyRegistered(protocol));
        }
        let (sender, receiver) = mpsc::channel(QUEUE);
        protocols.insert(protocol, sender);
        Ok(ReceiverStream::new(receiver))
    }

    fn protocols(&self) -> Vec<StreamProtocol> {
        let mut protocols = self.lock();
        protocols.retain(|_, sender| !sender.is_closed());
        protocols.keys().cloned().collect()
    }

    fn deliver(&self, peer: PeerId, protocol: StreamProtocol, stream: Stream) {
        let Some(sender) = self.lock().get(&protocol).cloned() else {
            return;
        };
        if sender.try_send((peer, stream)).is_err() {
            tracing::debug!(%peer, %protocol, "inbound stream dropped: its protocol is not keeping up");
        }
    }
}

/// The behaviour: one [`Handler`] per connection, nothing else.
pub struct Behaviour {
    registry: Registry,
}

impl Behaviour {
    pub fn new(registry: Registry) -> Behaviour {
        Behaviour { registry }
    }

    fn handler(&self, peer: PeerId) -> Handler {
        Handler {
            peer,
            registry: self.registry.clone(),
        }
    }
}

impl NetworkBehaviour for Behaviour {
    type ConnectionHandler = Handler;
    type ToSwarm = Infallible;

    fn handle_established_inbound_connection(
        &mut self,
        _: ConnectionId,
        peer: PeerId,
        _: &Multiaddr,
        _: &Multiaddr,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        Ok(self.handler(peer))
    }

    fn handle_established_outbound_connection(
        &mut self,
        _: ConnectionId,
        peer: PeerId,
        _: &Multiaddr,
        _: Endpoint,
        _: PortUse,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        Ok(self.handler(peer))
    }

    fn on_swarm_event(&mut self, _: FromSwarm) {}

    fn on_connection_handler_event(
        &mut self,
        _: PeerId,
        _: ConnectionId,
        event: THandlerOutEvent<Self>,
    ) {
        match event {}
    }

    fn poll(&mut self, _: &mut Context<'_>) -> Poll<ToSwarm<Self::ToSwarm, THandlerInEvent<Self>>> {
        Poll::Pending
    }
}

/// One connection's side: offers the registered protocols and passes on each stream
/// a peer opens with one of them.
pub struct Handler {
    peer: PeerId,
    registry: Registry,
}

impl ConnectionHandler for Handler {
    type FromBehaviour = Infallible;
    type ToBehaviour = Infallible;
    type InboundProtocol = Protocols;
    type OutboundProtocol = DeniedUpgrade;
    type InboundOpenInfo = ();
    type OutboundOpenInfo = Infallible;

    fn listen_protocol(&self) -> SubstreamProtocol<Protocols> {
        SubstreamProtocol::new(Protocols(self.registry.protocols()), ())
    }

    fn poll(
        &mut self,
        _: &mut Context<'_>,
    ) -> Poll<ConnectionHandlerEvent<DeniedUpgrade, Infallible, Infallible>> {
        Poll::Pending
    }

    fn on_behaviour_event(&mut self, event: Infallible) {
        match event {}
    }

    fn on_connection_event(
        &mut self,
        event: ConnectionEvent<Self::InboundProtocol, Self::OutboundProtocol, (), Infallible>,
    ) {
        if let ConnectionEvent::FullyNegotiatedInbound(FullyNegotiatedInbound {
            protocol: (stream, protocol),
            ..
        }) = event
        {
            self.registry.deliver(self.peer, protocol, stream);
        }
    }
}

/// The registered protocols, offered to a peer opening a stream; the stream comes with
/// the one it chose.
pub struct Protocols(Vec<StreamProtocol>);

impl UpgradeInfo for Protocols {
    type Info = StreamProtocol;
    type InfoIter = std::vec::IntoIter<StreamProtocol>;

    fn protocol_info(&self) -> Self::InfoIter {
        self.0.clone().into_iter()
    }
}

impl InboundUpgrade<Stream> for Protocols {
    type Output = (Stream, StreamProtocol);
    type Error = Infallible;
    type Future = Ready<Result<(Stream, StreamProtocol), Infallible>>;

    fn upgrade_inbound(self, stream: Stream, protocol: StreamProtocol) -> Self::Future {
        ready(Ok((stream, protocol)))
    }
}
