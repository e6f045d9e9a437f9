"""Linear: the prepacked oneDNN path equals nn.Linear, is used only where it applies, and never outlives its block."""
import pytest
import torch
from torch import nn

from dalle_core.ops.linear import Linear, pack_weight, packed_linear, prepacked

needs_packing = pytest.mark.skipif(pack_weight(torch.zeros(2, 2), 1) is None, reason="torch built without oneDNN")


@needs_packing
@pytest.mark.parametrize("rows", [1, 4, 8, 130])
@pytest.mark.parametrize("bias", [True, False])
def test_packed_linear_equals_f_linear(rows, bias):
    layer = Linear(96, 200, bias=bias)
    x = torch.randn(rows, 1, 96)
    with torch.inference_mode():
        packed = packed_linear(x, layer.weight, layer.bias, pack_weight(layer.weight, rows))
        plain = torch.nn.functional.linear(x, layer.weight, layer.bias)
    assert packed.shape == plain.shape == (rows, 1, 200)
    torch.testing.assert_close(packed, plain, atol=1e-5, rtol=1e-5)


@needs_packing
def test_prepacked_packs_every_linear_for_the_block_only():
    model = nn.Sequential(Linear(8, 16), nn.ReLU(), Linear(16, 4))
    with prepacked(model, 2):
        assert all(m.packed is not None for m in model if isinstance(m, Linear))
    assert all(m.packed is None and "packed" not in m.__dict__ for m in model if isinstance(m, Linear))


@needs_packing
def test_packed_weights_are_used_only_without_autograd_or_autocast_in_float32(monkeypatch):
    import dalle_core.ops.linear as linear

    calls = []
    real = torch.ops.mkldnn._linear_pointwise
    monkeypatch.setattr(linear, "_pointwise", lambda *args: calls.append(1) or real(*args))
    layer = Linear(8, 4)
    x = torch.randn(3, 8, requires_grad=True)
    with prepacked(layer, 3):
        layer(x).sum().backward()  # autograd: the plain path (the packed op has no gradient)
        assert x.grad is not None and layer.weight.grad is not None and not calls
        with torch.autocast("cpu", dtype=torch.bfloat16), torch.no_grad():
            assert layer(x).dtype == torch.bfloat16 and not calls  # autocast still applies
        with torch.no_grad():
            torch.testing.assert_close(layer(x), torch.nn.functional.linear(x, layer.weight, layer.bias))
            assert calls == [1]
    assert pack_weight(torch.zeros(4, 8, dtype=torch.float64), 3) is None
    assert pack_weight(torch.zeros(4, 8), 3) is not None


def test_linear_keeps_nn_linear_parameters_and_state_dict():
    ours, theirs = Linear(5, 3), nn.Linear(5, 3)
    assert isinstance(ours, nn.Linear) and ours.state_dict().keys() == theirs.state_dict().keys()
    theirs.load_state_dict(ours.state_dict())
    x = torch.randn(2, 5)
    torch.testing.assert_close(ours(x), theirs(x))
