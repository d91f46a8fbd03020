// Shared by the kafkajs scripts that tests/test_kafkajs.py runs.
//
// Every script prints exactly one JSON object on stdout and exits 0, or prints the
// error on stderr (plus {"error": ...} on stdout) and exits non-zero. Each one arms a
// deadline of its own so it never outlives the test that started it.
import { Kafka, logLevel } from 'kafkajs'

export function client(broker, clientId) {
  return new Kafka({
    clientId,
    brokers: [broker],
    logLevel: logLevel.ERROR,
    connectionTimeout: 10000,
    requestTimeout: 30000,
  })
}

export function emit(obj) {
  process.stdout.write(JSON.stringify(obj) + '\n')
}

export const text = buf => (buf == null ? null : Buffer.from(buf).toString('utf8'))

// kafkajs hands headers over as {key: Buffer | Buffer[]} (an array when a key repeats).
export function headersOut(headers) {
  const out = {}
  for (const [k, v] of Object.entries(headers || {})) {
    out[k] = Array.isArray(v) ? v.map(text) : text(v)
  }
  return out
}

export async function readStdin() {
  const chunks = []
  for await (const chunk of process.stdin) chunks.push(chunk)
  return Buffer.concat(chunks).toString('utf8')
}

// Run main() under a deadline; report() supplies what was gathered if it runs out.
export function run(name, timeoutMs, main, report = () => ({})) {
  const timer = setTimeout(() => {
    console.error(`${name}: timed out after ${timeoutMs} ms`)
    emit({ error: `timed out after ${timeoutMs} ms`, ...report() })
    process.exit(3)
  }, timeoutMs)
  main()
    .then(result => {
      clearTimeout(timer)
      emit(result)
      process.exit(0)
    })
    .catch(err => {
      clearTimeout(timer)
      console.error(`${name}: ${err && err.stack ? err.stack : err}`)
      emit({ error: String(err), type: err && err.type, ...report() })
      process.exit(1)
    })
}

export function usage(text) {
  console.error(`usage: ${text}`)
  process.exit(64)
}
