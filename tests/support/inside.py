"""Clients run inside the cluster's network namespace (`nsenter --net=...`), standard library only.

inside.py dns NAME SERVER          print the A records SERVER (port 53, UDP) gives for NAME
inside.py traffic URL SECONDS      POST a text to URL back to back for SECONDS (or until SIGTERM),
                                   then print {"ok": n, "failed": [...], "model_versions": [...]}
inside.py labelled URL FILE        for each {"text", "label"} line of FILE: POST the text to URL/predict,
                                   then its label to URL/feedback; print {"feedback": n, "failed": [...],
                                   "prediction_ids": [...], "model_versions": [...]}
"""

from __future__ import annotations

import json
import random
import signal
import socket
import struct
import sys
import time
import urllib.error
import urllib.request


def dns_a_records(name: str, server: str, timeout: float = 2.0) -> list[str]:
    """One DNS query (RFC 1035) for the A records of `name`."""
    query_id = random.randrange(1 << 16)
    question = b"".join(bytes([len(label)]) + label.encode() for label in name.split(".")) + b"\0"
    packet = struct.pack(">HHHHHH", query_id, 0x0100, 1, 0, 0, 0) + question + struct.pack(">HH", 1, 1)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(timeout)
        sock.sendto(packet, (server, 53))
        reply = sock.recv(4096)
    answer_id, flags, _, answers, _, _ = struct.unpack(">HHHHHH", reply[:12])
    if answer_id != query_id or flags & 0xF:  # the low four bits are the response code
        raise SystemExit(f"DNS error for {name}: response code {flags & 0xF}")
    offset = 12 + len(question) + 4
    records = []
    for _ in range(answers):
        if reply[offset] & 0xC0:  # a compressed name: two bytes
            offset += 2
        else:
            while reply[offset]:
                offset += reply[offset] + 1
            offset += 1
        kind, _, _, length = struct.unpack(">HHIH", reply[offset : offset + 10])
        offset += 10
        if kind == 1:
            records.append(socket.inet_ntoa(reply[offset : offset + length]))
        offset += length
    return records


def traffic(url: str, seconds: float) -> dict:
    """Predictions back to back; a failure is any error or non-200 answer."""
    stop = time.monotonic() + seconds
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    result = {"ok": 0, "failed": [], "model_versions": []}
    try:
        while time.monotonic() < stop:
            request = urllib.request.Request(url, data=b"The goalie stopped every shot in overtime.")
            try:
                with urllib.request.urlopen(request, timeout=10) as response:
                    body = json.load(response)
                result["ok"] += 1
                if body["model_version"] not in result["model_versions"]:
                    result["model_versions"].append(body["model_version"])
            except (OSError, urllib.error.URLError, ValueError) as exc:
                result["failed"].append(f"{time.time():.3f} {exc}")
    finally:
        print(json.dumps(result), flush=True)
    return result


def post_json(url: str, body: dict) -> dict:
    request = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.load(response)


def labelled(url: str, path: str) -> dict:
    """Predictions with their true labels as feedback: the data loop's input, as users would send it."""
    result = {"feedback": 0, "failed": [], "prediction_ids": [], "model_versions": []}
    with open(path, encoding="utf-8") as lines:
        for line in lines:
            item = json.loads(line)
            try:
                prediction = post_json(f"{url}/predict", {"text": item["text"]})
                post_json(
                    f"{url}/feedback", {"prediction_id": prediction["prediction_id"], "label": item["label"]}
                )
            except (OSError, urllib.error.URLError, ValueError) as exc:
                result["failed"].append(f"{time.time():.3f} {exc}")
                continue
            result["feedback"] += 1
            result["prediction_ids"].append(prediction["prediction_id"])
            if prediction["model_version"] not in result["model_versions"]:
                result["model_versions"].append(prediction["model_version"])
    print(json.dumps(result), flush=True)
    return result


def main() -> None:
    command, *args = sys.argv[1:]
    if command == "dns":
        print("\n".join(dns_a_records(*args)))
    elif command == "traffic":
        traffic(args[0], float(args[1]))
    elif command == "labelled":
        labelled(*args)
    else:
        raise SystemExit(__doc__)


if __name__ == "__main__":
    main()
