"""After training: refit the metastasis head's descriptor path by logistic regression.

Trained end to end for a few epochs, the head's MLP over pooled image features blurs what the node
descriptors say: on the phantom test set the bundled network ranked nodes at AUC 0.78, while a
logistic regression on the same network's descriptors (under its own predicted masks, fitted on
other training nodes) reached 0.81. So once the network is trained, the linear descriptor path and
one weight on the MLP's output are refitted by a convex fit (L-BFGS) on the training nodes, read
exactly as at inference: no augmentation, pooled under the predicted mask. The fit is written back
into the same NodeHead weights, so a refitted model has the usual architecture and loads anywhere.

Where the training nodes carry soft labels (a probability per node: a phantom's exact P, or a
consensus confidence), the refit fits the head's refine MLP instead (node_head.py): a small MLP over
the standardised descriptors and the deep MLP's logit, by least squares on logit(soft label). A
probability says far more per node than a 0/1 draw from it: on the phantoms (the bundled network's
head inputs, 9954 training nodes, 1083 test nodes),
such an MLP ranked test nodes at AUC 0.822 against 0.814 for the logistic refit on the same inputs,
while an MLP fitted on the 0/1 labels overfitted (0.75-0.78 on 3259 nodes). Several seeds are
averaged, and the average of MLPs is one wider MLP, so the refined head is still one set of weights.
Where the nodes also carry attributes (size, necrosis, hilum...: node_attributes.py), the same MLPs
predict them too while they are fitted, and only the logit output is kept.

The refit also gives the temperature more nodes to be fitted on: each training node's logit from a
refit on the other case folds (cross-fitting) is as held out as a validation node's. A temperature
fitted on the few hundred validation nodes alone swings by about 0.1 from one draw of cases to the
next (the bundled model's came out at 1.19 on 503 validation nodes, 1.05 on all 3259), and that swing is
what the expected calibration error shows.
"""

from __future__ import annotations

import copy

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..core.node_attributes import attribute_targets
from ..network.node_descriptors import NUM_DESCRIPTORS
from ..network.node_head import NodeHead

MIN_NODES_PER_CLASS = 10
MIN_SOFT_NODES = 200  # fewer soft-labelled nodes than this: the logistic refit on 0/1 labels
REFINE_HIDDEN = 16  # per seed; the refine MLP is REFINE_SEEDS times as wide
REFINE_SEEDS = 20  # 5-fold CV on 3318 phantom nodes: 0.8226 against 0.8217 with 5
REFINE_STEPS = 1500
# logit(1e-4) = -9.2: a sure label is a large logit, not an infinite one. A tighter clip (1e-2) won
# 0.003 of AUC in 3-fold CV on 3318 phantom nodes but not on the full refit (9954 nodes: validation
# AUC 0.842 against 0.844 here), so this one stays.
SOFT_LABEL_CLIP = 1e-4
# weight of the node-attribute outputs' mean squared error (standardised) against the logit's;
# 5-fold CV on 3318 phantom nodes: 0.3 -> 0.8229, 1 -> 0.8242, 3 -> 0.8241 (none: 0.8217)
AUXILIARY_WEIGHT = 1.0


def refittable(network) -> bool:
    """Only a single-logit NodeHead has the descriptor path this refit writes into."""
    head = getattr(network, "head", None)
    return isinstance(head, NodeHead) and head.wide.out_features == 1


@torch.no_grad()
def collect_head_inputs(network, inputs) -> torch.Tensor:
    """(N, width) head inputs of the network in eval mode over an iterable of input batches, each
    x, (x, slice_mm) (the source CTs' slice thickness, node_descriptors) or (x, slice_mm,
    spacing_mm) (each patch's voxel size, batch_spacing.py)."""
    rows = []
    hook = network.head.register_forward_hook(lambda _m, args, _out: rows.append(args[0].detach().float().cpu()))
    was_training = network.training
    network.eval()
    out = []
    try:
        for item in inputs:
            x, slice_mm, spacing_mm = (*item, None, None)[:3] if isinstance(item, tuple) else (item, None, None)
            network(x, slice_mm=slice_mm, spacing_mm=spacing_mm)
            out.append(rows.pop())
    finally:
        hook.remove()
        network.train(was_training)
    return torch.cat(out) if out else torch.zeros(0, 0)


def refit_descriptor_path(head: NodeHead, head_inputs: torch.Tensor, labels: torch.Tensor,
                          l2: float = 1e-3, soft_labels: torch.Tensor | None = None,
                          attributes: torch.Tensor | None = None) -> dict:
    """With at least MIN_SOFT_NODES soft labels: fit the head's refine MLP to them (see the module
    docstring). Otherwise: fit logit = w . standardised descriptors + a * MLP output + b on
    labelled nodes; fold it into head.wide (w, b) and head.mlp's last layer (a), and drop any
    refine MLP. Returns what was fitted, or why not (the head is then left as it was).
    The fit runs on the CPU, where the head inputs are; the head goes back to its device after."""
    device = head.wide.weight.device
    was_training = head.training
    head.cpu().eval()  # no dropout: the fit sees the head as inference does
    try:
        if soft_labels is not None and int((~torch.isnan(soft_labels)).sum()) >= MIN_SOFT_NODES:
            return _fit_refine(head, head_inputs.cpu(), soft_labels.cpu(),
                               None if attributes is None else attributes.cpu())
        return _fit_logistic(head, head_inputs.cpu(), labels.cpu(), l2)
    finally:
        head.to(device).train(was_training)


def _fit_logistic(head: NodeHead, head_inputs: torch.Tensor, labels: torch.Tensor, l2: float) -> dict:
    known = ~torch.isnan(labels)
    x, y = head_inputs[known].double(), labels[known].double()
    n_pos, n_neg = int(y.sum()), int((1 - y).sum())
    if min(n_pos, n_neg) < MIN_NODES_PER_CLASS:
        return {"refit": False, "reason": f"{n_pos} positive and {n_neg} negative labelled nodes; "
                                          f"need {MIN_NODES_PER_CLASS} of each"}
    head.set_refine(0)
    return _fit(head, x, y, l2)


def _fit(head: NodeHead, x: torch.Tensor, y: torch.Tensor, l2: float) -> dict:
    dtype = head.wide.weight.dtype
    desc = x[:, -NUM_DESCRIPTORS:]
    with torch.no_grad():
        deep = head.mlp(x.to(dtype)).double().squeeze(1)
        # the head's logit is its MLP plus its descriptor path: no second pass through the MLP
        before = F.binary_cross_entropy_with_logits(deep + head.wide(desc.to(dtype)).double().squeeze(1), y)
    mu, sd = desc.mean(0), desc.std(0).clamp_min(1e-6)
    features = torch.cat([(desc - mu) / sd, deep.unsqueeze(1)], dim=1)
    w = torch.zeros(features.shape[1] + 1, dtype=torch.float64, requires_grad=True)
    with torch.no_grad():
        w[-2] = 1.0  # start from the trained MLP alone
    optimizer = torch.optim.LBFGS([w], lr=1.0, max_iter=500, tolerance_grad=1e-9, line_search_fn="strong_wolfe")

    def closure():
        optimizer.zero_grad()
        loss = F.binary_cross_entropy_with_logits(features @ w[:-1] + w[-1], y) + l2 * (w[:NUM_DESCRIPTORS] ** 2).sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    w = w.detach()
    scale = w[:NUM_DESCRIPTORS] / sd
    with torch.no_grad():
        head.wide.weight.copy_(scale.unsqueeze(0).to(head.wide.weight.dtype))
        head.wide.bias.fill_(float(w[-1] - (scale * mu).sum()))
        last = head.mlp[-1]
        last.weight.mul_(float(w[NUM_DESCRIPTORS]))
        last.bias.mul_(float(w[NUM_DESCRIPTORS]))
        after = F.binary_cross_entropy_with_logits(head(x.to(dtype)).double().squeeze(1), y)
    return {"refit": True, "kind": "logistic", "nodes": len(y), "mlp_weight": float(w[NUM_DESCRIPTORS]),
            "train_loss_before": float(before), "train_loss_after": float(after)}


def _fit_refine(head: NodeHead, head_inputs: torch.Tensor, soft_labels: torch.Tensor,
                attributes: torch.Tensor | None = None) -> dict:
    known = ~torch.isnan(soft_labels)
    dtype = head.wide.weight.dtype
    with torch.no_grad():
        head.set_refine(0)
        x = head.refine_input(head_inputs[known].to(dtype)).double()
    target = torch.logit(soft_labels[known].double().clamp(SOFT_LABEL_CLIP, 1 - SOFT_LABEL_CLIP)).unsqueeze(1)
    # node attributes, where known, as extra outputs of the same hidden layer (node_attributes.py)
    aux = (attribute_targets(attributes[known]) if attributes is not None
           else torch.zeros(len(target), 0, dtype=torch.float64))
    aux_known = ~torch.isnan(aux)
    aux = torch.nan_to_num(aux)
    mu, sd = x.mean(0), x.std(0).clamp_min(1e-6)
    z = (x - mu) / sd
    # REFINE_SEEDS MLPs (as nn.Linear initialises them) trained side by side: the loss is their
    # sum, so each gets exactly the gradient it would get alone, with far less Python overhead
    generator = torch.Generator().manual_seed(0)  # reproducible, and the caller's random stream untouched
    n_in, h, k, o = z.shape[1], REFINE_HIDDEN, REFINE_SEEDS, 1 + aux.shape[1]
    params = [(torch.rand(shape, dtype=torch.float64, generator=generator) * 2 - 1) / fan_in**0.5
              for shape, fan_in in (((k, n_in, h), n_in), ((k, 1, h), n_in), ((k, h, o), h), ((k, 1, o), h))]
    for p in params:
        p.requires_grad_(True)
    optimizer = torch.optim.AdamW(params, lr=3e-3, weight_decay=1e-2)
    aux_count = aux_known.sum().clamp_min(1)
    with torch.enable_grad():
        for _ in range(REFINE_STEPS):  # full batch: a few thousand rows of a few dozen columns
            w1, b1, w2, b2 = params
            out = F.gelu(z.unsqueeze(0) @ w1 + b1) @ w2 + b2
            loss = ((out[..., :1] - target.unsqueeze(0)) ** 2).mean(dim=(1, 2)).sum()
            if o > 1:
                loss = loss + AUXILIARY_WEIGHT * (((out[..., 1:] - aux) ** 2) * aux_known).sum() / aux_count
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    # only the logit output is kept: the attribute outputs shaped the hidden layer and are dropped
    w1, b1, w2, b2 = (p.detach() for p in params)
    w2, b2 = w2[..., :1], b2[..., :1]
    # the seeds' average is one MLP: their hidden units side by side, each output weight / seeds;
    # the standardisation folds into the first layer
    w1 = w1.transpose(1, 2).reshape(k * h, n_in) / sd
    b1 = b1.reshape(k * h) - w1 @ mu
    w2 = w2.reshape(1, k * h) / k
    b2 = b2.mean().reshape(1)
    head.set_refine(w1.shape[0])
    with torch.no_grad():
        for layer, (w, b) in zip((head.refine[0], head.refine[2]), ((w1, b1), (w2, b2))):
            layer.weight.copy_(w.to(dtype))
            layer.bias.copy_(b.to(dtype))
        fitted = head(head_inputs[known].to(dtype)).double()
    return {"refit": True, "kind": "soft-label MLP", "nodes": int(known.sum()), "refine_hidden": w1.shape[0],
            "auxiliary_attributes": aux.shape[1], "train_rmse_logit": float(F.mse_loss(fitted, target).sqrt())}


@torch.no_grad()
def cross_fitted_logits(head: NodeHead, head_inputs: torch.Tensor, labels: torch.Tensor, groups,
                        folds: int = 5, seed: int = 0, soft_labels: torch.Tensor | None = None,
                        attributes: torch.Tensor | None = None) -> torch.Tensor:
    """(N,) logits of each node from a copy of `head` refitted without its group's fold (groups =
    case ids, so no case's nodes sit on both sides); NaN where that refit could not run or the node
    has no label. `head` itself is left untouched."""
    names = sorted(set(groups))
    order = np.random.default_rng(seed).permutation(len(names))
    fold_of_case = {names[i]: k % folds for k, i in enumerate(order)}
    fold = torch.tensor([fold_of_case[g] for g in groups])
    out = torch.full((len(labels),), float("nan"), dtype=torch.float64)
    for k in range(min(folds, len(names))):
        held = fold == k
        fitted = copy.deepcopy(head).cpu()
        with torch.enable_grad():
            result = refit_descriptor_path(fitted, head_inputs[~held], labels[~held],
                                           soft_labels=None if soft_labels is None else soft_labels[~held],
                                           attributes=None if attributes is None else attributes[~held])
        if result["refit"]:
            fitted.eval()
            out[held] = fitted(head_inputs[held].to(fitted.wide.weight.dtype)).double().squeeze(1)
    out[torch.isnan(labels)] = float("nan")
    return out
