"""Every seed exports to a standalone file that rebuilds the same model without einsearch."""

import subprocess
import sys

import torch

import einsearch
from einsearch.export import export_source
from einsearch.tasks.shell import LanguageModel, build_blocks


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
