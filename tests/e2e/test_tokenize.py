"""`sdserve tokenize` against transformers' ids on the generated prompt corpus (black box)."""
import base64
import gzip
import json

from conftest import FIXTURES

TOK = FIXTURES / "tokenizer"


def corpus():
    items = [base64.b64decode(line) for line in gzip.open(TOK / "corpus.b64.gz", "rt").read().splitlines()]
    goldens = gzip.open(TOK / "corpus_goldens.jsonl.gz", "rt").read().splitlines()[1:]
    assert len(items) == len(goldens) >= 2000
    return [(item, json.loads(g)) for item, g in zip(items, goldens)]


def test_known_ids(run):
    p = run("tokenize", "a photo of a cat")
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout) == [49406, 320, 1125, 539, 320, 2368, 49407]
    assert json.loads(run("tokenize", "").stdout) == [49406, 49407]


def test_corpus_via_stdin_matches_transformers(run):
    # --stdin reads one text per line, so items containing line breaks are covered by the unit test.
    cases = [(item, g) for item, g in corpus() if b"\n" not in item and b"\r" not in item]
    assert len(cases) > 1500
    p = run("tokenize", "--stdin", input=b"\n".join(item for item, _ in cases) + b"\n")
    assert p.returncode == 0, p.stderr
    got = [json.loads(line) for line in p.stdout.decode().splitlines()]
    assert len(got) == len(cases)
    bad = [(item, g["ids"], ids) for (item, g), ids in zip(cases, got) if ids != g["ids"]]
    assert not bad, bad[:3]


def test_model_tokenizer_folder(run):
    # The tiny models ship a 1,000-merge vocabulary: ids differ from the bundled one.
    p = run("tokenize", "--model", FIXTURES / "models" / "sd1-tiny", "a photo of a cat")
    assert p.returncode == 0, p.stderr
    ids = json.loads(p.stdout)
    assert ids[0] == 1512 and ids[-1] == 1513


def test_no_text_is_an_error(run):
    p = run("tokenize")
    assert p.returncode == 2
    assert p.stderr.decode().strip().startswith("sdserve: error: tokenize: give TEXT or --stdin")
