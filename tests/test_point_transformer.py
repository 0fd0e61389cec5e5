"""point_transformer (torch-geometric's PointTransformerConv on the project's hierarchy): the
edge list and one convolution against a direct loop over the formula; the spec component
trains a few steps, writes its bundle, reloads it and predicts through the CLI."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from pointtransformer import PointTransformerConfig, PointTransformerSegNet, edge_index_of
from test_kpconvx_model import cli, data_root, tiny_spec  # noqa: F401  (data_root: a fixture)


def test_edge_index_of_padded_neighbours():
    nbr = torch.tensor([[1, 2, 3], [0, 3, 3], [3, 3, 3]])          # shadow index 3
    ei = edge_index_of(nbr)
    assert ei.tolist() == [[1, 2, 0], [0, 0, 1]]                    # (source j, target i)


def test_conv_matches_a_loop_over_the_formula(one_torch_thread):
    from torch_geometric.nn import PointTransformerConv

    torch.manual_seed(0)
    M, k, w = 40, 6, 8
    pos, x = torch.randn(M, 3), torch.randn(M, w)
    others = [torch.tensor([j for j in torch.randperm(M).tolist() if j != i][:k]) for i in range(M)]
    nbr = torch.stack(others)                                         # distinct neighbours, no self
    nbr[torch.rand(M, k) < 0.3] = M                                   # some shadow entries
    conv = PointTransformerConv(w, w, pos_nn=torch.nn.Linear(3, w), attn_nn=torch.nn.Linear(w, w))
    got = conv(x, pos, edge_index_of(nbr))
    W1, W2, W3 = conv.lin_dst, conv.lin_src, conv.lin
    for i in range(M):
        js = [i] + [int(j) for j in nbr[i] if j < M]
        delta = torch.stack([conv.pos_nn(pos[i] - pos[j]) for j in js])          # [n, w]
        a = torch.stack([conv.attn_nn(W1(x[i]) - W2(x[j]) + d) for j, d in zip(js, delta)])
        a = torch.softmax(a, dim=0)                                           # per channel over j
        want = sum(a[n] * (W3(x[j]) + delta[n]) for n, j in enumerate(js))
        torch.testing.assert_close(got[i], want, rtol=1e-5, atol=1e-5)


def test_network_shapes_and_gradients(one_torch_thread):
    torch.manual_seed(0)
    net = PointTransformerSegNet(5, 4, PointTransformerConfig(widths=(16, 32), blocks=(1, 2),
                                                              neighbor_limits=(8, 8), first_cell=0.5))
    pts = torch.rand(600, 3) * torch.tensor([8.0, 8.0, 3.0])
    out = net(pts, torch.randn(600, 5), torch.arange(2).repeat_interleave(300))
    assert out.shape == (600, 4) and torch.isfinite(out).all()
    out.square().mean().backward()
    assert all(p.grad is not None for p in net.parameters() if p.requires_grad)
    with pytest.raises(ValueError, match="features must be"):
        net(pts, torch.randn(600, 4))


def test_spec_component_trains_saves_loads_and_predicts(tmp_path, data_root):  # noqa: F811
    import yaml

    spec = tiny_spec(tmp_path / "spec", data_root)
    data = yaml.safe_load(spec.read_text())
    model = data["steps"][0]["model"]
    model["network"] = {"type": "point_transformer", "first_cell": 0.5, "widths": [16, 32], "blocks": [1, 1], "neighbor_limits": [10, 10]}
    spec.write_text(yaml.safe_dump(data, sort_keys=False))
    res = cli("run", spec, "--limit-steps", "3", "--quiet")
    assert res.returncode == 0, res.stderr
    bundle = spec.parent / "out" / "model.bundle"
    assert {"bundle.json", "weights.pt", "point_transformer_model.json"} <= {p.name for p in bundle.iterdir()}
    meta = json.loads((bundle / "bundle.json").read_text())
    assert meta["model"]["network"]["type"] == "point_transformer" and meta["summary"]["steps"] == 3
    net = json.loads((bundle / "point_transformer_model.json").read_text())["network"]
    assert net["widths"] == [16, 32] and "shell_points" not in net
    res = cli("predict", "--model", bundle, "--input", data_root / "test" / "tile.laz", "--out", tmp_path / "p",
              "--set", "votes=1", "--quiet")
    assert res.returncode == 0, res.stderr
    from data.io import read_cloud

    out, src = read_cloud(tmp_path / "p" / "tile.laz"), read_cloud(data_root / "test" / "tile.laz")
    assert len(out) == len(src) and np.isin(out.fields["classification"], [1, 2, 6, 9, 17, 64, 3]).all()
    bad = dict(data)
    bad["steps"][0]["model"]["network"]["shell_points"] = [1, 7]    # a KPConvX key: not this network's
    spec.write_text(yaml.safe_dump(bad, sort_keys=False))
    res = cli("validate", spec)
    assert res.returncode == 2 and "shell_points" in res.stderr
