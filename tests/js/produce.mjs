// node produce.mjs <broker> <timeout-ms> <topic>  (stdin: {"messages": [{key, value, headers}]})
//
// An idempotent producer (acks -1) with the Java-compatible default partitioner sends the
// messages one send() at a time, so each one's partition and offset is known.
// -> {"results": [{partition, offset, errorCode}]}, one per message, in order.
import { Partitioners } from 'kafkajs'
import { client, readStdin, run, usage } from './common.mjs'

const [broker, timeoutMs, topic] = process.argv.slice(2)
if (!broker || !timeoutMs || !topic) usage('produce.mjs <broker> <timeout-ms> <topic> < messages.json')

const results = []

async function main() {
  const { messages } = JSON.parse(await readStdin())
  const producer = client(broker, 'strata-kafkajs-producer').producer({
    idempotent: true,
    maxInFlightRequests: 1,
    allowAutoTopicCreation: false,
    createPartitioner: Partitioners.DefaultPartitioner,
  })
  await producer.connect()
  try {
    for (const m of messages) {
      const [meta] = await producer.send({
        topic,
        acks: -1,
        messages: [{ key: m.key, value: m.value, headers: m.headers }],
      })
      results.push({ partition: meta.partition, offset: Number(meta.baseOffset),
                     errorCode: meta.errorCode })
    }
  } finally {
    await producer.disconnect()
  }
  return { results }
}

run('produce', Number(timeoutMs), main, () => ({ results }))
