#!/usr/bin/env python3
"""Bytes stored for a key-compacted topic with many updates per key.

Starts a release broker (embedded default, data under ./compacted-bench-data, cleaning every
2 s with no minimum age), produces the same 1000 keys x 50 updates of 1 KiB JSON-like records
(partly random, so they compress about 2x) to a ``cleanup.policy=compact`` topic and to a
``delete`` topic, waits for the cleaner, and prints ``strata topic describe`` of both: the
delete topic's stored bytes are what the compacted one stored before cleaning.

    python3 scripts/compacted_bench.py [--strata-bin target/release/strata]
"""
import argparse
import shutil

import json
import random
import subprocess
import time
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, NewTopic
ap = argparse.ArgumentParser()
ap.add_argument("--strata-bin", default="target/release/strata")
BIN = ap.parse_args().strata_bin
shutil.rmtree("compacted-bench-data", ignore_errors=True)
b=subprocess.Popen([BIN,"serve","--data-dir","compacted-bench-data","--kafka-addr","127.0.0.1:29092","--quic-addr","127.0.0.1:29093","--http-addr","127.0.0.1:29094","--compaction-interval-ms","2000","--compaction-min-age-ms","0"],stdout=open("compacted-bench-data.log","w"),stderr=subprocess.STDOUT)
time.sleep(1.5)
B="127.0.0.1:29092"
a=AdminClient({"bootstrap.servers":B})
for f in a.create_topics([NewTopic("keyed",1,config={"cleanup.policy":"compact"}),NewTopic("plain",1)]).values(): f.result()
p=Producer({"bootstrap.servers":B,"linger.ms":20,"acks":"all"})
KEYS,ROUNDS=1000,50
rnd=random.Random(1)
t=time.time()
for r in range(ROUNDS):
    for k in range(KEYS):
        v=json.dumps({"user":f"u{k}","round":r,"score":rnd.random(),"tags":[rnd.choice("abcdef") for _ in range(8)],"pad":rnd.getrandbits(3200).to_bytes(400,"big").hex()}).encode()[:1024]
        for topic in ("keyed","plain"):
            while True:
                try: p.produce(topic,v,key=f"key-{k}".encode()); break
                except BufferError: p.poll(0.1)
    p.flush()
p.produce("keyed",b"end",key=b"sentinel"); p.produce("plain",b"end",key=b"sentinel"); p.flush()
print(f"produced {KEYS*ROUNDS} records of 1 KiB per topic ({KEYS} keys x {ROUNDS} updates) in {time.time()-t:.1f}s")
def describe(topic):
    out=subprocess.run([BIN,"topic","describe",topic,"--addr","127.0.0.1:29093","--ca","compacted-bench-data/tls/ca.pem"],capture_output=True,text=True).stdout
    return out
time.sleep(8)
print(describe("keyed")); print(describe("plain"))
b.terminate(); b.wait()
shutil.rmtree("compacted-bench-data", ignore_errors=True)
