"""Verifies webhook calls Herald made with the `standardwebhooks` package (PyPI), an
implementation of the Standard Webhooks spec nobody here wrote.

usage: verify_webhooks.py CALLS_JSON SECRET
CALLS_JSON is a list of {"id", "timestamp", "signature", "body"} as the receiver got them.
Prints how many verified; exits non-zero on the first that does not.
"""

import json
import sys

from standardwebhooks.webhooks import Webhook


def main() -> None:
    calls_path, secret = sys.argv[1], sys.argv[2]
    with open(calls_path, encoding="utf-8") as calls_file:
        calls = json.load(calls_file)
    webhook = Webhook(secret)
    for call in calls:
        headers = {
            "webhook-id": call["id"],
            "webhook-timestamp": call["timestamp"],
            "webhook-signature": call["signature"],
        }
        payload = webhook.verify(call["body"], headers)
        if payload.get("type") is None or "data" not in payload:
            raise SystemExit(f"verified, but not an envelope: {call['body']}")
    print(len(calls))


if __name__ == "__main__":
    main()
