"""A complete tinyfleet device in plain Python: numpy and paho-mqtt, no tinyfleet import.

It is the sample device of docs/protocol.md (the document includes this file verbatim and a test
keeps the two equal) and it is run by the test suite against a secured Mosquitto, a real
`tinyfleet federate run` (Reptile, FedAvg, TinyMetaFed) and `tinyfleet devices conformance`.
It learns its own sine wave y = a sin(x + phase) with whatever multi-layer head the server sends
(ReLU hidden layers, linear output, mean squared error, SGD with batch size 1), as a firmware
engineer would write it in C: every byte it reads or writes is described in the document.

    tinyfleet devices enroll dev-1 --dir ./mq --fleet lab --json > dev-1.json
    python examples/minimal_device.py --credentials dev-1.json    # Ctrl-C stops it cleanly
"""

import argparse
import json
import math
import signal
import socket
import struct
import threading
import time
import uuid
import zlib
from collections import OrderedDict
from urllib.parse import urlsplit

import numpy as np
import paho.mqtt.client as mqtt

RAM_BYTES, FLASH_BYTES = 262144, 1048576  # declared in the TD: the coordinator samples devices by them
TASKS = ("task.train", "task.evaluate", "task.adapt", "task.deploy")
IMPLEMENTED = {  # the config keys this device acts on; a task that `required` another one is refused
    "task.train": {"server-round", "local-steps", "lr", "seed", "top-p", "local-layers", "reconstruct-steps",
                   "required"},
    "task.evaluate": {"server-round", "seed", "local-layers", "required"},
    "task.adapt": {"server-round", "shots", "steps", "lr", "required"},
}
CLIP = 10.0  # per-layer gradient-norm clip: batch-1 SGD on a sine wave can diverge without one


class Refused(Exception):
    """A task this device answers with an error result (`code` is a protocol error code)."""

    def __init__(self, code, reason):
        super().__init__(reason)
        self.code = code


# ------------------------------------------------------------------------------ frames (docs/protocol.md §5)
def encode_frame(header, tensors):
    """Frame bytes; `tensors` holds (name, array) dense or (name, (indices, values, shape)) sparse."""
    entries, data = [], b""
    for name, t in tensors:
        if isinstance(t, tuple):  # sparse: indices, zero padding to 4 bytes, float32 values
            idx, vals, shape = t
            index_dtype = "uint16" if math.prod(shape) <= 65536 else "uint32"
            raw = np.asarray(idx, "<u2" if index_dtype == "uint16" else "<u4").tobytes()
            raw += b"\0" * (-len(raw) % 4) + np.asarray(vals, "<f4").tobytes()
            entry = {"name": name, "dtype": "float32", "shape": list(shape), "encoding": "sparse",
                     "nnz": len(idx), "index_dtype": index_dtype}
        else:
            raw = t.astype(t.dtype.newbyteorder("<")).tobytes()
            entry = {"name": name, "dtype": t.dtype.name, "shape": list(t.shape)}
        entries.append({**entry, "offset": len(data), "nbytes": len(raw)})
        data += raw + b"\0" * (-len(raw) % 8)  # every tensor starts 8-byte aligned
    head = json.dumps({**header, "tensors": entries}).encode()
    return struct.pack("<I", len(head)) + head + data


def decode_frame(payload):
    """(header, [(name, array)]) of a task; tasks carry dense tensors only."""
    (n,) = struct.unpack_from("<I", payload)
    if n > 65536 or 4 + n > len(payload):
        raise ValueError(f"header length {n} does not fit a frame of {len(payload)} bytes")
    header = json.loads(payload[4:4 + n])
    if not isinstance(header, dict):
        raise ValueError("the header is not a JSON object")
    body, tensors = payload[4 + n:], []
    for t in header.get("tensors", []):
        dt, count = np.dtype(t["dtype"]).newbyteorder("<"), math.prod(t["shape"])
        if t.get("encoding", "dense") != "dense" or t["nbytes"] != count * dt.itemsize \
                or t["offset"] + t["nbytes"] > len(body):
            raise ValueError(f"tensor {t['name']!r}: bad encoding, size or offset")
        tensors.append((t["name"], np.frombuffer(body, dt, count, t["offset"]).reshape(t["shape"])))
    return header, tensors


# ------------------------------------------------------------------------------ the learner
def forward(ws, x):
    """Activations of every layer for one sample; ws = [w0, b0, w1, b1, ...], ReLU between layers."""
    acts = [x]
    for i in range(0, len(ws), 2):
        z = acts[-1] @ ws[i] + ws[i + 1]
        acts.append(np.maximum(z, 0.0) if i + 2 < len(ws) else z)
    return acts


def sgd_step(ws, x, y, lr, trainable):
    """One SGD step on one sample (mean squared error); returns the loss measured before the step."""
    acts = forward(ws, x)
    d = 2.0 * (acts[-1] - y) / y.size
    loss = float(np.mean((acts[-1] - y) ** 2))
    for i in reversed(range(0, len(ws), 2)):
        layer = i // 2
        g_w, g_b = np.outer(acts[layer], d), d
        scale = min(1.0, CLIP / (math.sqrt(float(np.sum(g_w ** 2) + np.sum(g_b ** 2))) + 1e-12))
        if layer:
            d = (ws[i] @ d) * (acts[layer] > 0)
        if layer in trainable:
            ws[i] -= lr * scale * g_w
            ws[i + 1] -= lr * scale * g_b
    return loss


def mse(ws, xs, ys):
    return float(np.mean([(forward(ws, x)[-1] - y) ** 2 for x, y in zip(xs, ys, strict=True)]))


# ------------------------------------------------------------------------------ the device
class Device:
    def __init__(self, device_id, fleet, seed):
        self.id, self.fleet = device_id, fleet
        self.root = f"tinyfleet/v1/{fleet}/{device_id}"
        rng = np.random.default_rng(seed)  # this device's own task: amplitude and phase
        a, phase = rng.uniform(0.5, 2.0), rng.uniform(0.0, math.pi)
        x = rng.uniform(-5.0, 5.0, (64, 1)).astype(np.float32)
        y = (a * np.sin(x + phase)).astype(np.float32)
        self.x_train, self.y_train, self.x_eval, self.y_eval = x[:51], y[:51], x[51:], y[51:]
        self.rng = rng
        self.head = None  # the last head this device trained or adapted
        self.personal = {}  # TinyMetaFed: layer index -> (w, b) that never leave the device
        self.replies = OrderedDict()  # task id -> reply bytes, for duplicates
        self.max_packet = None
        self.tasks_done = 0

    def presence(self, online, reason=None):
        doc = {"v": 1, "type": "presence", "device": self.id, "fleet": self.fleet, "online": online,
               "ts": round(time.time(), 3), "board": "python-example"}
        return json.dumps({**doc, "reason": reason} if reason else doc)

    def thing_description(self, href, secured):
        def action(title):
            return {"title": title, "forms": [{"href": href, "op": "invokeaction", "mqv:topic": self.root + "/task",
                                               "mqv:controlPacket": "publish", "mqv:qos": "1",
                                               "contentType": "application/octet-stream"}]}
        scheme = {"basic_sc": {"scheme": "basic", "in": "auto"}} if secured else {"nosec_sc": {"scheme": "nosec"}}
        return {"@context": ["https://www.w3.org/2022/wot/td/v1.1",
                             {"mqv": "https://www.w3.org/2019/wot/mqtt#", "tinyfleet": "https://w3id.org/tinyfleet/ns#"}],
                "id": f"urn:tinyfleet:device:{self.id}", "title": self.id,
                "securityDefinitions": scheme, "security": list(scheme),
                "tinyfleet:fleet": self.fleet, "tinyfleet:useCase": "sine", "tinyfleet:protocolVersion": 1,
                "tinyfleet:board": {"tinyfleet:name": "python-example", "tinyfleet:ramBytes": RAM_BYTES,
                                    "tinyfleet:flashBytes": FLASH_BYTES},
                "properties": {"presence": {"type": "object", "readOnly": True, "observable": True, "forms": [
                    {"href": href, "op": ["readproperty", "observeproperty"], "mqv:filter": self.root + "/presence",
                     "mqv:controlPacket": "subscribe", "mqv:qos": "1"}]}},
                "actions": {name: action(name.title()) for name in ("train", "evaluate", "adapt")},
                "events": {"result": {"data": {"type": "object"}, "forms": [
                    {"href": href, "op": "subscribeevent", "mqv:filter": self.root + "/result",
                     "mqv:controlPacket": "subscribe", "mqv:qos": "1", "contentType": "application/octet-stream"}]}}}

    # -- one reply per task ----------------------------------------------------------------------
    def handle(self, payload):
        """The reply to one task message (cached: a repeated task id gets the same reply again)."""
        try:
            header, tensors = decode_frame(payload)
        except (ValueError, KeyError, TypeError, struct.error) as exc:
            return self.result(None, error=("malformed", f"not a frame: {exc}"))
        task_id = header.get("id") if isinstance(header.get("id"), str) else None
        if task_id in self.replies:
            return self.replies[task_id]
        handlers = {"task.train": self.train, "task.evaluate": self.evaluate, "task.adapt": self.adapt}
        try:
            if header.get("v") != 1:
                raise Refused("bad-version", f"protocol version {header.get('v')!r}; this device speaks 1")
            if header.get("type") not in handlers:
                raise Refused("unknown-type", f"this device does not implement {header.get('type')!r}")
            missing = sorted(set((header.get("config") or {}).get("required", [])) - IMPLEMENTED[header["type"]])
            if missing:  # e.g. FedProx's proximal-mu: refuse rather than silently train something else
                raise Refused("unsupported-config", f"this device does not implement {', '.join(missing)}")
            metrics, out, extra = handlers[header["type"]](header.get("config") or {}, tensors)
            reply = self.result(header, metrics=metrics, tensors=out, **extra)
            self.tasks_done += 1
        except Refused as exc:
            reply = self.result(header, error=(exc.code, str(exc)))
        except (KeyError, TypeError, ValueError) as exc:
            reply = self.result(header, error=("bad-config", f"{type(exc).__name__}: {exc}"))
        if self.max_packet is not None and len(reply) > self.max_packet:
            reply = self.result(header, error=("too-large", f"reply of {len(reply)} B > {self.max_packet} B"))
        if task_id is not None:
            self.replies[task_id] = reply
            while len(self.replies) > 256:
                self.replies.popitem(last=False)
        return reply

    def result(self, task, *, metrics=None, tensors=(), error=None, **extra):
        task = task or {}
        header = {"v": 1, "type": "result", "id": uuid.uuid4().hex,
                  "reply-to": task.get("id") if isinstance(task.get("id"), str) else None, "device": self.id,
                  "task": task.get("type") if task.get("type") in TASKS else None,
                  "run": task.get("run"), "round": task.get("round"),  # copied: the server routes by them
                  "ts": round(time.time(), 3), "ok": error is None, "metrics": metrics or {}, **extra}
        if error is not None:
            header["error"] = {"code": error[0], "reason": error[1][:500]}
        return encode_frame(header, tensors)

    # -- task types ------------------------------------------------------------------------------
    def weights(self, tensors, required=True):
        """The sent head as float32 copies, checked: w0, b0, w1, b1, ... of one MLP from 1 input to 1 output."""
        if not tensors and not required:
            return None
        ws = [np.array(t, np.float32) for _, t in tensors]
        names = [n for n, _ in tensors]
        if not ws or len(ws) % 2 or names != [f"{'wb'[i % 2]}{i // 2}" for i in range(len(ws))]:
            raise Refused("bad-shape", f"expected head tensors w0, b0, w1, b1, ...; got {names}")
        fan = 1
        for w, b in zip(ws[0::2], ws[1::2], strict=True):
            if w.ndim != 2 or w.shape[0] != fan or b.shape != (w.shape[1],):
                raise Refused("bad-shape", f"layer shapes {[list(w.shape) for w in ws]} are not one MLP")
            fan = w.shape[1]
        if fan != 1:
            raise Refused("bad-shape", f"the head has {fan} outputs; this sine device has 1")
        if not all(np.all(np.isfinite(w)) for w in ws):
            raise Refused("not-finite", "the sent weights contain NaN or infinity")
        return ws

    def with_personal(self, ws, local):
        for layer in local:
            if layer in self.personal:
                ws[2 * layer], ws[2 * layer + 1] = (w.copy() for w in self.personal[layer])
        return ws

    def train(self, cfg, tensors):
        steps, lr = int(cfg["local-steps"]), float(cfg["lr"])
        theta = self.weights(tensors)
        n_layers = len(theta) // 2
        local = sorted(set(cfg.get("local-layers", [])))
        if any(not 0 <= layer < n_layers for layer in local) or len(local) == n_layers:
            raise Refused("bad-config", f"local-layers {local} must be a proper subset of 0..{n_layers - 1}")
        shared = [layer for layer in range(n_layers) if layer not in local]
        rng = self.rng
        if "seed" in cfg and "server-round" in cfg:  # the sample order of a reproducible run
            rng = np.random.default_rng([cfg["seed"] & 0xFFFFFFFF, zlib.crc32(self.id.encode()), cfg["server-round"]])
        ws = self.with_personal([w.copy() for w in theta], local)
        n = len(self.x_train)
        t0 = time.perf_counter()
        for i in rng.integers(0, n, int(cfg.get("reconstruct-steps", 0)) if local else 0):
            sgd_step(ws, self.x_train[i], self.y_train[i], lr, set(local))
        order = np.concatenate([rng.permutation(n) for _ in range(-(-steps // n))])[:steps]
        losses = [sgd_step(ws, self.x_train[i], self.y_train[i], lr, set(shared)) for i in order]
        for layer in local:
            self.personal[layer] = (ws[2 * layer].copy(), ws[2 * layer + 1].copy())
        self.head = ws
        metrics = {"num-examples": steps, "train-loss": float(np.mean(losses)),
                   "train-loss-last": float(np.mean(losses[-min(n, steps):])),
                   "train-seconds": time.perf_counter() - t0}
        send = [(f"{'wb'[i % 2]}{i // 2}", i) for i in range(len(ws)) if i // 2 in shared]  # local layers stay
        if "top-p" not in cfg:
            return metrics, [(name, ws[i]) for name, i in send], {"encoding": "weights", "local-layers": local}
        out = []
        for name, i in send:  # the ceil(p * size) largest changes, ties to the lower index
            delta = (ws[i] - theta[i]).reshape(-1)
            k = min(delta.size, max(1, math.ceil(round(float(cfg["top-p"]) * delta.size, 6))))
            idx = np.sort(np.argsort(-np.abs(delta), kind="stable")[:k])
            out.append((name, (idx, delta[idx], ws[i].shape)))
        metrics["top-p"] = float(cfg["top-p"])
        return metrics, out, {"encoding": "delta", "local-layers": local}

    def evaluate(self, cfg, tensors):
        ws = self.weights(tensors, required=False) or self.head
        if ws is None:
            raise Refused("no-model", "no head was sent and none was trained yet")
        ws = self.with_personal([w.copy() for w in ws], cfg.get("local-layers", []))
        loss = mse(ws, self.x_eval, self.y_eval)
        return {"num-examples": len(self.x_eval), "loss": loss, "mse": loss}, [], {}

    def adapt(self, cfg, tensors):
        shots, steps, lr = int(cfg["shots"]), int(cfg["steps"]), float(cfg.get("lr", 0.01))
        if shots > len(self.x_train):
            raise Refused("bad-config", f"{shots} shots asked, this device has {len(self.x_train)} samples")
        ws = self.weights(tensors, required=False) or self.head
        if ws is None:
            raise Refused("no-model", "no head was sent and none was trained yet")
        ws = [w.copy() for w in ws]
        xs, ys = self.x_train[:shots], self.y_train[:shots]
        before = mse(ws, xs, ys)
        for s in range(steps):
            sgd_step(ws, xs[s % shots], ys[s % shots], lr, set(range(len(ws) // 2)))
        self.head = ws
        held = mse(ws, self.x_eval, self.y_eval)
        metrics = {"num-examples": shots, "shots": shots, "loss-before": before, "loss-after": mse(ws, xs, ys),
                   "loss": held, "mse": held}
        return metrics, [(f"{'wb'[i % 2]}{i // 2}", w) for i, w in enumerate(ws)], {"encoding": "weights"}


# ------------------------------------------------------------------------------ MQTT
def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--credentials", help="the JSON `tinyfleet devices enroll --json` printed")
    ap.add_argument("--broker", help="mqtt://host:port or mqtts://host:port (default: the credentials' broker)")
    ap.add_argument("--fleet", help="fleet name (default: the credentials' fleet, else 'default')")
    ap.add_argument("--id", help="device id = MQTT user name (default: the credentials' username)")
    ap.add_argument("--seed", type=int, default=0, help="selects this device's sine wave")
    args = ap.parse_args()
    cred = {}
    if args.credentials:
        with open(args.credentials) as f:
            cred = json.load(f)
    device_id = args.id or cred["username"]
    dev = Device(device_id, args.fleet or cred.get("fleet") or "default", args.seed)
    url = urlsplit(args.broker or cred["broker"])
    tls = url.scheme == "mqtts"

    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=device_id, protocol=mqtt.MQTTv5)
    if cred.get("password"):
        c.username_pw_set(cred["username"], cred["password"])
    if tls:
        c.tls_set(ca_certs=cred.get("ca"), certfile=cred.get("cert"), keyfile=cred.get("key"))
    c.will_set(dev.root + "/presence", dev.presence(False, "connection lost"), qos=1, retain=True)
    c.reconnect_delay_set(1, 30)
    href = f"{url.scheme}://{url.hostname}:{url.port or (8883 if tls else 1883)}"

    def on_connect(client, userdata, flags, reason, props):
        if reason.is_failure:
            print(f"{device_id}: the broker refused the connection: {reason}", flush=True)
            return
        client.socket().setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        dev.max_packet = getattr(props, "MaximumPacketSize", None)
        client.subscribe(dev.root + "/task", qos=1)
        client.publish(dev.root + "/td", json.dumps(dev.thing_description(href, bool(cred.get("password")))),
                       qos=1, retain=True)
        client.publish(dev.root + "/presence", dev.presence(True), qos=1, retain=True)
        print(f"{device_id} online at {href} (fleet {dev.fleet})", flush=True)

    c.on_connect = on_connect
    c.on_message = lambda client, userdata, msg: client.publish(dev.root + "/result", dev.handle(msg.payload), qos=1)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    c.connect_async(url.hostname, url.port or (8883 if tls else 1883), keepalive=60)
    c.loop_start()
    while not stop.wait(10.0):  # telemetry every 10 s
        c.publish(dev.root + "/telemetry", json.dumps({"v": 1, "type": "telemetry", "device": device_id,
                                                       "ts": round(time.time(), 3), "tasks-done": dev.tasks_done}))
    if c.is_connected():  # a clean DISCONNECT does not fire the Will: say offline first
        c.publish(dev.root + "/presence", dev.presence(False, "shutdown"), qos=1, retain=True).wait_for_publish(5)
    c.disconnect()
    c.loop_stop()


if __name__ == "__main__":
    main()
