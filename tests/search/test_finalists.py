"""The finalists stage and --max-state: who is in the final, the statistics against hand
computation, the verdict's rule, durable resume, and the command line."""

import json
import math

import pytest
from typer.testing import CliRunner

import einsearch
from einsearch.cli import app
from einsearch.costs import costs
from einsearch.grammar.seeds import seeds as zoo
from einsearch.report import verdict_line
from einsearch.search import RunConfig, RunFolder, Search, start
from einsearch.search import finalists as fin
from einsearch.search.finalists import Entrant, FinalRecord, Plan, Standing, Summary, Welch
from einsearch.search.record import TrialRecord
from einsearch.tasks import get_task
from tests.search.conftest import TINY_TASK, tiny_config

runner = CliRunner()
CONV, ATTN = "res(conv(k=2))", "res(attn(softmax, heads=1, pos=rope))"


def cost_of(arch: str, task: str = TINY_TASK, d_model: int = 16, layers: int = 1) -> dict:
    """Costs measured directly, as the trainer records them."""
    the_task = get_task(task)
    return costs(the_task.model(einsearch.resolve(arch), d_model, layers), the_task.tokens).as_dict()


TEXTS = {name: f"conv(k={k})" for k, name in enumerate("abcde", start=2)} | {
    "s": "attn(softmax, heads=2, pos=none)",  # the comparison seed
    "w": "attn(softmax, heads=2, window=8, pos=none)",  # the seed, but for a window
}


def trial(number: int, name: str, value: float | None, status: str = "ok", reused_from: int | None = None) -> TrialRecord:
    arch = einsearch.parse(TEXTS[name])
    return TrialRecord(
        number=number, arch=arch.text, id=arch.id, status=status, reason=None,
        objectives=None if value is None else (value,), reused_from=reused_from,
    )  # fmt: skip


# ---------------------------------------------------------------------------------------------- who


def test_finalists_are_the_top_k_distinct_architectures():
    ids = {name: einsearch.parse(text).id for name, text in TEXTS.items()}
    records = [
        trial(0, "a", 0.50),
        trial(1, "b", 0.90),
        trial(2, "c", 0.70),
        trial(3, "b", 0.90, reused_from=1),  # a duplicate reusing trial 1's result
        trial(4, "d", 0.80),
        trial(5, "e", None, status="failed"),
        trial(6, "c", 0.60),  # the same architecture trained again: counts once, at its best
        trial(7, "s", 0.95),  # a comparison seed the search found again
        trial(8, "w", 0.96),  # the seed again at a length of at most 8 (its window sees everything)
    ]
    seed = [einsearch.parse(TEXTS["s"])]
    picked = fin.pick_candidates(records, maximize=True, k=3, exclude=seed, tokens=8)
    assert [(e.id, e.trial) for e in picked] == [(ids["b"], 1), (ids["d"], 4), (ids["c"], 2)]
    assert all(e.role == "candidate" for e in picked)
    longer = fin.pick_candidates(records, maximize=True, k=1, exclude=seed, tokens=9)  # at 9 the window matters
    assert [(e.id, e.trial) for e in longer] == [(ids["w"], 8)]
    lowest = fin.pick_candidates(records, maximize=False, k=2)
    assert [e.id for e in lowest] == [ids["a"], ids["c"]]
    assert fin.pick_candidates(records, maximize=True, k=0) == []


def test_comparison_seeds_keep_the_runs_constraints():
    transformer, gla = cost_of("transformer"), cost_of("gla")
    assert transformer["params"] < gla["params"] and gla["state_size"] < transformer["state_size"]
    task = get_task(TINY_TASK)
    assert fin.reference_seeds(task) == ("transformer", "gla")

    # no limits: --seed-arch ones first, then the task's reference seeds, each once
    config = tiny_config(seed_archs=(CONV, "transformer"))
    chosen, excluded = fin.comparison_seeds(config, task)
    assert [(e.arch, e.name) for e in chosen] == [(CONV, None), (zoo["transformer"].text, "transformer"), (zoo["gla"].text, "gla")]
    assert excluded == {}

    # a params limit between them keeps the transformer; a state limit keeps gla
    chosen, excluded = fin.comparison_seeds(tiny_config(max_params=transformer["params"]), task)
    assert [e.name for e in chosen] == ["transformer"]
    assert excluded == {"gla": f"params {gla['params']:,} > max {transformer['params']:,}"}
    chosen, excluded = fin.comparison_seeds(tiny_config(max_state=gla["state_size"]), task)
    assert [e.name for e in chosen] == ["gla"] and "state" in excluded["transformer"]

    # a run's own --seed-arch is compared even over a limit: the user asked for it
    chosen, _ = fin.comparison_seeds(tiny_config(seed_archs=("transformer",), max_params=1), task)
    assert [e.name for e in chosen] == ["transformer"]


def test_reference_seeds_by_kind_of_task():
    assert fin.reference_seeds(get_task("lorenz96")) == ("transformer", "gru", "retnet")
    assert fin.reference_seeds(get_task("ks")) == ("transformer", "gru")
    assert fin.reference_seeds(get_task("csv:x.csv")) == ("transformer",) + (("linear",) if "linear" in zoo else ())


def test_config_checks_the_final():
    with pytest.raises(ValueError, match="finalists must be at least 0"):
        RunConfig(finalists=-1)
    with pytest.raises(ValueError, match="final seeds must be at least 2"):
        RunConfig(finalists=2, final_seeds=1)
    with pytest.raises(ValueError, match="max state"):
        RunConfig(max_state=-1)
    assert RunConfig(finalists=0, final_seeds=1).finalists == 0  # no final: n does not matter


# ---------------------------------------------------------------------------------------------- statistics


def student_t_two_sided(t: float, df: float, intervals: int = 2000) -> float:
    """2·P(T > |t|) for Student's t with `df` degrees of freedom, by Simpson's rule on its density."""
    scale = math.exp(math.lgamma((df + 1) / 2) - math.lgamma(df / 2)) / math.sqrt(df * math.pi)
    density = lambda x: scale * (1 + x * x / df) ** (-(df + 1) / 2)  # noqa: E731
    h = abs(t) / intervals
    inner = density(0) + density(abs(t)) + sum((4 if i % 2 else 2) * density(i * h) for i in range(1, intervals))
    return 1.0 - 2.0 * inner * h / 3


def test_welch_against_hand_computation():
    a, b = (0.91, 0.95, 0.93, 0.97), (0.85, 0.90, 0.88)
    mean_a, mean_b = sum(a) / 4, sum(b) / 3
    var_a = sum((x - mean_a) ** 2 for x in a) / 3  # sample variances (ddof=1)
    var_b = sum((x - mean_b) ** 2 for x in b) / 2
    se2 = var_a / 4 + var_b / 3
    t = (mean_a - mean_b) / math.sqrt(se2)
    df = se2**2 / ((var_a / 4) ** 2 / 3 + (var_b / 3) ** 2 / 2)  # Welch–Satterthwaite
    result = fin.welch(a, b)
    assert result.t == pytest.approx(t, rel=1e-12)
    assert result.df == pytest.approx(df, rel=1e-12)
    assert result.p == pytest.approx(student_t_two_sided(t, df), abs=1e-7)
    assert 0.001 < result.p < 0.05  # these samples: a clear difference
    assert fin.welch(a, (0.9,)) is None  # one value: no variance to test with
    assert fin.welch((0.5, 0.5), (0.5, 0.5)) is None  # no variance at all: undefined


def entrant(id: str, role: str, name: str | None = None) -> Entrant:
    return Entrant(f"arch-{id}", id, role, name=name, trial=None if role == "seed" else 1)


def final_record(e: Entrant, seed: int, value: float | None, budget: str = "5steps") -> FinalRecord:
    return FinalRecord(
        arch=e.arch, id=e.id, role=e.role, name=e.name, trial=e.trial, seed=seed, budget=budget,
        status="ok" if value is not None else "failed", reason=None if value is not None else "nan",
        metrics={} if value is None else {"test/accuracy": value, "val/accuracy": value},
        costs={"params": 100, "flops_per_token": 200.0, "state_size": 10},
    )  # fmt: skip


def test_summary_counts_means_and_tests_against_the_best_seed():
    cand, weak, strong = entrant("c", "candidate"), entrant("w", "seed", "gla"), entrant("s", "seed", "transformer")
    the_plan = Plan((cand,), (weak, strong))
    records = [
        final_record(cand, 0, 0.90), final_record(cand, 1, 0.94), final_record(cand, 2, None),
        final_record(weak, 0, 0.50), final_record(weak, 1, 0.60),
        final_record(strong, 0, 0.80), final_record(strong, 1, 0.84), final_record(strong, 2, 0.82),
        final_record(strong, 3, 0.10),  # a training seed beyond n: not part of this final
        final_record(strong, 0, 0.10, budget="9steps"),  # another budget: not part of it either
    ]  # fmt: skip
    summary = fin.summarise(the_plan, records, training_seeds=3, metric="test/accuracy", maximize=True, budget="5steps")
    c, w, s = summary.standings
    assert summary.best_seed == "s" and summary.best is s
    assert (c.n, c.failed, s.n, w.n) == (2, 1, 3, 2)
    assert c.mean == pytest.approx(0.92) and c.std == pytest.approx(math.sqrt(0.0008))  # (0.02² + 0.02²) / 1
    assert s.mean == pytest.approx(0.82) and s.std == pytest.approx(0.02)
    assert s.test is None and c.test == fin.welch((0.90, 0.94), (0.80, 0.84, 0.82))
    assert w.test == fin.welch((0.50, 0.60), (0.80, 0.84, 0.82))
    assert not summary.complete  # weak has 2 of 3 trainings
    assert Summary.from_dict(json.loads(json.dumps(summary.to_dict()))) == summary


def standing(id: str, role: str, values: tuple[float, ...], p: float | None = None, name: str | None = None) -> Standing:
    return Standing(entrant(id, role, name), values, costs={"params": 80, "flops_per_token": 180.0, "state_size": 5},
                    test=None if p is None else Welch(t=1.0, df=3.0, p=p))  # fmt: skip


def summary_of(*standings: Standing, maximize: bool = True) -> Summary:
    seed = next(s for s in standings if s.entrant.role == "seed")
    return Summary("test/accuracy", maximize, "5steps", 3, standings, best_seed=seed.entrant.id, complete=True)


def test_a_win_needs_a_better_mean_and_a_small_p():
    best = standing("s", "seed", (0.80, 0.82, 0.84), name="transformer")
    cases = [
        ((0.90, 0.92, 0.94), 0.01, True, True),  # better and significant
        ((0.90, 0.92, 0.94), 0.20, True, False),  # better, but it may be noise
        ((0.70, 0.72, 0.74), 0.01, True, False),  # significantly worse
        ((0.90, 0.92, 0.94), None, True, False),  # undefined test
        ((0.70, 0.72, 0.74), 0.01, False, True),  # a smaller error that is significant wins when minimising
    ]
    for values, p, maximize, expected in cases:
        summary = summary_of(standing("c", "candidate", values, p), best, maximize=maximize)
        found = fin.verdict(summary)
        assert found.wins == expected and found.seed.entrant.name == "transformer", (values, p, maximize)
        line = verdict_line(summary)
        assert line.startswith("verdict: arch-c " + ("beats" if expected else "does not beat") + " the best seed transformer"), line
        assert ("Welch p undefined" if p is None else f"Welch p={p:.2g}") in line
        assert "params ×1, FLOPs ×1, state ×1" in line


def test_the_verdict_names_a_winner_over_a_noisier_higher_mean():
    best = standing("s", "seed", (0.80, 0.82, 0.84), name="transformer")
    noisy = standing("n", "candidate", (0.99, 0.80, 0.99), p=0.5)  # the higher mean (0.927 > 0.91), not significant
    steady = standing("t", "candidate", (0.90, 0.91, 0.92), p=0.01)
    found = fin.verdict(summary_of(noisy, steady, best))
    assert found.wins and found.candidate is steady
    found = fin.verdict(summary_of(noisy, replace_p(steady, 0.3), best))
    assert not found.wins and found.candidate is noisy  # no winner: the best mean speaks


def replace_p(s: Standing, p: float) -> Standing:
    import dataclasses

    return dataclasses.replace(s, test=Welch(1.0, 3.0, p))


def test_verdict_without_finalists_says_so():
    assert verdict_line(None).startswith("verdict: no finalists yet")
    seed_only = summary_of(standing("s", "seed", (0.8, 0.9), name="transformer"))
    assert verdict_line(seed_only).startswith("verdict: no finalists — the search has no scored trial")
    untrained = summary_of(standing("c", "candidate", ()), standing("s", "seed", (0.8, 0.9)))
    assert fin.verdict(untrained) is None and verdict_line(untrained).startswith("verdict: none yet")


# ---------------------------------------------------------------------------------------------- running


def searched(tmp_path, name="run", **changes) -> RunFolder:
    folder = RunFolder(tmp_path / name)
    start(tiny_config(trials=2, **changes), folder, live=False)
    return folder


def test_an_interrupted_final_resumes_without_retraining(tmp_path, monkeypatch):
    folder = searched(tmp_path)
    config = RunConfig.from_dict(folder.read_config()).replace(finalists=1, final_seeds=2)
    real, calls = fin.evaluate, []

    def counted(job, callback=None):
        calls.append((job.arch.text, job.train.seed))
        if len(calls) == 3 and interrupt:
            raise KeyboardInterrupt
        return real(job)

    monkeypatch.setattr(fin, "evaluate", counted)
    interrupt = True
    with pytest.raises(KeyboardInterrupt):
        fin.run_finalists(config, folder)
    # the candidate's seed-0 training is the search's own; the two trained before Ctrl-C
    assert len(fin.read_records(folder)) == 1 + 2

    interrupt = False
    summary = fin.run_finalists(config, folder)  # 1 candidate + transformer + gla, 2 seeds each
    assert len(calls) == 3 + 3  # the interrupted one again, then the two never started
    assert summary.complete and [s.n for s in summary.standings] == [2, 2, 2]
    keys = [r.key for r in fin.read_records(folder)]
    assert len(keys) == 6 and len(set(keys)) == 6

    fin.run_finalists(config, folder)
    assert len(calls) == 6  # everything recorded: nothing trained
    fin.run_finalists(config.replace(final_seeds=3), folder)
    assert len(calls) == 9 and all(seed == 2 for _, seed in calls[6:])  # only the new seed

    best = max((r for r in folder.trials() if r.status == "ok"), key=lambda r: r.objectives[0])
    assert summary.candidates[0].entrant.id == best.id
    saved = fin.read_summary(folder)
    assert saved.training_seeds == 3 and saved.complete


def test_the_searchs_own_full_budget_training_counts_as_training_seed_0(tmp_path, monkeypatch):
    """A search trial trained from scratch at the full budget with the run's seed is not trained
    again: a fresh training of the same (arch, task, budget, seed) gives exactly its metrics."""
    folder = searched(tmp_path)
    config = RunConfig.from_dict(folder.read_config()).replace(finalists=1, final_seeds=2)
    best = max((r for r in folder.trials() if r.status == "ok"), key=lambda r: r.objectives[0])
    real, calls = fin.evaluate, []
    monkeypatch.setattr(fin, "evaluate", lambda job, callback=None: calls.append((job.arch.text, job.train.seed)) or real(job))
    fin.run_finalists(config, folder)
    assert (best.arch, 0) not in calls and (best.arch, 1) in calls
    reused = next(r for r in fin.read_records(folder) if r.id == best.id and r.seed == 0)
    assert reused.detail == f"the search's training of trial {best.number}"
    fresh = einsearch.train(best.arch, config.task, einsearch.TrainConfig(d_model=16, layers=1, budget=einsearch.Budget(steps=3), seed=0))
    assert reused.metrics == fresh.metrics


def test_a_completed_search_ends_with_its_final_and_report_prints_it(tmp_path):
    transformer = cost_of("transformer")
    folder = searched(tmp_path, finalists=1, final_seeds=2, max_params=transformer["params"])
    summary = fin.read_summary(folder)
    assert [s.entrant.role for s in summary.standings] == ["candidate", "seed"]  # gla is over the limit
    assert summary.excluded.keys() == {"gla"} and summary.complete
    lines = [json.loads(line) for line in (folder.path / "finalists.jsonl").read_text().splitlines()]
    assert sorted((r["role"], r["seed"]) for r in lines) == [("candidate", 0), ("candidate", 1), ("seed", 0), ("seed", 1)]
    for r in lines:  # the full trial budget, the task's test metric, the seeds' own costs
        assert r["budget"] == "3steps" and r["steps"] == 3 and 0.0 <= r["metrics"]["test/accuracy"] <= 1.0
    seed_line = next(r for r in lines if r["role"] == "seed")
    assert seed_line["name"] == "transformer" and seed_line["costs"] == transformer

    result = runner.invoke(app, ["report", str(folder.path)])
    assert result.exit_code == 0, result.output
    assert "finalists: test/accuracy" in result.output and "seed gla left out: params" in result.output
    verdict = [line for line in result.output.splitlines() if line.startswith("verdict:")]
    assert len(verdict) == 1 and "the best seed transformer" in verdict[0]


def test_final_command_reruns_with_other_k_and_n(tmp_path):
    folder = searched(tmp_path, max_params=cost_of("transformer")["params"])  # finalists=0 in the search
    assert not (folder.path / "finalists.json").exists()
    result = runner.invoke(app, ["final", str(folder.path), "--finalists", "2", "--final-seeds", "2"])
    assert result.exit_code == 0, result.output
    assert "verdict:" in result.output and "trial " in result.output
    assert json.loads(folder.config_path.read_text())["finalists"] == 2
    assert len(fin.read_records(folder)) == (2 + 1) * 2  # two candidates and the transformer, twice


def test_final_on_ray_matches_inline(ray_local, tmp_path):
    folder = searched(tmp_path, max_params=cost_of("transformer")["params"])
    config = RunConfig.from_dict(folder.read_config()).replace(finalists=1, final_seeds=2)
    inline = fin.run_finalists(config, folder)
    (folder.path / "finalists.jsonl").unlink()
    on_ray = fin.run_finalists(config.replace(executor="ray", workers=2), folder)
    assert on_ray.complete and on_ray == inline  # same seeds, one thread each: the same numbers


# ---------------------------------------------------------------------------------------------- --max-state


def test_max_state_rejects_over_the_limit_and_admits_under_it(tmp_path):
    small, large = cost_of(CONV)["state_size"], cost_of(ATTN)["state_size"]
    assert small < large
    search = Search(tiny_config(max_state=small), RunFolder(tmp_path / "unused"))
    reason, measured = search._rejection(einsearch.parse(ATTN))
    assert reason == f"state {large:,} > max {small:,}" and measured == cost_of(ATTN)
    assert search._rejection(einsearch.parse(CONV)) is None  # at the limit: admitted

    folder = searched(tmp_path, strategy="evolution", seed_archs=(ATTN, CONV), max_state=small)
    records = {r.arch: r for r in folder.trials()}
    assert records[einsearch.parse(ATTN).text].status == "rejected" and records[einsearch.parse(ATTN).text].steps == 0
    assert records[CONV].status == "ok"
