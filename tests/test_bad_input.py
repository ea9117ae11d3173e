"""The bad-input table of docs/spec.md, one test per row, through the command line as a user meets it:
one line naming the field or file and what is allowed, exit code 2, nothing started, nothing
written or overwritten."""

import io
import json

import pytest
import torch
import yaml

from apgrid.grid.cli import main
from apgrid.trainables.models import build_model

BASE = {"name": "bad", "dense": {"recipe": {"epochs": 1}}}


def write_checkpoint(kind: str, folder):
    path = folder / f"{kind}.pt"
    model = build_model("digits-cnn", 1, 10, (0.5,), (0.5,))
    if kind == "corrupt":
        path.write_bytes(b"\x00garbage, not a checkpoint" * 10)
    elif kind == "truncated":
        buffer = io.BytesIO()
        torch.save(model.state_dict(), buffer)
        path.write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    elif kind == "pickled-module":  # a whole nn.Module: loads only with weights_only=False
        torch.save(model, path)
    elif kind == "wrong-arch":
        torch.save(build_model("cifar-small", 3, 10, (0.5,) * 3, (0.5,) * 3).state_dict(), path)
    return path


CASES = {  # case: (spec patch or raw text, text the one-line error must contain)
    "malformed YAML": ("name: bad\nprune: [unclosed\n", "spec:"),
    "unknown key": ({"colour": "blue"}, "colour: unknown"),
    "unknown method": ({"prune": {"methods": ["magic"]}}, "prune.methods"),
    "unknown architecture": ({"dense": {"architectures": ["resnet1000"]}}, "dense.architectures"),
    "unknown dataset": ({"dataset": {"name": "imagenet"}}, "dataset.name"),
    "sparsity 1.0": ({"prune": {"sparsities": [1.0]}}, "prune.sparsities"),
    "sparsity negative": ({"prune": {"sparsities": [-0.5]}}, "prune.sparsities"),
    "eps negative": ({"threat_model": {"eps": -0.1}}, "threat_model.eps"),
    "eps above 1": ({"threat_model": {"eps": 2}}, "threat_model.eps"),
    "steps 0": ({"evaluation": {"fmn_steps": 0}}, "evaluation.fmn_steps"),
    "epochs negative": ({"dense": {"recipe": {"epochs": -1}}}, "dense.recipe.epochs"),
    "method option out of range": (
        {"prune": {"methods": [{"name": "atmc", "bits": 1}]}},
        "prune.methods.atmc.bits: 1 is below the minimum 2; also allowed: 0",
    ),
    "missing dataset root": (
        {
            "dataset": {"name": "cifar10", "root": "/no/such/folder"},
            "dense": {"architectures": ["cifar-tiny"]},
        },
        "dataset.root",
    ),
    "architecture that cannot take the images": (
        {"dataset": {"name": "cifar10", "root": "/tmp"}},
        "dense.architectures: digits-cnn cannot take",
    ),
    "binary spec file": (b"\x7fELF\x02\x01\x01\x00\xff\xfe", "not a YAML text file"),
    "unknown transfer attack": ({"analysis": {"transfer_attacks": ["laser"]}}, "analysis.transfer_attacks"),
    "unknown AUC interval": ({"analysis": {"auc_interval": "jackknife"}}, "analysis.auc_interval"),
    "unreachable tracking URI": ({"tracking_uri": "http://127.0.0.1:9"}, "tracking_uri"),
}
CHECKPOINTS = ("corrupt", "truncated", "pickled-module", "wrong-arch")


def run(tmp_path, capsys, content):
    out = tmp_path / "out"
    spec = tmp_path / "spec.yaml"
    if isinstance(content, bytes):
        spec.write_bytes(content)
    elif isinstance(content, str):
        spec.write_text(content + f"output: {out}\n")
    else:
        spec.write_text(yaml.safe_dump({**BASE, "output": str(out), **content}))
    code = main(["launch", str(spec)])
    err = capsys.readouterr().err.strip()
    return code, err, out


@pytest.mark.parametrize("case", CASES)
def test_bad_input_is_one_line_exit_2_nothing_written(case, tmp_path, capsys):
    content, expected = CASES[case]
    code, err, out = run(tmp_path, capsys, content)
    assert code == 2
    assert len(err.splitlines()) == 1 and err.startswith("apgrid: error: ") and expected in err, err
    assert not out.exists()


@pytest.mark.parametrize("kind", CHECKPOINTS)
def test_bad_checkpoint_is_refused_before_anything_is_written(kind, tmp_path, capsys):
    path = write_checkpoint(kind, tmp_path)
    code, err, out = run(
        tmp_path, capsys, {"checkpoints": [{"name": "theirs", "arch": "digits-cnn", "path": str(path)}]}
    )
    assert code == 2 and len(err.splitlines()) == 1, err
    assert str(path) in err and ("cannot be loaded" in err or "does not fit" in err), err
    assert not out.exists()


def test_output_of_another_grid_is_neither_used_nor_overwritten(tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    state = {"name": "someone-else", "fingerprint": "0" * 16, "stages": {"dense": "done"}}
    (out / "grid.json").write_text(json.dumps(state))
    before = sorted(p.name for p in out.iterdir())
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump({**BASE, "output": str(out)}))
    assert main(["launch", str(spec)]) == 2
    err = capsys.readouterr().err.strip()
    assert "belongs to another grid ('someone-else')" in err and len(err.splitlines()) == 1
    assert sorted(p.name for p in out.iterdir()) == before
    assert json.loads((out / "grid.json").read_text()) == state


def test_a_grid_fingerprinted_with_its_datas_old_place_is_the_same_grid(tmp_path, capsys):
    """Where the data lives is not the grid's identity: a folder whose grid.json holds the
    fingerprint an older apgrid computed (with dataset.root) and whose spec.yaml, in that apgrid's
    layout, is the spec's grid but for the data's place is continued; a change in what it
    computes is still refused."""
    from apgrid.grid.spec import load_spec

    out = tmp_path / "out"
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump({**BASE, "output": str(out), "dataset": {"name": "digits", "root": "a"}}))
    assert main(["launch", str(spec), "--dry-run"]) == 0
    out.mkdir()
    stored = load_spec(spec).to_dict()  # as an older apgrid wrote it: fields added since absent
    stored["dataset"]["root"] = "/elsewhere/digits"
    del stored["dense"]["shared"]
    for method in stored["prune"]["methods"]:
        del method["reported"]
        method["because"] = {"*": "a reason given since"}
    (out / "spec.yaml").write_text(yaml.safe_dump(json.loads(json.dumps(stored))))
    (out / "grid.json").write_text(json.dumps({"name": "bad", "fingerprint": "0" * 16, "stages": {}}))
    capsys.readouterr()
    assert main(["launch", str(spec), "--dry-run"]) == 0, capsys.readouterr().err
    threat = {"norm": "Linf", "eps": 0.2}
    spec.write_text(yaml.safe_dump({**BASE, "output": str(out), "threat_model": threat}))
    assert main(["launch", str(spec), "--dry-run"]) == 2
    assert "it differs in threat_model.eps: 0.1 -> 0.2" in capsys.readouterr().err


def test_output_into_a_closed_pipe_ends_quietly():
    """`apgrid list examples | head -1`: the reader is gone; exit 141 (SIGPIPE's), no traceback."""
    import os
    import subprocess
    import sys

    read, write = os.pipe()
    os.close(read)
    try:
        done = subprocess.run(
            [sys.executable, "-m", "apgrid.grid.cli", "list", "examples"],
            stdout=write,
            stderr=subprocess.PIPE,
            text=True,
        )
    finally:
        os.close(write)
    assert done.returncode == 141 and done.stderr == ""


URI_OUTPUTS = ("gs://bucket/runs/x", "file:///tmp/runs/x", "hdfs://nn/runs/x")  # s3:// is supported


@pytest.mark.parametrize("uri", URI_OUTPUTS)
def test_output_uri_is_refused_in_one_line_not_made_a_local_folder(uri, tmp_path, capsys, monkeypatch):
    """`output: gs://bucket/runs/x` used to become the local folder ./gs:/bucket/runs/x."""
    monkeypatch.chdir(tmp_path)
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump({**BASE, "output": uri}))
    calls = (  # dry runs first: today a full launch runs the whole grid into ./gs:/...
        ["launch", str(spec), "--dry-run"],
        ["launch", "--output", uri, "--dry-run"],
        ["launch", str(spec)],
        ["resume", uri],
        ["status", uri],
        ["analyze", uri],
        ["query", uri],
        ["export", uri, str(tmp_path / "exported")],
    )
    for argv in calls:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and err.startswith("apgrid: error: output: "), (argv, err)
        assert uri in err and "not supported" in err, (argv, err)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["spec.yaml"]  # nothing written


@pytest.mark.parametrize("uri", URI_OUTPUTS[:1])
def test_output_uri_is_refused_by_the_python_api(uri, tmp_path, monkeypatch):
    import apgrid
    from apgrid.trainables.fields import FieldError

    monkeypatch.chdir(tmp_path)
    for call in (
        lambda: apgrid.launch({**BASE, "output": uri}, until="checkpoints"),
        lambda: apgrid.launch(output=uri),
        lambda: apgrid.open(uri),
    ):
        with pytest.raises(FieldError, match=r"^output: .*not supported"):
            call()
    assert list(tmp_path.iterdir()) == []
