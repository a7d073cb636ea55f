"""permessage-deflate against a client nobody here wrote: Python's `websockets`, which offers
compression by default and compresses what it sends once it is agreed.

Usage: python_ws_compressed.py ws://HOST:PORT/ws COUNT
Prints one JSON line per stage: the agreed extension and the subscribe reply; the COUNT
publications received; then the close code after sending a message that inflates past 64 KiB.
"""
import asyncio
import json
import sys

import websockets


async def main(url, count):
    # The commands are long enough to be compressed by the client.
    padding = "x" * 600
    async with websockets.connect(url, max_size=None) as ws:
        await ws.send(json.dumps({"id": 1, "op": "subscribe", "channel": "py:deflate", "padding": padding}))
        reply = json.loads(await ws.recv())
        extensions = ws.response.headers.get("Sec-WebSocket-Extensions")
        print(json.dumps({"extensions": extensions, "reply": reply}), flush=True)
        received = [json.loads(await ws.recv()) for _ in range(count)]
        print(json.dumps({"received": received}), flush=True)
        # 1 MiB of one byte: a few KiB compressed, past the server's 64 KiB once inflated.
        await ws.send(" " * (1 << 20))
        try:
            while True:
                await ws.recv()
        except websockets.ConnectionClosed as closed:
            print(json.dumps({"closed": closed.rcvd.code if closed.rcvd else None}), flush=True)


asyncio.run(main(sys.argv[1], int(sys.argv[2])))
