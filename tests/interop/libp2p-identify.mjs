// Dials a libp2p node over TCP + Noise + Yamux with js-libp2p, runs identify and
// ping, and prints one JSON line with what the node told us. It then stays
// connected until standard input closes, so the caller can check the other side.
// Usage: node libp2p-identify.mjs MULTIADDR_WITH_P2P
import './polyfills.mjs'
import { createLibp2p } from 'libp2p'
import { tcp } from '@libp2p/tcp'
import { noise } from '@libp2p/noise'
import { yamux } from '@libp2p/yamux'
import { identify } from '@libp2p/identify'
import { ping } from '@libp2p/ping'
import { multiaddr } from '@multiformats/multiaddr'

const target = multiaddr(process.argv[2])
const node = await createLibp2p({
  addresses: { listen: [] },
  transports: [tcp()],
  connectionEncrypters: [noise()],
  streamMuxers: [yamux()],
  // Identify runs once, below, rather than also on its own when the connection opens.
  services: { identify: identify({ runOnConnectionOpen: false }), ping: ping() }
})

const connection = await node.dial(target, { signal: AbortSignal.timeout(60_000) })
const info = await node.services.identify.identify(connection, { signal: AbortSignal.timeout(60_000) })
const rttMs = await node.services.ping.ping(target, { signal: AbortSignal.timeout(60_000) })

console.log(JSON.stringify({
  self: node.peerId.toString(),
  peer: info.peerId.toString(),
  agentVersion: info.agentVersion,
  protocolVersion: info.protocolVersion,
  protocols: info.protocols,
  listenAddrs: info.listenAddrs.map(String),
  observedAddr: info.observedAddr?.toString() ?? null,
  rttMs
}))

process.stdin.resume()
process.stdin.on('end', async () => {
  await node.stop()
  process.exit(0)
})
