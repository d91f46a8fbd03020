// node admin.mjs <broker> <timeout-ms> <op> [args...]
//   create <topic> <partitions>   createTopics           -> {"created": bool}
//   list                          listTopics             -> {"topics": [...]}
//   offsets <topic>               fetchTopicOffsets      -> {"offsets": [{partition, offset, high, low}]}
//   group-offsets <group> <topic> fetchOffsets (a group) -> {"offsets": [{partition, offset, metadata}]}
import { client, run, usage } from './common.mjs'

const [broker, timeoutMs, op, ...args] = process.argv.slice(2)
if (!broker || !timeoutMs || !op) usage('admin.mjs <broker> <timeout-ms> <op> [args...]')

const admin = client(broker, 'strata-kafkajs-admin').admin()

async function main() {
  await admin.connect()
  try {
    switch (op) {
      case 'create': {
        const [topic, partitions] = args
        const created = await admin.createTopics({
          topics: [{ topic, numPartitions: Number(partitions), replicationFactor: 1 }],
          waitForLeaders: true,
          timeout: 20000,
        })
        return { created }
      }
      case 'list':
        return { topics: await admin.listTopics() }
      case 'offsets': {
        const offsets = await admin.fetchTopicOffsets(args[0])
        return {
          offsets: offsets
            .map(o => ({ partition: o.partition, offset: Number(o.offset),
                         high: Number(o.high), low: Number(o.low) }))
            .sort((a, b) => a.partition - b.partition),
        }
      }
      case 'group-offsets': {
        const [groupId, topic] = args
        const [result] = await admin.fetchOffsets({ groupId, topics: [topic] })
        return {
          topic: result.topic,
          offsets: result.partitions
            .map(p => ({ partition: p.partition, offset: Number(p.offset), metadata: p.metadata }))
            .sort((a, b) => a.partition - b.partition),
        }
      }
      default:
        usage(`unknown op ${op}`)
    }
  } finally {
    await admin.disconnect()
  }
}

run(`admin ${op}`, Number(timeoutMs), main)
