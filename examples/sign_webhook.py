"""Send a signed Standard Webhooks POST: python sign_webhook.py URL BODY (secret in BLOG_HOOK_SECRET)."""

import base64
import hashlib
import hmac
import os
import sys
import time
import urllib.request
import uuid


def sign(secret: str, msg_id: str, ts: int, body: bytes) -> str:
    """v1 signature: base64 HMAC-SHA256 of "id.timestamp.body" with the whsec_ key."""
    key = base64.b64decode(secret.removeprefix("whsec_"))
    mac = hmac.new(key, f"{msg_id}.{ts}.".encode() + body, hashlib.sha256).digest()
    return "v1," + base64.b64encode(mac).decode()


def main() -> None:
    url, text = sys.argv[1], sys.argv[2]
    body, msg_id, ts = text.encode(), f"msg_{uuid.uuid4().hex}", int(time.time())
    headers = {
        "webhook-id": msg_id,
        "webhook-timestamp": str(ts),
        "webhook-signature": sign(os.environ["BLOG_HOOK_SECRET"], msg_id, ts, body),
    }
    req = urllib.request.Request(url, data=body, method="POST", headers=headers)
    with urllib.request.urlopen(req) as resp:
        print(resp.status, resp.read().decode())


if __name__ == "__main__":
    main()
