"""Issue 27, item 11: what the README says about which shipped search spaces share trials is
checked by computing every shipped space's trial ids (it named `table3_cifar10` and
`table5_m_ablation`, which train CIFAR-10 and CIFAR-100 and share nothing)."""

from __future__ import annotations

import itertools
import re
from pathlib import Path

from maxup.platform.space import load_space

ROOT = Path(__file__).resolve().parents[1]


def _shipped() -> dict[str, dict]:
    out = {}
    for path in sorted((ROOT / "search_spaces").glob("*.yaml")):
        spec = load_space(path)
        out[spec.name] = {t.trial_id: t for t in spec.expand()}
    return out


def test_regression_readme_names_the_spaces_that_share_trials():
    spaces = _shipped()
    sharing = {(a, b): set(spaces[a]) & set(spaces[b])
               for a, b in itertools.combinations(sorted(spaces), 2)
               if set(spaces[a]) & set(spaces[b])}
    readme = (ROOT / "README.md").read_text()
    claim = re.search(r"\(`(\w+)` and `(\w+)` share (\d+) arms on ([\w-]+):", readme)
    assert claim, "the README's sentence about spaces sharing trials moved"
    a, b, n_arms, dataset = claim.groups()
    assert list(sharing) == [(a, b)]  # "no other two share a trial"
    shared = sharing[a, b]
    arms = {(spaces[a][t].config["model"]["name"], spaces[a][t].config["maxup"]["m"])
            for t in shared}
    assert len(arms) == int(n_arms)
    assert {spaces[a][t].config["data"]["name"] for t in shared} == {dataset.lower().replace(
        "-", "")}
    # The arms as the README lists them.
    assert arms == {("resnet110", 1), ("resnet110", 4), ("wrn28_10", 1), ("wrn28_10", 10)}
    assert "ResNet-110 at m = 1 and\nm = 4, WRN-28-10 at m = 1 and m = 10" in readme
