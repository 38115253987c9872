"""The reference code's side of tests/test_reference_interop.py (run by the reference's Python).

    REF_PYTHON tests/reference_side.py PAIR_DIR X.npy OUT.npz ACT_FN LAYER

Loads the pair folder (written by `jsaectl export --format jsae-pair`) with both of the
reference's loaders, and on the rows of X computes, with the reference's own functions only:
its Jacobian at x (``utils.run_sandwich``, as ``runners/eval.py`` and ``histogram.py`` do) and at
x̂ (the f_s path of ``evals.py``: slopes at x̂, output TopK of e_y(f(x̂))), the TopK sets, and
the loss terms of one ``TrainingSAEPair.training_forward_pass``. Writes them to OUT.npz.
This file is jsaectl's; nothing of the reference is copied into it.
"""

from __future__ import annotations

import json
import os
import sys

import numpy as np
import torch
from safetensors.torch import load_file
from transformer_lens import HookedTransformer, HookedTransformerConfig

from jacobian_saes import SAEPair, TrainingSAEPair
from jacobian_saes.utils import get_jacobian, run_sandwich


def main() -> None:
    pair_dir, x_path, out_path, act_fn, layer = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5])
    x = torch.from_numpy(np.load(x_path))
    d = x.shape[1]
    with open(os.path.join(pair_dir, "cfg.json")) as f:
        cfg = json.load(f)
    d_mlp = load_file(os.path.join(pair_dir, "sae_weights.safetensors"))["mlp.W_in"].shape[1]
    # A model of the pair's shape, only so that TrainingSAEPair has a TransformerLens block and
    # config: the MLP weights it uses come from the pair file.
    llm_cfg = HookedTransformerConfig(d_model=d, d_head=d // 2, n_heads=2, n_layers=layer + 1, d_mlp=d_mlp, d_vocab=16,
                                      n_ctx=8, act_fn=act_fn, normalization_type="LN", seed=0)
    model = HookedTransformer(llm_cfg)
    inference = SAEPair.load_from_pretrained(pair_dir, device="cpu")
    pair = TrainingSAEPair.load_from_pretrained(pair_dir, transformer_block=model.blocks[layer], llm_cfg=model.cfg, device="cpu")
    pair.eval()
    same = all(torch.equal(v, pair.state_dict()[k]) for k, v in inference.state_dict().items())
    with torch.no_grad():
        J_x, acts = run_sandwich(inference, pair.mlp, x)
        # evals.py's f_s: the MLP at x̂, the output SAE's TopK of f(x̂)
        _, idx_in = inference.encode(x, False, return_topk_indices=True)
        x_hat = inference.decode(inference.encode(x, False), False)
        y_hat_in, grads_hat = pair.mlp(x_hat)
        _, idx_out_hat = inference.encode(y_hat_in, True, return_topk_indices=True)
        J_hat = get_jacobian(inference, pair.mlp, idx_in, grads_hat, idx_out_hat)
        pre_out = acts["mlp_out"] @ inference.get_W_enc(True) + inference.get_b_enc(True)
        pre_out_hat = y_hat_in @ inference.get_W_enc(True) + inference.get_b_enc(True)
    step = pair.training_forward_pass(x, current_l1_coefficient=0.0, current_jacobian_coefficient=float(cfg["jacobian_coefficient"]))
    np.savez(out_path, J_x=J_x.numpy(), idx_in=acts["topk_indices1"].numpy(), idx_out=acts["topk_indices2"].numpy(),
             y=acts["mlp_out"].numpy(), J_hat=J_hat.numpy(), idx_out_hat=idx_out_hat.numpy(),
             pre_out=torch.gather(pre_out, 1, acts["topk_indices2"]).numpy(),
             pre_out_hat=torch.gather(pre_out_hat, 1, idx_out_hat).numpy(),
             loss=step.loss.item(), mse=step.mse_loss, mse2=step.mse_loss2, jacobian_loss=step.jacobian_loss,
             loaders_agree=same)


if __name__ == "__main__":
    main()
