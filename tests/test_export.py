"""Every seed exports to a standalone file that rebuilds the same model without einsearch."""

import json
import subprocess
import sys

import torch

import einsearch
from einsearch.export import export_source
from einsearch.tasks.registry import TASKS
from einsearch.tasks.shell import ForecastModel, LanguageModel, RecommenderModel, build_blocks


def test_every_seed_exports_and_reproduces_its_outputs(tmp_path):
    tokens = torch.randint(16, (2, 12), generator=torch.Generator().manual_seed(0))
    torch.save(tokens, tmp_path / "tokens.pt")
    expected = {}
    for i, name in enumerate(sorted(einsearch.seeds)):
        arch = einsearch.seeds[name]
        torch.manual_seed(i)
        model = LanguageModel(build_blocks(arch, 32, 2), 32, vocab=16).eval()
        (tmp_path / f"seed_{name}.py").write_text(export_source(arch, model, d_model=32, layers=2))
        torch.save(model.state_dict(), tmp_path / f"seed_{name}.pt")
        with torch.no_grad():
            expected[name] = model(tokens)
    code = f"""
import importlib, sys, torch
torch.set_num_threads({torch.get_num_threads()})  # as here: a matrix product's rounding depends on the threads
sys.modules["einsearch"] = None            # einsearch must not be importable
sys.modules["networkx"] = None             # nor networkx: graphs travel as edge lists
sys.path.insert(0, {str(tmp_path)!r})
tokens = torch.load({str(tmp_path / "tokens.pt")!r})
outputs = {{}}
for name in {sorted(einsearch.seeds)!r}:
    module = importlib.import_module("seed_" + name)
    model = module.Candidate()
    model.load_state_dict(torch.load({str(tmp_path)!r} + "/seed_" + name + ".pt"))
    with torch.no_grad():
        outputs[name] = model.eval()(tokens)
torch.save(outputs, {str(tmp_path / "outputs.pt")!r})
"""
    subprocess.run([sys.executable, "-c", code], check=True, cwd=tmp_path)
    outputs = torch.load(tmp_path / "outputs.pt")
    for name, value in expected.items():
        assert torch.equal(outputs[name], value), name


def test_every_task_shell_exports_with_its_weights(tmp_path):
    """Each shell a task builds (and those of the path tasks, built directly) exports to a file that
    rebuilds the same parameters, name for name and shape for shape, without einsearch."""
    arch = einsearch.parse("seq(norm(rms), mem(gla, heads=2))")
    models = {name: cls().model(arch, 16, 1) for name, cls in TASKS.items() if cls.positional is None or name == "lm"}
    models["csv"] = ForecastModel(build_blocks(arch, 16, 1), 16, channels=3, lookback=48, horizon=24,
                                  patch=16, stride=8, head="flatten", revin=True, mixing="independent", decomp=0)  # fmt: skip
    models["csv_decomp"] = ForecastModel(build_blocks(arch, 16, 2), 16, channels=3, lookback=48, horizon=24, patch=16,
                                         stride=8, head="flatten", revin=True, mixing="independent", decomp=25)  # fmt: skip
    models["seqrec"] = RecommenderModel(build_blocks(arch, 16, 1), 16, items=30)
    assert {type(m).__name__ for m in models.values()} >= {"LanguageModel", "NextStepModel", "CompressionModel", "PointerModel"}
    shapes = {}
    for name, model in models.items():
        (tmp_path / f"task_{name}.py").write_text(export_source(arch, model, d_model=16, layers=1))
        shapes[name] = {key: tuple(value.shape) for key, value in model.state_dict().items()}
    code = f"""
import importlib, json, sys
sys.modules["einsearch"] = None
sys.path.insert(0, {str(tmp_path)!r})
shapes = {{name: {{k: list(v.shape) for k, v in importlib.import_module("task_" + name).Candidate().state_dict().items()}}
          for name in {sorted(models)!r}}}
print(json.dumps(shapes))
"""
    out = subprocess.run([sys.executable, "-c", code], check=True, cwd=tmp_path, capture_output=True, text=True).stdout
    rebuilt = {name: {k: tuple(v) for k, v in value.items()} for name, value in json.loads(out).items()}
    assert rebuilt == shapes
