// Runs a Helia 7 node (js-libp2p over TCP + Noise + Yamux, bitswap) on 127.0.0.1 for
// oermesh's interop tests. It has no bootstrap peers, no mDNS, no delegated routing and
// no HTTP gateways: it reaches only the peers a test tells it to dial.
//
// Usage: node helia-node.mjs
// Prints one JSON line when the node runs: {"id": PEER_ID, "addrs": [MULTIADDR, ...]}.
// Then reads one JSON command per line on standard input and answers each with one
// JSON line: {"ok": true, ...} or {"ok": false, "error": "..."}. Commands:
//   {"op": "add", "path": FILE, "profile": "unixfs-v1-2025" | "unixfs-v0-2015"} -> {"cid"}
//   {"op": "connect", "addr": MULTIADDR_WITH_P2P}  -> {"peer", "protocols", "agentVersion"}
//   {"op": "cat", "cid": CID, "dest": PATH, "timeout_ms": N} -> {"bytes": N}
//   {"op": "get", "cid": CID, "dest": PATH, "timeout_ms": N} -> {"files": N}  (a folder tree)
//   {"op": "peers"}                                     -> {"peers": [PEER_ID, ...]}
// End of input stops the node.
import './polyfills.mjs'
import { createReadStream, createWriteStream } from 'node:fs'
import { mkdir } from 'node:fs/promises'
import { join } from 'node:path'
import { once, setMaxListeners } from 'node:events'
import { createInterface } from 'node:readline'
import { createHeliaLight } from 'helia'
import { withLibp2pLight } from '@helia/libp2p'
import { withBitswap } from '@helia/bitswap'
import { unixfs } from '@helia/unixfs'
import { importFile } from 'ipfs-unixfs-importer'
import { tcp } from '@libp2p/tcp'
import { noise } from '@libp2p/noise'
import { yamux } from '@libp2p/yamux'
import { identify } from '@libp2p/identify'
import { ping } from '@libp2p/ping'
import { multiaddr } from '@multiformats/multiaddr'
import { CID } from 'multiformats/cid'

// createHelia() would add public bootstrap peers, mDNS, delegated routing and public
// gateways; the light constructors add only what is named here.
const helia = withBitswap(withLibp2pLight(createHeliaLight(), {
  addresses: { listen: ['/ip4/127.0.0.1/tcp/0'] },
  transports: [tcp()],
  connectionEncrypters: [noise()],
  streamMuxers: [yamux()],
  services: { identify: identify(), ping: ping() }
}))
await helia.start()
const fs = unixfs(helia)

// Identify results by peer id, kept from the start so that none is missed.
const identifyResults = new Map()
const identifyWaiters = new Map()
helia.libp2p.addEventListener('peer:identify', ({ detail }) => {
  const peer = detail.peerId.toString()
  identifyResults.set(peer, detail)
  identifyWaiters.get(peer)?.(detail)
})
function identified (peer, signal) {
  if (identifyResults.has(peer)) return Promise.resolve(identifyResults.get(peer))
  return new Promise((resolve, reject) => {
    identifyWaiters.set(peer, resolve)
    signal.addEventListener('abort', () => reject(new Error(`no identify from ${peer}`)))
  })
}
const reply = (value) => process.stdout.write(JSON.stringify(value) + '\n')

reply({
  id: helia.libp2p.peerId.toString(),
  addrs: helia.libp2p.getMultiaddrs().map(String)
})

async function run (command) {
  switch (command.op) {
    case 'add': {
      // The importer itself, not @helia/unixfs: the latter fills in its own defaults
      // first, so a profile passed through it is silently ignored.
      const { cid } = await importFile({ content: createReadStream(command.path) }, helia.blockstore, { profile: command.profile })
      return { cid: cid.toString() }
    }
    case 'connect': {
      const connection = await helia.libp2p.dial(multiaddr(command.addr), { signal: AbortSignal.timeout(60_000) })
      // Identify runs on its own once the connection opens; its answer may come later.
      const peer = connection.remotePeer.toString()
      const result = await identified(peer, AbortSignal.timeout(60_000))
      return { peer, protocols: result.protocols, agentVersion: result.agentVersion }
    }
    case 'cat': {
      const signal = AbortSignal.timeout(command.timeout_ms ?? 120_000)
      // Bitswap adds a listener per block wanted; Node warns past ten by default.
      setMaxListeners(Infinity, signal)
      const out = createWriteStream(command.dest)
      let bytes = 0
      for await (const chunk of fs.cat(CID.parse(command.cid), { signal })) {
        bytes += chunk.byteLength
        if (!out.write(chunk)) await once(out, 'drain')
      }
      out.end()
      await once(out, 'finish')
      return { bytes }
    }
    case 'get': {
      const signal = AbortSignal.timeout(command.timeout_ms ?? 120_000)
      setMaxListeners(Infinity, signal)
      let files = 0
      const save = async (cid, dest) => {
        const stat = await fs.stat(cid, { signal })
        if (stat.type === 'directory') {
          await mkdir(dest, { recursive: true })
          for await (const entry of fs.ls(cid, { signal })) {
            await save(entry.cid, join(dest, entry.name))
          }
          return
        }
        const out = createWriteStream(dest)
        for await (const chunk of fs.cat(cid, { signal })) {
          if (!out.write(chunk)) await once(out, 'drain')
        }
        out.end()
        await once(out, 'finish')
        files += 1
      }
      await save(CID.parse(command.cid), command.dest)
      return { files }
    }
    case 'peers':
      return { peers: helia.libp2p.getPeers().map(String) }
    default:
      throw new Error(`unknown op ${JSON.stringify(command.op)}`)
  }
}

for await (const line of createInterface({ input: process.stdin })) {
  if (line.trim() === '') continue
  try {
    reply({ ok: true, ...(await run(JSON.parse(line))) })
  } catch (err) {
    reply({ ok: false, error: `${err.name}: ${err.message}` })
  }
}
await helia.stop()
