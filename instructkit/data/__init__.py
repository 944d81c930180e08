"""Data for every stage: records and their validation, prompt styles, stage 2's responses file,
multi-turn questions, and stage 0's generation and filters; `default/` holds the files we ship."""

from importlib.resources import files


def packaged(name: str) -> str:
    """The path of a file shipped in `instructkit/data/default/` (our default dataset, the seed
    tasks, the MT-Bench sample), wherever the package is installed."""
    return str(files(__name__).joinpath("default", name))
