// node consume.mjs <broker> <timeout-ms> <topic> <group> <count>
//
// A consumer in group <group> (subscribe fromBeginning: true, autoCommit on, as kafkajs
// defaults) reads until <count> messages arrived, waits until its automatic commits cover
// every message it read, then disconnects (LeaveGroup).
// -> {"messages": [{partition, offset, key, value, headers}], "committed": {partition: offset},
//     "assignments": [{topic: [partitions]}], "memberId": ...}
import { client, headersOut, run, text, usage } from './common.mjs'

const [broker, timeoutMs, topic, groupId, countArg] = process.argv.slice(2)
if (!broker || !timeoutMs || !topic || !groupId || !countArg) {
  usage('consume.mjs <broker> <timeout-ms> <topic> <group> <count>')
}
const count = Number(countArg)

const messages = []
const committed = {}
const assignments = []
let memberId = null

const consumer = client(broker, 'strata-kafkajs-consumer').consumer({
  groupId,
  sessionTimeout: 10000,
  rebalanceTimeout: 30000,
  heartbeatInterval: 500,
  maxWaitTimeInMs: 100,
  allowAutoTopicCreation: false,
})
consumer.on(consumer.events.GROUP_JOIN, e => {
  memberId = e.payload.memberId
  assignments.push(e.payload.memberAssignment)
})
consumer.on(consumer.events.COMMIT_OFFSETS, e => {
  for (const t of e.payload.topics) {
    if (t.topic !== topic) continue
    for (const p of t.partitions) committed[p.partition] = Number(p.offset)
  }
})

function commitsCoverReads() {
  const next = {}
  for (const m of messages) next[m.partition] = Math.max(next[m.partition] ?? 0, m.offset + 1)
  return Object.entries(next).every(([p, o]) => (committed[p] ?? -1) >= o)
}

const until = (predicate, what) =>
  new Promise((resolve, reject) => {
    const crashed = e => reject(new Error(`consumer crashed while waiting for ${what}: ${e.payload.error}`))
    consumer.on(consumer.events.CRASH, crashed)
    const tick = () => (predicate() ? resolve() : setTimeout(tick, 20))
    tick()
  })

async function main() {
  await consumer.connect()
  await consumer.subscribe({ topics: [topic], fromBeginning: true })
  await consumer.run({
    eachMessage: async ({ partition, message }) => {
      messages.push({
        partition,
        offset: Number(message.offset),
        key: text(message.key),
        value: text(message.value),
        headers: headersOut(message.headers),
      })
    },
  })
  await until(() => messages.length >= count, `${count} messages`)
  await until(commitsCoverReads, 'the automatic commits to cover every message read')
  await consumer.disconnect()
  return { messages, committed, assignments, memberId }
}

run('consume', Number(timeoutMs), main, () => ({ messages, committed, assignments, memberId }))
