"""embquant.ray_serve on a local Ray cluster: two replicas behind Ray's proxy, every
answer equal to the codecs in-process, both replicas answering, and a replica killed
under load losing no request the client retries. Skipped without the `ray` extra."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch

pytest.importorskip("ray.serve")
import httpx  # noqa: E402
import ray  # noqa: E402
from ray import serve  # noqa: E402

from embquant import codecs  # noqa: E402
from embquant.ray_serve import REPLICA_HEADER, build_app  # noqa: E402
from embquant_client import Client, RetryPolicy  # noqa: E402
from tests.support.server import free_port  # noqa: E402

pytestmark = pytest.mark.slow


def _running() -> int:
    app = serve.status().applications.get("embquant")
    if app is None or "embquant" not in app.deployments:
        return 0
    return app.deployments["embquant"].replica_states.get("RUNNING", 0)


@pytest.fixture(scope="module")
def cluster():
    port = free_port()
    ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"EMBQUANT_DEVICE": "cpu", "HF_HUB_OFFLINE": "1"}})
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        serve.run(build_app({"replicas": "2", "device": "cpu", "max_wait_ms": "0"}), name="embquant",
                  route_prefix="/", blocking=False)
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 180
        while True:
            try:
                if _running() == 2 and httpx.get(url + "/readyz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, f"the Ray Serve app did not become ready: {serve.status()}"
            time.sleep(0.5)
        yield url
    finally:
        serve.shutdown()
        ray.shutdown()


def _in_process(codec_json, x):
    codec = codecs.codec_from_json(codec_json)
    codes, side = codecs.encode(codec, torch.from_numpy(x))
    return codec, codes, side


def test_build_app_rejects_unknown_and_bad_arguments():
    with pytest.raises(ValueError, match="unknown build_app arguments.*'replica'"):
        build_app({"replica": "2"})
    with pytest.raises(ValueError, match="max_batch_rows"):
        build_app({"max_batch_rows": "0"})


def test_two_replicas_answer_like_the_codecs_in_process(cluster):
    rng = np.random.default_rng(3)
    sample = rng.standard_normal((300, 64)).astype(np.float32)
    schemes = [("lloyd", {"bits": 2}), ("absmax", {"bits": 4}), ("binary", {})]
    with Client(cluster, max_retries=0) as c:
        fitted = [c.fit(sample, s, **p) for s, p in schemes]
    for (s, p), f in zip(schemes, fitted):
        assert f.codec == codecs.fit(s, p, torch.from_numpy(sample)).to_json()

    failures: list[BaseException] = []

    def one(i: int):
        try:
            x = (rng.standard_normal((int(1 + i % 37), 64)) * (1 + i % 5)).astype(np.float32)
            f = fitted[i % len(fitted)]
            with Client(cluster, max_retries=0) as c:
                enc = c.quantize(x, codec=f.codec)
                y = c.dequantize(enc)
            codec, codes, side = _in_process(f.codec, x)
            assert np.array_equal(enc.codes, codes.numpy())
            assert side is None or np.array_equal(enc.side, side.numpy())
            assert np.array_equal(y, codecs.decode(codec, codes, side).numpy())
        except BaseException as e:  # noqa: BLE001 - reported below
            failures.append(e)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(48)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not failures, failures[:3]
    # both replicas serve: the header Ray's proxy passes through from each replica, on
    # requests sent 16 at a time (Serve's router sends each to the less busy of two)
    assert _running() == 2, serve.status()

    def named(_):
        r = httpx.get(cluster + "/schemes", timeout=60)
        assert r.status_code == 200
        return r.headers[REPLICA_HEADER.decode()]

    with ThreadPoolExecutor(16) as pool:
        replicas = set(pool.map(named, range(96)))
    assert len(replicas) == 2, (replicas, serve.status())


def test_errors_keep_their_status_and_body(cluster):
    r = httpx.post(cluster + "/quantize", json={"scheme": "nope", "vectors": [[1.0, 2.0]]}, timeout=30)
    assert r.status_code == 400
    err = r.json()["error"]
    assert err["type"] == "unknown_scheme" and "known schemes" in err["message"]


def test_replica_killed_under_load_loses_no_request(cluster):
    """One of the two replicas is killed (SIGKILL-like, ray.kill) while 6 threads keep
    sending: every request still gets its right answer (the client retries what the
    dead replica had; the other replica answers), and Serve starts a replacement."""
    rng = np.random.default_rng(5)
    sample = rng.standard_normal((200, 32)).astype(np.float32)
    codec_json = codecs.fit("absmax", {"bits": 3}, torch.from_numpy(sample)).to_json()
    stop = threading.Event()
    done: list[int] = []
    failures: list[BaseException] = []

    def load(seed: int):
        r = np.random.default_rng(seed)
        with Client(cluster, timeout=60, retry=RetryPolicy(max_retries=6, backoff_base=0.2)) as c:
            while not stop.is_set():
                x = r.standard_normal((int(r.integers(1, 200)), 32)).astype(np.float32)
                try:
                    enc = c.quantize(x, codec=codec_json)
                    _, codes, side = _in_process(codec_json, x)
                    assert np.array_equal(enc.codes, codes.numpy()) and np.array_equal(enc.side, side.numpy())
                    done.append(len(x))
                except BaseException as e:  # noqa: BLE001 - reported below
                    failures.append(e)

    def replicas() -> list[tuple[str, str]]:
        return sorted((a["name"], a["namespace"]) for a in ray.util.list_named_actors(all_namespaces=True)
                      if a["name"].startswith("SERVE_REPLICA::"))

    before = replicas()
    assert len(before) == 2, before
    threads = [threading.Thread(target=load, args=(s,)) for s in range(6)]
    for t in threads:
        t.start()
    time.sleep(2.0)
    n_before_kill = len(done)
    ray.kill(ray.get_actor(before[0][0], namespace=before[0][1]), no_restart=True)
    time.sleep(4.0)
    stop.set()
    for t in threads:
        t.join(120)
    assert not failures, failures[:3]
    assert n_before_kill > 0 and len(done) > n_before_kill + 6  # requests kept being answered after the kill
    deadline = time.monotonic() + 120
    while not (len(replicas()) == 2 and before[0] not in replicas()):
        assert time.monotonic() < deadline, f"no replacement replica: {replicas()}"
        time.sleep(0.5)
