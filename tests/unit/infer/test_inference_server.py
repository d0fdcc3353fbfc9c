"""Model server: one model load for many cases, same probabilities as in-process, failures per case."""

from __future__ import annotations

import json
import os
import socket
import time

import numpy as np
import pytest

from tests.conftest import prepare_cases
from unet_pipeline import stages
from unet_pipeline.infer.server import ServerUnavailable, _request, infer_via_server, server_socket_path, stop_server
from unet_pipeline.infer.predictor import Predictor

LABELS = {1: "organ_a", 2: "organ_b"}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny trained model and three preprocessed cases: ``(model_dir, {case: preprocessed_dir})``."""
    root = tmp_path_factory.mktemp("served")
    cases = ("a", "b", "c")
    plan = prepare_cases(root, {c: (32, 28, 5 + i) for i, c in enumerate(cases)}, LABELS, plan_cases=cases)
    model_dir = root / "model"
    stages.train(["a", "b"], ["c"], preprocessed_root=root / "preprocessed", slices_root=root / "slices",
                 plan_path=plan, out_dir=model_dir, model={"base_channels": 4, "depth": 2},
                 training={"epochs": 1, "iterations_per_epoch": 2, "batch_size": 2, "seed": 0,
                           "checkpoint_minutes": 0},
                 augment={"elastic_p": 0.0}, loss={"name": "dice_ce"})
    yield model_dir, {c: root / "preprocessed" / c for c in cases}
    stop_server([model_dir], "cpu")


SERVED = {"device": "cpu", "model_server": True, "server_idle_seconds": 60}


def test_many_cases_share_one_model_load_and_match_in_process(trained, tmp_path):
    model_dir, pre = trained
    infos = [infer_via_server([model_dir], pre[c], tmp_path / f"{c}.npy", inference=SERVED, log_dir=tmp_path)
             for c in ("a", "b", "c")]
    servers = [i["server"] for i in infos]
    assert len({s["pid"] for s in servers}) == 1 and servers[0]["pid"] != os.getpid()
    assert [s["cases_served"] for s in servers] == [1, 2, 3]
    server_log = next(tmp_path.glob("model_server_*.log")).read_text(encoding="utf-8")
    assert server_log.count("loaded 1 model(s)") == 1  # the weights were read once for the three cases
    predictor = Predictor([model_dir], "cpu")
    for c in ("a", "b", "c"):
        served = np.load(tmp_path / f"{c}.npy")
        predictor.predict(pre[c], tmp_path / f"{c}_local.npy", {"device": "cpu"})
        local = np.load(tmp_path / f"{c}_local.npy")
        n_z, n_y, n_x = np.load(pre[c] / "image.npy").shape
        assert served.shape == local.shape == (n_z, 3, n_y, n_x)
        assert served.dtype == np.float16
        np.testing.assert_array_equal(served, local)


def test_a_failing_case_fails_alone_and_the_server_goes_on(trained, tmp_path):
    model_dir, pre = trained
    missing = tmp_path / "no_such_case"
    with pytest.raises(FileNotFoundError, match="no_such_case.*image.npy"):
        infer_via_server([model_dir], missing, tmp_path / "x.npy", inference=SERVED)
    assert not (tmp_path / "x.npy").exists() and not list(tmp_path.glob(".tmp-*"))
    info = infer_via_server([model_dir], pre["a"], tmp_path / "a.npy", inference=SERVED)
    assert (tmp_path / "a.npy").exists() and info["server"]["cases_served"] >= 1


def test_stale_socket_is_replaced_and_idle_server_exits(trained, tmp_path, monkeypatch):
    model_dir, pre = trained
    monkeypatch.setenv("SLURM_JOB_ID", "stale-socket-test")  # part of the key: a server of its own
    settings = {**SERVED, "server_idle_seconds": 1.5}
    sock = server_socket_path([model_dir], "cpu")
    stale = socket.socket(socket.AF_UNIX)  # a socket file nobody listens on, as a killed server leaves
    stale.bind(str(sock))
    stale.close()
    info = infer_via_server([model_dir], pre["b"], tmp_path / "b.npy", inference=settings)
    assert info["server"]["cases_served"] == 1
    deadline = time.monotonic() + 30
    while sock.exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not sock.exists(), "the idle server should exit and remove its socket"
    with pytest.raises(OSError):
        _request(sock, {"op": "ping"})


def test_stage_falls_back_to_in_process_when_no_server_can_start(trained, tmp_path, monkeypatch, caplog):
    model_dir, pre = trained
    import unet_pipeline.infer.server as server

    def refuse(*args, **kwargs):
        raise ServerUnavailable("no server for this test")

    monkeypatch.setattr(server, "_start_server", refuse)
    monkeypatch.setenv("SLURM_JOB_ID", "fallback-test")  # no server of this key runs
    settings = SERVED
    info = stages.infer([model_dir], pre["c"], tmp_path / "c.npy", inference=settings, out_info=tmp_path / "c.json")
    assert "server" not in info and (tmp_path / "c.npy").exists()
    assert "loading the models in this job instead" in caplog.text
    assert json.loads((tmp_path / "c.json").read_text(encoding="utf-8"))["slices"] == info["slices"]


def test_socket_folder_is_private(trained):
    model_dir, _ = trained
    sock = server_socket_path([model_dir])
    assert sock.parent.stat().st_mode & 0o077 == 0
    assert len(str(sock)) < 100  # Unix socket paths are limited to about 107 bytes


def test_server_exits_when_its_owner_process_ends(trained, tmp_path):
    """The workflow passes the pid of the Snakemake that ran the job: the server ends with it."""
    import subprocess
    import sys

    from unet_pipeline.infer.server import _alive

    model_dir, _ = trained
    owner = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    sock = tmp_path / "owned.sock"
    server = subprocess.Popen([sys.executable, "-m", "unet_pipeline.infer.server", "--socket", str(sock),
                               "--device", "cpu", "--idle-seconds", "300", "--owner-pid", str(owner.pid),
                               str(model_dir)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while not (sock.exists() and _alive(sock)) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert _alive(sock), "the server should be up"
        owner.kill()
        owner.wait()
        server.wait(timeout=20)  # well before its 300 s idle limit
        assert "has ended" in server.stderr.read()
        assert not sock.exists()
    finally:
        owner.kill()
        server.kill()
