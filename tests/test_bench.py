"""qkernels.bench: the quick smoke run (every provider of every op checked, then timed), a deliberately wrong
provider reported as a mismatch and not timed, the appended CSV, report and compare, and the CLI's errors. No
timing is asserted: only that rows exist, were checked, and carry positive times."""

import csv
import dataclasses
import os

import pytest
import torch

import qkernels
from qkernels.bench import cli, report, results, runner, shapes, spec
from qkernels.bench.ops import OPS

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    """One ``run --quick`` over every op on the CPU (its CSV and report in a temporary directory)."""
    out = tmp_path_factory.mktemp("quick")
    assert cli.main(["run", "--quick", "--no-progress", "--out", str(out)]) == 0
    return out


def _expected_rows() -> set:
    live = [p for p in runner.default_providers(CPU) if p.startswith("qkernels-")]
    expected = set()
    for op in OPS.values():
        kinds = op.providers("float32")
        providers = [p for p in runner.BASELINES if p in kinds] + (live if "qkernels" in kinds else [])
        expected |= {(op.name, mode, provider) for mode in op.modes for provider in providers}
    return expected


def test_quick_run_checks_and_times_every_provider_of_every_op(quick_run):
    rows = results.read(results.csv_path(str(quick_run)))
    assert {(r["op"], r["mode"], r["provider"]) for r in rows} == _expected_rows()
    assert len(rows) == len(_expected_rows())  # one shape, one dtype: one row each
    for row in rows:
        assert row["status"] == "ok", (row["op"], row["mode"], row["provider"], row["check"])
        assert row["check"] == runner.check_label(OPS[row["op"]], row["provider"])  # exact, or the stated tolerance
        assert row["median_ms"] > 0 and row["p20_ms"] <= row["median_ms"] <= row["p80_ms"]
        assert row["gbps"] > 0 and row["copy_gbps"] > 0 and row["dtype"] == "float32"
        assert row["threads"] == str(torch.get_num_threads()) and row["device"] == "cpu"
    speedups = [r for r in rows if r["provider"].startswith("qkernels-") and r["speedup_vs_eager"] is not None]
    assert len(speedups) == len([r for r in rows if r["provider"] == "qkernels-cpu"])
    text = (quick_run / "report.md").read_text()
    for op in OPS:
        assert f"### {op} fwd float32" in text


def _plan(op, **kw) -> runner.Plan:
    return runner.Plan(ops=[op], modes=kw.pop("modes", ["fwd", "fwdbwd"]), dtypes=["float32"],
                       shapes=shapes.sweep(kw.pop("sizes", [4096])), providers=kw.pop("providers", [
                           "aten", "eager", "qkernels-cpu"]), device=CPU, quick=True, **kw)


def test_a_wrong_provider_is_a_mismatch_and_is_not_timed(tmp_path):
    good = OPS["fake_quant_per_tensor"]
    wrong = dataclasses.replace(good, eager=lambda i: good.eager(i) * 1.5)
    failing = dataclasses.replace(good, aten=lambda i: i["missing"])
    rows = runner.run(_plan(wrong), str(tmp_path / "a.csv")) + runner.run(_plan(failing), str(tmp_path / "b.csv"))
    status = {(r["mode"], r["provider"]): r["status"] for r in rows[:6]}
    assert status == {(m, p): ("mismatch" if p == "eager" else "ok") for m in ("fwd", "fwdbwd")
                      for p in ("aten", "eager", "qkernels-cpu")}
    for row in rows:
        if row["status"] != "ok":
            assert row.get("median_ms") is None and row.get("gbps") is None
    mismatch = next(r for r in rows if r["status"] == "mismatch")
    assert "output 0" in mismatch["check"] and "differ" in mismatch["check"]
    errors = [r for r in rows[6:] if r["provider"] == "aten"]
    assert [r["status"] for r in errors] == ["error", "error"] and "KeyError" in errors[0]["check"]
    # the others still run, with no speedup against the provider that failed
    assert all(r["speedup_vs_aten"] is None and r["status"] == "ok" for r in rows[6:] if r["provider"] != "aten")


def test_a_gradient_mismatch_is_caught_where_outputs_agree(tmp_path):
    good = OPS["fake_quant_per_tensor"]

    def no_gradient(i):
        return good.eager(i).detach() + 0 * i["x"]  # same values, zero gradient

    rows = runner.run(_plan(dataclasses.replace(good, eager=no_gradient), providers=["eager"]), str(tmp_path / "c"))
    assert [(r["mode"], r["status"]) for r in rows] == [("fwd", "ok"), ("fwdbwd", "mismatch")]
    assert rows[1]["check"].startswith("gradient 0")


def test_exact_and_close():
    a = torch.tensor([1.0, float("nan"), -0.0])
    assert spec.exact(a, a.clone()) is None and spec.exact(a, torch.tensor([1.0, float("nan"), 0.0])) is None
    assert "1 of 3" in spec.exact(a, torch.tensor([1.0, 2.0, 0.0]))
    assert "float64" in spec.exact(a, a.double())
    tolerance = spec.close(0.0, 0.1, "a test")
    assert tolerance.check(a, a + 0.05, {}) is None and "1 of 3" in tolerance.check(a, a + torch.tensor([0, 0, 1]), {})
    assert tolerance.reason == "rtol 0, atol 0.1: a test"


def test_csv_appends_and_refuses_other_files(tmp_path):
    path = str(tmp_path / "r.csv")
    op = OPS["fake_quant_per_channel"]
    runner.run(_plan(op, modes=["fwd"]), path)
    runner.run(_plan(op, modes=["fwd"]), path)
    with open(path, newline="") as f:
        lines = list(csv.reader(f))
    assert lines[0] == list(results.FIELDS) and len(lines) == 1 + 2 * 3
    assert sum(line == list(results.FIELDS) for line in lines) == 1
    other = tmp_path / "other.csv"
    other.write_text("a,b\n1,2\n")
    with pytest.raises(ValueError, match="--out"):
        runner.run(_plan(op), str(other))
    with pytest.raises(ValueError, match="not a qkernels.bench CSV"):
        results.read(str(other))


def test_memory_budget_skips_shapes(tmp_path, capsys):
    notes = []
    rows = runner.run(_plan(OPS["fake_quant_per_tensor"], sizes=[4096, 1 << 16], memory_budget=1 << 20),
                      str(tmp_path / "m.csv"), note=notes.append)
    assert {r["numel"] for r in rows} == {4096} and "over the memory budget" in notes[0]


def test_report_tables_and_plots(tmp_path):
    path = str(tmp_path / "results.csv")
    runner.run(_plan(OPS["fake_quant_per_tensor"], modes=["fwd"], sizes=[4096, 16384]), path)
    wrong = dataclasses.replace(OPS["fake_quant_per_tensor"], eager=lambda i: i["x"] * 3)
    runner.run(_plan(wrong, modes=["fwd"], sizes=[4096]), path)  # appended: replaces eager's 4096 row
    text = report.report(path, str(tmp_path / "rep"))
    assert text == (tmp_path / "rep" / "report.md").read_text()
    table = text.split("### fake_quant_per_tensor fwd float32")[1]
    rows = {line.split(" | ")[0].strip("| "): line for line in table.splitlines() if line.startswith("| 2^")}
    assert set(rows) == {"2^12", "2^14"}
    assert "mismatch" in rows["2^12"] and "mismatch" not in rows["2^14"] and "GB/s" in rows["2^14"]
    assert "- eager 2^12: mismatch" in table
    assert [p for p in os.listdir(tmp_path / "rep") if p.endswith(".png")]
    with pytest.raises(ValueError, match="no rows"):
        (tmp_path / "empty.csv").write_text(",".join(results.FIELDS) + "\n")
        report.report(str(tmp_path / "empty.csv"), str(tmp_path / "rep2"))


def _halved(src: str, dst: str):
    rows = results.read(src)
    for row in rows:
        if row["median_ms"] is not None:
            row["median_ms"] /= 2
        row["device_name"] = "a faster machine"
    results.append(dst, rows)


def test_compare_reports_speedups(tmp_path, quick_run):
    a = results.csv_path(str(quick_run))
    b = str(tmp_path / "b.csv")
    _halved(a, b)
    assert cli.main(["compare", a, b, "--out", str(tmp_path / "cmp.md")]) == 0
    text = (tmp_path / "cmp.md").read_text()
    assert "a faster machine" in text
    speedups = [line.rsplit("|", 2)[1].strip() for line in text.splitlines() if line.startswith("| fake_quant")]
    assert speedups and set(speedups) == {"2.00x"}
    summary = [line for line in text.splitlines() if line.startswith("| qkernels-cpu |")]
    assert summary and summary[0].endswith("| 2.00x |")


BAD = [
    (["run", "--ops", "nope"], "--ops"),
    (["run", "--modes", "fwd,sideways"], "--modes"),
    (["run", "--dtypes", "int8"], "--dtypes"),
    (["run", "--sizes", "0"], "--sizes"),
    (["run", "--sizes", "2^x"], "--sizes"),
    (["run", "--shapes", "vgg"], "--shapes"),
    (["run", "--sizes", "4096", "--shapes", "llm"], "--shapes"),
    (["run", "--providers", "aten,fast"], "--providers"),
    (["run", "--providers", "qkernels-cuda"], "--providers"),
    (["run", "--device", "tpu"], "--device"),
    (["run", "--threads", "0"], "--threads"),
    (["run", "--memory-gb", "0"], "--memory-gb"),
    (["run", "--out", "{tmp}/other"], "--out"),
    (["e2e", "--models", "vgg"], "--models"),
    (["e2e", "--variants", "fp,int2"], "--variants"),
    (["e2e", "--batch", "0"], "--batch"),
    (["e2e", "--device", "tpu"], "--device"),
    (["e2e", "--out", "{tmp}/other"], "--out"),
    (["report", "{tmp}/missing"], "DIR_OR_CSV"),
    (["compare", "{tmp}/missing.csv", "{tmp}/missing.csv"], "A.csv"),
]


@pytest.mark.parametrize("argv,flag", BAD, ids=[" ".join(a) for a, _ in BAD])
def test_bad_arguments_exit_2_naming_the_flag(tmp_path, capsys, argv, flag):
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / results.CSV_NAME).write_text("a,b\n")
    (tmp_path / "other" / "e2e.csv").write_text("a,b\n")
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    if argv[0] in ("run", "e2e") and "--out" not in argv:
        argv += ["--out", str(tmp_path / "out"), "--quick"]
    assert cli.main(argv) == 2
    assert flag in capsys.readouterr().err
    assert not (tmp_path / "out").exists()  # before any work


def test_providers_follow_the_live_backends():
    assert runner.default_providers(CPU)[:3] == ["aten", "eager", "compile"]
    assert ("qkernels-cpu" in runner.default_providers(CPU)) == (
        qkernels.backends.availability("cpu", "cpu") is None)
    assert "qkernels-triton" not in runner.default_providers(CPU)  # the interpreter is not timed


def test_a_provider_that_leaves_the_state_wrong_is_a_mismatch(tmp_path):
    """The fused observer's eager on copies of the running statistics: its output is right, the state it should
    have updated in place is not."""
    good = OPS["fused_observer_per_tensor"]
    state = ("running_min", "running_max", "scale", "zero_point")
    untouched = dataclasses.replace(good, eager=lambda i: good.eager(dict(i, **{k: i[k].clone() for k in state})))
    rows = runner.run(_plan(untouched, modes=["fwd"], providers=["eager", "qkernels-cpu"]), str(tmp_path / "s"))
    assert [(r["provider"], r["status"]) for r in rows] == [("eager", "mismatch"), ("qkernels-cpu", "ok")]
    assert rows[0]["check"].startswith("state 0")
