// Runs PRODUCERS producers of the official RocketMQ 5 Node.js client
// (rocketmq-client-nodejs 1.0.8, installed by scripts/compat/setup-node.sh; run with
// NODE_PATH set to the node_modules it prints), each with one send in flight, for
// DURATION_S seconds against ACCESS_POINT, in the client's default configuration (only
// `endpoints` and the topic to prefetch are set), and prints one JSON line per send result:
//
//   {"producer":P,"seq":S,"ok":true,"message_id":"..","start_ms":..,"end_ms":..}
//   {"producer":P,"seq":S,"ok":false,"error":"..","start_ms":..,"end_ms":..}
//
// Usage: node node_producer.js ACCESS_POINT TOPIC PRODUCERS DURATION_S
// Body of a message is "p<P>-s<S>". Producers stop at DURATION_S or when standard input
// closes, whichever comes first; exits by itself at most 30 s after DURATION_S.
'use strict';

const { Producer } = require('rocketmq-client-nodejs');

let stopped = false;
process.stdin.on('data', () => {});
process.stdin.on('end', () => { stopped = true; });
process.stdin.on('error', () => { stopped = true; });

function emit(obj) {
  process.stdout.write(JSON.stringify(obj) + '\n');
}

function errorText(e) {
  if (!e) return 'unknown error';
  const name = e.name || (e.constructor && e.constructor.name) || 'Error';
  return `${name}: ${e.message || String(e)}`;
}

async function runProducer(p, accessPoint, topic, until) {
  const producer = new Producer({ endpoints: accessPoint, topic });
  try {
    await producer.startup();
  } catch (e) {
    emit({ producer: p, event: 'start_failed', error: errorText(e) });
    return;
  }
  emit({ producer: p, event: 'started', at_ms: Date.now() });
  let seq = 0;
  while (Date.now() < until && !stopped) {
    const startMs = Date.now();
    try {
      const receipt = await producer.send({
        topic,
        tag: 'failover',
        body: Buffer.from(`p${p}-s${seq}`),
      });
      emit({ producer: p, seq, ok: true, message_id: receipt.messageId, start_ms: startMs, end_ms: Date.now() });
    } catch (e) {
      emit({ producer: p, seq, ok: false, error: errorText(e), start_ms: startMs, end_ms: Date.now() });
    }
    seq += 1;
  }
  // Shutdown may wait on a dead endpoint; do not wait for it for long.
  await Promise.race([producer.shutdown().catch(() => {}), new Promise(r => setTimeout(r, 5000))]);
  emit({ producer: p, event: 'stopped', at_ms: Date.now(), sends: seq });
}

async function main() {
  const [accessPoint, topic, producers, duration] = process.argv.slice(2);
  if (!duration) {
    process.stderr.write('usage: node node_producer.js ACCESS_POINT TOPIC PRODUCERS DURATION_S\n');
    process.exit(2);
  }
  const seconds = Number(duration);
  const until = Date.now() + seconds * 1000;
  setTimeout(() => {
    process.stderr.write('node_producer: hard deadline reached, exiting\n');
    process.exit(3);
  }, (seconds + 30) * 1000).unref();
  const runs = [];
  for (let p = 0; p < Number(producers); p++) {
    runs.push(runProducer(p, accessPoint, topic, until));
  }
  await Promise.all(runs);
  process.stdin.destroy();
  process.exit(0);
}

process.on('unhandledRejection', e => {
  process.stderr.write(`node_producer: unhandled rejection: ${errorText(e)}\n`);
});

main();
