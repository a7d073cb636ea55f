"""Herald test client written against the third-party `websockets` library.

Usage: python_ws_client.py ws://HOST:PORT/ws
Prints one JSON line per stage: subscribed, received (3 publications), recovered.
"""
import asyncio
import json
import sys

import websockets


async def command(ws, id_, **fields):
    await ws.send(json.dumps({"id": id_, **fields}))
    while True:
        message = json.loads(await ws.recv())
        if message.get("id") == id_:
            return message


async def main(url):
    async with websockets.connect(url) as ws:
        reply = await command(ws, 1, op="subscribe", channel="py:room")
        print(json.dumps({"subscribed": reply["result"]}), flush=True)
        received = [json.loads(await ws.recv()) for _ in range(3)]
        print(json.dumps({"received": received}), flush=True)
    first = received[0]
    async with websockets.connect(url) as ws:
        since = {"epoch": first["epoch"], "offset": first["offset"]}
        reply = await command(ws, 1, op="subscribe", channel="py:room", since=since)
        missed = [json.loads(await ws.recv()) for _ in range(2)]
        print(json.dumps({"recovered": reply["result"]["recovered"], "missed": missed}), flush=True)


asyncio.run(asyncio.wait_for(main(sys.argv[1]), timeout=20))
