"""Pretrained weights: download from a loopback server, integrity check, cache, msrun ranks.

The server on 127.0.0.1 serves a generated checkpoint in the official layout (random weights
of res2next_dla60, the smallest zoo model) under a name whose hash prefix is its own sha256;
``R2N_WEIGHTS_URL`` points the hub at it.
"""
import dataclasses
import hashlib
import http.server
import os
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

import res2net_ms
from conftest import REPO
from res2net_ms import hub
from res2net_ms.ckpt import load_ckpt, save_ckpt
from res2net_ms.convert import export_torch
from res2net_ms.weights import CheckpointError, pretrained_file
from res2net_ms.models import MODELS, build_network

MODEL = "res2next_dla60"


@pytest.fixture(scope="module")
def official(tmp_path_factory):
    """``(name, bytes, state)``: a generated checkpoint named as torch.hub names files."""
    folder = tmp_path_factory.mktemp("official")
    net = build_network(MODELS[MODEL])
    ours = save_ckpt({p.name: p.asnumpy() for p in net.get_parameters()}, folder / "ours.ckpt")
    state = export_torch(ours, str(folder / "official.safetensors"), MODEL)
    data = (folder / "official.safetensors").read_bytes()
    name = f"res2next_dla60_4s-{hashlib.sha256(data).hexdigest()[:8]}.pth"
    return name, data, state


class _Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        server = self.server
        server.requests.append(self.path)
        if server.delay:
            time.sleep(server.delay)
        data = server.files.get(self.path.lstrip("/"))
        if data is None:
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if server.drop_half:
            self.wfile.write(data[:len(data) // 2])
            self.wfile.flush()
            self.close_connection = True
            return
        self.wfile.write(data)

    def log_message(self, *args):
        pass


@pytest.fixture
def server(monkeypatch):
    """A loopback HTTP server; ``R2N_WEIGHTS_URL`` points at it."""
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    httpd.files, httpd.requests, httpd.drop_half, httpd.delay = {}, [], False, 0.0
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    monkeypatch.setenv(hub.ENV_WEIGHTS_URL, f"http://127.0.0.1:{httpd.server_address[1]}/")
    yield httpd
    httpd.shutdown()
    httpd.server_close()


def _serve_as(monkeypatch, server, name, data):
    """The zoo's res2next_dla60 now names ``name`` as its official file, served by ``server``."""
    monkeypatch.setitem(MODELS, MODEL, dataclasses.replace(MODELS[MODEL], weights=name))
    server.files[name] = data


def test_download_checks_converts_and_caches(monkeypatch, server, official, tmp_path):
    name, data, state = official
    _serve_as(monkeypatch, server, name, data)
    cache = tmp_path / "cache"
    path = hub.pretrained_path(MODEL, cache_dir=str(cache), progress=False)
    assert path == str(cache / name.replace(".pth", ".ckpt"))
    assert os.listdir(cache) == [os.path.basename(path)]  # no .part, lock or .pth left
    weights = load_ckpt(path)
    assert np.array_equal(weights["base_layer.0.weight"].asnumpy(), state["base_layer.0.weight"])
    # the official DLA classifier is a 1x1 conv: converted to our Dense
    assert weights["fc.weight"].shape == (1000, 1024)
    assert server.requests == ["/" + name]

    assert hub.pretrained_path(MODEL, cache_dir=str(cache)) == path  # served from the cache
    net = res2net_ms.create_model(MODEL, pretrained=True, cache_dir=str(cache))
    params = {p.name: p.asnumpy() for p in net.get_parameters()}
    assert np.array_equal(params["level5.root.conv.weight"], state["level5.root.conv.weight"])
    assert len(server.requests) == 1


def test_env_var_chooses_the_cache_folder(monkeypatch, server, official, tmp_path):
    name, data, _ = official
    _serve_as(monkeypatch, server, name, data)
    monkeypatch.setenv(hub.ENV_CACHE_DIR, str(tmp_path / "env_cache"))
    path = pretrained_file(MODEL)  # what train.py / validate.py --pretrained True call
    assert path == str(tmp_path / "env_cache" / name.replace(".pth", ".ckpt"))


def test_wrong_hash_caches_nothing_and_names_both(monkeypatch, server, official, tmp_path):
    _, data, _ = official
    _serve_as(monkeypatch, server, "res2next_dla60_4s-0badc0de.pth", data)
    with pytest.raises(hub.WeightsError) as err:
        hub.pretrained_path(MODEL, cache_dir=str(tmp_path), progress=False)
    message = str(err.value)
    assert "0badc0de" in message and hashlib.sha256(data).hexdigest()[:8] in message
    assert "\n" not in message
    assert os.listdir(tmp_path) == []


def test_dropped_connection_leaves_nothing_and_says_what_to_do(monkeypatch, server, official,
                                                               tmp_path):
    name, data, _ = official
    _serve_as(monkeypatch, server, name, data)
    server.drop_half = True
    with pytest.raises(hub.WeightsError) as err:
        hub.pretrained_path(MODEL, cache_dir=str(tmp_path), progress=False)
    message = str(err.value)
    assert f"closed after {len(data) // 2} of {len(data)} bytes" in message
    assert f"put it at {tmp_path / name}" in message and "\n" not in message
    assert os.listdir(tmp_path) == []


def test_stalled_server_times_out(monkeypatch, server, official, tmp_path):
    name, data, _ = official
    _serve_as(monkeypatch, server, name, data)
    server.delay = 3.0
    start = time.monotonic()
    with pytest.raises(hub.WeightsError, match="timed out"):
        hub.pretrained_path(MODEL, cache_dir=str(tmp_path), timeout=0.5, progress=False)
    assert time.monotonic() - start < 3.0
    assert os.listdir(tmp_path) == []


def test_offline_then_the_file_put_by_hand(monkeypatch, official, tmp_path):
    name, data, state = official
    monkeypatch.setitem(MODELS, MODEL, dataclasses.replace(MODELS[MODEL], weights=name))
    monkeypatch.setenv(hub.ENV_WEIGHTS_URL, "http://127.0.0.1:9/")  # discard port: refused
    with pytest.raises(hub.WeightsError) as err:
        hub.pretrained_path(MODEL, cache_dir=str(tmp_path), progress=False)
    assert f"cannot download http://127.0.0.1:9/{name}" in str(err.value)
    assert f"put it at {tmp_path / name}" in str(err.value)
    (tmp_path / name).write_bytes(data)  # what the message says to do
    path = hub.pretrained_path(MODEL, cache_dir=str(tmp_path))
    assert np.array_equal(load_ckpt(path)["fc.bias"].asnumpy(), state["fc.bias"])


def test_file_put_by_hand_with_wrong_content_is_refused(monkeypatch, official, tmp_path):
    name, data, _ = official
    monkeypatch.setitem(MODELS, MODEL, dataclasses.replace(MODELS[MODEL], weights=name))
    (tmp_path / name).write_bytes(data[:-1] + b"x")
    with pytest.raises(hub.WeightsError, match="delete it and fetch it again"):
        hub.pretrained_path(MODEL, cache_dir=str(tmp_path))
    assert not (tmp_path / name.replace(".pth", ".ckpt")).exists()


@pytest.mark.parametrize("entry", ["empty", "truncated"])
def test_partial_cache_entry_is_never_used(monkeypatch, server, official, tmp_path, entry):
    name, data, state = official
    _serve_as(monkeypatch, server, name, data)
    good = hub.pretrained_path(MODEL, cache_dir=str(tmp_path / "good"), progress=False)
    target = tmp_path / "cache" / name.replace(".pth", ".ckpt")
    target.parent.mkdir()
    target.write_bytes(b"" if entry == "empty" else open(good, "rb").read()[:100_000])
    path = hub.pretrained_path(MODEL, cache_dir=str(tmp_path / "cache"), progress=False)
    assert len(server.requests) == 2  # downloaded again
    assert np.array_equal(load_ckpt(path)["fc.bias"].asnumpy(), state["fc.bias"])


def test_models_without_weights_say_so():
    with pytest.raises(hub.WeightsError, match="res2net152_26w_4s has no downloadable weights"):
        hub.pretrained_path("res2net152_26w_4s")
    with pytest.raises(CheckpointError, match="SharePoint"):
        pretrained_file("res2net152_v1b_26w_4s")


_RANK_CODE = """
import dataclasses, logging, sys
from res2net_ms import hub
from res2net_ms.models import MODELS
logging.basicConfig(level=logging.INFO)  # on stderr: "rank 1: waiting for rank 0 ..."
MODELS["{model}"] = dataclasses.replace(MODELS["{model}"], weights="{name}")
print(hub.pretrained_path("{model}", cache_dir=sys.argv[1], progress=False, wait_timeout=120))
"""


@pytest.mark.slow
def test_under_msrun_rank_0_downloads_while_the_others_wait(server, official, tmp_path):
    name, data, _ = official
    server.files[name] = data
    code = _RANK_CODE.format(model=MODEL, name=name)
    cache = str(tmp_path / "cache")

    def start(rank):
        """The rank's process; its output and log lines are collected as they come."""
        env = dict(os.environ, MS_ROLE="MS_WORKER", MS_WORKER_NUM="2", RANK_ID=str(rank))
        proc = subprocess.Popen([sys.executable, "-c", code, cache], cwd=REPO, env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        proc.out_lines, proc.err_lines = [], []
        proc.readers = [threading.Thread(target=lines.extend, args=(stream,), daemon=True)
                        for lines, stream in ((proc.out_lines, proc.stdout),
                                              (proc.err_lines, proc.stderr))]
        for reader in proc.readers:
            reader.start()
        return proc

    waiting = start(1)
    deadline = time.monotonic() + 300
    while not any("rank 1: waiting for rank 0" in line for line in waiting.err_lines):
        assert waiting.poll() is None, "".join(waiting.err_lines)[-3000:]
        assert time.monotonic() < deadline, "rank 1 never said it was waiting"
        time.sleep(0.05)
    assert waiting.poll() is None and server.requests == []  # rank 1 waits: never downloads
    downloading = start(0)
    for proc in (downloading, waiting):
        proc.wait(timeout=300)
        for reader in proc.readers:
            reader.join()
    outputs = [("".join(p.out_lines), "".join(p.err_lines)[-3000:]) for p in (downloading,
                                                                              waiting)]
    assert [p.returncode for p in (downloading, waiting)] == [0, 0], outputs
    paths = {out.strip().splitlines()[-1] for out, _ in outputs}
    assert paths == {os.path.join(cache, name.replace(".pth", ".ckpt"))}
    assert server.requests == ["/" + name]


@pytest.mark.slow
def test_detector_weights_are_downloaded_checked_and_cached(monkeypatch, server, tmp_path):
    """``create_detector(name, pretrained=True)`` goes the backbones' way: the published file
    (here a small Faster R-CNN, the quickest to build, served under a name carrying its own
    sha256 prefix) is downloaded once, checked, converted and cached; a wrong hash caches
    nothing."""
    from res2net_ms.convert.readers import save_safetensors
    from res2net_ms.det import DETECTORS, create_detector

    name, small = "faster_rcnn_r2_101_fpn", dict(layers=(1, 1, 1, 1))
    weights = {p.name: p.asnumpy() for p in
               create_detector(name, backbone_kwargs=small).get_parameters()}
    save_safetensors(weights, tmp_path / "published.safetensors")
    data = (tmp_path / "published.safetensors").read_bytes()
    for prefix, works in (("0badc0de", False), (hashlib.sha256(data).hexdigest()[:8], True)):
        published = f"faster_rcnn_r2_101_fpn_2x_coco-{prefix}.pth"
        monkeypatch.setitem(DETECTORS, name, dataclasses.replace(DETECTORS[name],
                                                                 weights=published))
        server.files[published] = data
        cache = tmp_path / prefix
        if not works:
            with pytest.raises(hub.WeightsError, match="0badc0de"):
                create_detector(name, pretrained=True, cache_dir=str(cache),
                                backbone_kwargs=small)
            assert not cache.exists() or os.listdir(cache) == []
            continue
        detector = create_detector(name, pretrained=True, cache_dir=str(cache),
                                   backbone_kwargs=small)
        for p in detector.get_parameters():
            np.testing.assert_array_equal(p.asnumpy(), weights[p.name], err_msg=p.name)
        assert os.listdir(cache) == [published.replace(".pth", ".ckpt")]
        create_detector(name, pretrained=True, cache_dir=str(cache), backbone_kwargs=small)
        assert server.requests.count("/" + published) == 1  # the second came from the cache
