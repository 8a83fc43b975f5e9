// Node 20 lacks Promise.withResolvers (Node 22 has it); js-libp2p 3 and Helia 7 use it.
// Imported first by every script here, so it runs before any library module.
if (typeof Promise.withResolvers !== 'function') {
  Promise.withResolvers = function withResolvers () {
    let resolve, reject
    const promise = new this((res, rej) => { resolve = res; reject = rej })
    return { promise, resolve, reject }
  }
}
