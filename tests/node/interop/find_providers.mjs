// A stock js-libp2p node (TCP, Noise, yamux, identify, kad-dht on /ipfs/kad/1.0.0)
// dials one CPN daemon and asks the DHT for providers of a CID.
//
//   node find_providers.mjs <daemon multiaddr with /p2p/> <CID> [timeout ms]
//
// Prints one JSON line {"providers": [peer ids], "self": <our peer id>} and exits
// 0 when the daemon's peer ID is among the providers, 1 when it is not, 2 on error.

// Node 20 lacks Promise.withResolvers, which js-libp2p 3.x uses.
if (typeof Promise.withResolvers !== 'function') {
  Promise.withResolvers = function () {
    let resolve, reject
    const promise = new Promise((res, rej) => { resolve = res; reject = rej })
    return { promise, resolve, reject }
  }
}

const { createLibp2p } = await import('libp2p')
const { tcp } = await import('@libp2p/tcp')
const { noise } = await import('@chainsafe/libp2p-noise')
const { yamux } = await import('@chainsafe/libp2p-yamux')
const { identify } = await import('@libp2p/identify')
const { ping } = await import('@libp2p/ping')
const { kadDHT, passthroughMapper } = await import('@libp2p/kad-dht')
const { multiaddr } = await import('@multiformats/multiaddr')
const { CID } = await import('multiformats/cid')

const [addr, cidText, timeoutText] = process.argv.slice(2)
const timeoutMs = Number(timeoutText ?? 20000)
const target = multiaddr(addr)
const targetPeer = addr.split('/p2p/').pop()
const cid = CID.parse(cidText)

const node = await createLibp2p({
  addresses: { listen: ['/ip4/127.0.0.1/tcp/0'] },
  transports: [tcp()],
  connectionEncrypters: [noise()],
  streamMuxers: [yamux()],
  services: {
    identify: identify(),
    ping: ping(),
    dht: kadDHT({
      protocol: '/ipfs/kad/1.0.0',
      clientMode: true,
      // loopback addresses are what this test uses; the default mapper drops them
      peerInfoMapper: passthroughMapper
    })
  }
})

const deadline = AbortSignal.timeout(timeoutMs)
let code = 2
try {
  await node.dial(target, { signal: deadline })
  const providers = new Set()
  // The routing table learns the daemon once identify reports kad support;
  // retry until then (or until the deadline).
  while (!deadline.aborted && !providers.has(targetPeer)) {
    try {
      for await (const p of node.contentRouting.findProviders(cid, { signal: deadline })) {
        providers.add(p.id.toString())
        if (providers.has(targetPeer)) break
      }
    } catch (err) {
      if (deadline.aborted) break
    }
    if (!providers.has(targetPeer)) await new Promise((resolve) => setTimeout(resolve, 200))
  }
  console.log(JSON.stringify({ providers: [...providers], self: node.peerId.toString() }))
  code = providers.has(targetPeer) ? 0 : 1
} catch (err) {
  console.log(JSON.stringify({ error: String(err?.message ?? err) }))
} finally {
  await node.stop()
}
process.exit(code)
