import csv

import pytest

from branchnas.errors import BranchnasError
from branchnas.pipeline.pareto import pareto_data, pareto_front, write_pareto
from branchnas.pipeline.results import ModelResult, read_result, results_table, write_result


def _result(model, name, params, dm, metrics=None, space="toy"):
    return ModelResult(model=model, name=name, space=space, params=params, flops=None,
                       metrics=metrics or {"a": {"acc": 0.5}}, delta_m=dm)


def test_result_roundtrip_and_table(tmp_path):
    write_result(tmp_path / "single" / "a", _result("single", "single/a", 10, None,
                                                    {"a": {"acc": 0.8}}))
    write_result(tmp_path / "single" / "b", _result("single", "single/b", 12, None,
                                                    {"b": {"err": 2.0}}))
    write_result(tmp_path / "tree1", _result("tree", "tree1", 15, -1.5))
    write_result(tmp_path / "other", _result("tree", "x", 1, 0.0, space="elsewhere"))
    assert read_result(tmp_path / "tree1").delta_m == -1.5
    assert (tmp_path / "tree1" / "done").is_file()  # the run directory's one marker
    (tmp_path / "trial" ).mkdir()
    (tmp_path / "trial" / "done").write_text('{"value": 0.5}')  # not a model: left out
    table = results_table(tmp_path, space="toy")
    assert sorted(table["name"]) == ["single/a", "single/b", "tree1"]
    row = table[table["name"] == "single/b"].iloc[0]
    assert row["b/err"] == 2.0 and row["params"] == 12


def test_unreadable_result_is_a_clear_error(tmp_path):
    (tmp_path / "done").write_text("{not json")
    with pytest.raises(BranchnasError, match="re-run"):
        read_result(tmp_path)
    (tmp_path / "done").write_text('{"a": {"acc": 0.5}, "epochs": 2}')
    with pytest.raises(BranchnasError, match="no model result"):
        read_result(tmp_path)


def test_pareto_front_by_hand():
    pts = [(10, 0.0), (5, -2.0), (7, -3.0), (20, 1.0), (20, 0.5), (3, -2.0)]
    # (3,-2) dominates (5,-2) and (7,-3); (10,0) then (20,1).
    assert pareto_front(pts) == [5, 0, 3]


def test_pareto_data_and_files(tmp_path):
    for name, p in (("a", 10), ("b", 12)):
        write_result(tmp_path / name, _result("single", f"single/{name}", p, None))
    write_result(tmp_path / "t", _result("tree", "t", 15, -1.0))
    write_result(tmp_path / "s", _result("shared", "shared", 11, -4.0))
    table = results_table(tmp_path)
    data = pareto_data(table, budget_path=[{"params": 15, "delta_m": -1.0}])
    single = [p for p in data["points"] if p["model"] == "single"]
    assert single == [{"model": "single", "name": "single-task", "params": 22, "delta_m": 0.0,
                       "delta_m_all": 0.0}]
    assert data["front"] == ["shared", "t", "single-task"]
    png, csv_path = write_pareto(table, tmp_path / "plots")
    assert png.stat().st_size > 1000
    rows = list(csv.DictReader(open(csv_path)))
    assert {r["name"] for r in rows} == {"single-task", "t", "shared"}


def test_both_delta_m_figures_in_table_front_and_csv(tmp_path):
    # primary: the tree beats shared; all metrics: shared beats the tree (fronts differ)
    for name, p in (("a", 10), ("b", 12)):
        write_result(tmp_path / name, _result("single", f"single/{name}", p, None))
    t = _result("tree", "t", 15, -1.0)
    t.delta_m_all = -6.0
    s = _result("shared", "shared", 11, -4.0)
    s.delta_m_all = -2.0
    write_result(tmp_path / "t", t)
    write_result(tmp_path / "s", s)
    table = results_table(tmp_path)
    assert dict(zip(table["name"], table["delta_m_all"]))["t"] == -6.0
    assert pareto_data(table)["front"] == ["shared", "t", "single-task"]
    assert pareto_data(table, column="delta_m_all")["front"] == ["shared", "single-task"]
    path = [{"params": 15, "delta_m": -1.0, "delta_m_all": -6.0}]
    assert pareto_data(table, path, column="delta_m_all")["path"] == [(15.0, -6.0)]
    _, csv_path = write_pareto(table, tmp_path / "plots", budget_path=path, title="toy")
    rows = {r["name"]: r for r in csv.DictReader(open(csv_path))}
    assert rows["t"]["delta_m"] == "-1.0000" and rows["t"]["delta_m_all"] == "-6.0000"
    assert rows["t"]["on_front"] == "True" and rows["t"]["on_front_all"] == "False"
    assert rows["single-task"]["delta_m_all"] == "0.0000"
