"""Small helpers for tests that replay random draws."""

import torch


def gen(seed: int) -> torch.Generator:
    """A CPU generator seeded with ``seed``."""
    return torch.Generator().manual_seed(seed)


def clone_gen(g: torch.Generator) -> torch.Generator:
    """A generator in the same state as ``g`` (replays its next draws)."""
    c = torch.Generator()
    c.set_state(g.get_state())
    return c


def with_sections(cfg: dict, sections: dict) -> dict:
    """``cfg`` with each named section updated (a dict) or replaced (anything else)."""
    for name, values in sections.items():
        if isinstance(values, dict):
            cfg[name].update(values)
        else:
            cfg[name] = values
    return cfg
