"""Test-time augmentation: the views, probability-space averaging after the temperature, and the flags."""
from __future__ import annotations

import json

import pytest
import torch
from conftest import need_extra

from transferkit.cli import main
from transferkit.cli.parser import build_parser
from transferkit.core.errors import UserError
from transferkit.data.tta import parse_tta, tta_views
from transferkit.runs.calibration import average_probabilities, probabilities


def test_views():
    x = torch.arange(2 * 1 * 8 * 8, dtype=torch.uint8).view(2, 1, 8, 8)
    assert len(tta_views(())) == 1 and torch.equal(tta_views(())[0](x), x)
    flips = tta_views(parse_tta("flip"))
    assert len(flips) == 2 and torch.equal(flips[1](x), x.flip(-1))
    crops = tta_views(parse_tta("crops"))
    assert len(crops) == 5 and {tuple(v(x).shape[-2:]) for v in crops[1:]} == {(7, 7)}
    assert torch.equal(crops[1](x), x[..., :7, :7]) and torch.equal(crops[4](x), x[..., 1:, 1:])
    ten = tta_views(parse_tta("flip,crops"))
    assert len(ten) == 10 and torch.equal(ten[6](x), x[..., :7, :7].flip(-1))  # every view mirrored too
    assert parse_tta("crops,flip,flip") == ("crops", "flip") and parse_tta("none") == ()
    with pytest.raises(UserError, match="flip, crops"):
        parse_tta("rotate")


def test_probabilities_are_averaged_after_the_temperature():
    a, b = torch.tensor([[2.0, 0.0]]), torch.tensor([[0.0, 1.0]])
    got = average_probabilities([a, b], 0.5)
    assert torch.allclose(got, (probabilities(a, 0.5) + probabilities(b, 0.5)) / 2)
    assert torch.allclose(got.sum(1), torch.ones(1))


def test_eval_and_predict_take_tta(tiny_run, image_folder, capsys):
    capsys.readouterr()
    assert main(["eval", str(tiny_run), "--format", "json", "--quiet"]) == 0
    plain = json.loads(capsys.readouterr().out)
    assert main(["eval", str(tiny_run), "--tta", "flip,crops", "--format", "json", "--quiet"]) == 0
    tta = json.loads(capsys.readouterr().out)
    assert tta["tta"] == ["flip", "crops"] and plain["tta"] == [] and tta["n"] == plain["n"]
    assert tta["ece"] != plain["ece"] or tta["nll"] != plain["nll"]  # another set of probabilities
    image = sorted(image_folder.rglob("*.png"))[0]
    assert main(["predict", str(tiny_run), str(image), "--tta", "flip", "--format", "json", "--quiet"]) == 0
    probs = [p["prob"] for p in json.loads(capsys.readouterr().out)[0]["predictions"]]
    assert sum(probs) == pytest.approx(1, abs=1e-4)
    assert main(["predict", str(tiny_run), str(image), "--tta", "spin"]) == 2
    assert "--tta spin" in capsys.readouterr().err


def test_serve_takes_tta_as_predict_does(tiny_run, image_folder, capsys):
    """`serve` had no --tta although eval and predict did: it averages the same views after the same
    temperature, so a served answer equals `predict --tta` for the same image, and /metadata says so."""
    need_extra("fastapi", "serve")
    need_extra("httpx", "dev")
    from fastapi.testclient import TestClient

    from transferkit.deploy.serve import Service, create_app

    assert build_parser().parse_args(["serve", str(tiny_run), "--tta", "flip,crops"]).tta == "flip,crops"
    assert main(["serve", str(tiny_run), "--tta", "spin"]) == 2  # refused before the model loads
    assert "--tta spin" in capsys.readouterr().err
    image = sorted(image_folder.rglob("*.png"))[0]

    def served(service) -> list[dict]:
        with TestClient(create_app(service)) as client:
            assert client.get("/metadata").json()["tta"] == list(service.tta)
            answer = client.post("/predict", content=image.read_bytes())
            assert answer.status_code == 200, answer.text
            return answer.json()["predictions"]

    def predicted(*flags) -> list[dict]:
        capsys.readouterr()
        assert main(["predict", str(tiny_run), str(image), "--format", "json", "--quiet", *flags]) == 0
        return json.loads(capsys.readouterr().out)[0]["predictions"]

    with_views, plain = served(Service.from_run(tiny_run, tta=("flip", "crops"))), served(Service.from_run(tiny_run))
    for got, want in ((with_views, predicted("--tta", "flip,crops")), (plain, predicted())):
        assert [p["index"] for p in got] == [p["index"] for p in want]
        assert all(abs(a["prob"] - b["prob"]) < 1e-5 for a, b in zip(got, want))
    assert any(abs(a["prob"] - b["prob"]) > 1e-4 for a, b in zip(with_views, plain))  # the views changed the answer
