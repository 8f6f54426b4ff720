"""Checks webhook deliveries with the Standard Webhooks project's reference verifier
(PyPI `standardwebhooks`), as a tenant's receiver would.

Reads JSON lines on stdin, one delivery each: {"secret", "id", "timestamp", "signature",
"body"} (body as text, exactly as received). For each it must verify as sent, and be
rejected with the body changed by one byte and with the timestamp moved by one second.
Prints {"verified": n, "rejected_tampered": m} and exits non-zero on any surprise.
"""

import json
import sys

from standardwebhooks.webhooks import Webhook, WebhookVerificationError


def rejected(hook, body, headers):
    try:
        hook.verify(body, headers)
    except WebhookVerificationError:
        return True
    return False


def main():
    verified = rejected_tampered = 0
    failures = []
    for line in sys.stdin:
        if not line.strip():
            continue
        d = json.loads(line)
        hook = Webhook(d["secret"])
        headers = {
            "webhook-id": d["id"],
            "webhook-timestamp": str(d["timestamp"]),
            "webhook-signature": d["signature"],
        }
        body = d["body"].encode()
        try:
            hook.verify(body, headers)
            verified += 1
        except WebhookVerificationError as e:
            failures.append(f"{d['id']}: rejected as sent: {e}")
            continue
        tampered_body = body[:-1] + (b" " if body[-1:] != b" " else b"\n")
        later = dict(headers, **{"webhook-timestamp": str(int(d["timestamp"]) + 1)})
        for what, b, h in (("body", tampered_body, headers), ("timestamp", body, later)):
            if rejected(hook, b, h):
                rejected_tampered += 1
            else:
                failures.append(f"{d['id']}: accepted with a tampered {what}")
    print(json.dumps({"verified": verified, "rejected_tampered": rejected_tampered}))
    for f in failures:
        print(f, file=sys.stderr)
    sys.exit(1 if failures or verified == 0 else 0)


main()
