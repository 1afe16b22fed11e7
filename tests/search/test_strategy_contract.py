"""Every search strategy passes `StrategyContract` (tests/search/strategy_contract.py)."""

from tests.search.strategy_contract import StrategyContract

SEED = "seq(res(conv(k=2)), res(mlp(expand=1, act=gelu)))"


class TestRandom(StrategyContract):
    strategy = "random"


class TestEvolution(StrategyContract):
    strategy = "evolution"
    seed_archs = (SEED,)
    proposals, resume_after = 12, 7  # past the seed and the filling, into tournaments


class TestTPE(StrategyContract):
    strategy = "tpe"
    seed_archs = (SEED,)
    proposals, resume_after = 14, 11  # TPE models the study after its 10 random startup trials


class TestNSGA2(StrategyContract):
    strategy = "nsga2"
    proposals, resume_after = 54, 50  # the second generation (population 50) breeds from the first
