"""Nobody let in: the app answers on this machine only unless told otherwise, starts without any prompt,
and reads only the folders it is allowed to."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time

import pytest

from app import guard
from conftest import ROOT
from proxyfda import cli
from proxyfda.config import DriftConfig, FinetuneConfig
from proxyfda.errors import ProxyFDAError
from proxyfda.paths import confine


def test_confine_follows_dots_and_symlinks_before_judging(tmp_path):
    inside, outside = tmp_path / "data", tmp_path / "elsewhere"
    inside.mkdir(), outside.mkdir()
    (inside / "cats").mkdir()
    (inside / "escape").symlink_to(outside)
    assert confine(inside / "cats", [inside]) == (inside / "cats").resolve()
    for sneaky in (inside / ".." / "elsewhere", inside / "escape", outside, "/etc"):
        with pytest.raises(ProxyFDAError, match="outside the folders this app may read") as err:
            confine(sneaky, [inside])
        assert str(inside) in str(err.value) and "--allow" in str(err.value)


def test_every_path_a_request_names_is_confined(tmp_path, monkeypatch):
    monkeypatch.setenv("PROXYFDA_DATA", str(tmp_path / "data"))
    monkeypatch.setenv("PROXYFDA_RUNS", str(tmp_path / "runs"))
    monkeypatch.delenv("PROXYFDA_ALLOW", raising=False)
    ok = DriftConfig(data=f"folder:{tmp_path}/data/pets", pretrained="open_clip:RN50:openai",
                     finetuned=f"run:{tmp_path}/runs/a", compare="default-finetuned")
    guard.check_drift_config(ok)  # hub tags and the default name no server path
    for field, spec in (("data", "folder:/etc"), ("pretrained", "efficientnet-lite0:/etc/passwd"),
                        ("finetuned", f"run:{tmp_path}"), ("compare", "open_clip:RN50:/root/w.pt"),
                        ("compare", "safe:/var/result.pt")):
        with pytest.raises(ProxyFDAError, match="outside the folders"):
            guard.check_drift_config(DriftConfig(**{**ok.to_dict(), field: spec}))
    with pytest.raises(ProxyFDAError, match="outside the folders"):
        guard.check_finetune_config(FinetuneConfig(eval_data="folder:/etc"))
    monkeypatch.setenv("PROXYFDA_ALLOW", str(tmp_path))  # what `proxyfda app --allow DIR` sets
    guard.check_drift_config(DriftConfig(**{**ok.to_dict(), "finetuned": f"run:{tmp_path}"}))


def test_a_folder_whose_links_lead_outside_is_refused(tmp_path, monkeypatch):
    import numpy as np
    from PIL import Image

    from proxyfda.data import load_images

    monkeypatch.setenv("PROXYFDA_DATA", str(tmp_path / "data"))
    monkeypatch.delenv("PROXYFDA_ALLOW", raising=False)
    for folder in (tmp_path / "data" / "pets" / "cats", tmp_path / "secret"):
        folder.mkdir(parents=True)
        Image.fromarray(np.zeros((8, 8, 3), dtype=np.uint8)).save(folder / "a.png")
    guard.check_images(load_images(f"folder:{tmp_path}/data/pets"))
    (tmp_path / "data" / "pets" / "dogs").symlink_to(tmp_path / "secret")
    with pytest.raises(ProxyFDAError, match="outside the folders"):
        guard.check_images(load_images(f"folder:{tmp_path}/data/pets"))
    guard.check_images(load_images("digits:test"))  # bundled sets live in the installed packages


def test_a_request_for_too_many_images_is_refused():
    guard.check_count(guard.MAX_IMAGES)
    with pytest.raises(ProxyFDAError, match="more than this app embeds"):
        guard.check_drift_config(DriftConfig(n=guard.MAX_IMAGES + 1))


def _launched(monkeypatch, argv: list[str]) -> list[str]:
    launched = []
    monkeypatch.setattr(cli.os, "execv", lambda path, command: launched.append(command))
    assert cli.main(["app", "--headless", *argv]) == 0
    return launched[0]


def test_the_app_answers_on_loopback_unless_a_host_is_given(monkeypatch, capsys, tmp_path):
    monkeypatch.delenv("PROXYFDA_ALLOW", raising=False)
    command = _launched(monkeypatch, [])
    assert command[command.index("--server.address") + 1] == "127.0.0.1"
    assert "warning" not in capsys.readouterr().err
    command = _launched(monkeypatch, ["--host", "0.0.0.0", "--allow", str(tmp_path)])
    assert command[command.index("--server.address") + 1] == "0.0.0.0"
    assert "no login" in capsys.readouterr().err
    assert os.environ["PROXYFDA_ALLOW"] == str(tmp_path.resolve())
    assert cli.main(["app", "--allow", str(tmp_path / "missing")]) == 2
    assert "--allow needs existing folders" in capsys.readouterr().err


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _other_address() -> str | None:
    """This machine's address on its network (not loopback), if it has one."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("10.255.255.255", 1))  # UDP: nothing is sent
            address = probe.getsockname()[0]
        except OSError:
            return None
    return None if address.startswith("127.") else address


def test_a_first_start_asks_nothing_and_listens_on_this_machine_only(tmp_path):
    """`streamlit run app/main.py` as on a fresh machine (no ~/.streamlit, no terminal, not headless): the
    shipped settings skip Streamlit's e-mail prompt, and the app listens on 127.0.0.1 only."""
    port = _free_port()
    env = {**os.environ, "HOME": str(tmp_path), "BROWSER": "true",  # `true`: opening a browser does nothing
           "PYTHONUNBUFFERED": "1"}
    process = subprocess.Popen([sys.executable, "-m", "streamlit", "run", str(ROOT / "app" / "main.py"),
                                "--server.port", str(port), "--server.headless", "false"],
                               stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               env=env, cwd=tmp_path, text=True)
    try:
        deadline, output = time.monotonic() + 60, ""
        while time.monotonic() < deadline and process.poll() is None:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.3)
        assert process.poll() is None, process.stdout.read()
        time.sleep(1.0)  # the address lines follow the port's opening
        other = _other_address()
        if other is not None:
            with pytest.raises(OSError):
                socket.create_connection((other, port), timeout=2).close()
    finally:
        process.terminate()
        output = process.communicate(timeout=30)[0]
    assert "Email" not in output and "Welcome to Streamlit" not in output
    assert f"127.0.0.1:{port}" in output
