"""CUDA-graph captures without a GPU: the capture protocol run eagerly, for the CPU tests."""
from diffmamba.sampling import graphs


def run_captures_eagerly(monkeypatch) -> list:
    """Every CapturedCall built from here on runs eagerly (``graph=False``); the returned list gets
    one entry (the call's number of inputs) per capture made."""
    built = []
    real_init = graphs.CapturedCall.__init__

    def eager_init(self, fn, inputs, graph=True, warmup=2):
        built.append(len(inputs))
        real_init(self, fn, inputs, graph=False)

    monkeypatch.setattr(graphs.CapturedCall, "__init__", eager_init)
    return built
