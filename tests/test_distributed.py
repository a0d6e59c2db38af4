"""Data-parallel training under msrun with 2 CPU workers (MindSpore's CPU collectives): on
one node, and as two nodes of one worker each."""
import os
import signal
import socket
import socketserver
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from conftest import DEMO, LIGHT, REPO, ckpt_arrays, read_metrics, tiny_split
from res2net_ms.config import parse_args
from res2net_ms.engine import build_network, parse_run_args, validate
from res2net_ms.engine.setup import seed_everything

pytestmark = pytest.mark.distributed
CLUSTER_TIMEOUT = 120
# Node 1's address of node 0 in the two-node job (see LoopbackRelay).
NODE0_SEEN_FROM_NODE1 = "127.0.0.2"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def msrun_cmd(script, args, log_dir, port, workers=2, local_workers=2, node=None):
    """``msrun --worker_num=N --local_worker_num=L ... script args`` as the README shows it;
    ``node`` is ``(node_rank, master_addr)`` for one node of a multi-node job."""
    cmd = [os.path.join(os.path.dirname(sys.executable), "msrun"), f"--worker_num={workers}",
           f"--local_worker_num={local_workers}", f"--master_port={port}",
           f"--log_dir={log_dir}", "--join=True", f"--cluster_time_out={CLUSTER_TIMEOUT}"]
    if node is not None:
        cmd += [f"--node_rank={node[0]}", f"--master_addr={node[1]}"]
    return cmd + [os.path.join(REPO, script), *args]


def msrun_env():
    """msrun runs ``python`` from PATH: this environment's."""
    bindir = os.path.dirname(sys.executable)
    return dict(os.environ, PATH=bindir + os.pathsep + os.environ.get("PATH", ""))


def msrun(script, args, log_dir, workers=2, timeout=900, env=None):
    """One msrun job on this node (``env``: variables to add); returns (process, seconds)."""
    start = time.monotonic()
    proc = subprocess.run(msrun_cmd(script, args, log_dir, free_port(), workers, workers),
                          capture_output=True, text=True, env={**msrun_env(), **(env or {})},
                          cwd=REPO, timeout=timeout)
    return proc, time.monotonic() - start


class LoopbackRelay:
    """Forwards ``127.0.0.2:port`` to node 0's scheduler at ``127.0.0.1:port``.

    msrun starts a scheduler when the master address is one of the host's own (``ip addr``),
    so two nodes on one host would both start one and fight for the port. Through 127.0.0.2,
    which reaches this host without being one of its addresses, node 1 sees node 0 as a second
    machine sees the first: a master elsewhere, no scheduler of its own.
    """

    def __init__(self, port):
        class Pipe(socketserver.BaseRequestHandler):
            def handle(self):
                try:
                    upstream = socket.create_connection(("127.0.0.1", port), timeout=10)
                except OSError:  # the scheduler has gone: the job is ending
                    return
                upstream.settimeout(None)
                back = threading.Thread(target=_pump, args=(upstream, self.request),
                                        daemon=True)
                back.start()
                _pump(self.request, upstream)
                back.join()

        self.server = socketserver.ThreadingTCPServer((NODE0_SEEN_FROM_NODE1, port), Pipe)
        self.server.daemon_threads = True

    def __enter__(self):
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()


def _pump(source, target):
    try:
        while data := source.recv(1 << 16):
            target.sendall(data)
    except OSError:
        pass
    finally:
        for sock in (source, target):
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


def msrun_two_nodes(script, args, root, timeout=900):
    """The same job started twice, as on two machines: ``--worker_num=2
    --local_worker_num=1``, node ranks 0 and 1, node 0's address as the master. Returns the
    exit codes and the log folders; each launcher's own output is in ``root/node<rank>.out``."""
    port = free_port()
    log_dirs = [root / f"node{rank}_logs" for rank in (0, 1)]
    with LoopbackRelay(port):
        nodes = []
        for rank, master in enumerate(("127.0.0.1", NODE0_SEEN_FROM_NODE1)):
            with open(root / f"node{rank}.out", "w") as out:
                nodes.append(subprocess.Popen(
                    msrun_cmd(script, args, log_dirs[rank], port, workers=2, local_workers=1,
                              node=(rank, master)),
                    stdout=out, stderr=subprocess.STDOUT, env=msrun_env(), cwd=REPO,
                    start_new_session=True))
        try:
            for node in nodes:
                node.wait(timeout=timeout)
        finally:
            for node in nodes:  # only after a timeout: the launchers and their workers
                if node.poll() is None:
                    os.killpg(node.pid, signal.SIGKILL)
                    node.wait()
    return [node.returncode for node in nodes], log_dirs


def launcher_output(root, rank):
    with open(root / f"node{rank}.out", errors="replace") as f:
        return f.read()


def worker_log(log_dir, rank):
    with open(os.path.join(log_dir, f"worker_{rank}.log"), errors="replace") as f:
        return f.read()


@pytest.fixture(scope="module")
def two_node_run(digits_dir, tmp_path_factory):
    """One epoch of digits on two nodes of one worker each; returns (exit codes, root folder,
    save_dir, log folders)."""
    root = tmp_path_factory.mktemp("two_nodes")
    save_dir = root / "ckpt"
    codes, log_dirs = msrun_two_nodes(
        "train.py", ["--config", DEMO, "--distribute", "True", "--data_dir", digits_dir,
                     "--ckpt_save_dir", str(save_dir), *LIGHT, "--epoch_size", "1",
                     "--warmup_epochs", "0", "--log_interval", "4"], root)
    return codes, root, save_dir, log_dirs


def test_two_nodes_train_and_report_what_validate_reports(two_node_run, digits_dir):
    codes, root, save_dir, (node0, node1) = two_node_run
    assert codes == [0, 0], launcher_output(root, 0)[-3000:] + launcher_output(root, 1)[-3000:]
    # Node 0 ran the scheduler and rank 0, node 1 only rank 1, as on two machines.
    assert sorted(os.listdir(node0)) == ["scheduler.log", "worker_0.log"]
    assert os.listdir(node1) == ["worker_1.log"]
    assert sorted(os.listdir(save_dir)) == ["best.ckpt", "config.yaml", "last.ckpt",
                                            "metrics.jsonl", "res2net50_26w_4s-e0001.ckpt",
                                            "train.log"]
    rank0, rank1 = worker_log(node0, 0), worker_log(node1, 1)
    assert "2 rank(s)" in rank0 and "epoch 1/1" in rank0
    assert "Traceback" not in rank1
    (row,) = read_metrics(save_dir)
    # 1437 images over 2 ranks (719 each) at batch 32: 22 steps; validation sees 360 once.
    assert row["global_step"] == 22 and row["val_images"] == 360
    # A network that learned (chance is 10 %): 70.6 % after this epoch (seed 42), the same to
    # the last digit as on one node with 2 workers; 79.4 % and 63.6 % with seeds 1 and 2.
    assert row["val_top1"] > 55
    single = validate(parse_run_args(["--ckpt_path", str(save_dir / "best.ckpt"), "--data_dir",
                                      digits_dir, "--progress_bar", "off"],
                                     base_checkpoint="ckpt_path"))
    assert single["images"] == 360
    assert single["top1"] == row["val_top1"] and single["top5"] == row["val_top5"]


def test_distributed_validate_counts_uneven_shards_once(two_node_run, digits_dir, tmp_path):
    save_dir = two_node_run[2]
    data = tiny_split(digits_dir, tmp_path / "data", per_class=1, val_per_class=7)
    zeros = os.path.join(data, "val", "0")
    os.remove(os.path.join(zeros, sorted(os.listdir(zeros))[0]))  # 69 images: uneven shards
    ckpt = str(save_dir / "best.ckpt")
    common = ["--ckpt_path", ckpt, "--data_dir", data, "--batch_size", "16"]
    proc, _ = msrun("validate.py", [*common, "--distribute", "True"], tmp_path / "logs")
    assert proc.returncode == 0, worker_log(tmp_path / "logs", 0)[-3000:]
    line = [ln for ln in worker_log(tmp_path / "logs", 0).splitlines() if "top-1:" in ln][-1]
    assert "(69 images)" in line
    single = validate(parse_run_args(common, base_checkpoint="ckpt_path"))
    assert single["images"] == 69
    assert f"top-1: {single['top1']:.2f}%" in line and f"top-5: {single['top5']:.2f}%" in line


def one_step_args(data, save_dir):
    """train.py's arguments for one step on 16 images (the workers add their own)."""
    return ["--config", DEMO, "--data_dir", data, *LIGHT, "--epoch_size", "1",
            "--num_samples", "16", "--shuffle", "False", "--norm_eval", "True",
            "--scale", "1", "1", "--ratio", "1", "1", "--opt", "momentum", "--lr", "0.5",
            "--warmup_epochs", "0", "--weight_decay", "0", "--deterministic", "True",
            "--ckpt_save_dir", str(save_dir)]


def run_one_step_job(digits_dir, root, save_dir=None, log_dir=None):
    """One training step of 2 ranks x batch 8, then validation, under msrun, with the
    compile cache in ``root/cache``; returns what conftest's ``one_step_job`` fixture shares
    (test_compile_cache runs it again: ``save_dir`` and ``log_dir`` for that run)."""
    data = os.path.join(root, "data")
    if not os.path.isdir(data):
        tiny_split(digits_dir, data, per_class=2)  # 10 classes x 2 = 20
    save_dir = save_dir or os.path.join(root, "two")
    log_dir = log_dir or os.path.join(root, "logs")
    args = [*one_step_args(data, save_dir), "--distribute", "True", "--batch_size", "8"]
    proc, _ = msrun("train.py", args, log_dir,
                    env={"R2N_CACHE_DIR": os.path.join(root, "cache")})
    return {"returncode": proc.returncode, "output": proc.stdout[-3000:] + proc.stderr[-3000:],
            "data": data, "save_dir": save_dir, "log_dir": log_dir,
            "cache": os.path.join(root, "cache")}


def test_one_step_on_two_workers_equals_one_step_on_one(one_step_job, tmp_path):
    """2 ranks x batch 8 and 1 rank x batch 16 over the same 16 images give the same weights.

    BN is kept in inference mode (norm_eval): with batch statistics each rank would normalise
    by its own 8 images, which is a different computation from normalising by all 16. The
    crop covers the whole image, so no augmentation randomness differs between the runs.
    The msrun job is shared with test_compile_cache (hence its validation, which leaves the
    weights as they are); the single run skips it.
    """
    job = one_step_job
    assert job["returncode"] == 0, worker_log(job["log_dir"], 0)[-3000:]
    single = subprocess.run([sys.executable, os.path.join(REPO, "train.py"),
                             *one_step_args(job["data"], tmp_path / "one"), "--batch_size",
                             "16", "--val_while_train", "False"],
                            capture_output=True, text=True, cwd=REPO, timeout=600)
    assert single.returncode == 0, single.stderr[-3000:]
    two = ckpt_arrays(os.path.join(job["save_dir"], "last.ckpt"))
    one = ckpt_arrays(tmp_path / "one" / "last.ckpt")
    assert two["global_step"] == one["global_step"] == 1
    initial = weights_of_fresh_network()
    moved = 0
    for name, value in initial.items():
        np.testing.assert_allclose(two[name], one[name], rtol=0, atol=1e-5, err_msg=name)
        moved += not np.allclose(one[name], value)
    assert moved > 10, "the step did not change the weights"


def weights_of_fresh_network():
    """The initial weights both runs start from (same seed), for a did-it-move check."""
    args = parse_args(["--config", DEMO, *LIGHT])
    seed_everything(args.seed)
    net = build_network(args)
    return {p.name: p.asnumpy() for p in net.trainable_params()}


def test_a_failing_worker_fails_the_job(digits_dir, tmp_path):
    """A corrupt image read by one rank crashes it; msrun ends the job non-zero, no hang.
    The image is rank 0's first (no shuffle): it fails on its first batch, while rank 1
    goes on to compile, so msrun has a live rank to end. The scheduler then waits for the
    killed rank's heartbeat to time out: 10 s here (MS_NODE_TIMEOUT) instead of 30."""
    data = tiny_split(digits_dir, tmp_path / "data", per_class=8)
    victim = os.path.join(data, "train", "0")
    for name in sorted(os.listdir(victim))[:1]:
        with open(os.path.join(victim, name), "wb") as f:
            f.write(b"\x89PNG\r\n\x1a\n this is not an image")
    log_dir = tmp_path / "logs"
    proc, seconds = msrun("train.py", ["--config", DEMO, "--distribute", "True", "--data_dir",
                                       data, *LIGHT, "--epoch_size", "1", "--batch_size", "4",
                                       "--shuffle", "False", "--ckpt_save_dir",
                                       str(tmp_path / "ckpt")], log_dir,
                          env={"MS_NODE_TIMEOUT": "10"})
    assert proc.returncode != 0
    assert seconds < CLUSTER_TIMEOUT + 180
    logs = worker_log(log_dir, 0) + worker_log(log_dir, 1)
    assert "error" in logs.lower() and ("decode" in logs.lower() or "image" in logs.lower())
    assert not (tmp_path / "ckpt" / "last.ckpt").exists()


def test_a_mindcv_recipe_trains_verbatim(digits_dir, tmp_path):
    """mindcv's own res2net_50_gpu.yaml, unchanged (O2, mixup, sink mode, distribute), for
    one epoch: only the data, the size, the epoch count and the depth (one block a stage, as
    the other runs here: the full Res2Net-50 compiles in test_models) are overridden."""
    recipe = os.path.join(REPO, "configs", "mindcv", "res2net_50_gpu.yaml")
    data = tiny_split(digits_dir, tmp_path / "data", per_class=16, val_per_class=4)
    log_dir = tmp_path / "logs"
    proc = subprocess.run(
        msrun_cmd("train.py", ["--config", recipe, "--data_dir", data, "--num_classes",
                               "10", "--image_resize", "32", "--epoch_size", "1",
                               "--model_kwargs", "{layers: [1, 1, 1, 1]}"],
                  log_dir, free_port()),
        capture_output=True, text=True, env=msrun_env(), cwd=str(tmp_path), timeout=900)
    assert proc.returncode == 0, worker_log(log_dir, 0)[-3000:]
    log = worker_log(log_dir, 0)
    assert "dataset_sink_mode: MindSpore has no data sink on CPU" in log
    (row,) = read_metrics(tmp_path / "ckpt")       # the recipe's ckpt_save_dir: ./ckpt
    # 160 images over 2 ranks at the recipe's batch 32, the remainder dropped: 2 steps.
    assert row["global_step"] == 2 and row["val_images"] == 40
    assert np.isfinite(row["train_loss"])
