"""The demo spec mutated at random, a few hundred times: every mutation is either a valid spec
(its dry run plans models) or refused in one line with exit code 2. Never a traceback, never exit
1, and nothing written anywhere."""

import math

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from apgrid.grid.cli import main
from apgrid.grid.spec import DEFAULT_SPEC

DEMO = yaml.safe_load(DEFAULT_SPEC.read_text())

ODD_VALUES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**40), max_value=10**40),
    st.sampled_from([0, -1, 1, 2**31, 2**32, 2**64, 10**30]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([math.nan, math.inf, -math.inf, 1e308, -0.0, 1e-320]),
    st.text(max_size=30),
    st.sampled_from(
        ["", "1/0", "8/255", "0/0", "no", "yes", "auto", "a\x00b", "é名\u202e", "../../etc", "\n\n"]
    ),
    st.lists(st.integers(), max_size=3),
    st.dictionaries(st.text(max_size=5), st.integers(), max_size=2),
)
WHOLE_FILES = st.one_of(
    st.binary(min_size=1, max_size=200),
    st.just(b"\x7fELF\x02\x01\x01\x00" + bytes(range(256))),
    st.text(max_size=200).map(lambda t: t.encode("utf-8", "surrogatepass")),
    st.just(b"name: [demo\n"),
    st.just(b"- a\n- b\n"),
    st.just(b"\xef\xbb\xbfname: x\n"),
)


def paths(node, prefix=()):
    """Every place in the spec a value sits (mapping keys and list positions)."""
    yield prefix
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    for key, child in items:
        yield from paths(child, (*prefix, key))


def mutate(data) -> dict:
    import copy

    spec = copy.deepcopy(DEMO)
    for _ in range(data.draw(st.integers(1, 3), label="mutations")):
        where = data.draw(st.sampled_from(list(paths(spec))[1:]), label="path")
        parent = spec
        for key in where[:-1]:
            parent = parent[key]
        action = data.draw(st.sampled_from(["replace", "drop", "add"]), label="action")
        if action == "drop" and isinstance(parent, dict):
            del parent[where[-1]]
        elif action == "add" and isinstance(parent, dict):
            parent[data.draw(st.text(min_size=1, max_size=8), label="key")] = data.draw(ODD_VALUES)
        else:
            parent[where[-1]] = data.draw(ODD_VALUES, label="value")
        if not isinstance(spec, dict):
            break
    return spec


def launch_dry_run(folder, content: bytes, capsys):
    spec = folder / "spec.yaml"
    spec.write_bytes(content)
    code = main(["launch", "--dry-run", str(spec)])
    out, err = capsys.readouterr()
    return code, out, err.strip()


def check(code, out, err, folder):
    assert code in (0, 2), (code, err)
    if code == 2:
        assert err.startswith("apgrid: error: ") and len(err.splitlines()) == 1, err
        assert "Traceback" not in err
    else:
        assert out.strip(), "a valid spec's dry run lists its models"
    assert sorted(p.name for p in folder.iterdir()) == ["spec.yaml"], "nothing is written"


@settings(
    max_examples=250,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(data=st.data())
def test_mutated_demo_is_valid_or_one_line_exit_2(data, tmp_path_factory, capsys, monkeypatch):
    folder = tmp_path_factory.mktemp("fuzz")
    monkeypatch.chdir(folder)  # a relative `output` would land here
    spec = mutate(data)
    if isinstance(spec, dict):
        spec["output"] = spec.get("output", "runs/demo")
    text = yaml.safe_dump(spec, allow_unicode=True).encode("utf-8", "surrogatepass")
    check(*launch_dry_run(folder, text, capsys), folder)


@settings(
    max_examples=60,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(content=WHOLE_FILES)
def test_a_spec_file_that_is_not_a_spec_is_one_line_exit_2(content, tmp_path_factory, capsys, monkeypatch):
    folder = tmp_path_factory.mktemp("fuzz")
    monkeypatch.chdir(folder)
    code, out, err = launch_dry_run(folder, content, capsys)
    check(code, out, err, folder)
    assert code == 2  # none of these is a whole spec


@pytest.mark.parametrize("content", [b"\x7fELF\x02\x01\x01\x00\x00\xff\xfe", bytes(range(256))])
def test_binary_spec_files_are_refused_in_one_line(content, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, _, err = launch_dry_run(tmp_path, content, capsys)
    assert code == 2 and "not a YAML text file" in err and len(err.splitlines()) == 1
