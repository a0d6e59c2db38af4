"""The CPU pool kernels compute MindSpore's (= PyTorch's) padded 3x3 pools, forward and
backward, and step aside where they cannot run."""
import numpy as np
import mindspore as ms
import pytest
from mindspore import nn, ops

from res2net_ms.models import kernels

pytestmark = pytest.mark.skipif(not kernels.enabled(), reason="CPU pool kernels not in use")


class _ForwardBackward(nn.Cell):
    """The output and the input's gradient in one graph (one compile in graph mode)."""

    def __init__(self, net):
        super().__init__()
        self.net = net
        self.grad = ops.GradOperation(sens_param=True)

    def construct(self, x, sens):
        return self.net(x), self.grad(self.net)(x, sens)


def _forward_backward(pool, x, sens):
    return [t.asnumpy() for t in _ForwardBackward(pool)(x, sens)]


@pytest.mark.parametrize("mode", [pytest.param("graph_mode", marks=pytest.mark.slow),
                                  "pynative_mode"])
@pytest.mark.parametrize("kind,stride", [("max", 2), ("avg", 1), ("avg", 2)])
def test_pool_matches_mindspore(kind, stride, mode, request):
    request.getfixturevalue(mode)
    rng = np.random.default_rng(stride)
    for shape in ((2, 3, 9, 7), (1, 4, 16, 16), (2, 2, 1, 1)):
        # Rounded values make ties, where a max pool must pick the same element.
        x = ms.Tensor(np.round(rng.standard_normal(shape) * 2).astype(np.float32))
        ours = kernels.Pool3x3(kind, stride)
        assert ours.kernel is not None
        out = ours.framework(x)
        sens = ms.Tensor(rng.standard_normal(out.shape).astype(np.float32))
        got, want = _forward_backward(ours, x, sens), _forward_backward(ours.framework, x, sens)
        for g, w in zip(got, want):
            assert g.shape == w.shape
            np.testing.assert_allclose(g, w, rtol=1e-6, atol=1e-6)


def test_disabled_and_other_dtypes_use_mindspore(monkeypatch, graph_mode):
    monkeypatch.setenv("RES2NET_MS_CPU_KERNELS", "0")
    assert kernels.Pool3x3("max", 2).kernel is None
    monkeypatch.delenv("RES2NET_MS_CPU_KERNELS")
    pool = kernels.Pool3x3("avg", 2)
    x = ms.Tensor(np.ones((1, 2, 5, 5), np.float16))
    assert pool(x).dtype == ms.float16  # float16 goes to MindSpore's pool
