"""Small aten graphs shaped like Inductor's post-grad graphs, for running the 2:4 pass without a compile."""

from __future__ import annotations

import torch
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.fx.experimental.proxy_tensor import make_fx
from torch.fx.passes.fake_tensor_prop import FakeTensorProp


def traced(fn, *inputs) -> torch.fx.GraphModule:
    """An aten graph with constants as get_attr and fake values in node.meta, like a post-grad graph."""
    gm = make_fx(fn)(*inputs)
    mode = FakeTensorMode(allow_non_fake_inputs=True)
    FakeTensorProp(gm, mode).propagate(*(mode.from_tensor(t) for t in inputs))
    return gm
