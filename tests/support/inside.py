"""Clients run inside the cluster's network namespace (`nsenter --net=...`), standard library only.

inside.py dns NAME SERVER          print the A records SERVER (port 53, UDP) gives for NAME
inside.py traffic URL SECONDS [CLIENTS [RATE [BATCH]]]
                                   CLIENTS (default 1) threads POST texts to URL, each back to back, or
                                   all together at most RATE requests per second (0: no limit), for
                                   SECONDS (or until SIGTERM), then print {"ok": n, "failed": [...],
                                   "model_versions": [...]}; with BATCH, JSON batches of BATCH texts (for
                                   /predict_batch), else one text per request
inside.py labelled URL FILE        for each {"text", "label"} line of FILE: POST the text to URL/predict,
                                   then its label to URL/feedback; print {"feedback": n, "failed": [...],
                                   "prediction_ids": [...], "model_versions": [...]}
"""

from __future__ import annotations

import itertools
import json
import random
import signal
import socket
import struct
import sys
import threading
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


# One text of each class the model knows, sent in turn: the predicted class mix stays the training one,
# so traffic alone never makes the class drift alert fire.
TEXTS = (
    "The goalie stopped every shot in overtime of the playoff game.",
    "The dealer replaced the transmission and the brakes of my sedan.",
    "I ride my motorcycle with a helmet and leathers on the highway.",
    "The pitcher threw a no-hitter and the shortstop hit a home run.",
)


def traffic(url: str, seconds: float, clients: int = 1, rate: float = 0, batch: int = 0) -> dict:
    """Predictions from `clients` threads, each on a new connection per request (so a Service spreads
    them over its pods, new ones included); a failure is any error or non-200 answer."""
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    interval = clients / rate if rate else 0.0
    lock = threading.Lock()
    result = {"ok": 0, "failed": [], "model_versions": []}

    def client(first: int) -> None:
        for i in itertools.count(first):
            started = time.monotonic()
            if batch:
                texts = [TEXTS[(i + n) % len(TEXTS)] for n in range(batch)]
                data, headers = json.dumps({"texts": texts}).encode(), {"Content-Type": "application/json"}
            else:
                data, headers = TEXTS[i % len(TEXTS)].encode(), {}
            request = urllib.request.Request(url, data=data, headers=headers)
            try:
                with urllib.request.urlopen(request, timeout=10) as response:
                    body = json.load(response)
                with lock:
                    result["ok"] += 1
                    for answer in body if batch else [body]:
                        if answer["model_version"] not in result["model_versions"]:
                            result["model_versions"].append(answer["model_version"])
            except (OSError, urllib.error.URLError, ValueError) as exc:
                with lock:
                    result["failed"].append(f"{time.time():.3f} {exc}")
            if stop.wait(max(0.0, interval - (time.monotonic() - started))):
                return

    threads = [threading.Thread(target=client, args=(n,)) for n in range(clients)]
    for thread in threads:
        thread.start()
    stop.wait(seconds)
    stop.set()
    for thread in threads:
        thread.join()
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
        url, seconds, *options = args
        clients, rate, batch = [float(option) for option in options] + [1, 0, 0][len(options) :]
        traffic(url, float(seconds), int(clients), rate, int(batch))
    elif command == "labelled":
        labelled(*args)
    else:
        raise SystemExit(__doc__)


if __name__ == "__main__":
    main()
