"""`tipslab eval`: the probes on any checkpoint (issue 7 fills this in)."""


def add_parsers(sub) -> None:
    pass
