"""``mmlens steer``: build a vector from two datasets, apply a saved one, and bad input in one line."""

import json

import pytest
import torch

from mmlens.cli.main import main
from mmlens.represent.steering import SteeringVector


def test_build_from_two_datasets_then_apply_the_saved_vector(tmp_path, capsys):
    out = tmp_path / "built"
    code = main(["steer", "--model", "shapes-llava", "--from-data", "shapes:val[0:12]", "--to-data",
                 "shapes:val[12:24]", "--layer", "2", "--data", "shapes:test[0:4]", "--scale", "0.5",
                 "--out", str(out), "--json"])
    assert code == 0
    payload = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert payload["n"] == 4 and payload["layers"] == [2]
    saved = json.loads((out / "steer.json").read_text())
    assert saved["format"] == "mmlens.Steer" and len(saved["rows"]) == 4
    assert "<table>" in (out / "steer.html").read_text()
    vector = SteeringVector.load(out / "vector.safetensors")
    assert vector.layers == [2] and vector.metadata["from"] == "shapes:val[0:12]"
    big = SteeringVector({2: vector.vectors[2] * 0 + 1000.0})
    big.save(tmp_path / "big.safetensors")
    code = main(["steer", "--model", "shapes-llava", "--vector", str(tmp_path / "big.safetensors"),
                 "--data", "shapes:test[0:4]", "--out", str(tmp_path / "applied"), "--json"])
    assert code == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["changed"] == 4


@pytest.mark.parametrize("args, message", [
    (["--vector", "{wide}"], "width 7 cannot steer"),
    ([], "give one of --vector"),
    (["--from-data", "shapes:val[0:4]"], "needs both"),
    (["--from-data", "shapes:val[0:4]", "--to-data", "shapes:val[4:8]"], "needs --layer"),
    (["--vector", "{wide}", "--tokens", "first"], "unknown --tokens"),
])
def test_bad_input_gets_one_line(tmp_path, capsys, args, message):
    SteeringVector({0: torch.ones(7)}).save(tmp_path / "wide.safetensors")
    args = [a.replace("{wide}", str(tmp_path / "wide.safetensors")) for a in args]
    code = main(["steer", "--model", "shapes-llava", "--data", "shapes:test[0:2]", "--out", str(tmp_path / "o"), *args])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and message in err[-1] and len(err) <= 3
