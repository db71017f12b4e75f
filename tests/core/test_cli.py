"""The installed ``getok`` console script."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from getok_core import GetokVocab


def getok(*args, input=None):
    exe = shutil.which("getok", path=str(Path(sys.executable).parent))
    assert exe, "the getok console script is not installed in this environment"
    return subprocess.run([exe, *args], capture_output=True, text=True, input=input, timeout=120)


def test_help_explains_itself():
    out = getok("--help")
    assert out.returncode == 0
    for word in ("vocab", "encode", "decode", "demo", "normalized"):
        assert word in out.stdout
    assert "--new_special_tokens" in getok("vocab", "--help").stdout


def test_vocab_file_matches_the_vocabulary(tmp_path):
    path = tmp_path / "tokens.txt"
    out = getok("vocab", "--grid-size", "32", "--out", str(path))
    assert out.returncode == 0, out.stderr
    lines = path.read_text().splitlines()
    assert lines == GetokVocab(32).tokens and len(lines) == 1047
    small = getok("vocab", "--grid-size", "8").stdout.splitlines()
    assert small == GetokVocab(8).tokens


def test_encode_then_decode_in_pixels():
    enc = getok("encode", "--image-size", "320,320", "--box", "30,40,200,260", "--seg", "124,143", "100,100")
    assert enc.returncode == 0, enc.stderr
    text = enc.stdout.strip()
    assert text == "<answer><box><grid3,4><grid19,25></box><seg><grid12,14><grid10,10></seg></answer>"
    dec = getok("decode", "-", "--image-size", "320,320", "--compact", input=text)
    assert dec.returncode == 0
    res = json.loads(dec.stdout)
    assert res["valid"] and res["instances"][0]["box"] == [35.0, 45.0, 195.0, 255.0]
    assert res["instances"][0]["points"] == [[125.0, 145.0], [105.0, 105.0]]


def test_encode_json_instances_and_no_target():
    out = getok("encode", "--json", '[{"point": [0.5, 0.5]}, {"polyline": [[0, 0], [0.5, 0.9]]}]')
    assert out.stdout.strip() == "<answer><point><grid16,16></point>\n<line><grid0,0><grid16,28></line></answer>"
    assert getok("encode").stdout.strip() == "<answer><none></answer>"


def test_decode_invalid_exits_1_and_bad_input_exits_2():
    dec = getok("decode", "<answer><box><grid3,4></box></answer>")
    assert dec.returncode == 1
    assert json.loads(dec.stdout)["errors"] == ["<box> has 1 grid token(s), needs exactly 2"]
    bad = getok("encode", "--json", '[{"bx": [1, 2, 3, 4]}]')
    assert bad.returncode == 2 and "unknown instance field" in bad.stderr


def test_decode_refinement_against_proposal():
    out = getok("decode", "<answer><offset><OFF1,0><OFF0,0><DELETE></offset></answer>",
                "--proposal", "<answer><box><grid0,0><grid1,1></box><seg><grid1,1></seg></answer>", "--compact")
    res = json.loads(out.stdout)
    assert out.returncode == 0 and res["offsets"] == [[[1, 0], [0, 0], None]]
    n = 32
    assert res["instances"] == [{"box": [round(1 / n, 4), round(0.5 / n, 4), round(1.5 / n, 4), round(1.5 / n, 4)]}]


@pytest.mark.parametrize("args", [["demo"]])
def test_demo_runs(args):
    out = getok(*args)
    assert out.returncode == 0, out.stderr
    assert "1047 tokens" in out.stdout and "INVALID" in out.stdout and "Refinement turn" in out.stdout
