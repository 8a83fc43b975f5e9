// Reads content from an oermesh daemon's HTTP gateway the way IPFS clients do, checking
// every block against its CID, for oermesh's interop tests.
//
// Usage: node trustless-client.mjs GATEWAY_URL CID[/PATH] OUT_FILE
//
// @helia/verified-fetch fetches `ipfs://CID[/PATH]` through a Helia node whose only
// block source is the gateway (raw blocks, `?format=raw`): no libp2p, no delegated
// routing, no public gateway. Every block is hashed against its CID before use; the
// file's bytes go to OUT_FILE. Prints one JSON line: {"status", "bytes", "contentType"}.
// A failure prints {"error": "..."} and exits 1.
import './polyfills.mjs'
import { createWriteStream } from 'node:fs'
import { Readable } from 'node:stream'
import { pipeline } from 'node:stream/promises'
import { createHeliaLight } from 'helia'
import { withHTTP } from '@helia/http'
import { fallbackRouter } from '@helia/fallback-router'
import { createVerifiedFetch } from '@helia/verified-fetch'

const [gateway, resource, out] = process.argv.slice(2)
try {
  // Helia asks routers marked `fallback` only after the ordinary ones, and with no
  // ordinary router that search never ends: offer the gateway as an ordinary router.
  const router = fallbackRouter({ gateways: [gateway], shuffle: false })
  router.capabilities = () => []
  const helia = withHTTP(createHeliaLight({ routers: [router] }), {
    delegatedRouters: [],
    recursiveGateways: [],
    // The daemon listens on plain HTTP on loopback, as a school server does on its LAN.
    allowInsecure: true,
    allowLocal: true
  })
  await helia.start()
  const verifiedFetch = await createVerifiedFetch(helia)
  const response = await verifiedFetch(`ipfs://${resource}`, {
    signal: AbortSignal.timeout(120_000)
  })
  let bytes = 0
  if (response.body != null) {
    const counted = Readable.fromWeb(response.body)
    counted.on('data', (chunk) => { bytes += chunk.length })
    await pipeline(counted, createWriteStream(out))
  }
  process.stdout.write(JSON.stringify({
    status: response.status,
    bytes,
    contentType: response.headers.get('content-type')
  }) + '\n')
  await helia.stop()
} catch (error) {
  process.stdout.write(JSON.stringify({ error: String(error?.stack ?? error) }) + '\n')
  process.exit(1)
}
